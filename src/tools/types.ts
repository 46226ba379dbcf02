/**
 * The seam between the tool loop (src/proxy) and the executors. Executors get arguments and a signal
 * and return a value or throw; outcome labels, truncation, caching and timing live in call.ts.
 */
import type { ToolOutcomeLabel } from '../telemetry/types.js';
import type { ResolvedTool, VoiceText } from '../toolset/defaults.js';
import type { ToolErrorCode } from './errors.js';

export type { ToolOutcomeLabel };

export interface ToolContext {
  /** Aborted on timeout, on turn deadline, and on client hang-up unless the tool has onInterrupt: finish. */
  signal: AbortSignal;
  /** Epoch milliseconds by which the call must be done (the tool timeout). */
  deadline: number;
  toolName: string;
}

export interface ToolExecutor {
  /** Returns a string (sent as is) or a JSON value (serialized). Throws ToolError for a failure the model may see. */
  run(args: Record<string, unknown>, ctx: ToolContext): Promise<unknown>;
}

/** A failure whose message is safe and useful for the model (no secrets, no stack). */
export class ToolError extends Error {
  constructor(
    message: string,
    readonly code: ToolErrorCode = 'ERP_TOOL_FAILED',
  ) {
    super(message);
  }
}

/** The abort reason of a call's own timeout, told apart from the caller leaving. */
export class CallTimeout extends Error {}

/** A run refused by the tool's rate limit. */
export class RateLimited extends Error {
  readonly code: ToolErrorCode = 'ERP_TOOL_RATE_LIMITED';
}

/** One tool as offered to the model, with the executor that runs it. */
export interface ProvidedTool {
  name: string;
  description: string;
  /** JSON Schema of the arguments (type: object). */
  parameters: Record<string, unknown>;
  executor: ToolExecutor;
  config: ResolvedTool;
}

export type ProviderState = 'connected' | 'connecting' | 'down';

/** One `spec.tools` entry. Most provide one tool; an mcp entry provides what its server lists. */
export interface ToolProvider {
  readonly kind: ResolvedTool['kind'];
  tools(): ProvidedTool[];
  /** Connection state for /readyz (mcp servers); absent for stateless executors. */
  status?(): { url: string; state: ProviderState; lastError?: string; tools: number };
  /** What an operator should know about this entry (a risky setting, a cut list), for the log and /readyz. */
  warnings?(): string[];
  /** Subscribes to list changes (mcp notifications/tools/list_changed, reconnects). */
  onChange?(listener: () => void): void;
  close?(): Promise<void>;
}

/** OpenAI `tools[]` entry. */
export interface ToolDefinition {
  type: 'function';
  function: { name: string; description?: string; parameters: Record<string, unknown> };
}

export interface ToolCall {
  id: string;
  name: string;
  /** Raw argument text as the model produced it. */
  arguments: string;
}

export interface ToolOutcome {
  call: ToolCall;
  /** The `tool` message content for the model, already cut to maxResultBytes. */
  content: string;
  outcome: ToolOutcomeLabel;
  seconds: number;
  /** False for tools with `memory: false`: the result must not outlive the turn. */
  remember: boolean;
}

/** A tool whose calls are deferred when they run long (its `deferAfter`). */
export interface Deferrable {
  afterMs: number;
  definition: string;
}

/** What the tool loop needs from the tools side. */
export interface ToolRunner {
  /** Tool definitions to offer, given the text of the last user messages (for `when.keywords`). */
  offered(recentUserText: readonly string[]): ToolDefinition[];
  /** Whether a name is one of the ToolSet's tools (else it may be a client tool). */
  has(name: string): boolean;
  /** The filler configured for a tool: undefined = use voice.filler, "" = none. */
  filler(name: string): VoiceText | undefined;
  /**
   * How a call of this tool may be deferred (undefined: it is awaited to its end): after how long the model
   * gets a pending result (`afterMs`), and the hash of the tool's definition, since a later call joins a
   * deferred run only on the same definition.
   */
  deferral(name: string): Deferrable | undefined;
  /** The executor kind of a tool (http, mcp, sql, builtin), for telemetry. */
  kind(name: string): ResolvedTool['kind'] | undefined;
  /** Runs one call end to end. Never throws: every failure is an outcome with a short error content. */
  call(call: ToolCall, signal: AbortSignal): Promise<ToolOutcome>;
}

/** What a provider factory gets besides its tool entry. */
export interface ProviderOptions {
  env: NodeJS.ProcessEnv;
  logger: import('../telemetry/log.js').Logger;
}

/** `createMcpProvider` (mcp.ts) and `createSqlProvider` (sql.ts) have this shape; registry.ts imports them lazily. */
export type ProviderFactory = (tool: ResolvedTool, options: ProviderOptions) => ToolProvider;
