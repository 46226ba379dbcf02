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
