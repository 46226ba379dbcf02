/**
 * The decoder's fast lane (content-frame.ts): text-only chunks after the first are taken from the bytes.
 * Whatever it takes must be what the slow way (SSE parser, JSON.parse, accumulator) makes of the same
 * bytes, and anything it cannot be sure of must take the slow way.
 */
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import type { ChatChunk } from '../../src/proxy/chunks.js';
import { ContentFrame } from '../../src/proxy/content-frame.js';
import { decode, decodeCounting, feedAll, loadStreamFixtures } from './fixtures.js';

const encoder = new TextEncoder();

/** vLLM's content chunk, as its OpenAI-compatible server serialises it. */
function vllmChunk(delta: Record<string, unknown>, extra: Record<string, unknown> = {}): string {
  return `data: ${JSON.stringify({
    id: 'chatcmpl-0a1b2c3d4e5f60718293a4b5c6d7e8f9',
    object: 'chat.completion.chunk',
    created: 1765000000,
    model: 'Qwen/Qwen3-8B',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: null, token_ids: null, ...extra }],
  })}\n\n`;
}

const finish = `data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`;

/** Each event its own read, as a model server writes them one token at a time. */
function eventReads(text: string): Uint8Array[] {
  return text
    .split(/(?<=\n\n)/)
    .filter(Boolean)
    .map((event) => encoder.encode(event));
}

/** What each path hands on: chunks (slow) and texts (fast), in order. */
function trace(reads: Uint8Array[]): { chunks: ChatChunk[]; texts: string[]; order: string[] } {
  const out = { chunks: [] as ChatChunk[], texts: [] as string[], order: [] as string[] };
  feedAll(
    reads,
    (chunk) => {
      out.chunks.push(chunk);
      out.order.push('chunk');
    },
    {
      onContent: (text) => {
        out.texts.push(text);
        out.order.push('text');
      },
    },
  );
  return out;
}

