import fc from 'fast-check';
import { describe, expect, test } from 'vitest';
import { createTelemetry, type ProxyTelemetry } from '../../src/telemetry/index.js';
import { parseExposition, prometheusBinary, promtool, type Sample } from '../support/prometheus.js';

const TOOLS = [
  { name: 'get_weather', timeoutSeconds: 3 },
  { name: 'current_time', timeoutSeconds: 5 },
];

async function loaded(): Promise<ProxyTelemetry> {
  const telemetry = await createTelemetry();
  telemetry.toolsetLoaded({ toolset: 'assistant', hash: 'hash-1', tools: TOOLS });
  return telemetry;
}

async function samples(telemetry: ProxyTelemetry, name: string): Promise<Sample[]> {
  return parseExposition(await telemetry.metrics()).filter((s) => s.name === name);
}

function value(list: Sample[], labels: Record<string, string>): number | undefined {
  return list.find((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

/** Every kind of record the proxy makes, once or more. */
function recordEverything(t: ProxyTelemetry): void {
  t.toolCall({ toolset: 'assistant', tool: 'get_weather', outcome: 'ok', seconds: 0.21 });
  t.toolCall({ toolset: 'assistant', tool: 'get_weather', outcome: 'cache_hit', seconds: 0.0002 });
  t.toolCall({ toolset: 'assistant', tool: 'current_time', outcome: 'timeout', seconds: 5.001 });
  t.toolCall({ toolset: 'assistant', tool: 'ask_oracle', outcome: 'unknown_tool', seconds: 0 });
  t.turn({
    toolset: 'assistant',
    outcome: 'ok',
    iterations: 2,
    timeToFirstContentSeconds: 0.31,
    seconds: 1.4,
  });
  t.turn({ toolset: 'assistant', outcome: 'cancelled', iterations: 1, timeToFirstContentSeconds: undefined });
  t.upstreamCall({ toolset: 'assistant', timeToFirstTokenSeconds: 0.045 });
  t.stream({ change: 'opened' });
  t.stream({ change: 'opened' });
  t.stream({ change: 'closed' });
  t.upstreamCall({ toolset: 'assistant', refusal: 'tools_unsupported' });
  t.memory({ toolset: 'assistant', spliced: 2 });
  t.memory({ toolset: 'assistant', entries: 7 });
  t.toolsetReloadFailed({ toolset: 'assistant' });
}

describe('Prometheus metrics', () => {
  const promtoolPath = prometheusBinary('promtool');

  test.skipIf(!promtoolPath)('the scraped text passes promtool check metrics', async () => {
    const t = await loaded();
    recordEverything(t);
    const text = await t.metrics();
    const { status, output } = promtool(promtoolPath!, ['check', 'metrics'], text);
    expect(output).toBe('');
    expect(status).toBe(0);
    expect(t.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    // Node and process metrics come along.
    expect(text).toMatch(/^process_resident_memory_bytes /m);
    expect(text).toMatch(/^nodejs_eventloop_lag_p99_seconds /m);
  });

  test('records each call, turn and stream under the DESIGN names', async () => {
    const t = await loaded();
    recordEverything(t);
    const calls = await samples(t, 'earpiece_tool_calls_total');
    expect(value(calls, { tool: 'get_weather', outcome: 'ok' })).toBe(1);
    expect(value(calls, { tool: 'get_weather', outcome: 'cache_hit' })).toBe(1);
    expect(value(calls, { tool: 'current_time', outcome: 'timeout' })).toBe(1);
    const durations = await samples(t, 'earpiece_tool_call_duration_seconds_count');
    expect(value(durations, { tool: 'current_time', outcome: 'timeout' })).toBe(1);
    const turns = await samples(t, 'earpiece_turns_total');
    expect(value(turns, { toolset: 'assistant', outcome: 'ok' })).toBe(1);
    expect(value(turns, { toolset: 'assistant', outcome: 'cancelled' })).toBe(1);
    expect(value(await samples(t, 'earpiece_turn_iterations_sum'), { toolset: 'assistant' })).toBe(3);
    expect(value(await samples(t, 'earpiece_turn_duration_seconds_count'), { outcome: 'ok' })).toBe(1);
    expect(value(await samples(t, 'earpiece_time_to_first_content_seconds_count'), {})).toBe(1);
    expect(value(await samples(t, 'earpiece_upstream_time_to_first_token_seconds_sum'), {})).toBe(0.045);
    expect(value(await samples(t, 'earpiece_active_streams'), {})).toBe(1);
    expect(value(await samples(t, 'earpiece_client_disconnects_total'), { toolset: 'assistant' })).toBe(1);
    expect(value(await samples(t, 'earpiece_upstream_tools_unsupported_total'), {})).toBe(1);
    expect(value(await samples(t, 'earpiece_memory_splices_total'), {})).toBe(1);
    expect(value(await samples(t, 'earpiece_memory_spliced_exchanges_total'), {})).toBe(2);
    expect(value(await samples(t, 'earpiece_memory_entries'), {})).toBe(7);
    expect(value(await samples(t, 'earpiece_toolset_reload_failures_total'), {})).toBe(1);
    expect(await samples(t, 'earpiece_tool_timeout_seconds')).toEqual([
      {
        name: 'earpiece_tool_timeout_seconds',
        labels: { toolset: 'assistant', tool: 'get_weather' },
        value: 3,
      },
      {
        name: 'earpiece_tool_timeout_seconds',
        labels: { toolset: 'assistant', tool: 'current_time' },
        value: 5,
      },
    ]);
  });

  test('a loaded ToolSet has zero series for every turn and tool outcome before any traffic', async () => {
    const t = await loaded();
    const turns = await samples(t, 'earpiece_turns_total');
    expect(turns.map((s) => s.labels.outcome).sort()).toEqual([
      'cancelled',
      'error',
      'max_iterations',
      'ok',
      'timeout',
    ]);
    expect(turns.every((s) => s.value === 0)).toBe(true);
    const calls = await samples(t, 'earpiece_tool_calls_total');
    expect(calls).toHaveLength(TOOLS.length * 8);
    expect(value(calls, { tool: 'get_weather', outcome: 'rate_limited' })).toBe(0);
    expect(value(await samples(t, 'earpiece_client_disconnects_total'), { toolset: 'assistant' })).toBe(0);
    expect(value(await samples(t, 'earpiece_toolset_reload_failures_total'), { toolset: 'assistant' })).toBe(
      0,
    );
  });

  test('the shared state: up while connected, and each operation decided in the sidecar', async () => {
    const t = await loaded();
    t.sharedState({ toolset: 'assistant', event: 'down' });
    expect(value(await samples(t, 'earpiece_shared_state_up'), { toolset: 'assistant' })).toBe(0);
    t.sharedState({ toolset: 'assistant', event: 'fallback', operation: 'rate_limit' });
    t.sharedState({ toolset: 'assistant', event: 'fallback', operation: 'cache' });
    t.sharedState({ toolset: 'assistant', event: 'fallback', operation: 'cache' });
    t.sharedState({ toolset: 'assistant', event: 'up' });
    expect(value(await samples(t, 'earpiece_shared_state_up'), { toolset: 'assistant' })).toBe(1);
    const fallbacks = await samples(t, 'earpiece_shared_state_fallbacks_total');
    expect(value(fallbacks, { toolset: 'assistant', operation: 'cache' })).toBe(2);
    expect(value(fallbacks, { toolset: 'assistant', operation: 'rate_limit' })).toBe(1);
  });

  test('tool names outside the ToolSet, and unknown toolsets, fold into "other"', async () => {
    const t = await loaded();
    recordEverything(t);
    t.toolCall({ toolset: 'assistant', tool: 'rm_rf', outcome: 'error', seconds: 0.1 });
    t.turn({ toolset: 'not-loaded', outcome: 'ok', iterations: 1, timeToFirstContentSeconds: 0.2 });
    t.toolCall({ toolset: 'not-loaded', tool: 'get_weather', outcome: 'ok', seconds: 0.1 });
    const calls = await samples(t, 'earpiece_tool_calls_total');
    expect(value(calls, { toolset: 'assistant', tool: 'other', outcome: 'unknown_tool' })).toBe(1);
    expect(value(calls, { toolset: 'assistant', tool: 'other', outcome: 'error' })).toBe(1);
    expect(value(calls, { toolset: 'other', tool: 'other', outcome: 'ok' })).toBe(1);
    expect(calls.some((s) => s.labels.tool === 'ask_oracle' || s.labels.tool === 'rm_rf')).toBe(false);
    expect(value(await samples(t, 'earpiece_turns_total'), { toolset: 'other', outcome: 'ok' })).toBe(1);
  });

  test('whatever names the model invents, the tool label stays within the ToolSet plus "other"', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.string(), fc.constantFrom('ok', 'error', 'unknown_tool', 'invalid_arguments')), {
          maxLength: 50,
        }),
        async (calls) => {
          const t = await loaded();
          for (const [tool, outcome] of calls) {
            t.toolCall({ toolset: 'assistant', tool, outcome, seconds: 0.01 });
          }
          const labels = new Set((await samples(t, 'earpiece_tool_calls_total')).map((s) => s.labels.tool));
          for (const label of labels) expect(['get_weather', 'current_time', 'other']).toContain(label);
        },
      ),
      { numRuns: 30 },
    );
  });

  test('without a declared tool list, names the proxy ran are kept and invented ones are not', async () => {
    const t = await createTelemetry();
    t.toolsetLoaded({ toolset: 'assistant', hash: 'hash-1' });
    t.toolCall({ toolset: 'assistant', tool: 'home_turn_on', outcome: 'ok', seconds: 0.1 });
    t.toolCall({ toolset: 'assistant', tool: 'made_up', outcome: 'unknown_tool', seconds: 0 });
    const calls = await samples(t, 'earpiece_tool_calls_total');
    expect(calls.map((s) => [s.labels.tool, s.labels.outcome])).toEqual([
      ['home_turn_on', 'ok'],
      ['other', 'unknown_tool'],
    ]);
  });

  test('the series of tools no longer offered go, so names that come and go cannot pile up', async () => {
    const t = await createTelemetry();
    for (let list = 0; list < 20; list++) {
      const tools = Array.from({ length: 10 }, (_, i) => ({ name: `tool_${list}_${i}`, timeoutSeconds: 5 }));
      t.toolsetLoaded({ toolset: 'assistant', hash: 'hash-1', tools });
      t.toolCall({ toolset: 'assistant', tool: `tool_${list}_0`, outcome: 'ok', seconds: 0.1 });
    }
    const tools = new Set(
      [
        ...(await samples(t, 'earpiece_tool_calls_total')),
        ...(await samples(t, 'earpiece_tool_call_duration_seconds_count')),
      ].map((s) => s.labels.tool),
    );
    expect([...tools].sort()).toEqual(Array.from({ length: 10 }, (_, i) => `tool_19_${i}`).sort());
  });

  test('a reload replaces the toolset info and the timeouts of removed tools', async () => {
    const t = await loaded();
    t.toolsetLoaded({
      toolset: 'assistant',
      hash: 'hash-2',
      tools: [{ name: 'get_weather', timeoutSeconds: 2 }],
    });
    expect(await samples(t, 'earpiece_toolset_info')).toEqual([
      { name: 'earpiece_toolset_info', labels: { toolset: 'assistant', hash: 'hash-2' }, value: 1 },
    ]);
    expect(await samples(t, 'earpiece_tool_timeout_seconds')).toEqual([
      {
        name: 'earpiece_tool_timeout_seconds',
        labels: { toolset: 'assistant', tool: 'get_weather' },
        value: 2,
      },
    ]);
    // current_time is gone from the ToolSet: a late call to it is counted as "other".
    t.toolCall({ toolset: 'assistant', tool: 'current_time', outcome: 'ok', seconds: 0.1 });
    expect(
      value(await samples(t, 'earpiece_tool_calls_total'), {
        tool: 'other',
        outcome: 'ok',
        toolset: 'assistant',
      }),
    ).toBe(1);
  });

  test('buckets resolve 5 ms to 60 s for tools, and share vLLM TTFT edges from 0.01 s to 0.1 s', async () => {
    const t = await loaded();
    recordEverything(t);
    const edges = async (name: string) =>
      [...new Set((await samples(t, name)).map((s) => s.labels.le))]
        .filter((le) => le !== '+Inf')
        .map(Number);
    const tool = await edges('earpiece_tool_call_duration_seconds_bucket');
    expect(tool[0]).toBe(0.005);
    expect(tool.at(-1)).toBe(60);
    const vllmEdges = [0.01, 0.02, 0.04, 0.06, 0.08, 0.1];
    for (const name of [
      'earpiece_upstream_time_to_first_token_seconds_bucket',
      'earpiece_time_to_first_content_seconds_bucket',
    ]) {
      const ttft = await edges(name);
      expect(ttft.filter((le) => le >= 0.01 && le <= 0.1)).toEqual(vllmEdges);
    }
  });
});
