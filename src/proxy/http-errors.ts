/**
 * Errors fastify and Node raise before a route runs (a body that is not JSON, too large, of the wrong
 * type, a failed schema check, an unknown route, a body that never arrives) answered in the OpenAI error
 * shape the clients parse, with a code from errors.ts.
 */
import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from '../telemetry/log.js';
import { type ErrorCode, errorBody, ProxyError } from './errors.js';

/** The proxy's code for a framework error, by its HTTP status. */
function codeFor(status: number): ErrorCode {
  switch (status) {
    case 404:
      return 'ERP_NOT_FOUND';
    case 408:
      return 'ERP_REQUEST_TIMEOUT';
    case 413:
      return 'ERP_BODY_TOO_LARGE';
    case 415:
      return 'ERP_UNSUPPORTED_MEDIA_TYPE';
    case 503:
      return 'ERP_OVERLOADED';
    default:
      return status >= 400 && status < 500 ? 'ERP_BAD_REQUEST' : 'ERP_INTERNAL';
  }
}

/** A ProxyError for anything thrown on the way to a route; faults of the proxy keep their text to the log. */
export function asProxyError(err: FastifyError | ProxyError | Error): ProxyError {
  if (err instanceof ProxyError) return err;
  const status = (err as FastifyError).statusCode ?? 500;
  const code = codeFor(status);
  return new ProxyError(code, code === 'ERP_INTERNAL' ? 'internal error' : err.message, { cause: err });
}

/** Only an overloaded proxy is worth asking again; the rest would fail the same way. */
const worthRetrying = (err: ProxyError) => err.code === 'ERP_OVERLOADED';
/** A refused body may still be arriving: close the connection rather than read the rest. */
const closesConnection = (err: ProxyError) => err.status === 413 || err.status === 503;

export function sendError(reply: FastifyReply, err: ProxyError): FastifyReply {
  if (!worthRetrying(err)) reply.header('x-should-retry', 'false');
  return reply.code(err.status).send(errorBody(err));
}

/** errorHandler's answer, on a response fastify does not hold (the chat route's fast lane). */
export function writeError(res: ServerResponse, err: ProxyError): void {
  const body = JSON.stringify(errorBody(err));
  res.writeHead(err.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    ...(worthRetrying(err) ? {} : { 'x-should-retry': 'false' }),
    ...(closesConnection(err) ? { connection: 'close' } : {}),
  });
  res.end(body);
}

export function errorHandler(logger: Logger) {
  return (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const proxyError = asProxyError(err);
    if (proxyError.code === 'ERP_INTERNAL')
      logger.error({ err, url: request.url }, 'Request failed inside the proxy.');
    if (closesConnection(proxyError)) reply.header('connection', 'close');
    return sendError(reply, proxyError);
  };
}

export function notFoundHandler(request: FastifyRequest, reply: FastifyReply): FastifyReply {
  return sendError(reply, new ProxyError('ERP_NOT_FOUND', `no route for ${request.method} ${request.url}`));
}

/**
 * Node's own refusals (a request timeout, malformed HTTP): written straight to the socket, which is then
 * closed, and only while no response has begun on it.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  const inResponse = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  if (socket.writable && !inResponse?.headersSent) {
    const proxyError =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? new ProxyError('ERP_REQUEST_TIMEOUT', 'the request did not arrive within the request timeout')
        : new ProxyError('ERP_BAD_REQUEST', `malformed HTTP request (${err.code ?? err.message})`);
    const body = JSON.stringify(errorBody(proxyError));
    socket.write(
      `HTTP/1.1 ${proxyError.status} ${proxyError.status === 408 ? 'Request Timeout' : 'Bad Request'}\r\n` +
        `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
        `x-should-retry: false\r\nconnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy();
}
