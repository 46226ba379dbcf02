/**
 * Upstream bytes → JSON chunks. Framing is eventsource-parser's (WHATWG rules: CR/LF/CRLF, multi-line data,
 * comments, BOM); this file adds what chat streams need on top: UTF-8 decoding across reads, `[DONE]`, the
 * in-band error shapes of vLLM, llama.cpp and OpenAI, and a size cap. No I/O of its own, no timers.
 */
import { createParser, type EventSourceMessage, type EventSourceParser } from 'eventsource-parser';
import { type JsonShape, jsonShapeProblem } from '../http/json-shape.js';
import { type ChatChunk, isObject } from './chunks.js';
import { ContentFrame } from './content-frame.js';
import type { ErrorCode } from './errors.js';

const DEFAULT_MAX_EVENT_BYTES = 1024 * 1024;
/**
 * Reads in a row where the lane took nothing with the last frame and a new one was learned: past this the
 * message's chunks differ in more than their text (OpenAI's per-chunk `obfuscation` padding), and learning
 * each one only costs.
 */
const MAX_UNUSED_FRAMES = 3;
/** Room for a field name ("data: ") on an unterminated line before the cap applies to it. */
const LINE_SLACK = 16;
const SNIPPET_CHARS = 120;
/**
 * What a model's JSON may hold, in one event or one whole completion: a message a few levels deep with its
 * calls and reasoning. Its bytes alone do not bound parsing: 1 MiB of `{}` is half a million objects.
 */
export const MODEL_JSON_BOUNDS: JsonShape = { depth: 128, structures: 100_000 };

export type UpstreamStreamErrorKind = 'error_event' | 'malformed' | 'too_large';

export class UpstreamStreamError extends Error {
  readonly code: ErrorCode = 'ERP_UPSTREAM_STREAM';
  override readonly name = 'UpstreamStreamError';
  constructor(
    readonly kind: UpstreamStreamErrorKind,
    message: string,
    /** error_event: the upstream's error object (or text); malformed: the start of the bad payload; too_large: the limit passed. */
    readonly detail: unknown,
  ) {
    super(message);
  }
}

export interface DecoderOptions {
  /** Default 1 MiB. */
  maxEventBytes?: number;
  /**
   * Takes the text of chunks that say nothing else, in place of `onChunk`, once a chunk of the same frame
   * has gone to `onChunk` (content-frame.ts). Without it, every chunk goes to `onChunk`.
   */
  onContent?: ((text: string) => void) | undefined;
}

type Parsed =
  | { kind: 'event'; event: EventSourceMessage }
  | { kind: 'error_field'; value: string }
  | { kind: 'too_large' };

const DONE = Symbol('done');

/**
 * Decodes a chat stream read by read, calling `onChunk` for each JSON chunk as soon as its event is
 * complete. Synchronous, so a chunk costs no promise or iterator step between the socket and the sink.
 * Throws UpstreamStreamError for an in-band error (a data payload with a top-level `error`, an
 * `event: error`, llama.cpp's legacy bare `error: {...}` field), malformed JSON, or an event bigger than
 * maxEventBytes (default 1 MiB). Comments/keep-alives, event/id/retry fields are ignored.
 */
export class ChunkDecoder {
  readonly #onChunk: (chunk: ChatChunk) => void;
  readonly #onContent: ((text: string) => void) | undefined;
  readonly #maxEventBytes: number;
  readonly #parsed: Parsed[] = [];
  readonly #parser: EventSourceParser;
  // Strips a leading BOM, and keeps a multi-byte character that is split across reads for the next read.
  readonly #decoder = new TextDecoder();
  // eventsource-parser drops a partial line that cannot become a standard field, so llama.cpp's legacy
  // `error:` line would vanish when split across reads: it is fed whole lines only.
  #partialLine = '';
  #done = false;
  /** The frame of the last text-only chunk; see content-frame.ts. */
  #frame: ContentFrame | undefined;
  /** Reads in a row whose frame failed and was learned again; at MAX_UNUSED_FRAMES, no more learning. */
  #unusedFrames = 0;
  /** Everything read so far is whole events, decoded: a read may start the fast lane. */
  #atBoundary = false;

