/** The /v1/* pass-through: what reaches the LLM server with the server-side API key, and what never does. */
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { upstreamPath } from '../../src/proxy/routes/passthrough.js';
import { startTestProxy, useScriptedProxy } from '../support/proxy.js';

const { defer } = useScriptedProxy();

/** An LLM server that records each request's path and headers. */
async function recordingUpstream(): Promise<{
  url: string;
  seen: { url: string; headers: IncomingHttpHeaders }[];
}> {
  const seen: { url: string; headers: IncomingHttpHeaders }[] = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', headers: req.headers });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"object":"list","data":[]}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  defer(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** A request line sent byte for byte (fetch and the SDK would resolve the dots first). */
function rawGet(proxyUrl: string, target: string, headers = ''): Promise<string> {
  const { port } = new URL(proxyUrl);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1');
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => {
      text += d;
    });
    socket.on('error', reject);
    socket.on('close', () => resolve(text));
    setTimeout(() => reject(new Error(`no answer to ${target}`)), 5_000);
    socket.write(`GET ${target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n${headers}\r\n`);
  });
}

const REFUSED = [
  '/v1/../admin',
  '/v1/%2e%2e/admin',
  '/v1/%2E%2e/admin',
  '/v1/.%2e/admin',
  '/v1/models/../../admin',
  '/v1/..%2fadmin',
  '/v1/..%2Fadmin',
  '/v1/..%5cadmin',
  '/v1/%252e%252e/admin',
  '/v1/models/%2e%2e/%2e%2e/metrics?x=1',
];

describe('pass-through paths', () => {
  it.each(REFUSED)('refuses %s with 400 ERP_PATH_REFUSED, and sends nothing upstream', async (target) => {
    const upstream = await recordingUpstream();
    const harness = await startTestProxy(
      { tools: [], upstream: { apiKey: { value: 'sk-server-side' } } },
      upstream.url,
    );
    defer(() => harness.close());
    const answer = await rawGet(harness.proxy.url, target);
    expect(answer).toMatch(/^HTTP\/1\.1 400/);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({
      error: { code: 'ERP_PATH_REFUSED', type: 'invalid_request_error' },
    });
    expect(upstream.seen).toEqual([]);
  });

  it('sends a path that stays inside /v1/ in its resolved form, query kept', () => {
    expect(upstreamPath('/v1/models')).toBe('/v1/models');
    expect(upstreamPath('/v1/models/../models?limit=1&q=%2e%2e')).toBe('/v1/models?limit=1&q=%2e%2e');
    expect(upstreamPath('/v1/./models/x%20y')).toBe('/v1/models/x%20y');
    for (const target of REFUSED) expect(upstreamPath(target), target).toBeUndefined();
    expect(upstreamPath('//evil.example/v1/models')).toBeUndefined();
    expect(upstreamPath('/v1/%zz')).toBeUndefined();
  });

  it('resolves the dots of a path that stays inside /v1/ before sending it', async () => {
    const upstream = await recordingUpstream();
    const harness = await startTestProxy({ tools: [] }, upstream.url);
    defer(() => harness.close());
    expect(await rawGet(harness.proxy.url, '/v1/models/../models?limit=1')).toMatch(/^HTTP\/1\.1 200/);
    expect(upstream.seen.map((s) => s.url)).toEqual(['/v1/models?limit=1']);
  });
});

describe('the chat route by another spelling', () => {
  it.each([
    '/v1/./chat/completions',
    '/v1/%2e/chat/completions',
    '/v1/models/../chat/completions',
    '/v1/chat/completions/',
    '/v1/Chat/Completions',
  ])(
    'refuses %s: it would reach the model without tools, instructions or the turn deadline',
    async (target) => {
      const upstream = await recordingUpstream();
      const harness = await startTestProxy({ tools: [] }, upstream.url);
      defer(() => harness.close());
      const answer = await rawGet(harness.proxy.url, target);
      expect(answer).toMatch(/^HTTP\/1\.1 400/);
      expect(answer).toContain('ERP_PATH_REFUSED');
      expect(answer).toContain('written another way');
      expect(upstream.seen).toEqual([]);
    },
  );
});

describe('pass-through answers', () => {
  it("never show the client the server-side key that an upstream's refusal quotes", async () => {
    const server = createServer((req, res) => {
      const key = String(req.headers.authorization).replace('Bearer ', '');
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: `Incorrect API key provided: ${key}.` } }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    defer(() => new Promise<void>((r) => server.close(() => r())));
    const harness = await startTestProxy(
      { tools: [], upstream: { apiKey: { value: 'sk-server-side-1234' } } },
      `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    );
    defer(() => harness.close());
    const res = await fetch(`${harness.proxy.url}/v1/models`, { headers: { 'accept-encoding': 'gzip' } });
    expect(res.status).toBe(401);
    const text = await res.text();
    expect(text).toContain('Incorrect API key provided: [redacted]');
    expect(text).not.toContain('sk-server-side-1234');
  });

  it('end at the turn deadline when the upstream does not answer', async () => {
    const held: import('node:http').ServerResponse[] = [];
    const server = createServer((_req, res) => void held.push(res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    defer(async () => {
      for (const res of held) res.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    });
    const harness = await startTestProxy(
      { tools: [], limits: { turnTimeout: '300ms' } },
      `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    );
    defer(() => harness.close());
    const res = await fetch(`${harness.proxy.url}/v1/models`, { signal: AbortSignal.timeout(5_000) });
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ error: { code: 'ERP_TURN_TIMEOUT' } });
    expect(held).toHaveLength(1);
  });
});

describe('pass-through headers', () => {
  it('drops the headers the client named in Connection, and replaces the Authorization', async () => {
    const upstream = await recordingUpstream();
    const harness = await startTestProxy(
      { tools: [], upstream: { apiKey: { value: 'sk-server-side' } } },
      upstream.url,
    );
    defer(() => harness.close());
    const answer = await rawGet(
      harness.proxy.url,
      '/v1/models',
      'connection: close, X-Internal-Token\r\nx-internal-token: from-client\r\nx-kept: yes\r\nauthorization: Bearer client\r\n',
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
    const [seen] = upstream.seen;
    expect(seen?.headers['x-internal-token']).toBeUndefined();
    expect(seen?.headers['x-kept']).toBe('yes');
    expect(seen?.headers.authorization).toBe('Bearer sk-server-side');
  });

  it("passes the client's own Authorization on when no server-side key replaces it", async () => {
    const upstream = await recordingUpstream();
    const harness = await startTestProxy({ tools: [] }, upstream.url);
    defer(() => harness.close());
    const answer = await rawGet(harness.proxy.url, '/v1/models', 'authorization: Bearer client-key\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 200/);
    expect(upstream.seen.map((s) => [s.url, s.headers.authorization])).toEqual([
      ['/v1/models', 'Bearer client-key'],
    ]);
  });
});
