/**
 * The LLM server: one long-lived undici Pool per origin. A chat answer comes back as one ChunkSource,
 * whether the server streamed it (SSE) or ignored `stream` and sent one JSON completion. A stream is read
 * through undici's dispatch handler, so each read reaches the turn in the same tick it leaves the socket
 * (no stream or iterator in between); the reader pauses the source while the client's socket is full, so
 * a slow client slows the upstream socket rather than growing memory. No transport retries: the
 * deliberate re-sends (context length, tools unsupported, kwargs refused) are the request policy's
 * (request-policy.ts), which this module serves by classifying the upstream's refusals and keeping what
 * it learned about the server in UpstreamState.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { type Dispatcher, Pool } from 'undici';
import { jsonShapeProblem } from '../http/json-shape.js';
import { secretScrubber } from '../telemetry/scrub.js';
import type { ChatChunk, Usage } from './chunks.js';
import { type ErrorCode, ProxyError } from './errors.js';
import {
  type BodyReader,
  errorEvent,
  MODEL_JSON_BOUNDS,
  type PushedBody,
  streamChunks,
  UpstreamStreamError,
} from './sse.js';

/** What the proxy learned about its upstream, shared by all turns. */
export class UpstreamState {
  #toolsUnsupportedUntil = 0;
  #toolsRefusedAt: number | undefined;
  #warned = false;
  kwargsRejected = false;
  /** The server refused `stream_options` (Mistral, Azure AI serverless): sent no more, usage goes unreported. */
  streamOptionsRejected = false;
  constructor(private readonly now: () => number = Date.now) {}

  /** True only the first time: the refusal is logged once, with the flags to add. */
  firstToolsRefusal(): boolean {
    const first = !this.#warned;
    this.#warned = true;
    return first;
  }

  /** vLLM without --enable-auto-tool-choice refuses any request with tools: send none for 60 s. */
  markToolsUnsupported(): void {
    this.#toolsRefusedAt = this.now();
    this.#toolsUnsupportedUntil = this.#toolsRefusedAt + 60_000;
  }

  /** When the server last refused tools (ms since the epoch): readiness reads true again between tries. */
  get toolsRefusedAt(): number | undefined {
    return this.#toolsRefusedAt;
  }

  get toolsAccepted(): boolean {
    return this.now() >= this.#toolsUnsupportedUntil;
  }
}

export type UpstreamRefusal =
  | 'context_length'
  | 'tools_unsupported'
  | 'kwargs_rejected'
  | 'stream_options_rejected'
  | 'other';

const CONTEXT_LENGTH =
  /context[ _-]?length|maximum model length|maximum context|context size|context window|too many tokens|prompt is too long|exceeds? the (?:available )?context/i;
// OpenRouter answers 404 "No endpoints found that support tool use" (or "… the provided 'tool_choice' value")
// when no provider of the model takes tools; OpenAI "Unsupported parameter: 'tools' is not supported with
// this model" (older: "Unrecognized request argument supplied: tools"); Mistral "Function calling is not
// enabled for this model".
const TOOLS_UNSUPPORTED =
  /enable-auto-tool-choice|tool[ _-]?call[ _-]?parser|does not support (?:tools|tool use|tool calling|function calling)|\btools?\W{0,2} (?:are|is) not supported|cannot use tools|tool_choice.{0,80}not supported|no endpoints found that support (?:tool use|the provided .?tool_choice)|argument supplied: tools|function calling is not (?:enabled|supported)/i;

/**
 * The server refused the request field itself, not merely quoted the request that held it (validation
 * errors may echo the whole body): an extra_forbidden entry for it (pydantic, Mistral), "FIELD: Extra inputs
 * are not permitted", "FIELD is not allowed", "Extra parameters ['FIELD'] are not allowed" (Azure AI),
 * "Unrecognized request argument supplied: FIELD" (OpenAI), "unknown field `FIELD`", "'FIELD' was unexpected".
 */
