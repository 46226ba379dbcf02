import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  DIALECTS,
  type RecordedRequest,
  type ScriptedReply,
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { type ProxyHarness, startTestProxy, unmuteTurn } from '../support/proxy.js';

const SYSTEM = { role: 'system' as const, content: 'You are a helpful voice assistant.' };

let weather: Server;
let weatherUrl: string;
const weatherHits: string[] = [];

beforeAll(async () => {
  weather = createServer((req, res) => {
    weatherHits.push(req.url ?? '');
    const url = new URL(req.url ?? '/', 'http://x');
    const city = url.searchParams.get('city') ?? 'nowhere';
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        current: { city, temperature: city === 'Paris' ? 21 : 9, unit: 'C' },
        debug: 'x'.repeat(100),
      }),
    );
  });
  await new Promise<void>((r) => weather.listen(0, '127.0.0.1', r));
  weatherUrl = `http://127.0.0.1:${(weather.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => weather.close(() => r())));

function weatherSpec(extra: Record<string, unknown> = {}) {
  return {
    instructions: 'Answer briefly.',
    tools: [
      {
        name: 'get_weather',
        description: 'Weather for a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        http: { url: `${weatherUrl}/weather{?city}`, select: '/current' },
      },
      { name: 'current_time', builtin: 'time' },
    ],
    ...extra,
  };
}

let upstream: ScriptedUpstream | undefined;
let harness: ProxyHarness | undefined;
afterEach(async () => {
  await harness?.close();
  await upstream?.close();
  harness = undefined;
  upstream = undefined;
});

async function setup(respond: (req: RecordedRequest, i: number) => ScriptedReply, spec = weatherSpec()) {
  upstream = await startScriptedUpstream({ respond });
  harness = await startTestProxy(spec, upstream.url);
  return { upstream, harness };
}

describe('a tool turn in every dialect', () => {
  for (const dialect of DIALECTS) {
    it(`${dialect}: runs the tool, feeds the result back and streams only speech`, async () => {
      const { upstream, harness } = await setup((req, i) =>
        i === 0
          ? { sse: toolCallReply([{ name: 'get_weather', arguments: { city: 'Paris' } }], dialect) }
          : {
              sse: textReply(
                `It is ${JSON.parse(toolResults(req)[0] ?? '{}').temperature} degrees in Paris.`,
                dialect,
              ),
            },
      );
      const { text, chunks } = await unmuteTurn(harness.client, [
        SYSTEM,
        { role: 'user', content: 'What is the weather in Paris?' },
      ]);
      expect(text).toBe('One moment. It is 21 degrees in Paris.');
      // One well-formed stream: one id, one finish_reason, no tool calls leaked to the client.
      expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
      expect(chunks[0]?.id).toMatch(/^chatcmpl-[0-9a-f]{32}$/);
      const finishes = chunks.flatMap((c) => c.choices.map((ch) => ch.finish_reason).filter(Boolean));
      expect(finishes).toEqual(['stop']);
      expect(chunks.some((c) => c.choices.some((ch) => ch.delta.tool_calls))).toBe(false);
      // The second upstream request carries the assistant tool_calls and the tool result.
      const second = upstream.requests[1]?.body.messages ?? [];
      const assistant = second.find((m) => m.role === 'assistant') as {
        tool_calls?: { function: { name: string; arguments: string } }[];
      };
      expect(assistant.tool_calls?.[0]?.function.name).toBe('get_weather');
      expect(JSON.parse(assistant.tool_calls?.[0]?.function.arguments ?? '')).toEqual({ city: 'Paris' });
      expect(JSON.parse(toolResults(upstream.requests[1] as RecordedRequest)[0] ?? '')).toEqual({
        city: 'Paris',
        temperature: 21,
        unit: 'C',
      });
      // Instructions appended to the system message; tools offered on the first request.
      expect(upstream.requests[0]?.body.messages?.[0]?.content).toBe(
        'You are a helpful voice assistant.\n\nAnswer briefly.',
      );
      expect(upstream.requests[0]?.body.tools?.length).toBe(2);
    });
  }
});

describe('turn behaviour', () => {
  it('runs parallel calls and keeps results in call order', async () => {
    const { upstream, harness } = await setup((_req, i) =>
      i === 0
        ? {
            sse: toolCallReply(
              [
                { name: 'get_weather', arguments: { city: 'Paris' } },
                { name: 'get_weather', arguments: { city: 'Oslo' } },
              ],
              'vllm-hermes',
            ),
          }
        : { sse: textReply('Paris is warmer than Oslo.') },
    );
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Compare Paris and Oslo weather' },
    ]);
    expect(text).toBe('One moment. Paris is warmer than Oslo.');
    const results = toolResults(upstream.requests[1] as RecordedRequest).map((r) => JSON.parse(r).city);
    expect(results).toEqual(['Paris', 'Oslo']);
  });

  it.each([
    ['an ASCII model name', 'scripted-model'],
    ['a model name in another script', 'modèle-東京'],
  ])('streams words in any script, quotes and backslashes included, with %s', async (_, model) => {
    // One write per word, so most words come through the decoder's fast lane and the sink's latin1 path.
    const said = 'Il fait 21 °C à Tōkyō (東京) ß, "sunny" and a back\\slash; then plain ASCII words again.';
    const { harness } = await setup(() => ({ sse: textReply(said, 'vllm-llama3json', { delayMs: 2 }) }));
    const { text, chunks } = await unmuteTurn(
      harness.client,
      [SYSTEM, { role: 'user', content: 'Weather?' }],
      model,
    );
    expect(text).toBe(said);
    expect(new Set(chunks.map((c) => c.model))).toEqual(new Set([model]));
  });

  it('offers no tools on the opening Hello! and on the silence marker', async () => {
    const { upstream, harness } = await setup(() => ({ sse: textReply('Hi there!') }));
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hello!' }]);
    await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Hello!' },
      { role: 'assistant', content: 'Hi there!' },
      { role: 'user', content: '...' },
    ]);
    expect(upstream.requests.map((r) => r.body.tools)).toEqual([undefined, undefined]);
  });

  it('turns an unknown tool and bad arguments into error results the model answers from', async () => {
    const { upstream, harness } = await setup((_req, i) =>
      i === 0
        ? {
            sse: toolCallReply(
              [
                { name: 'launch_rocket', arguments: {} },
                { name: 'get_weather', arguments: { town: 'Paris' } },
              ],
              'openai',
            ),
          }
        : { sse: textReply('I could not look that up.') },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Weather?' }]);
    expect(text).toBe('One moment. I could not look that up.');
    const [unknown, invalid] = toolResults(upstream.requests[1] as RecordedRequest);
    expect(unknown).toMatch(/launch_rocket/);
    expect(unknown).toMatch(/get_weather/);
    expect(invalid).toMatch(/city/);
  });

  it('refuses arguments over 64 KiB before parsing them, in a streamed call and in one written as text', async () => {
    const city = 'x'.repeat(70_000);
    const { upstream, harness } = await setup((_req, i) =>
      i === 0
        ? { sse: toolCallReply([{ name: 'get_weather', arguments: { city } }], 'openai') }
        : i === 2
          ? {
              sse: textReply(
                `<tool_call>{"name": "get_weather", "arguments": {"city": "${city}"}}</tool_call>`,
                'vllm-llama3json',
              ),
            }
          : { sse: textReply('That is too long.') },
    );
    const refused =
      /^error: the arguments for get_weather are wrong: they are 700\d\d bytes long, over the limit of 64 KiB$/;
    for (const turn of ['Weather?', 'And now?']) {
      const asked = upstream.requests.length;
      const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: turn }]);
      expect(text).toBe('One moment. That is too long.');
      expect(toolResults(upstream.requests[asked + 1] as RecordedRequest)).toEqual([
        expect.stringMatching(refused),
      ]);
    }
    expect(weatherHits.filter((hit) => hit.includes('xxx'))).toEqual([]);
  });

  it('stops after maxIterations with one final call without tools', async () => {
    const { upstream, harness } = await setup(
      (req) =>
        req.body.tools
          ? { sse: toolCallReply([{ name: 'current_time', arguments: {} }]) }
          : { sse: textReply('It is late.') },
      weatherSpec({ limits: { maxIterations: 2 } }),
    );
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What time is it?' },
    ]);
    expect(text).toBe('One moment. It is late.');
    expect(upstream.requests.map((r) => Boolean(r.body.tools))).toEqual([true, true, false]);
  });

  it('speaks the error message, cleanly finished, when the upstream fails mid-stream', async () => {
    const { harness } = await setup(() => ({
      sse: [
        'data: {"choices":[{"index":0,"delta":{"content":"Well "}}]}\n\n',
        'data: {"error": {"message": "boom", "code": 500}}\n\n',
        'data: [DONE]\n\n',
      ],
    }));
    const { text, chunks } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Well Sorry, I couldn't do that right now. ");
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
  });

  /** The same turn from a streaming client (what it hears) and a non-streaming one (its status and error code). */
  async function bothClients(h: ProxyHarness) {
    const { text } = await unmuteTurn(h.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    const res = await fetch(`${h.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }] }),
    });
    const body = (await res.json()) as { error?: { code: string } };
    return { text, status: res.status, code: body.error?.code };
  }

  it.each([
    ['an error object', { error: { message: 'Provider returned error', code: 502 } }],
    ['no choices', { id: 'gen-1', object: 'chat.completion' }],
  ])('fails the turn when the upstream ignores stream and its JSON answer has %s', async (_, json) => {
    const { harness } = await setup(() => ({ json }));
    expect(await bothClients(harness)).toEqual({
      text: "Sorry, I couldn't do that right now. ",
      status: 502,
      code: 'ERP_UPSTREAM_STREAM',
    });
  });

  it.each([
    ['text/plain', 'text/plain; charset=utf-8'],
    ['no content type', ''],
  ])('reads an answer sent as %s by its first byte: a JSON completion, or a stream', async (_, type) => {
    const completion = {
      id: 'x',
      choices: [{ index: 0, message: { role: 'assistant', content: 'From JSON.' }, finish_reason: 'stop' }],
    };
    const { harness } = await setup((_req, i) =>
      i === 0
        ? { json: completion, headers: { 'content-type': type } }
        : { sse: ['\n', ...textReply('From a stream.')], headers: { 'content-type': type } },
    );
    expect((await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }])).text).toBe(
      'From JSON.',
    );
    expect((await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Again' }])).text).toBe(
      'From a stream.',
    );
  });

  it('stops reading an answer of nothing but whitespace past the completion cap, and speaks the error line', async () => {
    const { harness } = await setup(() => ({
      sse: Array(5).fill(' '.repeat(1024 * 1024)),
      headers: { 'content-type': 'text/plain' },
    }));
    expect(await bothClients(harness)).toEqual({
      text: "Sorry, I couldn't do that right now. ",
      status: 502,
      code: 'ERP_UPSTREAM_STREAM',
    });
  });

  it('refuses a JSON completion nested past 128 levels before parsing it, as too large', async () => {
    // 4 MiB of brackets (the completion cap) would take some 150 MB to parse.
    const deep = `{"choices":[{"index":0,"message":{"role":"assistant","content":"x","x":${'['.repeat(1000)}${']'.repeat(1000)}},"finish_reason":"stop"}]}`;
    const { harness } = await setup(() => ({
      sse: [deep],
      headers: { 'content-type': 'application/json' },
    }));
    expect(await bothClients(harness)).toEqual({
      text: "Sorry, I couldn't do that right now. ",
      status: 502,
      code: 'ERP_UPSTREAM_TOO_LARGE',
    });
  });

  it('speaks the error line for a refusal in a JSON completion, as for a streamed one', async () => {
    const { harness } = await setup(() => ({
      json: {
        choices: [
          { index: 0, message: { role: 'assistant', content: null, refusal: "I can't help with that." } },
        ],
      },
    }));
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
  });

  it('fails the turn on finish_reason "error" with no error object (OpenRouter, a provider failing mid-stream)', async () => {
    const { harness } = await setup(() => ({
      sse: [
        ': OPENROUTER PROCESSING\n\n',
        'data: {"id":"gen-1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
        'data: {"id":"gen-1","choices":[{"index":0,"delta":{},"finish_reason":"error"}]}\n\n',
        'data: [DONE]\n\n',
      ],
    }));
    expect(await bothClients(harness)).toEqual({
      text: "Sorry, I couldn't do that right now. ",
      status: 502,
      code: 'ERP_UPSTREAM_STREAM',
    });
  });

  it('never runs a call cut short by finish_reason "error", nor sends it back', async () => {
    weatherHits.length = 0;
    const { harness, upstream } = await setup(() => ({
      sse: [
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c0","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Par"}}]},"finish_reason":null}]}\n\n',
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"error"}]}\n\n',
        'data: [DONE]\n\n',
      ],
    }));
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Weather in Paris?' },
    ]);
    expect(text).toContain("Sorry, I couldn't do that right now. ");
    expect(weatherHits).toEqual([]);
    expect(upstream.requests).toHaveLength(1);
  });

  it('answers a non-streaming request after tools, and fails with x-should-retry: false', async () => {
    const { harness } = await setup((_req, i) =>
      i === 0
        ? { sse: toolCallReply([{ name: 'get_weather', arguments: { city: 'Paris' } }], 'ollama') }
        : { sse: textReply('Sunny.') },
    );
    const completion = await harness.client.chat.completions.create({
      model: 'scripted-model',
      messages: [SYSTEM, { role: 'user', content: 'Weather in Paris?' }],
    });
    expect(completion.choices[0]?.message.content).toBe('One moment. Sunny.');
    expect(completion.choices[0]?.finish_reason).toBe('stop');

    await upstream?.close();
    const res = await fetch(`${harness.proxy.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }] }),
    });
    expect(res.status).toBe(502);
    expect(res.headers.get('x-should-retry')).toBe('false');
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('ERP_UPSTREAM_UNREACHABLE');
  });

  // The headers that go with it: passthrough.test.ts.
  it('passes GET /v1/models through', async () => {
    const { harness } = await setup(() => ({ sse: textReply('x') }));
    const models = await harness.client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['scripted-model']);
  });
});

describe('what goes upstream', () => {
  it('offers a tool with when.keywords only when one of the last two user messages mentions it', async () => {
    const spec = weatherSpec();
    (spec.tools[0] as Record<string, unknown>).when = { keywords: ['weather', 'rain'] };
    const { upstream, harness } = await setup(() => ({ sse: textReply('Ok.') }), spec);
    const names = () =>
      ((upstream.requests.at(-1)?.body.tools ?? []) as { function: { name: string } }[]).map(
        (t) => t.function.name,
      );
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Tell me a joke' }]);
    expect(names()).toEqual(['current_time']);
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Is it raining in Paris?' }]);
    expect(names()).toEqual(['get_weather', 'current_time']);
    await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Is it raining in Paris?' },
      { role: 'assistant', content: 'No.' },
      { role: 'user', content: 'And tomorrow?' },
    ]);
    expect(names()).toEqual(['get_weather', 'current_time']);
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'I took the train' }]);
    expect(names()).toEqual(['current_time']);
    // Of a long message only its last 1,000 characters are read: the work on it stays small.
    const long = (head: string, tail: string) => `${head} ${'la '.repeat(2000)}${tail}`;
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: long('Weather?', 'Thanks.') }]);
    expect(names()).toEqual(['current_time']);
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: long('Hi.', 'Rain?') }]);
    expect(names()).toEqual(['get_weather', 'current_time']);
  });

  it("forwards the client's Authorization, unless spec.upstream.apiKey replaces it", async () => {
    const first = await setup(() => ({ sse: textReply('Ok.') }));
    await unmuteTurn(first.harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(first.upstream.requests.at(-1)?.headers.authorization).toBe('Bearer EMPTY');
    await first.harness.close();
    process.env.EARPIECE_TEST_UPSTREAM_KEY = 'sk-upstream';
    harness = await startTestProxy(
      weatherSpec({ upstream: { apiKey: { valueFrom: { env: 'EARPIECE_TEST_UPSTREAM_KEY' } } } }),
      first.upstream.url,
    );
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(first.upstream.requests.at(-1)?.headers.authorization).toBe('Bearer sk-upstream');
    delete process.env.EARPIECE_TEST_UPSTREAM_KEY;
  });
});
