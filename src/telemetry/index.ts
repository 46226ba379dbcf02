/**
 * The proxy's telemetry: Prometheus metrics always, OpenTelemetry traces and metrics only when a standard
 * OTEL_* variable asks for them (the SDK is imported lazily, to keep the idle proxy small).
 */
import type { Logger } from './log.js';
import { PromMetrics } from './metrics.js';
import { noopSpan } from './noop.js';
import type { Attributes, SpanHandle, Telemetry, ToolInfo } from './types.js';

export { OTHER } from './metrics.js';
export { noopTelemetry } from './noop.js';
export type * from './types.js';

/** Telemetry as the proxy holds it: the Telemetry calls plus the text served on `GET /metrics`. */
export interface ProxyTelemetry extends Telemetry {
  /** The Prometheus exposition text. */
  metrics(): Promise<string>;
  /** The Content-Type header for `metrics()`. */
  readonly contentType: string;
}

export interface TelemetryOptions {
  logger?: Logger;
  /** Toolset names known up front (others are counted as `other` until loaded). */
  toolsets?: string[];
  /** The environment that decides on OpenTelemetry (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export async function createTelemetry(options: TelemetryOptions = {}): Promise<ProxyTelemetry> {
  const prom = new PromMetrics(options.toolsets === undefined ? {} : { toolsets: options.toolsets });
  return {
    get contentType() {
      return prom.contentType;
    },
    metrics: () => prom.metrics(),
    startTurn: (_traceparent: string | undefined, _attributes: Attributes): SpanHandle => noopSpan,
    toolCall: (record) => prom.toolCall(record),
    turn: (record) => prom.turn(record),
    upstreamTimeToFirstToken: (toolset, seconds) => prom.upstreamTimeToFirstToken(toolset, seconds),
    streamOpened: () => prom.streamOpened(),
    streamClosed: () => prom.streamClosed(),
    clientDisconnected: (toolset) => prom.clientDisconnected(toolset),
    upstreamToolsUnsupported: (toolset) => prom.upstreamToolsUnsupported(toolset),
    toolsetLoaded: (toolset: string, hash: string, tools?: readonly ToolInfo[]) =>
      prom.toolsetLoaded(toolset, hash, tools),
    memorySpliced: (toolset, exchanges) => prom.memorySpliced(toolset, exchanges),
    memoryEntries: (toolset, entries) => prom.memoryEntries(toolset, entries),
    shutdown: async () => {},
  };
}
