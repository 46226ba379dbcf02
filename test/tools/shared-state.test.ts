/**
 * Two sidecars' tool engines (two registries of one ToolSet, each with its own connection) sharing a
 * real Redis (Debian redis-server on a free port): one quota, one cache, one run per identical call in
 * flight; Redis killed and restarted; keys and values free of secrets.
 */
import fc from 'fast-check';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CallableTool, callTool } from '../../src/tools/call.js';
import { createToolRegistry, type ToolRegistry } from '../../src/tools/registry.js';
import { resultId, type SharedStateEvent, ToolState } from '../../src/tools/tool-state.js';
import type { ToolOutcome } from '../../src/tools/types.js';
import { startRedis, type TestRedis } from '../support/redis.js';
import { capturingLogger, gate, silentLogger, startServer, type TestServer, toolset } from './helpers.js';

let redis: TestRedis;
beforeAll(async () => {
  redis = await startRedis();
});
afterAll(async () => {
  await redis?.close();
});

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  if (redis) {
    await redis.start().catch(() => {});
    await redis.admin().flushall();
  }
});

/** An HTTP tool server that counts the runs it serves; `hold` keeps answers back until released. */
async function toolServer(): Promise<TestServer & { runs: () => number; hold(): () => void }> {
  let held: ReturnType<typeof gate<void>> | undefined;
  const s = await startServer((req, res) => {
    const answer = () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ run: s.requests.length, url: req.url }));
    };
    if (held) held.promise.then(answer);
    else answer();
  });
  cleanups.push(() => s.close());
  return Object.assign(s, {
    runs: () => s.requests.length,
    hold() {
      const g = gate();
      held = g;
      return () => {
        held = undefined;
        g.open();
      };
    },
  });
}

const PARAMS = { type: 'object', properties: { city: { type: 'string' } } };

function weather(origin: string, extra: Record<string, unknown> = {}) {
  return {
    name: 'weather',
    description: 'Weather for a city.',
    parameters: PARAMS,
    http: {
      url: `${origin}/weather{?city}`,
      headers: [{ name: 'X-Api-Key', valueFrom: { env: 'WEATHER_KEY' } }],
    },
    ...extra,
  };
}

/**
 * Redis on loopback answers in well under a millisecond, but a test machine busy with other work can stall
 * a process for longer than the 50 ms a voice turn grants it; sharing tests give it more, so that they test
 * sharing, not the machine. The tests of a slow Redis keep the real budget.
 */
const GENEROUS_BUDGET_MS = 2000;

/** One sidecar: a registry of the ToolSet with shared state at the test Redis. */
async function sidecar(
  tools: Record<string, unknown>[],
  events: SharedStateEvent[] = [],
  budgetMs: number | undefined = GENEROUS_BUDGET_MS,
  spec: Record<string, unknown> = {},
): Promise<ToolRegistry> {
  const resolved = toolset(tools, {
    ...spec,
    sharedState: { redis: { url: { valueFrom: { env: 'REDIS_URL' } } } },
  });
  const r = await createToolRegistry(
    { ...resolved, namespace: 'voice' },
    {
      env: { REDIS_URL: redis.url, WEATHER_KEY: 'sk-weather-very-secret', OTHER_KEY: 'sk-other' },
      logger: silentLogger,
      onSharedState: (e) => events.push(e),
      ...(budgetMs === undefined ? {} : { sharedStateBudgetMs: budgetMs }),
    },
  );
  cleanups.push(() => r.close());
  await until(() => r.status().sharedState?.state === 'connected');
  return r;
}

