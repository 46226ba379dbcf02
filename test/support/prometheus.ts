/**
 * Real Prometheus for tests: the `promtool` and `prometheus` binaries of Debian's `prometheus` package
 * (.ci/run installs it), a Prometheus server on a free loopback port scraping given targets, and a reader
 * of the text exposition format.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { stringify } from 'yaml';

/**
 * The path of a Prometheus binary. Missing in CI (CI=true) is an error; missing locally returns undefined
 * so the caller can skip, with a message saying how to get it.
 */
export function prometheusBinary(name: 'promtool' | 'prometheus'): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const path = join(dir, name);
    if (spawnSync(path, ['--version'], { stdio: 'ignore' }).status === 0) return path;
  }
  const help = `${name} not found on PATH: install Debian's prometheus package (apt-get install prometheus)`;
  if (process.env.CI === 'true') throw new Error(help);
  console.warn(`Skipping: ${help}.`);
  return undefined;
}

/** Runs promtool with the given arguments and stdin; returns its exit status and output. */
export function promtool(
  path: string,
  args: string[],
  input?: string,
): { status: number | null; output: string } {
  const run = spawnSync(path, args, { input, encoding: 'utf8', timeout: 60_000 });
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The samples of a text exposition (comments skipped). */
export function parseExposition(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)/.exec(line);
    if (!match) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const label of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[label[1] as string] = JSON.parse(`"${label[2]}"`);
    }
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return samples;
}

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

export interface ScrapeJob {
  job: string;
  /** host:port targets. */
  targets: string[];
  /** Extra labels for the targets (as Prometheus Operator adds `namespace`, `pod`). */
  labels?: Record<string, string>;
  /** The target's own labels win over `labels` (kube-state-metrics, and the operator's `namespace`). */
  honorLabels?: boolean;
}

export interface PrometheusQueryResult {
  metric: Record<string, string>;
  value: [number, string];
}

export interface RunningPrometheus {
  url: string;
  /** An instant query through the HTTP API. */
  query(promql: string): Promise<PrometheusQueryResult[]>;
  /** Label values, as Grafana's label_values() variables ask for them. */
  labelValues(label: string, match?: string): Promise<string[]>;
  /** Resolves once every target is up and was scraped after `since`. */
  scrapedSince(since: Date, seconds?: number): Promise<void>;
  close(): Promise<void>;
}

/** Starts Prometheus on 127.0.0.1 with a temp TSDB, scraping the jobs every second, with the rule files. */
export async function startPrometheus(
  binary: string,
  jobs: ScrapeJob[],
  ruleFiles: string[] = [],
): Promise<RunningPrometheus> {
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-prometheus-'));
  const config = {
    global: { scrape_interval: '1s', evaluation_interval: '1s' },
    rule_files: ruleFiles,
    scrape_configs: jobs.map((job) => ({
      job_name: job.job,
      ...(job.honorLabels ? { honor_labels: true } : {}),
      static_configs: [{ targets: job.targets, labels: job.labels ?? {} }],
    })),
  };
  await writeFile(join(dir, 'prometheus.yml'), stringify(config));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    binary,
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    log = (log + chunk.toString('utf8')).slice(-4000);
  });
  const exited = once(child, 'exit');

  const api = async (path: string): Promise<unknown> => {
    const response = await fetch(`${url}${path}`);
    const body = (await response.json()) as { status: string; data: unknown; error?: string };
    if (body.status !== 'success') throw new Error(`Prometheus ${path}: ${body.error}`);
    return body.data;
  };
  const until = async (what: string, seconds: number, check: () => Promise<boolean>) => {
    const deadline = Date.now() + seconds * 1000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`Prometheus exited (${child.exitCode}): ${log}`);
      if (await check().catch(() => false)) return;
      if (Date.now() > deadline) throw new Error(`Prometheus: ${what} within ${seconds} s. Log: ${log}`);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  };

  const prometheus: RunningPrometheus = {
    url,
    query: async (promql) =>
      (
        (await api(`/api/v1/query?query=${encodeURIComponent(promql)}`)) as {
          result: PrometheusQueryResult[];
        }
      ).result,
    labelValues: async (label, match) =>
      (await api(
        `/api/v1/label/${label}/values${match ? `?match[]=${encodeURIComponent(match)}` : ''}`,
      )) as string[],
    scrapedSince: (since, seconds = 60) =>
      until(`a scrape of every target after ${since.toISOString()}`, seconds, async () => {
        const { activeTargets } = (await api('/api/v1/targets')) as {
          activeTargets: { health: string; lastScrape: string }[];
        };
        const expected = jobs.reduce((n, job) => n + job.targets.length, 0);
        return (
          activeTargets.length === expected &&
          activeTargets.every((t) => t.health === 'up' && new Date(t.lastScrape) > since)
        );
      }),
    close: async () => {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  await until('ready', 60, async () => (await fetch(`${url}/-/ready`)).ok);
  return prometheus;
}