describe('the fast lane', () => {
  it('decodes every recorded stream as the slow way does, one event per read', async () => {
    let laned = 0;
    for (const fixture of loadStreamFixtures()) {
      const text = Buffer.from(fixture.bytes).toString('utf8');
      const reads = eventReads(text);
      const fast = await decodeCounting(reads);
      expect(fast.decoded, fixture.name).toEqual(await decode(reads, { fastLane: false }));
      expect(fast.decoded, fixture.name).toEqual(await decode([fixture.bytes], { fastLane: false }));
      laned += fast.fastLane;
    }
    // The vLLM, OpenAI and OpenRouter recordings stream several text chunks in one frame.
    expect(laned).toBeGreaterThan(10);
  });

  it('takes every text chunk after the first of an answer, and leaves the rest to the slow way', () => {
    const words = ['Hello', ' there,', ' it is', ' sunny', ' in', ' Lisbon.'];
    const reads = eventReads(
      [
        vllmChunk({ role: 'assistant', content: '' }),
        ...words.map((w) => vllmChunk({ content: w })),
        finish,
      ].join(''),
    );
    const { chunks, texts, order } = trace(reads);
    expect(texts).toEqual(words.slice(1));
    // The role chunk, the first word (which makes the frame), and the finish chunk.
    expect(chunks).toHaveLength(3);
    expect(order).toEqual(['chunk', 'chunk', 'text', 'text', 'text', 'text', 'text', 'chunk']);
  });

  it('hands on any text exactly as JSON.parse reads it, whatever it holds', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.string({ unit: 'binary', minLength: 1, maxLength: 12 }), { minLength: 2, maxLength: 12 }),
        async (texts) => {
          const stream = [...texts.map((t) => vllmChunk({ content: t })), finish].join('');
          const reads = eventReads(stream);
          const fast = await decodeCounting(reads);
          const slow = await decode(reads, { fastLane: false });
          expect(fast.decoded).toEqual(slow);
          expect(fast.decoded.content).toBe(texts.join(''));
          // Only an event whose own bytes hold a line break is beyond the lane; JSON escapes every one.
          expect(fast.fastLane).toBe(texts.length - 1);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('reads several events of one read, and gives the slow way what follows the first that differs', () => {
    const frame = vllmChunk({ content: 'One' });
    const read = encoder.encode(
      `${vllmChunk({ content: ' two' })}${vllmChunk({ content: ' three' })}${vllmChunk({ content: '' }, { finish_reason: 'stop' })}${vllmChunk({ content: ' four' })}data: [DONE]\n\n`,
    );
    const { chunks, texts, order } = trace([encoder.encode(frame), read]);
    expect(texts).toEqual([' two', ' three']);
    expect(order).toEqual(['chunk', 'text', 'text', 'chunk', 'chunk']);
    expect(chunks.at(-1)?.choices?.[0]?.delta?.content).toBe(' four');
  });

  it('never takes an event that only looks like the frame around a string', () => {
    const frame = vllmChunk({ content: 'a' });
    // The frame's bytes around `b","refusal":"no`: one more key, not a text with quotes in it.
    const head = frame.slice(0, frame.indexOf('"content":"') + '"content":"'.length);
    const tail = frame.slice(frame.indexOf('"', head.length));
    const forged = `${head}b","refusal":"no${tail}`;
    expect(() => JSON.parse(forged.slice('data: '.length))).not.toThrow();
    const { chunks, texts } = trace([encoder.encode(frame), encoder.encode(forged)]);
    expect(texts).toEqual([]);
    expect(chunks[1]?.choices?.[0]?.delta).toEqual({ content: 'b', refusal: 'no' });
  });

  it('waits for a read that starts between events, and for CR line ends takes the slow way', () => {
    const frame = vllmChunk({ content: 'a' });
    const next = vllmChunk({ content: 'b' });
    // The frame's read ends inside the next event: the read after it is not at an event's start.
    const cutAt = frame.length + 10;
    const joined = encoder.encode(`${frame}${next}${vllmChunk({ content: 'c' })}`);
    const split = trace([
      joined.subarray(0, cutAt),
      joined.subarray(cutAt, frame.length + next.length),
      joined.subarray(frame.length + next.length),
    ]);
    expect(split.chunks.map((c) => c.choices?.[0]?.delta?.content)).toEqual(['a', 'b']);
    expect(split.texts).toEqual(['c']);
    const crlf = trace(eventReads(`${frame}${next}`.replaceAll('\n', '\r\n')));
    expect(crlf.texts).toEqual([]);
    expect(crlf.chunks).toHaveLength(2);
  });
});

describe('learning frames', () => {
  /** OpenAI's chunks carry random padding of random length (`obfuscation`): no two share a frame. */
  const padded = (content: string, n: number) =>
    `data: ${JSON.stringify({ id: 'chatcmpl-x', object: 'chat.completion.chunk', created: 1, model: 'gpt-4o', choices: [{ index: 0, delta: { content }, logprobs: null, finish_reason: null }], obfuscation: 'p'.repeat(n % 7) + n })}\n\n`;

  it('stops for a message whose chunks differ in more than their text, and decodes it the same', async () => {
    const words = Array.from({ length: 40 }, (_, i) => ` w${i}`);
    const reads = eventReads([...words.map((w, i) => padded(w, i)), finish].join(''));
    const learn = vi.spyOn(ContentFrame, 'of');
    let fast: Awaited<ReturnType<typeof decodeCounting>>;
    try {
      fast = await decodeCounting(reads);
      // The first frame, then three that failed in a row: no more for this message.
      expect(learn).toHaveBeenCalledTimes(4);
    } finally {
      learn.mockRestore();
    }
    expect(fast.fastLane).toBe(0);
    expect(fast.decoded).toEqual(await decode(reads, { fastLane: false }));
    expect(fast.decoded.content).toBe(words.join(''));
  });

  it('keeps the lane when a frame fails now and then', () => {
    const words = Array.from({ length: 12 }, (_, i) => ` w${i}`);
    // Two padded chunks (frames that fail), then plain ones: the lane takes the plain ones after the first.
    const stream = [
      padded(words[0] as string, 0),
      padded(words[1] as string, 1),
      ...words.slice(2).map((w) => vllmChunk({ content: w })),
      finish,
    ];
    const { texts } = trace(eventReads(stream.join('')));
    expect(texts).toEqual(words.slice(3));
  });
});

describe('ContentFrame.of', () => {
  const frameOf = (delta: Record<string, unknown>, extra: Record<string, unknown> = {}) => {
    const data = vllmChunk(delta, extra).slice('data: '.length, -2);
    return ContentFrame.of(data, JSON.parse(data) as ChatChunk);
  };

  it('makes a frame of a chunk that says only its text', () => {
    expect(frameOf({ content: 'Hi' })).toBeInstanceOf(ContentFrame);
    expect(frameOf({ content: 'Hi', reasoning_content: null, tool_calls: [] })).toBeInstanceOf(ContentFrame);
    expect(frameOf({ content: 'Hi', reasoning_details: [] })).toBeInstanceOf(ContentFrame);
  });

  it.each([
    ['no text', { content: '' }, {}],
    ['a finish reason', { content: 'Hi' }, { finish_reason: 'stop' }],
    ['a call', { content: 'Hi', tool_calls: [{ index: 0, function: { name: 'f' } }] }, {}],
    ['reasoning', { content: 'Hi', reasoning_content: 'hmm' }, {}],
    ['a refusal', { content: 'Hi', refusal: 'no' }, {}],
    [
      "OpenRouter's reasoning_details",
      { content: 'Hi', reasoning_details: [{ type: 'reasoning.text', text: 'hmm', index: 0 }] },
      {},
    ],
    ['a second "content" (logprobs)', { content: 'Hi' }, { logprobs: { content: [{ token: 'Hi' }] } }],
    ['another choice', { content: 'Hi' }, { index: 1 }],
  ])('makes none of a chunk with %s', (_, delta, extra) => {
    expect(frameOf(delta, extra)).toBeUndefined();
  });

  it('makes none of a chunk with usage', () => {
    const chunk = { choices: [{ index: 0, delta: { content: 'Hi' } }], usage: { total_tokens: 3 } };
    expect(ContentFrame.of(JSON.stringify(chunk), chunk)).toBeUndefined();
  });
});
