import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import {
  chatResponseAttributes,
  createTelemetry,
  type ProxyTelemetry,
  startChatSpan,
  startToolSpan,
  toolResultAttributes,
  turnAttributes,
} from '../../src/telemetry/index.js';
import {
  DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT,
  GEN_AI_DURATION_BUCKETS,
} from '../../src/telemetry/tracing.js';
import type { Attributes, SpanHandle } from '../../src/telemetry/types.js';
import { OtlpReceiver, type ReceivedSpan, SPAN_KIND } from '../support/otlp-receiver.js';

const CLIENT_TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const CLIENT_SPAN_ID = '00f067aa0ba902b7';
const OTEL_KEYS = [
  'OTEL_EXPORTER_OTLP_ENDPOINT',
  'OTEL_EXPORTER_OTLP_PROTOCOL',
  'OTEL_SERVICE_NAME',
  'OTEL_METRIC_EXPORT_INTERVAL',
  'EARPIECE_OTEL_CAPTURE_CONTENT',
  'OTEL_METRICS_EXPORTER',
  'OTEL_EXPORTER_OTLP_TIMEOUT',
  'OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT',
];

let receiver: OtlpReceiver;
let telemetry: ProxyTelemetry | undefined;

beforeAll(async () => {
  receiver = await OtlpReceiver.start();
});
afterAll(async () => {
  await receiver.close();
});
afterEach(async () => {
  await telemetry?.shutdown();
  telemetry = undefined;
  for (const key of OTEL_KEYS) delete process.env[key];
  receiver.spans.length = 0;
  receiver.histogramPoints.length = 0;
});

async function startOtel(extra: Record<string, string> = {}): Promise<ProxyTelemetry> {
  Object.assign(process.env, {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_SERVICE_NAME: 'earpiece-test',
    ...extra,
  });
  telemetry = await createTelemetry();
  telemetry.toolsetLoaded({
    toolset: 'assistant',
    hash: 'hash-1',
    tools: [
      { name: 'get_weather', timeoutSeconds: 3 },
      { name: 'current_time', timeoutSeconds: 5 },
    ],
  });
  return telemetry;
}

/** One turn as the proxy runs it: a model call asking for two tools, the tools, the answering model call. */
function twoToolTurn(t: ProxyTelemetry): { chatTraceparent: string | undefined } {
  const turn = t.startTurn(`00-${CLIENT_TRACE_ID}-${CLIENT_SPAN_ID}-01`, turnAttributes('assistant'));
  const chat = { model: 'qwen3-8b', serverAddress: '127.0.0.1', serverPort: 8000, stream: true };
  const first = startChatSpan(turn, chat);
  const chatTraceparent = first.traceparent?.();
  first.setAttributes(
    chatResponseAttributes({
      inputTokens: 412,
      outputTokens: 38,
      finishReasons: ['tool_calls'],
      responseId: 'r1',
    }),
  );
  first.end();
  const weather = startToolSpan(turn, {
    name: 'get_weather',
    callId: 'call_1',
    arguments: '{"latitude":48.85,"longitude":2.35}',
  });
  const time = startToolSpan(turn, { name: 'current_time', callId: 'call_2', arguments: '{}' });
  weather.setAttributes(toolResultAttributes('{"temperature_2m":21.5}'));
  weather.end();
  time.end('timeout');
  const second = startChatSpan(turn, chat);
  second.setAttributes(
    chatResponseAttributes({ inputTokens: 480, outputTokens: 21, finishReasons: ['stop'] }),
  );
  second.end();
  // A name the model made up: its span keeps the name, its metric attribute folds into `other`.
  startToolSpan(turn, { name: 'launch_rockets', callId: 'call_3' }).end('unknown_tool');
  turn.end();
  return { chatTraceparent };
}

function byName(spans: ReceivedSpan[], name: string): ReceivedSpan[] {
  return spans.filter((span) => span.name === name);
}

