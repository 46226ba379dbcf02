/**
 * Tool calls that leak into `content` when the upstream runs no tool parser, or the wrong one: Hermes/Qwen
 * `<tool_call>{…}</tool_call>` (Ollama escapes `<` as `\u003c`, which JSON decoding undoes), Llama 3
 * `<|python_tag|>` and bare `{"name": …, "parameters": …}` objects joined by `; `, Mistral
 * `[TOOL_CALLS][{…}]` and `[TOOL_CALLS]name{…}`. A message that starts this way is held back until its
 * start rules these forms out. After that, text passes through, except that a tagged marker (`<tool_call>`,
 * `<|python_tag|>`, `[TOOL_CALLS]`) later in the message is held from its first character until it is ruled
 * out, and from a whole marker on nothing more is spoken. Held markup is never spoken: its complete calls to
 * known tools are handed back to be run (at most MAX_TOOL_CALL_INDEX, the cap streamed calls have), the rest
 * is dropped. Each character is looked at a bounded number of times, however the text is split into deltas.
 */
import { MAX_TOOL_CALL_INDEX } from './accumulator.js';
import { isObject } from './chunks.js';

export interface RawCall {
  name: string;
  /** A JSON object, as text. */
  arguments: string;
}

const MARKERS = ['<tool_call>', '<|python_tag|>', '[TOOL_CALLS]'] as const;
const [HERMES, PYTHON_TAG, MISTRAL] = MARKERS;
const LONGEST_MARKER = Math.max(...MARKERS.map((m) => m.length));
/** Anything String.prototype.trim keeps. */
const NOT_SPACE = /\S/;

type Verdict = 'undecided' | 'markup' | 'text';

export class RawCallFilter {
  #verdict: Verdict = 'undecided';
  #held = '';
  #start = new MessageStart();

  constructor(private readonly isToolName: (name: string) => boolean) {}

  /** Characters held back now: raw-call markup, or a message start that cannot be told apart yet. */
  get held(): number {
    return this.#held.length;
  }