async function until(check: () => boolean | Promise<boolean>, seconds = 20): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The result is written after the call returns (off the turn's path): wait for `n` results in Redis. */
function stored(n: number): Promise<void> {
  return until(async () => (await redis.admin().keys('*:r:*')).length >= n);
}

let ids = 0;
function call(r: ToolRegistry, city: string, signal = new AbortController().signal): Promise<ToolOutcome> {
  return r.call({ id: `c${++ids}`, name: 'weather', arguments: JSON.stringify({ city }) }, signal);
}

describe('two sidecars sharing a Redis', () => {
  it('hold one rate limit together', async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { rateLimit: { requests: 5, per: '1h' } });
    const [a, b] = [await sidecar([tool]), await sidecar([tool])];
    const outcomes: ToolOutcome[] = [];
    for (let i = 0; i < 6; i++) outcomes.push(await call(a, `a${i}`), await call(b, `b${i}`));
    const admitted = outcomes.filter((o) => o.outcome === 'ok');
    expect(admitted).toHaveLength(5);
    expect(s.runs()).toBe(5);
    const limited = outcomes.filter((o) => o.outcome === 'rate_limited');
    expect(limited).toHaveLength(7);
    expect(limited[0]?.content).toBe(
      'error: weather is busy (its rate limit is reached); try again in a moment',
    );
    // Calls alternate a, b: the first five (three of a, two of b) ran, each sidecar alone would have run more.
    expect(outcomes.map((o) => o.outcome)).toEqual([
      ...Array(5).fill('ok'),
      ...Array(7).fill('rate_limited'),
    ]);
  });

  it('share cached results: a run in one is a hit in the other', async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '10m' } });
    const [a, b] = [await sidecar([tool]), await sidecar([tool])];
    const first = await call(a, 'Lisbon');
    await stored(1);
    const second = await call(b, 'Lisbon');
    expect(first.outcome).toBe('ok');
    expect(second).toMatchObject({ outcome: 'cache_hit', content: first.content });
    expect(s.runs()).toBe(1);
    // The second sidecar now holds it in process too: Redis gone, still a hit.
    await redis.stop();
    expect((await call(b, 'Lisbon')).outcome).toBe('cache_hit');
  });

  it('keep results cut to different maxResultBytes apart, as during a rollout that changes it', async () => {
    // A tool whose answer (about 600 bytes) is longer than the smaller limit.
    const s = await startServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ run: s.requests.length, text: 'sunny '.repeat(100) }));
    });
    cleanups.push(() => s.close());
    const tool = weather(s.origin, { cache: { ttl: '10m' } });
    const limited = (maxResultBytes: number) =>
      sidecar([tool], [], GENEROUS_BUDGET_MS, { limits: { maxResultBytes } });
    const [old, fresh, otherOld] = [await limited(256), await limited(4096), await limited(256)];
    const cut = await call(old, 'Lisbon');
    expect(cut.outcome).toBe('ok');
    expect(Buffer.byteLength(cut.content)).toBeLessThanOrEqual(256);
    await stored(1);
    // The sidecar with the larger limit never takes the shorter result: it runs the call itself.
    const whole = await call(fresh, 'Lisbon');
    expect(whole.outcome).toBe('ok');
    expect(JSON.parse(whole.content)).toEqual({ run: 2, text: 'sunny '.repeat(100) });
    await stored(2);
    // And its result never reaches a sidecar on the smaller limit: that one reads the result cut to its own.
    expect(await call(otherOld, 'Lisbon')).toMatchObject({ outcome: 'cache_hit', content: cut.content });
    // Each keeps its own in process under the same id.
    await redis.stop();
    expect(await call(fresh, 'Lisbon')).toMatchObject({ outcome: 'cache_hit', content: whole.content });
    expect(await call(old, 'Lisbon')).toMatchObject({ outcome: 'cache_hit', content: cut.content });
    expect(s.requests).toHaveLength(2);
  });

  it("run two identical concurrent calls once, the waiter reading the holder's result", async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '10m' } });
    const [a, b] = [await sidecar([tool]), await sidecar([tool])];
    const release = s.hold();
    const first = call(a, 'Porto');
    await until(() => s.runs() === 1);
    const second = call(b, 'Porto');
    // The second waits on the first's lock, not running the tool, past the lock's own expiry (renewed).
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(s.runs()).toBe(1);
    release();
    const [x, y] = await Promise.all([first, second]);
    expect(x.outcome).toBe('ok');
    expect(y).toMatchObject({ outcome: 'cache_hit', content: x.content });
    expect(s.runs()).toBe(1);
  });

  it('free the waiters when the holder dies: they run it themselves within the tool timeout', async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '10m' }, timeout: '3s' });
    const b = await sidecar([tool]);
    // A holder that took the lock and died: the lock is there, no result ever comes.
    const keys = await (async () => {
      const a = await sidecar([tool]);
      const release = s.hold();
      const pending = call(a, 'Faro');
      await until(() => s.runs() === 1);
      const found = await redis.admin().keys('*:l:*');
      release();
      await pending;
      await until(async () => (await redis.admin().keys('*:r:*')).length === 1);
      await redis.admin().flushall();
      return found;
    })();
    expect(keys).toHaveLength(1);
    // A holder killed mid-run leaves its lock with at most one renewal period to live.
    await redis.admin().set(keys[0] as string, 'dead-holder', 'PX', 1000);
    const outcome = await call(b, 'Faro');
    expect(outcome.outcome).toBe('ok');
    expect(JSON.parse(outcome.content).run).toBe(2);
  });

  it('keep secrets out of keys and values, and namespace keys by ToolSet and tool definition', async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '10m' }, rateLimit: { requests: 10, per: '1m' } });
    const a = await sidecar([tool]);
    await call(a, 'Braga');
    const admin = redis.admin();
    const keys = (await admin.keys('*')).sort();
    expect(keys).toHaveLength(2);
    for (const key of keys) expect(key.startsWith('earpiece:{voice/test}:')).toBe(true);
    const dump = keys.join('\n') + (await Promise.all(keys.map((k) => admin.dump(k)))).join('\n');
    expect(dump).not.toContain('sk-weather-very-secret');
    // Arguments enter keys hashed (the result itself is what the model reads).
    expect(keys.join('\n')).not.toContain('Braga');

    // An edited tool never reads the old result.
    const edited = await sidecar([{ ...tool, description: 'Weather, in metric units.' }]);
    expect((await call(edited, 'Braga')).outcome).toBe('ok');
    expect(s.runs()).toBe(2);
    // The same tool whose key comes from another secret is another tool.
    const otherSecret = await sidecar([
      { ...tool, http: { ...tool.http, headers: [{ name: 'X-Api-Key', valueFrom: { env: 'OTHER_KEY' } }] } },
    ]);
    expect((await call(otherSecret, 'Braga')).outcome).toBe('ok');
    expect(s.runs()).toBe(3);
  });
});

