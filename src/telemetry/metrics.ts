/**
 * The proxy's Prometheus metrics (prom-client), served on the metrics port. Names follow DESIGN.md
 * "Observability"; label values are bounded: tool and toolset names come only from loaded ToolSets, anything
 * else is counted under `other`, so a model inventing tool names cannot grow the series count.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from './process-metrics.js';
import type {
  DeferredRecord,
  MemoryRecord,
  SharedStateRecord,
  StreamRecord,
  TelemetryRecords,
  ToolInfo,
  ToolOutcomeLabel,
  ToolRecord,
  ToolSetRecord,
  ToolSetReloadFailureRecord,
  TurnOutcome,
  TurnRecord,
  UpstreamCallRecord,
} from './types.js';

/** The label value that every name outside the loaded ToolSets folds into. */
export const OTHER = 'other';

export const TOOL_OUTCOMES: readonly ToolOutcomeLabel[] = [
  'ok',
  'error',
  'timeout',
  'invalid_arguments',
  'unknown_tool',
  'cancelled',
  'cache_hit',
  'rate_limited',
];
export const TURN_OUTCOMES: readonly TurnOutcome[] = [
  'ok',
  'error',
  'timeout',
  'cancelled',
  'max_iterations',
];

/** Tool calls: a cache hit (sub-millisecond) up to a slow tool near a 60 s timeout. */
export const TOOL_SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60];
/**
 * Time to first token/content. The edges from 0.01 s to 10 s are vLLM's own
 * (`vllm:time_to_first_token_seconds`), so quantiles of the proxy's and vLLM's histograms compare.
 */
export const FIRST_TOKEN_BUCKETS = [
  0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40,
];
/** Whole turns: up to several model calls and tools, bounded by `turnTimeout` (default 20 s). */
export const TURN_SECONDS_BUCKETS = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120,
];
export const ITERATION_BUCKETS = [0, 1, 2, 3, 4, 5, 6, 8, 10];

/** Most distinct toolsets, and tools per toolset without a declared list, before names fold into `other`. */
const MAX_TOOLSETS = 32;
const MAX_UNDECLARED_TOOLS = 64;

export interface PromMetricsOptions {
  /** Toolset names known before any is loaded. */
  toolsets?: readonly string[];
  /** Adds Node.js and process metrics (default true). */
  defaultMetrics?: boolean;
}

/** The earpiece_* registry and the recording side of the Telemetry interface. */
export class PromMetrics implements TelemetryRecords {
  readonly registry = new Registry();
  private readonly toolsets = new Set<string>();
  /** Declared tools per toolset (name → timeout); absent when the toolset declared none. */
  private readonly declaredTools = new Map<string, Map<string, ToolInfo>>();
  private readonly undeclaredTools = new Map<string, Set<string>>();
  private readonly loadedHash = new Map<string, string>();

  private readonly toolCalls: Counter<'toolset' | 'tool' | 'outcome'>;
  private readonly toolSeconds: Histogram<'toolset' | 'tool' | 'outcome'>;
  private readonly toolTimeout: Gauge<'toolset' | 'tool'>;
  private readonly turns: Counter<'toolset' | 'outcome'>;
  private readonly turnIterations: Histogram<'toolset'>;
  private readonly turnSeconds: Histogram<'toolset' | 'outcome'>;
  private readonly firstContent: Histogram<'toolset'>;
  private readonly upstreamFirstToken: Histogram<'toolset'>;
  private readonly activeStreams: Gauge;
  /** Read when scraped: the body budget's share in use (server.ts hands over how to read it). */
  #bodyBytesInFlight: () => number = () => 0;
  private readonly disconnects: Counter<'toolset'>;
  private readonly toolsUnsupported: Counter<'toolset'>;
  private readonly rateLimited: Counter<'toolset'>;
  private readonly deferredCalls: Counter<'toolset' | 'outcome'>;
  private readonly memorySplices: Counter<'toolset'>;
  private readonly memorySplicedExchanges: Counter<'toolset'>;
  private readonly memoryEntryCount: Gauge<'toolset'>;
  private readonly toolsetInfo: Gauge<'toolset' | 'hash'>;
  private readonly reloadFailures: Counter<'toolset'>;
  private readonly sharedStateUp: Gauge<'toolset'>;
  private readonly sharedStateFallbacks: Counter<'toolset' | 'operation'>;

