import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';
import { stringify } from 'yaml';
import { prometheusBinary, promtool } from '../support/prometheus.js';

const RULES = resolve('charts/earpiece/rules/earpiece.rules.yaml');
const ns = 'voice';

/** One alert case for `promtool test rules`: series sampled every minute, the alerts expected at a time. */
interface AlertCase {
  series: Record<string, string>;
  alert: string;
  at: string;
  /** Labels of each alert expected, and its rendered summary. */
  expected: { labels: Record<string, string>; summary: string }[];
}

/** The descriptions as Prometheus renders them (the summaries, with their values, are in each case). */
const descriptions = new Map<string, (labels: Record<string, string>) => string>([
  [
    'EarpieceToolErrorRatioHigh',
    (l) =>
      `More than 10% of the calls of tool ${l.tool} (${l.namespace}/${l.toolset}) ended in an error or a timeout over the last 5 minutes. The model answers with an apology instead; check the service behind the tool and the proxy's logs (code ERP_TOOL_*).`,
  ],
  [
    'EarpieceToolLatencyNearTimeout',
    (l) =>
      `The 95th percentile duration of tool ${l.tool} (${l.namespace}/${l.toolset}) is 4.861s, above 80% of its timeout. Calls are about to time out, and the user waits in silence meanwhile; speed up the tool, cache it, or raise its timeout.`,
  ],
  [
    'EarpieceUpstreamFailures',
    (l) =>
      `The LLM server behind the earpiece proxy (${l.namespace}/${l.toolset}) failed more than 5% of turns over the last 5 minutes; users hear the error message. Check the vLLM pods and their logs.`,
  ],
  [
    'EarpieceNoTraffic',
    (l) =>
      `earpiece proxies of ${l.namespace}/${l.toolset} are running, but no chat turn reached them in 30 minutes. If users are talking, Unmute is not pointed at the sidecar: check KYUTAI_LLM_URL of the backend container (the webhook sets it to http://127.0.0.1:8095).`,
  ],
  [
    'EarpieceSharedStateDown',
    (l) =>
      `Sidecars of ${l.namespace}/${l.toolset} fall back to their own tool cache and rate limits: voice turns go on (each call waits at most 50 ms on Redis), but each sidecar now allows a tool's whole quota on its own and pays for lookups the others made. Check Redis and the sidecars' /readyz (sharedState.lastError).`,
  ],
]);

