/**
 * The observability stack end to end: a real Prometheus scrapes two real proxies (one with traffic, one
 * idle) and a scripted vLLM that also serves vLLM's own /metrics. Scripted turns run tools that succeed,
 * hit the cache, time out, fail, are unknown or get bad arguments; turns fail upstream, get cancelled by a
 * hang-up and run out of iterations. Then every query of the Grafana dashboard and every alert expression
 * is evaluated through Prometheus's HTTP API and must return data: a broken panel fails here.
 */
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { parse, stringify } from 'yaml';
import {
  errorReply,
  lastUserText,
  type RecordedRequest,
  type ScriptedReply,
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
} from '../../src/demo/scripted-upstream.js';
import { type RunningProxy, startProxy } from '../../src/proxy/start.js';
import { createLogger } from '../../src/telemetry/log.js';
import { toolSetDocument } from '../../src/toolset/api.js';
import { labelValuesQuery, loadDashboard, panelQueries, substitute } from '../support/dashboard.js';
import { KubeMetrics } from '../support/kube-metrics.js';
import {
  type PrometheusQueryResult,
  prometheusBinary,
  promtool,
  type RunningPrometheus,
  startPrometheus,
} from '../support/prometheus.js';
import { startRedis, type TestRedis } from '../support/redis.js';
import { type ScriptedOperator, startScriptedOperator } from '../support/scripted-operator.js';
import { VllmMetrics } from '../support/vllm-metrics.js';

const RULES_PATH = resolve('charts/earpiece/rules/earpiece.rules.yaml');
const MODEL = 'scripted-model';
/** Wider than the whole test, so every sample since the start is in each rate window. */
const RATE_INTERVAL = '5m';

const prometheusPath = prometheusBinary('prometheus');
const promtoolPath = prometheusBinary('promtool');

/** The model's side of each scripted turn, chosen by what the user said. */
function respond(vllm: VllmMetrics) {
  return (request: RecordedRequest): ScriptedReply => {
    vllm.request(0.02 + Math.random() * 0.2, 0.4 + Math.random());
    const messages = request.body.messages ?? [];
    const afterTools = messages.at(-1)?.role === 'tool';
    const said = lastUserText(request);
    const offered = (request.body.tools?.length ?? 0) > 0;
    const call = (name: string, args: Record<string, unknown>) => ({
      sse: toolCallReply([{ name, arguments: args }]),
    });
    if (!offered) return { sse: textReply('Here is what I found.') };
    if (said.includes('keep looking')) return call('get_weather', { city: 'Paris' });
    if (afterTools) return { sse: textReply('Done, here is the answer.') };
    if (said.includes('weather in Paris')) {
      return {
        sse: toolCallReply([
          { name: 'get_weather', arguments: { city: 'Paris' } },
          { name: 'current_time', arguments: { timezone: 'Europe/Paris' } },
        ]),
      };
    }
    if (said.includes('news')) return call('web_search', { q: 'news' });
    if (said.includes('broken')) return call('broken_tool', {});
    if (said.includes('oracle')) return call('ask_oracle', { question: 'why' });
    if (said.includes('no city')) return call('get_weather', { town: 'Lyon' });
    if (said.includes('engine')) return errorReply(500, 'The engine died');
    if (said.includes('too many')) return errorReply(429, 'Rate limit reached for requests');
    if (said.includes('book a table')) return call('book_table', { people: 2 });
    if (said.includes('the report')) return call('prepare_report', {});
    if (said.includes('story')) {
      return {
        sse: textReply(
          'Once upon a time there was a very long story that went on and on.',
          'vllm-llama3json',
          { delayMs: 300 },
        ),
      };
    }
    return { sse: textReply('Hello, how can I help?') };
  };
}

/** The tools' backend: a fast weather API, a search that never answers, and a broken service. */
/** Answers of the slow report tool so far: the late result is on its way to the proxy's memory. */
let reportsAnswered = 0;

async function startToolService(): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url?.startsWith('/weather')) {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"temperature":21}');
    } else if (req.url?.startsWith('/book')) {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"booked":true}');
    } else if (req.url?.startsWith('/report')) {
      // Slower than the tool's deferAfter: the turn ends on a promise, and the result comes late.
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"report":"ready"}');
        reportsAnswered++;
      }, 600);
    } else if (req.url?.startsWith('/broken')) {
      res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":"down"}');
    }
    // /search: no answer; the tool's timeout ends the call.
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

