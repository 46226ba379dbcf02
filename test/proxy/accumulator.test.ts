import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_MESSAGE_CHARS,
  MAX_TOOL_CALL_INDEX,
  MAX_TOOL_CALL_NAME,
  StreamAccumulator,
  type StreamEvent,
} from '../../src/proxy/accumulator.js';
import type { ChatChunk, ChunkDelta, ToolCallDelta } from '../../src/proxy/chunks.js';
import { cut, decode, expectDecoded, loadStreamFixture, loadStreamFixtures } from './fixtures.js';

const fixtures = loadStreamFixtures();

const chunk = (delta: ChunkDelta | null, finishReason: string | null = null): ChatChunk => ({
  id: 'chatcmpl-1',
  object: 'chat.completion.chunk',
  model: 'm',
  choices: [{ index: 0, delta, finish_reason: finishReason }],
});
const calls = (...entries: ToolCallDelta[]): ChatChunk => chunk({ tool_calls: entries });
const args = (index: number, text: string): ToolCallDelta => ({ index, function: { arguments: text } });

function run(chunks: ChatChunk[]): { events: StreamEvent[]; accumulator: StreamAccumulator } {
  const accumulator = new StreamAccumulator();
  const events = chunks.flatMap((c) => accumulator.push(c));
  return { events, accumulator };
}

describe('every recorded stream', () => {
  it('has its notes and an expected result', () => {
    expect(fixtures.length).toBeGreaterThanOrEqual(20);
    for (const fixture of fixtures) expect(fixture.notes).toMatch(new RegExp(`^# ${fixture.name}\\.sse`));
  });

  it.each(fixtures.map((f) => [f.name, f] as const))(
    '%s decodes to its expected result',
    async (_, fixture) => {
      expectDecoded(fixture, await decode([fixture.bytes]));
    },
  );

  it('decodes the same whatever the byte boundaries between reads', async () => {
    for (const fixture of fixtures) {
      const whole = await decode([fixture.bytes]);
      expect(
        await decode(cut(fixture.bytes, [...fixture.bytes.keys()])),
        `${fixture.name}, byte by byte`,
      ).toEqual(whole);
      await fc.assert(
        fc.asyncProperty(fc.array(fc.nat(fixture.bytes.length), { maxLength: 40 }), async (offsets) => {
          expect(await decode(cut(fixture.bytes, offsets))).toEqual(whole);
        }),
        { numRuns: 100 },
      );
    }
  });

  it('decodes multi-byte characters cut at every byte', async () => {
    const { bytes } = loadStreamFixture('vllm-llama3json-unicode-args');
    const at = Buffer.from(bytes).indexOf(Buffer.from('東京'));
    expect(at).toBeGreaterThan(0);
    const whole = await decode([bytes]);
    expect(whole.toolCalls[0]?.parsedArguments).toEqual({ city: '東京' });
    for (let offset = at; offset <= at + 6; offset++) {
      expect(await decode(cut(bytes, [offset]))).toEqual(whole);
      expect(await decode(cut(bytes, [offset, offset + 1, offset + 2]))).toEqual(whole);
    }
  });
});

