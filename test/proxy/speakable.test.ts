import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { textReply, toolCallReply } from '../../src/demo/scripted-upstream.js';
import { SpeakableFilter, speakable } from '../../src/proxy/speakable.js';
import { unmuteTurn, useScriptedProxy } from '../support/proxy.js';

/** One construct each: what the model wrote, and what the TTS should get. */
const GOLDEN: [string, string, string][] = [
  ['bold and italic', '**Bold** and *italic* text.', 'Bold and italic text.'],
  [
    'underscore emphasis, snake_case kept',
    'Use __this__, _that_ and snake_case.',
    'Use this, that and snake_case.',
  ],
  ['strikethrough, a lone tilde kept', '~~old~~ new, about ~3 km.', 'old new, about ~3 km.'],
  ['inline code', 'Run `ls` now.', 'Run ls now.'],
  ['headings', '# Weather\n## Today\nIt is sunny.', 'Weather\nToday\nIt is sunny.'],
  ['a hashtag is not a heading', 'Tag #1 wins.', 'Tag #1 wins.'],
  ['bullets', '- one\n  * two\n+ three\n• four', 'one\n  two\nthree\nfour'],
  ['a minus sign is not a bullet', '-5 degrees tonight.', '-5 degrees tonight.'],
  ['numbered list kept', '1. Paris\n2. Lyon', '1. Paris\n2. Lyon'],
  ['code fence lines', 'Here:\n```python\nprint(1)\n```\nDone.', 'Here:\nprint(1)\nDone.'],
  ['emojis and their modifiers', 'Great 👍🏽 news ❤️ from 🇫🇷 Paris.', 'Great  news  from  Paris.'],
  ['a ZWJ family is one emoji', 'Family 👨‍👩‍👧 time.', 'Family  time.'],
  ['a ZWJ inside Devanagari stays', 'क्\u200dष and क', 'क्\u200dष and क'],
  ['bare URL to its host', 'See https://www.example.com/path?x=1&y=2 for more.', 'See example.com for more.'],
  ['URL ending a sentence', 'Visit https://docs.example.org.', 'Visit docs.example.org.'],
  [
    'URL with a path ending a sentence',
    'Read http://a.example.net/x/y.html. Then stop.',
    'Read a.example.net. Then stop.',
  ],
  ['URL in parentheses', '(see https://example.com/a)', '(see example.com)'],
  ['URL with a port', 'Open http://localhost:8080/x now', 'Open localhost now'],
  ['a word starting with h', 'hello there, http is a protocol', 'hello there, http is a protocol'],
  ['plain text untouched', 'The weather in Paris is 21 degrees.', 'The weather in Paris is 21 degrees.'],
  ['accents and quotes', 'Il fait « beau » à Paris, l’été.', 'Il fait « beau » à Paris, l’été.'],
];

/** Feeds the bytes in the given pieces through a streaming decoder, as the SSE layer does. */
function feedBytes(bytes: Uint8Array, cuts: number[]): string {
  const decoder = new TextDecoder();
  const filter = new SpeakableFilter();
  let out = '';
  let from = 0;
  for (const cut of [...cuts, bytes.length]) {
    out += filter.push(decoder.decode(bytes.subarray(from, cut), { stream: true }));
    from = cut;
  }
  return out + filter.push(decoder.decode()) + filter.finish();
}

