/**
 * Shared tool state (Redis) against in-process state, measured in this process with a real
 * `redis-server` (Debian package) on a free port, an HTTP tool on loopback that answers at once, and the
 * proxy's own tool registry and proxy:
 *
 * - one tool call answered from this sidecar's cache, from Redis (another sidecar's result), and run;
 * - a whole tool turn through the proxy (model asks for the tool, tool runs, model answers) with a rate
 *   limited, cached tool, shared state off against on;
 * - the calls made while Redis is frozen (SIGSTOP): what a voice turn pays before falling back.
 *
 * `node dist/bench/shared-state.js` runs this part alone; `npm run bench` includes it.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import {
  type RecordedRequest,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../src/demo/scripted-upstream.js';
import { startProxy } from '../src/proxy/start.js';
import { REDIS_BOUND_MS } from '../src/tools/budget.js';
import { createToolRegistry, type ToolRegistry } from '../src/tools/registry.js';
import { toolSetDocument } from '../src/toolset/api.js';
import { resolveToolSet } from '../src/toolset/defaults.js';
import { writeToolSetFile } from '../src/toolset/load.js';
import { validateToolSet } from '../src/toolset/validate.js';

/** The fallback bound a voice turn relies on. */
export { REDIS_BOUND_MS };

const CALLS = 2000;
const TURNS = 200;
const FROZEN_CALLS = 20;

export interface Quantiles {
  p50: number;
  p99: number;
  max: number;
  n: number;
  /** Calls with another outcome than the one measured (Redis missed its budget; decided here). */
  other: number;
}

export interface SharedStateCost {
  /** One call, ms. */
  localHit: Quantiles;
  redisHit: Quantiles;
  toolRun: Quantiles;
  /** One tool turn through the proxy, ms. */
  turnOff: Quantiles;
  turnOn: Quantiles;
  /** Calls while Redis is frozen, ms (the first pays the command timeout, the rest decide at once). */
  frozen: Quantiles;
  frozenFirst: number;
}

function quantiles(values: number[] & { other?: number }): Quantiles {
  const s = Float64Array.from(values).sort();
  const at = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))] as number;
  return {
    p50: at(0.5),
    p99: at(0.99),
    max: s[s.length - 1] as number,
    n: s.length,
    other: values.other ?? 0,
  };
}

export function redisAvailable(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function startRedis(): Promise<{ url: string; child: ChildProcess }> {
  const port = await freePort();
  const child = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  let output = '';
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`redis-server exited with ${code}`)));
  });
  return { url: `redis://127.0.0.1:${port}`, child };
}

const silent = pino({ level: 'silent' });

function toolSpec(toolUrl: string, extra: Record<string, unknown> = {}) {
  return {
    name: 'weather',
    description: 'Weather for a city.',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    http: { url: `${toolUrl}/weather{?city}` },
    cache: { ttl: '10m' },
    rateLimit: { requests: 100000, per: '1m' },
    ...extra,
  };
}

