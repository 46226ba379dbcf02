/**
 * Tools start mid-stream: a call whose arguments are complete (the next call has begun, or the message
 * finished with it) runs while the model still streams the rest of its message. The model here streams call 0 whole, then call 1's
 * arguments piece by piece, and holds back the last piece until it sees tool 0's request (or a guard
 * of several seconds passes), so the order is what the test checks, not a timing.
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestProxy, unmuteTurn } from '../support/proxy.js';

const SYSTEM = { role: 'system' as const, content: 'Be brief.' };
const GUARD_MS = 5000;

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()?.();
});

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server: Server = createServer(handler);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function signalled(): { promise: Promise<void>; fire: () => void } {
  let fire!: () => void;
  const promise = new Promise<void>((r) => {
    fire = r;
  });
  return { promise, fire };
}

const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const call = (index: number, fn: Record<string, unknown>, id?: string) =>
  chunk({ tool_calls: [{ index, ...(id ? { id, type: 'function' } : {}), function: fn }] });

/** Waits for `release`, or the guard: true when it was `release`. */
async function heldUntil(release: Promise<void>): Promise<boolean> {
  const guard = new Promise<'guard'>((r) => setTimeout(() => r('guard'), GUARD_MS));
  return (await Promise.race([release.then(() => 'released' as const), guard])) === 'released';
}

/** The model's text answer after the tool round. */
function answer(res: ServerResponse, text: string): void {
  res.write(chunk({ role: 'assistant', content: text }));
  res.end(`${chunk({}, 'stop')}data: [DONE]\n\n`);
}

/**
 * A model whose first answer calls get_weather twice: call 0 (`firstArgs`) whole, then call 1 for Oslo in
 * 40 pieces, the last one held until `release` fires (or the guard passes). Before the calls it says
 * `leadIn`. Its second answer is text.
 */
async function twoCallModel(firstArgs: string, release: Promise<void>, leadIn = '') {
  const requests: Array<Record<string, unknown>> = [];
  const state = { heldBackUntilTool: false, firstAborted: signalled() };
  const url = await listen(async (req, res) => {
    let body = '';
    for await (const part of req) body += part;
    requests.push(JSON.parse(body));
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    if (requests.length > 1) {
      answer(res, 'Sunny in both.');
      return;
    }
    res.on('close', () => {
      if (!res.writableFinished) state.firstAborted.fire();
    });
    res.write(chunk({ role: 'assistant', content: leadIn }));
    res.write(call(0, { name: 'get_weather', arguments: '' }, 'call_0'));
    res.write(call(0, { arguments: firstArgs }));
    res.write(call(1, { name: 'get_weather', arguments: '' }, 'call_1'));
    const args = JSON.stringify({ city: 'Oslo' }).padEnd(40, ' ');
    for (const piece of args.slice(0, -1)) {
      res.write(call(1, { arguments: piece }));
      await new Promise((r) => setTimeout(r, 5));
    }
    state.heldBackUntilTool = await heldUntil(release);
    if (res.destroyed) return;
    res.write(call(1, { arguments: args.at(-1) }));
    res.write(chunk({}, 'tool_calls'));
    res.end('data: [DONE]\n\n');
  });
  return { url, requests, state };
}

/** A weather service that answers `{"sky":"sunny"}`, calling `onRequest` for each request. */
function sunnyWeather(onRequest: () => void = () => {}): Promise<string> {
  return listen((_req, res) => {
    onRequest();
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"sky":"sunny"}');
  });
}

/** A weather service that echoes each request's city with a sunny sky, noting the cities in order. */
async function cityWeather() {
  const cities: string[] = [];
  const paris = signalled();
  const url = await listen((req, res) => {
    const city = new URL(req.url ?? '/', 'http://x').searchParams.get('city') ?? '';
    cities.push(city);
    if (city === 'Paris') paris.fire();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ city, sky: 'sunny' }));
  });
  return { url, cities, parisRequested: paris.promise };
}

type Spec = ReturnType<typeof weatherSpec>;

function weatherSpec(url: string, extra: Record<string, unknown> = {}) {
  return {
    tools: [
      {
        name: 'get_weather',
        description: 'Weather for a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        http: { url: `${url}/weather{?city}` },
        ...extra,
      },
    ],
  };
}

/** A model that streams its first answer with `first`, and answers "Sunny." after the tool round. */
function firstAnswerModel(first: (res: ServerResponse) => Promise<void>): Promise<string> {
  let requests = 0;
  return listen(async (req, res) => {
    for await (const _ of req);
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    if (++requests > 1) answer(res, 'Sunny.');
    else await first(res);
  });
}

/**
 * A model whose first answer streams the calls in `names` one after another, each with `{"city":"Oslo"}`,
 * and holds back every call's arguments until `release` fires (or the guard passes). Its second answer is
 * text.
 */
