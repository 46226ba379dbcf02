import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, test } from 'vitest';
import { parse, stringify } from 'yaml';
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
    'EarpieceToolsUnsupported',
    (l) =>
      `The LLM server behind the earpiece proxies of ${l.namespace}/${l.toolset} refused the tool definitions in the last 10 minutes, so the voice assistant answers without its tools. Start vLLM with --enable-auto-tool-choice and the model's --tool-call-parser, or choose a model that supports tools.`,
  ],
  [
    'EarpieceNoTraffic',
    (l) =>
      `earpiece proxies of ${l.namespace}/${l.toolset} are running and vLLM answered requests in the last 30 minutes, but no chat turn reached the proxies. Unmute is not pointed at the sidecar: check KYUTAI_LLM_URL of the backend container (the webhook sets it to http://127.0.0.1:8095).`,
  ],
  [
    'EarpieceOperatorDown',
    (l) =>
      `For 5 minutes ${l.namespace ? `no replica of the earpiece operator in namespace ${l.namespace} held the leader Lease (or none answered its scrapes)` : 'no earpiece operator replica was scraped'}. Pods created meanwhile start without the earpiece sidecar (webhook failurePolicy Ignore) or are refused (Fail), and ToolSet changes are not applied.`,
  ],
  [
    'EarpieceSidecarNotRunning',
    (l) =>
      `The earpiece-proxy sidecar of 2 pods in namespace ${l.namespace} is not running (${l.reason}), so their Unmute backend does not start. The Warning Events on their workloads (reason SidecarNotReady) name the pods and the fix.`,
  ],
  [
    'EarpiecePodsNotInjected',
    (l) =>
      `1 pods in namespace ${l.namespace} are opted in to injection but have no earpiece sidecar, so their voice assistant has no tools. The Warning Events on their workloads (reason UninjectedPod) say why.`,
  ],
  [
    'EarpieceToolSetInvalid',
    (l) =>
      `1 ToolSets in namespace ${l.namespace} have been not Ready for 10 minutes. Their pods keep the last valid configuration, and a ToolSet that was never valid gets no sidecar at all.`,
  ],
  [
    'EarpieceOperatorWatchFailing',
    (l) =>
      `For 10 minutes the earpiece operator in namespace ${l.namespace} has failed to watch ${l.kind}s. It goes on from what it saw last: ToolSet edits are not applied, and new pods' problems go unreported. Its log ('Stopped watch') gives the API server's answer; check its RBAC.`,
  ],
  [
    'EarpieceToolSetNotReconciled',
    (l) =>
      `For 10 minutes 2 ToolSets in namespace ${l.namespace}, labelled earpiece.dev/operator=${l.operator}, have had an edit no operator reconciled: their ConfigMap and sidecars keep the configuration before it, and problems of their pods go unreported. Remove the label so a live operator claims them, or delete them.`,
  ],
  [
    'EarpieceWebhookCertificateExpiring',
    (l) =>
      `The serving certificate of the earpiece webhook in namespace ${l.namespace} expires in 9d 22h 30m 0s and has not been renewed. Once it expires the API server cannot call the webhook, and new pods start without the sidecar.`,
  ],
  [
    'EarpieceSlowFirstWord',
    (l) =>
      `For 15 minutes 5% of the turns through ToolSet ${l.namespace}/${l.toolset} waited more than 2 seconds for their first spoken word (4.861s at the 95th percentile). Compare the model's own time to first token on the dashboard.`,
  ],
  [
    'EarpieceSidecarRestarting',
    (l) =>
      `The earpiece-proxy sidecar of ${l.namespace}/${l.pod} restarted at least 3 times in 30 minutes. Each restart drops the voice turns running through it.`,
  ],
  [
    'EarpieceSidecarOOMKilled',
    (l) =>
      `The earpiece-proxy sidecar of ${l.namespace}/${l.pod} ran out of memory and was restarted in the last 30 minutes. Raise its memory limit (chart value injection.resources, or pod annotation earpiece.dev/proxy-memory-limit).`,
  ],
  [
    'EarpieceToolSetNotLoaded',
    (l) =>
      `Sidecars of ${l.namespace}/${l.toolset} could not load an edit of their ToolSet in the last 15 minutes and go on serving the one before it. Their /readyz (lastReloadFailure) and logs name the field at fault.`,
  ],
  [
    'EarpieceSharedStateDown',
    (l) =>
      `Sidecars of ${l.namespace}/${l.toolset} fall back to their own tool cache and rate limits: voice turns go on (each call waits at most 50 ms on Redis), but each sidecar now allows a tool's whole quota on its own and pays for lookups the others made. Check Redis and the sidecars' /readyz (sharedState.lastError).`,
  ],
]);

