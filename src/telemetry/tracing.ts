/**
 * OpenTelemetry for the proxy, following the GenAI semantic conventions: a turn span, `chat {model}` (CLIENT)
 * per upstream call and `execute_tool {tool}` per tool call, and the metrics `gen_ai.client.operation.duration`,
 * `gen_ai.client.token.usage` and `gen_ai.execute_tool.duration`, derived from those spans when they end,
 * and the metrics read from the proxy's telemetry records (GenAiRecords), as the Prometheus side reads them.
 *
 * Only index.ts imports this module, dynamically, when an OTEL_* variable asks for it; the SDK (with all
 * its exporters) is large and an idle proxy without OpenTelemetry must stay small. Everything is configured
 * by the standard OTEL_* variables, read by @opentelemetry/sdk-node.
 */
import {
  type Context,
  context,
  DiagLogLevel,
  defaultTextMapGetter,
  defaultTextMapSetter,
  diag,
  type Histogram,
  type Meter,
  metrics,
  type Attributes as OtelAttributes,
  SpanKind as OtelSpanKind,
  propagation,
  ROOT_CONTEXT,
  type Span,
  SpanStatusCode,
  type Tracer,
  trace,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { DEFAULT_PROVIDER } from './genai.js';
import type { Logger } from './log.js';
import type {
  Attributes,
  DeferredRecord,
  MemoryRecord,
  SharedStateRecord,
  SpanHandle,
  SpanKind,
  StreamRecord,
  TelemetryRecords,
  ToolRecord,
  ToolSetRecord,
  ToolSetReloadFailureRecord,
  TurnRecord,
  UpstreamCallRecord,
} from './types.js';

/** Bucket advice of the GenAI conventions for counts of calls per agent invocation. */
export const GEN_AI_CALLS_BUCKETS = [1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50];

/** Bucket advice of the GenAI conventions for durations in seconds (the SDK default is shaped for ms). */
export const GEN_AI_DURATION_BUCKETS = [
  0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
export const GEN_AI_TOKEN_BUCKETS = [
  1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
];

/** Opt-in attributes that carry conversation content: dropped unless content capture is on. */
const CONTENT_ATTRIBUTES = new Set([
  'gen_ai.tool.call.arguments',
  'gen_ai.tool.call.result',
  'gen_ai.input.messages',
  'gen_ai.output.messages',
  'gen_ai.system_instructions',
  'gen_ai.tool.definitions',
]);

/**
 * The longest attribute value a span keeps when OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT and
 * OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT are unset (the SDK's own default is no limit). With content capture on, a
 * tool's arguments or result may be a MiB, and the export queue holds up to 2,048 spans.
 */
export const DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT = 16 * 1024;

/** The SDK reads the OTEL_* limits itself; a limit passed here would override them, so one is passed only when none is set. */
function spanLimits(env: NodeJS.ProcessEnv): { attributeValueLengthLimit?: number } {
  const set = [env.OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT, env.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT].some(
    (v) => v !== undefined && v.trim() !== '',
  );
  return set ? {} : { attributeValueLengthLimit: DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT };
}

/** Attributes that the GenAI metrics carry (a subset of the span's; all low-cardinality). */
const CHAT_METRIC_ATTRIBUTES = [
  'gen_ai.operation.name',
  'gen_ai.provider.name',
  'gen_ai.request.model',
  'gen_ai.response.model',
  'server.address',
  'server.port',
];
const TOOL_METRIC_ATTRIBUTES = ['gen_ai.operation.name', 'gen_ai.tool.name', 'gen_ai.tool.type'];
/** Model names are the client's to choose (any string): past this many distinct ones, metrics say `other`. */
const MAX_METRIC_MODELS = 16;
const MODEL_METRIC_ATTRIBUTES = ['gen_ai.request.model', 'gen_ai.response.model'] as const;

const KINDS: Record<SpanKind, OtelSpanKind> = {
  internal: OtelSpanKind.INTERNAL,
  client: OtelSpanKind.CLIENT,
  server: OtelSpanKind.SERVER,
};

export interface TracingOptions {
  /** Record tool arguments, results and messages (EARPIECE_OTEL_CAPTURE_CONTENT=true). */
  captureContent: boolean;
  /** Whether a tool name is one of the loaded ToolSets' (metric attributes fold the others into `other`). */
  isKnownTool: (name: string) => boolean;
  /** The value that unknown tool names fold into. */
  other: string;
  /** Receives the SDK's own warnings (a collector that cannot be reached), unless OTEL_LOG_LEVEL is set. */
  logger?: Logger | undefined;
}

export class Tracing {
  private readonly sdk: NodeSDK;
  private readonly tracer: Tracer;
  private readonly operationDuration: Histogram;
  private readonly tokenUsage: Histogram;
  private readonly toolDuration: Histogram;
  /** The incoming `traceparent` is honoured whatever OTEL_PROPAGATORS says. */
  readonly traceContext = new W3CTraceContextPropagator();
  /** The proxy's telemetry records, as OpenTelemetry metrics. */
  readonly records: TelemetryRecords;

  readonly options: TracingOptions;
  /** The model names the metrics carry as they are: the first MAX_METRIC_MODELS seen. */
  readonly #models = new Set<string>();

  constructor(options: TracingOptions) {
    this.options = options;
    const logger = options.logger;
    if (logger !== undefined && process.env.OTEL_LOG_LEVEL === undefined) {
      const log =
        (level: 'error' | 'warn' | 'info' | 'debug') =>
        (message: string, ...args: unknown[]) =>
          logger[level]({ otel: args.length > 0 ? args.map(String) : undefined }, message);
      diag.setLogger(
        {
          error: log('error'),
          warn: log('warn'),
          info: log('info'),
          debug: log('debug'),
          verbose: log('debug'),
        },
        DiagLogLevel.WARN,
      );
    }
    // No log records are emitted through OpenTelemetry (logs go to stdout as JSON), so no log exporter.
    this.sdk = new NodeSDK({ logRecordProcessors: [], spanLimits: spanLimits(process.env) });
    this.sdk.start();
    this.tracer = trace.getTracer('earpiece');
    const meter = metrics.getMeter('earpiece');
    this.operationDuration = meter.createHistogram('gen_ai.client.operation.duration', {
      description: 'GenAI operation duration.',
      unit: 's',
      advice: { explicitBucketBoundaries: GEN_AI_DURATION_BUCKETS },
    });
    this.tokenUsage = meter.createHistogram('gen_ai.client.token.usage', {
      description: 'Number of input and output tokens used.',
      unit: '{token}',
      advice: { explicitBucketBoundaries: GEN_AI_TOKEN_BUCKETS },
    });
    this.toolDuration = meter.createHistogram('gen_ai.execute_tool.duration', {
      description: 'Duration of tool executions.',
      unit: 's',
      advice: { explicitBucketBoundaries: GEN_AI_DURATION_BUCKETS },
    });
    this.records = new GenAiRecords(meter);
  }

  startTurn(traceparent: string | undefined, attributes: Attributes): SpanHandle {
    const parent =
      traceparent === undefined
        ? ROOT_CONTEXT
        : this.traceContext.extract(ROOT_CONTEXT, { traceparent }, defaultTextMapGetter);
    // The agent is the ToolSet: the proxy names it either way.
    const agent = attributes['gen_ai.agent.name'] ?? attributes['earpiece.toolset'];
    const name = typeof agent === 'string' ? `invoke_agent ${agent}` : 'invoke_agent';
    return this.start(
      name,
      'server',
      { 'gen_ai.operation.name': 'invoke_agent', 'gen_ai.agent.name': agent, ...attributes },
      parent,
    );
  }

  start(name: string, kind: SpanKind, attributes: Attributes, parent: Context): SpanHandle {
    const clean = this.clean(attributes);
    // A required attribute of chat spans and their metrics; OpenAI's API is what every upstream speaks.
    if (clean['gen_ai.operation.name'] === 'chat') clean['gen_ai.provider.name'] ??= DEFAULT_PROVIDER;
    const span = this.tracer.startSpan(name, { kind: KINDS[kind], attributes: clean }, parent);
    return new OtelSpanHandle(this, span, clean);
  }

  clean(attributes: Attributes | undefined): OtelAttributes {
    const clean: OtelAttributes = {};
    for (const [key, value] of Object.entries(attributes ?? {})) {
      if (value === undefined) continue;
      if (!this.options.captureContent && CONTENT_ATTRIBUTES.has(key)) continue;
      clean[key] = value;
    }
    return clean;
  }

  /** Records the GenAI metrics of a chat or execute_tool span as it ends. */
  recordEnd(attributes: OtelAttributes, seconds: number, errorType: string | undefined): void {
    const operation = attributes['gen_ai.operation.name'];
    if (operation === 'execute_tool') {
      const metricAttributes = pick(attributes, TOOL_METRIC_ATTRIBUTES, errorType);
      const tool = metricAttributes['gen_ai.tool.name'];
      if (typeof tool === 'string' && !this.options.isKnownTool(tool)) {
        metricAttributes['gen_ai.tool.name'] = this.options.other;
      }
      this.toolDuration.record(seconds, metricAttributes);
    } else if (operation === 'chat') {
      const metricAttributes = pick(attributes, CHAT_METRIC_ATTRIBUTES, errorType);
      for (const key of MODEL_METRIC_ATTRIBUTES) {
        const model = metricAttributes[key];
        if (typeof model === 'string') metricAttributes[key] = this.#metricModel(model);
      }
      this.operationDuration.record(seconds, metricAttributes);
      for (const [type, key] of [
        ['input', 'gen_ai.usage.input_tokens'],
        ['output', 'gen_ai.usage.output_tokens'],
      ] as const) {
        const tokens = attributes[key];
        if (typeof tokens === 'number') {
          this.tokenUsage.record(tokens, { ...metricAttributes, 'gen_ai.token.type': type });
        }
      }
    }
  }

  #metricModel(model: string): string {
    if (this.#models.has(model)) return model;
    if (this.#models.size >= MAX_METRIC_MODELS) return this.options.other;
    this.#models.add(model);
    return model;
  }

  /**
   * Exports what is buffered and stops; the global API is released so a later start can register again.
   * A collector that cannot take the last export is logged, never thrown: the proxy is stopping anyway.
   */
  async shutdown(): Promise<void> {
    try {
      await this.sdk.shutdown();
    } catch (err) {
      this.options.logger?.warn(
        { err: (err as Error).message },
        'OpenTelemetry: the last export failed while shutting down.',
      );
    } finally {
      trace.disable();
      metrics.disable();
      context.disable();
      propagation.disable();
      diag.disable();
    }
  }
}

/**
 * The records that the GenAI conventions have a metric for; the others have none on this side. A turn is
 * one agent invocation: `gen_ai.invoke_agent.duration` and `gen_ai.invoke_agent.inference_calls`.
 */
class GenAiRecords implements TelemetryRecords {
  readonly #agentDuration: Histogram;
  readonly #inferenceCalls: Histogram;

  constructor(meter: Meter) {
    this.#agentDuration = meter.createHistogram('gen_ai.invoke_agent.duration', {
      description: 'Duration of an agent invocation.',
      unit: 's',
      advice: { explicitBucketBoundaries: GEN_AI_DURATION_BUCKETS },
    });
    this.#inferenceCalls = meter.createHistogram('gen_ai.invoke_agent.inference_calls', {
      description: 'Number of inference calls made in an agent invocation.',
      unit: '{call}',
      advice: { explicitBucketBoundaries: GEN_AI_CALLS_BUCKETS },
    });
  }

  turn(record: TurnRecord): void {
    const attributes: OtelAttributes = {
      'gen_ai.operation.name': 'invoke_agent',
      'gen_ai.agent.name': record.toolset,
    };
    // As on the turn span: a turn that ran out of iterations still answered.
    if (record.outcome !== 'ok' && record.outcome !== 'max_iterations')
      attributes['error.type'] = record.outcome;
    if (record.seconds !== undefined) this.#agentDuration.record(record.seconds, attributes);
    this.#inferenceCalls.record(record.iterations, attributes);
  }

  toolCall(_record: ToolRecord): void {}
  upstreamCall(_record: UpstreamCallRecord): void {}
  stream(_record: StreamRecord): void {}
  memory(_record: MemoryRecord): void {}
  toolsetLoaded(_record: ToolSetRecord): void {}
  toolsetReloadFailed(_record: ToolSetReloadFailureRecord): void {}
  sharedState(_record: SharedStateRecord): void {}
  deferredCall(_record: DeferredRecord): void {}
}

