/**
 * The LLM server: one long-lived undici Pool per origin, `request()` with the turn's signal, the body
 * read with `for await` so a slow client slows the upstream socket rather than growing memory.
 * No transport retries: the deliberate re-sends (context length, tools unsupported, kwargs refused)
 * are decisions of the turn loop, which this module names by classifying the upstream's refusals.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { Pool } from 'undici';
import { ProxyError } from './errors.js';

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
  | { kind: 'sse'; body: AsyncIterable<Uint8Array> }
  /** A server that ignored `stream: true` and answered with one JSON completion. */
  | { kind: 'json'; completion: unknown };

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
  readonly basePath: string;
  readonly #pool: Pool;
  readonly #authorization: string | undefined;

  constructor(readonly options: UpstreamOptions) {
    const url = new URL(options.url);
    this.origin = url.origin;
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

  /** POST /v1/chat/completions with `stream: true`. Throws UpstreamHttpError or ERP_UPSTREAM_UNREACHABLE. */
  async chat(
    body: Record<string, unknown>,
    headers: { authorization?: string | undefined; traceparent?: string | undefined },
    signal: AbortSignal,
  ): Promise<ChatResponse> {
    let res: Awaited<ReturnType<Pool['request']>>;
    try {
      res = await this.#pool.request({
        method: 'POST',
        path: `${this.basePath}/v1/chat/completions`,
        headers: {
          'content-type': 'application/json',
          accept: 'text/event-stream',
          ...this.#authHeader(headers.authorization),
          ...(headers.traceparent ? { traceparent: headers.traceparent } : {}),
        },
        body: JSON.stringify(body),
        signal,
      });
    } catch (err) {
      if (signal.aborted) throw err;
      throw new ProxyError(
        'ERP_UPSTREAM_UNREACHABLE',
        `upstream ${this.origin} unreachable: ${(err as Error).message}`,
        {
          cause: err,
        },
      );
    }
    if (res.statusCode >= 400) {
      throw new UpstreamHttpError(res.statusCode, await readCapped(res.body, MAX_ERROR_BODY));
    }
    const type = String(res.headers['content-type'] ?? '');
    if (type.includes('application/json')) {
      return { kind: 'json', completion: await res.body.json() };
    }
    return { kind: 'sse', body: res.body };
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

async function readCapped(
  body: AsyncIterable<Uint8Array> & { destroy?: () => void },
  cap: number,
): Promise<string> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    parts.push(Buffer.from(chunk));
    size += chunk.length;
    if (size >= cap) {
      body.destroy?.();
      break;
    }
  }
  return Buffer.concat(parts).toString('utf8').slice(0, cap);
}
