/**
 * When the idle collection runs: once no turn has been open for its wait and RSS has grown enough since the
 * last one, never while a turn is open. A stand-in heap counts the collections and sets the RSS read; the
 * real collection, on a built proxy, is in test/cmd/after-load.test.ts.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { IdleCollection, type IdleCollectionRecord } from '../../src/runtime/heap.js';

const MiB = 2 ** 20;
const AFTER_MS = 20;
/** Several times the wait: a timer due by then has fired, even on a loaded machine. */
const WELL_AFTER_MS = 200;

function heap(rss: number) {
  const state = {
    rss,
    collections: 0,
    /** Work with no turn open (a deferred call). */
    busy: false,
    /** What a collection leaves. */
    rssAfterCollection: 90 * MiB,
    records: [] as IdleCollectionRecord[],
  };
  const control = {
    collect: () => {
      state.collections++;
      state.rss = state.rssAfterCollection;
    },
    rss: () => state.rss,
  };
  const idle = new IdleCollection(control, {
    afterMs: AFTER_MS,
    growthBytes: 32 * MiB,
    busy: () => state.busy,
    onCollected: (record) => state.records.push(record),
  });
  return { state, idle };
}

/** One turn, then a quiet period well past the wait. */
async function turnThenQuiet(idle: IdleCollection): Promise<void> {
  idle.turnStarted();
  idle.turnEnded();
  await sleep(WELL_AFTER_MS);
}

describe('IdleCollection', () => {
  it('collects once no turn has been open for its wait, after RSS grew, and reports what it gave back', async () => {
    const { state, idle } = heap(80 * MiB);
    idle.turnStarted();
    state.rss = 300 * MiB;
    idle.turnEnded();
    expect(state.collections).toBe(0);
    await sleep(WELL_AFTER_MS);
    expect(state.collections).toBe(1);
    expect(state.records).toEqual([
      { rssBeforeBytes: 300 * MiB, rssAfterBytes: 90 * MiB, ms: expect.any(Number) },
    ]);
    idle.close();
  });

  it('measures growth from the last collection: a quiet period without new growth collects nothing', async () => {
    const { state, idle } = heap(80 * MiB);
    state.rss = 300 * MiB;
    await turnThenQuiet(idle);
    expect(state.collections).toBe(1);

    // 90 MiB after the collection; 110 is less than 32 MiB above it.
    state.rss = 110 * MiB;
    await turnThenQuiet(idle);
    expect(state.collections).toBe(1);

    state.rss = 130 * MiB;
    await turnThenQuiet(idle);
    expect(state.collections).toBe(2);
    idle.close();
  });

  it('never collects while a turn is open', async () => {
    const { state, idle } = heap(80 * MiB);
    idle.turnStarted();
    idle.turnStarted();
    state.rss = 300 * MiB;
    idle.turnEnded();
    await sleep(WELL_AFTER_MS);
    expect(state.collections).toBe(0);
    idle.turnEnded();
    await sleep(WELL_AFTER_MS);
    expect(state.collections).toBe(1);
    idle.close();
  });

  it('waits again from the end of a turn that began during the wait', async () => {
    const { state, idle } = heap(80 * MiB);
    state.rss = 300 * MiB;
    idle.turnStarted();
    idle.turnEnded();
    // Before the wait is over, a turn begins: its wait is cancelled, and nothing runs until it ends.
    idle.turnStarted();
    await sleep(WELL_AFTER_MS);
    expect(state.collections).toBe(0);
    idle.turnEnded();
    await sleep(WELL_AFTER_MS);
    expect(state.collections).toBe(1);
    idle.close();
  });

  it("counts growth from start-up's own collection, not from when it was made", async () => {
    const { state, idle } = heap(150 * MiB);
    state.rss = 82 * MiB;
    idle.startupReleased();
    state.rss = 120 * MiB;
    await turnThenQuiet(idle);
    expect(state.collections).toBe(1);
    idle.close();
  });

  it('waits while work runs with no turn open, then collects', async () => {
    const { state, idle } = heap(80 * MiB);
    state.rss = 300 * MiB;
    state.busy = true;
    await turnThenQuiet(idle);
    expect(state.collections).toBe(0);
    state.busy = false;
    await sleep(WELL_AFTER_MS);
    expect(state.collections).toBe(1);
    idle.close();
  });

  it('does not collect when RSS grew less than growthBytes', async () => {
    const { state, idle } = heap(80 * MiB);
    state.rss = 100 * MiB;
    await turnThenQuiet(idle);
    expect(state.collections).toBe(0);
    idle.close();
  });

  it('runs nothing after close', async () => {
    const { state, idle } = heap(80 * MiB);
    state.rss = 300 * MiB;
    idle.turnStarted();
    idle.turnEnded();
    idle.close();
    await sleep(WELL_AFTER_MS);
    await turnThenQuiet(idle);
    expect(state.collections).toBe(0);
  });

  it('refuses a wait no timer can keep, naming it, for embedders as for the CLI', () => {
    const control = { collect() {}, rss: () => 0 };
    // Node would fire a 2^31 ms timer after 1 ms: a collection after every turn.
    for (const afterMs of [2 ** 31, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new IdleCollection(control, { afterMs })).toThrow(
        new RangeError(`idleCollection.afterMs must be from 0 (never) to 2147483647 ms, not ${afterMs}`),
      );
      // Checked before the missing --expose-gc makes it moot: the mistake shows wherever it is made.
      expect(() => IdleCollection.forProcess({ afterMs })).toThrow(RangeError);
    }
    expect(() => new IdleCollection(control, { afterMs: 2 ** 31 - 1 })).not.toThrow();
  });

  it('refuses a growth that would make every idle wait collect, naming it', () => {
    const control = { collect() {}, rss: () => 0 };
    for (const growthBytes of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new IdleCollection(control, { growthBytes })).toThrow(
        new RangeError(`idleCollection.growthBytes must be a number of bytes from 0, not ${growthBytes}`),
      );
      expect(() => IdleCollection.forProcess({ growthBytes })).toThrow(RangeError);
    }
    expect(() => new IdleCollection(control, { growthBytes: 0 })).not.toThrow();
  });

  it('is not made for a process without --expose-gc (it would have nothing to run)', () => {
    // vitest's workers run without the flag.
    expect(globalThis.gc).toBeUndefined();
    expect(IdleCollection.forProcess()).toBeUndefined();
  });
});
