/**
 * Where a turn's answer goes. The tool loop is written once against TurnSink; the SSE sink streams to
 * Unmute (one id, content as it comes, one finish_reason, [DONE]; a failure is spoken, never an error
 * event), the JSON sink answers a non-streaming request (a failure is an HTTP error that the OpenAI SDK
 * must not retry, since a retry would run the tools again).
 */
import { randomBytes } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { secretScrubber } from '../telemetry/scrub.js';
import { type AccumulatedToolCall, MAX_MESSAGE_CHARS } from './accumulator.js';
import type { Usage } from './chunks.js';
import { errorBody, ProxyError } from './errors.js';

export type FinishReason = 'stop' | 'length' | 'tool_calls';

export interface TurnSink {
  /** True once the client has gone; writes are then dropped. */
  readonly closed: boolean;
  /** The model has been asked: send the response head (every write also sends it first). */
  begin(): void;
  /** Speakable text. False when the client's socket is full: wait for `drained()` before more. */
  content(text: string): boolean;
  /** Resolves when the client's socket can take more, or the client has gone. */
  drained(): Promise<void>;
  /** Calls to the client's own tools, passed back unchanged. */
  toolCalls(calls: AccumulatedToolCall[]): void;
  end(reason: FinishReason, usage?: Usage): void;
  /** Ends the turn after a failure; `spoken` is voice.errorMessage. */
  fail(error: ProxyError, spoken: string): void;
}

/** A client that stops reading and then hangs up never drains: 'close' must end the wait too. */
export function drainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/**
 * Closes the connection of a response the client has not read `ms` after the proxy finished it: a client
 * that stops reading would otherwise hold the socket's buffers, and its request body's share of the body
 * budget (released on 'close'), for as long as it likes.
 */
export function closeIfUnread(res: ServerResponse, ms: number): void {
  if (res.writableFinished || res.destroyed) return;
  const timer = setTimeout(() => res.destroy(), ms);
  res.once('close', () => clearTimeout(timer));
}

/** This process's random half of every completion id. */
const ID_PREFIX = `chatcmpl-${randomBytes(8).toString('hex')}`;
let idCount = 0;

/**
 * vLLM's shape, `chatcmpl-` and 32 hex digits: 16 drawn once per process and a count, unique across
 * sidecars, and cheaper per turn than drawing and reformatting a UUID.
 */
export function completionId(): string {
  idCount++;
  return ID_PREFIX + idCount.toString(16).padStart(16, '0');
}

/** A string with nothing past U+007F is the same bytes in latin1 as in UTF-8, which Node writes without a scan. */
const NON_ASCII = /[\u0080-\uffff]/;

interface Envelope {
  id: string;
  model: string;
  created: number;
}

export class SseSink implements TurnSink {
  readonly #res: ServerResponse;
  readonly #prefix: string;
  readonly #asciiPrefix: boolean;
  readonly #includeUsage: boolean;
  readonly #envelope: Envelope;
  #begun = false;
  #ended = false;

  constructor(res: ServerResponse, envelope: Envelope, options: { includeUsage: boolean }) {
    this.#res = res;
    this.#envelope = envelope;
    this.#includeUsage = options.includeUsage;
    // Every chunk shares this prefix; only the delta and finish_reason vary.
    this.#prefix = `data: {"id":${JSON.stringify(envelope.id)},"object":"chat.completion.chunk","created":${envelope.created},"model":${JSON.stringify(envelope.model)},"choices":[{"index":0,"delta":`;
    this.#asciiPrefix = !NON_ASCII.test(this.#prefix);
  }