describe('OpenTelemetry', () => {
  test('a two-tool turn exports GenAI spans linked under the client trace', async () => {
    const t = await startOtel();
    expect(t.tracing).toBe(true);
    const { chatTraceparent } = twoToolTurn(t);
    await t.shutdown();
    await receiver.waitFor((r) => r.spans.length >= 6);
    expect(receiver.rejected).toEqual([]);

    const spans = receiver.spans;
    expect(spans.map((span) => span.name).sort()).toEqual([
      'chat qwen3-8b',
      'chat qwen3-8b',
      'execute_tool current_time',
      'execute_tool get_weather',
      'execute_tool launch_rockets',
      'invoke_agent assistant',
    ]);
    for (const span of spans) {
      expect(span.traceId).toBe(CLIENT_TRACE_ID);
      expect(span.serviceName).toBe('earpiece-test');
    }

    const [turn] = byName(spans, 'invoke_agent assistant');
    expect(turn?.parentSpanId).toBe(CLIENT_SPAN_ID);
    expect(turn?.kind).toBe(SPAN_KIND.server);
    expect(turn?.attributes).toMatchObject({
      'gen_ai.operation.name': 'invoke_agent',
      'gen_ai.agent.name': 'assistant',
    });

    const chats = byName(spans, 'chat qwen3-8b');
    for (const chat of chats) {
      expect(chat.parentSpanId).toBe(turn?.spanId);
      expect(chat.kind).toBe(SPAN_KIND.client);
      expect(chat.attributes).toMatchObject({
        'gen_ai.operation.name': 'chat',
        'gen_ai.provider.name': 'openai',
        'gen_ai.request.model': 'qwen3-8b',
        'gen_ai.request.stream': true,
        'server.address': '127.0.0.1',
        'server.port': 8000,
      });
    }
    const first = chats.find((chat) => chat.attributes['gen_ai.response.id'] === 'r1');
    expect(first?.attributes).toMatchObject({
      'gen_ai.usage.input_tokens': 412,
      'gen_ai.usage.output_tokens': 38,
      'gen_ai.response.finish_reasons': ['tool_calls'],
    });
    // The header the proxy sends upstream names the first chat span, so the model server's spans nest under it.
    expect(chatTraceparent).toBe(`00-${CLIENT_TRACE_ID}-${first?.spanId}-01`);

    const [weather] = byName(spans, 'execute_tool get_weather');
    expect(weather?.parentSpanId).toBe(turn?.spanId);
    expect(weather?.kind).toBe(SPAN_KIND.internal);
    expect(weather?.statusCode).toBe(0);
    expect(weather?.attributes).toEqual({
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.tool.name': 'get_weather',
      'gen_ai.tool.call.id': 'call_1',
      'gen_ai.tool.type': 'extension',
    });
    const [time] = byName(spans, 'execute_tool current_time');
    expect(time?.statusCode).toBe(2);
    expect(time?.attributes).toMatchObject({ 'gen_ai.tool.call.id': 'call_2', 'error.type': 'timeout' });
  });

  test('GenAI metrics are exported with second-based buckets and bounded tool names', async () => {
    const t = await startOtel();
    twoToolTurn(t);
    await t.shutdown();
    await receiver.waitFor((r) => r.histogramPoints.some((p) => p.metric === 'gen_ai.execute_tool.duration'));

    const points = (metric: string) => receiver.histogramPoints.filter((p) => p.metric === metric);
    const [operation] = points('gen_ai.client.operation.duration');
    expect(operation).toMatchObject({
      unit: 's',
      count: 2,
      attributes: {
        'gen_ai.operation.name': 'chat',
        'gen_ai.provider.name': 'openai',
        'gen_ai.request.model': 'qwen3-8b',
        'server.address': '127.0.0.1',
        'server.port': 8000,
      },
    });
    expect(operation?.explicitBounds).toEqual(GEN_AI_DURATION_BUCKETS);

    const tokens = points('gen_ai.client.token.usage');
    expect(tokens.map((p) => [p.attributes['gen_ai.token.type'], p.count, p.sum]).sort()).toEqual([
      ['input', 2, 892],
      ['output', 2, 59],
    ]);

    const tools = points('gen_ai.execute_tool.duration');
    expect(tools.every((p) => p.unit === 's')).toBe(true);
    expect(
      tools
        .map((p) => [p.attributes['gen_ai.tool.name'], p.attributes['error.type'] ?? null, p.count])
        .sort(),
    ).toEqual([
      ['current_time', 'timeout', 1],
      ['get_weather', null, 1],
      ['other', 'unknown_tool', 1],
    ]);
    expect(tools[0]?.explicitBounds).toEqual(GEN_AI_DURATION_BUCKETS);
  });

  test('GenAI metrics carry the first 16 model names, and fold later ones into other', async () => {
    const t = await startOtel();
    const turn = t.startTurn(undefined, turnAttributes('assistant'));
    // Request and response names share the 16; a client may send any string of up to 256 characters.
    for (let i = 0; i < 20; i++) {
      const chat = startChatSpan(turn, { model: `model-${i}` });
      chat.setAttributes(chatResponseAttributes({ responseModel: `model-${i}`, finishReasons: ['stop'] }));
      chat.end();
    }
    turn.end();
    await t.shutdown();
    await receiver.waitFor((r) =>
      r.histogramPoints.some((p) => p.metric === 'gen_ai.client.operation.duration'),
    );

    const points = receiver.histogramPoints.filter((p) => p.metric === 'gen_ai.client.operation.duration');
    const byModel = new Map(
      points.map((p) => [
        `${p.attributes['gen_ai.request.model']} ${p.attributes['gen_ai.response.model']}`,
        p.count,
      ]),
    );
    expect(byModel.size).toBe(17);
    for (let i = 0; i < 16; i++) expect(byModel.get(`model-${i} model-${i}`)).toBe(1);
    expect(byModel.get('other other')).toBe(4);
  });

  test('turn records become the GenAI agent metrics, and still reach Prometheus', async () => {
    const t = await startOtel();
    t.turn({
      toolset: 'assistant',
      outcome: 'ok',
      iterations: 2,
      seconds: 0.8,
      timeToFirstContentSeconds: 0.2,
    });
    t.turn({
      toolset: 'assistant',
      outcome: 'timeout',
      iterations: 1,
      seconds: 12,
      timeToFirstContentSeconds: 1,
    });
    expect(await t.metrics()).toMatch(/earpiece_turns_total\{[^}]*outcome="timeout"[^}]*\} 1/);
    await t.shutdown();
    await receiver.waitFor((r) => r.histogramPoints.some((p) => p.metric === 'gen_ai.invoke_agent.duration'));

    const points = (metric: string) =>
      receiver.histogramPoints
        .filter((p) => p.metric === metric)
        .map((p) => [
          p.attributes['error.type'] ?? null,
          p.count,
          p.sum,
          p.unit,
          p.attributes['gen_ai.agent.name'],
        ])
        .sort();
    expect(points('gen_ai.invoke_agent.duration')).toEqual([
      [null, 1, 0.8, 's', 'assistant'],
      ['timeout', 1, 12, 's', 'assistant'],
    ]);
    expect(points('gen_ai.invoke_agent.inference_calls')).toEqual([
      [null, 1, 2, '{call}', 'assistant'],
      ['timeout', 1, 1, '{call}', 'assistant'],
    ]);
  });

  test('tool arguments and results are recorded only with EARPIECE_OTEL_CAPTURE_CONTENT=true', async () => {
    const t = await startOtel({ EARPIECE_OTEL_CAPTURE_CONTENT: 'true' });
    twoToolTurn(t);
    await t.shutdown();
    await receiver.waitFor((r) => r.spans.length >= 6);
    const [weather] = byName(receiver.spans, 'execute_tool get_weather');
    expect(weather?.attributes).toMatchObject({
      'gen_ai.tool.call.arguments': '{"latitude":48.85,"longitude":2.35}',
      'gen_ai.tool.call.result': '{"temperature_2m":21.5}',
    });
  });

  test('a captured argument or result is cut to 16 KiB unless an OTEL_* attribute limit says otherwise', async () => {
    const huge = (t: ProxyTelemetry) => {
      const turn = t.startTurn(undefined, turnAttributes('assistant'));
      const tool = startToolSpan(turn, {
        name: 'get_weather',
        callId: 'call-1',
        type: 'extension',
        arguments: `{"place":"${'x'.repeat(1024 * 1024)}"}`,
      });
      tool.setAttributes(toolResultAttributes('r'.repeat(1024 * 1024)));
      tool.end();
      turn.end();
    };
    const captured = async (extra: Record<string, string>) => {
      const t = await startOtel({ EARPIECE_OTEL_CAPTURE_CONTENT: 'true', ...extra });
      huge(t);
      await t.shutdown();
      await receiver.waitFor((r) => byName(r.spans, 'execute_tool get_weather').length > 0);
      const [span] = byName(receiver.spans, 'execute_tool get_weather');
      receiver.spans.length = 0;
      telemetry = undefined;
      for (const key of OTEL_KEYS) delete process.env[key];
      return [
        span?.attributes['gen_ai.tool.call.arguments'],
        span?.attributes['gen_ai.tool.call.result'],
      ].map((v) => String(v).length);
    };
    expect(await captured({})).toEqual([
      DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT,
      DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    ]);
    expect(await captured({ OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: '100' })).toEqual([100, 100]);
  });

  test('a turn without traceparent starts its own trace', async () => {
    const t = await startOtel();
    // Spans as the proxy may start them by hand: the toolset as `earpiece.toolset`, no provider.
    const turn = t.startTurn(undefined, { 'earpiece.toolset': 'assistant' });
    turn
      .child('chat m', 'client', { 'gen_ai.operation.name': 'chat', 'gen_ai.request.model': 'm' })
      .end('upstream_error');
    turn.end('upstream_error');
    await t.shutdown();
    await receiver.waitFor((r) => r.spans.length >= 2);
    const [root] = byName(receiver.spans, 'invoke_agent assistant');
    const [chat] = byName(receiver.spans, 'chat m');
    expect(root?.parentSpanId).toBeUndefined();
    expect(root?.traceId).not.toBe(CLIENT_TRACE_ID);
    expect(chat?.traceId).toBe(root?.traceId);
    expect(chat?.parentSpanId).toBe(root?.spanId);
    expect(chat?.attributes).toMatchObject({
      'error.type': 'upstream_error',
      'gen_ai.provider.name': 'openai',
    });
    expect(root?.attributes['gen_ai.agent.name']).toBe('assistant');
  });

  test('an unreachable collector is reported through the proxy logger', async () => {
    const lines: { level: number; msg: string }[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => lines.push(JSON.parse(line)) });
    const closed = await OtlpReceiver.start();
    const endpoint = closed.endpoint;
    await closed.close();
    Object.assign(process.env, {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_EXPORTER_OTLP_TIMEOUT: '1000',
    });
    telemetry = await createTelemetry({ logger });
    telemetry.startTurn(undefined, turnAttributes('assistant')).end();
    await telemetry.shutdown();
    expect(lines.some((line) => line.level >= 40 && /ECONNREFUSED|export/i.test(JSON.stringify(line)))).toBe(
      true,
    );
  });

  test('without OTEL_* variables tracing is off and spans are no-ops', async () => {
    telemetry = await createTelemetry();
    expect(telemetry.tracing).toBe(false);
    const turn = telemetry.startTurn(
      `00-${CLIENT_TRACE_ID}-${CLIENT_SPAN_ID}-01`,
      turnAttributes('assistant'),
    );
    expect(startChatSpan(turn, { model: 'm' }).traceparent?.()).toBeUndefined();
  });
});

