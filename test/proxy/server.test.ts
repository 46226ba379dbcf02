/**
 * The chat port itself: slow and oversized bodies, and the errors fastify and Node raise before a route
 * runs; and the metrics port, which takes no bodies.
 */
import { connect, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { textReply } from '../../src/demo/scripted-upstream.js';
import { type ProxyHarness, useScriptedProxy } from '../support/proxy.js';

const { setup, defer } = useScriptedProxy();

/** A raw connection to the chat port, or `url`'s; `answer` resolves with all the proxy wrote once it closes. */
function rawClient(
  harness: ProxyHarness,
  url = harness.proxy.url,
): { socket: Socket; answer: Promise<string> } {
  const { port } = new URL(url);
  const socket = connect(Number(port), '127.0.0.1');
  defer(async () => void socket.destroy());
  let text = '';
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => {
    text += d;
  });
  socket.on('error', () => {});
  const answer = new Promise<string>((resolve, reject) => {
    socket.on('close', () => resolve(text));
    setTimeout(() => reject(new Error(`no answer; got ${JSON.stringify(text)}`)), 10_000);
  });
  return { socket, answer };
}

function head(bytes: number | 'chunked'): string {
  const length = bytes === 'chunked' ? 'transfer-encoding: chunked' : `content-length: ${bytes}`;
  return `POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n${length}\r\n\r\n`;
}

function errorOf(answer: string): { status: number; code: string } {
  const status = Number(/^HTTP\/1\.1 (\d+)/.exec(answer)?.[1]);
  const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as { error: { code: string } };
  return { status, code: body.error.code };
}

/** The chat port's body bytes in flight, as the metrics port reports them. */
async function bodyBytesInFlight(harness: ProxyHarness): Promise<number> {
  const text = await (await fetch(`${harness.proxy.metricsUrl}/metrics`)).text();
  return Number(/^earpiece_request_body_bytes_in_flight (\S+)$/m.exec(text)?.[1]);
}