function refusesField(field: string): RegExp {
  return new RegExp(
    [
      // Quotes may come escaped, from a gateway that passes the server's JSON on as a message string.
      // Bounded: tried at every mention, an unbounded run would take quadratic time on a long error body.
      `extra_forbidden\\\\?"[^}]{0,200}\\\\?"${field}\\\\?"`,
      `\\\\?"${field}\\\\?"[^}]{0,200}extra_forbidden`,
      `\\b${field}\\W{0,3}(?:\\w+\\W+){0,3}not (?:allowed|permitted|supported|recognized)`,
      `\\b${field}\\W{0,3}(?:was|is) unexpected`,
      `(?:unrecognized|unknown|unsupported|unexpected|extra) (?:request )?(?:arguments?|parameters?|fields?|inputs?|keys?|properties?)(?: supplied)?\\W{0,4}${field}`,
    ].join('|'),
    'i',
  );
}
const KWARGS_REJECTED = new RegExp(
  `${refusesField('chat_template_kwargs').source}|${refusesField('enable_thinking').source}`,
  'i',
);
const STREAM_OPTIONS_REJECTED = refusesField('stream_options');

/** What an upstream 4xx means for the turn loop. */
export function classifyRefusal(status: number, body: string): UpstreamRefusal {
  if (status >= 500) return 'other';
  if (CONTEXT_LENGTH.test(body)) return 'context_length';
  if (TOOLS_UNSUPPORTED.test(body)) return 'tools_unsupported';
  if (KWARGS_REJECTED.test(body)) return 'kwargs_rejected';
  if (STREAM_OPTIONS_REJECTED.test(body)) return 'stream_options_rejected';
  return 'other';
}

/** A client's headers passed on to the model server: OpenRouter's app attribution (hosted upstreams read them). */
export const ATTRIBUTION_HEADERS = ['http-referer', 'x-title'] as const;

/** `retry-after` in seconds (delta-seconds or an HTTP date), or undefined when absent or unreadable. */
export function retryAfterSeconds(
  value: string | string[] | undefined,
  now = Date.now(),
): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || text.trim() === '') return undefined;
  if (/^\d+$/.test(text.trim())) return Number(text.trim());
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now) / 1000));
}

export class UpstreamHttpError extends ProxyError {
  readonly refusal: UpstreamRefusal;
  constructor(
    readonly upstreamStatus: number,
    readonly upstreamBody: string,
    /** A 429's or 503's `retry-after`, in seconds. */
    readonly retryAfter?: number,
  ) {
    const refusal = classifyRefusal(upstreamStatus, upstreamBody);
    super(
      upstreamErrorCode(upstreamStatus, refusal),
      `upstream answered HTTP ${upstreamStatus}: ${summarize(upstreamBody)}`,
    );
    this.refusal = refusal;
  }
}

/**
 * The client's own input refused (a malformed message, a body too large) is the client's 4xx, not a 502:
 * the SDK raises it as a bad request instead of blaming the server. 401, 403, 404 and 429 stay 502s: they
 * are the proxy's key or model name, or the provider's quota, which the client cannot fix.
 */
function upstreamErrorCode(status: number, refusal: UpstreamRefusal): ErrorCode {
  if (refusal === 'context_length') return 'ERP_CONTEXT_LENGTH';
  if (status === 400 || status === 422) return 'ERP_UPSTREAM_REJECTED';
  if (status === 413) return 'ERP_UPSTREAM_REQUEST_TOO_LARGE';
  return 'ERP_UPSTREAM_STATUS';
}

function summarize(body: string): string {
  try {
    const parsed = JSON.parse(body) as { error?: { message?: string } | string; message?: string };
    const msg = typeof parsed.error === 'string' ? parsed.error : (parsed.error?.message ?? parsed.message);
    if (msg) return msg.slice(0, 300);
  } catch {}
  return body.slice(0, 300);
}

/** A refusal's error; its body may quote the key it was sent ("Incorrect API key provided: sk-…"), and goes to logs. */
function refusal(
  status: number,
  body: string,
  retryAfter: number | undefined,
  authorization: string | undefined,
): UpstreamHttpError {
  return new UpstreamHttpError(status, secretScrubber([authorization])(body), retryAfter);
}