describe('loading OpenTelemetry', () => {
  // A fresh Node process per case: only there can one see which modules the telemetry loads.
  const probeDir = mkdtempSync(join(tmpdir(), 'earpiece-otel-'));
  afterAll(() => rmSync(probeDir, { recursive: true, force: true }));
  const script = join(probeDir, 'probe.mjs');
  writeFileSync(
    script,
    `import { registerHooks } from 'node:module';
const loaded = new Set();
registerHooks({
  resolve(specifier, context, next) {
    if (specifier.startsWith('@opentelemetry/') && specifier !== '@opentelemetry/api') loaded.add(specifier);
    // The sources import './x.js'; run them as TypeScript without a build.
    if (specifier.startsWith('.') && specifier.endsWith('.js') && context.parentURL?.endsWith('.ts')) {
      return next(specifier.slice(0, -3) + '.ts', context);
    }
    return next(specifier, context);
  },
});
const { createTelemetry } = await import(process.argv[2]);
const telemetry = await createTelemetry();
await telemetry.shutdown();
console.log(JSON.stringify({ tracing: telemetry.tracing, loaded: [...loaded] }));
`,
  );
  const index = resolve('src/telemetry/index.ts');

  /** Whether OpenTelemetry started, and the @opentelemetry packages loaded besides the API (prom-client's). */
  function probe(env: Record<string, string>): { tracing: boolean; loaded: string[] } {
    const clean = Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.startsWith('OTEL_')));
    const run = spawnSync(process.execPath, [script, index], {
      env: { ...clean, OTEL_METRICS_EXPORTER: 'none', ...env },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(run.stderr).not.toMatch(/Error/);
    expect(run.status).toBe(0);
    return JSON.parse(run.stdout.trim().split('\n').at(-1) ?? '{}');
  }

  test('the SDK is not imported unless an OTEL_* variable asks for it', () => {
    expect(probe({ OTEL_METRICS_EXPORTER: '' })).toEqual({ tracing: false, loaded: [] });
    expect(probe({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9' })).toEqual({
      tracing: false,
      loaded: [],
    });
    const on = probe({ OTEL_TRACES_EXPORTER: 'console', OTEL_METRICS_EXPORTER: 'none' });
    expect(on.tracing).toBe(true);
    expect(on.loaded).toContain('@opentelemetry/sdk-node');
  });
});

describe('chat response attributes', () => {
  test("cut the upstream's id and model name, which span names and a metric attribute hold", () => {
    const long = 'm'.repeat(1024 * 1024);
    const attributes = chatResponseAttributes({ responseId: long, responseModel: `${long}x` });
    expect(attributes['gen_ai.response.id']).toHaveLength(256);
    expect(attributes['gen_ai.response.model']).toBe('m'.repeat(256));
    expect(chatResponseAttributes({ responseModel: 'qwen3-8b' })['gen_ai.response.model']).toBe('qwen3-8b');
  });
});

describe('tool span', () => {
  test("cuts the model's tool name and call id, which the span name holds too", () => {
    const started: Array<{ name: string; attributes: Attributes | undefined }> = [];
    const turn = {
      child: (name: string, _kind: string, attributes?: Attributes) => {
        started.push({ name, attributes });
        return turn;
      },
    } as unknown as SpanHandle;
    const long = 'n'.repeat(1024 * 1024);
    startToolSpan(turn, { name: long, callId: long });
    expect(started[0]?.name).toBe(`execute_tool ${'n'.repeat(256)}`);
    expect(started[0]?.attributes?.['gen_ai.tool.name']).toHaveLength(256);
    expect(started[0]?.attributes?.['gen_ai.tool.call.id']).toHaveLength(256);
  });
});