  constructor(options: PromMetricsOptions = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectProcessMetrics(this.registry);
    this.toolCalls = new Counter({
      name: 'earpiece_tool_calls_total',
      help: "Tool calls by toolset, tool and outcome (cache_hit: answered from the result cache; rate_limited: refused by the tool's rate limit).",
      labelNames: ['toolset', 'tool', 'outcome'],
      registers,
    });
    this.toolSeconds = new Histogram({
      name: 'earpiece_tool_call_duration_seconds',
      help: 'Duration of tool calls, from the model asking to the result being ready.',
      labelNames: ['toolset', 'tool', 'outcome'],
      buckets: TOOL_SECONDS_BUCKETS,
      registers,
    });
    this.toolTimeout = new Gauge({
      name: 'earpiece_tool_timeout_seconds',
      help: 'The configured timeout of each tool of a loaded ToolSet.',
      labelNames: ['toolset', 'tool'],
      registers,
    });
    this.turns = new Counter({
      name: 'earpiece_turns_total',
      help: 'Chat completion turns by outcome (error: the upstream failed, or the model gave nothing to speak, and the error message was spoken).',
      labelNames: ['toolset', 'outcome'],
      registers,
    });
    this.turnIterations = new Histogram({
      name: 'earpiece_turn_iterations',
      help: 'Upstream model calls per turn.',
      labelNames: ['toolset'],
      buckets: ITERATION_BUCKETS,
      registers,
    });
    this.turnSeconds = new Histogram({
      name: 'earpiece_turn_duration_seconds',
      help: 'Duration of whole turns, all model calls and tools included.',
      labelNames: ['toolset', 'outcome'],
      buckets: TURN_SECONDS_BUCKETS,
      registers,
    });
    this.firstContent = new Histogram({
      name: 'earpiece_time_to_first_content_seconds',
      help: 'From request arrival to the first speakable content sent to the client (filler included).',
      labelNames: ['toolset'],
      buckets: FIRST_TOKEN_BUCKETS,
      registers,
    });
    this.upstreamFirstToken = new Histogram({
      name: 'earpiece_upstream_time_to_first_token_seconds',
      help: 'From sending a request upstream to its first streamed token, per upstream call.',
      labelNames: ['toolset'],
      buckets: FIRST_TOKEN_BUCKETS,
      registers,
    });
    this.activeStreams = new Gauge({
      name: 'earpiece_active_streams',
      help: 'Streaming responses currently open to clients.',
      registers,
    });
    const bodyBytes = () => this.#bodyBytesInFlight();
    new Gauge({
      name: 'earpiece_request_body_bytes_in_flight',
      help: 'Bytes of request bodies the chat port holds now, from their first byte until their answer ends; past --max-body-bytes-in-flight a request is answered 503 (ERP_OVERLOADED).',
      registers,
      collect() {
        this.set(bodyBytes());
      },
    });
    this.disconnects = new Counter({
      name: 'earpiece_client_disconnects_total',
      help: 'Clients that hung up before their turn ended (barge-in).',
      labelNames: ['toolset'],
      registers,
    });
    this.rateLimited = new Counter({
      name: 'earpiece_upstream_rate_limited_total',
      help: 'Model requests the upstream refused with 429; the turn spoke voice.errorMessage and was not retried.',
      labelNames: ['toolset'],
      registers,
    });
    this.deferredCalls = new Counter({
      name: 'earpiece_deferred_calls_total',
      help: 'Tool calls still running at their deferAfter, by what became of them: delivered (the late result reached the next request), expired, failed, cancelled, or discarded (no room in tool memory: turned off by a reload, or the result larger than memory.maxBytes).',
      labelNames: ['toolset', 'outcome'],
      registers,
    });
    this.toolsUnsupported = new Counter({
      name: 'earpiece_upstream_tools_unsupported_total',
      help: 'Turns resent without tools because the upstream rejected them (no tool-call parser).',
      labelNames: ['toolset'],
      registers,
    });
    this.memorySplices = new Counter({
      name: 'earpiece_memory_splices_total',
      help: 'Requests into which remembered tool exchanges were put back.',
      labelNames: ['toolset'],
      registers,
    });
    this.memorySplicedExchanges = new Counter({
      name: 'earpiece_memory_spliced_exchanges_total',
      help: 'Remembered tool exchanges put back into requests.',
      labelNames: ['toolset'],
      registers,
    });
    this.memoryEntryCount = new Gauge({
      name: 'earpiece_memory_entries',
      help: 'Conversations with remembered tool exchanges.',
      labelNames: ['toolset'],
      registers,
    });
    this.toolsetInfo = new Gauge({
      name: 'earpiece_toolset_info',
      help: 'The loaded ToolSet and the hash of its spec (value 1).',
      labelNames: ['toolset', 'hash'],
      registers,
    });
    this.reloadFailures = new Counter({
      name: 'earpiece_toolset_reload_failures_total',
      help: 'Edits of the ToolSet file that were not loaded (invalid, a value not resolvable here, tools that could not start); the last good ToolSet still serves and /readyz names the last failure.',
      labelNames: ['toolset'],
      registers,
    });
    this.sharedStateUp = new Gauge({
      name: 'earpiece_shared_state_up',
      help: "Whether the ToolSet's shared state (Redis) is connected (1) or tool calls fall back to this sidecar's cache and limits (0). Absent without spec.sharedState.",
      labelNames: ['toolset'],
      registers,
    });
    this.sharedStateFallbacks = new Counter({
      name: 'earpiece_shared_state_fallbacks_total',
      help: 'Tool call operations decided in this sidecar because the shared state did not answer within 50 ms (rate_limit, cache, store).',
      labelNames: ['toolset', 'operation'],
      registers,
    });
    for (const name of options.toolsets ?? []) this.addToolset(name);
  }