async function heldArgumentsModel(names: string[], release: Promise<void>) {
  const state = { heldBackUntilFiller: false };
  const url = await firstAnswerModel(async (res) => {
    res.write(chunk({ role: 'assistant', content: '' }));
    for (const [index, name] of names.entries()) {
      res.write(call(index, { name, arguments: '' }, `call_${index}`));
    }
    state.heldBackUntilFiller = await heldUntil(release);
    for (const index of names.keys()) res.write(call(index, { arguments: '{"city":"Oslo"}' }));
    res.write(chunk({}, 'tool_calls'));
    res.end('data: [DONE]\n\n');
  });
  return { url, state };
}

/** Streams a turn, firing `onFirstWords` when the first content arrives; resolves with the whole text. */
async function streamTurn(harness: Awaited<ReturnType<typeof startTestProxy>>, onFirstWords: () => void) {
  const stream = await harness.client.chat.completions.create({
    model: 'm',
    messages: [SYSTEM, { role: 'user', content: 'Weather?' }],
    stream: true,
  });
  let text = '';
  for await (const part of stream) {
    const content = part.choices[0]?.delta.content;
    if (!content) continue;
    if (text === '') onFirstWords();
    text += content;
  }
  return text;
}

/**
 * A model whose first answer is one get_weather call for Oslo with its finish chunk, and holds back the
 * usage chunk and [DONE] until `release` fires (or the guard passes). Its second answer is text.
 */
async function heldEndModel(release: Promise<void>) {
  const state = { heldBackUntilTool: false };
  const url = await firstAnswerModel(async (res) => {
    res.write(chunk({ role: 'assistant', content: '' }));
    res.write(call(0, { name: 'get_weather', arguments: '{"city":"Oslo"}' }, 'call_0'));
    res.write(chunk({}, 'tool_calls'));
    state.heldBackUntilTool = await heldUntil(release);
    if (res.destroyed) return;
    res.write(
      `data: ${JSON.stringify({ id: 'chatcmpl-1', object: 'chat.completion.chunk', model: 'm', choices: [], usage: { prompt_tokens: 9, completion_tokens: 7, total_tokens: 16 } })}\n\n`,
    );
    res.end('data: [DONE]\n\n');
  });
  return { url, state };
}

