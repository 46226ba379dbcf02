import type { ServerResponse } from 'node:http';
import { type AddressInfo, createServer as createNetServer, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { createHttpDispatcher, createHttpExecutor, selectPointer } from '../../src/tools/http.js';
import { createToolRegistry, type ToolRegistry } from '../../src/tools/registry.js';
import { ToolError } from '../../src/tools/types.js';
import {
  gate,
  responseClosed,
  sendForever,
  silentLogger,
  startServer,
  type TestServer,
  toolset,
} from './helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function server(handler: Parameters<typeof startServer>[0]): Promise<TestServer> {
  const s = await startServer(handler);
  cleanups.push(() => s.close());
  return s;
}

async function registry(
  tools: Record<string, unknown>[],
  options: { env?: NodeJS.ProcessEnv; spec?: Record<string, unknown> } = {},
): Promise<ToolRegistry> {
  const r = await createToolRegistry(toolset(tools, options.spec), {
    logger: silentLogger,
    env: options.env ?? {},
  });
  cleanups.push(() => r.close());
  return r;
}

const json = (res: ServerResponse, status: number, body: unknown) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

let ids = 0;
const call = (r: ToolRegistry, name: string, args: unknown, signal = new AbortController().signal) =>
  r.call(
    { id: `c${++ids}`, name, arguments: typeof args === 'string' ? args : JSON.stringify(args) },
    signal,
  );

const params = (...names: string[]) => ({
  type: 'object',
  properties: Object.fromEntries(names.map((n) => [n, {}])),
});

describe('http tool: URL templates', () => {
  it('percent-encodes every argument inside the path and query, on the template origin', async () => {
    const s = await server((_req, res) => json(res, 200, { ok: true }));
    const r = await registry([
      {
        name: 'files',
        parameters: params('name', 'q'),
        http: { url: `${s.origin}/files/{name}{?q}` },
      },
      { name: 'root', parameters: params('p'), http: { url: `${s.origin}{/p}` } },
    ]);
    for (const [args, url] of [
      [{ name: '../../x' }, '/files/..%2F..%2Fx'],
      [{ name: 'evil.com/' }, '/files/evil.com%2F'],
      [{ name: '@evil.com' }, '/files/%40evil.com'],
      [{ name: '?a=b#c' }, '/files/%3Fa%3Db%23c'],
      [{ name: 'a b', q: '?a=b#c&admin=1' }, '/files/a%20b?q=%3Fa%3Db%23c%26admin%3D1'],
      [{ name: 'ünï' }, '/files/%C3%BCn%C3%AF'],
      [{ name: 3.5, q: true }, '/files/3.5?q=true'],
    ] as const) {
      const outcome = await call(r, 'files', args);
      expect(outcome.outcome).toBe('ok');
      expect(s.requests.at(-1)?.url).toBe(url);
      expect(s.requests.at(-1)?.headers.host).toBe(new URL(s.origin).host);
    }
    const rooted = await call(r, 'root', { p: '@evil.com:80' });
    expect(rooted.outcome).toBe('ok');
    expect(s.requests.at(-1)?.url).toBe('/%40evil.com%3A80');
  });

  it('refuses a whole argument of ".." that URL parsing would resolve out of the path', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const r = await registry([
      { name: 'files', parameters: params('name'), http: { url: `${s.origin}/api/files/{name}` } },
    ]);
    const outcome = await call(r, 'files', { name: '..' });
    expect(outcome.outcome).toBe('error');
    expect(outcome.content).toBe(
      `error: files failed: the arguments would take the request outside its URL on ${new URL(s.origin).host}`,
    );
    expect(s.requests).toHaveLength(0);
  });

  it('refuses a dot segment completed by a literal %2e of the template', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const r = await registry([
      { name: 'files', parameters: params('name'), http: { url: `${s.origin}/api/files/{name}%2E` } },
    ]);
    expect(await call(r, 'files', { name: '.' })).toMatchObject({
      outcome: 'error',
      content: `error: files failed: the arguments would take the request outside its URL on ${new URL(s.origin).host}`,
    });
    expect(await call(r, 'files', { name: 'a.' })).toMatchObject({ outcome: 'ok' });
    expect(s.requests.map((q) => q.url)).toEqual(['/api/files/a.%2E']);
  });

  it('says the URL is invalid when an argument is not Unicode text', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const r = await registry([
      { name: 'files', parameters: params('name'), http: { url: `${s.origin}/api/files/{name}` } },
    ]);
    expect(await call(r, 'files', '{"name": "\\ud800"}')).toMatchObject({
      outcome: 'error',
      content: 'error: files failed: the arguments do not make a valid URL',
    });
    expect(s.requests).toHaveLength(0);
  });

  it('an argument named __proto__ cannot supply template variables the schema never checked', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const r = await registry([
      {
        name: 'items',
        parameters: {
          type: 'object',
          properties: { version: { enum: ['v1', 'v2'] }, q: { type: 'string' } },
        },
        http: { url: `${s.origin}/api{/version}/items{?q}` },
      },
    ]);
    expect(await call(r, 'items', '{"__proto__": {"version": "admin", "q": "x"}}')).toMatchObject({
      outcome: 'ok',
    });
    expect(s.requests.at(-1)?.url).toBe('/api/items');
  });

  it('an object argument is one value, never query parameters of its own', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const r = await registry([
      { name: 'search', parameters: params('f'), http: { url: `${s.origin}/search{?f*}&key=K` } },
      { name: 'path', parameters: params('f'), http: { url: `${s.origin}/p{;f*}` } },
    ]);
    expect(await call(r, 'search', { f: { key: 'evil', admin: '1' } })).toMatchObject({ outcome: 'ok' });
    expect(s.requests.at(-1)?.url).toBe(
      '/search?f=%7B%22key%22%3A%22evil%22%2C%22admin%22%3A%221%22%7D&key=K',
    );
    expect(await call(r, 'path', { f: { x: 1 } })).toMatchObject({ outcome: 'ok' });
    expect(s.requests.at(-1)?.url).toBe('/p;f=%7B%22x%22%3A1%7D');
  });

  it('expands lists and leaves out arguments the template does not name', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const r = await registry([
      {
        name: 'search',
        parameters: params('tags', 'limit', 'unused'),
        http: { url: `${s.origin}/search{?tags,limit}&fixed=1` },
      },
    ]);
    await call(r, 'search', { tags: ['a/b', 'c'], unused: 'zzz' });
    expect(s.requests[0]?.url).toBe('/search?tags=a%2Fb,c&fixed=1');
  });
});

