import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from 'vitest';
import { parse, stringify } from 'yaml';
import { createTelemetry } from '../../src/telemetry/index.js';
import {
  allPanels,
  labelValuesQuery,
  loadDashboard,
  operatorSampleNames,
  panelQueries,
  substitute,
} from '../support/dashboard.js';
import { KubeMetrics } from '../support/kube-metrics.js';
import { parseExposition, prometheusBinary, promtool } from '../support/prometheus.js';
import { VLLM_METRIC_NAMES } from '../support/vllm-metrics.js';

const dashboard = loadDashboard();
/** Grafana's reference to the datasource variable. */
const DATASOURCE = ['$', '{datasource}'].join('');

/** The sample names of kube-state-metrics and cAdvisor about the sidecars (their stand-in's). */
async function kubeNames(): Promise<string[]> {
  const kube = new KubeMetrics();
  const pod = { namespace: 'voice', pod: 'p', memoryLimitBytes: 1, workingSetBytes: 1 };
  kube.pod({ ...pod, native: true });
  kube.pod({ ...pod, pod: 'q', native: false });
  kube.restarted({ ...pod, native: true }, 'OOMKilled');
  kube.restarted({ ...pod, pod: 'q', native: false }, 'OOMKilled');
  const target = await kube.listen();
  try {
    return parseExposition(await (await fetch(`http://${target}/metrics`)).text()).map((s) => s.name);
  } finally {
    await kube.close();
  }
}

/** The sample names the proxy exposes once every kind of record was made. */
async function exposedNames(): Promise<Set<string>> {
  const t = await createTelemetry();
  t.toolsetLoaded({ toolset: 'assistant', hash: 'h', tools: [{ name: 'get_weather', timeoutSeconds: 3 }] });
  t.toolCall({ toolset: 'assistant', tool: 'get_weather', outcome: 'ok', seconds: 0.1 });
  t.turn({ toolset: 'assistant', outcome: 'ok', iterations: 2, timeToFirstContentSeconds: 0.2, seconds: 1 });
  t.upstreamCall({ toolset: 'assistant', timeToFirstTokenSeconds: 0.05 });
  t.memory({ toolset: 'assistant', spliced: 1 });
  t.memory({ toolset: 'assistant', entries: 1 });
  t.upstreamCall({ toolset: 'assistant', refusal: 'rate_limited' });
  t.deferredCall({ toolset: 'assistant', outcome: 'delivered' });
  t.sharedState({ toolset: 'assistant', event: 'up' });
  t.sharedState({ toolset: 'assistant', event: 'fallback', operation: 'cache' });
  t.toolsetReloadFailed({ toolset: 'assistant' });
  return new Set([
    ...parseExposition(await t.metrics()).map((s) => s.name),
    ...(await operatorSampleNames()),
    ...(await kubeNames()),
  ]);
}

