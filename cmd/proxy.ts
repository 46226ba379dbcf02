import { parseArgs } from 'node:util';
import {
  DEFAULT_BODY_BYTES_IN_FLIGHT,
  DEFAULT_REQUEST_TIMEOUT_MS,
  type ServerLimits,
} from '../src/proxy/server.js';
import { DEFAULT_UPSTREAM_URL, startProxy, ToolSetLoadError } from '../src/proxy/start.js';
import { IDLE_COLLECTION_AFTER_MS } from '../src/runtime/heap.js';
import { createLogger } from '../src/telemetry/log.js';
import { ToolStateError } from '../src/tools/tool-state.js';
import { MAX_DURATION_MS, parseDuration } from '../src/toolset/duration.js';
import { upstreamUrlProblem } from '../src/toolset/validate.js';

const HELP = `Usage: earpiece proxy --toolset FILE [--upstream URL] [--port 8095] [--metrics-port 9464] [--host 0.0.0.0]

Runs the tool-calling proxy. Point Unmute at it with KYUTAI_LLM_URL=http://127.0.0.1:8095 (no /v1).

  --toolset FILE       ToolSet file (env EARPIECE_TOOLSET); reloaded when it changes
  --upstream URL       LLM server base URL without /v1 (env EARPIECE_UPSTREAM_URL); overrides
                       spec.upstream.url; default spec.upstream.url, else ${DEFAULT_UPSTREAM_URL}
  --port N             chat port (env EARPIECE_PORT, default 8095)
  --host ADDR          chat listen address (env EARPIECE_HOST, default 0.0.0.0)
  --metrics-port N     /metrics, /healthz, /readyz (env EARPIECE_METRICS_PORT, default 9464)
                       listening on EARPIECE_METRICS_HOST (default 0.0.0.0)
  --request-timeout D  longest wait for a whole request, body included (env EARPIECE_REQUEST_TIMEOUT,
                       default ${DEFAULT_REQUEST_TIMEOUT_MS / 1000}s); a slower client is answered 408
  --max-body-bytes-in-flight N
                       memory all request bodies together may hold (env EARPIECE_MAX_BODY_BYTES_IN_FLIGHT,
                       default ${DEFAULT_BODY_BYTES_IN_FLIGHT}); past it a request is answered 503
  --idle-collection-after D
                       after a load, give back the memory it grew once no turn has been open this long
                       (env EARPIECE_IDLE_COLLECTION_AFTER, default ${IDLE_COLLECTION_AFTER_MS / 1000}s; 0 never; needs node's
                       --expose-gc, which the image passes)`;

function port(value: string, name: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535)
    throw new RangeError(`${name} must be a port number, not "${value}"`);
  return n;
}

/** The LLM server's URL, checked up front; a problem names where the URL came from and never echoes it (user:pass@). */
function upstreamUrl(flag: string | undefined, env: string | undefined): string | undefined {
  const url = flag ?? env;
  const problem = url === undefined ? undefined : upstreamUrlProblem(url);
  if (!problem) return url;
  const setting = flag === undefined ? 'EARPIECE_UPSTREAM_URL (--upstream)' : '--upstream';
  throw new RangeError(`${setting} ${problem}`);
}

function limits(timeout: string, bytes: string): ServerLimits {
  const requestTimeoutMs = parseDuration(timeout);
  // Node takes whole milliseconds; 0 would turn the timeout off.
  if (requestTimeoutMs === undefined || requestTimeoutMs < 1 || requestTimeoutMs >= 2 ** 31)
    throw new RangeError(
      `--request-timeout must be a duration from 1ms to 596h, such as 10s, not "${timeout}"`,
    );
  const maxBodyBytesInFlight = Number(bytes);
  if (!Number.isSafeInteger(maxBodyBytesInFlight) || maxBodyBytesInFlight < 1)
    throw new RangeError(`--max-body-bytes-in-flight must be a positive number of bytes, not "${bytes}"`);
  return { requestTimeoutMs: Math.ceil(requestTimeoutMs), maxBodyBytesInFlight };
}

function idleCollectionAfter(value: string): number {
  const ms = value === '0' ? 0 : parseDuration(value);
  if (ms === undefined || ms > MAX_DURATION_MS)
    throw new RangeError(
      `--idle-collection-after must be a duration such as 30s, or 0 for never, not "${value}"`,
    );
  return Math.ceil(ms);
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    options: {
      toolset: { type: 'string' },
      upstream: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'metrics-port': { type: 'string' },
      'request-timeout': { type: 'string' },
      'max-body-bytes-in-flight': { type: 'string' },
      'idle-collection-after': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
}

export async function main(argv: string[]): Promise<number> {
  let values: ReturnType<typeof parse>['values'];
  try {
    ({ values } = parse(argv));
  } catch (err) {
    console.error(`earpiece proxy: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const env = process.env;
  const toolsetPath = values.toolset ?? env.EARPIECE_TOOLSET;
  if (!toolsetPath) {
    console.error(`earpiece proxy: --toolset FILE (or EARPIECE_TOOLSET) is required\n\n${HELP}`);
    return 2;
  }
  let settings: {
    upstreamUrl: string | undefined;
    port: number;
    metricsPort: number;
    limits: ServerLimits;
    idleCollectionAfterMs: number;
  };
  try {
    settings = {
      upstreamUrl: upstreamUrl(values.upstream, env.EARPIECE_UPSTREAM_URL),
      port: port(values.port ?? env.EARPIECE_PORT ?? '8095', '--port'),
      metricsPort: port(values['metrics-port'] ?? env.EARPIECE_METRICS_PORT ?? '9464', '--metrics-port'),
      limits: limits(
        values['request-timeout'] ?? env.EARPIECE_REQUEST_TIMEOUT ?? `${DEFAULT_REQUEST_TIMEOUT_MS}ms`,
        values['max-body-bytes-in-flight'] ??
          env.EARPIECE_MAX_BODY_BYTES_IN_FLIGHT ??
          String(DEFAULT_BODY_BYTES_IN_FLIGHT),
      ),
      idleCollectionAfterMs: idleCollectionAfter(
        values['idle-collection-after'] ??
          env.EARPIECE_IDLE_COLLECTION_AFTER ??
          `${IDLE_COLLECTION_AFTER_MS}ms`,
      ),
    };
  } catch (err) {
    console.error(`earpiece proxy: ${(err as Error).message}`);
    return 2;
  }
  const logger = createLogger('proxy');
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  try {
    proxy = await startProxy({
      toolsetPath,
      upstreamUrl: settings.upstreamUrl,
      host: values.host ?? env.EARPIECE_HOST ?? '0.0.0.0',
      port: settings.port,
      metricsHost: env.EARPIECE_METRICS_HOST ?? '0.0.0.0',
      metricsPort: settings.metricsPort,
      limits: settings.limits,
      idleCollection: { afterMs: settings.idleCollectionAfterMs },
      logger,
    });
  } catch (err) {
    // Configuration the ToolSet file or the environment got wrong: said in one line, not a stack trace.
    if (err instanceof ToolSetLoadError || err instanceof ToolStateError) {
      console.error(`earpiece proxy: ${err.message}`);
      return 1;
    }
    throw err;
  }
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      logger.info({ signal }, 'Stopping: no new requests; open turns may finish.');
      proxy.close().then(resolve, (err) => {
        logger.error({ err }, 'Shutdown failed.');
        resolve();
      });
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}
