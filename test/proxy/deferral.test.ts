/**
 * DeferredCalls on its own: which calls join a run still going, and what the table of runs in flight
 * holds. Arguments may be up to 64 KiB each; the table must not keep a copy of them as its key.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';
import { DeferredCalls, pendingContent } from '../../src/proxy/deferral.js';
import { createLogger } from '../../src/telemetry/log.js';
import { MAX_ARGUMENT_BYTES } from '../../src/tools/arguments.js';
import type { ToolCall, ToolOutcome } from '../../src/tools/types.js';

const MiB = 1024 * 1024;
const logger = createLogger('deferral-test', 'silent');
const runner = {};
/** Every run a test starts, finished at its end so no timer or promise outlives it. */
const unfinished: (() => void)[] = [];
afterEach(() => {
  for (const finish of unfinished.splice(0)) finish();
});

/** A run that goes on until the test ends; counts how often it was started. */
function slowRun(call: ToolCall, started: ToolCall[]): () => Promise<ToolOutcome> {
  return () => {
    started.push(call);
    return new Promise((resolve) =>
      unfinished.push(() => resolve({ call, content: 'done', outcome: 'ok', seconds: 1, remember: true })),
    );
  };
}

async function defer(deferred: DeferredCalls, call: ToolCall, started: ToolCall[], maxResultBytes = 2048) {
  const { pending, outcome } = await deferred.run(call, slowRun(call, started), {
    deferAfterMs: 0,
    definition: 'def0',
    runner,
    clientSignal: new AbortController().signal,
    maxResultBytes,
  });
  expect(pending).toBe(true);
  return outcome;
}

/** heapUsed after a full collection. */
function heapUsed(): number {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

describe('deferred calls', () => {
  it('keeps calls with different large arguments apart and joins the same call however its JSON is written', async () => {
    const deferred = new DeferredCalls(
      () => undefined,
      () => {},
      logger,
    );
    const started: ToolCall[] = [];
    const big = 'x'.repeat(MAX_ARGUMENT_BYTES - 64);
    // Two argument texts of nearly 64 KiB that differ only in their last character.
    const a: ToolCall = { id: 'a', name: 'search', arguments: JSON.stringify({ q: big, page: 1 }) };
    const b: ToolCall = { id: 'b', name: 'search', arguments: JSON.stringify({ q: big, page: 2 }) };
    // The same arguments as a, in another key order and with spaces.
    const again: ToolCall = { id: 'c', name: 'search', arguments: `{ "page": 1, "q": "${big}" }` };
    await defer(deferred, a, started);
    await defer(deferred, b, started);
    await defer(deferred, again, started);
    expect(started.map((c) => c.id)).toEqual(['a', 'b']);
    expect(deferred.running).toBe(2);
  });

  it('is busy while a call runs on after its turn, and until its late result has landed', async () => {
    const deferred = new DeferredCalls(
      () => undefined,
      () => {},
      logger,
    );
    expect(deferred.busy).toBe(false);
    const call: ToolCall = { id: 'a', name: 'search', arguments: '{"q":"x"}' };
    await defer(deferred, call, []);
    expect(deferred.busy).toBe(true);
    for (const finish of unfinished.splice(0)) finish();
    await deferred.idle();
    expect(deferred.busy).toBe(false);

    // A result on its way into memory (a call the turn handed over as it ended) keeps it busy too.
    let finish!: (outcome: ToolOutcome) => void;
    const outcome = new Promise<ToolOutcome>((resolve) => {
      finish = resolve;
    });
    deferred.settle([{ role: 'user', content: 'search x' }], [{ call, outcome, claimed: false }]);
    expect(deferred.busy).toBe(true);
    finish({ call, content: 'done', outcome: 'ok', seconds: 1, remember: true });
    await deferred.idle();
    expect(deferred.busy).toBe(false);
  });

  it('holds no copy of the arguments for the calls it keeps in flight', async () => {
    const deferred = new DeferredCalls(
      () => undefined,
      () => {},
      logger,
    );
    const started: ToolCall[] = [];
    const count = 128;
    const calls: ToolCall[] = Array.from({ length: count }, (_, i) => ({
      id: `call-${i}`,
      name: 'search',
      arguments: JSON.stringify({ q: `${i}`.padEnd(MAX_ARGUMENT_BYTES - 32, 'x') }),
    }));
    const before = heapUsed();
    for (const call of calls) await defer(deferred, call, started);
    expect(deferred.running).toBe(count);
    const held = heapUsed() - before;
    // The calls' own argument texts were there before; a key made of the arguments would add 8 MiB.
    expect(held).toBeLessThan(2 * MiB);
  });

  it('cuts the pending result to maxResultBytes, as every result is', async () => {
    const deferred = new DeferredCalls(
      () => undefined,
      () => {},
      logger,
    );
    const call: ToolCall = { id: 'p', name: 'a_tool_with_a_long_name', arguments: '{}' };
    const outcome = await defer(deferred, call, [], 64);
    expect(Buffer.byteLength(pendingContent(call.name))).toBeGreaterThan(64);
    expect(Buffer.byteLength(outcome.content)).toBeLessThanOrEqual(64);
    expect(outcome.content).toMatch(/^pending: a_tool_with_a_long_name is still running.*…\(truncated\)$/);
  });
});