describe('http tool: requests and responses', () => {
  it('sends headers resolved from the environment, and a JSON body of the arguments for POST', async () => {
    const s = await server((req, res) => json(res, 201, { received: JSON.parse(req.body) }));
    const r = await registry(
      [
        {
          name: 'create',
          parameters: params('id', 'name'),
          http: {
            method: 'POST',
            url: `${s.origin}/items/{id}`,
            headers: [
              { name: 'X-Api-Key', valueFrom: { env: 'TEST_API_KEY' } },
              { name: 'X-Client', value: 'voice' },
            ],
          },
        },
      ],
      { env: { TEST_API_KEY: 'k-123' } },
    );
    const outcome = await call(r, 'create', { name: 'lamp', id: 7 });
    expect(outcome.outcome).toBe('ok');
    expect(JSON.parse(outcome.content)).toEqual({ received: { name: 'lamp', id: 7 } });
    const seen = s.requests[0];
    expect(seen?.method).toBe('POST');
    expect(seen?.url).toBe('/items/7');
    expect(seen?.headers['x-api-key']).toBe('k-123');
    expect(seen?.headers['x-client']).toBe('voice');
    expect(seen?.headers['content-type']).toBe('application/json');
  });

  it('refuses to start when a header names an unset environment variable', async () => {
    await expect(
      createToolRegistry(
        toolset([
          {
            name: 'x',
            http: {
              url: 'http://127.0.0.1:9/x',
              headers: [{ name: 'X-Key', valueFrom: { env: 'NOT_SET_ANYWHERE' } }],
            },
          },
        ]),
        { logger: silentLogger, env: {} },
      ),
    ).rejects.toThrow('spec.tools[0].http.headers[0]: environment variable NOT_SET_ANYWHERE is not set');
  });

  it('applies select as a JSON Pointer, and says so when it finds nothing', async () => {
    const s = await server((_req, res) =>
      json(res, 200, { current: { temperature_2m: 12.5, 'a/b': [10, 20] }, units: 'C' }),
    );
    const r = await registry([
      { name: 'weather', http: { url: `${s.origin}/w`, select: '/current' } },
      { name: 'second', http: { url: `${s.origin}/w`, select: '/current/a~1b/1' } },
      { name: 'missing', http: { url: `${s.origin}/w`, select: '/current/humidity' } },
    ]);
    expect((await call(r, 'weather', {})).content).toBe('{"temperature_2m":12.5,"a/b":[10,20]}');
    expect((await call(r, 'second', {})).content).toBe('20');
    const missing = await call(r, 'missing', {});
    expect(missing.outcome).toBe('error');
    expect(missing.content).toBe(
      `error: missing failed: select /current/humidity found nothing in the response from ${new URL(s.origin).host}`,
    );
  });

  it('resolves pointers over own properties only', () => {
    const doc = JSON.parse('{"a":{"b":[1,{"c":null}]},"s":"text","":{"~":1}}');
    expect(selectPointer(doc, '')).toBe(doc);
    expect(selectPointer(doc, '/a/b/1/c')).toBeNull();
    expect(selectPointer(doc, '//~0')).toBe(1);
    for (const pointer of ['/a/constructor', '/a/b/length', '/s/length', '/a/b/-', '/a/b/01', '/a/zz/q']) {
      expect(selectPointer(doc, pointer)).toBeUndefined();
    }
  });

  it('returns text that is not JSON as it is', async () => {
    const s = await server((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.end('Sunny, 21 °C');
    });
    const r = await registry([{ name: 'plain', http: { url: `${s.origin}/t` } }]);
    expect(await call(r, 'plain', {})).toMatchObject({ outcome: 'ok', content: 'Sunny, 21 °C' });
  });

  it('says when a response is empty, and applies select to JSON sent as text', async () => {
    const s = await server((req, res) => {
      if (req.url === '/none') {
        res.writeHead(204);
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(req.url === '/json' ? '{"state":"on"}' : 'not json');
    });
    const r = await registry([
      { name: 'none', http: { method: 'DELETE', url: `${s.origin}/none` } },
      { name: 'state', http: { url: `${s.origin}/json`, select: '/state' } },
      { name: 'text', http: { url: `${s.origin}/text`, select: '/state' } },
    ]);
    expect(await call(r, 'none', {})).toMatchObject({ outcome: 'ok', content: '(empty response, HTTP 204)' });
    expect(s.requests[0]?.method).toBe('DELETE');
    expect(await call(r, 'state', {})).toMatchObject({ outcome: 'ok', content: 'on' });
    expect(await call(r, 'text', {})).toMatchObject({
      outcome: 'error',
      content: `error: text failed: the response from ${new URL(s.origin).host} is not JSON, so select /state does not apply`,
    });
  });

  it('turns a non-2xx status into a short error without echoing the body or the URL', async () => {
    const s = await server((_req, res) =>
      json(res, 503, { error: 'backend down', token: 'sk-secret-token' }),
    );
    const r = await registry(
      [
        {
          name: 'status',
          parameters: params('key'),
          http: {
            url: `${s.origin}/v1/status{?key}`,
            headers: [{ name: 'Authorization', valueFrom: { env: 'TOKEN' } }],
          },
        },
      ],
      { env: { TOKEN: 'Bearer sk-header-secret' } },
    );
    const outcome = await call(r, 'status', { key: 'sk-query-secret' });
    expect(outcome).toMatchObject({
      outcome: 'error',
      content: `error: status failed: HTTP 503 from ${new URL(s.origin).host}`,
    });
    // The small error body was read, not the connection dropped: later calls reuse connections.
    for (let i = 0; i < 3; i++) await call(r, 'status', { key: 'again' });
    expect(s.requests).toHaveLength(4);
    expect(new Set(s.requests.map((q) => q.remotePort)).size).toBeLessThan(4);
  });

  it('says when the server cannot be reached', async () => {
    const s = await server((_req, res) => json(res, 200, {}));
    const origin = s.origin;
    await s.close();
    const r = await registry([{ name: 'gone', http: { url: `${origin}/x` } }]);
    expect(await call(r, 'gone', {})).toMatchObject({
      outcome: 'error',
      content: `error: gone failed: the request to ${new URL(origin).host} failed (ECONNREFUSED)`,
    });
  });
});

describe('http tool: limits and cancellation', () => {
  it('takes timed-out calls that still wait for their connection out of the queue: no new attempts, a prompt close', async () => {
    // An https host that accepts TCP and never answers the TLS handshake.
    const accepted: Socket[] = [];
    const silent = createNetServer((socket) => {
      accepted.push(socket);
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    cleanups.push(async () => {
      for (const socket of accepted) socket.destroy();
      silent.close();
    });
    const port = (silent.address() as AddressInfo).port;
    const r = await createToolRegistry(
      toolset([{ name: 'h', parameters: params('q'), http: { url: `https://127.0.0.1:${port}/x{?q}` } }], {
        limits: { toolTimeout: '300ms' },
      }),
      { logger: silentLogger, env: {} },
    );
    const outcomes = await Promise.all(Array.from({ length: 10 }, (_, i) => call(r, 'h', { q: String(i) })));
    expect(outcomes.map((o) => o.outcome)).toEqual(Array(10).fill('timeout'));
    // Before, the ten calls sat in the queue behind the handshake, each later to start an attempt of its
    // own, and close() waited for them all.
    const started = performance.now();
    await r.close();
    expect(performance.now() - started).toBeLessThan(2_000);
    expect(accepted).toHaveLength(1);
  });

  it('stops reading a response that passes the size cap while the server keeps sending', async () => {
    const closed = gate<{ finished: boolean }>();
    const s = await server((_req, res) => {
      responseClosed(res).then(closed.open);
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      sendForever(res);
    });
    const dispatcher = createHttpDispatcher({ maxResponseBytes: 64 * 1024 });
    cleanups.push(() => dispatcher.close());
    const executor = createHttpExecutor({ url: `${s.origin}/big` }, { dispatcher });
    const ctx = { signal: new AbortController().signal, deadline: Date.now() + 10_000, toolName: 'big' };
    const error = await executor.run({}, ctx).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ToolError);
    expect((error as ToolError).message).toBe(
      `the response from ${new URL(s.origin).host} is larger than 64 KiB`,
    );
    // The client dropped the connection: the server's endless response was never finished.
    expect(await closed.promise).toEqual({ finished: false });
  });

  it('refuses a response that declares more than the cap, and caps at 1 MiB by default', async () => {
    const s = await server((req, res) => {
      if (req.url === '/declared') {
        res.writeHead(200, { 'content-length': String(2 * 1024 * 1024) });
        res.write('x');
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' });
      sendForever(res);
    });
    const r = await registry([
      { name: 'declared', http: { url: `${s.origin}/declared` } },
      { name: 'endless', http: { url: `${s.origin}/endless` } },
    ]);
    for (const name of ['declared', 'endless']) {
      expect(await call(r, name, {})).toMatchObject({
        outcome: 'error',
        content: `error: ${name} failed: the response from ${new URL(s.origin).host} is larger than 1 MiB`,
      });
    }
  });

  it('refuses JSON that nests past 256 levels or holds past 200,000 objects, before parsing it', async () => {
    // Under 1 MiB each, both would parse into hundreds of thousands of objects or arrays.
    const bodies: Record<string, string> = {
      '/deep': `{"a":${'['.repeat(300_000)}${']'.repeat(300_000)}}`,
      '/many': `[${'{},'.repeat(250_000)}{}]`,
      '/fine': JSON.stringify({ text: '['.repeat(10_000), list: [{}, {}] }),
    };
    const s = await server((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(bodies[req.url ?? '']);
    });
    const r = await registry(
      ['deep', 'many', 'fine'].map((name) => ({ name, http: { url: `${s.origin}/${name}` } })),
    );
    const host = new URL(s.origin).host;
    expect(await call(r, 'deep', {})).toMatchObject({
      outcome: 'error',
      content: `error: deep failed: the JSON response from ${host} was refused: the body nests JSON more than 256 levels deep`,
    });
    expect(await call(r, 'many', {})).toMatchObject({
      outcome: 'error',
      content: `error: many failed: the JSON response from ${host} was refused: the body holds more than 200000 JSON objects and arrays`,
    });
    expect(await call(r, 'fine', {})).toMatchObject({ outcome: 'ok' });
  });

  it('aborts the request when the caller leaves, and the server sees the connection close', async () => {
    const arrived = gate();
    const closed = gate<{ finished: boolean }>();
    const s = await server((_req, res) => {
      responseClosed(res).then(closed.open);
      arrived.open();
    });
    const r = await registry([{ name: 'slow', http: { url: `${s.origin}/slow` } }]);
    const controller = new AbortController();
    const pending = call(r, 'slow', {}, controller.signal);
    await arrived.promise;
    controller.abort();
    expect(await pending).toMatchObject({ outcome: 'cancelled', content: 'error: slow was cancelled' });
    expect(await closed.promise).toEqual({ finished: false });
  });

  it('times out after the tool timeout and closes the request', async () => {
    const closed = gate<{ finished: boolean }>();
    const s = await server((_req, res) => {
      responseClosed(res).then(closed.open);
    });
    const r = await registry([{ name: 'slow', timeout: '200ms', http: { url: `${s.origin}/slow` } }]);
    expect(await call(r, 'slow', {})).toMatchObject({
      outcome: 'timeout',
      content: 'error: slow timed out after 0.2s',
    });
    expect(await closed.promise).toEqual({ finished: false });
  });

  it('lets a tool with onInterrupt: finish complete although the caller left', async () => {
    const arrived = gate();
    const release = gate();
    const closed = gate<{ finished: boolean }>();
    const s = await server((_req, res) => {
      responseClosed(res).then(closed.open);
      arrived.open();
      release.promise.then(() => json(res, 200, { light: 'on' }));
    });
    const r = await registry([
      { name: 'light_on', onInterrupt: 'finish', http: { method: 'POST', url: `${s.origin}/light` } },
    ]);
    const controller = new AbortController();
    const pending = call(r, 'light_on', {}, controller.signal);
    await arrived.promise;
    controller.abort();
    release.open();
    expect(await pending).toMatchObject({ outcome: 'ok', content: '{"light":"on"}' });
    expect(await closed.promise).toEqual({ finished: true });
  });
});