const ok = (harness: ProxyHarness) =>
  fetch(`${harness.proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }] }),
    signal: AbortSignal.timeout(5_000),
  });

describe('a body that does not arrive', () => {
  it('is dropped after the request timeout with 408, its connection closed', async () => {
    const { harness, upstream } = await setup(
      () => ({ sse: textReply('Hello.') }),
      { tools: [] },
      {
        limits: { requestTimeoutMs: 300, maxBodyBytesInFlight: 64 * 1024 * 1024 },
      },
    );
    const slow = rawClient(harness);
    slow.socket.write(`${head(1000)}{"model":`);
    expect(errorOf(await slow.answer)).toEqual({ status: 408, code: 'ERP_REQUEST_TIMEOUT' });
    // So is a request whose headers never end.
    const silent = rawClient(harness);
    silent.socket.write('POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n');
    expect(errorOf(await silent.answer)).toEqual({ status: 408, code: 'ERP_REQUEST_TIMEOUT' });
    expect(upstream.requests).toHaveLength(0);
    expect((await ok(harness)).status).toBe(200);
  });
});

describe('bodies in flight', () => {
  it('hold no more memory together than the budget: past it a request is refused with 503', async () => {
    const budget = 1024 * 1024;
    const { harness } = await setup(
      () => ({ sse: textReply('Hello.') }),
      { tools: [] },
      {
        limits: { requestTimeoutMs: 60_000, maxBodyBytesInFlight: budget },
      },
    );
    // Two slow bodies each declare 400 KB: together under the budget, so both are being read.
    const first = rawClient(harness);
    first.socket.write(`${head(400 * 1024)}{"model":`);
    const second = rawClient(harness);
    second.socket.write(`${head(400 * 1024)}{"model":`);
    await expect.poll(() => bodyBytesInFlight(harness), { timeout: 10_000 }).toBe(800 * 1024);
    // A third would pass the budget: refused at once, without reading its body.
    const third = rawClient(harness);
    third.socket.write(`${head(400 * 1024)}{"model":`);
    expect(errorOf(await third.answer)).toEqual({ status: 503, code: 'ERP_OVERLOADED' });
    // A chunked body is counted as it comes, and refused when it passes the budget.
    const chunked = rawClient(harness);
    chunked.socket.write(head('chunked'));
    const piece = 'x'.repeat(100 * 1024);
    for (let i = 0; i < 4; i++) chunked.socket.write(`${piece.length.toString(16)}\r\n${piece}\r\n`);
    expect(errorOf(await chunked.answer)).toEqual({ status: 503, code: 'ERP_OVERLOADED' });
    // Small requests still fit beside the slow ones.
    expect((await ok(harness)).status).toBe(200);
    // Once the slow clients leave, their share is free again.
    first.socket.destroy();
    second.socket.destroy();
    await expect.poll(() => bodyBytesInFlight(harness), { timeout: 10_000 }).toBe(0);
    const fits = rawClient(harness);
    const body = JSON.stringify({
      model: 'm',
      messages: [{ role: 'user', content: 'y'.repeat(700 * 1024) }],
    });
    fits.socket.write(
      `${head(Buffer.byteLength(body)).replace('HTTP/1.1\r\n', 'HTTP/1.1\r\nconnection: close\r\n')}${body}`,
    );
    expect(await fits.answer).toMatch(/^HTTP\/1\.1 200/);
  });
});

describe('an answer the client does not read', () => {
  it("is cut off a request timeout after its turn ended, and its body's budget freed", async () => {
    const budget = 1024 * 1024;
    // About 14 MB of chunks, more than the two sockets buffer: the proxy's writes stall on the unread one.
    const answer = 'abcdefghij '.repeat(60_000);
    const { harness } = await setup(
      () => ({ sse: textReply(answer) }),
      { tools: [], limits: { turnTimeout: '3s' } },
      { limits: { requestTimeoutMs: 300, maxBodyBytesInFlight: budget } },
    );
    const body = (size: number) =>
      JSON.stringify({ model: 'm', stream: true, messages: [{ role: 'user', content: 'y'.repeat(size) }] });
    const reader = rawClient(harness);
    reader.socket.pause();
    const first = body(600 * 1024);
    reader.socket.write(`${head(Buffer.byteLength(first))}${first}`);
    // While its answer is held, a second body of that size passes the budget.
    await new Promise((r) => setTimeout(r, 300));
    const second = body(600 * 1024);
    const refused = rawClient(harness);
    refused.socket.write(`${head(Buffer.byteLength(second))}${second}`);
    expect(errorOf(await refused.answer)).toEqual({ status: 503, code: 'ERP_OVERLOADED' });
    // The turn ends at its deadline (3 s), the unread answer's connection 300 ms later; its share is free
    // then, and the same body fits (refused until then, and a refusal holds nothing).
    const started = Date.now();
    let reply = '';
    while (!reply.startsWith('HTTP/1.1 200') && Date.now() - started < 15_000) {
      await new Promise((r) => setTimeout(r, 250));
      const fits = rawClient(harness);
      fits.socket.write(
        `${head(Buffer.byteLength(second)).replace('HTTP/1.1\r\n', 'HTTP/1.1\r\nconnection: close\r\n')}${second}`,
      );
      reply = await fits.answer;
      if (!reply.startsWith('HTTP/1.1 200')) expect(errorOf(reply).code).toBe('ERP_OVERLOADED');
    }
    expect(reply).toMatch(/^HTTP\/1\.1 200/);
    // Not before the turn's deadline: until then the unread answer still holds its body's share.
    expect(Date.now() - started).toBeGreaterThanOrEqual(2_000);
  }, 30_000);
});

describe('the metrics port', () => {
  it('never reads a request body: a POST gets 404 at once, unparsed', async () => {
    const { harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    const post = (length: number) =>
      `POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: ${length}\r\n\r\n`;
    // 8 MiB declared and a few bytes sent: answered without waiting for the rest (it would be a 408 if read).
    const large = rawClient(harness, harness.proxy.metricsUrl);
    large.socket.write(`${post(8 * 1024 * 1024)}{"model":`);
    expect(errorOf(await large.answer)).toEqual({ status: 404, code: 'ERP_NOT_FOUND' });
    // Not JSON: never parsed, so no 400.
    const garbage = rawClient(harness, harness.proxy.metricsUrl);
    garbage.socket.write(`${post(4)}{bad`);
    expect(errorOf(await garbage.answer)).toEqual({ status: 404, code: 'ERP_NOT_FOUND' });
    const metrics = await fetch(`${harness.proxy.metricsUrl}/metrics`, {
      signal: AbortSignal.timeout(5_000),
    });
    expect(metrics.status).toBe(200);
  });
});

describe('framework errors', () => {
  it('are OpenAI error bodies with a code', async () => {
    const { harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    const missing = await fetch(`${harness.proxy.url}/nowhere`, { signal: AbortSignal.timeout(5_000) });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({
      error: { code: 'ERP_NOT_FOUND', type: 'invalid_request_error', param: null },
    });
    const garbage = rawClient(harness);
    garbage.socket.write('NOT HTTP AT ALL\r\n\r\n');
    expect(errorOf(await garbage.answer)).toEqual({ status: 400, code: 'ERP_BAD_REQUEST' });
  });
});
