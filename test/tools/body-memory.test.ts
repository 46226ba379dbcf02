/**
 * What a response of one-byte chunks holds while it is read: each chunk is a small view that keeps its
 * read buffer (and an object of its own) alive, so a body kept as its chunks holds many times its size.
 * Measured after a full gc at the moment the last chunk has been handed over, so nothing is left to chance.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createServer, type Socket } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Dispatcher } from 'undici';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createHttpDispatcher, createHttpExecutor } from '../../src/tools/http.js';
import { createSessionFetch } from '../../src/tools/mcp-fetch.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** Heap and buffer memory in use after a full collection. */
function retained(): number {
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

const PAYLOAD = 256 * 1024;
const MiB = 1024 * 1024;

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  vi.unstubAllGlobals();
});

describe('response bodies sent in one-byte chunks', () => {
  it('http: holds about the payload, not a read buffer per chunk', async () => {
    const server = createServer((socket: Socket) => {
      socket.on('error', () => {});
      socket.once('data', () => {
        socket.write('HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n');
        socket.end(`${'1\r\nx\r\n'.repeat(PAYLOAD)}0\r\n\r\n`);
      });
    }).listen(0, '127.0.0.1');
    cleanups.push(() => server.close());
    await once(server, 'listening');
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

    let chunks = 0;
    let held = 0;
    // Outermost, so it sees the end just before the executor's handler: every chunk has reached it by then.
    const probe: Dispatcher.DispatcherComposeInterceptor = (dispatch) => (opts, handler) =>
      dispatch(opts, {
        ...handler,
        onRequestStart: (c, context) => handler.onRequestStart?.(c, context),
        onResponseStart: (c, status, headers, message) =>
          handler.onResponseStart?.(c, status, headers, message),
        onResponseError: (c, err) => handler.onResponseError?.(c, err),
        onResponseData: (c, chunk) => {
          chunks++;
          handler.onResponseData?.(c, chunk);
        },
        onResponseEnd: (c, trailers) => {
          held = retained() - before;
          handler.onResponseEnd?.(c, trailers);
        },
      });
    const dispatcher = createHttpDispatcher().compose(probe);
    cleanups.push(() => dispatcher.close());
    const executor = createHttpExecutor({ url: `${origin}/x` }, { dispatcher });
    const before = retained();
    const text = await executor.run(
      {},
      { signal: new AbortController().signal, deadline: Date.now() + 20_000, toolName: 'x' },
    );
    expect(text).toBe('x'.repeat(PAYLOAD));
    // Many small chunks did arrive (else this proves nothing).
    expect(chunks).toBeGreaterThan(PAYLOAD / 4);
    expect(held).toBeLessThan(4 * MiB);
  });

  it('mcp: an answer sent as JSON holds about its size, not a string per chunk', async () => {
    const head = new TextEncoder().encode(
      '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"',
    );
    const tail = new TextEncoder().encode('"}]}}');
    // One large buffer, handed over one byte at a time as views of it, as a socket's reads are.
    const PAYLOAD = 512 * 1024;
    const wire = new Uint8Array(PAYLOAD).fill(0x78);
    let sent = 0;
    let held = 0;
    let before = 0;
    const body = new ReadableStream<Uint8Array>(
      {
        pull(controller) {
          if (sent === 0) controller.enqueue(head);
          if (sent < PAYLOAD) {
            controller.enqueue(wire.subarray(sent, ++sent));
            return;
          }
          held = retained() - before;
          controller.enqueue(tail);
          controller.close();
        },
      },
      { highWaterMark: 0 },
    );
    vi.stubGlobal(
      'fetch',
      async () => new Response(body, { headers: { 'content-type': 'application/json' } }),
    );
    const sessionFetch = createSessionFetch('streamable');
    before = retained();
    const response = await sessionFetch('http://mcp.invalid/mcp', {
      method: 'POST',
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: {} }),
    });
    const answer = JSON.parse(await response.text());
    expect(answer.result.content[0].text).toHaveLength(PAYLOAD);
    expect(held).toBeLessThan(4 * MiB);
  });
});