const RUNBOOKS = 'https://github.com/earpiece-dev/earpiece/blob/main/docs/runbooks.md#';

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
                exp_annotations: {
                  summary,
                  description: descriptions.get(c.alert)?.(labels),
                  runbook_url: `${RUNBOOKS}${c.alert.toLowerCase()}`,
                },
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
    expect(output).toContain('SUCCESS: 17 rules found');
    expect(status).toBe(0);
  });

  test('every alert links its runbook, which says what it means, how to confirm it and how to fix it', async () => {
    const rules = (
      parse(await readFile(RULES, 'utf8')) as {
        groups: { rules: { alert: string; annotations: Record<string, string> }[] }[];
      }
    ).groups.flatMap((g) => g.rules);
    const runbooks = await readFile(resolve('docs/runbooks.md'), 'utf8');
    const sections = new Map(
      runbooks
        .split(/^## /m)
        .slice(1)
        .map((section) => [section.split('\n')[0]!.trim(), section]),
    );
    expect(rules.length).toBe(17);
    for (const { alert, annotations } of rules) {
      expect(annotations.runbook_url, alert).toBe(`${RUNBOOKS}${alert.toLowerCase()}`);
      const section = sections.get(alert);
      expect(section, `docs/runbooks.md has no "## ${alert}"`).toBeDefined();
      for (const part of ['**Meaning.**', '**Confirm.**', '**Fix.**']) expect(section, alert).toContain(part);
    }
    expect([...sections.keys()].sort()).toEqual(rules.map((r) => r.alert).sort());
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
    const vllmRequests = 'vllm:request_success_total{namespace="ai",model_name="m",finished_reason="stop"}';
    const leader = (pod: string, namespace = 'earpiece-system') =>
      `earpiece_leader{namespace="${namespace}",pod="${pod}"}`;
    // `up` as the chart's ServiceMonitor labels it.
    const operatorUp = (pod: string, namespace = 'earpiece-system') =>
      `up{earpiece_component="operator",job="earpiece",namespace="${namespace}",pod="${pod}"}`;
    const problem = (reason: string) =>
      `earpiece_sidecar_problem_pods{namespace="${ns}",reason="${reason}",pod="earpiece-0"}`;
    const reloadFailures = (toolset: string, pod: string) =>
      `earpiece_toolset_reload_failures_total{namespace="${ns}",toolset="${toolset}",pod="${pod}"}`;
    const toolsets = (ready: string) =>
      `earpiece_toolsets{namespace="${ns}",ready="${ready}",pod="earpiece-0"}`;
    const unreconciled = (operator: string, pod: string) =>
      `earpiece_toolsets_unreconciled{namespace="${ns}",operator="${operator}",pod="${pod}"}`;
    const expiry = (namespace: string) =>
      `earpiece_webhook_certificate_expiry_timestamp_seconds{namespace="${namespace}",pod="earpiece-0"}`;
    const firstWord = (toolset: string, le: string) =>
      `earpiece_time_to_first_content_seconds_bucket{namespace="${ns}",toolset="${toolset}",le="${le}"}`;
    const restarts = (kind: string, pod: string) =>
      `kube_pod_${kind}_status_restarts_total{namespace="${ns}",pod="${pod}",container="earpiece-proxy"}`;
    const oomKilled = (pod: string) =>
      `kube_pod_init_container_status_last_terminated_reason{namespace="${ns}",pod="${pod}",container="earpiece-proxy",reason="OOMKilled"}`;

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
        // Two sidecars of "plain" meet a vLLM without a tool parser: one refusal a minute each, tried again
        // after 60 s. "tooled" was refused once, half an hour ago.
        series: {
          [`earpiece_upstream_tools_unsupported_total{namespace="${ns}",toolset="plain",pod="a"}`]: '0+1x30',
          [`earpiece_upstream_tools_unsupported_total{namespace="${ns}",toolset="plain",pod="b"}`]: '0+1x30',
          [`earpiece_upstream_tools_unsupported_total{namespace="${ns}",toolset="tooled",pod="c"}`]: '0 1x30',
        },
        alert: 'EarpieceToolsUnsupported',
        at: '30m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, toolset: 'plain' },
            summary: 'The model server of ToolSet plain refuses tools',
          },
        ],
      },
      {
        // One refusal: it fires only once it has lasted 5 minutes.
        series: {
          [`earpiece_upstream_tools_unsupported_total{namespace="${ns}",toolset="plain",pod="a"}`]:
            '0 0 1x30',
        },
        alert: 'EarpieceToolsUnsupported',
        at: '4m',
        expected: [],
      },
      {
        // Both replicas lost their Pod watches (a pruned RoleBinding); a ToolSet watch blipped and came back.
        series: {
          'earpiece_watches_failing{namespace="earpiece-system",pod="earpiece-0",kind="Pod"}': '0 2x20',
          'earpiece_watches_failing{namespace="earpiece-system",pod="earpiece-1",kind="Pod"}': '0 2x20',
          'earpiece_watches_failing{namespace="earpiece-system",pod="earpiece-0",kind="ToolSet"}':
            '0 1 1 0x18',
        },
        alert: 'EarpieceOperatorWatchFailing',
        at: '15m',
        expected: [
          {
            labels: { severity: 'warning', namespace: 'earpiece-system', kind: 'Pod' },
            summary: 'The earpiece operator in earpiece-system cannot watch Pods',
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
          [vllmRequests]: '0+5x70',
        },
        alert: 'EarpieceNoTraffic',
        at: '65m',
        expected: [
          {
            labels: { severity: 'info', namespace: ns, toolset: 'idle' },
            summary: 'No turns through the earpiece proxies of ToolSet idle while vLLM serves requests',
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
        series: { [info('idle')]: '1x20', [turns('idle', 'ok')]: '0x20', [vllmRequests]: '0+5x20' },
        alert: 'EarpieceNoTraffic',
        at: '20m',
        expected: [],
      },
      {
        // A quiet night: nobody talks to the proxies, nor to vLLM.
        series: { [info('idle')]: '1x600', [turns('idle', 'ok')]: '0x600', [vllmRequests]: '100x600' },
        alert: 'EarpieceNoTraffic',
        at: '9h',
        expected: [],
      },
      {
        // Scraped, but no replica holds the Lease.
        series: { [leader('earpiece-0')]: '0x20', [leader('earpiece-1')]: '0x20' },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [
          {
            labels: { severity: 'critical', namespace: 'earpiece-system' },
            summary: 'No earpiece operator is leading in earpiece-system',
          },
        ],
      },
      {
        // A second release whose replicas both lost the Lease, while the first release leads.
        series: {
          [leader('earpiece-0')]: '0x20',
          [leader('earpiece-1')]: '1x20',
          [leader('earpiece-canary-0', 'earpiece-canary')]: '0x20',
          [leader('earpiece-canary-1', 'earpiece-canary')]: '0x20',
        },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [
          {
            labels: { severity: 'critical', namespace: 'earpiece-canary' },
            summary: 'No earpiece operator is leading in earpiece-canary',
          },
        ],
      },
      {
        // A second release none of whose replicas answers its scrapes (crash-looping), while the first leads:
        // its leader series are gone, its targets' `up` is 0.
        series: {
          [leader('earpiece-0')]: '0x20',
          [leader('earpiece-1')]: '1x20',
          [operatorUp('earpiece-0')]: '1x20',
          [operatorUp('earpiece-1')]: '1x20',
          [operatorUp('earpiece-canary-0', 'earpiece-canary')]: '0x20',
          [operatorUp('earpiece-canary-1', 'earpiece-canary')]: '0x20',
        },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [
          {
            labels: { severity: 'critical', namespace: 'earpiece-canary' },
            summary: 'No earpiece operator is leading in earpiece-canary',
          },
        ],
      },
      {
        // The only release's replicas are all down: named once, by its namespace.
        series: {
          [operatorUp('earpiece-0')]: '0x20',
          [operatorUp('earpiece-1')]: '0x20',
        },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [
          {
            labels: { severity: 'critical', namespace: 'earpiece-system' },
            summary: 'No earpiece operator is leading in earpiece-system',
          },
        ],
      },
      {
        // One replica of two down, the other leading: nothing to say.
        series: {
          [leader('earpiece-1')]: '1x20',
          [operatorUp('earpiece-0')]: '0x20',
          [operatorUp('earpiece-1')]: '1x20',
        },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [],
      },
      {
        // Not scraped at all.
        series: { 'up{job="something-else"}': '1x20' },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [{ labels: { severity: 'critical' }, summary: 'No earpiece operator is leading' }],
      },
      {
        // One release, leading.
        series: { [leader('earpiece-0')]: '0x20', [leader('earpiece-1')]: '1x20' },
        alert: 'EarpieceOperatorDown',
        at: '10m',
        expected: [],
      },
      {
        // A sidecar whose ToolSet was deleted runs (on stale tools): its Event says so, this alert does not.
        series: {
          [problem('ImagePullBackOff')]: '2x20',
          [problem('not_injected')]: '1x20',
          [problem('toolset_deleted')]: '1x20',
        },
        alert: 'EarpieceSidecarNotRunning',
        at: '10m',
        expected: [
          {
            labels: { severity: 'critical', namespace: ns, reason: 'ImagePullBackOff' },
            summary: `2 pods in ${ns} have an earpiece sidecar in ImagePullBackOff`,
          },
        ],
      },
      {
        series: { [problem('not_injected')]: '1x20' },
        alert: 'EarpieceSidecarNotRunning',
        at: '10m',
        expected: [],
      },
      {
        series: { [problem('not_injected')]: '1x30', [problem('CrashLoopBackOff')]: '2x30' },
        alert: 'EarpiecePodsNotInjected',
        at: '20m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns },
            summary: `1 opted-in pods in ${ns} run without the earpiece sidecar`,
          },
        ],
      },
      {
        // A pod that missed the webhook for 10 minutes only (recreated meanwhile): no page.
        series: { [problem('not_injected')]: '1x10 _x20' },
        alert: 'EarpiecePodsNotInjected',
        at: '25m',
        expected: [],
      },
      {
        series: { [toolsets('false')]: '1x20', [toolsets('true')]: '3x20' },
        alert: 'EarpieceToolSetInvalid',
        at: '15m',
        expected: [
          { labels: { severity: 'warning', namespace: ns }, summary: `1 ToolSets in ${ns} are not Ready` },
        ],
      },
      {
        series: { [toolsets('false')]: '0x20', [toolsets('true')]: '3x20' },
        alert: 'EarpieceToolSetInvalid',
        at: '15m',
        expected: [],
      },
      {
        // Two ToolSets labelled for an uninstalled canary, seen by both replicas' scrapes (the leader's
        // counts; a follower's series is absent), one of ours edited a moment ago.
        series: {
          [unreconciled('earpiece-canary', 'earpiece-0')]: '2x20',
          [unreconciled('earpiece', 'earpiece-0')]: '0 1 0x18',
        },
        alert: 'EarpieceToolSetNotReconciled',
        at: '15m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, operator: 'earpiece-canary' },
            summary: `2 ToolSets in ${ns} wait for operator earpiece-canary`,
          },
        ],
      },
      {
        series: { [unreconciled('earpiece-canary', 'earpiece-0')]: '2x5 0x15' },
        alert: 'EarpieceToolSetNotReconciled',
        at: '15m',
        expected: [],
      },
      {
        // Expires 10 days after the test's start; rules are evaluated from Unix time 0.
        series: { [expiry('earpiece-system')]: `${10 * 86400}x120` },
        alert: 'EarpieceWebhookCertificateExpiring',
        at: '90m',
        expected: [
          {
            labels: { severity: 'warning', namespace: 'earpiece-system' },
            summary: 'The earpiece webhook certificate expires in 9d 22h 30m 0s',
          },
        ],
      },
      {
        series: { [expiry('earpiece-system')]: `${60 * 86400}x120` },
        alert: 'EarpieceWebhookCertificateExpiring',
        at: '90m',
        expected: [],
      },
      {
        // slow: most first words between 2.5 s and 5 s; fast: all under a second.
        series: {
          [firstWord('slow', '1')]: '0+1x30',
          [firstWord('slow', '2.5')]: '0+2x30',
          [firstWord('slow', '5')]: '0+20x30',
          [firstWord('slow', '+Inf')]: '0+20x30',
          [firstWord('fast', '1')]: '0+20x30',
          [firstWord('fast', '2.5')]: '0+20x30',
          [firstWord('fast', '5')]: '0+20x30',
          [firstWord('fast', '+Inf')]: '0+20x30',
        },
        alert: 'EarpieceSlowFirstWord',
        at: '28m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, toolset: 'slow' },
            summary: 'p95 time to the first spoken word of ToolSet slow is 4.861s',
          },
        ],
      },
      {
        // A native sidecar restarts as an init container; a plain one as a container. Two restarts: not yet.
        series: {
          [restarts('init_container', 'backend-a')]: '0+1x40',
          [restarts('container', 'backend-b')]: '0+1x40',
          [restarts('init_container', 'backend-c')]: '0x30 1 2',
        },
        alert: 'EarpieceSidecarRestarting',
        at: '40m',
        expected: ['backend-a', 'backend-b'].map((pod) => ({
          labels: { severity: 'warning', namespace: ns, pod },
          summary: `The earpiece sidecar of pod ${pod} keeps restarting`,
        })),
      },
      {
        // backend-a was OOM-killed and restarted just now; backend-b's OOM kill is long past.
        series: {
          [oomKilled('backend-a')]: '1x40',
          [restarts('init_container', 'backend-a')]: '0x30 1x10',
          [oomKilled('backend-b')]: '1x40',
          [restarts('init_container', 'backend-b')]: '1x40',
        },
        alert: 'EarpieceSidecarOOMKilled',
        at: '35m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, pod: 'backend-a' },
            summary: 'The earpiece sidecar of pod backend-a was OOM-killed',
          },
        ],
      },
      {
        // "assistant": one sidecar refused an edit at minute 10; "steady" never did.
        series: {
          [reloadFailures('assistant', 'backend-a')]: '0x10 1x20',
          [reloadFailures('assistant', 'backend-b')]: '0x30',
          [reloadFailures('steady', 'backend-c')]: '0x30',
        },
        alert: 'EarpieceToolSetNotLoaded',
        at: '15m',
        expected: [
          {
            labels: { severity: 'warning', namespace: ns, toolset: 'assistant' },
            summary: 'Sidecars of ToolSet assistant refused an edit of it',
          },
        ],
      },
      {
        // Quiet again 15 minutes after the last refusal.
        series: { [reloadFailures('assistant', 'backend-a')]: '0x10 1x30' },
        alert: 'EarpieceToolSetNotLoaded',
        at: '30m',
        expected: [],
      },
    ]);
    expect(output).toContain('SUCCESS');
    expect(status).toBe(0);
  });
});
