/**
 * The Grafana dashboard the chart ships, read as data: its panels' PromQL and its variables; and the metric
 * names the operator exposes, which the dashboard and the alert rules may query.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { OperatorMetrics } from '../../src/telemetry/operator-metrics.js';
import { parseExposition } from './prometheus.js';

export const DASHBOARD_PATH = resolve('charts/earpiece/dashboards/earpiece.json');

export interface DashboardTarget {
  refId: string;
  expr: string;
  datasource?: { type: string; uid: string };
}

export interface DashboardPanel {
  id: number;
  type: string;
  title: string;
  gridPos: { h: number; w: number; x: number; y: number };
  datasource?: { type: string; uid: string };
  targets?: DashboardTarget[];
  panels?: DashboardPanel[];
}

export interface DashboardVariable {
  name: string;
  type: string;
  query: string | { query: string };
  allValue?: string;
}

export interface Dashboard {
  uid: string;
  panels: DashboardPanel[];
  templating: { list: DashboardVariable[] };
}

export function loadDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as Dashboard;
}

/** Every panel, those inside collapsed rows included. */
export function allPanels(dashboard: Dashboard): DashboardPanel[] {
  return dashboard.panels.flatMap((panel) => [panel, ...(panel.panels ?? [])]);
}

/** Each query of each panel, labelled for failure messages. */
export function panelQueries(dashboard: Dashboard): { where: string; expr: string }[] {
  return allPanels(dashboard).flatMap((panel) =>
    (panel.targets ?? []).map((target) => ({
      where: `panel "${panel.title}" ${target.refId}`,
      expr: target.expr,
    })),
  );
}

/**
 * The expression as Grafana sends it with every variable at "All" (each variable's allValue) and the rate
 * interval given, here as Prometheus evaluates it.
 */
export function substitute(expr: string, dashboard: Dashboard, rateInterval: string): string {
  let out = expr.replaceAll('$__rate_interval', rateInterval).replaceAll('$__interval', rateInterval);
  for (const variable of dashboard.templating.list) {
    if (variable.type !== 'query') continue;
    out = out.replaceAll(`\${${variable.name}}`, variable.allValue ?? '.*');
    out = out.replaceAll(`$${variable.name}`, variable.allValue ?? '.*');
  }
  return out;
}

/** The metric and label of a `label_values(metric{…}, label)` variable query. */
export function labelValuesQuery(variable: DashboardVariable): { match: string; label: string } {
  const query = typeof variable.query === 'string' ? variable.query : variable.query.query;
  const parsed = /^label_values\((.+),\s*(\w+)\)$/.exec(query);
  if (!parsed) throw new Error(`variable ${variable.name}: not a label_values() query: ${query}`);
  return { match: parsed[1] as string, label: parsed[2] as string };
}

/** The sample names the operator exposes once every kind of record was made. */
export async function operatorSampleNames(): Promise<string[]> {
  const m = new OperatorMetrics();
  m.injection('injected');
  m.reconcile('ok', 0.01);
  m.leading(true);
  m.sidecarProblems([{ namespace: 'voice', reason: 'ImagePullBackOff' }]);
  m.webhookReview('mutate', 0.002);
  m.watchToolSets(() => [{ namespace: 'voice', ready: true, behind: true, operator: 'earpiece' }]);
  m.watchCertificate(() => new Date());
  return parseExposition(await m.metrics()).map((s) => s.name);
}