  begin(): void {
    if (this.#begun) return;
    this.#begun = true;
    if (this.closed) return;
    // No connection header: Node keeps the connection alive unless the client asked to close it.
    this.#res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
    });
    this.#res.write(
      `${this.#prefix}{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n`,
    );
  }

  get closed(): boolean {
    return this.#ended || this.#res.destroyed || this.#res.writableEnded;
  }

  content(text: string): boolean {
    if (this.closed || text === '') return true;
    this.begin();
    return this.#res.write(
      `${this.#prefix}{"content":${JSON.stringify(text)}},"logprobs":null,"finish_reason":null}]}\n\n`,
      this.#asciiPrefix && !NON_ASCII.test(text) ? 'latin1' : 'utf8',
    );
  }

  drained(): Promise<void> {
    return this.closed || !this.#res.writableNeedDrain ? Promise.resolve() : drainOrClose(this.#res);
  }

  toolCalls(calls: AccumulatedToolCall[]): void {
    if (this.closed) return;
    this.begin();
    const deltas = calls.map((c, index) => ({
      index,
      id: c.id,
      type: 'function',
      function: { name: c.name, arguments: c.arguments },
    }));
    this.#res.write(
      `${this.#prefix}${JSON.stringify({ tool_calls: deltas })},"logprobs":null,"finish_reason":null}]}\n\n`,
    );
  }

  end(reason: FinishReason, usage?: Usage): void {
    if (this.closed) return;
    this.begin();
    this.#ended = true;
    let out = `${this.#prefix}{},"logprobs":null,"finish_reason":"${reason}"}]}\n\n`;
    if (this.#includeUsage && usage) {
      const { id, model, created } = this.#envelope;
      out += `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [], usage })}\n\n`;
    }
    this.#res.end(`${out}data: [DONE]\n\n`);
  }

  fail(_error: ProxyError, spoken: string): void {
    if (this.closed) return;
    this.content(spoken);
    this.end('stop');
  }
}

export class JsonSink implements TurnSink {
  readonly #res: ServerResponse;
  readonly #envelope: Envelope;
  #text = '';
  #calls: AccumulatedToolCall[] = [];
  #ended = false;
  /** The answer passed MAX_MESSAGE_CHARS: it is not held whole, and the client gets an error instead. */
  #tooLarge = false;
  readonly #secrets: readonly (string | undefined)[];

  /** `secrets`: kept out of the error body (an upstream's error text may quote the request's Authorization). */
  constructor(res: ServerResponse, envelope: Envelope, secrets: readonly (string | undefined)[] = []) {
    this.#res = res;
    this.#envelope = envelope;
    this.#secrets = secrets;
  }

  get closed(): boolean {
    return this.#ended || this.#res.destroyed;
  }

  /** The whole answer goes at the end. */
  begin(): void {}

  content(text: string): boolean {
    if (this.#text.length + text.length > MAX_MESSAGE_CHARS) this.#tooLarge = true;
    else if (!this.#tooLarge) this.#text += text;
    return true;
  }

  drained(): Promise<void> {
    return Promise.resolve();
  }

  toolCalls(calls: AccumulatedToolCall[]): void {
    this.#calls = calls;
  }

  end(reason: FinishReason, usage?: Usage): void {
    if (this.closed) return;
    if (this.#tooLarge) {
      this.fail(
        new ProxyError('ERP_UPSTREAM_TOO_LARGE', `the answer is longer than ${MAX_MESSAGE_CHARS} characters`),
      );
      return;
    }
    this.#ended = true;
    const { id, model, created } = this.#envelope;
    const message: Record<string, unknown> = {
      role: 'assistant',
      content: this.#text === '' && this.#calls.length ? null : this.#text,
    };
    if (this.#calls.length) {
      message.tool_calls = this.#calls.map((c) => ({
        id: c.id,
        type: 'function',
        function: { name: c.name, arguments: c.arguments },
      }));
    }
    const body = JSON.stringify({
      id,
      object: 'chat.completion',
      created,
      model,
      choices: [{ index: 0, message, logprobs: null, finish_reason: reason }],
      ...(usage ? { usage } : {}),
    });
    this.#res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    });
    this.#res.end(body);
  }

  fail(error: ProxyError): void {
    if (this.closed) return;
    this.#ended = true;
    const scrubbed = new ProxyError(error.code, secretScrubber(this.#secrets)(error.message));
    const body = JSON.stringify(errorBody(scrubbed));
    this.#res.writeHead(error.status, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
      'x-should-retry': 'false',
    });
    this.#res.end(body);
  }
}
