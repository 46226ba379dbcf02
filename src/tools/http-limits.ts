/**
 * The http executor's undici interceptors. Each wraps one callback of the response: a size cap
 * enforced while the body arrives, and a non-2xx status turned into a ToolError. Both fail with a
 * sentence that names only the host, never the path or query (which may carry keys). Also the bound on
 * the JSON of any tool server's answer, http and MCP alike.
 */
import type { Dispatcher } from 'undici';
import type { JsonShape } from '../http/json-shape.js';
import { ToolError } from './types.js';

type Interceptor = Dispatcher.DispatcherComposeInterceptor;
type Handler = Dispatcher.DispatchHandler;
type Controller = Dispatcher.DispatchController;

/**
 * What a tool server's JSON answer may hold (an http tool's response, an MCP server's answer, the JSON in
 * an MCP text block): APIs and tool listings nest some tens of levels. Past these, parsing the megabytes an
 * answer may take would cost the sidecar some 150 MB (4 MiB of brackets).
 */
export const TOOL_ANSWER_JSON_BOUNDS: JsonShape = { depth: 256, structures: 200_000 };

/** Error bodies are read (so the connection can be reused) up to this, then the connection is dropped. */
const ERROR_BODY_DISCARD_BYTES = 64 * 1024;

/**
 * A handler that forwards every callback to `handler`, with some replaced. Spreading the handler
 * would lose the methods of class-based handlers (undici's own request handler is one).
 */
function forwarding(handler: Handler, overrides: Partial<Handler>): Handler {
  return {
    onRequestStart: (c, context) => handler.onRequestStart?.(c, context),
    onRequestUpgrade: (c, status, headers, socket) => handler.onRequestUpgrade?.(c, status, headers, socket),
    onResponseStarted: () => handler.onResponseStarted?.(),
    onResponseStart: (c, status, headers, message) => handler.onResponseStart?.(c, status, headers, message),
    onResponseData: (c, chunk) => handler.onResponseData?.(c, chunk),
    onResponseEnd: (c, trailers) => handler.onResponseEnd?.(c, trailers),
    onResponseError: (c, error) => handler.onResponseError?.(c, error),
    onBodySent: (chunk) => handler.onBodySent?.(chunk),
    onRequestSent: () => handler.onRequestSent?.(),
    ...overrides,
  };
}

export function hostOf(origin: Dispatcher.DispatchOptions['origin']): string {
  return origin ? new URL(String(origin)).host : 'the server';
}

export function describeBytes(bytes: number): string {
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) === 0) return `${bytes / (1024 * 1024)} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} bytes`;
}

/** Aborts a response as soon as its body passes `maxBytes` (or declares more), so none is ever buffered whole. */
export function responseSizeLimit({ maxBytes }: { maxBytes: number }): Interceptor {
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) {
    throw new RangeError('responseSizeLimit: maxBytes must be a positive integer');
  }
  return (dispatch) =>
    function sizeLimited(opts, handler) {
      let received = 0;
      const tooLarge = (c: Controller) =>
        c.abort(
          new ToolError(
            `the response from ${hostOf(opts.origin)} is larger than ${describeBytes(maxBytes)}`,
            'ERP_TOOL_RESPONSE_TOO_LARGE',
          ),
        );
      return dispatch(
        opts,
        forwarding(handler, {
          onResponseStart(c, status, headers, message) {
            if (Number(headers['content-length']) > maxBytes) return tooLarge(c);
            handler.onResponseStart?.(c, status, headers, message);
          },
          onResponseData(c, chunk) {
            received += chunk.length;
            if (received > maxBytes) return tooLarge(c);
            handler.onResponseData?.(c, chunk);
          },
        }),
      );
    };
}

/**
 * A final status outside 2xx fails the request with "HTTP 503 from host". The error body is read and
 * dropped (up to a small cap) rather than shown: it may echo request headers or internals.
 * Redirects are not followed, so a 3xx is an error too.
 */
export function statusAsError(): Interceptor {
  return (dispatch) =>
    function statusChecked(opts, handler) {
      let failure: ToolError | undefined;
      let discarded = 0;
      return dispatch(
        opts,
        forwarding(handler, {
          onResponseStart(c, status, headers, message) {
            // 1xx interim responses pass through; the final one decides.
            if (status < 300) return handler.onResponseStart?.(c, status, headers, message);
            failure = new ToolError(`HTTP ${status} from ${hostOf(opts.origin)}`, 'ERP_TOOL_HTTP_STATUS');
          },
          onResponseData(c, chunk) {
            if (!failure) return handler.onResponseData?.(c, chunk);
            discarded += chunk.length;
            if (discarded > ERROR_BODY_DISCARD_BYTES) c.abort(failure);
          },
          onResponseEnd(c, trailers) {
            if (failure) return handler.onResponseError?.(c, failure);
            handler.onResponseEnd?.(c, trailers);
          },
        }),
      );
    };
}