describe('speakable text', () => {
  it.each(GOLDEN)('%s', (_name, input, expected) => {
    expect(speakable(input)).toBe(expected);
  });

  it.each(GOLDEN)('%s: the same at every byte boundary', (_name, input, expected) => {
    const bytes = new TextEncoder().encode(input);
    for (let cut = 0; cut <= bytes.length; cut++) {
      expect(feedBytes(bytes, [cut]), `split at byte ${cut}`).toBe(expected);
    }
  });

  it('the same for any split into many pieces (property)', () => {
    const cases = fc.constantFrom(...GOLDEN);
    fc.assert(
      fc.property(
        cases.chain(([, input, expected]) => {
          const bytes = new TextEncoder().encode(input);
          return fc.tuple(
            fc.constant(bytes),
            fc.constant(expected),
            fc.uniqueArray(fc.integer({ min: 0, max: bytes.length }), { maxLength: bytes.length }),
          );
        }),
        ([bytes, expected, cuts]) => {
          expect(
            feedBytes(
              bytes,
              cuts.sort((a, b) => a - b),
            ),
          ).toBe(expected);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('a marker split across deltas: * then *bold**', () => {
    const filter = new SpeakableFilter();
    expect(filter.push('*')).toBe('');
    expect(filter.push('*bold**')).toBe('bold');
    expect(filter.push(' done')).toBe(' done');
    expect(filter.finish()).toBe('');
  });

  it('a plain first word is never held back', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^[A-Za-gi-z][a-z]{0,10}$/), (word) => {
        const filter = new SpeakableFilter();
        expect(filter.push(word)).toBe(word);
        expect(filter.held).toBe(0);
      }),
    );
  });

  it('holds a bounded number of characters however long a run the model sends', () => {
    const runs: { start: string; piece: string; heard: string; most: number }[] = [
      // Seven # at a line start are no heading: they are text.
      { start: '\n', piece: '#', heard: `\n${'#'.repeat(10_000)}`, most: 6 },
      // A run of dots after a URL is no sentence's end.
      {
        start: 'See https://example.com/page',
        piece: '..........',
        heard: `See example.com${'.'.repeat(100_000)}`,
        most: 16 + 10,
      },
      // No DNS name is longer than 253 characters: the rest goes as a path.
      { start: 'https://', piece: 'a', heard: 'a'.repeat(253), most: 253 },
    ];
    for (const { start, piece, heard, most } of runs) {
      const filter = new SpeakableFilter();
      let out = filter.push(start);
      for (let i = 0; i < 10_000; i++) {
        out += filter.push(piece);
        expect(filter.held).toBeLessThanOrEqual(most);
      }
      expect(out + filter.finish()).toBe(heard);
    }
  });

  it('holds back at most the characters of one marker, outside a URL', () => {
    const alphabet = fc.constantFrom(...'ab *_~#`-+\nh:/tps.👍'.split(/(?:)/u));
    fc.assert(
      fc.property(fc.array(fc.array(alphabet, { maxLength: 6 }).map((a) => a.join(''))), (pieces) => {
        const filter = new SpeakableFilter();
        for (const piece of pieces) {
          filter.push(piece);
          // Inside a URL the host is held until it ends; anything else is one marker at most.
          if (!/https?:\/\/[\p{L}\p{N}.-]*$/u.test(pieces.join('')))
            expect(filter.held).toBeLessThanOrEqual(8);
        }
      }),
    );
  });
});

describe('speakable text through the proxy', () => {
  const { setup } = useScriptedProxy();
  const SYSTEM = { role: 'system' as const, content: 'You are a helpful voice assistant.' };
  const model = (_req: unknown, i: number) =>
    i === 0
      ? { sse: toolCallReply([{ name: 'now', arguments: {} }]) }
      : { sse: textReply('**Sure!** It is *noon* 🕛, see https://time.example.com/now.') };

  it("filters the model's text only: the proxy's own lines are spoken as written", async () => {
    const { harness } = await setup(model, {
      voice: { filler: 'One *moment*. ' },
      tools: [{ name: 'now', builtin: 'time' }],
    });
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What time is it?' },
    ]);
    expect(text).toBe('One *moment*. Sure! It is noon , see time.example.com.');
  });

  it('is off with speakable: false', async () => {
    const { harness } = await setup(model, {
      voice: { speakable: false },
      tools: [{ name: 'now', builtin: 'time' }],
    });
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What time is it?' },
    ]);
    expect(text).toBe('One moment. **Sure!** It is *noon* 🕛, see https://time.example.com/now.');
  });
});
