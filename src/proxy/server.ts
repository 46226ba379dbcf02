/**
 * The two HTTP servers, built but not listening (start.ts listens). The chat server carries the
 * OpenAI API and health; the metrics server carries /metrics and health for probes and Prometheus.
 */
import Fastify, { type FastifyInstance, LogController } from 'fastify';
import type { ProxyTelemetry } from '../telemetry/index.js';
import type { Logger } from '../telemetry/log.js';
import type { ActiveToolSet } from './active.js';
import { chatRoutes } from './routes/chat.js';
import { healthRoutes } from './routes/health.js';
import { passthroughRoutes } from './routes/passthrough.js';

export interface ServerDeps {
  current(): ActiveToolSet;
  isReady(): boolean;
  telemetry: ProxyTelemetry;
  logger: Logger;
}

const BODY_LIMIT = 16 * 1024 * 1024;

function base(deps: ServerDeps): FastifyInstance {
  return Fastify({
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
  }) as unknown as FastifyInstance;
}

export function buildServer(deps: ServerDeps): FastifyInstance {
  const app = base(deps);
  app.register(async (scope) => chatRoutes(scope, deps));
  app.register(async (scope) => passthroughRoutes(scope, deps));
  app.register(async (scope) => healthRoutes(scope, deps));
  return app;
}

export function buildMetricsServer(deps: ServerDeps): FastifyInstance {
  const app = base(deps);
  app.get('/metrics', async (_request, reply) =>
    reply.header('content-type', deps.telemetry.contentType).send(await deps.telemetry.metrics()),
  );
  app.register(async (scope) => healthRoutes(scope, deps));
  return app;
}