function toolsetFile(name: string, spec: Record<string, unknown>): string {
  return stringify(toolSetDocument(name, spec));
}

const hostPort = (url: string) => new URL(url).host;

/** The metric names an expression reads (histograms by their series). */
function metricNames(expr: string): string[] {
  // Label matchers ({earpiece_component="operator"}) name no metric.
  const names = expr
    .replace(/\{[^}]*\}/g, '')
    .match(/\b(?:earpiece_[a-z_]+|vllm:[a-z_:]+|kube_[a-z_]+|container_[a-z_]+|nodejs_[a-z0-9_]+)/g);
  return [...new Set(names ?? [])];
}

/** The sidecars kube-state-metrics and cAdvisor report on: the two proxies, and the pod whose sidecar is OOM-killed. */
const SIDECAR_PODS = [
  {
    namespace: 'voice',
    pod: 'unmute-backend-0',
    native: true,
    memoryLimitBytes: 256 * 2 ** 20,
    workingSetBytes: 92 * 2 ** 20,
  },
  {
    namespace: 'voice',
    pod: 'unmute-backend-1',
    native: false,
    memoryLimitBytes: 256 * 2 ** 20,
    workingSetBytes: 88 * 2 ** 20,
  },
  {
    namespace: 'voice',
    pod: 'backend-crashing',
    native: true,
    memoryLimitBytes: 128 * 2 ** 20,
    workingSetBytes: 127 * 2 ** 20,
  },
];

