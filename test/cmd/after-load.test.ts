/**
 * A proxy that took a load gives the memory it grew back once no turn is open (src/runtime/heap.ts): the
 * built command, started with the image's Node flags and a short --idle-collection-after, against the
 * scripted model. The young generation, read from /metrics, is what a load grows and the collection shrinks.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type ScriptedUpstream, startScriptedUpstream, textReply } from '../../src/demo/scripted-upstream.js';
import {
  LOOPBACK_PROXY_ARGS,
  LOOPBACK_PROXY_ENV,
  newSpaceBytes,
  proxyListening,
  startBuiltCommand,
  stopStartedCommands,
} from '../support/built-command.js';
import { imageNodeFlags } from '../support/image-flags.js';

const MiB = 2 ** 20;
/** The wait with no turn open, short for the test (30 s by default). */
const AFTER_MS = 400;
const COLLECTED = 'Gave back the memory the last load grew';
const ANSWER = `${Array.from({ length: 64 }, (_, i) => `word${i}`).join(' ')}.`;

let upstream: ScriptedUpstream;
let dir: string;
let toolsetPath: string;
beforeAll(async () => {
  // A request whose last message says "hold" gets no answer: its turn stays open until the client leaves.
  upstream = await startScriptedUpstream({
    respond: (request) =>
      request.body.messages?.at(-1)?.content === 'hold'
        ? { hang: true }
        : { sse: textReply(ANSWER, 'vllm-llama3json', { delayMs: 1 }) },
  });
  dir = await mkdtemp(join(tmpdir(), 'earpiece-after-load-'));
  toolsetPath = join(dir, 'toolset.yaml');
  // The held turn must outlast the test, whatever the machine's load: not the example's 20 s deadline.
  const example = await readFile('examples/toolset.yaml', 'utf8');
  expect(example).toContain('turnTimeout: 20s');
  await writeFile(toolsetPath, example.replace('turnTimeout: 20s', 'turnTimeout: 5m'));
});
afterAll(async () => {
  await upstream.close();
  await rm(dir, { recursive: true, force: true });
});

afterEach(stopStartedCommands);

async function startProxy(idleCollectionAfter: string) {
  const proxy = await startBuiltCommand(
    imageNodeFlags(),
    [
      'proxy',
      '--toolset',
      toolsetPath,
      '--upstream',
      upstream.url,
      ...LOOPBACK_PROXY_ARGS,
      '--idle-collection-after',
      idleCollectionAfter,
    ],
    LOOPBACK_PROXY_ENV,
    proxyListening,
  );
  return { chat: proxy.found.url, metrics: proxy.found.metrics, stdout: proxy.stdout };
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

describe("a proxy after a load, under the image's Node flags", () => {
  it('gives back the young generation the load grew once no turn is open, and not before', async () => {
    const proxy = await startProxy(`${AFTER_MS}ms`);
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

  it('keeps it with --idle-collection-after 0', async () => {
    const proxy = await startProxy('0');
    await load(proxy.chat, 300);
    await sleep(AFTER_MS * 5);
    expect(proxy.stdout()).not.toContain(COLLECTED);
    expect(await newSpaceBytes(proxy.metrics)).toBeGreaterThan(8 * MiB);
  }, 90_000);
});