  sharedState(record: SharedStateRecord): void {
    const toolset = this.toolsetLabel(record.toolset);
    if (record.event === 'fallback') {
      this.sharedStateFallbacks.inc({ toolset, operation: record.operation });
      return;
    }
    this.sharedStateUp.set({ toolset }, record.event === 'up' ? 1 : 0);
  }

  /** Where the request body budget's bytes in use are read, each time the metrics are scraped. */
  watchBodyBytesInFlight(read: () => number): void {
    this.#bodyBytesInFlight = read;
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  toolsetLoaded({ toolset, hash, tools }: ToolSetRecord): void {
    const name = this.addToolset(toolset);
    if (name === OTHER) return;
    const previousHash = this.loadedHash.get(name);
    if (previousHash !== undefined && previousHash !== hash)
      this.toolsetInfo.remove({ toolset: name, hash: previousHash });
    this.loadedHash.set(name, hash);
    this.toolsetInfo.set({ toolset: name, hash }, 1);
    if (tools === undefined) return;

    const declared = new Map(tools.map((tool) => [tool.name, tool]));
    for (const tool of this.declaredTools.get(name)?.keys() ?? []) {
      this.toolTimeout.remove({ toolset: name, tool });
      if (declared.has(tool)) continue;
      // A tool no longer offered takes its series along: the names an MCP server lists come and go.
      for (const outcome of TOOL_OUTCOMES) {
        this.toolCalls.remove({ toolset: name, tool, outcome });
        this.toolSeconds.remove({ toolset: name, tool, outcome });
      }
    }
    this.declaredTools.set(name, declared);
    for (const tool of declared.values()) {
      if (tool.timeoutSeconds !== undefined) {
        this.toolTimeout.set({ toolset: name, tool: tool.name }, tool.timeoutSeconds);
      }
      for (const outcome of TOOL_OUTCOMES) this.toolCalls.inc({ toolset: name, tool: tool.name, outcome }, 0);
    }
  }

  toolsetReloadFailed(record: ToolSetReloadFailureRecord): void {
    this.reloadFailures.inc({ toolset: this.toolsetLabel(record.toolset) });
  }

  toolCall(record: ToolRecord): void {
    const toolset = this.toolsetLabel(record.toolset);
    const labels = {
      toolset,
      tool: this.toolLabel(toolset, record.tool, record.outcome),
      outcome: record.outcome,
    };
    this.toolCalls.inc(labels);
    this.toolSeconds.observe(labels, record.seconds);
  }

  turn(record: TurnRecord): void {
    const toolset = this.toolsetLabel(record.toolset);
    this.turns.inc({ toolset, outcome: record.outcome });
    if (record.outcome === 'cancelled') this.disconnects.inc({ toolset });
    this.turnIterations.observe({ toolset }, record.iterations);
    if (record.seconds !== undefined)
      this.turnSeconds.observe({ toolset, outcome: record.outcome }, record.seconds);
    if (record.timeToFirstContentSeconds !== undefined) {
      this.firstContent.observe({ toolset }, record.timeToFirstContentSeconds);
    }
  }

  deferredCall(record: DeferredRecord): void {
    this.deferredCalls.inc({ toolset: this.toolsetLabel(record.toolset), outcome: record.outcome });
  }

  upstreamCall(record: UpstreamCallRecord): void {
    const labels = { toolset: this.toolsetLabel(record.toolset) };
    if (record.timeToFirstTokenSeconds !== undefined)
      this.upstreamFirstToken.observe(labels, record.timeToFirstTokenSeconds);
    if (record.refusal === 'tools_unsupported') this.toolsUnsupported.inc(labels);
    if (record.refusal === 'rate_limited') this.rateLimited.inc(labels);
  }

  stream(record: StreamRecord): void {
    if (record.change === 'opened') this.activeStreams.inc();
    else this.activeStreams.dec();
  }

  memory(record: MemoryRecord): void {
    const labels = { toolset: this.toolsetLabel(record.toolset) };
    if (record.spliced !== undefined) {
      this.memorySplices.inc(labels);
      this.memorySplicedExchanges.inc(labels, record.spliced);
    }
    if (record.entries !== undefined) this.memoryEntryCount.set(labels, record.entries);
  }

  /** The label value for a tool name: declared names as they are, anything else `other`. */
  toolLabel(toolset: string, tool: string, outcome?: ToolOutcomeLabel): string {
    if (toolset === OTHER) return OTHER;
    const declared = this.declaredTools.get(toolset);
    if (declared !== undefined) return declared.has(tool) ? tool : OTHER;
    // No declared list: accept the names the proxy ran, but never a name the model made up.
    if (outcome === 'unknown_tool') return OTHER;
    let seen = this.undeclaredTools.get(toolset);
    if (seen === undefined) {
      seen = new Set();
      this.undeclaredTools.set(toolset, seen);
    }
    if (seen.has(tool)) return tool;
    if (seen.size >= MAX_UNDECLARED_TOOLS) return OTHER;
    seen.add(tool);
    return tool;
  }

  /** Whether any loaded ToolSet has a tool of this name (or, without a declared list, ran one). */
  knownTool(tool: string): boolean {
    for (const declared of this.declaredTools.values()) if (declared.has(tool)) return true;
    for (const seen of this.undeclaredTools.values()) if (seen.has(tool)) return true;
    return false;
  }

  /** The label value for a toolset name: loaded or announced names as they are, anything else `other`. */
  toolsetLabel(toolset: string): string {
    return this.toolsets.has(toolset) ? toolset : OTHER;
  }

  private addToolset(toolset: string): string {
    if (!this.toolsets.has(toolset)) {
      if (this.toolsets.size >= MAX_TOOLSETS) return OTHER;
      this.toolsets.add(toolset);
      // Zero series from the start, so rates and "no traffic" alerts see the toolset before its first turn.
      for (const outcome of TURN_OUTCOMES) this.turns.inc({ toolset, outcome }, 0);
      this.disconnects.inc({ toolset }, 0);
      this.toolsUnsupported.inc({ toolset }, 0);
      this.rateLimited.inc({ toolset }, 0);
      this.memorySplices.inc({ toolset }, 0);
      this.reloadFailures.inc({ toolset }, 0);
    }
    return toolset;
  }
}
