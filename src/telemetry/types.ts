/**
 * What the proxy reports. Records are plain labels and numbers; telemetry never calls back into the proxy.
 * Implementations: metrics.ts (prom-client), tracing.ts (OpenTelemetry, loaded only when OTEL_* is set),
 * and noopTelemetry for tests.
 */
export type ToolOutcomeLabel =
  | 'ok'
  | 'error'
  | 'timeout'
  | 'invalid_arguments'
  | 'unknown_tool'
  | 'cancelled'
  | 'cache_hit'
  | 'rate_limited';

export type TurnOutcome = 'ok' | 'error' | 'timeout' | 'cancelled' | 'max_iterations';

export interface ToolRecord {
  toolset: string;
  tool: string;
  outcome: ToolOutcomeLabel;
  seconds: number;
}

/** One finished turn. Outcome `cancelled` means the client hung up (counted as a disconnect too). */
export interface TurnRecord {
  toolset: string;
  outcome: TurnOutcome;
  /** Upstream calls made in the turn that offered tools, plus the final one without tools if it ran. */
  iterations: number;
  /** From request arrival to the first content byte sent to the client (filler included). */
  timeToFirstContentSeconds: number | undefined;
  /** From request arrival to the end of the turn, when known. */
  seconds?: number;
}

/** One upstream call: its first token, or its refusal of tools (the upstream has no tool parser). */
export interface UpstreamCallRecord {
  toolset: string;
  /** Request sent → first token, once the first words are on their way to the client. */
  timeToFirstTokenSeconds?: number;
  /** tools_unsupported: the upstream has no tool parser; rate_limited: a 429 (the turn spoke its error line). */
  refusal?: 'tools_unsupported' | 'rate_limited';
}

/**
 * What became of a deferred call (one still running at its tool's deferAfter): its late result was spliced into
 * the conversation's next request (`delivered`), or it was dropped because it timed out (`expired`), failed
 * (`failed`), was stopped by the user's barge-in (`cancelled`), or found no room in tool memory: turned off by
 * a reload, or the result larger than memory.maxBytes (`discarded`).
 */
export type DeferredOutcome = 'delivered' | 'expired' | 'failed' | 'cancelled' | 'discarded';

export interface DeferredRecord {
  toolset: string;
  outcome: DeferredOutcome;
}

/** A streaming response opened or closed (the active-streams gauge). */
export interface StreamRecord {
  change: 'opened' | 'closed';
}

/** Tool memory: exchanges spliced into a request, or the number of entries now held. */
export interface MemoryRecord {
  toolset: string;
  spliced?: number;
  entries?: number;
}

/** A ToolSet loaded or reloaded, with the tool names it offers (the only tool label values), when known. */
export interface ToolSetRecord {
  toolset: string;
  hash: string;
  tools?: readonly ToolInfo[];
}

/** An edit of the ToolSet file that was not loaded (invalid, or its tools could not start). */
export interface ToolSetReloadFailureRecord {
  /** The ToolSet that still serves. */
  toolset: string;
}

/**
 * The measures, one record each: a new measure is a new field or record here, the code that makes it, and
 * the sides (metrics.ts, tracing.ts) that read it.
 */
export interface TelemetryRecords {
  turn(record: TurnRecord): void;
  toolCall(record: ToolRecord): void;
  upstreamCall(record: UpstreamCallRecord): void;
  stream(record: StreamRecord): void;
  memory(record: MemoryRecord): void;
  /** Call again when the tool list changes (an MCP server connects or lists new tools). */
  toolsetLoaded(record: ToolSetRecord): void;
  toolsetReloadFailed(record: ToolSetReloadFailureRecord): void;
  sharedState(record: SharedStateRecord): void;
  deferredCall(record: DeferredRecord): void;
}

/** The shared state (Redis) of a ToolSet: connection changes, and each operation decided in-process instead. */
export type SharedStateRecord =
  | { toolset: string; event: 'up' | 'down' }
  | { toolset: string; event: 'fallback'; operation: 'rate_limit' | 'cache' | 'store' };

/** A tool of a loaded ToolSet: its name becomes a metric label value; its timeout feeds the latency alert. */
export interface ToolInfo {
  name: string;
  timeoutSeconds?: number;
}

export type SpanKind = 'internal' | 'client' | 'server';
export type Attributes = Record<string, string | number | boolean | string[] | undefined>;

export interface SpanHandle {
  setAttributes(attributes: Attributes): void;
  addEvent(name: string, attributes?: Attributes): void;
  /** Starts a child span of this one. */
  child(name: string, kind: SpanKind, attributes?: Attributes): SpanHandle;
  /** Ends the span; an error type marks it failed (`error.type`). */
  end(errorType?: string): void;
  /**
   * The W3C `traceparent` header naming this span, to send upstream so the model server's spans join the
   * trace; undefined when nothing is traced.
   */
  traceparent?(): string | undefined;
}

export interface Telemetry extends TelemetryRecords {
  /**
   * A turn's root span (`invoke_agent {gen_ai.agent.name}`, kind SERVER); `traceparent` is the client's W3C
   * header when it sent one. Children: `chat {model}` (client) per upstream call and `execute_tool {tool}`
   * (internal) per tool call; genai.ts builds their names and attributes.
   */
  startTurn(traceparent: string | undefined, attributes: Attributes): SpanHandle;
  /** Flushes exporters; called on SIGTERM. */
  shutdown(): Promise<void>;
}
