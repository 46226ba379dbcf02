import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_CACHE_CHARS, ToolCache } from '../../src/tools/cache.js';
import { createToolRegistry, type ToolRegistry } from '../../src/tools/registry.js';
import { resultId } from '../../src/tools/tool-state.js';
import { gate, responseClosed, silentLogger, startServer, type TestServer, toolset } from './helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface CountingServer extends TestServer {
  /** Opens the gate for held requests (paths starting /held). */
  release(): void;
  /** One promise per held request, resolving when its response closes. */
  closed: Promise<{ finished: boolean }>[];
  /** Resolves once `n` held requests have arrived. */
  arrived(n: number): Promise<void>;
}

/** Answers with a running count, so a repeated answer proves a cached or shared result. */
async function countingServer(): Promise<CountingServer> {
  let count = 0;
  let failNext = false;
  const held = gate();
  const closed: Promise<{ finished: boolean }>[] = [];
  const waiting: { n: number; open: () => void }[] = [];
  const s = await startServer((req, res) => {
    const n = ++count;
    const answer = () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ n, url: req.url }));
    };
    if (req.url?.startsWith('/flaky') && !failNext) {
      failNext = true;
      res.writeHead(503);
      res.end();
      return;
    }
    if (!req.url?.startsWith('/held')) return answer();
    closed.push(responseClosed(res));
    for (const w of waiting) if (closed.length >= w.n) w.open();
    held.promise.then(() => {
      if (!res.destroyed) answer();
    });
  });
  cleanups.push(() => s.close());
  return Object.assign(s, {
    release: () => held.open(),
    closed,
    arrived: (n: number) =>
      new Promise<void>((open) => (closed.length >= n ? open() : waiting.push({ n, open }))),
  });
}

async function registry(
  tools: Record<string, unknown>[],
  options: { spec?: Record<string, unknown>; now?: () => number } = {},
): Promise<ToolRegistry> {
  const r = await createToolRegistry(toolset(tools, options.spec), {
    logger: silentLogger,
    env: {},
    ...(options.now ? { now: options.now } : {}),
  });
  cleanups.push(() => r.close());
  return r;
}

const anyArgs = { type: 'object', properties: {}, additionalProperties: true };
let ids = 0;
const call = (r: ToolRegistry, name: string, args: string, signal = new AbortController().signal) =>
  r.call({ id: `c${++ids}`, name, arguments: args }, signal);