describe('what the recorded streams prove', () => {
  const decoded = (name: string) => decode([loadStreamFixture(name).bytes]);

  it('reads an OpenAI tool call with its usage chunk', async () => {
    const d = await decoded('openai-tool-call');
    expect(d.toolCalls).toEqual([
      {
        index: 0,
        id: 'call_4XzlGBLtUe9dy3GVNV4jhq7h',
        name: 'get_weather',
        arguments: '{"city":"New York City"}',
        parsedArguments: { city: 'New York City' },
      },
    ]);
    expect([d.finishReason, d.done, d.usage?.total_tokens, d.content]).toEqual(['tool_calls', true, 60, '']);
  });

  it('reads parallel calls, sequential (OpenAI) and whole per chunk (Ollama)', async () => {
    const openai = await decoded('openai-parallel-tool-calls');
    expect(openai.toolCalls.map((c) => [c.index, c.name, c.parsedArguments])).toEqual([
      [0, 'GetWeatherArgs', { city: 'Edinburgh', country: 'GB', units: 'c' }],
      [1, 'get_stock_price', { ticker: 'AAPL', exchange: 'NASDAQ' }],
    ]);
    for (const name of ['ollama-tool-call', 'ollama-tool-call-v0.32.6']) {
      const ollama = await decoded(name);
      expect(ollama.toolCalls.map((c) => [c.index, c.parsedArguments])).toEqual([
        [0, { city: 'Paris' }],
        [1, { city: 'Tokyo' }],
      ]);
      expect(ollama.usage).toEqual({ prompt_tokens: 182, completion_tokens: 41, total_tokens: 223 });
    }
  });

  it('keeps a tool call that old Ollama finished with "stop"', async () => {
    const d = await decoded('ollama-tool-call-pre-0.5.12');
    expect(d.finishReason).toBe('stop');
    expect(d.toolCalls.map((c) => c.name)).toEqual(['get_weather']);
  });

  it('keeps hermes arguments byte for byte, and the newline content between calls', async () => {
    const d = await decoded('vllm-hermes-parallel-tools');
    expect(d.toolCalls.map((c) => c.arguments)).toEqual(['{"city": "Paris"}\n', '{"city": "Tokyo"}\n']);
    expect(d.content).toBe('\n');
    expect(d.usage).toEqual({ prompt_tokens: 231, total_tokens: 278, completion_tokens: 47 });
  });

  it('speaks the content that comes before a call', async () => {
    const d = await decoded('vllm-hermes-content-then-tool');
    expect(d.spoken).toBe("I'll check the current weather in Paris. One moment.\n");
    expect(d.toolCalls[0]?.parsedArguments).toEqual({ city: 'Paris', unit: 'celsius' });
  });

  it('joins pythonic fragments whose later deltas carry "id": null', async () => {
    const d = await decoded('vllm-pythonic-parallel-tools');
    expect(d.toolCalls.map((c) => [c.id, c.parsedArguments])).toEqual([
      ['chatcmpl-tool-3e5a7c9b1d2f44e6a8c0b2d4f6a8c0e1', { city: 'Paris' }],
      ['chatcmpl-tool-5b7d9f1a3c4e46a8c0e2b4d6f8a0c2e3', { city: 'Tokyo' }],
    ]);
  });

  it('decodes the framing edge cases to the same message as the plain stream', async () => {
    const framed = await decoded('sse-framing-edge-cases');
    const plain = await decoded('vllm-llama3json-single-tool');
    expect(framed).toEqual(plain);
    expect(framed.done).toBe(true);
  });

  it('never speaks a refusal', async () => {
    const d = await decoded('openai-refusal');
    expect(d.refusal).toBe("I'm sorry, I can't assist with that request.");
    expect([d.content, d.spoken]).toEqual(['', '']);
  });

  it('surfaces in-band errors with what came before them', async () => {
    const vllm = await decoded('vllm-midstream-error');
    expect(vllm.error?.kind).toBe('error_event');
    expect(vllm.error?.detail).toMatchObject({ type: 'BadRequestError', code: 400 });
    expect([vllm.content, vllm.finishReason, vllm.done]).toEqual(['The answer', null, null]);
    const legacy = await decoded('llamacpp-legacy-error-field');
    expect(legacy.error?.detail).toMatchObject({ code: 400, type: 'invalid_request_error' });
    expect(legacy.error?.message).toContain('exceeds the available context size');
  });

  it('shows a cut-off stream as done:false with no finish reason', async () => {
    const d = await decoded('ollama-midstream-error');
    expect([d.done, d.finishReason, d.error, d.content]).toEqual([false, null, null, 'The weather']);
  });

  it('turns a hermes call leaked into content into a call, and speaks none of it', async () => {
    const d = await decoded('vllm-raw-toolcall-in-content');
    expect(d.toolCalls).toEqual([]);
    expect(d.content).toContain('<tool_call>');
    expect(d.spoken).toBe('');
    expect(d.rawCalls).toEqual([{ name: 'get_weather', parsedArguments: { city: 'Paris' } }]);
  });

  it("decodes OpenRouter's streams to the same turns as vLLM's, tools included", async () => {
    const turn = (d: Awaited<ReturnType<typeof decoded>>) => ({
      spoken: d.spoken,
      calls: d.toolCalls.map((c) => ({ name: c.name, arguments: c.parsedArguments })),
      finishReason: d.finishReason,
      error: d.error?.kind ?? null,
    });
    // Keep-alive comments, a reasoning delta, `role` on every delta, and usage with cost in a chunk without choices.
    const call = await decoded('openrouter-tool-call');
    expect(turn(call)).toEqual(turn(await decoded('vllm-llama3json-single-tool')));
    expect(call.usage).toMatchObject({ total_tokens: 225, cost: 0.0000612 });
    const text = await decoded('openrouter-reasoning-then-content');
    expect(turn(text)).toEqual(turn(await decoded('vllm-plain-text-include-usage')));
    expect(text.reasoning).toBe('The user asks for the capital of France.');
    // A mid-stream error: a top-level error object beside a choice with finish_reason "error".
    const failed = await decoded('openrouter-midstream-error');
    expect(turn(failed)).toEqual({
      spoken: 'The capital',
      calls: [],
      finishReason: null,
      error: 'error_event',
    });
    expect(failed.error?.message).toContain('Provider disconnected unexpectedly');
  });
});