/** Runs the cases through promtool's rule unit tests: the real rule engine, on synthetic series. */
async function runCases(
  path: string,
  cases: AlertCase[],
): Promise<{ status: number | null; output: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-rules-'));
  try {
    const file = join(dir, 'rules.test.yaml');
    await writeFile(
      file,
      stringify({
        rule_files: [RULES],
        evaluation_interval: '1m',
        tests: cases.map((c) => ({
          interval: '1m',
          input_series: Object.entries(c.series).map(([series, values]) => ({ series, values })),
          alert_rule_test: [
            {
              eval_time: c.at,
              alertname: c.alert,
              exp_alerts: c.expected.map(({ labels, summary }) => ({
                exp_labels: labels,
                exp_annotations: { summary, description: descriptions.get(c.alert)?.(labels) },
              })),
            },
          ],
        })),
      }),
    );
    return promtool(path, ['test', 'rules', file]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('alert rules', () => {
  const path = prometheusBinary('promtool');

  test.skipIf(!path)('the rule file passes promtool check rules', () => {
    const { status, output } = promtool(path!, ['check', 'rules', RULES]);
    expect(output).toContain('SUCCESS: 5 rules found');
    expect(status).toBe(0);
  });

  test.skipIf(!path)('each alert fires on the condition it names and stays quiet otherwise', async () => {
    const calls = (tool: string, outcome: string) =>
      `earpiece_tool_calls_total{namespace="${ns}",toolset="assistant",tool="${tool}",outcome="${outcome}"}`;
    const bucket = (tool: string, le: string) =>
      `earpiece_tool_call_duration_seconds_bucket{namespace="${ns}",toolset="assistant",tool="${tool}",outcome="ok",le="${le}"}`;
    const timeout = (tool: string) =>
      `earpiece_tool_timeout_seconds{namespace="${ns}",toolset="assistant",tool="${tool}"}`;
    const turns = (toolset: string, outcome: string) =>
      `earpiece_turns_total{namespace="${ns}",toolset="${toolset}",outcome="${outcome}"}`;
    const info = (toolset: string) =>
      `earpiece_toolset_info{namespace="${ns}",toolset="${toolset}",hash="h"}`;

    const { status, output } = await runCases(path!, [
      {
        // weather: 2 failures in 10 calls a minute; time: always fine.
        series: {
          [calls('get_weather', 'ok')]: '0+8x30',
          [calls('get_weather', 'error')]: '0+1x30',
          [calls('get_weather', 'timeout')]: '0+1x30',
          [calls('get_weather', 'cancelled')]: '0+50x30',
          [calls('current_time', 'ok')]: '0+10x30',
          [calls('current_time', 'error')]: '0x30',
        },
        alert: 'EarpieceToolErrorRatioHigh',
        at: '20m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, toolset: 'assistant', tool: 'get_weather' },
            summary: 'Tool get_weather of ToolSet assistant fails 20% of its calls',
          },
        ],
      },
      {
        // Only 5% failing: under the 10% threshold.
        series: { [calls('get_weather', 'ok')]: '0+19x30', [calls('get_weather', 'error')]: '0+1x30' },
        alert: 'EarpieceToolErrorRatioHigh',
        at: '20m',
        expected: [],
      },
      {
        // slow_search: most calls between 2.5 s and 5 s against a 3 s timeout; get_weather: all under 0.25 s.
        series: {
          [bucket('slow_search', '1')]: '0+1x30',
          [bucket('slow_search', '2.5')]: '0+2x30',
          [bucket('slow_search', '5')]: '0+20x30',
          [bucket('slow_search', '+Inf')]: '0+20x30',
          [timeout('slow_search')]: '3x30',
          [bucket('get_weather', '0.25')]: '0+20x30',
          [bucket('get_weather', '5')]: '0+20x30',
          [bucket('get_weather', '+Inf')]: '0+20x30',
          [timeout('get_weather')]: '3x30',
        },
        alert: 'EarpieceToolLatencyNearTimeout',
        at: '25m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, toolset: 'assistant', tool: 'slow_search' },
            summary: 'p95 latency of tool slow_search is within 20% of its timeout',
          },
        ],
      },
      {
        series: {
          [turns('assistant', 'ok')]: '0+18x30',
          [turns('assistant', 'error')]: '0+2x30',
          [turns('quiet', 'ok')]: '0+20x30',
          [turns('quiet', 'error')]: '0x30',
        },
        alert: 'EarpieceUpstreamFailures',
        at: '15m',
        expected: [
          {
            labels: { severity: 'critical', namespace: ns, toolset: 'assistant' },
            summary: '10% of turns of ToolSet assistant fail upstream',
          },
        ],
      },
      {
        // Both ToolSets' proxies are up; only "busy" gets turns.
        series: {
          [info('busy')]: '1x70',
          [info('idle')]: '1x70',
          [turns('busy', 'ok')]: '0+3x70',
          [turns('idle', 'ok')]: '0x70',
        },
        alert: 'EarpieceNoTraffic',
        at: '65m',
        expected: [
          {
            labels: { severity: 'info', namespace: ns, toolset: 'idle' },
            summary: 'No turns through the earpiece proxies of ToolSet idle for 30 minutes',
          },
        ],
      },
      {
        // Two of three sidecars of "fleet" lost Redis; "steady" is connected throughout.
        series: {
          [`earpiece_shared_state_up{namespace="${ns}",toolset="fleet",pod="a"}`]: '1x5 0x20',
          [`earpiece_shared_state_up{namespace="${ns}",toolset="fleet",pod="b"}`]: '1x5 0x20',
          [`earpiece_shared_state_up{namespace="${ns}",toolset="fleet",pod="c"}`]: '1x25',
          [`earpiece_shared_state_up{namespace="${ns}",toolset="steady",pod="d"}`]: '1x25',
        },
        alert: 'EarpieceSharedStateDown',
        at: '15m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, toolset: 'fleet' },
            summary: '2 sidecars of ToolSet fleet cannot reach the shared state',
          },
        ],
      },
      {
        // Down for two minutes, then back: shorter than the 5 minutes it must last.
        series: { [`earpiece_shared_state_up{namespace="${ns}",toolset="fleet",pod="a"}`]: '1x5 0x2 1x10' },
        alert: 'EarpieceSharedStateDown',
        at: '10m',
        expected: [],
      },
      {
        // Up only 20 minutes so far: not yet.
        series: { [info('idle')]: '1x20', [turns('idle', 'ok')]: '0x20' },
        alert: 'EarpieceNoTraffic',
        at: '20m',
        expected: [],
      },
    ]);
    expect(output).toContain('SUCCESS');
    expect(status).toBe(0);
  });
});