describe('tool cache', () => {
  it('serves a result until its ttl passes, whatever the key order of the arguments', async () => {
    const s = await countingServer();
    let clock = 1_000_000;
    const r = await registry(
      [{ name: 'w', parameters: anyArgs, cache: { ttl: '10m' }, http: { url: `${s.origin}/w` } }],
      { now: () => clock },
    );
    const first = await call(r, 'w', '{"lat": 52.5, "lon": 13.4, "opts": {"a": 1, "b": [1, 2]}}');
    expect(first).toMatchObject({ outcome: 'ok', content: '{"n":1,"url":"/w"}' });
    const again = await call(r, 'w', '{"opts": {"b": [1, 2], "a": 1}, "lon": 13.4, "lat": 52.5}');
    expect(again).toMatchObject({ outcome: 'cache_hit', content: first.content });
    // Different values (here, array order) are a different call.
    expect(await call(r, 'w', '{"lat": 52.5, "lon": 13.4, "opts": {"a": 1, "b": [2, 1]}}')).toMatchObject({
      outcome: 'ok',
      content: '{"n":2,"url":"/w"}',
    });

    clock += 10 * 60_000 - 1;
    expect((await call(r, 'w', '{"lat": 52.5, "lon": 13.4, "opts": {"a": 1, "b": [1, 2]}}')).outcome).toBe(
      'cache_hit',
    );
    clock += 2;
    expect(await call(r, 'w', '{"lat": 52.5, "lon": 13.4, "opts": {"a": 1, "b": [1, 2]}}')).toMatchObject({
      outcome: 'ok',
      content: '{"n":3,"url":"/w"}',
    });
  });

  it('caches only tools with cache.ttl, and each tool under its own name', async () => {
    const s = await countingServer();
    const r = await registry([
      { name: 'cached', cache: { ttl: '1m' }, http: { url: `${s.origin}/a` } },
      { name: 'also_cached', cache: { ttl: '1m' }, http: { url: `${s.origin}/a` } },
      { name: 'plain', http: { url: `${s.origin}/a` } },
    ]);
    expect((await call(r, 'cached', '')).outcome).toBe('ok');
    expect((await call(r, 'cached', '{}')).outcome).toBe('cache_hit');
    expect((await call(r, 'also_cached', '')).outcome).toBe('ok');
    expect((await call(r, 'plain', '')).outcome).toBe('ok');
    expect((await call(r, 'plain', '')).outcome).toBe('ok');
    expect(s.requests).toHaveLength(4);
  });

  it('never shares an entry between numbers too large to represent: they are refused', async () => {
    const s = await countingServer();
    const r = await registry([
      { name: 'n', parameters: anyArgs, cache: { ttl: '1m' }, http: { url: `${s.origin}/n` } },
    ]);
    for (const args of ['{"x": 1e400}', '{"x": -1e400}', '{"x": [1, {"y": -2e308}]}']) {
      expect(await call(r, 'n', args)).toMatchObject({
        outcome: 'invalid_arguments',
        content: 'error: the arguments for n are wrong: they hold a number too large to represent',
      });
    }
    expect(await call(r, 'n', '{"x": 1.7e308}')).toMatchObject({ outcome: 'ok' });
    expect(s.requests).toHaveLength(1);
  });

  it('keeps only ok results', async () => {
    const s = await countingServer();
    const r = await registry([{ name: 'flaky', cache: { ttl: '1m' }, http: { url: `${s.origin}/flaky` } }]);
    expect((await call(r, 'flaky', '')).outcome).toBe('error');
    expect((await call(r, 'flaky', '')).outcome).toBe('ok');
    expect((await call(r, 'flaky', '')).outcome).toBe('cache_hit');
    expect(s.requests).toHaveLength(2);
  });

  it('evicts the least recently used entry beyond cache.maxEntries', async () => {
    const s = await countingServer();
    const r = await registry(
      [
        {
          name: 'w',
          parameters: { type: 'object', properties: { k: { type: 'string' } } },
          cache: { ttl: '1h' },
          http: { url: `${s.origin}/w{?k}` },
        },
      ],
      { spec: { cache: { maxEntries: 2 } } },
    );
    await call(r, 'w', '{"k": "a"}');
    await call(r, 'w', '{"k": "b"}');
    expect((await call(r, 'w', '{"k": "a"}')).outcome).toBe('cache_hit'); // a is now the most recent
    await call(r, 'w', '{"k": "c"}'); // evicts b
    expect((await call(r, 'w', '{"k": "a"}')).outcome).toBe('cache_hit');
    expect((await call(r, 'w', '{"k": "c"}')).outcome).toBe('cache_hit');
    expect((await call(r, 'w', '{"k": "b"}')).outcome).toBe('ok');
    expect(s.requests.map((q) => q.url)).toEqual(['/w?k=a', '/w?k=b', '/w?k=c', '/w?k=b']);
  });

  it('holds results to a total size too, whatever maxEntries allows, oldest out first', () => {
    // Keys come from arguments the model chooses: a thousand entries of a megabyte would be a gigabyte.
    expect(MAX_CACHE_CHARS).toBe(16 * 1024 * 1024);
    const cache = new ToolCache({ maxEntries: 1000, maxChars: 1000 });
    for (const key of ['a', 'b', 'c', 'd']) cache.set(key, key.repeat(300), 60_000);
    expect(cache.size).toBe(3);
    expect(cache.get('a')).toBeUndefined();
    expect(cache.get('d')).toBe('d'.repeat(300));
    // One result larger than the whole is not kept at all.
    cache.set('e', 'e'.repeat(1001), 60_000);
    expect(cache.get('e')).toBeUndefined();
    expect(cache.get('d')).toBe('d'.repeat(300));
  });

  it('makes short keys that ignore the key order of objects at every depth', () => {
    const reorder = (value: unknown, flip: boolean): unknown => {
      if (Array.isArray(value)) return value.map((v) => reorder(v, !flip));
      if (value === null || typeof value !== 'object') return value;
      const entries = Object.entries(value).map(([k, v]) => [k, reorder(v, !flip)] as const);
      entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0) * (flip ? -1 : 1));
      return Object.fromEntries(entries);
    };
    const config = toolset([{ name: 'w', builtin: 'time' }]).tools[0]!;
    const tool = { name: 'w', description: 'd', parameters: anyArgs, config };
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue()), fc.boolean(), (args, flip) => {
        const reordered = reorder(args, flip) as Record<string, unknown>;
        expect(resultId(tool, reordered, 2048)).toBe(resultId(tool, args, 2048));
        expect(resultId(tool, args, 2048)).toMatch(/^w:[0-9a-f]{24}:2048:[0-9a-f]{24}$/);
        expect(resultId(tool, args, 4096)).not.toBe(resultId(tool, args, 2048));
        if (JSON.stringify(args) !== '{}')
          expect(resultId(tool, args, 2048)).not.toBe(resultId(tool, {}, 2048));
      }),
    );
  });
});