describe('a result read from the shared state', () => {
  /**
   * One sidecar's call path on a ToolState of its own, so a test sees what enters its cache: each
   * `cache.set` is recorded. The tool answers `fresh` and counts its runs.
   */
  async function engine() {
    const { logger, lines } = capturingLogger();
    const state = await ToolState.create(
      toolset([], { sharedState: { redis: { url: { value: redis.url } } } }),
      { env: {}, logger, redisBudgetMs: GENEROUS_BUDGET_MS },
    );
    cleanups.push(() => state.close());
    await until(() => state.status()?.state === 'connected');
    const kept: { content: string; ttlMs: number }[] = [];
    const set = state.cache.set.bind(state.cache);
    state.cache.set = (key, content, ttlMs) => {
      kept.push({ content, ttlMs });
      set(key, content, ttlMs);
    };
    let runs = 0;
    const config = { ...toolset([{ name: 'lookup', builtin: 'time' }]).tools[0]!, cacheTtlMs: 60_000 };
    const tool: CallableTool = {
      name: 'lookup',
      description: 'Looks it up.',
      parameters: PARAMS,
      config,
      check: () => undefined,
      executor: {
        run: async () => {
          runs++;
          return 'fresh';
        },
      },
    };
    const options = { state, maxResultBytes: 2048, names: () => ['lookup'], logger };
    const lookup = (city: string) =>
      callTool(
        tool,
        { id: `c${++ids}`, name: 'lookup', arguments: JSON.stringify({ city }) },
        new AbortController().signal,
        options,
      );
    const key = (city: string) => `earpiece:{-/test}:r:${resultId(tool, { city }, options.maxResultBytes)}`;
    return { lookup, key, kept, runs: () => runs, warnings: () => lines().filter((l) => l.level === 40) };
  }

  it('is a miss when larger than maxResultBytes: the call runs, its result replaces it, and a warning says so once', async () => {
    const e = await engine();
    const admin = redis.admin();
    await admin.set(e.key('Lisbon'), 'x'.repeat(100_000), 'PX', 600_000);
    await admin.set(e.key('Porto'), 'y'.repeat(3000), 'PX', 600_000);
    expect(await e.lookup('Lisbon')).toMatchObject({ outcome: 'ok', content: 'fresh' });
    expect(await e.lookup('Porto')).toMatchObject({ outcome: 'ok', content: 'fresh' });
    expect(e.runs()).toBe(2);
    expect(e.kept.map((k) => k.content)).toEqual(['fresh', 'fresh']);
    await until(async () => (await admin.get(e.key('Lisbon'))) === 'fresh');
    expect(e.warnings()).toHaveLength(1);
    expect(e.warnings()[0]).toMatchObject({ bytes: 100_000, maxResultBytes: 2048 });
  });

  it('is kept here no longer than the tool ttl, and no larger than maxResultBytes when it is not UTF-8', async () => {
    const e = await engine();
    const admin = redis.admin();
    await admin.set(e.key('Faro'), 'cached', 'PX', 10 * 24 * 3600_000);
    // 2000 bytes in Redis, each a U+FFFD of 3 bytes once decoded.
    await admin.set(e.key('Braga'), Buffer.alloc(2000, 0xff), 'PX', 600_000);
    expect(await e.lookup('Faro')).toMatchObject({ outcome: 'cache_hit', content: 'cached' });
    expect((await e.lookup('Braga')).outcome).toBe('cache_hit');
    expect(e.runs()).toBe(0);
    expect(e.kept[0]?.ttlMs).toBeLessThanOrEqual(60_000);
    expect(Buffer.byteLength(e.kept[1]?.content ?? '')).toBeLessThanOrEqual(2048);
  });
});

