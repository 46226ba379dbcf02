import { describe, expect, it } from 'vitest';
import { WorkQueue } from '../../src/operator/queue.js';

/** A worker whose runs the test releases one by one. */
function gatedWorker() {
  const runs: string[] = [];
  const gates: (() => void)[] = [];
  let concurrent = 0;
  let maxConcurrent = 0;
  const perKey = new Map<string, number>();
  let maxPerKey = 0;
  const worker = async (key: string) => {
    runs.push(key);
    concurrent++;
    maxConcurrent = Math.max(maxConcurrent, concurrent);
    perKey.set(key, (perKey.get(key) ?? 0) + 1);
    maxPerKey = Math.max(maxPerKey, perKey.get(key)!);
    await new Promise<void>((resolve) => gates.push(resolve));
    concurrent--;
    perKey.set(key, perKey.get(key)! - 1);
  };
  const releaseAll = async () => {
    while (gates.length > 0) {
      gates.shift()!();
      await new Promise((r) => setImmediate(r));
    }
  };
  return {
    worker,
    runs,
    releaseAll,
    get maxConcurrent() {
      return maxConcurrent;
    },
    get maxPerKey() {
      return maxPerKey;
    },
  };
}

describe('WorkQueue', () => {
  it('collapses repeats of a queued key into one run', async () => {
    const w = gatedWorker();
    const q = new WorkQueue({ worker: w.worker, workers: 1 });
    q.add('a');
    q.add('b');
    q.add('b');
    q.add('b');
    q.start();
    await w.releaseAll();
    await q.idle();
    await w.releaseAll();
    await q.idle();
    expect(w.runs).toEqual(['a', 'b']);
  });

  it('never runs one key twice at once, and runs it again once when added while running', async () => {
    const w = gatedWorker();
    const q = new WorkQueue({ worker: w.worker, workers: 4 });
    q.start();
    q.add('a');
    q.add('a');
    q.add('a');
    q.add('b');
    for (let i = 0; i < 5 && w.runs.length < 4; i++) await w.releaseAll();
    await q.idle();
    expect(w.maxPerKey).toBe(1);
    expect(w.runs.filter((k) => k === 'a')).toHaveLength(2);
    expect(w.runs.filter((k) => k === 'b')).toHaveLength(1);
  });

  it('bounds concurrency by the number of workers', async () => {
    const w = gatedWorker();
    const q = new WorkQueue({ worker: w.worker, workers: 2 });
    q.start();
    for (const k of ['a', 'b', 'c', 'd', 'e']) q.add(k);
    while (w.runs.length < 5) await w.releaseAll();
    await w.releaseAll();
    await q.idle();
    expect(w.maxConcurrent).toBe(2);
    expect([...w.runs].sort()).toEqual(['a', 'b', 'c', 'd', 'e']);
  });

  it('retries a failing key with doubling delays until it succeeds', async () => {
    const attempts: number[] = [];
    const delays: number[] = [];
    let done!: () => void;
    const succeeded = new Promise<void>((resolve) => {
      done = resolve;
    });
    const q = new WorkQueue({
      worker: async () => {
        attempts.push(attempts.length + 1);
        if (attempts.length < 4) throw new Error('API server unavailable');
        done();
      },
      baseDelayMs: 5,
      maxDelayMs: 15,
      onRetry: (_key, _err, _attempt, delayMs) => delays.push(delayMs),
    });
    q.start();
    q.add('a');
    await succeeded;
    expect(attempts).toEqual([1, 2, 3, 4]);
    expect(delays).toEqual([5, 10, 15]);
  });

  it('keeps one wait per key, the sooner: a key each run re-arms does not gather timers', async () => {
    const runs: { key: string; at: number }[] = [];
    const q = new WorkQueue({
      worker: async (key) => {
        runs.push({ key, at: performance.now() });
      },
    });
    q.start();
    const start = performance.now();
    // Asked to wait three times: it waits once, until the soonest time (40 ms), not 300 ms.
    q.addAfter('a', 300);
    q.addAfter('a', 40);
    q.addAfter('a', 200);
    q.addAfter('b', 60);
    await new Promise((r) => setTimeout(r, 400));
    expect(runs.map((r) => r.key)).toEqual(['a', 'b']);
    expect(runs[0]!.at - start).toBeLessThan(300);
    await q.stop();
  });

  it('stops: drops queued keys and pending retries, waits for the running one', async () => {
    const w = gatedWorker();
    const q = new WorkQueue({ worker: w.worker, workers: 1 });
    q.start();
    q.add('a');
    q.add('b');
    const stopped = q.stop();
    await w.releaseAll();
    await stopped;
    await new Promise((r) => setTimeout(r, 20));
    expect(w.runs).toEqual(['a']);
    expect(q.length).toBe(0);
  });
});