  constructor(onChunk: (chunk: ChatChunk) => void, options: DecoderOptions = {}) {
    this.#onChunk = onChunk;
    this.#onContent = options.onContent;
    this.#maxEventBytes = options.maxEventBytes ?? DEFAULT_MAX_EVENT_BYTES;
    const parsed = this.#parsed;
    this.#parser = createParser({
      // Counted in UTF-16 units, each at least one UTF-8 byte, so it never trips below the byte cap.
      maxBufferSize: this.#maxEventBytes,
      onEvent: (event) => parsed.push({ kind: 'event', event }),
      onError: (error) => {
        if (error.type === 'max-buffer-size-exceeded') parsed.push({ kind: 'too_large' });
        else if (error.type === 'unknown-field' && error.field === 'error')
          parsed.push({ kind: 'error_field', value: error.value ?? '' });
      },
    });
  }

  /** One read of the body. Returns true once `data: [DONE]` was read; later bytes are ignored. */
  feed(bytes: Uint8Array): boolean {
    if (this.#done) return true;
    const tried = this.#atBoundary && this.#frame !== undefined;
    const taken = tried ? this.#fastLane(bytes) : 0;
    if (taken > 0) this.#unusedFrames = 0;
    if (taken === bytes.length) return false;
    const text = this.#decoder.decode(taken === 0 ? bytes : bytes.subarray(taken), { stream: true });
    const end = lastLineBreak(text);
    if (end === -1) {
      this.#partialLine += text;
    } else {
      this.#parser.feed(this.#partialLine + text.slice(0, end + 1));
      this.#partialLine = text.slice(end + 1);
    }
    // Ending in a blank line, the read left the parser between events and the UTF-8 decoder empty.
    this.#atBoundary = this.#partialLine === '' && text.endsWith('\n\n');
    if (this.#partialLine.length > this.#maxEventBytes + LINE_SLACK) this.#parsed.push({ kind: 'too_large' });
    const frame = this.#frame;
    const done = this.#drain(false);
    if (tried && taken === 0 && this.#frame !== frame && ++this.#unusedFrames >= MAX_UNUSED_FRAMES)
      this.#frame = undefined;
    return done;
  }

  /** Hands on the read's leading events that match the frame; returns how many bytes they took. */
  #fastLane(read: Uint8Array): number {
    const frame = this.#frame as ContentFrame;
    const bytes = Buffer.isBuffer(read) ? read : Buffer.from(read.buffer, read.byteOffset, read.byteLength);
    const onContent = this.#onContent as (text: string) => void;
    let start = 0;
    while (start < bytes.length) {
      // JSON text holds no raw line feed: the frame's event ends at the first one, followed by another.
      const lineEnd = bytes.indexOf(0x0a, start);
      if (lineEnd === -1 || bytes[lineEnd + 1] !== 0x0a || lineEnd - start > this.#maxEventBytes) break;
      const text = frame.match(bytes, start, lineEnd + 2);
      if (text === undefined) break;
      onContent(text);
      start = lineEnd + 2;
    }
    return start;
  }

  /**
   * The body ended. Returns true if the stream said `[DONE]` (also as the unterminated last line), false
   * for a stream cut off without it.
   */
  end(): boolean {
    if (this.#done) return true;
    // Servers may omit the blank line after the last event (llama.cpp b10603 does after [DONE]).
    this.#parser.feed(`${this.#partialLine}${this.#decoder.decode()}\n\n`);
    this.#partialLine = '';
    return this.#drain(true);
  }

  #drain(unterminated: boolean): boolean {
    const parsed = this.#parsed;
    for (let i = 0; i < parsed.length; i++) {
      const item = parsed[i] as Parsed;
      const chunk = interpret(item, this.#maxEventBytes, unterminated);
      if (chunk === DONE) {
        this.#done = true;
        break;
      }
      if (!chunk) continue;
      if (this.#onContent && item.kind === 'event' && item.event.event === undefined)
        this.#learn(item.event.data, chunk);
      this.#onChunk(chunk);
    }
    parsed.length = 0;
    return this.#done;
  }

  #learn(data: string, chunk: ChatChunk): void {
    if (this.#unusedFrames >= MAX_UNUSED_FRAMES) return;
    this.#frame = ContentFrame.of(data, chunk) ?? this.#frame;
  }
}

/** Receives a pushed body's reads, in order, in the tick they arrive. */
export interface BodyReader {
  data(bytes: Uint8Array): void;
  end(): void;
  error(err: Error): void;
}

/** What streamChunks reads: a response body that pushes its reads (UpstreamBody in upstream.ts). */
export interface PushedBody {
  read(reader: BodyReader): void;
  close(reason?: Error): void;
}

/**
 * Runs a body through a ChunkDecoder. Resolves with true on `[DONE]` (without waiting for the body's end,
 * which lets the socket go back to the pool), false when the body ended without it; rejects on a decoding
 * error or a failed read, closing the body. `onChunk` runs in the tick the bytes arrived.
 */
export function streamChunks(
  body: PushedBody,
  onChunk: (chunk: ChatChunk) => void,
  options?: DecoderOptions,
): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const decoder = new ChunkDecoder(onChunk, options);
    let settled = false;
    const fail = (err: unknown) => {
      if (settled) return;
      settled = true;
      body.close(err instanceof Error ? err : undefined);
      reject(err);
    };
    body.read({
      data(bytes) {
        if (settled) return;
        try {
          if (decoder.feed(bytes)) {
            settled = true;
            resolve(true);
          }
        } catch (err) {
          fail(err);
        }
      },
      end() {
        if (settled) return;
        try {
          const done = decoder.end();
          settled = true;
          resolve(done);
        } catch (err) {
          fail(err);
        }
      },
      error: fail,
    });
  });
}

/** One parser result → a chunk, DONE, nothing (keep-alive, or a truncated last event), or a throw. */
function interpret(
  item: Parsed,
  maxEventBytes: number,
  unterminated: boolean,
): ChatChunk | typeof DONE | undefined {
  if (item.kind === 'too_large') throw tooLarge(maxEventBytes);
  if (item.kind === 'error_field') throw errorEvent(parseLoose(item.value));

  const { data, event } = item.event;
  if (data.length > maxEventBytes || (data.length * 3 > maxEventBytes && byteLength(data) > maxEventBytes))
    throw tooLarge(maxEventBytes);
  if (event === 'error') {
    const payload = parseLoose(data);
    throw errorEvent(isObject(payload) && payload.error != null ? payload.error : payload);
  }
  const trimmed = data.trim();
  if (trimmed === '') return undefined;
  if (trimmed === '[DONE]') return DONE;

  const shape = jsonShapeProblem(data, MODEL_JSON_BOUNDS);
  if (shape)
    throw new UpstreamStreamError(
      'too_large',
      `upstream sent an event refused before parsing: ${shape}`,
      MODEL_JSON_BOUNDS,
    );
  let payload: unknown;
  try {
    payload = JSON.parse(data);
  } catch {
    // An unterminated event at EOF that does not parse is a cut-off stream: {done:false} says so.
    if (unterminated) return undefined;
    throw malformed(data);
  }
  if (!isObject(payload)) {
    if (unterminated) return undefined;
    throw malformed(data);
  }
  if (payload.error != null) throw errorEvent(payload.error);
  return payload as ChatChunk;
}

/** An upstream's error object (or text) where an answer should be: mid-stream, or as its JSON completion. */
export function errorEvent(detail: unknown, where = 'mid-stream'): UpstreamStreamError {
  return new UpstreamStreamError(
    'error_event',
    `upstream reported an error ${where}: ${describe(detail)}`,
    detail,
  );
}

function malformed(data: string): UpstreamStreamError {
  const snippet = data.slice(0, SNIPPET_CHARS);
  return new UpstreamStreamError(
    'malformed',
    `upstream sent an event that is not a JSON object: ${JSON.stringify(snippet)}${data.length > SNIPPET_CHARS ? '…' : ''}`,
    snippet,
  );
}

function tooLarge(maxEventBytes: number): UpstreamStreamError {
  return new UpstreamStreamError('too_large', `upstream sent an event larger than ${maxEventBytes} bytes`, {
    maxEventBytes,
  });
}

/** The error's message when it has one (vLLM, llama.cpp, OpenAI, Ollama shapes), else a short rendering. */
function describe(detail: unknown): string {
  if (typeof detail === 'string') return detail.slice(0, SNIPPET_CHARS * 2);
  if (isObject(detail) && typeof detail.message === 'string')
    return detail.message.slice(0, SNIPPET_CHARS * 2);
  return (JSON.stringify(detail) ?? String(detail)).slice(0, SNIPPET_CHARS * 2);
}

function parseLoose(text: string): unknown {
  if (jsonShapeProblem(text, MODEL_JSON_BOUNDS)) return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The index of the text's last CR or LF, or -1. A read usually ends with one: found at once from the end. */
function lastLineBreak(text: string): number {
  for (let i = text.length - 1; i >= 0; i--) {
    const c = text.charCodeAt(i);
    if (c === 0x0a || c === 0x0d) return i;
  }
  return -1;
}

function byteLength(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}