describe('the sidecar-wide Redis (chart value sharedState.redis)', () => {
  it('is used for a ToolSet that names no shared state, and a bad URL stops the start with its name', async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '1m' } });
    const start = (url: string) =>
      createToolRegistry(toolset([tool]), {
        env: { EARPIECE_SHARED_STATE_REDIS_URL: url, WEATHER_KEY: 'k' },
        logger: silentLogger,
        sharedStateBudgetMs: GENEROUS_BUDGET_MS,
      });
    const [a, b] = [await start(redis.url), await start(redis.url)];
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    await until(
      () => a.status().sharedState?.state === 'connected' && b.status().sharedState?.state === 'connected',
    );
    expect(a.status().sharedState?.endpoint).toBe(`redis://127.0.0.1:${redis.port}`);
    await call(a, 'Aveiro');
    await stored(1);
    expect((await call(b, 'Aveiro')).outcome).toBe('cache_hit');
    await expect(start('http://user:pw@redis:6379')).rejects.toMatchObject({
      code: 'ERP_SHARED_STATE_CONFIG',
      message: 'EARPIECE_SHARED_STATE_REDIS_URL: is not a redis:// or rediss:// URL with a host',
    });
    // Without either, no Redis at all.
    const local = await createToolRegistry(toolset([tool]), {
      env: { WEATHER_KEY: 'k' },
      logger: silentLogger,
    });
    cleanups.push(() => local.close());
    expect(local.status().sharedState).toBeUndefined();
  });
});

describe('a retired ToolSet', () => {
  it("reports nothing when its connection closes: the shared state is the loaded ToolSet's to report", async () => {
    const events: SharedStateEvent[] = [];
    const old = await sidecar([weather('http://127.0.0.1:9')], events);
    expect(events).toEqual([
      { kind: 'connection', up: false },
      { kind: 'connection', up: true },
    ]);
    cleanups.pop();
    await old.close();
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(events).toHaveLength(2);
  });
});

describe('a Redis outage', () => {
  it("falls back to each sidecar's own cache and limits at once, reports it, and recovers", async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '10m' }, rateLimit: { requests: 3, per: '1h' } });
    const events: SharedStateEvent[] = [];
    const a = await sidecar([tool], events);
    await redis.stop();
    await until(() => a.status().sharedState?.state === 'down');
    expect(a.status().sharedState).toMatchObject({ backend: 'redis', state: 'down', fallback: true });
    expect(JSON.stringify(a.status())).not.toContain('sk-weather');

    const started = performance.now();
    const outcomes = [];
    for (const city of ['x', 'y', 'z', 'w']) outcomes.push((await call(a, city)).outcome);
    // Generous hang guard only; the 50 ms bound is measured by `npm run bench`.
    expect(performance.now() - started).toBeLessThan(5000);
    expect(outcomes).toEqual(['ok', 'ok', 'ok', 'rate_limited']);
    expect((await call(a, 'x')).outcome).toBe('cache_hit');
    expect(events).toContainEqual({ kind: 'connection', up: false });
    expect(events).toContainEqual({ kind: 'fallback', operation: 'rate_limit' });

    await redis.start();
    await until(() => a.status().sharedState?.state === 'connected');
    expect(a.status().sharedState?.fallback).toBe(false);
    expect(events.at(-1)).toEqual({ kind: 'connection', up: true });
    // Shared again: a second sidecar's run is a hit here.
    const b = await sidecar([tool]);
    await call(b, 'new');
    await stored(1);
    expect((await call(a, 'new')).outcome).toBe('cache_hit');
  });
});