describe('StreamAccumulator', () => {
  /** What `fn` threw (undefined when it did not). */
  function thrown(fn: () => void): unknown {
    try {
      fn();
    } catch (err) {
      return err;
    }
    return undefined;
  }
  const delta = (d: ChunkDelta): ChatChunk => ({ choices: [{ index: 0, delta: d }] });

  it('keeps a long message whole, by chunk and by the fast lane, up to its cap', () => {
    const words = Array.from({ length: 150 }, (_, i) => ` w${i}`);
    const acc = new StreamAccumulator();
    for (const [i, w] of words.entries()) {
      if (i % 2 === 0) acc.push(delta({ content: w }));
      else acc.pushContent(w);
    }
    expect(acc.snapshot().content).toBe(words.join(''));

    // Past the cap, text is spoken but no longer kept: what was kept is the text up to it.
    const capped = new StreamAccumulator({ maxChars: 100 });
    const spoken = words.map((w) => capped.pushContent(w));
    expect(spoken).toEqual(words);
    const kept = capped.snapshot().content;
    expect(kept.length).toBeLessThanOrEqual(100);
    expect(words.join('').startsWith(kept)).toBe(true);
    expect(kept.length).toBeGreaterThan(100 - 5);
  });

  it('counts refusal text toward the message cap', () => {
    const acc = new StreamAccumulator({ maxChars: 1000 });
    acc.push(delta({ refusal: 'x'.repeat(600) }));
    expect(thrown(() => acc.push(delta({ refusal: 'x'.repeat(600) })))).toMatchObject({
      code: 'ERP_UPSTREAM_TOO_LARGE',
    });
  });

  it('counts tool call names and ids toward the message cap, once however often they are repeated', () => {
    const acc = new StreamAccumulator({ maxChars: 10_000 });
    const named = (index: number) => ({
      index,
      id: `call_${index}`.padEnd(MAX_TOOL_CALL_NAME, 'i'),
      function: { name: `tool_${index}`.padEnd(MAX_TOOL_CALL_NAME, 'n') },
    });
    // A server that repeats the name and id with every fragment holds no more for it.
    for (let i = 0; i < 100; i++) acc.push(calls(named(0)));
    const error = thrown(() => {
      for (let index = 1; index < MAX_TOOL_CALL_INDEX; index++) acc.push(calls(named(index)));
    });
    expect(error).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
    // 512 characters a call: the 20th passes 10,000.
    expect(acc.snapshot().toolCalls).toHaveLength(19);
  });

  it('fails a message whose tool call name or id is longer than MAX_TOOL_CALL_NAME', () => {
    const long = 'n'.repeat(MAX_TOOL_CALL_NAME + 1);
    for (const entry of [
      { index: 0, id: 'call_a', function: { name: long, arguments: '{}' } },
      { index: 0, id: long, function: { name: 'get_time', arguments: '{}' } },
    ]) {
      const acc = new StreamAccumulator();
      const error = thrown(() => acc.push(calls(entry)));
      expect(error).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
      expect((error as Error).message).toMatch(/tool call (name|id) longer than 256 characters/);
      expect(acc.snapshot().toolCalls).toEqual([]);
    }
    // At the bound, it is taken.
    const acc = new StreamAccumulator();
    const name = 'n'.repeat(MAX_TOOL_CALL_NAME);
    expect(acc.push(calls({ index: 0, id: 'call_a', function: { name } }))).toEqual([
      { type: 'tool_call_start', index: 0, name },
    ]);
  });

  it('counts a tool call written as text toward the cap, by chunk and by the fast lane alike', () => {
    const start = '<tool_call>{"name": "get_time", "arguments": {"q": "';
    for (const feed of [
      (acc: StreamAccumulator, text: string) => acc.push(delta({ content: text })),
      (acc: StreamAccumulator, text: string) => acc.pushContent(text),
    ]) {
      const acc = new StreamAccumulator({ isToolName: (n) => n === 'get_time', maxChars: 1000 });
      feed(acc, start);
      const error = thrown(() => {
        for (let i = 0; i < 10; i++) feed(acc, 'x'.repeat(200));
      });
      expect(error).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
    }
    // Spoken text is not held, so it is not counted.
    const acc = new StreamAccumulator({ isToolName: (n) => n === 'get_time', maxChars: 1000 });
    for (let i = 0; i < 10; i++) expect(acc.pushContent('word '.repeat(40))).toBe('word '.repeat(40));
  });

  it('keys calls by index and assigns id, type and name instead of concatenating them', () => {
    const { events, accumulator } = run([
      calls({ index: 0, id: 'call_a', type: 'function', function: { name: 'get_weather' } }),
      // sglang repeats id and type; pythonic/mistral send "id": null; early vLLM sends "id": ""
      calls({
        index: 0,
        id: 'call_a',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"city":' },
      }),
      calls({ index: 0, id: null, function: { arguments: ' "Paris"' } }),
      calls({ index: 0, id: '', type: '', function: { name: '', arguments: '}' } }),
    ]);
    expect(accumulator.snapshot().toolCalls).toEqual([
      { index: 0, id: 'call_a', name: 'get_weather', arguments: '{"city": "Paris"}' },
    ]);
    expect(events).toEqual([{ type: 'tool_call_start', index: 0, name: 'get_weather' }]);
  });

  it('accepts a first delta with no arguments, empty arguments or partial arguments', () => {
    const { accumulator } = run([
      calls({ index: 0, id: 'a', function: { name: 'f' } }),
      calls({ index: 1, id: 'b', function: { name: 'g', arguments: '' } }),
      calls({ index: 2, id: 'c', function: { name: 'h', arguments: '{"x": ' } }),
      calls(args(0, '{}'), args(1, '{}'), args(2, '1}')),
    ]);
    expect(accumulator.snapshot().toolCalls.map((c) => c.arguments)).toEqual(['{}', '{}', '{"x": 1}']);
  });

  it('takes several entries in one array, two of them for the same index, beside "content": null', () => {
    const { events, accumulator } = run([
      chunk({
        content: null,
        tool_calls: [
          { index: 0, id: 'a', type: 'function', function: { name: 'f' } },
          args(0, '{"q": 1}'),
          { index: 1, id: 'b', type: 'function', function: { name: 'g' } },
          args(1, '{"q": 2}'),
        ],
      }),
    ]);
    expect(accumulator.snapshot().toolCalls.map((c) => [c.index, c.name, c.arguments])).toEqual([
      [0, 'f', '{"q": 1}'],
      [1, 'g', '{"q": 2}'],
    ]);
    // Call 0 is complete once call 1 begins, even inside one chunk.
    expect(events.map((e) => e.type)).toEqual(['tool_call_start', 'tool_call_ready', 'tool_call_start']);
  });

  it('hands on the last calls as ready when the message finishes with them, before the stream ends', () => {
    const ready = (finish: string, last = '{"q": 2}') => {
      const { events } = run([
        calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"q": 1}' } }),
        calls({ index: 1, id: 'b', function: { name: 'g', arguments: '' } }),
        calls(args(1, last)),
        chunk({}, finish),
        // Anything after the finish (usage, a stray empty delta) hands on nothing again.
        chunk({}),
      ]);
      return events.flatMap((e) => (e.type === 'tool_call_ready' ? [e.call.id] : []));
    };
    expect(ready('tool_calls')).toEqual(['a', 'b']);
    // Ollama before 0.5.12 ends a call with `stop`.
    expect(ready('stop')).toEqual(['a', 'b']);
    // Cut short by the token limit, or failed upstream (OpenRouter): call 1 waits for the message's end.
    expect(ready('length')).toEqual(['a']);
    expect(ready('error')).toEqual(['a']);
    // Arguments that are not whole JSON when the message finishes wait for its end, which has the error.
    expect(ready('tool_calls', '{"q": ')).toEqual(['a']);
  });

  it("takes legacy vLLM's last argument fragment in the finish chunk before handing the call on", () => {
    const { events } = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"q": ' } }),
      { choices: [{ index: 0, delta: { tool_calls: [args(0, '1}')] }, finish_reason: 'tool_calls' }] },
    ]);
    expect(events.filter((e) => e.type === 'tool_call_ready')).toEqual([
      {
        type: 'tool_call_ready',
        call: { index: 0, id: 'a', name: 'f', arguments: '{"q": 1}' },
        messageFinished: true,
      },
    ]);
  });

  it('allows interleaved calls, and starts none early before its arguments are whole', () => {
    const { events, accumulator } = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"a"' } }),
      calls({ index: 1, id: 'b', function: { name: 'g', arguments: '{"b"' } }),
      calls(args(0, ': 1}')),
      calls(args(1, ': 2}')),
    ]);
    expect(accumulator.snapshot().toolCalls.map((c) => c.arguments)).toEqual(['{"a": 1}', '{"b": 2}']);
    // Call 0's arguments were half sent when call 1 began: it is not ready then, but at the message's end.
    expect(events.filter((e) => e.type === 'tool_call_ready')).toEqual([]);
  });

  it('decides once whether a call is ready when a later one begins: one found unfinished waits for the end', () => {
    const { events, accumulator } = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"a"' } }),
      calls({ index: 1, id: 'b', function: { name: 'g', arguments: '{"b": 2}' } }),
      // Call 0 is whole now, but was not when call 1 began: it is not parsed again at call 2.
      calls(args(0, ': 1}')),
      calls({ index: 2, id: 'c', function: { name: 'h', arguments: '{}' } }),
    ]);
    const ready = events.flatMap((e) => (e.type === 'tool_call_ready' ? [e.call.id] : []));
    expect(ready).toEqual(['b']);
    // The message's end has every call, call 0 whole.
    expect(accumulator.snapshot().toolCalls.map((c) => [c.id, c.arguments])).toEqual([
      ['a', '{"a": 1}'],
      ['b', '{"b": 2}'],
      ['c', '{}'],
    ]);
  });

  it("takes another id at a taken index for the next call (Gemini's parallel calls, each at index 0)", () => {
    const { events, accumulator } = run([
      calls({
        index: 0,
        id: 'call_a',
        type: 'function',
        function: { name: 'get_weather', arguments: '{"city":"Paris"}' },
        extra_content: { google: { thought_signature: 'sigA' } },
      }),
      calls({ index: 0, id: 'call_b', type: 'function', function: { name: 'get_time', arguments: '{' } }),
      // A fragment without an id continues the call its index names now.
      calls(args(0, '"tz":"CET"}')),
      calls({ index: 0, id: 'call_c', type: 'function', function: { name: 'get_weather', arguments: '{}' } }),
    ]);
    expect(accumulator.snapshot().toolCalls).toEqual([
      {
        index: 0,
        id: 'call_a',
        name: 'get_weather',
        arguments: '{"city":"Paris"}',
        extraContent: { google: { thought_signature: 'sigA' } },
      },
      { index: 1, id: 'call_b', name: 'get_time', arguments: '{"tz":"CET"}' },
      { index: 2, id: 'call_c', name: 'get_weather', arguments: '{}' },
    ]);
    // Each call is complete, and may start, once the next one begins.
    const ready = events.flatMap((e) =>
      e.type === 'tool_call_ready' ? [[e.call.id, e.call.arguments]] : [],
    );
    expect(ready).toEqual([
      ['call_a', '{"city":"Paris"}'],
      ['call_b', '{"tz":"CET"}'],
    ]);
  });

  it('keeps one call whose fragments each come with an id of their own, and an earlier id names its call', () => {
    const { events, accumulator } = run([
      calls({ index: 0, id: 'frag_1', type: 'function', function: { name: 'get_weather', arguments: '' } }),
      calls({ index: 0, id: 'frag_2', function: { arguments: '{"city":' } }),
      calls({ index: 0, id: 'frag_3', function: { arguments: '"Paris"}' } }),
    ]);
    expect(accumulator.snapshot().toolCalls).toEqual([
      { index: 0, id: 'frag_3', name: 'get_weather', arguments: '{"city":"Paris"}' },
    ]);
    expect(events.filter((e) => e.type === 'tool_call_ready')).toEqual([]);

    const again = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"x":' } }),
      calls({ index: 0, id: 'b', function: { name: 'g', arguments: '{}' } }),
      // Call a's id again at index 0: its own call, not a third one.
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '1}' } }),
    ]).accumulator;
    expect(again.snapshot().toolCalls.map((c) => [c.id, c.name, c.arguments])).toEqual([
      ['a', 'f', '{"x":1}'],
      ['b', 'g', '{}'],
    ]);
  });

  it(`drops the calls an index 0 stream starts past ${MAX_TOOL_CALL_INDEX}, and their fragments`, () => {
    const accumulator = new StreamAccumulator();
    for (let i = 0; i < MAX_TOOL_CALL_INDEX + 1; i++)
      accumulator.push(calls({ index: 0, id: `c${i}`, function: { name: 'f', arguments: `{"n":${i}` } }));
    accumulator.push(calls(args(0, ',"late":true}')));
    const kept = accumulator.snapshot().toolCalls;
    expect(kept).toHaveLength(MAX_TOOL_CALL_INDEX);
    // The last kept call got nothing of the dropped one's fragments.
    expect(kept.at(-1)?.arguments).toBe(`{"n":${MAX_TOOL_CALL_INDEX - 1}`);
  });

  it("merges OpenRouter's reasoning_details fragments by type and index, in the order they began", () => {
    const detail = (d: Record<string, unknown>) => chunk({ reasoning_details: [d] });
    const { accumulator } = run([
      detail({ type: 'reasoning.text', text: 'Checking', format: 'google-gemini-v1', index: 0 }),
      detail({ type: 'reasoning.text', text: ' the weather.', format: 'google-gemini-v1', index: 0 }),
      chunk({
        tool_calls: [{ index: 0, id: 'tool_1', function: { name: 'get_weather', arguments: '{}' } }],
        reasoning_details: [
          { type: 'reasoning.encrypted', data: 'c2ln', id: 'tool_1', format: 'google-gemini-v1', index: 1 },
        ],
      }),
      detail({ type: 'reasoning.text', text: '', signature: 'sig0', index: 0 }),
      // No index: an entry of its own.
      detail({ type: 'reasoning.summary', summary: 'Weather.' }),
    ]);
    expect(accumulator.snapshot().reasoningDetails).toEqual([
      {
        type: 'reasoning.text',
        text: 'Checking the weather.',
        format: 'google-gemini-v1',
        index: 0,
        signature: 'sig0',
      },
      { type: 'reasoning.encrypted', data: 'c2ln', id: 'tool_1', format: 'google-gemini-v1', index: 1 },
      { type: 'reasoning.summary', summary: 'Weather.' },
    ]);
  });

  it('counts reasoning_details and extra_content toward the message cap', () => {
    const small = new StreamAccumulator({ maxChars: 1000 });
    const big = 'x'.repeat(600);
    small.push(delta({ reasoning_details: [{ type: 'reasoning.encrypted', data: big, index: 0 }] }));
    expect(
      thrown(() =>
        small.push(delta({ reasoning_details: [{ type: 'reasoning.encrypted', data: big, index: 0 }] })),
      ),
    ).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
    const signed = new StreamAccumulator({ maxChars: 1000 });
    expect(
      thrown(() =>
        signed.push(
          delta({
            tool_calls: [
              {
                index: 0,
                id: 'a',
                function: { name: 'f' },
                extra_content: { google: { thought_signature: 'y'.repeat(1200) } },
              },
            ],
          }),
        ),
      ),
    ).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
  });

  it('counts each object and array it keeps, so tiny entries cannot hold many times the cap', () => {
    // `{}` is two characters of text and about seventy bytes of heap once kept.
    const accumulator = new StreamAccumulator();
    let kept = 0;
    const error = thrown(() => {
      for (; kept < 1_000_000; kept++) accumulator.push(delta({ reasoning_details: [{}] }));
    });
    expect(error).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
    // Two characters each would have let half a million in.
    expect(kept).toBeLessThan(MAX_MESSAGE_CHARS / 32);
    expect(kept).toBeGreaterThan(MAX_MESSAGE_CHARS / 40);
    // The same in extra_content.
    const signed = new StreamAccumulator();
    const many = Array.from({ length: 40_000 }, () => ({}));
    expect(
      thrown(() =>
        signed.push(
          delta({ tool_calls: [{ index: 0, id: 'a', function: { name: 'f' }, extra_content: { many } }] }),
        ),
      ),
    ).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
  });

  it('counts braces in text as text: reasoning about JSON is not a runaway', () => {
    const accumulator = new StreamAccumulator();
    const fragment = '{"a":[1]} '.repeat(100);
    // 300 KB of details whose text is all braces, well under the cap as text.
    for (let i = 0; i < 300; i++)
      accumulator.push(delta({ reasoning_details: [{ type: 'reasoning.text', text: fragment, index: 0 }] }));
    expect(accumulator.snapshot().reasoningDetails[0]?.text).toHaveLength(300 * fragment.length);
  });

  it('refuses JSON nested deeper than it can write back, as too large', () => {
    let deep: Record<string, unknown> = {};
    for (let i = 0; i < 20_000; i++) deep = { d: deep };
    const accumulator = new StreamAccumulator();
    expect(
      thrown(() =>
        accumulator.push(
          delta({ tool_calls: [{ index: 0, id: 'a', function: { name: 'f' }, extra_content: deep }] }),
        ),
      ),
    ).toMatchObject({
      code: 'ERP_UPSTREAM_TOO_LARGE',
      message: expect.stringContaining('nested too deeply'),
    });
    expect(thrown(() => new StreamAccumulator().push(delta({ reasoning_details: [deep] })))).toMatchObject({
      code: 'ERP_UPSTREAM_TOO_LARGE',
    });
    // Arguments sent as an object (Ollama) the same.
    expect(
      thrown(() =>
        new StreamAccumulator().push(
          delta({ tool_calls: [{ index: 0, id: 'a', function: { name: 'f', arguments: deep as never } }] }),
        ),
      ),
    ).toMatchObject({ code: 'ERP_UPSTREAM_TOO_LARGE' });
  });

  it('merges reasoning_details only under a type that is a string', () => {
    // An array as type would make a key five times its JSON; such fragments are entries of their own.
    const { accumulator } = run([
      chunk({ reasoning_details: [{ type: ['x'], text: 'a', index: 0 }] }),
      chunk({ reasoning_details: [{ type: ['x'], text: 'b', index: 0 }] }),
    ]);
    expect(accumulator.snapshot().reasoningDetails).toEqual([
      { type: ['x'], text: 'a', index: 0 },
      { type: ['x'], text: 'b', index: 0 },
    ]);
  });

  it('emits content in order, before and between calls', () => {
    const { events, accumulator } = run([
      chunk({ role: 'assistant', content: '' }),
      chunk({ content: 'Let me' }),
      chunk({ content: ' check.' }),
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{}' } }),
      chunk({ content: '\n' }),
      calls({ index: 1, id: 'b', function: { name: 'g', arguments: '{}' } }),
    ]);
    expect(events).toEqual([
      { type: 'content', text: 'Let me' },
      { type: 'content', text: ' check.' },
      { type: 'tool_call_start', index: 0, name: 'f' },
      { type: 'content', text: '\n' },
      { type: 'tool_call_ready', call: { index: 0, id: 'a', name: 'f', arguments: '{}' } },
      { type: 'tool_call_start', index: 1, name: 'g' },
    ]);
    expect(accumulator.snapshot().content).toBe('Let me check.\n');
  });

  it('ignores empty, null-only and missing deltas, and empty or null tool_calls', () => {
    const { events, accumulator } = run([
      chunk({}),
      chunk({ content: null, reasoning_content: null, tool_calls: null }),
      chunk({ content: '', tool_calls: [] }),
      chunk(null),
      { choices: [{ index: 0 }] },
      { choices: [{ index: 0, delta: { tool_calls: [null, 7, 'x'] as unknown as ToolCallDelta[] } }] },
    ]);
    expect(events).toEqual([]);
    expect(accumulator.snapshot()).toMatchObject({ content: '', toolCalls: [], finishReason: null });
  });

  it('applies the finish chunk delta before recording its finish_reason', () => {
    const { accumulator } = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"city": "Par' } }),
      chunk({ tool_calls: [args(0, 'is"}')] }, 'tool_calls'),
    ]);
    expect(accumulator.snapshot()).toMatchObject({
      finishReason: 'tool_calls',
      toolCalls: [{ arguments: '{"city": "Paris"}' }],
    });
  });

  it('records the finish reason as sent, ignoring empty ones and not resetting it', () => {
    const { accumulator } = run([chunk({ content: 'a' }, ''), chunk({}, 'length'), chunk({}, null)]);
    expect(accumulator.snapshot().finishReason).toBe('length');
  });

  it('reads usage from chunks with empty, null or missing choices, the last one winning', () => {
    const usage = (n: number) => ({ prompt_tokens: n, completion_tokens: 1, total_tokens: n + 1 });
    const { events, accumulator } = run([
      { ...chunk({ content: 'a' }), usage: null },
      { choices: [], usage: usage(1) },
      { choices: null, usage: usage(2) },
      { usage: usage(3) },
    ]);
    expect(
      events.filter((e) => e.type === 'usage').map((e) => e.type === 'usage' && e.usage.prompt_tokens),
    ).toEqual([1, 2, 3]);
    expect(accumulator.snapshot().usage).toEqual(usage(3));
  });

  it('replaces the arguments with a cumulative re-send, but appends real fragments', () => {
    const cumulative = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"city"' } }),
      calls(args(0, '{"city": "Par')),
      calls(args(0, '{"city": "Paris"}')),
      // a rebuilt finish chunk repeating the whole call
      chunk({ tool_calls: [args(0, '{"city": "Paris"}')] }, 'tool_calls'),
    ]);
    expect(cumulative.accumulator.snapshot().toolCalls[0]?.arguments).toBe('{"city": "Paris"}');
    const repeating = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{"n": "1' } }),
      calls(args(0, '1')),
      calls(args(0, '11"}')),
    ]);
    expect(repeating.accumulator.snapshot().toolCalls[0]?.arguments).toBe('{"n": "1111"}');
  });

  it(`ignores tool-call indexes from ${MAX_TOOL_CALL_INDEX} up and invalid ones, and keeps the rest`, () => {
    const { events, accumulator } = run([
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{}' } }),
      calls({ index: MAX_TOOL_CALL_INDEX, id: 'x', function: { name: 'f', arguments: '{}' } }),
      calls({ index: 1e9, id: 'y', function: { name: 'f' } }),
      calls({ index: -1, id: 'z', function: { name: 'f' } }),
      calls({ index: 1.5, id: 'w', function: { name: 'f' } }),
      calls({ index: '2' as unknown as number, id: 'v', function: { name: 'f' } }),
      calls({ index: MAX_TOOL_CALL_INDEX - 1, id: 'b', function: { name: 'g', arguments: '{}' } }),
    ]);
    expect(accumulator.snapshot().toolCalls.map((c) => [c.index, c.id])).toEqual([
      [0, 'a'],
      [MAX_TOOL_CALL_INDEX - 1, 'b'],
    ]);
    expect(events.map((e) => e.type)).toEqual(['tool_call_start', 'tool_call_ready', 'tool_call_start']);
  });

  it('reads only choice 0', () => {
    const { events, accumulator } = run([
      {
        choices: [
          { index: 1, delta: { content: 'other', tool_calls: [{ index: 0, function: { name: 'f' } }] } },
          { index: 0, delta: { content: 'mine' } },
        ],
      },
      { choices: [{ index: 1, delta: {}, finish_reason: 'length' }] },
      { choices: [{ delta: { content: '!' } }] },
    ]);
    expect(events).toEqual([
      { type: 'content', text: 'mine' },
      { type: 'content', text: '!' },
    ]);
    expect(accumulator.snapshot()).toMatchObject({ content: 'mine!', toolCalls: [], finishReason: null });
  });

  it('places calls that come without an index', () => {
    // a single call whose deltas never carry an index
    const single = run([
      calls({ id: 'a', type: 'function', function: { name: 'f', arguments: '{"x"' } }),
      calls({ function: { arguments: ': 1}' } }),
    ]);
    expect(single.accumulator.snapshot().toolCalls).toEqual([
      { index: 0, id: 'a', name: 'f', arguments: '{"x": 1}' },
    ]);
    // whole calls with their own ids, no index, in one array and across chunks; a repeated id continues its call
    const whole = run([
      calls(
        { id: 'a', function: { name: 'f', arguments: '{"x": 1}' } },
        { id: 'b', function: { name: 'g' } },
      ),
      calls({ id: 'b', function: { arguments: '{"y": 2}' } }),
      calls({ function: { name: 'h', arguments: '{}' } }),
    ]);
    expect(whole.accumulator.snapshot().toolCalls.map((c) => [c.index, c.name, c.arguments])).toEqual([
      [0, 'f', '{"x": 1}'],
      [1, 'g', '{"y": 2}'],
      [2, 'h', '{}'],
    ]);
  });

  it('generates a nine-character id (what Mistral templates require), once, for a call that never got one', () => {
    const { accumulator } = run([
      calls({ index: 0, function: { name: 'f', arguments: '{}' } }),
      calls({ index: 1, id: null, function: { name: 'g', arguments: '{}' } }),
    ]);
    const [first, second] = accumulator.snapshot().toolCalls;
    expect(first?.id).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(second?.id).toMatch(/^[A-Za-z0-9]{9}$/);
    expect(first?.id).not.toBe(second?.id);
    expect(accumulator.snapshot().toolCalls.map((c) => c.id)).toEqual([first?.id, second?.id]);
  });

  it('lists only named calls, sorted by index', () => {
    const { accumulator } = run([
      calls({ index: 2, id: 'c', function: { name: 'h', arguments: '{}' } }),
      calls({ index: 0, id: 'a', function: { name: 'f', arguments: '{}' } }),
      calls({ index: 1, id: 'b', function: { arguments: '{"orphan": true}' } }),
    ]);
    expect(accumulator.snapshot().toolCalls.map((c) => c.index)).toEqual([0, 2]);
  });

  it('keeps reasoning apart from content, once when a server sends both field names', () => {
    const { events, accumulator } = run([
      chunk({ reasoning_content: 'Think', reasoning: 'Think' }),
      chunk({ reasoning: 'ing.' }),
      chunk({ content: 'Answer.', reasoning_content: null }),
    ]);
    expect(events).toEqual([
      { type: 'reasoning', text: 'Think' },
      { type: 'reasoning', text: 'ing.' },
      { type: 'content', text: 'Answer.' },
    ]);
    expect(accumulator.snapshot()).toMatchObject({ reasoning: 'Thinking.', content: 'Answer.' });
  });

  it('keeps the refusal out of the events', () => {
    const { events, accumulator } = run([chunk({ refusal: '' }), chunk({ refusal: 'No.' })]);
    expect(events).toEqual([]);
    expect(accumulator.snapshot().refusal).toBe('No.');
  });

  it('takes the message id and model from the first chunk that has them', () => {
    const { accumulator } = run([
      { choices: [] },
      { id: 'chatcmpl-9', model: 'qwen' },
      { id: 'x', model: 'y' },
    ]);
    expect(accumulator.snapshot()).toMatchObject({ id: 'chatcmpl-9', model: 'qwen' });
  });

  it('takes arguments sent as an object as the whole of them', () => {
    const { accumulator } = run([
      calls({
        index: 0,
        id: 'a',
        function: { name: 'f', arguments: { city: 'Paris' } as unknown as string },
      }),
    ]);
    expect(accumulator.snapshot().toolCalls[0]?.arguments).toBe('{"city":"Paris"}');
  });

  it('never throws, whatever the chunks hold', () => {
    const loose = fc.oneof(fc.anything(), fc.constant(null));
    const entry = fc.record(
      { index: fc.oneof(fc.integer({ min: -5, max: 300 }), loose), id: loose, type: loose, function: loose },
      { requiredKeys: [] },
    );
    const delta = fc.record(
      {
        content: fc.oneof(fc.string(), loose),
        reasoning: loose,
        tool_calls: fc.oneof(fc.array(entry), loose),
      },
      { requiredKeys: [] },
    );
    const choice = fc.record(
      { index: fc.oneof(fc.constant(0), loose), delta: fc.oneof(delta, loose), finish_reason: loose },
      { requiredKeys: [] },
    );
    const anyChunk = fc.oneof(
      fc.record(
        { choices: fc.oneof(fc.array(choice), loose), usage: loose, id: loose },
        { requiredKeys: [] },
      ),
      loose,
    );
    fc.assert(
      fc.property(fc.array(anyChunk, { maxLength: 8 }), (chunks) => {
        const accumulator = new StreamAccumulator();
        for (const c of chunks) accumulator.push(c as ChatChunk);
        const snapshot = accumulator.snapshot();
        for (const call of snapshot.toolCalls) {
          expect(call.index).toBeLessThan(MAX_TOOL_CALL_INDEX);
          expect(typeof call.name).toBe('string');
          expect(typeof call.arguments).toBe('string');
        }
      }),
      { numRuns: 300 },
    );
  });
});
