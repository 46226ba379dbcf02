/**
 * The proxy's telemetry: Prometheus metrics always; OpenTelemetry traces and metrics only when a standard
 * OTEL_* variable asks for them (the SDK is imported lazily, to keep the idle proxy small).
 */
import type { Logger } from './log.js';
import { OTHER, PromMetrics } from './metrics.js';
import { noopSpan } from './noop.js';
import type { Attributes, SpanHandle, Telemetry, TelemetryRecords } from './types.js';

export * from './genai.js';
export { OTHER } from './metrics.js';
export { noopTelemetry } from './noop.js';
export type * from './types.js';

/** Telemetry as the proxy holds it: the Telemetry calls plus the text served on `GET /metrics`. */
export interface ProxyTelemetry extends Telemetry {
  /** The Prometheus exposition text. */
  metrics(): Promise<string>;
  /** The Content-Type header for `metrics()`. */
  readonly contentType: string;
  /** Whether OpenTelemetry is on (an OTEL_* variable asked for it). */
  readonly tracing: boolean;
  /** The chat port's request body budget: its bytes in use are read when the metrics are scraped. */
  watchBodyBytesInFlight(read: () => number): void;
}

export interface TelemetryOptions {
  logger?: Logger;
  /** Toolset names known up front (others are counted as `other` until loaded). */
  toolsets?: string[];
}

export async function createTelemetry(options: TelemetryOptions = {}): Promise<ProxyTelemetry> {
  const prom = new PromMetrics(options.toolsets === undefined ? {} : { toolsets: options.toolsets });
  const tracing = await startTracing(prom, options.logger);
  let shutdown: Promise<void> | undefined;
  return {
    get contentType() {
      return prom.contentType;
    },
    tracing: tracing !== undefined,
    metrics: () => prom.metrics(),
    watchBodyBytesInFlight: (read) => prom.watchBodyBytesInFlight(read),
    startTurn: (traceparent: string | undefined, attributes: Attributes): SpanHandle =>
      tracing?.startTurn(traceparent, attributes) ?? noopSpan,
    ...everySide(tracing ? [prom, tracing.records] : [prom]),
    shutdown: () => {
      shutdown ??= tracing?.shutdown() ?? Promise.resolve();
      return shutdown;
    },
  };
}

/** Every kind of record; the type makes a new record fail to compile until it is listed here. */
const RECORD_KINDS: Record<keyof TelemetryRecords, true> = {
  turn: true,
  toolCall: true,
  upstreamCall: true,
  stream: true,
  memory: true,
  toolsetLoaded: true,
  toolsetReloadFailed: true,
  sharedState: true,
  deferredCall: true,
};

/** The records, each handed to every side that reads them (Prometheus, and OpenTelemetry when on). */
function everySide(sides: readonly TelemetryRecords[]): TelemetryRecords {
  const records: Record<string, (record: never) => void> = {};
  for (const kind of Object.keys(RECORD_KINDS) as (keyof TelemetryRecords)[]) {
    const receivers = sides.map((side) => side[kind].bind(side) as (record: never) => void);
    const [only] = receivers;
    records[kind] =
      receivers.length === 1 && only
        ? only
        : (record) => {
            for (const receive of receivers) receive(record);
          };
  }
  return records as unknown as TelemetryRecords;
}

async function startTracing(prom: PromMetrics, logger: Logger | undefined) {
  if (!otelRequested(process.env)) return undefined;
  const { Tracing } = await import('./tracing.js');
  const captureContent = process.env.EARPIECE_OTEL_CAPTURE_CONTENT?.trim().toLowerCase() === 'true';
  const tracing = new Tracing({
    captureContent,
    isKnownTool: (name) => prom.knownTool(name),
    other: OTHER,
    logger,
  });
  logger?.info({ captureContent }, 'OpenTelemetry started from the OTEL_* environment');
  return tracing;
}

/** Whether the environment asks for OpenTelemetry: an OTLP endpoint or an exporter is named, and not disabled. */
export function otelRequested(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const named = (value: string | undefined) => value !== undefined && value.trim() !== '';
  const exporter = (value: string | undefined) => named(value) && value?.trim() !== 'none';
  return (
    named(env.OTEL_EXPORTER_OTLP_ENDPOINT) ||
    named(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) ||
    named(env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) ||
    exporter(env.OTEL_TRACES_EXPORTER) ||
    exporter(env.OTEL_METRICS_EXPORTER)
  );
}
