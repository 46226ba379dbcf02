/**
 * The decoder's fast lane for spoken text. Most of an answer is chunks that differ from each other only in
 * their text: `data: {"id":…,"choices":[{"index":0,"delta":{"content":"<text>"},…}]}`. Once one such chunk
 * has been decoded the slow way (SSE parser, UTF-8 decoding, JSON.parse), its bytes before and after the
 * text are the frame; an event whose bytes are that frame around a JSON string is the same chunk with other
 * text, so its text is taken straight from the bytes. Everything else, and any doubt, takes the slow way.
 */
import { type ChatChunk, isObject, nonEmpty } from './chunks.js';

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const CONTENT_KEY = '"content"';

export class ContentFrame {
  private constructor(
    /** `data: ` and the chunk's JSON up to and including the text's opening quote. */
    readonly head: Buffer,
    /** The text's closing quote, the rest of the JSON, and the blank line that ends the event. */
    readonly tail: Buffer,
  ) {}

  /**
   * The frame of a decoded event, when its chunk says nothing but choice 0's text: no finish_reason,
   * usage, calls, reasoning or refusal, so that only the text differs between it and a chunk that matches.
   * `data` is the event's data as the SSE parser gave it; undefined when it cannot be a frame.
   */
  static of(data: string, chunk: ChatChunk): ContentFrame | undefined {
    const content = onlyContent(chunk);
    if (content === undefined || data.includes('\n') || data.includes('\r')) return undefined;
    const key = data.indexOf(CONTENT_KEY);
    // A second "content" (OpenAI's logprobs carry one) would make the text's place ambiguous.
    if (key === -1 || data.indexOf(CONTENT_KEY, key + 1) !== -1) return undefined;
    let open = key + CONTENT_KEY.length;
    while (data[open] === ' ') open++;
    if (data[open] !== ':') return undefined;
    open++;
    while (data[open] === ' ') open++;
    if (data[open] !== '"') return undefined;
    let close = open + 1;
    while (close < data.length && data[close] !== '"') close += data[close] === '\\' ? 2 : 1;
    if (close >= data.length || parseString(data.slice(open + 1, close)) !== content) return undefined;
    return new ContentFrame(
      Buffer.from(`data: ${data.slice(0, open + 1)}`),
      Buffer.from(`${data.slice(close)}\n\n`),
    );
  }

  /**
   * The text of the event in bytes[start, end) (its blank line included), or undefined unless the event is
   * this frame around one JSON string.
   */
  match(bytes: Buffer, start: number, end: number): string | undefined {
    const from = start + this.head.length;
    const to = end - this.tail.length;
    if (to < from || this.head.compare(bytes, start, from) !== 0 || this.tail.compare(bytes, to, end) !== 0)
      return undefined;
    let plain = true;
    let ascii = true;
    for (let i = from; i < to; i++) {
      const byte = bytes[i] as number;
      if (byte === QUOTE || byte === BACKSLASH || byte < 0x20) {
        plain = false;
        break;
      }
      if (byte >= 0x80) ascii = false;
    }
    if (plain) return bytes.toString(ascii ? 'latin1' : 'utf8', from, to);
    // Escapes, or a quote that may end the string early: JSON decides (and refuses what is not one string).
    return parseString(bytes.toString('utf8', from, to));
  }
}

/** Choice 0's text, when it is all the chunk says. */
function onlyContent(chunk: ChatChunk): string | undefined {
  if (chunk.usage != null || !Array.isArray(chunk.choices) || chunk.choices.length !== 1) return undefined;
  const [choice] = chunk.choices;
  if (!isObject(choice) || (choice.index ?? 0) !== 0 || nonEmpty(choice.finish_reason)) return undefined;
  const delta = choice.delta;
  if (!isObject(delta) || !nonEmpty(delta.content)) return undefined;
  if (nonEmpty(delta.reasoning_content) || nonEmpty(delta.reasoning) || nonEmpty(delta.refusal))
    return undefined;
  if (delta.tool_calls != null && (!Array.isArray(delta.tool_calls) || delta.tool_calls.length > 0))
    return undefined;
  // Text beside reasoning_details must reach the accumulator whole, or the details would go unseen.
  if (
    delta.reasoning_details != null &&
    (!Array.isArray(delta.reasoning_details) || delta.reasoning_details.length > 0)
  )
    return undefined;
  return delta.content;
}

function parseString(body: string): string | undefined {
  try {
    const value: unknown = JSON.parse(`"${body}"`);
    return typeof value === 'string' ? value : undefined;
  } catch {
    return undefined;
  }
}
