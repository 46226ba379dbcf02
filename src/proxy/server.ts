/**
 * The two HTTP servers, built but not listening (start.ts listens). The chat server carries the
 * OpenAI API and health; the metrics server carries /metrics and health for probes and Prometheus.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import Fastify, { type FastifyInstance, LogController } from 'fastify';
import { BodyBudget } from '../http/body-budget.js';
import { boundedJsonParser, boundJsonBodies, type JsonShape } from '../http/json-shape.js';
import type { ProxyTelemetry } from '../telemetry/index.js';
import type { Logger } from '../telemetry/log.js';
import type { ActiveToolSet } from './active.js';
import { ProxyError } from './errors.js';
import { clientErrorHandler, errorHandler, notFoundHandler } from './http-errors.js';
import { type ChatParts, chatFastLane, chatRoutes } from './routes/chat.js';
import { healthRoutes } from './routes/health.js';
import { passthroughRoutes } from './routes/passthrough.js';

/** An edited ToolSet that was not loaded: why (credentials scrubbed) and when (ISO 8601). */
export interface ReloadFailure {
  message: string;
  at: string;
}

export interface ServerDeps {
  current(): ActiveToolSet;
  isReady(): boolean;
  /** The last edit of the ToolSet that could not be loaded; undefined once a later one loaded. */
  lastReloadFailure?(): ReloadFailure | undefined;
  telemetry: ProxyTelemetry;
  logger: Logger;
  /** Hears each chat turn start and end (IdleCollection, src/runtime/heap.ts, waits for none to be open). */
  turnActivity?: TurnActivity | undefined;
}

export interface TurnActivity {
  turnStarted(): void;
  turnEnded(): void;
}

export interface ServerLimits {
  /**
   * Longest wait for a whole request, headers and body (a slow body holds memory; Node's 0 waits forever),
   * and for the client to read an answer the proxy has finished.
   */
  requestTimeoutMs: number;
  /** What all request bodies together may hold (see src/http/body-budget.ts). */
  maxBodyBytesInFlight: number;
}

export const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const BODY_LIMIT = 16 * 1024 * 1024;
/**
 * What a chat request's JSON may hold: Unmute's is a few levels deep with some tens of objects, and an agent
 * with hundreds of tool schemas and a long history stays within tens of thousands. Past these, parsing alone
 * would take hundreds of megabytes (a million `{}` in 16 MiB) or overflow the stack of the code that walks it.
 */
export const REQUEST_JSON_BOUNDS: JsonShape = { depth: 128, structures: 100_000 };
/** Two of the largest bodies; a parsed body and its copies hold a few times its bytes. */
export const DEFAULT_BODY_BYTES_IN_FLIGHT = 32 * 1024 * 1024;
const DEFAULT_LIMITS: ServerLimits = {
  requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS,
  maxBodyBytesInFlight: DEFAULT_BODY_BYTES_IN_FLIGHT,
};

function base(deps: ServerDeps, limits: ServerLimits): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.logger,
    // A log line per request would cost more than the proxy itself adds to a turn.
    logController: new LogController({ disableRequestLogging: true }),
    // No per-request child logger (a pino child and its redaction bindings on every turn): the routes log
    // through the proxy's logger with their own fields.
    childLoggerFactory: (logger) => logger,
    bodyLimit: BODY_LIMIT,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    keepAliveTimeout: 65_000,
    requestTimeout: limits.requestTimeoutMs,
    http: {
      // Node checks the request timeout this often (30 s by default, three times the whole timeout).
      connectionsCheckingInterval: Math.min(1000, limits.requestTimeoutMs),
      headersTimeout: limits.requestTimeoutMs,
    },
    clientErrorHandler,
    // A field of the wrong type is the client's mistake to hear about, not to have guessed at.
    ajv: { customOptions: { coerceTypes: false } },
  }) as unknown as FastifyInstance;
  app.setErrorHandler(errorHandler(deps.logger));
  app.setNotFoundHandler(notFoundHandler);
  return app;
}

export function buildServer(deps: ServerDeps, limits: ServerLimits = DEFAULT_LIMITS): FastifyInstance {
  const app = base(deps, limits);
  const budget = new BodyBudget(limits.maxBodyBytesInFlight, BODY_LIMIT);
  app.addHook('preParsing', budget.hook);
  const parseJson = boundedJsonParser(
    app,
    REQUEST_JSON_BOUNDS,
    (message) => new ProxyError('ERP_BAD_REQUEST', message),
  );
  boundJsonBodies(app, parseJson);
  deps.telemetry.watchBodyBytesInFlight(() => budget.used);
  const chat: ChatParts = { deps, unreadAnswerMs: limits.requestTimeoutMs };
  // Set as fastify starts to close: from then on fastify answers every request (503).
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  putInFront(
    app,
    chatFastLane({ ...chat, budget, parseJson, bodyLimit: BODY_LIMIT }, () => closing),
  );
  app.register(async (scope) => chatRoutes(scope, chat));
  app.register(async (scope) => passthroughRoutes(scope, deps));
  app.register(async (scope) => healthRoutes(scope, deps));
  return app;
}

/**
 * Puts `lane` in front of fastify's request listener on the app's server: it serves a request and returns
 * true, or returns false to leave it to fastify. Hooks added to the app do not see the requests it takes.
 * (The extra servers fastify binds for a host name of several addresses, such as localhost, are fastify's
 * alone.)
 */
function putInFront(
  app: FastifyInstance,
  lane: (req: IncomingMessage, res: ServerResponse) => boolean,
): void {
  const [fastify, ...others] = app.server.listeners('request') as ((
    req: IncomingMessage,
    res: ServerResponse,
  ) => void)[];
  if (!fastify || others.length > 0) throw new Error("expected fastify's one request listener on its server");
  app.server.removeListener('request', fastify);
  app.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    if (!lane(req, res)) fastify(req, res);
  });
}

export function buildMetricsServer(deps: ServerDeps): FastifyInstance {
  const app = base(deps, DEFAULT_LIMITS);
  // This port listens beyond the pod and no route of it takes a body, yet fastify would read and parse
  // one (up to 16 MiB) for the 404 handler. With no parsers it answers 404 without reading the body, which
  // Node then discards as it comes: nothing is held, so no body budget or limit of its own is needed.
  app.removeAllContentTypeParsers();
  app.get('/metrics', async (_request, reply) =>
    reply.header('content-type', deps.telemetry.contentType).send(await deps.telemetry.metrics()),
  );
  app.register(async (scope) => healthRoutes(scope, deps));
  return app;
}
