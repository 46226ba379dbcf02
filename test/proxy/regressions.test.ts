/** Defects found in review, each reproduced against the real proxy before it was fixed. */
import { request } from 'node:http';
import { type APIError, BadRequestError } from 'openai';
import { describe, expect, it } from 'vitest';
import { errorReply, lastUserText, textReply, toolCallReply } from '../../src/demo/scripted-upstream.js';
import { type ProxyHarness, unmuteTurn, useScriptedProxy } from '../support/proxy.js';
import { capturingLogger } from '../tools/helpers.js';

const SYSTEM = { role: 'system' as const, content: 'Be brief.' };
const { setup, defer } = useScriptedProxy();

async function metric(harness: ProxyHarness, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`${harness.proxy.metricsUrl}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? Number.NaN);
}

describe('review regressions', () => {
  const weatherTool = {
    name: 'get_time',
    builtin: 'time',
  };

  it('speaks the error message when the answer after a tool round is empty (the filler is not an answer)', async () => {
    const { harness } = await setup(
      (_req, i) => ({ sse: i === 0 ? toolCallReply([{ name: 'get_time', arguments: {} }]) : textReply('') }),
      { tools: [weatherTool] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time?' }]);
    expect(text).toBe("One moment. Sorry, I couldn't do that right now. ");
  });

  it('speaks the error message when the first answer only reasons and runs out of tokens, and counts it failed', async () => {
    const { harness } = await setup(
      () => ({
        sse: [
          'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{"reasoning_content":"The user greets me. I should"}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n',
        ],
      }),
      { tools: [] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    expect(await metric(harness, /^earpiece_turns_total\{toolset="test",outcome="error"\} (\d+)/m)).toBe(1);
  });

  it('speaks the error message for a first answer a content filter held back (finish_reason content_filter, nothing said)', async () => {
    const { harness } = await setup(
      () => ({
        sse: [
          'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}\n\ndata: [DONE]\n\n',
        ],
      }),
      { tools: [] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    expect(await metric(harness, /^earpiece_turns_total\{toolset="test",outcome="error"\} (\d+)/m)).toBe(1);
  });

  it("resends without stream_options when the upstream refuses the field (Mistral's 422), and sends it no more", async () => {
    const { upstream, harness } = await setup(
      (req) =>
        req.body.stream_options
          ? {
              status: 422,
              // Mistral's answer as it comes (a JSON body of its own, not an OpenAI error object).
              json: {
                object: 'error',
                message: {
                  detail: [
                    {
                      type: 'extra_forbidden',
                      loc: ['body', 'stream_options'],
                      msg: 'Extra inputs are not permitted',
                      input: { include_usage: true },
                    },
                  ],
                },
                type: 'invalid_request_message_error',
              },
            }
          : { sse: textReply('Ok.') },
      { tools: [] },
    );
    for (const question of ['Hi', 'Again']) {
      const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: question }]);
      expect(text).toBe('Ok.');
    }
    expect(upstream.requests.map((r) => r.body.stream_options)).toEqual([
      { include_usage: true },
      undefined,
      undefined,
    ]);
  });

  it('speaks the error message for a first answer that is only a refusal', async () => {
    const { harness } = await setup(
      () => ({
        sse: [
          'data: {"choices":[{"index":0,"delta":{"role":"assistant","refusal":"I cannot help with that."}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        ],
      }),
      { tools: [] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
  });

  it('leaves a first answer with nothing to say silent, thought through or not (the model may choose that)', async () => {
    const thought = [
      'data: {"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"Silence again. Wait."}}]}\n\n',
      'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
    ];
    const { harness } = await setup((_req, i) => ({ sse: i === 0 ? textReply('') : thought }), { tools: [] });
    for (let i = 0; i < 2; i++) {
      const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: '...' }]);
      expect(text).toBe('');
    }
    expect(await metric(harness, /^earpiece_turns_total\{toolset="test",outcome="ok"\} (\d+)/m)).toBe(2);
  });

  it('speaks the error message when the model still calls tools at the iteration cap', async () => {
    const { upstream, harness } = await setup(
      () => ({ sse: toolCallReply([{ name: 'get_time', arguments: {} }]) }),
      {
        limits: { maxIterations: 1 },
        tools: [weatherTool],
      },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time?' }]);
    expect(text).toBe("One moment. Sorry, I couldn't do that right now. ");
    expect(upstream.requests.map((r) => Boolean(r.body.tools))).toEqual([true, false]);
  });

  it('stops reading a message whose tool-call arguments pass the cap, and speaks the error message', async () => {
    const piece = 'x'.repeat(64 * 1024);
    const events = Array.from(
      { length: 40 },
      () =>
        `data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"${piece}"}}]}}]}\n\n`,
    );
    const { upstream, harness } = await setup(
      () => ({
        sse: [
          'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"get_time","arguments":"{\\"a\\": \\""}}]}}]}\n\n',
          // Paced, so the model is still writing when the proxy stops reading.
          ...events.flatMap((e) => [e, { delayMs: 10 }]),
          'data: [DONE]\n\n',
        ],
      }),
      { tools: [weatherTool] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time?' }]);
    // The filler went out when the call's name arrived, before its arguments ran away.
    expect(text).toBe("One moment. Sorry, I couldn't do that right now. ");
    expect(await upstream.closed(0)).toBe('aborted');
    expect(upstream.requests).toHaveLength(1);
  });

  it('caps a non-streamed upstream completion while reading it, and answers with a clear error', async () => {
    const huge = {
      choices: [{ index: 0, message: { role: 'assistant', content: 'y'.repeat(6 * 1024 * 1024) } }],
    };
    const { harness } = await setup(() => ({ json: huge }), { tools: [] });
    const response = await fetch(`${harness.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }] }),
    });
    expect(response.status).toBe(502);
    expect(response.headers.get('x-should-retry')).toBe('false');
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe(
      'ERP_UPSTREAM_TOO_LARGE',
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
  });

  it('keeps the model server key out of the log when its refusal quotes the key alone', async () => {
    const key = 'sk-test-9f8e7d6c5b4a';
    const { logger, lines } = capturingLogger();
    const { harness } = await setup(
      () => errorReply(401, `Incorrect API key provided: ${key}. You can find your key at example.com.`),
      { tools: [], upstream: { apiKey: { value: key } } },
      { logger },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    const logged = JSON.stringify(lines());
    expect(logged).toContain('Incorrect API key provided: [redacted]');
    expect(logged).not.toContain(key);
  });

  it('fails a message whose tool call, written as text, runs past the cap, and runs no call', async () => {
    const { upstream, harness } = await setup(
      () => ({
        sse: [
          `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"<tool_call>{\\"name\\": \\"get_time\\", \\"arguments\\": {\\"q\\": \\""}}]}\n\n`,
          ...Array.from(
            { length: 40 },
            () => `data: {"choices":[{"index":0,"delta":{"content":"${'x'.repeat(64 * 1024)}"}}]}\n\n`,
          ),
          'data: {"choices":[{"index":0,"delta":{"content":"\\"}}</tool_call>"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n',
        ],
      }),
      { tools: [weatherTool] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time?' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    // The model was not asked again with the call's result: the call never ran.
    expect(upstream.requests).toHaveLength(1);
  });

  it('fails a message whose tool call names run long, and never sends them upstream again', async () => {
    const name = (k: number) => `tool_${k}`.padEnd(100_000, 'n');
    const { upstream, harness } = await setup(
      (_req, i) =>
        i === 0
          ? {
              sse: [
                ...Array.from(
                  { length: 4 },
                  (_, k) =>
                    `data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":${k},"id":"c${k}","type":"function","function":{"name":"${name(k)}","arguments":"{}"}}]}}]}\n\n`,
                ),
                'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n',
              ],
            }
          : { sse: textReply('Done.') },
      { tools: [weatherTool] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time?' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    expect(upstream.requests).toHaveLength(1);
    expect(JSON.stringify(upstream.requests)).not.toContain('tool_0nnn');
  });

  it('keeps a bounded run of whitespace while no word follows it', async () => {
    const space = Array.from(
      { length: 5000 },
      () => 'data: {"choices":[{"index":0,"delta":{"content":"  "}}]}\n\n',
    );
    const { harness } = await setup(
      () => ({ sse: [...textReply('Hi').slice(0, 2), ...space, ...textReply('there.').slice(1)] }),
      { tools: [] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toMatch(/^Hi\s{1,64}there\.$/);
  });

  it('answers a non-streaming client with an error rather than hold an answer past the cap', async () => {
    const words = `${'word '.repeat(13_000)}`;
    const events = Array.from(
      { length: 20 },
      () => `data: {"choices":[{"index":0,"delta":{"content":"${words}"}}]}\n\n`,
    );
    const stop = 'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n';
    const { harness } = await setup(() => ({ sse: [...events, stop] }), { tools: [] });
    const response = await fetch(`${harness.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Talk' }] }),
    });
    expect(response.status).toBe(502);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe(
      'ERP_UPSTREAM_TOO_LARGE',
    );
  });

  it('drops the client’s own chat_template_kwargs too when the upstream refuses the field (no resend loop)', async () => {
    const { upstream, harness } = await setup(
      (req) =>
        req.body.chat_template_kwargs
          ? errorReply(400, 'chat_template_kwargs is not allowed')
          : { sse: textReply('Ok.') },
      { upstream: { disableThinking: true }, tools: [] },
    );
    const completion = await harness.client.chat.completions.create({
      model: 'm',
      messages: [SYSTEM, { role: 'user', content: 'Hi' }],
      // @ts-expect-error: a vLLM extension the SDK types do not know
      chat_template_kwargs: { custom: 1 },
    });
    expect(completion.choices[0]?.message.content).toBe('Ok.');
    expect(upstream.requests.map((r) => r.body.chat_template_kwargs)).toEqual([
      { custom: 1, enable_thinking: false },
      undefined,
    ]);
  });

  it('ends the turn when a client that stopped reading hangs up (no wait for a drain that never comes)', async () => {
    // Far more than loopback socket buffers hold, so the proxy's writes must wait for the reader.
    const long = `${'word '.repeat(300_000)}end.`;
    const { harness } = await setup(() => ({ sse: textReply(long) }), { tools: [] });
    await new Promise<void>((resolve, reject) => {
      const req = request(`${harness.proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
      });
      req.on('response', (res) => {
        res.pause(); // stop reading: the proxy's socket fills up
        setTimeout(() => {
          req.destroy();
          resolve();
        }, 300);
      });
      req.on('error', () => {});
      req.end(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Talk' }], stream: true }));
      setTimeout(() => reject(new Error('no response')), 10_000);
    });
    const until = Date.now() + 10_000;
    while ((await metric(harness, /^earpiece_active_streams (\d+)/m)) !== 0) {
      if (Date.now() > until) throw new Error('the turn never ended');
      await new Promise((r) => setTimeout(r, 50));
    }
    const turns = (await (await fetch(`${harness.proxy.metricsUrl}/metrics`)).text())
      .split('\n')
      .filter((l) => l.startsWith('earpiece_turns_total{') && !l.endsWith(' 0'));
    expect(turns).toEqual(['earpiece_turns_total{toolset="test",outcome="cancelled"} 1']);
  });

  it('keeps the spoken error message apart from the words before it', async () => {
    const { harness } = await setup(
      () => ({
        sse: [
          'data: {"choices":[{"index":0,"delta":{"content":"The answer"}}]}\n\n',
          'data: {"error": {"message": "engine died", "code": 500}}\n\n',
          'data: [DONE]\n\n',
        ],
      }),
      { tools: [] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("The answer Sorry, I couldn't do that right now. ");
  });

  it('does not resend an identical request after a context-length error when there is nothing to drop', async () => {
    const { upstream, harness } = await setup(
      () => errorReply(400, "This model's maximum context length is 1536 tokens."),
      {
        tools: [],
      },
    );
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'A very long question' },
    ]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    expect(upstream.requests).toHaveLength(1);
  });

  it('logs the missing tool parser once, and counts every refusal', async () => {
    const lines: string[] = [];
    const { Writable } = await import('node:stream');
    const { pino } = await import('pino');
    const logger = pino(
      { level: 'warn' },
      new Writable({
        write(chunk, _enc, done) {
          lines.push(String(chunk));
          done();
        },
      }),
    );
    const { harness } = await setup(
      (req) =>
        req.body.tools
          ? errorReply(400, '"auto" tool choice requires --enable-auto-tool-choice')
          : { sse: textReply('Ok.') },
      { tools: [{ name: 'now', builtin: 'time' }] },
      { logger },
    );
    const state = harness.proxy.current().upstreamState;
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time?' }]);
    // The 60 s without tools pass; the next turn tries tools again and is refused again.
    (state as unknown as { now: () => number }).now = () => Date.now() + 61_000;
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time now?' }]);
    // One warning, with the fix for vLLM and for a hosted API alike.
    const advice = lines.filter((l) => l.includes('--enable-auto-tool-choice --tool-call-parser'));
    expect(advice).toHaveLength(1);
    expect(advice[0]).toContain('on a hosted API (OpenRouter, OpenAI), choose a model that supports tools');
    expect(await metric(harness, /^earpiece_upstream_tools_unsupported_total\{toolset="test"\} (\d+)/m)).toBe(
      2,
    );
  });
});

describe('behaviour that had no test', () => {
  it('records the model time to first token once per upstream call, and closes the active stream', async () => {
    const { harness } = await setup(
      (_req, i) =>
        i === 0
          ? { sse: toolCallReply([{ name: 'now', arguments: {} }]) }
          : { sse: textReply('It is late. Go to bed.') },
      { tools: [{ name: 'now', builtin: 'time' }] },
    );
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What time is it?' },
    ]);
    expect(text).toBe('One moment. It is late. Go to bed.');
    expect(
      await metric(harness, /^earpiece_upstream_time_to_first_token_seconds_count\{[^}]*\} (\d+)/m),
    ).toBe(2);
    expect(await metric(harness, /^earpiece_active_streams (\d+)/m)).toBe(0);
  });

  it('returns only the client’s calls, over SSE, when a message calls client and ToolSet tools', async () => {
    const { upstream, harness } = await setup(
      () => ({
        sse: toolCallReply(
          [
            { name: 'now', arguments: {} },
            { name: 'client_lookup', arguments: { q: 'x' } },
          ],
          'openai',
        ),
      }),
      { tools: [{ name: 'now', builtin: 'time' }] },
    );
    const stream = await harness.client.chat.completions.create({
      model: 'm',
      messages: [SYSTEM, { role: 'user', content: 'Look up x' }],
      tools: [
        {
          type: 'function',
          function: { name: 'client_lookup', parameters: { type: 'object', properties: {} } },
        },
      ],
      stream: true,
    });
    const names: string[] = [];
    const finishes: string[] = [];
    for await (const chunk of stream) {
      for (const call of chunk.choices[0]?.delta.tool_calls ?? [])
        if (call.function?.name) names.push(call.function.name);
      const finish = chunk.choices[0]?.finish_reason;
      if (finish) finishes.push(finish);
    }
    expect(names).toEqual(['client_lookup']);
    expect(finishes).toEqual(['tool_calls']);
    expect(upstream.requests).toHaveLength(1);
  });

  it('runs at most maxParallelCalls tools at once', async () => {
    let running = 0;
    let most = 0;
    const { createServer } = await import('node:http');
    const server = createServer((_req, res) => {
      running++;
      most = Math.max(most, running);
      setTimeout(() => {
        running--;
        res.end('{"ok":true}');
      }, 100);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    defer(async () => void server.close());
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const { harness } = await setup(
      (_req, i) =>
        i === 0
          ? {
              sse: toolCallReply(
                Array.from({ length: 6 }, (_, k) => ({ name: 'slow', arguments: { k } })),
                'vllm-hermes',
              ),
            }
          : { sse: textReply('Done.') },
      {
        limits: { maxParallelCalls: 2 },
        tools: [
          {
            name: 'slow',
            parameters: { type: 'object', properties: { k: { type: 'number' } } },
            http: { url: `${url}/x{?k}` },
          },
        ],
      },
    );
    expect((await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Go' }])).text).toBe(
      'One moment. Done.',
    );
    expect(most).toBe(2);
  });

  it('counts a turn past turnTimeout as outcome timeout', async () => {
    const { harness } = await setup(() => ({ hang: true }), { limits: { turnTimeout: '200ms' }, tools: [] });
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(await metric(harness, /^earpiece_turns_total\{toolset="test",outcome="timeout"\} (\d+)/m)).toBe(1);
  });

  it('answers the client’s own input refused upstream (400, 413, 422) as the client’s 4xx, not a 502', async () => {
    const refusals: Record<string, [number, string]> = {
      malformed: [400, 'messages.1.content: Input should be a valid string'],
      huge: [413, 'request entity too large'],
      unprocessable: [422, "Field required: body -> messages -> 0 -> 'role'"],
      key: [401, 'invalid api key'],
      quota: [429, 'rate limit exceeded'],
      long: [400, "This model's maximum context length is 1536 tokens."],
    };
    const { upstream, harness } = await setup(
      (req) => {
        const [status, message] = refusals[lastUserText(req)] ?? [500, 'unexpected'];
        return errorReply(status, message);
      },
      { tools: [{ name: 'get_time', builtin: 'time' }] },
    );
    const ask = (content: string) =>
      harness.client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content }] }).then(
        () => {
          throw new Error('expected a refusal');
        },
        (err: unknown) => err as InstanceType<typeof APIError>,
      );

    const malformed = await ask('malformed');
    expect(malformed).toBeInstanceOf(BadRequestError);
    expect(malformed.status).toBe(400);
    expect(malformed.code).toBe('ERP_UPSTREAM_REJECTED');
    expect(malformed.type).toBe('invalid_request_error');
    expect(malformed.message).toContain('messages.1.content: Input should be a valid string');
    const unprocessable = await ask('unprocessable');
    expect([unprocessable.status, unprocessable.code]).toEqual([400, 'ERP_UPSTREAM_REJECTED']);
    const huge = await ask('huge');
    expect([huge.status, huge.code]).toEqual([413, 'ERP_UPSTREAM_REQUEST_TOO_LARGE']);
    // The proxy's key and the provider's quota are not the client's to fix.
    for (const content of ['key', 'quota']) {
      const refused = await ask(content);
      expect([refused.status, refused.code]).toEqual([502, 'ERP_UPSTREAM_STATUS']);
    }
    // A context-length refusal with nothing left to drop keeps its own code.
    const long = await ask('long');
    expect([long.status, long.code]).toEqual([400, 'ERP_CONTEXT_LENGTH']);
    // Each was asked once: a client mistake is not re-sent.
    expect(upstream.requests).toHaveLength(6);

    // A voice client hears the error line; its session goes on.
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'malformed' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
  });
});
