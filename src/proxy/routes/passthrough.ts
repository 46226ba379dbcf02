/**
 * Every other /v1/* request (GET /v1/models above all) goes to the upstream unchanged, except for what a
 * proxy that adds the server-side API key must not pass on: a path that leaves /v1/ once resolved
 * (`/v1/../admin`, `/v1/%2e%2e/admin`) or reaches the chat route by another spelling (which would skip the
 * tools and the turn's limits), and the headers the client named hop-by-hop in `Connection`. A request is
 * held to the turn's deadline, and an error answer does not quote the server-side key (upstream.ts).
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { ProxyError } from '../errors.js';
import { sendError } from '../http-errors.js';
import type { ServerDeps } from '../server.js';

/**
 * The path and query to send upstream: dot segments resolved as the WHATWG URL parser does (`%2e` counts as
 * a dot, `\` as a slash), or undefined when the result leaves /v1/ or a server that decodes a segment (an
 * encoded slash, a double-encoded dot) could read it differently.
 */
export function upstreamPath(url: string): string | undefined {
  const queryAt = url.indexOf('?');
  const path = queryAt === -1 ? url : url.slice(0, queryAt);
  let resolved: URL;
  try {
    resolved = new URL(path, 'http://proxy.invalid');
  } catch {
    return undefined;
  }
  if (resolved.host !== 'proxy.invalid' || !resolved.pathname.startsWith('/v1/')) return undefined;
  // However many times a server decodes it, no segment may turn into a dot segment or a separator.
  for (const segment of resolved.pathname.split('/')) {
    const decoded = fullyDecoded(segment);
    if (decoded === undefined || decoded === '.' || decoded === '..' || /[/\\]/.test(decoded))
      return undefined;
  }
  return queryAt === -1 ? resolved.pathname : resolved.pathname + url.slice(queryAt);
}

const CHAT_PATH = '/v1/chat/completions';

/** The chat route written another way (`/v1/./chat/completions`, a trailing slash, other case). */
export function isChatPath(path: string): boolean {
  const queryAt = path.indexOf('?');
  const bare = (queryAt === -1 ? path : path.slice(0, queryAt)).replace(/\/+$/, '');
  return bare.toLowerCase() === CHAT_PATH;
}

function fullyDecoded(segment: string): string | undefined {
  let text = segment;
  for (let i = 0; i < 4; i++) {
    let next: string;
    try {
      next = decodeURIComponent(text);
    } catch {
      return undefined;
    }
    if (next === text) return text;
    text = next;
  }
  return undefined;
}

class PassthroughTimeout extends Error {}

/** The client's headers without those its `Connection` header names (RFC 9110 §7.6.1). */
export function withoutNamedHopHeaders(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const named = String(headers.connection ?? '')
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter((name) => name !== '');
  if (named.length === 0) return headers;
  const out: IncomingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) if (!named.includes(name)) out[name] = value;
  return out;
}

export async function passthroughRoutes(app: FastifyInstance, deps: ServerDeps): Promise<void> {
  // Bodies stay bytes here: this plugin's scope replaces the JSON parser.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body));
  app.all('/v1/*', async (request, reply) => {
    const path = upstreamPath(request.url);
    if (path === undefined) {
      return sendError(
        reply,
        new ProxyError(
          'ERP_PATH_REFUSED',
          `the path ${JSON.stringify(request.url)} leaves /v1/ once resolved`,
        ),
      );
    }
    if (isChatPath(path)) {
      return sendError(
        reply,
        new ProxyError(
          'ERP_PATH_REFUSED',
          `the path ${JSON.stringify(request.url)} is ${CHAT_PATH} written another way: send it as ${CHAT_PATH}`,
        ),
      );
    }
    const { upstream, toolset } = deps.current();
    const abort = new AbortController();
    reply.raw.on('close', () => abort.abort());
    const timeoutMs = toolset.limits.turnTimeoutMs;
    // Until the answer has been read whole: one that streams on, or that the client does not read, is cut off.
    const deadline = setTimeout(() => {
      if (reply.raw.headersSent) reply.raw.destroy();
      else abort.abort(new PassthroughTimeout());
    }, timeoutMs);
    reply.raw.once('close', () => clearTimeout(deadline));
    try {
      const res = await upstream.passthrough(
        request.method,
        path,
        withoutNamedHopHeaders(request.headers),
        request.body as Buffer | undefined,
        abort.signal,
      );
      return reply.code(res.statusCode).headers(res.headers).send(res.body);
    } catch (err) {
      if (abort.signal.reason instanceof PassthroughTimeout) {
        return sendError(
          reply,
          new ProxyError('ERP_TURN_TIMEOUT', `the upstream did not answer within ${timeoutMs} ms`),
        );
      }
      return sendError(
        reply,
        new ProxyError(
          'ERP_UPSTREAM_UNREACHABLE',
          `upstream ${upstream.origin} unreachable: ${(err as Error).message}`,
        ),
      );
    }
  });
}