class OtelSpanHandle implements SpanHandle {
  private readonly started = performance.now();
  private ended = false;

  private readonly tracing: Tracing;
  private readonly span: Span;
  /** What the span was given, kept for the metrics recorded at its end. */
  private readonly attributes: OtelAttributes;

  constructor(tracing: Tracing, span: Span, attributes: OtelAttributes) {
    this.tracing = tracing;
    this.span = span;
    this.attributes = attributes;
  }

  setAttributes(attributes: Attributes): void {
    const clean = this.tracing.clean(attributes);
    Object.assign(this.attributes, clean);
    this.span.setAttributes(clean);
  }

  addEvent(name: string, attributes?: Attributes): void {
    this.span.addEvent(name, this.tracing.clean(attributes));
  }

  child(name: string, kind: SpanKind, attributes?: Attributes): SpanHandle {
    return this.tracing.start(name, kind, attributes ?? {}, trace.setSpan(ROOT_CONTEXT, this.span));
  }

  traceparent(): string | undefined {
    const carrier: Record<string, string> = {};
    this.tracing.traceContext.inject(trace.setSpan(ROOT_CONTEXT, this.span), carrier, defaultTextMapSetter);
    return carrier.traceparent;
  }

  end(errorType?: string): void {
    if (this.ended) return;
    this.ended = true;
    if (errorType !== undefined) {
      this.span.setAttribute('error.type', errorType);
      this.span.setStatus({ code: SpanStatusCode.ERROR });
    }
    this.tracing.recordEnd(this.attributes, (performance.now() - this.started) / 1000, errorType);
    this.span.end();
  }
}

function pick(
  attributes: OtelAttributes,
  keys: readonly string[],
  errorType: string | undefined,
): OtelAttributes {
  const picked: OtelAttributes = {};
  for (const key of keys) if (attributes[key] !== undefined) picked[key] = attributes[key];
  if (errorType !== undefined) picked['error.type'] = errorType;
  return picked;
}