/** One chat answer, read chunk by chunk, whatever its wire form. */
export interface ChunkSource {
  /**
   * Hands every chunk to `onChunk` as it arrives. Resolves true when the answer said it was complete
   * (`[DONE]`, or a whole JSON completion), false for a stream cut off without it; rejects on a broken
   * stream or when `onChunk` throws, closing the response. `onContent`, when given, may take the text of
   * chunks that say nothing else in place of `onChunk` (see content-frame.ts).
   */
  read(onChunk: (chunk: ChatChunk) => void, onContent?: (text: string) => void): Promise<boolean>;
  /** Stops reading from the socket until `resume()` (the client's socket is full). */
  pause(): void;
  resume(): void;
}

/**
 * A non-streamed completion's body is capped while it is read, as tool answers are: a voice answer is a
 * few hundred bytes, and a runaway server must not be buffered whole.
 */
export const MAX_COMPLETION_BYTES = 4 * 1024 * 1024;

/** A server that ignored `stream: true` and answered with one JSON completion: the chunk it would have streamed. */
class CompletionSource implements ChunkSource {
  constructor(readonly completion: unknown) {}

  read(onChunk: (chunk: ChatChunk) => void): Promise<boolean> {
    try {
      onChunk(completionAsChunk(this.completion));
      return Promise.resolve(true);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  pause(): void {}
  resume(): void {}
}

/** A streamed answer: its body's reads decoded as they arrive. */
class StreamSource implements ChunkSource {
  constructor(readonly body: UpstreamBody) {}

  read(onChunk: (chunk: ChatChunk) => void, onContent?: (text: string) => void): Promise<boolean> {
    return streamChunks(this.body, onChunk, { onContent });
  }

  pause(): void {
    this.body.pause();
  }

  resume(): void {
    this.body.resume();
  }
}

/**
 * Throws UpstreamStreamError, as the SSE decoder does for an in-band error, for a body that is an error (a
 * gateway that ignored `stream` and answered its failure with 200) or no completion: read as an empty
 * answer, it would leave the user in silence.
 */
function completionAsChunk(completion: unknown): ChatChunk {
  const c = completion as {
    id?: string;
    model?: string;
    error?: unknown;
    choices?: {
      message?: {
        content?: string | null;
        refusal?: string | null;
        reasoning_details?: unknown;
        tool_calls?: {
          id?: string;
          function?: { name?: string; arguments?: string };
          extra_content?: unknown;
        }[];
      };
      finish_reason?: string;
    }[];
    usage?: Usage;
  };
  if (c === null || typeof c !== 'object') throw noCompletion(completion);
  if (c.error != null) throw errorEvent(c.error, 'in its JSON answer');
  const choice = c.choices?.[0];
  if (!choice) throw noCompletion(completion);
  const message = choice.message ?? {};
  return {
    id: c.id,
    model: c.model,
    choices: [
      {
        index: 0,
        delta: {
          role: 'assistant',
          content: message.content ?? null,
          refusal: message.refusal ?? null,
          // A reasoning model's signatures go back with its calls, as from a stream.
          reasoning_details: message.reasoning_details,
          tool_calls: (message.tool_calls ?? []).map((t, index) => ({
            index,
            id: t.id,
            type: 'function',
            function: t.function,
            extra_content: t.extra_content,
          })),
        },
        finish_reason: choice.finish_reason ?? 'stop',
      },
    ],
    usage: c.usage,
  };
}

function noCompletion(body: unknown): UpstreamStreamError {
  const snippet = (JSON.stringify(body) ?? String(body)).slice(0, 120);
  return new UpstreamStreamError(
    'malformed',
    `upstream sent a JSON answer without choices: ${snippet}`,
    snippet,
  );
}

/** A model request on its way: `sent` settles once it is on the wire (or has failed), `response` with the answer. */
export interface ChatCall {
  sent: Promise<void>;
  response: Promise<ChunkSource>;
}

/**
 * A streamed chat response body. Reads wait in a queue until `read()` names the reader; then every read
 * goes straight to it. `close()` aborts the response (its socket is not reused); a body read to its end
 * leaves the kept-alive socket to the pool.
 */
export class UpstreamBody implements PushedBody {
  readonly #controller: Dispatcher.DispatchController;
  #reader: BodyReader | undefined;
  #queued: Uint8Array[] = [];
  #state: 'open' | 'ended' | 'failed' = 'open';
  #failure: Error | undefined;

  constructor(controller: Dispatcher.DispatchController) {
    this.#controller = controller;
  }

  read(reader: BodyReader): void {
    this.#reader = reader;
    const queued = this.#queued;
    this.#queued = [];
    for (const bytes of queued) reader.data(bytes);
    if (this.#state === 'ended') reader.end();
    else if (this.#state === 'failed') reader.error(this.#failure as Error);
  }

  pause(): void {
    this.#controller.pause();
  }

  resume(): void {
    this.#controller.resume();
  }

  /** Stops the response; the reader hears nothing more. */
  close(reason: Error = new Error('response closed by the reader')): void {
    this.#reader = undefined;
    if (this.#state === 'open' && !this.#controller.aborted) this.#controller.abort(reason);
  }

  /** @internal from the dispatch handler */
  push(bytes: Uint8Array): void {
    if (this.#reader) this.#reader.data(bytes);
    else if (this.#state === 'open') this.#queued.push(bytes);
  }

  /** @internal */
  finish(err?: Error): void {
    if (this.#state !== 'open') return;
    this.#state = err ? 'failed' : 'ended';
    this.#failure = err;
    const reader = this.#reader;
    if (!reader) return;
    if (err) reader.error(err);
    else reader.end();
  }
}

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'content-length',
]);

const MAX_ERROR_BODY = 64 * 1024;
const WHITESPACE = new Set([0x20, 0x09, 0x0a, 0x0d]);
const OPEN_BRACE = 0x7b;

export interface UpstreamOptions {
  /** Base URL without /v1, like KYUTAI_LLM_URL. */
  url: string;
  /** Replaces the client's Authorization when set. */
  apiKey?: string | undefined;
  /** Longest wait for response headers and between body chunks (a long prefill is silent). */
  timeoutMs: number;
  connections?: number;
}

export class Upstream {
  readonly origin: string;
  readonly host: string;
  readonly port: number;
  readonly basePath: string;
  readonly #pool: Pool;
  readonly #authorization: string | undefined;

  constructor(readonly options: UpstreamOptions) {
    const url = new URL(options.url);
    this.origin = url.origin;
    this.host = url.hostname;
    this.port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
    this.basePath = url.pathname.replace(/\/+$/, '');
    this.#authorization = options.apiKey ? `Bearer ${options.apiKey}` : undefined;
    this.#pool = new Pool(this.origin, {
      connections: options.connections ?? 2048,
      keepAliveTimeout: 30_000,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
  }

  #authHeader(clientAuthorization: string | undefined): Record<string, string> {
    const auth = this.#authorization ?? clientAuthorization;
    return auth ? { authorization: auth } : {};
  }

  /**
   * POST /v1/chat/completions with `stream: true`; `body` is its JSON. The response rejects with UpstreamHttpError,
   * ERP_UPSTREAM_UNREACHABLE, or ERP_UPSTREAM_TOO_LARGE (a JSON completion over MAX_COMPLETION_BYTES).
   * `sent` settles once the request is written: undici holds a request for a reused socket until the next
   * event-loop turn (idle-socket validation), and the client's response head should not go before it.
   */
  chat(
    body: string,
    headers: {
      authorization?: string | undefined;
      traceparent?: string | undefined;
      /** The client's ATTRIBUTION_HEADERS, passed on as they came. */
      attribution?: Record<string, string> | undefined;
    },
    signal: AbortSignal,
  ): ChatCall {
    const requestHeaders: Record<string, string> = {
      ...headers.attribution,
      'content-type': 'application/json',
      accept: 'text/event-stream',
      ...this.#authHeader(headers.authorization),
    };
    if (headers.traceparent) requestHeaders.traceparent = headers.traceparent;
    const { promise: sent, resolve: markSent } = Promise.withResolvers<void>();
    const { promise: response, resolve, reject } = Promise.withResolvers<ChunkSource>();
    const origin = this.origin;
    let controller: Dispatcher.DispatchController | undefined;
    // `sniff`: a 200 that names neither SSE nor JSON (text/plain, none): its first byte decides.
    let kind: 'sse' | 'json' | 'refused' | 'sniff' | undefined;
    let status = 0;
    let retryAfter: number | undefined;
    let stream: UpstreamBody | undefined;
    let parts: Buffer[] = [];
    let size = 0;
    const onAbort = () => controller?.abort(signal.reason as Error);
    // The answer is a stream: the turn reads it from here on.
    const openStream = (c: Dispatcher.DispatchController): UpstreamBody => {
      kind = 'sse';
      stream = new UpstreamBody(c);
      resolve(new StreamSource(stream));
      return stream;
    };
    const fail = (err: unknown) => {
      signal.removeEventListener('abort', onAbort);
      markSent();
      reject(err);
    };
    if (signal.aborted) {
      fail(signal.reason);
      return { sent, response };
    }
    signal.addEventListener('abort', onAbort, { once: true });
    // Dispatched here, not from a closure: `body` (the whole history's JSON) then stays out of the context
    // the handlers below keep alive, which would hold it for as long as the answer streams.
    this.#pool.dispatch(
      {
        method: 'POST',
        path: `${this.basePath}/v1/chat/completions`,
        headers: requestHeaders,
        body,
      },
      {
        onRequestStart(c) {
          controller = c;
          if (signal.aborted) c.abort(signal.reason as Error);
        },
        onRequestSent: markSent,
        onResponseStart(c, statusCode, responseHeaders) {
          status = statusCode;
          retryAfter = retryAfterSeconds(responseHeaders['retry-after']);
          const type = String(responseHeaders['content-type'] ?? '');
          if (statusCode >= 400) {
            kind = 'refused';
          } else if (type.includes('json')) {
            kind = 'json';
          } else if (type.includes('event-stream')) {
            openStream(c);
          } else {
            kind = 'sniff';
          }
        },
        onResponseData(c, chunk) {
          if (kind === 'sse') {
            (stream as UpstreamBody).push(chunk);
            return;
          }
          if (kind === 'sniff') {
            const first = chunk.findIndex((byte) => !WHITESPACE.has(byte));
            if (first === -1) {
              parts.push(chunk);
              size += chunk.length;
              if (size > MAX_COMPLETION_BYTES) {
                fail(new ProxyError('ERP_UPSTREAM_STREAM', 'upstream sent nothing but whitespace'));
                parts = [];
                c.abort(new Error('upstream sent only whitespace'));
              }
              return;
            }
            if (chunk[first] !== OPEN_BRACE) {
              const opened = openStream(c);
              for (const part of parts) opened.push(part);
              parts = [];
              opened.push(chunk);
              return;
            }
            kind = 'json';
          }
          parts.push(chunk);
          size += chunk.length;
          // An error body is only summarized: the rest is not worth reading.
          if (kind === 'refused' && size >= MAX_ERROR_BODY) {
            fail(refusal(status, readParts(parts, MAX_ERROR_BODY), retryAfter, requestHeaders.authorization));
            parts = [];
            c.abort(new Error('upstream error body read'));
          } else if (kind === 'json' && size > MAX_COMPLETION_BYTES) {
            fail(
              new ProxyError(
                'ERP_UPSTREAM_TOO_LARGE',
                `upstream sent a completion larger than ${MAX_COMPLETION_BYTES} bytes`,
              ),
            );
            parts = [];
            c.abort(new Error('upstream completion too large'));
          }
        },
        onResponseEnd(c) {
          signal.removeEventListener('abort', onAbort);
          // Nothing but whitespace: an empty stream, which the turn reports as one that never finished.
          if (kind === 'sniff') openStream(c);
          if (kind === 'sse') {
            (stream as UpstreamBody).finish();
          } else if (kind === 'refused') {
            fail(refusal(status, readParts(parts, MAX_ERROR_BODY), retryAfter, requestHeaders.authorization));
          } else {
            const text = readParts(parts);
            // Up to 4 MiB of brackets would take some 150 MB to parse.
            const shape = jsonShapeProblem(text, MODEL_JSON_BOUNDS);
            if (shape) {
              fail(
                new ProxyError(
                  'ERP_UPSTREAM_TOO_LARGE',
                  `upstream's JSON completion was refused before parsing: ${shape}`,
                ),
              );
              return;
            }
            try {
              resolve(new CompletionSource(JSON.parse(text)));
            } catch {
              fail(
                new ProxyError('ERP_UPSTREAM_STREAM', 'upstream sent a JSON completion that does not parse'),
              );
            }
          }
        },
        onResponseError(_c, err) {
          if (stream) {
            signal.removeEventListener('abort', onAbort);
            stream.finish(err);
          } else if (signal.aborted) {
            fail(signal.reason);
          } else {
            fail(
              new ProxyError('ERP_UPSTREAM_UNREACHABLE', `upstream ${origin} unreachable: ${err.message}`, {
                cause: err,
              }),
            );
          }
        },
      },
    );
    return { sent, response };
  }

  /** Any other /v1/* request, passed through unchanged (bodies streamed both ways). */
  async passthrough(
    method: string,
    path: string,
    headers: IncomingHttpHeaders,
    body: Buffer | undefined,
    signal: AbortSignal,
  ): Promise<{
    statusCode: number;
    headers: Record<string, string | string[]>;
    body: AsyncIterable<Uint8Array> | Buffer;
  }> {
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
    Object.assign(out, this.#authHeader(headers.authorization));
    // With the server-side key, an error answer is read as text to scrub it: it must not come compressed.
    if (this.#authorization) delete out['accept-encoding'];
    const res = await this.#pool.request({
      method: method as 'GET',
      path: `${this.basePath}${path}`,
      headers: out,
      body: body && body.length > 0 ? body : null,
      signal,
    });
    const resHeaders: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(res.headers))
      if (v !== undefined && !HOP_BY_HOP.has(k)) resHeaders[k] = v;
    if (res.statusCode < 400 || !this.#authorization)
      return { statusCode: res.statusCode, headers: resHeaders, body: res.body };
    // A refusal may quote the server-side key ("Incorrect API key provided: sk-…"), which the client must
    // never see: the body is read (at most MAX_PASSTHROUGH_ERROR_BYTES) and scrubbed, as for a chat turn.
    const encoded = resHeaders['content-encoding'];
    delete resHeaders['content-length'];
    delete resHeaders['content-encoding'];
    if (encoded !== undefined && encoded !== 'identity') {
      res.body.destroy();
      return {
        statusCode: res.statusCode,
        headers: resHeaders,
        body: Buffer.from(`the LLM server answered ${res.statusCode}`),
      };
    }
    const text = await readCapped(res.body, MAX_PASSTHROUGH_ERROR_BYTES);
    return {
      statusCode: res.statusCode,
      headers: resHeaders,
      body: Buffer.from(secretScrubber([this.#authorization])(text)),
    };
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/** An error answer on the pass-through route: enough for any error message. */
const MAX_PASSTHROUGH_ERROR_BYTES = 64 * 1024;

/** The body's first `cap` bytes as text; the rest is not read. */
async function readCapped(body: Dispatcher.ResponseData['body'], cap: number): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    parts.push(chunk as Buffer);
    size += (chunk as Buffer).length;
    if (size >= cap) {
      body.destroy();
      break;
    }
  }
  return Buffer.concat(parts).subarray(0, cap).toString('utf8');
}

function readParts(parts: Buffer[], cap?: number): string {
  const text = Buffer.concat(parts).toString('utf8');
  return cap === undefined ? text : text.slice(0, cap);
}
