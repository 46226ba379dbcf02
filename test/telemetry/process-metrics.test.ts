import { Registry } from 'prom-client';
import { describe, expect, test } from 'vitest';
import { OperatorMetrics } from '../../src/telemetry/operator-metrics.js';
import { collectProcessMetrics, LINT_FAILING_DEFAULTS } from '../../src/telemetry/process-metrics.js';
import { prometheusBinary, promtool } from '../support/prometheus.js';

describe('process metrics', () => {
  const promtoolPath = prometheusBinary('promtool');

  test('come with Node.js and process metrics, without the gauges named like counters', async () => {
    const registry = new Registry();
    collectProcessMetrics(registry);
    const text = await registry.metrics();
    expect(text).toMatch(/^process_resident_memory_bytes /m);
    expect(text).toMatch(/^nodejs_eventloop_lag_p99_seconds /m);
    expect(text).toMatch(/^nodejs_active_resources\{type=/m);
    for (const name of LINT_FAILING_DEFAULTS) expect(text).not.toMatch(new RegExp(`^${name} `, 'm'));
  });

  test.skipIf(!promtoolPath)("the operator's scraped text passes promtool check metrics", async () => {
    const metrics = new OperatorMetrics();
    metrics.injection('injected');
    metrics.reconcile('ok', 0.02);
    metrics.uninjectedPods(1);
    const text = await metrics.metrics();
    expect(text).toMatch(/^process_cpu_user_seconds_total /m);
    const { status, output } = promtool(promtoolPath!, ['check', 'metrics'], text);
    expect(output).toBe('');
    expect(status).toBe(0);
  });
});