describe.skipIf(!prometheusPath || !promtoolPath)('observability with a real Prometheus', () => {
  let dir: string;
  let tools: Server;
  let upstream: ScriptedUpstream;
  let busy: RunningProxy;
  let idle: RunningProxy;
  let prometheus: RunningPrometheus;
  let client: OpenAI;
  let operator: ScriptedOperator;
  let kube: KubeMetrics;
  // The busy ToolSet shares its tool state through a real Redis, so the shared-state series exist.
  let redis: TestRedis;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'earpiece-observability-'));
    tools = await startToolService();
    const toolsUrl = `http://127.0.0.1:${(tools.address() as AddressInfo).port}`;
    const vllm = new VllmMetrics(MODEL);
    upstream = await startScriptedUpstream({ respond: respond(vllm), metrics: () => vllm.text() });
    redis = await startRedis();
    await writeFile(
      join(dir, 'assistant.yaml'),
      toolsetFile('assistant', {
        limits: { toolTimeout: '2s', turnTimeout: '20s' },
        sharedState: { redis: { url: { value: redis.url } } },
        tools: [
          {
            name: 'get_weather',
            description: 'Weather for a city',
            parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
            cache: { ttl: '10m' },
            http: { url: `${toolsUrl}/weather{?city}` },
          },
          { name: 'current_time', builtin: 'time' },
          {
            name: 'web_search',
            description: 'Search the web',
            parameters: { type: 'object', properties: { q: { type: 'string' } }, required: ['q'] },
            timeout: '1s',
            http: { url: `${toolsUrl}/search{?q}` },
          },
          {
            name: 'book_table',
            description: 'Books a table',
            parameters: { type: 'object', properties: { people: { type: 'integer' } } },
            // One booking an hour, across every sidecar of the ToolSet: the second is refused.
            rateLimit: { requests: 1, per: '1h' },
            http: { url: `${toolsUrl}/book{?people}` },
          },
          {
            name: 'prepare_report',
            description: 'Prepares a report',
            parameters: { type: 'object', properties: {} },
            timeout: '3s',
            deferAfter: '200ms',
            http: { url: `${toolsUrl}/report` },
          },
          {
            name: 'broken_tool',
            description: 'A service that is down',
            parameters: { type: 'object', properties: {} },
            http: { url: `${toolsUrl}/broken` },
          },
        ],
      }),
    );
    await writeFile(
      join(dir, 'idle.yaml'),
      toolsetFile('idle', { tools: [{ name: 'current_time', builtin: 'time' }] }),
    );
    const common = {
      upstreamUrl: upstream.url,
      host: '127.0.0.1',
      port: 0,
      metricsHost: '127.0.0.1',
      metricsPort: 0,
      watch: false,
      logger: createLogger('test', process.env.EARPIECE_TEST_LOG_LEVEL ?? 'silent'),
    };
    busy = await startProxy({ ...common, toolsetPath: join(dir, 'assistant.yaml') });
    idle = await startProxy({ ...common, toolsetPath: join(dir, 'idle.yaml') });
    client = new OpenAI({ apiKey: 'EMPTY', baseURL: `${busy.url}/v1`, maxRetries: 0 });

    operator = await startScriptedOperator('voice');
    kube = new KubeMetrics();
    for (const pod of SIDECAR_PODS) kube.pod(pod);

    // Labelled as a PodMonitor and ServiceMonitors label Kubernetes targets, in a cluster named by a
    // multi-cluster Prometheus. The vLLM is the chart's, in the release namespace.
    const cluster = 'test';
    prometheus = await startPrometheus(
      prometheusPath!,
      [
        {
          job: 'earpiece-busy',
          targets: [hostPort(busy.metricsUrl)],
          labels: { cluster, namespace: 'voice', pod: 'unmute-backend-0', container: 'earpiece-proxy' },
        },
        {
          job: 'earpiece-idle',
          targets: [hostPort(idle.metricsUrl)],
          labels: { cluster, namespace: 'voice', pod: 'unmute-backend-1', container: 'earpiece-proxy' },
        },
        {
          job: 'vllm',
          targets: [hostPort(upstream.url)],
          labels: { cluster, namespace: 'earpiece-system', pod: 'earpiece-vllm-0' },
        },
        {
          job: 'earpiece-operator',
          targets: [operator.metricsTarget],
          // earpiece_component: as the chart's ServiceMonitor relabels its targets.
          labels: {
            cluster,
            namespace: 'earpiece-system',
            pod: 'earpiece-operator-0',
            earpiece_component: 'operator',
          },
          honorLabels: true,
        },
        { job: 'kube-state-metrics', targets: [await kube.listen()], labels: { cluster }, honorLabels: true },
      ],
      [RULES_PATH],
    );
    await prometheus.scrapedSince(new Date());

    // Two rounds with scrapes between: series born in the first round show their increase in the second.
    for (let round = 0; round < 2; round++) {
      await traffic(client);
      if (round === 0) {
        // Redis stops answering for one turn: the booking's rate limit is decided in the sidecar.
        redis.pause();
        await traffic(client, ['Please book a table for two.']);
        redis.resume();
      }
      await operator.admit(`backend-new-${round}`);
      // A crash-looping sidecar, and one killed once for memory.
      kube.restarted(SIDECAR_PODS[2]!, 'Error');
      kube.restarted(SIDECAR_PODS[2]!, 'Error');
      if (round === 0) kube.restarted(SIDECAR_PODS[1]!, 'OOMKilled');
      await prometheus.scrapedSince(new Date());
    }
    await prometheus.scrapedSince(new Date());
  });

  afterAll(async () => {
    await prometheus?.close();
    await operator?.close();
    await kube?.close();
    await busy?.close();
    await idle?.close();
    await redis?.close();
    await upstream?.close();
    tools?.closeAllConnections();
    tools?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const values = (result: PrometheusQueryResult[]) => result.map((r) => Number(r.value[1]));
  const byLabel = async (label: string, promql: string) =>
    Object.fromEntries((await prometheus.query(promql)).map((r) => [r.metric[label], Number(r.value[1])]));

  test('the scripted traffic produced every outcome the dashboard shows', async () => {
    const calls = await byLabel(
      'outcome',
      `sum by (outcome) (increase(earpiece_tool_calls_total{toolset="assistant"}[${RATE_INTERVAL}]))`,
    );
    for (const outcome of [
      'ok',
      'cache_hit',
      'timeout',
      'error',
      'unknown_tool',
      'invalid_arguments',
      'rate_limited',
    ]) {
      expect(calls[outcome], `tool outcome ${outcome}`).toBeGreaterThan(0);
    }
    const turns = await byLabel(
      'outcome',
      `sum by (outcome) (increase(earpiece_turns_total{toolset="assistant"}[${RATE_INTERVAL}]))`,
    );
    for (const outcome of ['ok', 'error', 'cancelled', 'max_iterations']) {
      expect(turns[outcome], `turn outcome ${outcome}`).toBeGreaterThan(0);
    }
    expect(
      values(
        await prometheus.query(
          `increase(earpiece_client_disconnects_total{toolset="assistant"}[${RATE_INTERVAL}])`,
        ),
      )[0],
    ).toBeGreaterThan(0);
    const counted = async (promql: string) =>
      values(await prometheus.query(`sum(increase(${promql}[${RATE_INTERVAL}]))`))[0] ?? 0;
    expect(await counted('earpiece_deferred_calls_total{outcome="delivered"}')).toBeGreaterThan(0);
    expect(await counted('earpiece_upstream_rate_limited_total')).toBeGreaterThan(0);
    // Born in the first round's freeze, so its first sample already counts it: read the value itself.
    const fallbacks = await prometheus.query(
      'sum(earpiece_shared_state_fallbacks_total{operation="rate_limit"})',
    );
    expect(values(fallbacks)[0]).toBeGreaterThan(0);
    // The model's invented tool is counted, but never as a label value of its own.
    expect(await prometheus.labelValues('tool', 'earpiece_tool_calls_total')).not.toContain('ask_oracle');
  });

  test('the scraped metrics pass promtool check metrics', async () => {
    const text = await (await fetch(`${busy.metricsUrl}/metrics`)).text();
    const { status, output } = promtool(promtoolPath!, ['check', 'metrics'], text);
    expect(output).toBe('');
    expect(status).toBe(0);
  });

  test('every dashboard variable lists values', async () => {
    const dashboard = loadDashboard();
    for (const variable of dashboard.templating.list.filter((v) => v.type === 'query')) {
      const { match, label } = labelValuesQuery(variable);
      const found = await prometheus.labelValues(label, substitute(match, dashboard, RATE_INTERVAL));
      expect(found.length, `variable ${variable.name}`).toBeGreaterThan(0);
    }
    expect(await prometheus.labelValues('toolset', 'earpiece_toolset_info')).toEqual(['assistant', 'idle']);
  });

  test('every dashboard query returns data, from series that exist', async () => {
    const dashboard = loadDashboard();
    const broken: string[] = [];
    for (const { where, expr } of panelQueries(dashboard)) {
      const promql = substitute(expr, dashboard, RATE_INTERVAL);
      const result = await prometheus.query(promql).catch((err: Error) => err);
      if (result instanceof Error) broken.push(`${where}: ${result.message}`);
      else if (!values(result).some(Number.isFinite)) broken.push(`${where}: no data for ${promql}`);
      // A stat's `or vector(0)` answers even without its series; the series must be there too.
      for (const name of metricNames(expr))
        if ((await prometheus.query(`count(${name})`)).length === 0)
          broken.push(`${where}: no series ${name}`);
    }
    expect(broken).toEqual([]);
  });

  test('every alert expression evaluates, every series it reads exists, and Prometheus loads the rules', async () => {
    const file = parse(await readFile(RULES_PATH, 'utf8')) as {
      groups: { rules: { alert: string; expr: string }[] }[];
    };
    const rules = file.groups.flatMap((group) => group.rules);
    const missing: string[] = [];
    for (const rule of rules) {
      await prometheus.query(rule.expr);
      for (const name of metricNames(rule.expr))
        if ((await prometheus.query(`count(${name})`)).length === 0) missing.push(`${rule.alert}: ${name}`);
    }
    expect(missing).toEqual([]);
    const fired = await byLabel('toolset', 'count by (toolset) (ALERTS{alertname="EarpieceNoTraffic"})');
    expect(Object.keys(fired)).toEqual(['idle']);

    const loaded = (await (await fetch(`${prometheus.url}/api/v1/rules`)).json()) as {
      data: { groups: { rules: { name: string; health: string; lastError?: string }[] }[] };
    };
    const health = loaded.data.groups
      .flatMap((g) => g.rules)
      .map((r) => [r.name, r.health, r.lastError ?? '']);
    expect(health).toEqual(rules.map((r) => [r.alert, 'ok', '']));
  });

  test('an image that cannot be pulled, a crash-looping sidecar, a pod that missed the webhook and a ToolSet nobody reconciles show up in a metric, an alert and a panel', async () => {
    const rules = new Map(
      (
        parse(await readFile(RULES_PATH, 'utf8')) as {
          groups: { rules: { alert: string; expr: string }[] }[];
        }
      ).groups
        .flatMap((g) => g.rules)
        .map((r) => [r.alert, r.expr]),
    );
    const alert = async (name: string, label: string) =>
      (await prometheus.query(rules.get(name)!)).map((r) => r.metric[label]).sort();
    expect(
      await byLabel('reason', 'sum by (reason) (earpiece_sidecar_problem_pods{namespace="voice"})'),
    ).toEqual({ CrashLoopBackOff: 1, ImagePullBackOff: 1, not_injected: 1 });
    expect(await alert('EarpieceSidecarNotRunning', 'reason')).toEqual([
      'CrashLoopBackOff',
      'ImagePullBackOff',
    ]);
    expect(await alert('EarpiecePodsNotInjected', 'namespace')).toEqual(['voice']);
    expect(await alert('EarpieceSidecarRestarting', 'pod')).toEqual(['backend-crashing']);
    expect(await alert('EarpieceSidecarOOMKilled', 'pod')).toEqual(['unmute-backend-1']);
    // The ToolSet left labelled for a release that is gone; the operator itself is up and leading.
    expect(await alert('EarpieceToolSetNotReconciled', 'operator')).toEqual(['earpiece-canary']);
    expect(await alert('EarpieceOperatorDown', 'namespace')).toEqual([]);
    // Its scrape target is the one the alert's `up` selector names.
    expect(await byLabel('namespace', 'max by (namespace) (up{earpiece_component="operator"})')).toEqual({
      'earpiece-system': 1,
    });
    // Pending: their `for` has not passed yet, but the condition holds.
    const pending = await byLabel('alertname', 'count by (alertname) (ALERTS{alertstate="pending"})');
    expect(Object.keys(pending)).toEqual(
      expect.arrayContaining([
        'EarpieceSidecarNotRunning',
        'EarpiecePodsNotInjected',
        'EarpieceSidecarRestarting',
        'EarpieceToolSetNotReconciled',
      ]),
    );
    const dashboard = loadDashboard();
    const panel = panelQueries(dashboard).find((q) =>
      q.where.startsWith('panel "Pods with sidecar problems by reason"'),
    )!;
    const shown = await prometheus.query(substitute(panel.expr, dashboard, RATE_INTERVAL));
    expect(shown.map((r) => r.metric.reason).sort()).toEqual([
      'CrashLoopBackOff',
      'ImagePullBackOff',
      'not_injected',
    ]);
  });
});

