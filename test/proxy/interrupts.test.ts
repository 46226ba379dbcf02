/**
 * Barge-in at scale: 1,000 streams interrupted mid-answer leave no socket open on either side, no
 * stream counted as active, and no heap growth beyond noise.
 */
import { request } from 'node:http';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ScriptedUpstream, startScriptedUpstream, textReply } from '../../src/demo/scripted-upstream.js';
import { type ProxyHarness, startTestProxy } from '../support/proxy.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let upstream: ScriptedUpstream;
let harness: ProxyHarness;
beforeAll(async () => {
  const steps = textReply(Array.from({ length: 40 }, (_, i) => `word${i}`).join(' '), 'vllm-llama3json', {
    delayMs: 20,
  });
  upstream = await startScriptedUpstream({ respond: () => ({ sse: steps }) });
  harness = await startTestProxy({ tools: [{ name: 'now', builtin: 'time' }] }, upstream.url);
});
afterAll(async () => {
  await harness.close();
  await upstream.close();
});

/** One Unmute turn that the user interrupts as soon as the first word arrives. */
function interruptedTurn(): Promise<void> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({
      model: 'm',
      messages: [{ role: 'user', content: 'Talk' }],
      stream: true,
      temperature: 0.3,
    });
    const req = request(`${harness.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer EMPTY' },
    });
    req.on('response', (res) => {
      res.on('data', (chunk: Buffer) => {
        if (chunk.includes('word')) {
          req.destroy();
          resolve();
        }
      });
      res.on('error', () => {});
    });
    req.on('error', (err) => (req.destroyed ? resolve() : reject(err)));
    req.end(body);
  });
}

async function runBatch(total: number, concurrency: number) {
  let started = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (started < total) {
        started++;
        await interruptedTurn();
      }
    }),
  );
}

async function settled(): Promise<void> {
  const until = Date.now() + 20_000;
  while (upstream.openSockets() > 0 || (await activeStreams()) > 0) {
    if (Date.now() > until)
      throw new Error(
        `still open: ${upstream.openSockets()} upstream sockets, ${await activeStreams()} streams`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function activeStreams(): Promise<number> {
  const text = await (await fetch(`${harness.proxy.metricsUrl}/metrics`)).text();
  return Number(/^earpiece_active_streams (\d+)/m.exec(text)?.[1] ?? Number.NaN);
}

function heapUsed(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

describe('1,000 interrupted streams', () => {
  it('leave no open sockets, no active streams and no heap growth', async () => {
    await runBatch(200, 50); // warm-up: JIT, pools, lazily created objects
    await settled();
    upstream.requests.length = 0;
    const before = heapUsed();

    await runBatch(1000, 50);
    await settled();
    upstream.requests.length = 0;
    const after = heapUsed();

    expect(upstream.openSockets()).toBe(0);
    expect(await activeStreams()).toBe(0);
    // A leak of even 10 KB per stream would show as 10 MB.
    expect(after - before).toBeLessThan(8 * 1024 * 1024);
  }, 120_000);
});
