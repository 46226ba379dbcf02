/**
 * A proxy that took a load gives the memory it grew back once no turn is open (src/runtime/heap.ts): the
 * built proxy, in a process started with the image's Node flags, against the scripted model. The young
 * generation, read from /metrics, is what a load grows and the collection shrinks.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { imageNodeFlags } from '../support/image-flags.js';

const IMAGE_FLAGS = imageNodeFlags();
const WITHOUT_GC = IMAGE_FLAGS.filter((flag) => flag !== '--expose-gc');
const MiB = 2 ** 20;
/** The proxy's wait with no turn open, short for the test (30 s in production). */
const AFTER_MS = 400;
const COLLECTED = 'Gave back the memory the last load grew';

/** The scripted model answers 64 words; a request whose last message says "hold" gets no answer at all. */
const CHILD = `
const [startUrl, demoUrl, toolsetPath, afterMs] = process.argv.slice(1);
const { startProxy } = await import(startUrl);
const { startScriptedUpstream, textReply } = await import(demoUrl);
const text = Array.from({ length: 64 }, (_, i) => 'word' + i).join(' ') + '.';
const upstream = await startScriptedUpstream({
  respond: (request) =>
    request.body.messages?.at(-1)?.content === 'hold'
      ? { hang: true }
      : { sse: textReply(text, 'vllm-llama3json', { delayMs: 1 }) },
});
const proxy = await startProxy({
  toolsetPath, upstreamUrl: upstream.url, host: '127.0.0.1', port: 0, metricsHost: '127.0.0.1', metricsPort: 0,
  watch: false, idleCollection: { afterMs: Number(afterMs), growthBytes: 8 * 2 ** 20 },
});
console.log(JSON.stringify({ started: { chat: proxy.url, metrics: proxy.metricsUrl } }));
`;

const running = new Set<ChildProcess>();
afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
});

async function startProxyChild(nodeFlags: readonly string[]) {
  const child = spawn(
    process.execPath,
    [
      ...nodeFlags,
      '--input-type=module',
      '-e',
      CHILD,
      pathToFileURL(resolve('dist/src/proxy/start.js')).href,
      pathToFileURL(resolve('dist/src/demo/scripted-upstream.js')).href,
      'examples/weather-toolset.yaml',
      String(AFTER_MS),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OTEL_SDK_DISABLED: 'true' } },
  );
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk;
  });
  const urls = await new Promise<{ chat: string; metrics: string }>((done, fail) => {
    const timer = setTimeout(() => fail(new Error(`no start within 20 s:\n${stdout}\n${stderr}`)), 20_000);
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk;
      const line = stdout.match(/^\{"started":.*$/m)?.[0];
      if (line) {
        clearTimeout(timer);
        done((JSON.parse(line) as { started: { chat: string; metrics: string } }).started);
      }
    });
    once(child, 'exit').then(([code]) => fail(new Error(`exited ${code}:\n${stdout}\n${stderr}`)), fail);
  });
  return { ...urls, stdout: () => stdout };
}

function chat(url: string, say: string, signal?: AbortSignal): Promise<Response> {
  return fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', stream: true, messages: [{ role: 'user', content: say }] }),
    ...(signal ? { signal } : {}),
  });
}

/** `streams` turns at once, each read to its end. */
async function load(url: string, streams: number): Promise<void> {
  await Promise.all(
    Array.from({ length: streams }, async (_, i) => {
      const text = await (await chat(url, `Tell me a story, number ${i}.`)).text();
      expect(text).toContain('word63.');
    }),
  );
}

async function newSpaceBytes(metricsUrl: string): Promise<number> {
  const metrics = await (await fetch(`${metricsUrl}/metrics`)).text();
  const size = metrics.match(/^nodejs_heap_space_size_total_bytes\{space="new"\} (\d+)$/m)?.[1];
  expect(size, 'the new space gauge').toBeDefined();
  return Number(size);
}

describe('a proxy after a load', () => {
  it('gives back the young generation the load grew once no turn is open, and not before', async () => {
    const proxy = await startProxyChild(IMAGE_FLAGS);
    const hold = new AbortController();
    const held = await chat(proxy.chat, 'hold', hold.signal);
    expect(held.status).toBe(200);

    await load(proxy.chat, 300);
    const grown = await newSpaceBytes(proxy.metrics);
    expect(grown).toBeGreaterThan(8 * MiB);
    // The held turn is still open: however long the proxy idles, no collection.
    await sleep(AFTER_MS * 5);
    expect(proxy.stdout()).not.toContain(COLLECTED);
    expect(await newSpaceBytes(proxy.metrics)).toBeGreaterThan(8 * MiB);

    hold.abort();
    const deadline = Date.now() + 15_000;
    while (!proxy.stdout().includes(COLLECTED) && Date.now() < deadline) await sleep(50);
    expect(proxy.stdout()).toContain(COLLECTED);
    expect(await newSpaceBytes(proxy.metrics)).toBeLessThanOrEqual(grown / 2);
  }, 90_000);

  it('keeps it without --expose-gc, where there is no collection to run', async () => {
    const proxy = await startProxyChild(WITHOUT_GC);
    await load(proxy.chat, 300);
    const grown = await newSpaceBytes(proxy.metrics);
    expect(grown).toBeGreaterThan(8 * MiB);
    await sleep(AFTER_MS * 5);
    expect(proxy.stdout()).not.toContain(COLLECTED);
    expect(await newSpaceBytes(proxy.metrics)).toBeGreaterThan(8 * MiB);
  }, 90_000);
});
