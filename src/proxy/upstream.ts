/**
 * The LLM server: one long-lived undici Pool per origin. A chat stream is read through undici's dispatch
 * handler, so each read reaches the turn in the same tick it leaves the socket (no stream or iterator in
 * between); the turn pauses the read while the client's socket is full, so a slow client slows the
 * upstream socket rather than growing memory. No transport retries: the deliberate re-sends (context
 * length, tools unsupported, kwargs refused) are decisions of the turn loop, which this module names by
 * classifying the upstream's refusals.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { type Dispatcher, Pool } from 'undici';
import { ProxyError } from './errors.js';
import type { BodyReader, PushedBody } from './sse.js';

export type UpstreamRefusal = 'context_length' | 'tools_unsupported' | 'kwargs_rejected' | 'other';

const CONTEXT_LENGTH =
  /context[ _-]?length|maximum model length|maximum context|context size|context window|too many tokens|prompt is too long|exceeds? the (?:available )?context/i;
const TOOLS_UNSUPPORTED =
  /enable-auto-tool-choice|tool[ _-]?call[ _-]?parser|does not support tools|tools? (?:are|is) not supported|cannot use tools|tool_choice.*not supported/i;
const KWARGS_REJECTED = /chat_template_kwargs|enable_thinking/i;

/** What an upstream 4xx means for the turn loop. */
export function classifyRefusal(status: number, body: string): UpstreamRefusal {
  if (status >= 500) return 'other';
  if (CONTEXT_LENGTH.test(body)) return 'context_length';
  if (TOOLS_UNSUPPORTED.test(body)) return 'tools_unsupported';
  if (KWARGS_REJECTED.test(body)) return 'kwargs_rejected';
  return 'other';
}

export class UpstreamHttpError extends ProxyError {
  readonly refusal: UpstreamRefusal;
  constructor(
    readonly upstreamStatus: number,
    readonly upstreamBody: string,
  ) {
    const refusal = classifyRefusal(upstreamStatus, upstreamBody);
    super(
      refusal === 'context_length' ? 'ERP_CONTEXT_LENGTH' : 'ERP_UPSTREAM_STATUS',
      `upstream answered HTTP ${upstreamStatus}: ${summarize(upstreamBody)}`,
    );
    this.refusal = refusal;
  }
}

function summarize(body: string): string {
  try {
    const parsed = JSON.parse(body) as { error?: { message?: string } | string; message?: string };
    const msg = typeof parsed.error === 'string' ? parsed.error : (parsed.error?.message ?? parsed.message);
    if (msg) return msg.slice(0, 300);
  } catch {}
  return body.slice(0, 300);
}

export type ChatResponse =
  | { kind: 'sse'; body: UpstreamBody }
  /** A server that ignored `stream: true` and answered with one JSON completion. */
  | { kind: 'json'; completion: unknown };

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
   * POST /v1/chat/completions with `stream: true`. Throws UpstreamHttpError or ERP_UPSTREAM_UNREACHABLE.
   * `onSent` runs once the request is written: undici holds a request for a reused socket until the next
   * event-loop turn (idle-socket validation), and the caller's own writes should not go before it.
   */
  chat(
    body: Record<string, unknown>,
    headers: { authorization?: string | undefined; traceparent?: string | undefined },
    signal: AbortSignal,
    onSent?: () => void,
  ): Promise<ChatResponse> {
    const requestHeaders: Record<string, string> = {
      'content-type': 'application/json',
      accept: 'text/event-stream',
      ...this.#authHeader(headers.authorization),
    };
    if (headers.traceparent) requestHeaders.traceparent = headers.traceparent;
    return new Promise((resolve, reject) => {
      const origin = this.origin;
      let controller: Dispatcher.DispatchController | undefined;
      let kind: 'sse' | 'json' | 'refused' | undefined;
      let status = 0;
      let stream: UpstreamBody | undefined;
      let parts: Buffer[] = [];
      let size = 0;
      const onAbort = () => controller?.abort(signal.reason as Error);
      const settle = () => signal.removeEventListener('abort', onAbort);
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      signal.addEventListener('abort', onAbort, { once: true });
      this.#pool.dispatch(
        {
          method: 'POST',
          path: `${this.basePath}/v1/chat/completions`,
          headers: requestHeaders,
          body: JSON.stringify(body),
        },
        {
          onRequestStart(c) {
            controller = c;
            if (signal.aborted) c.abort(signal.reason as Error);
          },
          onRequestSent: onSent,
          onResponseStart(c, statusCode, responseHeaders) {
            status = statusCode;
            if (statusCode >= 400) {
              kind = 'refused';
            } else if (String(responseHeaders['content-type'] ?? '').includes('application/json')) {
              kind = 'json';
            } else {
              kind = 'sse';
              stream = new UpstreamBody(c);
              resolve({ kind: 'sse', body: stream });
            }
          },
          onResponseData(c, chunk) {
            if (kind === 'sse') {
              (stream as UpstreamBody).push(chunk);
              return;
            }
            parts.push(chunk);
            size += chunk.length;
            // An error body is only summarized: the rest is not worth reading.
            if (kind === 'refused' && size >= MAX_ERROR_BODY) {
              settle();
              reject(new UpstreamHttpError(status, readParts(parts, MAX_ERROR_BODY)));
              parts = [];
              c.abort(new Error('upstream error body read'));
            }
          },
          onResponseEnd() {
            settle();
            if (kind === 'sse') {
              (stream as UpstreamBody).finish();
            } else if (kind === 'refused') {
              reject(new UpstreamHttpError(status, readParts(parts, MAX_ERROR_BODY)));
            } else {
              try {
                resolve({ kind: 'json', completion: JSON.parse(readParts(parts)) });
              } catch (err) {
                reject(err);
              }
            }
          },
          onResponseError(_c, err) {
            settle();
            if (stream) {
              stream.finish(err);
            } else if (signal.aborted) {
              reject(signal.reason);
            } else {
              reject(
                new ProxyError('ERP_UPSTREAM_UNREACHABLE', `upstream ${origin} unreachable: ${err.message}`, {
                  cause: err,
                }),
              );
            }
          },
        },
      );
    });
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
    body: AsyncIterable<Uint8Array>;
  }> {
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
    Object.assign(out, this.#authHeader(headers.authorization));
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
    return { statusCode: res.statusCode, headers: resHeaders, body: res.body };
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

function readParts(parts: Buffer[], cap?: number): string {
  const text = Buffer.concat(parts).toString('utf8');
  return cap === undefined ? text : text.slice(0, cap);
}
