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
  | 'cache_hit';

export type TurnOutcome = 'ok' | 'error' | 'timeout' | 'cancelled' | 'max_iterations';

/**
 * What became of a deferred call (one still running at its tool's deferAfter): its late result was spliced into
 * the conversation's next request (`delivered`), or it was dropped because it timed out (`expired`), failed
 * (`failed`) or was stopped by the user's barge-in (`cancelled`).
 */
export type DeferredOutcome = 'delivered' | 'expired' | 'failed' | 'cancelled';

export interface ToolRecord {
  toolset: string;
  tool: string;
  outcome: ToolOutcomeLabel;
  seconds: number;
}

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

export interface Telemetry {
  /**
   * A turn's root span (`invoke_agent {gen_ai.agent.name}`, kind SERVER); `traceparent` is the client's W3C
   * header when it sent one. Children: `chat {model}` (client) per upstream call and `execute_tool {tool}`
   * (internal) per tool call; genai.ts builds their names and attributes.
   */
  startTurn(traceparent: string | undefined, attributes: Attributes): SpanHandle;
  toolCall(record: ToolRecord): void;
  turn(record: TurnRecord): void;
  upstreamTimeToFirstToken(toolset: string, seconds: number): void;
  streamOpened(): void;
  streamClosed(): void;
  clientDisconnected(toolset: string): void;
  upstreamToolsUnsupported(toolset: string): void;
  /**
   * A ToolSet was loaded or reloaded. `tools` are the only tool names used as label values (others fold into
   * `other`); call again when the list changes (an MCP server connects or lists new tools).
   */
  toolsetLoaded(toolset: string, hash: string, tools?: readonly ToolInfo[]): void;
  memorySpliced(toolset: string, exchanges: number): void;
  memoryEntries(toolset: string, entries: number): void;
  deferredCall(toolset: string, outcome: DeferredOutcome): void;
  /** The upstream answered 429 (a hosted model's rate limit): the turn spoke voice.errorMessage, no retry. */
  upstreamRateLimited(toolset: string): void;
  /** Flushes exporters; called on SIGTERM. */
  shutdown(): Promise<void>;
}
