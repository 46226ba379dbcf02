import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_TOOL_CALL_INDEX, StreamAccumulator } from '../../src/proxy/accumulator.js';
import type { ChatChunk } from '../../src/proxy/chunks.js';
import { type RawCall, RawCallFilter } from '../../src/proxy/raw-calls.js';

const TOOLS = new Set(['get_weather', 'get_time']);

/** Feeds the pieces as one message; returns what would be spoken and the calls found. */
function filter(pieces: string[]) {
  const f = new RawCallFilter((name) => TOOLS.has(name));
  let spoken = '';
  for (const piece of pieces) spoken += f.push(piece);
  const end = f.finish();
  return { spoken: spoken + end.text, calls: end.calls };
}

const paris = { name: 'get_weather', arguments: '{"city":"Paris"}' };

const markup: [string, string, { name: string; arguments: string }[]][] = [
  ['hermes', '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', [paris]],
  [
    'hermes, several blocks, one unknown tool, one cut off',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tok',
    [paris],
  ],
  [
    'hermes without the closing tag',
    '\n<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}',
    [paris],
  ],
  [
    'hermes, a second block opened before the first was closed',
    '<tool_call>{"name":"get_time","arguments":{}}\n<tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}</tool_call>',
    [{ name: 'get_time', arguments: '{}' }, paris],
  ],
  [
    'hermes, a tool without parameters',
    '<tool_call>{"name": "get_time"}</tool_call>',
    [{ name: 'get_time', arguments: '{}' }],
  ],
  [
    'hermes, arguments written as a JSON string',
    '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
    [{ name: 'get_weather', arguments: '{"city": "Paris"}' }],
  ],
  [
    'hermes followed by text',
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call> Let me check that.',
    [paris],
  ],
  ['hermes cut off mid-call', '<tool_call>\n{"name": "get_weather", "argu', []],
  ['python_tag', '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', [paris]],
  [
    'python_tag, two calls joined by "; "',
    '<|python_tag|>{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Paris"}}',
    [{ name: 'get_time', arguments: '{}' }, paris],
  ],
  ['python_tag, a built-in tool call', '<|python_tag|>brave_search.call(query="weather in Paris")', []],
  [
    'mistral, a JSON list',
    '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]',
    [paris, { name: 'get_time', arguments: '{}' }],
  ],
  [
    'mistral, name then arguments, twice',
    '[TOOL_CALLS]get_weather{"city": "Paris"}[TOOL_CALLS]get_time{}',
    [
      { name: 'get_weather', arguments: '{"city": "Paris"}' },
      { name: 'get_time', arguments: '{}' },
    ],
  ],
  [
    'mistral, with [CALL_ID] and [ARGS]',
    '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city":"Paris"}',
    [paris],
  ],
  ['mistral, broken JSON', '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}', []],
  ['bare JSON with parameters', '{"name": "get_weather", "parameters": {"city": "Paris"}}', [paris]],
  [
    'bare JSON objects joined by "; "',
    '{"name": "get_weather", "arguments": {"city": "Paris"}}; {"name": "get_time", "arguments": {}}',
    [paris, { name: 'get_time', arguments: '{}' }],
  ],
  ['bare JSON for an unknown tool', '{"name": "send_email", "parameters": {"to": "x"}}', []],
  ['bare JSON without arguments', '{"name": "get_weather"}', []],
  ['a JSON object that is not a call', '{"answer": 42}', []],
];

const text: [string, string][] = [
  ['a sentence', "Sure, it's sunny in Paris."],
  ['a contraction', "It's five o'clock."],
  ['a bracketed stage direction', '[Laughs] Okay, fine.'],
  ['brackets that start like the Mistral marker', '[TOOLS are handy]'],
  ['an HTML-like tag', '<b>bold</b> move.'],
  ['a tag that starts like <tool_call>', '<toolbox> is not a tag.'],
  ['braces around a word', '{Hello} there.'],
  ['a brace then space and text', '{ and that is all }'],
  ['leading whitespace', '  \n Sure.'],
];

/** Text, then a tagged marker: the text is spoken, the markup is not, and its calls run. */
const textThenMarkup: [string, string, string, RawCall[]][] = [
  [
    'hermes after words',
    'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
    'Let me check. ',
    [{ name: 'get_weather', arguments: '{"city":"Oslo"}' }],
  ],
  [
    'mistral after words',
    'One moment. [TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}]',
    'One moment. ',
    [{ name: 'get_weather', arguments: '{"city":"Rome"}' }],
  ],
  ['half a marker at the end', 'I will look <tool', 'I will look ', []],
  ['a comparison', 'Three < five, and [1] is a list.', 'Three < five, and [1] is a list.', []],
];