describe('tools that start mid-stream', () => {
  it.each([
    ['with a filler', {}, 'One moment. Sunny.'],
    ['with none (no filler to wait for)', { filler: '' }, 'Sunny.'],
  ])(
    "requests the last call's tool once the message finishes with it, before the usage chunk and [DONE], %s",
    async (_name, extra, answer) => {
      const requested = signalled();
      const weather = await sunnyWeather(requested.fire);
      const model = await heldEndModel(requested.promise);
      const harness = await startTestProxy(weatherSpec(weather, extra), model.url);
      cleanups.push(() => harness.close());

      const { text } = await unmuteTurn(harness.client, [
        SYSTEM,
        { role: 'user', content: 'Weather in Oslo?' },
      ]);

      expect(model.state.heldBackUntilTool).toBe(true);
      expect(text).toBe(answer);
    },
  );

  it("speaks the filler when the first call's name arrives, before its arguments", async () => {
    const weather = await sunnyWeather();
    const heard = signalled();
    const model = await heldArgumentsModel(['get_weather'], heard.promise);
    const harness = await startTestProxy(weatherSpec(weather), model.url);
    cleanups.push(() => harness.close());

    const text = await streamTurn(harness, heard.fire);

    expect(model.state.heldBackUntilFiller).toBe(true);
    expect(text).toBe('One moment. Sunny.');
  });

  it.each([
    ['', {}],
    [' (voice.filler off)', { voice: { filler: '' } }],
  ])(
    "waits for call 1's name when call 0's tool has no filler, and speaks call 1's%s",
    async (_name, voice) => {
      const weather = await sunnyWeather();
      const heard = signalled();
      const model = await heldArgumentsModel(['quiet_weather', 'get_weather'], heard.promise);
      const [tool] = weatherSpec(weather).tools;
      const spec = {
        ...voice,
        tools: [
          { ...tool, filler: 'Checking the sky. ' },
          { ...tool, name: 'quiet_weather', filler: '' },
        ],
      };
      const harness = await startTestProxy(spec, model.url);
      cleanups.push(() => harness.close());

      const text = await streamTurn(harness, heard.fire);

      expect(model.state.heldBackUntilFiller).toBe(true);
      expect(text).toBe('Checking the sky. Sunny.');
    },
  );

  it.each([
    ['no filler is configured', { voice: { filler: '' } }, ' Checking Oslo. Sunny.'],
    ['the filler is spoken first', {}, 'One moment.  Checking Oslo. Sunny.'],
  ])(
    'keeps words the model says after its call apart from the answer, when %s',
    async (_name, voice, expected) => {
      const weather = await sunnyWeather();
      const model = await firstAnswerModel(async (res) => {
        res.write(chunk({ role: 'assistant', content: '' }));
        res.write(call(0, { name: 'get_weather', arguments: '{"city":"Oslo"}' }, 'call_0'));
        res.write(chunk({ content: ' Checking Oslo.' }));
        res.end(`${chunk({}, 'tool_calls')}data: [DONE]\n\n`);
      });
      const harness = await startTestProxy({ ...weatherSpec(weather), ...voice }, model);
      cleanups.push(() => harness.close());

      const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Weather?' }]);

      expect(text).toBe(expected);
    },
  );

  it("requests tool 0 before call 1's arguments end, and sends the results back in index order", async () => {
    const weather = await cityWeather();
    const model = await twoCallModel(JSON.stringify({ city: 'Paris' }), weather.parisRequested);
    const harness = await startTestProxy(weatherSpec(weather.url), model.url);
    cleanups.push(() => harness.close());

    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Weather in Paris and Oslo?' },
    ]);

    expect(model.state.heldBackUntilTool).toBe(true);
    expect(text).toBe('One moment. Sunny in both.');
    expect(weather.cities).toEqual(['Paris', 'Oslo']);
    const followUp = model.requests[1] as {
      messages: Array<{ role: string; tool_call_id?: string; content?: string }>;
    };
    const tools = followUp.messages.filter((m) => m.role === 'tool');
    expect(tools.map((m) => m.tool_call_id)).toEqual(['call_0', 'call_1']);
    expect(tools.map((m) => JSON.parse(m.content ?? '{}').city)).toEqual(['Paris', 'Oslo']);
  });

  it.each([
    ['no filler is configured', '', (spec: Spec) => ({ ...spec, voice: { filler: '' } }), 'Sunny in both.'],
    [
      'the model has spoken, so no filler is due',
      'Let me look. ',
      // Its tool's filler is off and voice.filler is the default: only the lead-in makes none due.
      (spec: Spec) => ({ tools: [{ ...spec.tools[0], filler: '' }] }),
      'Let me look. Sunny in both.',
    ],
  ])("requests tool 0 before call 1's arguments end when %s", async (_name, leadIn, configure, answer) => {
    const weather = await cityWeather();
    const model = await twoCallModel(JSON.stringify({ city: 'Paris' }), weather.parisRequested, leadIn);
    const harness = await startTestProxy(configure(weatherSpec(weather.url)), model.url);
    cleanups.push(() => harness.close());

    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'Weather in Paris and Oslo?' },
    ]);

    expect(model.state.heldBackUntilTool).toBe(true);
    expect(text).toBe(answer);
  });

  it('turns call 0 with arguments that fail the schema into an error result, and still runs call 1', async () => {
    const weather = await cityWeather();
    // Nothing to wait for: call 0 never reaches the weather service.
    const model = await twoCallModel(JSON.stringify({ city: 5 }), Promise.resolve());
    const harness = await startTestProxy(weatherSpec(weather.url), model.url);
    cleanups.push(() => harness.close());

    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Weather?' }]);

    expect(text).toBe('One moment. Sunny in both.');
    expect(weather.cities).toEqual(['Oslo']);
    const followUp = model.requests[1] as { messages: Array<{ role: string; content?: string }> };
    const [first, second] = followUp.messages.filter((m) => m.role === 'tool');
    expect(first?.content).toMatch(/city/);
    expect(first?.content).toMatch(/error|invalid/i);
    expect(JSON.parse(second?.content ?? '{}')).toEqual({ city: 'Oslo', sky: 'sunny' });
  });

  it('cancels tool 0 when the client hangs up while call 1 still streams', async () => {
    const toolZero = signalled();
    const toolZeroClosed = signalled();
    const weather = await listen((req, res) => {
      toolZero.fire();
      // Never answers: only the proxy's abort ends this request.
      res.on('close', () => toolZeroClosed.fire());
      req.resume();
    });
    const never = new Promise<void>(() => {});
    const model = await twoCallModel(JSON.stringify({ city: 'Paris' }), never);
    // A timeout far beyond the test's own: only the hang-up can end tool 0 in time.
    const harness = await startTestProxy(weatherSpec(weather, { timeout: '60s' }), model.url);
    cleanups.push(() => harness.close());

    const client = new AbortController();
    const turn = harness.client.chat.completions
      .create(
        { model: 'm', messages: [SYSTEM, { role: 'user', content: 'Weather?' }], stream: true },
        { signal: client.signal },
      )
      .then(async (stream) => {
        for await (const _ of stream);
      })
      .catch(() => {});
    await toolZero.promise;
    client.abort();
    await Promise.all([toolZeroClosed.promise, model.state.firstAborted.promise, turn]);
    expect(model.requests).toHaveLength(1);
    const cancelled = async () => {
      const text = await (await fetch(`${harness.proxy.metricsUrl}/metrics`)).text();
      return /^earpiece_tool_calls_total\{[^}]*tool="get_weather",outcome="cancelled"\} 1$/m.test(text);
    };
    await expect.poll(cancelled, { timeout: GUARD_MS }).toBe(true);
  });
});