describe('Grafana dashboard', () => {
  test('every panel queries the datasource variable, and the filters are there', () => {
    const variables = dashboard.templating.list;
    expect(variables.map((v) => [v.name, v.type])).toEqual([
      ['datasource', 'datasource'],
      ['cluster', 'query'],
      ['namespace', 'query'],
      ['toolset', 'query'],
      ['tool', 'query'],
    ]);
    for (const variable of variables.filter((v) => v.type === 'query')) {
      expect(() => labelValuesQuery(variable)).not.toThrow();
    }
    const panels = allPanels(dashboard).filter((p) => p.type !== 'row');
    expect(new Set(allPanels(dashboard).map((p) => p.id)).size).toBe(allPanels(dashboard).length);
    for (const panel of panels) {
      expect(panel.datasource?.uid, panel.title).toBe(DATASOURCE);
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets ?? []) expect(target.datasource?.uid, panel.title).toBe(DATASOURCE);
    }
  });

  test('panels do not overlap on the 24-column grid', () => {
    const cells = new Map<string, string>();
    for (const panel of allPanels(dashboard)) {
      const { x, y, w, h } = panel.gridPos;
      expect(x + w, panel.title).toBeLessThanOrEqual(24);
      for (let row = y; row < y + h; row++) {
        for (let col = x; col < x + w; col++) {
          const key = `${row},${col}`;
          expect(cells.get(key), `${panel.title} overlaps`).toBeUndefined();
          cells.set(key, panel.title);
        }
      }
    }
  });

  test('the panels the observability design asks for are there', () => {
    const exprs = panelQueries(dashboard).map((q) => q.expr);
    const has = (pattern: RegExp) => exprs.some((e) => pattern.test(e));
    expect(
      has(
        /histogram_quantile\(0\.99, sum by \(tool, le\) \(rate\(earpiece_tool_call_duration_seconds_bucket/,
      ),
    ).toBe(true);
    expect(has(/outcome="cache_hit"/)).toBe(true);
    expect(has(/outcome="timeout"/)).toBe(true);
    expect(has(/earpiece_turn_iterations/)).toBe(true);
    expect(has(/earpiece_time_to_first_content_seconds_bucket/)).toBe(true);
    expect(has(/earpiece_upstream_time_to_first_token_seconds_bucket/)).toBe(true);
    expect(has(/vllm:time_to_first_token_seconds_bucket/)).toBe(true);
    expect(has(/earpiece_active_streams/)).toBe(true);
    expect(has(/earpiece_client_disconnects_total/)).toBe(true);
    // The operator row, the sidecars' health and the model server beside them.
    const titles = allPanels(dashboard).map((p) => p.title);
    expect(titles).toEqual(
      expect.arrayContaining([
        'Operator',
        'Reconciles by result',
        'Injections by outcome',
        'Pods with sidecar problems by reason',
        'Webhook latency',
        'Webhook certificate expires in',
        'Turn duration',
        'Sidecar memory against its limit',
        'Event-loop lag (p99)',
        'vLLM time to first token',
        'Tool calls refused by their rate limit',
        'Shared state (Redis)',
        'Deferred calls by outcome',
        'Model server refusals (429)',
        'ToolSet edits not loaded',
      ]),
    );
    expect(has(/outcome="rate_limited"/)).toBe(true);
    expect(has(/earpiece_shared_state_up/)).toBe(true);
    expect(has(/earpiece_shared_state_fallbacks_total/)).toBe(true);
    expect(has(/earpiece_deferred_calls_total/)).toBe(true);
    expect(has(/earpiece_upstream_rate_limited_total/)).toBe(true);
    expect(has(/earpiece_toolset_reload_failures_total/)).toBe(true);
    expect(has(/earpiece_sidecar_problem_pods/)).toBe(true);
    expect(has(/earpiece_webhook_certificate_expiry_timestamp_seconds/)).toBe(true);
    expect(has(/container_memory_working_set_bytes.*kube_pod_init_container_resource_limits/)).toBe(true);
    // Every query honours the cluster variable.
    for (const { where, expr } of panelQueries(dashboard))
      expect(expr, where).toContain('cluster=~"$cluster"');
  });

  test('every metric a panel names is one the proxy, the operator, vLLM or kube-state-metrics exposes', async () => {
    const names = await exposedNames();
    for (const { where, expr } of panelQueries(dashboard)) {
      for (const [metric] of expr.matchAll(
        /\b(?:earpiece_[a-z_]+|vllm:[a-z_:]+|kube_[a-z_]+|container_[a-z_]+|nodejs_[a-z0-9_]+)/g,
      )) {
        if (metric.startsWith('vllm:')) expect(VLLM_METRIC_NAMES, where).toContain(metric);
        else expect(names.has(metric), `${where}: ${metric}`).toBe(true);
      }
    }
  });

  test('tool latency panels leave out the calls the latency alert leaves out (cache hits, rate-limited refusals)', async () => {
    const rules = (
      parse(await readFile('charts/earpiece/rules/earpiece.rules.yaml', 'utf8')) as {
        groups: { rules: { alert: string; expr: string }[] }[];
      }
    ).groups.flatMap((g) => g.rules);
    // The outcome matchers of each selector of the duration histogram in an expression.
    const outcomes = (expr: string) =>
      [...expr.matchAll(/earpiece_tool_call_duration_seconds_bucket\{([^}]*)\}/g)].map((m) =>
        m[1]!
          .split(',')
          .map((matcher) => matcher.trim())
          .filter((matcher) => matcher.startsWith('outcome')),
      );
    const [alert] = outcomes(rules.find((r) => r.alert === 'EarpieceToolLatencyNearTimeout')!.expr);
    expect(alert).toEqual(['outcome!~"cache_hit|rate_limited"']);
    const queries = panelQueries(dashboard).filter((q) =>
      q.expr.includes('earpiece_tool_call_duration_seconds'),
    );
    expect(queries.length).toBeGreaterThanOrEqual(4);
    for (const { where, expr } of queries)
      for (const panel of outcomes(expr)) expect(panel, where).toEqual(alert);
  });

  const path = prometheusBinary('promtool');
  test.skipIf(!path)('every query is valid PromQL once the variables are filled in', async () => {
    // promtool parses rule expressions without a server: each query becomes a recording rule.
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-dashboard-'));
    try {
      const rules = panelQueries(dashboard).map(({ expr }, i) => ({
        record: `dashboard:query_${i}`,
        expr: substitute(expr, dashboard, '1m'),
      }));
      const file = join(dir, 'queries.yaml');
      await writeFile(file, stringify({ groups: [{ name: 'dashboard', rules }] }));
      const { status, output } = promtool(path!, ['check', 'rules', file]);
      expect(output).toContain(`SUCCESS: ${rules.length} rules found`);
      expect(status).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
