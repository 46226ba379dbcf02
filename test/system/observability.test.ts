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
import { labelValuesQuery, loadDashboard, panelQueries, substitute } from '../support/dashboard.js';
import {
  type PrometheusQueryResult,
  prometheusBinary,
  promtool,
  type RunningPrometheus,
  startPrometheus,
} from '../support/prometheus.js';
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
async function startToolService(): Promise<Server> {
  const server = createServer((req, res) => {
    if (req.url?.startsWith('/weather')) {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"temperature":21}');
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
  return stringify({ apiVersion: 'earpiece.dev/v1alpha1', kind: 'ToolSet', metadata: { name }, spec });
}

const hostPort = (url: string) => new URL(url).host;

describe.skipIf(!prometheusPath || !promtoolPath)('observability with a real Prometheus', () => {
  let dir: string;
  let tools: Server;
  let upstream: ScriptedUpstream;
  let busy: RunningProxy;
  let idle: RunningProxy;
  let prometheus: RunningPrometheus;
  let client: OpenAI;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'earpiece-observability-'));
    tools = await startToolService();
    const toolsUrl = `http://127.0.0.1:${(tools.address() as AddressInfo).port}`;
    const vllm = new VllmMetrics(MODEL);
    upstream = await startScriptedUpstream({ respond: respond(vllm), metrics: () => vllm.text() });
    await writeFile(
      join(dir, 'assistant.yaml'),
      toolsetFile('assistant', {
        limits: { toolTimeout: '2s', turnTimeout: '20s' },
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

    // Labelled as a PodMonitor labels Kubernetes targets.
    prometheus = await startPrometheus(
      prometheusPath!,
      [
        {
          job: 'earpiece-busy',
          targets: [hostPort(busy.metricsUrl)],
          labels: { namespace: 'voice', pod: 'unmute-backend-0' },
        },
        {
          job: 'earpiece-idle',
          targets: [hostPort(idle.metricsUrl)],
          labels: { namespace: 'voice', pod: 'unmute-backend-1' },
        },
        { job: 'vllm', targets: [hostPort(upstream.url)], labels: { namespace: 'voice', pod: 'vllm-0' } },
      ],
      [RULES_PATH],
    );
    await prometheus.scrapedSince(new Date());

    // Two rounds with scrapes between: series born in the first round show their increase in the second.
    for (let round = 0; round < 2; round++) {
      await traffic(client);
      await prometheus.scrapedSince(new Date());
    }
    await prometheus.scrapedSince(new Date());
  });

  afterAll(async () => {
    await prometheus?.close();
    await busy?.close();
    await idle?.close();
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
    for (const outcome of ['ok', 'cache_hit', 'timeout', 'error', 'unknown_tool', 'invalid_arguments']) {
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

  test('every dashboard query returns data', async () => {
    const dashboard = loadDashboard();
    const broken: string[] = [];
    for (const { where, expr } of panelQueries(dashboard)) {
      const promql = substitute(expr, dashboard, RATE_INTERVAL);
      const result = await prometheus.query(promql).catch((err: Error) => err);
      if (result instanceof Error) broken.push(`${where}: ${result.message}`);
      else if (!values(result).some(Number.isFinite)) broken.push(`${where}: no data for ${promql}`);
    }
    expect(broken).toEqual([]);
  });

  test('every alert expression evaluates to data, and Prometheus loads the rules without errors', async () => {
    const file = parse(await readFile(RULES_PATH, 'utf8')) as {
      groups: { rules: { alert: string; expr: string }[] }[];
    };
    const rules = file.groups.flatMap((group) => group.rules);
    const silent: string[] = [];
    for (const rule of rules) {
      const result = await prometheus.query(rule.expr);
      if (result.length === 0) silent.push(rule.alert);
    }
    expect(silent).toEqual([]);
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
});

/** One round of turns, in the order a day of conversations might bring them. */
async function traffic(client: OpenAI): Promise<void> {
  const turn = async (text: string) => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      stream: true,
      messages: [
        { role: 'system', content: 'You are a helpful voice assistant.' },
        { role: 'user', content: text },
      ],
    });
    for await (const _ of stream);
  };
  await turn('What is the weather in Paris right now?');
  await turn('And the weather in Paris again, please?');
  await turn('Any news today?');
  await turn('Please check the broken thing.');
  await turn('Ask the oracle.');
  await turn('Weather with no city?');
  await turn('Start the engine.');
  await turn('Please keep looking until you find it.');
  await turn('Good morning to you.');
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
