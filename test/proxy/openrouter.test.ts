/**
 * OpenRouter as Unmute's production uses it: its recorded stream format through the whole proxy, a 429
 * with retry-after, and the app attribution headers. The upstream replays the fixtures byte for byte.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toolResults } from '../../src/demo/scripted-upstream.js';
import { unmuteTurn, useScriptedProxy } from '../support/proxy.js';
import { loadResponseFixture, loadStreamFixture } from './fixtures.js';

const SYSTEM = { role: 'system' as const, content: 'You are a helpful voice assistant.' };
const replay = (name: string) => [new TextDecoder().decode(loadStreamFixture(name).bytes)];

let weather: Server;
let weatherUrl: string;
beforeAll(async () => {
  weather = createServer((req, res) => {
    const city = new URL(req.url ?? '/', 'http://x').searchParams.get('city');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ city, temperature: 21 }));
  });
  await new Promise<void>((r) => weather.listen(0, '127.0.0.1', r));
  weatherUrl = `http://127.0.0.1:${(weather.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => weather.close(() => r())));

const spec = () => ({
  tools: [
    {
      name: 'get_weather',
      description: 'Weather for a city',
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
      http: { url: `${weatherUrl}/weather{?city}` },
    },
  ],
});

async function metric(metricsUrl: string, name: string): Promise<number> {
  const text = await (await fetch(`${metricsUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(name));
  return line ? Number(line.split(' ').at(-1)) : Number.NaN;
}

const { setup } = useScriptedProxy();

describe('OpenRouter', () => {
  it('its recorded streams make a whole tool turn: comments, reasoning and usage-only chunks never spoken', async () => {
    const { harness, upstream } = await setup(
      (_req, i) => ({ sse: replay(i === 0 ? 'openrouter-tool-call' : 'openrouter-reasoning-then-content') }),
      spec(),
    );
    const { text, chunks } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What is the weather in Paris?' },
    ]);
    expect(text).toBe('One moment. The capital of France is Paris.');
    expect(toolResults(upstream.requests[1] as never)).toEqual(['{"city":"Paris","temperature":21}']);
    expect(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0]?.finish_reason)).toEqual(
      ['stop'],
    );
  });

  it("Gemini 3's reasoning_details (its thought signature) go back with the call they led to, merged and unchanged", async () => {
    const head =
      '"id":"gen-1","object":"chat.completion.chunk","created":1,"model":"google/gemini-3-pro-preview","provider":"Google AI Studio"';
    const event = (delta: object, finish: string | null = null) =>
      `data: {${head},"choices":[{"index":0,"delta":${JSON.stringify(delta)},"finish_reason":${JSON.stringify(finish)},"native_finish_reason":${JSON.stringify(finish && 'STOP')},"logprobs":null}]}\n\n`;
    const text = (t: string) => ({ type: 'reasoning.text', text: t, format: 'google-gemini-v1', index: 0 });
    const signature = {
      type: 'reasoning.encrypted',
      data: 'CiQBjz1rX2sig',
      id: 'tool_get_weather_x1',
      format: 'google-gemini-v1',
      index: 1,
    };
    const { harness, upstream } = await setup(
      (_req, i) =>
        i === 0
          ? {
              sse: [
                ': OPENROUTER PROCESSING\n\n',
                event({
                  role: 'assistant',
                  content: '',
                  reasoning: 'Checking',
                  reasoning_details: [text('Checking')],
                }),
                event({ content: '', reasoning: ' Paris.', reasoning_details: [text(' Paris.')] }),
                event({
                  content: '',
                  tool_calls: [
                    {
                      index: 0,
                      id: 'tool_get_weather_x1',
                      type: 'function',
                      function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
                    },
                  ],
                  reasoning_details: [signature],
                }),
                event({ content: '' }, 'tool_calls'),
                'data: [DONE]\n\n',
              ],
            }
          : { sse: replay('openrouter-reasoning-then-content') },
      spec(),
    );
    const { text: spoken } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What is the weather in Paris?' },
    ]);
    expect(spoken).toBe('One moment. The capital of France is Paris.');
    const sentBack = (upstream.requests[1]!.body.messages as Record<string, unknown>[]).find(
      (m) => m.role === 'assistant',
    );
    expect(sentBack).toMatchObject({
      tool_calls: [
        { id: 'tool_get_weather_x1', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } },
      ],
      reasoning_details: [{ ...text('Checking Paris.') }, signature],
    });

    // The next turn gets the exchange back from memory, without the reasoning: only the current turn's
    // signatures are checked, and a remembered exchange must fit memory.maxBytes.
    await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What is the weather in Paris?' },
      { role: 'assistant', content: spoken },
      { role: 'user', content: 'And tomorrow?' },
    ]);
    const remembered = (upstream.requests[2]!.body.messages as Record<string, unknown>[]).find(
      (m) => m.role === 'assistant' && m.tool_calls,
    );
    expect(remembered).toEqual({
      role: 'assistant',
      content: null,
      tool_calls: [
        {
          id: 'tool_get_weather_x1',
          type: 'function',
          function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
        },
      ],
    });
  });

  it("Google's OpenAI-compatible stream: parallel calls all at index 0 run apart, each call's extra_content goes back with it", async () => {
    const call = (id: string, city: string, extra?: object) =>
      `data: {"choices":[{"delta":{"role":"assistant","tool_calls":[{${extra ? `"extra_content":${JSON.stringify(extra)},` : ''}"function":{"arguments":"{\\"city\\":\\"${city}\\"}","name":"get_weather"},"id":"${id}","type":"function","index":0}]},"index":0}],"created":1,"id":"x","model":"gemini-3-flash","object":"chat.completion.chunk"}\n\n`;
    const signed = { google: { thought_signature: 'EjQKMgG' } };
    const { harness, upstream } = await setup(
      (_req, i) =>
        i === 0
          ? {
              sse: [
                call('call_paris', 'Paris', signed),
                call('call_rome', 'Rome'),
                'data: {"choices":[{"delta":{"role":"assistant"},"finish_reason":"tool_calls","index":0}],"created":1,"id":"x","model":"gemini-3-flash","object":"chat.completion.chunk"}\n\n',
                'data: [DONE]\n\n',
              ],
            }
          : { sse: replay('openrouter-reasoning-then-content') },
      spec(),
    );
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Weather in Paris and Rome?' }]);
    expect(toolResults(upstream.requests[1] as never)).toEqual([
      '{"city":"Paris","temperature":21}',
      '{"city":"Rome","temperature":21}',
    ]);
    const sentBack = (upstream.requests[1]!.body.messages as Record<string, unknown>[]).find(
      (m) => m.role === 'assistant',
    ) as { tool_calls: Record<string, unknown>[] };
    expect(sentBack.tool_calls).toEqual([
      {
        id: 'call_paris',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
        extra_content: signed,
      },
      { id: 'call_rome', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Rome"}' } },
    ]);
  });

  it('a JSON answer (a gateway that ignored stream) keeps its reasoning_details and extra_content for the call they belong to', async () => {
    const signature = {
      type: 'reasoning.encrypted',
      data: 'c2ln',
      id: 'call_1',
      format: 'google-gemini-v1',
      index: 0,
    };
    const extra = { google: { thought_signature: 'EjQK' } };
    const { harness, upstream } = await setup(
      (_req, i) =>
        i === 0
          ? {
              json: {
                id: 'gen-2',
                choices: [
                  {
                    index: 0,
                    message: {
                      role: 'assistant',
                      content: null,
                      reasoning_details: [signature],
                      tool_calls: [
                        {
                          id: 'call_1',
                          type: 'function',
                          function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
                          extra_content: extra,
                        },
                      ],
                    },
                    finish_reason: 'tool_calls',
                  },
                ],
              },
            }
          : { sse: replay('openrouter-reasoning-then-content') },
      spec(),
    );
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'What is the weather in Paris?' }]);
    const sentBack = (upstream.requests[1]!.body.messages as Record<string, unknown>[]).find(
      (m) => m.role === 'assistant',
    );
    expect(sentBack).toMatchObject({
      reasoning_details: [signature],
      tool_calls: [{ id: 'call_1', extra_content: extra }],
    });
  });

  it('a mid-stream error object ends the turn with the error line, never an error event', async () => {
    const { harness } = await setup(() => ({ sse: replay('openrouter-midstream-error') }), spec());
    const { text, chunks } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Hi there.' },
    ]);
    expect(text).toBe("The capital Sorry, I couldn't do that right now. ");
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
  });

  it('a model no provider serves with tools (404 "No endpoints found that support tool use"): answered without tools, and the next turn sends none', async () => {
    const { harness, upstream } = await setup(
      (req) =>
        req.body.tools
          ? { status: 404, json: JSON.parse(loadResponseFixture('openrouter-no-tool-endpoints')) }
          : { sse: replay('openrouter-reasoning-then-content') },
      spec(),
    );
    const first = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hello there.' }]);
    expect(first.text).toBe('The capital of France is Paris.');
    const second = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'And Italy?' }]);
    expect(second.text).toBe('The capital of France is Paris.');
    expect(upstream.requests.map((r) => r.body.tools !== undefined)).toEqual([true, false, false]);
  });

  it('a 429 with retry-after: the error line at once, counted, not retried', async () => {
    const { harness, upstream } = await setup(
      () => ({
        status: 429,
        headers: { 'retry-after': '30' },
        // OpenRouter's error shape (https://openrouter.ai/docs/api-reference/errors).
        json: { error: { code: 429, message: 'Rate limit exceeded: free-models-per-min.', metadata: {} } },
      }),
      spec(),
    );
    const { text, chunks } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What is the weather in Paris?' },
    ]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
    expect(upstream.requests).toHaveLength(1);
    expect(
      await metric(harness.proxy.metricsUrl, 'earpiece_upstream_rate_limited_total{toolset="test"}'),
    ).toBe(1);
  });

  it("passes the client's HTTP-Referer and X-Title on, and nothing when it sends none", async () => {
    const { harness, upstream } = await setup(
      () => ({ sse: replay('openrouter-reasoning-then-content') }),
      spec(),
    );
    const messages = [SYSTEM, { role: 'user' as const, content: 'Hello there.' }];
    await harness.client.chat.completions
      .create(
        { model: 'openai/gpt-oss-120b', messages, stream: true },
        { headers: { 'HTTP-Referer': 'https://unmute.example', 'X-Title': 'Unmute' } },
      )
      .then(async (s) => {
        for await (const _ of s);
      });
    await unmuteTurn(harness.client, messages);
    expect(upstream.requests[0]?.headers).toMatchObject({
      'http-referer': 'https://unmute.example',
      'x-title': 'Unmute',
    });
    expect(upstream.requests[1]?.headers['http-referer']).toBeUndefined();
    expect(upstream.requests[1]?.headers['x-title']).toBeUndefined();
  });
});