describe('identical calls in flight', () => {
  const heldTool = (extra: Record<string, unknown> = {}) => ({
    name: 'held',
    parameters: anyArgs,
    cache: { ttl: '1m' },
    http: { url: `__ORIGIN__/held` },
    ...extra,
  });
  const withOrigin = (tool: Record<string, unknown>, origin: string) =>
    JSON.parse(JSON.stringify(tool).replace('__ORIGIN__', origin)) as Record<string, unknown>;

  it('share one execution', async () => {
    const s = await countingServer();
    const r = await registry([withOrigin(heldTool(), s.origin)]);
    const a = call(r, 'held', '{"x": 1, "y": 2}');
    const b = call(r, 'held', '{"y": 2, "x": 1}');
    await s.arrived(1);
    s.release();
    const [ra, rb] = await Promise.all([a, b]);
    expect([ra.outcome, rb.outcome]).toEqual(['ok', 'ok']);
    expect(rb.content).toBe(ra.content);
    expect(s.requests).toHaveLength(1);
    expect((await call(r, 'held', '{"x": 1, "y": 2}')).outcome).toBe('cache_hit');
  });

  it('keep running for the others when one caller leaves', async () => {
    const s = await countingServer();
    const r = await registry([withOrigin(heldTool(), s.origin)]);
    const leaving = new AbortController();
    const a = call(r, 'held', '{}', leaving.signal);
    const b = call(r, 'held', '{}');
    await s.arrived(1);
    leaving.abort();
    expect(await a).toMatchObject({ outcome: 'cancelled' });
    s.release();
    expect(await b).toMatchObject({ outcome: 'ok', content: '{"n":1,"url":"/held"}' });
    expect(await s.closed[0]).toEqual({ finished: true });
    expect(s.requests).toHaveLength(1);
  });

  it('abort the request when every caller has left, and the next call starts afresh', async () => {
    const s = await countingServer();
    const r = await registry([withOrigin(heldTool(), s.origin)]);
    const first = new AbortController();
    const second = new AbortController();
    const a = call(r, 'held', '{}', first.signal);
    const b = call(r, 'held', '{}', second.signal);
    await s.arrived(1);
    first.abort();
    second.abort();
    expect((await Promise.all([a, b])).map((o) => o.outcome)).toEqual(['cancelled', 'cancelled']);
    expect(await s.closed[0]).toEqual({ finished: false });

    const c = call(r, 'held', '{}');
    await s.arrived(2);
    s.release();
    expect(await c).toMatchObject({ outcome: 'ok', content: '{"n":2,"url":"/held"}' });
  });

  it('run to completion for onInterrupt: finish even when every caller has left', async () => {
    const s = await countingServer();
    const r = await registry([withOrigin(heldTool({ onInterrupt: 'finish' }), s.origin)]);
    const first = new AbortController();
    const second = new AbortController();
    const a = call(r, 'held', '{}', first.signal);
    const b = call(r, 'held', '{}', second.signal);
    await s.arrived(1);
    first.abort();
    second.abort();
    s.release();
    expect((await Promise.all([a, b])).map((o) => o.outcome)).toEqual(['ok', 'ok']);
    expect(await s.closed[0]).toEqual({ finished: true });
    expect(s.requests).toHaveLength(1);
  });

  it('are shared even when the result cache is off (cache.maxEntries: 0)', async () => {
    const s = await countingServer();
    const r = await registry([withOrigin(heldTool(), s.origin)], { spec: { cache: { maxEntries: 0 } } });
    const a = call(r, 'held', '{}');
    const b = call(r, 'held', '{}');
    await s.arrived(1);
    s.release();
    expect((await Promise.all([a, b])).map((o) => o.outcome)).toEqual(['ok', 'ok']);
    expect(s.requests).toHaveLength(1);
    expect((await call(r, 'held', '{}')).outcome).toBe('ok');
    expect(s.requests).toHaveLength(2);
  });
});
