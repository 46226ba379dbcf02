/**
 * The Node.js and process metrics (prom-client's defaults) that the proxy and the operator both serve.
 * The gauges named like counters (`nodejs_active_*_total`) fail `promtool check metrics`; the per-type
 * gauges beside them hold the same, so they are left out.
 */
import { collectDefaultMetrics, type Registry } from 'prom-client';

export const LINT_FAILING_DEFAULTS = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
] as const;

export function collectProcessMetrics(registry: Registry): void {
  // The event-loop lag histogram samples on a timer: every 10 ms by default, 100 wake-ups a second that
  // cost an idle proxy more CPU than all else it does; every 100 ms the lag percentiles still show.
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 100 });
  for (const name of LINT_FAILING_DEFAULTS) registry.removeSingleMetric(name);
}