async function registry(spec: Record<string, unknown>): Promise<ToolRegistry> {
  const result = validateToolSet(toolSetDocument('bench', spec));
  if (!result.ok) throw new Error(JSON.stringify(result.issues));
  const r = await createToolRegistry(resolveToolSet(result.toolset), { env: {}, logger: silent });
  if (spec.sharedState) {
    const until = Date.now() + 10_000;
    while (r.status().sharedState?.state !== 'connected') {
      if (Date.now() > until) throw new Error('the benchmark Redis never connected');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
  return r;
}

const shared = (url: string) => ({ sharedState: { redis: { url: { value: url } } } });
const signal = new AbortController().signal;

/** Times n calls; `other` counts those with another outcome (a Redis that missed the budget: run here). */
async function timeCalls(
  r: ToolRegistry,
  args: (i: number) => string,
  n: number,
  expect: string,
): Promise<number[] & { other: number }> {
  const out = Object.assign([] as number[], { other: 0 });
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    const o = await r.call({ id: `c${i}`, name: 'weather', arguments: args(i) }, signal);
    out.push(performance.now() - started);
    if (o.outcome === 'error') throw new Error(`call ${i} failed: ${o.content}`);
    if (o.outcome !== expect) out.other++;
  }
  return out;
}

/** Tool turns through a proxy: the model asks for the weather of a new city each turn, then answers. */
async function timeTurns(
  toolUrl: string,
  redisUrl: string | undefined,
  upstreamUrl: string,
): Promise<number[]> {
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-bench-shared-'));
  const spec = { voice: { filler: '' }, ...(redisUrl ? shared(redisUrl) : {}), tools: [toolSpec(toolUrl)] };
  const path = await writeToolSetFile(dir, 'bench', spec);
  const proxy = await startProxy({
    toolsetPath: path,
    upstreamUrl,
    host: '127.0.0.1',
    port: 0,
    metricsHost: '127.0.0.1',
    metricsPort: 0,
    env: process.env,
    logger: silent,
    watch: false,
  });
  try {
    if (redisUrl) {
      const until = Date.now() + 10_000;
      while (proxy.current().tools.status().sharedState?.state !== 'connected') {
        if (Date.now() > until) throw new Error('the proxy never connected to the benchmark Redis');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    const out: number[] = [];
    const tag = redisUrl ? 'on' : 'off';
    for (let i = 0; i < TURNS + 20; i++) {
      const started = performance.now();
      const response = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          model: 'bench-model',
          stream: true,
          messages: [{ role: 'user', content: `What is the weather in city-${tag}-${i}` }],
        }),
      });
      const text = await response.text();
      if (!text.includes('Sunny')) throw new Error(`turn ${i} did not answer: ${text.slice(0, 200)}`);
      // The first turns warm the paths up and are not counted.
      if (i >= 20) out.push(performance.now() - started);
    }
    return out;
  } finally {
    await proxy.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function measureSharedState(log: (line: string) => void): Promise<SharedStateCost> {
  const tool = createHttpServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({ city: new URL(req.url ?? '/', 'http://x').searchParams.get('city'), sky: 'sunny' }),
    );
  });
  tool.listen(0, '127.0.0.1');
  await once(tool, 'listening');
  const toolUrl = `http://127.0.0.1:${(tool.address() as AddressInfo).port}`;
  const upstream = await startScriptedUpstream({
    respond: (req: RecordedRequest) => {
      if (toolResults(req).length > 0) return { sse: textReply('Sunny today.') };
      const user = String(req.body.messages?.at(-1)?.content ?? '');
      return { sse: toolCallReply([{ name: 'weather', arguments: { city: user.split(' ').at(-1) } }]) };
    },
  });
  const redis = await startRedis();
  const registries: ToolRegistry[] = [];
  try {
    log('Shared tool state: calls answered in process, from Redis, and run…');
    const local = await registry({ tools: [toolSpec(toolUrl)] });
    const writer = await registry({ ...shared(redis.url), tools: [toolSpec(toolUrl)] });
    // No result cache of its own: every call asks Redis, which holds the writer's result.
    const reader = await registry({
      ...shared(redis.url),
      cache: { maxEntries: 0 },
      tools: [toolSpec(toolUrl)],
    });
    const uncached = await registry({
      tools: [toolSpec(toolUrl, { cache: undefined, rateLimit: undefined })],
    });
    registries.push(local, writer, reader, uncached);
    const same = () => '{"city":"Lisbon"}';
    await timeCalls(local, same, 1, 'ok');
    await timeCalls(writer, same, 1, 'ok');
    await timeCalls(local, same, 200, 'cache_hit');
    const localHit = quantiles(await timeCalls(local, same, CALLS, 'cache_hit'));
    await timeCalls(reader, same, 200, 'cache_hit');
    const redisHit = quantiles(await timeCalls(reader, same, CALLS, 'cache_hit'));
    const distinct = (i: number) => JSON.stringify({ city: `c${i}` });
    await timeCalls(uncached, distinct, 200, 'ok');
    const toolRun = quantiles(await timeCalls(uncached, distinct, CALLS, 'ok'));

    log(`Shared tool state: ${TURNS} tool turns through the proxy, shared state off, then on…`);
    const turnOff = quantiles(await timeTurns(toolUrl, undefined, upstream.url));
    const turnOn = quantiles(await timeTurns(toolUrl, redis.url, upstream.url));

    log('Shared tool state: calls while Redis is frozen…');
    redis.child.kill('SIGSTOP');
    let frozenTimes: number[];
    try {
      frozenTimes = await timeCalls(
        writer,
        (i) => JSON.stringify({ city: `frozen-${i}` }),
        FROZEN_CALLS,
        'ok',
      );
    } finally {
      redis.child.kill('SIGCONT');
    }
    return {
      localHit,
      redisHit,
      toolRun,
      turnOff,
      turnOn,
      frozen: quantiles(frozenTimes),
      frozenFirst: frozenTimes[0] as number,
    };
  } finally {
    await Promise.allSettled(registries.map((r) => r.close()));
    redis.child.kill('SIGKILL');
    await upstream.close();
    tool.closeAllConnections();
    tool.close();
  }
}

const ms = (v: number) => `${v.toFixed(3)} ms`;

export function sharedStateReport(c: SharedStateCost | undefined): string[] {
  if (!c)
    return [
      '',
      'Shared tool state: redis-server is not installed (Debian: apt-get install redis-server); skipped.',
    ];
  const row = (label: string, q: Quantiles) =>
    `| ${label} | ${ms(q.p50)} | ${ms(q.p99)} | ${ms(q.max)} | ${q.n} |`;
  return [
    '',
    'Shared tool state (Redis on loopback, in this process; an HTTP tool on loopback that answers at once):',
    '',
    '| one tool call | p50 | p99 | max | n |',
    '|---|---|---|---|---|',
    row('cache hit in this sidecar', c.localHit),
    row("cache hit through Redis (another sidecar's result)", c.redisHit),
    row('tool run (no cache, no limit)', c.toolRun),
    '',
    '| one tool turn through the proxy (rate limit + cache miss) | p50 | p99 | max | n |',
    '|---|---|---|---|---|',
    row('shared state off', c.turnOff),
    row('shared state on', c.turnOn),
    '',
    `Redis frozen (SIGSTOP), ${c.frozen.n} calls of a rate-limited, cached tool: the first took ${ms(c.frozenFirst)} ` +
      `(one command timeout, then in-process), the rest p50 ${ms(c.frozen.p50)}, max ${ms(c.frozen.max)}; ` +
      'the bound is 50 ms of Redis per call.',
  ];
}

if (import.meta.url === `file://${process.argv[1]}`) {
  if (!redisAvailable()) {
    process.stdout.write(`${sharedStateReport(undefined).join('\n')}\n`);
  } else {
    const cost = await measureSharedState((line) => process.stderr.write(`${line}\n`));
    process.stdout.write(`${sharedStateReport(cost).join('\n')}\n`);
  }
}