/** One round of turns, in the order a day of conversations might bring them. */
async function traffic(client: OpenAI, only?: string[]): Promise<void> {
  const system = { role: 'system' as const, content: 'You are a helpful voice assistant.' };
  const converse = async (messages: OpenAI.Chat.ChatCompletionMessageParam[]) => {
    const stream = await client.chat.completions.create({ model: MODEL, stream: true, messages });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    return text;
  };
  const turn = (text: string) => converse([system, { role: 'user', content: text }]);
  if (only) {
    for (const text of only) await turn(text);
    return;
  }
  await turn('What is the weather in Paris right now?');
  await turn('And the weather in Paris again, please?');
  await turn('Any news today?');
  await turn('Please check the broken thing.');
  await turn('Ask the oracle.');
  await turn('Weather with no city?');
  await turn('Start the engine.');
  await turn('Please keep looking until you find it.');
  await turn('Good morning to you.');
  await turn('Please book a table for two.');
  await turn('Please book a table for two, again.');
  await turn('There were too many requests just now.');
  // A slow report: the turn ends on a promise, and the next request of the conversation gets the result.
  const question = { role: 'user' as const, content: 'Prepare the report, please.' };
  const reportsBefore = reportsAnswered;
  const promised = await converse([system, question]);
  // The report has answered; the proxy keeps it for the conversation's next request within a tick.
  while (reportsAnswered === reportsBefore) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 200));
  await converse([
    system,
    question,
    { role: 'assistant', content: promised },
    { role: 'user', content: '...' },
  ]);
  // The user barges in after the first words of a long answer.
  const story = await client.chat.completions.create({
    model: MODEL,
    stream: true,
    messages: [{ role: 'user', content: 'Tell me a story.' }],
  });
  for await (const chunk of story) {
    if (chunk.choices[0]?.delta.content) break;
  }
  story.controller.abort();
}