/**
 * Whether some `limit + 1` admitted runs certainly started within one window: each run was admitted
 * somewhere between its call's start and end, so runs whose calls all fall within less than `perMs`
 * were admitted within one window, whatever the exact moments.
 */
function certainlyOverLimit(
  runs: { before: number; after: number }[],
  limit: number,
  perMs: number,
): boolean {
  const sorted = [...runs].sort((x, y) => x.before - y.before);
  return sorted.some((first, i) => {
    const afters = sorted
      .slice(i + 1)
      .map((r) => r.after)
      .sort((x, y) => x - y);
    if (afters.length < limit) return false;
    return Math.max(first.after, afters[limit - 1] as number) - first.before < perMs;
  });
}

describe('a Redis that stops answering', () => {
  it('costs a call one command timeout, then is left alone until it answers again', async () => {
    const s = await toolServer();
    const tool = weather(s.origin, { cache: { ttl: '10m' }, rateLimit: { requests: 100, per: '1m' } });
    const events: SharedStateEvent[] = [];
    const a = await sidecar([tool], events, undefined);
    redis.pause();
    try {
      const started = performance.now();
      expect((await call(a, 'slow')).outcome).toBe('ok');
      expect((await call(a, 'slower')).outcome).toBe('ok');
      // A hang guard only; the 50 ms bound is measured by `npm run bench`.
      expect(performance.now() - started).toBeLessThan(5000);
      // The first call's cache lookup timed out; everything after it was decided here at once.
      expect(events.filter((e) => e.kind === 'fallback')).toEqual([
        { kind: 'fallback', operation: 'cache' },
        { kind: 'fallback', operation: 'rate_limit' },
        { kind: 'fallback', operation: 'cache' },
        { kind: 'fallback', operation: 'rate_limit' },
      ]);
      expect(a.status().sharedState).toMatchObject({ fallback: true, lastError: 'Command timed out' });
    } finally {
      redis.resume();
    }
    await until(() => a.status().sharedState?.fallback === false);
    const b = await sidecar([tool]);
    await call(b, 'thawed');
    await stored(1);
    expect((await call(a, 'thawed')).outcome).toBe('cache_hit');
  });
});

describe('the fleet-wide rate limit (property)', () => {
  it('never starts more runs in any window than the limit, for any interleaving across two sidecars', async () => {
    const s = await toolServer();
    const per = 400;
    const limit = 3;
    const tool = weather(s.origin, { rateLimit: { requests: limit, per: `${per}ms` } });
    const events: SharedStateEvent[] = [];
    const [a, b] = [await sidecar([tool], events), await sidecar([tool], events)];
    let checked = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ onA: fc.boolean(), gapMs: fc.integer({ min: 0, max: 120 }) }), {
          minLength: 1,
          maxLength: 20,
        }),
        async (plan) => {
          await redis.admin().flushall();
          events.length = 0;
          const runs: { before: number; after: number; outcome: string }[] = [];
          const pending: Promise<void>[] = [];
          for (const step of plan) {
            const before = performance.now();
            pending.push(
              call(step.onA ? a : b, 'same').then((o) => {
                runs.push({ before, after: performance.now(), outcome: o.outcome });
              }),
            );
            if (step.gapMs > 0) await new Promise((resolve) => setTimeout(resolve, step.gapMs));
          }
          await Promise.all(pending);
          // While Redis cannot answer each sidecar holds the limit alone; that is not this property.
          fc.pre(!events.some((e) => e.kind === 'fallback'));
          checked++;
          const admitted = runs.filter((r) => r.outcome === 'ok');
          expect(admitted.length + runs.filter((r) => r.outcome === 'rate_limited').length).toBe(plan.length);
          expect(certainlyOverLimit(admitted, limit, per)).toBe(false);
        },
      ),
      { numRuns: 20 },
    );
    expect(checked).toBeGreaterThan(10);
  });

  it('the check itself sees an overrun', () => {
    const run = (t: number) => ({ before: t, after: t + 1 });
    expect(certainlyOverLimit([run(0), run(10), run(20), run(30)], 3, 400)).toBe(true);
    expect(certainlyOverLimit([run(0), run(10), run(20), run(500)], 3, 400)).toBe(false);
  });
});
