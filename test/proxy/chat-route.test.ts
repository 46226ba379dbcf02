/** POST /v1/chat/completions at the front door: what a client may send, and how it is answered. */
import { Agent, request } from 'node:http';
import { describe, expect, it } from 'vitest';
import { textReply } from '../../src/demo/scripted-upstream.js';
import { type ProxyHarness, useScriptedProxy } from '../support/proxy.js';

const { setup } = useScriptedProxy();

async function post(
  harness: ProxyHarness,
  body: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Headers; json: unknown }> {
  // A hang guard: a request the proxy never answers fails here, not at the test timeout.
  const res = await fetch(`${harness.proxy.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body,
    signal: AbortSignal.timeout(5_000),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : undefined };
}

const USER = { role: 'user', content: 'Hi' };

describe('a malformed chat request', () => {
  // Each of these once crashed after the reply was hijacked (never answered) or inside the turn (502).
  it.each([
    ['a model whose String() throws', { model: { toString: 1 }, messages: [USER] }, '/model'],
    ['a model that is an object', { model: { name: 'm' }, messages: [USER] }, '/model'],
    ['a message that is null', { model: 'm', messages: [null] }, '/messages/0'],
    ['a message without a role', { model: 'm', messages: [{ content: 'Hi' }] }, '/messages/0'],
    [
      'a role that is an object',
      { model: 'm', messages: [{ role: { toString: 1 }, content: 'Hi' }] },
      '/role',
    ],
    [
      'a content part whose text throws',
      { model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: { toString: 1 } }] }] },
      '/text',
    ],
    [
      'content that is an object',
      { model: 'm', messages: [{ role: 'user', content: { a: 1 } }] },
      '/content',
    ],
    ['a client tool that is null', { model: 'm', messages: [USER], tools: [null] }, '/tools/0'],
    [
      'a client tool whose name is an object',
      { model: 'm', messages: [USER], tools: [{ type: 'function', function: { name: {} } }] },
      '/name',
    ],
    [
      'stream_options that is a string',
      { model: 'm', messages: [USER], stream_options: 'x' },
      '/stream_options',
    ],
    ['stream that is a word', { model: 'm', messages: [USER], stream: 'yes' }, '/stream'],
    // It would be copied into every chunk of the answer and into telemetry.
    ['a model name of 257 characters', { model: 'm'.repeat(257), messages: [USER] }, '/model'],
    ['no messages', { model: 'm', messages: [] }, '/messages'],
    ['messages that is an object', { model: 'm', messages: { role: 'user' } }, '/messages'],
    ['a body that is an array', [USER], 'body'],
  ])('is answered 400 ERP_BAD_REQUEST naming the field: %s', async (_, body, field) => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    for (const stream of [false, true]) {
      const sent =
        Array.isArray(body) || 'stream' in body ? body : { ...(body as Record<string, unknown>), stream };
      const res = await post(harness, JSON.stringify(sent));
      expect(res.status).toBe(400);
      expect(res.headers.get('x-should-retry')).toBe('false');
      const error = (res.json as { error: { code: string; type: string; message: string } }).error;
      expect(error).toMatchObject({ code: 'ERP_BAD_REQUEST', type: 'invalid_request_error', param: null });
      expect(error.message).toContain(field);
    }
    expect(upstream.requests).toHaveLength(0);
    // The proxy is still there for the next client.
    const ok = await post(harness, JSON.stringify({ model: 'm', messages: [USER] }));
    expect(ok.status).toBe(200);
  });

  it('is answered in the OpenAI shape when the body is not JSON, not JSON at all, empty or too large', async () => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    const cases: [string, Record<string, string>, number, string][] = [
      ['{"model": "m", "messages": [', {}, 400, 'ERP_BAD_REQUEST'],
      ['', {}, 400, 'ERP_BAD_REQUEST'],
      ['<model>m</model>', { 'content-type': 'application/xml' }, 415, 'ERP_UNSUPPORTED_MEDIA_TYPE'],
      // JSON text sent as text/plain is still not JSON by its content type.
      [
        JSON.stringify({ model: 'm', messages: [USER] }),
        { 'content-type': 'text/plain' },
        415,
        'ERP_UNSUPPORTED_MEDIA_TYPE',
      ],
      [
        JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'x'.repeat(17 * 1024 * 1024) }] }),
        {},
        413,
        'ERP_BODY_TOO_LARGE',
      ],
    ];
    for (const [body, headers, status, code] of cases) {
      const res = await post(harness, body, headers);
      expect(res.status, code).toBe(status);
      expect(res.json).toMatchObject({ error: { code, param: null } });
    }
    expect(upstream.requests).toHaveLength(0);
  });

  it('refuses JSON nested past 128 levels or holding past 100,000 objects before parsing it, 400 naming which', async () => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    // Parsed, 8 MiB of brackets took 600 MB and overflowed the stack of the code that walks the body.
    const deep = `{"model":"m","messages":[{"role":"user","content":"Hi"}],"x":${'['.repeat(4_000_000)}${']'.repeat(4_000_000)}}`;
    const many = JSON.stringify({
      model: 'm',
      messages: Array.from({ length: 200_000 }, () => ({ role: 'user' })),
    });
    for (const [body, message] of [
      [deep, 'the body nests JSON more than 128 levels deep'],
      [many, 'the body holds more than 100000 JSON objects and arrays'],
    ] as const) {
      const res = await post(harness, body);
      expect(res.status).toBe(400);
      expect(res.json).toMatchObject({ error: { code: 'ERP_BAD_REQUEST', message } });
    }
    // Brackets in text are text; a tool schema 20 levels deep is an ordinary request.
    let schema: Record<string, unknown> = { type: 'string' };
    for (let i = 0; i < 20; i++) schema = { type: 'object', properties: { a: schema } };
    const ok = await post(
      harness,
      JSON.stringify({
        model: 'm',
        messages: [{ role: 'user', content: '['.repeat(1000) }],
        tools: [{ type: 'function', function: { name: 'deep', parameters: schema } }],
      }),
    );
    expect(ok.status).toBe(200);
    expect(upstream.requests).toHaveLength(1);
  });

  it('refuses a __proto__ or constructor.prototype key, however its characters are written', async () => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    const start = '{"model":"m","messages":[{"role":"user","content":"Hi"}],';
    for (const key of [
      '"__proto__":{"x":1}',
      '"\\u005f_proto__":{"x":1}',
      '"constructor":{"prototype":{"x":1}}',
      '"constr\\u0075ctor":{"prototype":{"x":1}}',
    ]) {
      const res = await post(harness, `${start}${key}}`);
      expect(res.status, key).toBe(400);
      expect(res.json).toMatchObject({ error: { code: 'ERP_BAD_REQUEST' } });
    }
    expect(upstream.requests).toHaveLength(0);
    // The words themselves, in what the user said, and a body that begins with a byte order mark, are fine.
    for (const body of [
      JSON.stringify({
        model: 'm',
        messages: [{ role: 'user', content: 'the constructor of __proto__, caf\u00e9' }],
      }),
      `\ufeff${JSON.stringify({ model: 'm', messages: [USER] })}`,
    ]) {
      expect((await post(harness, body)).status).toBe(200);
    }
    expect(upstream.requests).toHaveLength(2);
    expect(upstream.requests[0]?.body.messages).toEqual([
      expect.objectContaining({ role: 'user', content: 'the constructor of __proto__, caf\u00e9' }),
    ]);
  });

  it('passes a well-formed request on with its fields as sent', async () => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hello.') }), { tools: [] });
    const res = await post(
      harness,
      JSON.stringify({
        model: 'm',
        messages: [
          { role: 'system', content: 'Be brief.' },
          {
            role: 'user',
            content: [
              { type: 'text', text: 'Hi' },
              { type: 'image_url', image_url: { url: 'x' } },
            ],
          },
          { role: 'assistant', content: null, tool_calls: [{ id: 'a', type: 'function', function: {} }] },
          { role: 'tool', tool_call_id: 'a', content: '{}' },
        ],
        temperature: 0.3,
        stream: null,
        stream_options: null,
        tools: null,
      }),
    );
    expect(res.status).toBe(200);
    expect((res.json as { model: string }).model).toBe('m');
    expect(upstream.requests[0]?.body.temperature).toBe(0.3);
  });
});

describe('the two ways in', () => {
  /** One request, its body sent with its length declared, or chunked: status, the headers that matter, the body. */
  async function send(harness: ProxyHarness, body: string, chunked: boolean) {
    const bytes = new TextEncoder().encode(body);
    const res = await fetch(`${harness.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chunked
        ? new ReadableStream({
            start(controller) {
              controller.enqueue(bytes);
              controller.close();
            },
          })
        : bytes,
      duplex: 'half',
      signal: AbortSignal.timeout(5_000),
    } as RequestInit);
    const headers = Object.fromEntries(
      ['content-type', 'x-should-retry', 'connection', 'cache-control'].map((h) => [h, res.headers.get(h)]),
    );
    // Each answer has its own id and time.
    const text = (await res.text())
      .replace(/chatcmpl-[0-9a-f]+/g, 'ID')
      .replace(/"created":\d+/g, '"created":T');
    return { status: res.status, headers, text };
  }

  // A body of declared length takes the fast lane; a chunked one takes fastify's route. Same answers, but
  // for the connection: fastify closes it after a body it could not parse, where the lane, having read
  // the whole body, keeps it.
  it('answers a request alike whether its length is declared (the fast lane) or it comes chunked (fastify)', async () => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hello there.') }), { tools: [] });
    const good = { model: 'm', messages: [USER] };
    const cases: [string, number][] = [
      ['{"model": "m", "messages": [', 400],
      [JSON.stringify({ model: { name: 'm' }, messages: [USER] }), 400],
      [JSON.stringify({ model: 'm', messages: [] }), 400],
      [JSON.stringify([USER]), 400],
      [
        `{"model":"m","messages":[{"role":"user","content":"Hi"}],"x":${'['.repeat(200)}${']'.repeat(200)}}`,
        400,
      ],
      ['{"model":"m","messages":[{"role":"user","content":"Hi"}],"__proto__":{"x":1}}', 400],
      [`\ufeff${JSON.stringify(good)}`, 200],
      [JSON.stringify(good), 200],
      [JSON.stringify({ ...good, stream: true }), 200],
      [JSON.stringify({ ...good, stream: true, stream_options: { include_usage: true } }), 200],
    ];
    for (const [body, status] of cases) {
      const declared = await send(harness, body, false);
      expect(declared.status, body.slice(0, 60)).toBe(status);
      expect(declared.headers.connection).toBe('keep-alive');
      const chunked = await send(harness, body, true);
      expect(
        { ...chunked, headers: { ...chunked.headers, connection: 'keep-alive' } },
        body.slice(0, 60),
      ).toEqual(declared);
    }
    // The model is asked the same (streamed, with usage) by either way in, whatever the client asked for.
    expect(upstream.requests).toHaveLength(8);
    expect(new Set(upstream.requests.map((r) => JSON.stringify(r.body)))).toHaveProperty('size', 1);
  });
});