  /** Text that may be spoken now ('' while held back). */
  push(text: string): string {
    if (this.#verdict === 'text') return this.#scanText(text);
    this.#held += text;
    if (this.#verdict === 'markup') return '';
    this.#verdict = this.#start.push(text);
    if (this.#verdict !== 'text') return '';
    const released = this.#held;
    this.#held = '';
    return this.#scanText(released);
  }

  /** In running text: speaks up to a possible tagged marker, holds from it, and turns to markup on a whole one. */
  #scanText(text: string): string {
    const buffer = this.#held + text;
    this.#held = '';
    for (let i = 0; i < buffer.length; i++) {
      const c = buffer[i];
      if (c !== '<' && c !== '[') continue;
      if (MARKERS.some((m) => buffer.startsWith(m, i))) {
        this.#verdict = 'markup';
        this.#held = buffer.slice(i);
        return buffer.slice(0, i);
      }
      // Only the last few characters can be the start of a marker cut by the end of the delta.
      if (buffer.length - i < LONGEST_MARKER) {
        const rest = buffer.slice(i);
        if (MARKERS.some((m) => m.startsWith(rest))) {
          this.#held = rest;
          return buffer.slice(0, i);
        }
      }
    }
    return buffer;
  }

  /**
   * At the end of the message: held text that turned out speakable, and complete calls to ToolSet tools
   * found in raw-call markup. The filter is then ready for the next message.
   */
  finish(): { text: string; calls: RawCall[] } {
    const held = this.#held;
    const verdict = this.#verdict;
    this.#held = '';
    this.#verdict = 'undecided';
    this.#start = new MessageStart();
    if (verdict === 'markup') {
      const calls = parseRawCalls(held).filter((c) => this.isToolName(c.name));
      return { text: '', calls: calls.slice(0, MAX_TOOL_CALL_INDEX) };
    }
    // Still undecided, or text ending in half a marker ("[TOOL", "<tool", "{"): only whitespace is kept.
    return { text: held.trim() === '' ? held : '', calls: [] };
  }
}

/**
 * Whether a message is raw-call markup, plain text, or cannot be told yet, fed one delta at a time. Each
 * delta is read once, and the message so far never is: the held text is a rope of deltas, and reading it
 * by index would copy all of it on every delta (a long run of whitespace deltas made this quadratic).
 */
class MessageStart {
  /** The message from its first character that is not whitespace, cut at the longest marker. */
  #head = '';

  push(delta: string): Verdict {
    let text = delta;
    const startsHere = this.#head === '';
    if (startsHere) {
      const first = text.search(NOT_SPACE);
      if (first === -1) return 'undecided';
      text = text.slice(first);
    }
    if (this.#head.length < LONGEST_MARKER) this.#head += text.slice(0, LONGEST_MARKER - this.#head.length);
    const head = this.#head;
    for (const marker of MARKERS) {
      if (head.startsWith(marker)) return 'markup';
      if (head.length < marker.length && marker.startsWith(head)) return 'undecided';
    }
    if (head[0] !== '{') return 'text';
    // A JSON object starts with a key; "{Hello" or "{ and" is text. Until then only whitespace followed the brace.
    const afterBrace = startsHere ? text.slice(1) : text;
    const next = afterBrace.search(NOT_SPACE);
    if (next === -1) return 'undecided';
    return afterBrace[next] === '"' ? 'markup' : 'text';
  }
}

/** Every well-formed call in a held message, known tool or not. */
function parseRawCalls(message: string): RawCall[] {
  const text = message.trim();
  if (text.startsWith(HERMES)) {
    const calls: RawCall[] = [];
    // A missing closing tag (stop sequence, max_tokens) still leaves a complete object to read.
    for (const match of text.matchAll(/<tool_call>([\s\S]*?)(?:<\/tool_call>|(?=<tool_call>)|$)/g)) {
      const call = toCall(parseJson(match[1]!.trim()), true);
      if (call) calls.push(call);
    }
    return calls;
  }
  if (text.startsWith(PYTHON_TAG)) return objectCalls(text.slice(PYTHON_TAG.length), true);
  if (text.startsWith(MISTRAL)) return text.split(MISTRAL).flatMap(mistralCalls);
  return objectCalls(text, false);
}

/** One `[TOOL_CALLS]` segment: a JSON array or object of calls, or `name[ARGS]{…}` (tokenizer v11+). */
function mistralCalls(segment: string): RawCall[] {
  const text = segment.trim();
  if (text.startsWith('[')) {
    const end = balancedEnd(text, 0);
    const list = end === -1 ? undefined : parseJson(text.slice(0, end));
    return Array.isArray(list) ? list.flatMap((item) => toCall(item, true) ?? []) : [];
  }
  if (text.startsWith('{')) return objectCalls(text, true);
  const head = /^([A-Za-z_][\w.-]*)\s*(?:\[CALL_ID\]\s*\w+\s*)?(?:\[ARGS\])?\s*/.exec(text);
  if (!head || text[head[0].length] !== '{') return [];
  const end = balancedEnd(text, head[0].length);
  if (end === -1) return [];
  const args = text.slice(head[0].length, end);
  return isObject(parseJson(args)) ? [{ name: head[1]!, arguments: args }] : [];
}

/** Objects one after another, separated by `;`, `,` or whitespace, up to the first thing that is not one. */
function objectCalls(text: string, argumentsOptional: boolean): RawCall[] {
  const calls: RawCall[] = [];
  let i = 0;
  for (;;) {
    while (i < text.length && /[\s;,]/.test(text[i]!)) i++;
    if (text[i] !== '{') return calls;
    const end = balancedEnd(text, i);
    if (end === -1) return calls;
    const call = toCall(parseJson(text.slice(i, end)), argumentsOptional);
    if (call) calls.push(call);
    i = end;
  }
}

/** `{"name", "arguments" | "parameters"}` → a call; anything else → undefined. */
function toCall(value: unknown, argumentsOptional: boolean): RawCall | undefined {
  if (!isObject(value) || typeof value.name !== 'string' || value.name === '') return undefined;
  const args = 'arguments' in value ? value.arguments : value.parameters;
  if (args === undefined) return argumentsOptional ? { name: value.name, arguments: '{}' } : undefined;
  if (isObject(args)) return { name: value.name, arguments: JSON.stringify(args) };
  // Some models write the arguments object as a JSON string.
  if (typeof args === 'string' && isObject(parseJson(args))) return { name: value.name, arguments: args };
  return undefined;
}

/** Index just past the bracket that closes the one at `start`, skipping strings; -1 if it never closes. */
function balancedEnd(text: string, start: number): number {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') {
      depth--;
      if (depth === 0) return i + 1;
    }
  }
  return -1;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