describe('RawCallFilter', () => {
  it.each(markup)('runs and never speaks %s', (_, message, calls) => {
    expect(filter([message])).toEqual({ spoken: '', calls });
  });

  it.each(text)('speaks %s unchanged', (_, message) => {
    expect(filter([message])).toEqual({ spoken: message, calls: [] });
  });

  it.each(textThenMarkup)('speaks the text and runs the markup of %s', (_, message, spoken, calls) => {
    expect(filter([message])).toEqual({ spoken, calls });
    expect(filter([...message])).toEqual({ spoken, calls });
  });

  it('gives the same result token by token, and at any split', () => {
    for (const [, message] of [...markup, ...text]) {
      const whole = filter([message]);
      expect(filter([...message]), message).toEqual(whole);
      fc.assert(
        fc.property(fc.array(fc.nat(message.length), { maxLength: 12 }), (offsets) => {
          const points = [...new Set([0, ...offsets, message.length])].sort((a, b) => a - b);
          const pieces = points.slice(1).map((end, i) => message.slice(points[i], end));
          expect(filter(pieces)).toEqual(whole);
        }),
        { numRuns: 50 },
      );
    }
  });

  it('releases held text as soon as the start rules markup out, then passes text through', () => {
    const f = new RawCallFilter((name) => TOOLS.has(name));
    expect(f.push('  ')).toBe('');
    expect(f.push('[')).toBe('');
    expect(f.push('TOO')).toBe('');
    expect(f.push('Lbox] Sure')).toBe('  [TOOLbox] Sure');
    expect(f.push(', <b>')).toBe(', <b>');
    // A tagged marker later in the message is still never spoken.
    expect(f.push('<tool_call>')).toBe('');
    expect(f.finish()).toEqual({ text: '', calls: [] });
  });

  it('speaks plain text at once', () => {
    const f = new RawCallFilter((name) => TOOLS.has(name));
    expect(f.push('S')).toBe('S');
    expect(f.push('ure')).toBe('ure');
  });

  it('holds a message that starts as markup until its end', () => {
    const f = new RawCallFilter((name) => TOOLS.has(name));
    for (const piece of [
      '<tool',
      '_call>',
      '\n{"name": "get_weather", ',
      '"arguments": {"city": "Paris"}}',
      '\n</tool_call>',
    ])
      expect(f.push(piece)).toBe('');
    expect(f.finish()).toEqual({ text: '', calls: [paris] });
  });

  it('speaks a whitespace-only message, and drops half a marker', () => {
    expect(filter([' ', '\n'])).toEqual({ spoken: ' \n', calls: [] });
    for (const half of ['{', '{ ', '[TOOL', '<|python', '<tool_c'])
      expect(filter([half]), half).toEqual({ spoken: '', calls: [] });
  });

  it('starts afresh after finish', () => {
    const f = new RawCallFilter((name) => TOOLS.has(name));
    f.push('Hello.');
    f.finish();
    expect(f.push('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')).toBe('');
    expect(f.finish().calls).toEqual([{ name: 'get_time', arguments: '{}' }]);
    expect(f.push('Done.')).toBe('Done.');
  });

  it("reads Ollama's escaped markup once the chunk is decoded", () => {
    const wire =
      '{"choices":[{"index":0,"delta":{"role":"assistant","content":"\\u003ctool_call\\u003e\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": {\\"city\\": \\"Paris\\"}}\\n\\u003c/tool_call\\u003e"},"finish_reason":null}]}';
    const accumulator = new StreamAccumulator();
    const f = new RawCallFilter((name) => TOOLS.has(name));
    let spoken = '';
    for (const event of accumulator.push(JSON.parse(wire) as ChatChunk))
      if (event.type === 'content') spoken += f.push(event.text);
    expect(spoken).toBe('');
    expect(f.finish()).toEqual({ text: '', calls: [paris] });
  });
});

describe('RawCallFilter limits', () => {
  // Hang guards, not timings: the quadratic filter took about a minute on these; the linear one, milliseconds.
  it.each([
    ['whitespace', [] as string[]],
    ['a brace, then whitespace', ['{']],
  ])('reads a long undecided start (%s, 300,000 deltas) in linear time', { timeout: 10_000 }, (_, before) => {
    const f = new RawCallFilter((name) => TOOLS.has(name));
    for (const piece of before) expect(f.push(piece)).toBe('');
    let spoken = '';
    for (let i = 0; i < 300_000; i++) spoken += f.push(i % 2 ? ' ' : '\n');
    expect(spoken).toBe('');
    if (before.length === 0) {
      expect(f.push('Hello.')).toMatch(/^[\s]+Hello\.$/);
      expect(f.finish()).toEqual({ text: '', calls: [] });
    } else {
      expect(f.push('"x')).toBe('');
      expect(f.finish().calls).toEqual([]);
    }
  });

  it(`hands back at most ${MAX_TOOL_CALL_INDEX} calls from markup, as for streamed calls`, () => {
    const block = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n';
    const { spoken, calls } = filter([block.repeat(500)]);
    expect(spoken).toBe('');
    expect(calls).toHaveLength(MAX_TOOL_CALL_INDEX);
    const bare = filter([
      Array.from({ length: 500 }, () => '{"name": "get_time", "parameters": {}}').join('; '),
    ]);
    expect(bare.calls).toHaveLength(MAX_TOOL_CALL_INDEX);
  });
});