describe('the streamed answer', () => {
  function streamOnce(
    harness: ProxyHarness,
    connection: 'close' | 'keep-alive',
  ): Promise<{ connection: string | undefined; socketClosed: boolean; body: string }> {
    return new Promise((resolve, reject) => {
      const req = request(`${harness.proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', connection },
        agent: new Agent({ keepAlive: true }),
        timeout: 5_000,
      });
      req.on('timeout', () => req.destroy(new Error('no answer')));
      req.on('error', reject);
      req.on('response', (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => {
          // The server closes a connection the client asked to close; a kept-alive one stays open.
          setTimeout(() => {
            const socketClosed = req.socket?.destroyed === true || req.socket?.readableEnded === true;
            req.socket?.destroy();
            resolve({ connection: res.headers.connection, socketClosed, body });
          }, 200);
        });
      });
      req.end(JSON.stringify({ model: 'm', messages: [USER], stream: true }));
    });
  }

  it('honours a client that asks to close the connection, and keeps it alive otherwise', async () => {
    const { harness } = await setup(() => ({ sse: textReply('Hello there.') }), { tools: [] });
    const closing = await streamOnce(harness, 'close');
    expect(closing.connection).toBe('close');
    expect(closing.socketClosed).toBe(true);
    expect(closing.body).toContain('data: [DONE]');
    const kept = await streamOnce(harness, 'keep-alive');
    expect(kept.connection).toBe('keep-alive');
    expect(kept.socketClosed).toBe(false);
    expect(kept.body).toContain('data: [DONE]');
  });

  it("gives every answer its own id in vLLM's shape", async () => {
    const { harness } = await setup(() => ({ sse: textReply('Hello there.') }), { tools: [] });
    const ids = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const { body } = await streamOnce(harness, 'keep-alive');
      const first = JSON.parse(body.split('\n')[0]?.replace(/^data: /, '') ?? '') as { id: string };
      expect(first.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
      expect(new Set(body.match(/"id":"[^"]+"/g))).toEqual(new Set([`"id":"${first.id}"`]));
      ids.add(first.id);
    }
    expect(ids.size).toBe(3);
  });
});
