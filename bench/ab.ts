/**
 * Two builds of earpiece side by side: `npm run bench:ab -- --base ../earpiece-base`. Each round gives both
 * the same streaming load at the same time (half the streams each, from one model server), so whatever else
 * the machine does in that round falls on both. It prints each build's CPU per chunk and TTFT p50 per round,
 * and the ratios (this build over the base). The full run (run.ts) compares earpiece with the bare Node hop
 * in turns, and its figures move by 10 % or more between runs; this one sees changes of a few percent.
 *
 * `--turns N` measures the full run's CPU per turn instead: brief answers one at a time, N per build and
 * round, the two builds taking turns request by request, so both see the same quiet or busy moments.
 *
 * The base is another checkout of the project, built: `git worktree add ../earpiece-base main && cd
 * ../earpiece-base && npm ci && npm run build`.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { type PhaseResult, phase, sequence, target } from './load.js';
import { cpuSeconds, type EarpieceProxy, startEarpiece, startUpstreamChild } from './procs.js';
import { BRIEF_BODY, BRIEF_EXPECTED, STREAM_BODY, STREAM_EXPECTED, writeToolSet } from './workload.js';

const WARMUP_WORKERS = 50;
const WARMUP_PER_WORKER = 6;
const RECORDED_PER_WORKER = 3;

interface Round {
  /** CPU µs per content chunk (streams), or CPU ms per turn (turns). */
  cpu: [base: number, head: number];
  ttftP50Ms: [base: number, head: number];
}

/** What a round measures: many streams at once, or brief turns one at a time. */
interface Measure {
  title: string;
  /** How CPU is counted: the table's column (`CPU µs / chunk`), the summary's name, and decimals shown. */
  cpu: { column: string; name: string; digits: number };
  round(base: EarpieceProxy, head: EarpieceProxy, index: number): Promise<Round>;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function failures(proxy: EarpieceProxy, result: PhaseResult): void {
  if (result.errors.size === 0) return;
  const errors = [...result.errors].map(([e, n]) => `${n} × ${e}`).join('; ');
  throw new Error(`streams failed through ${proxy.url}: ${errors}`);
}

/** One build's share of a round: its CPU per content chunk (µs) and its TTFT p50 (ms). */
async function share(proxy: EarpieceProxy, streams: number): Promise<{ cpuUs: number; ttftMs: number }> {
  const before = cpuSeconds(proxy.pid);
  const result = await phase(target(proxy.url), STREAM_BODY, streams, RECORDED_PER_WORKER, STREAM_EXPECTED);
  const cpu = cpuSeconds(proxy.pid) - before;
  failures(proxy, result);
  return { cpuUs: (cpu / result.chunks) * 1e6, ttftMs: median(result.ttft) };
}

function streamsMeasure(each: number): Measure {
  return {
    title: `${each} streams each at once`,
    cpu: { column: 'CPU µs / chunk', name: 'CPU µs per chunk', digits: 1 },
    async round(base, head, i) {
      // Which build's requests reach the model server first alternates from round to round.
      const [b, h] =
        i % 2 === 0
          ? await Promise.all([share(base, each), share(head, each)])
          : await Promise.all([share(head, each), share(base, each)]).then(([hh, bb]) => [bb, hh] as const);
      return { cpu: [b.cpuUs, h.cpuUs], ttftP50Ms: [b.ttftMs, h.ttftMs] };
    },
  };
}

function turnsMeasure(turns: number): Measure {
  return {
    title: `${turns} brief turns each, one at a time, alternating`,
    cpu: { column: 'CPU ms / turn', name: 'CPU ms per turn', digits: 3 },
    async round(base, head, i) {
      const proxies = [base, head] as const;
      const ttft: [number[], number[]] = [[], []];
      const before = proxies.map((p) => cpuSeconds(p.pid));
      for (let t = 0; t < turns; t++) {
        // Which build answers first alternates, turn by turn and round by round.
        const first = (t + i) % 2;
        for (const which of [first, 1 - first]) {
          const proxy = proxies[which] as EarpieceProxy;
          const result = await sequence(target(proxy.url), BRIEF_BODY, 1, BRIEF_EXPECTED);
          failures(proxy, result);
          ttft[which]?.push(...result.ttft);
        }
      }
      const cpuMs = proxies.map((p, k) => ((cpuSeconds(p.pid) - (before[k] as number)) / turns) * 1000);
      return {
        cpu: [cpuMs[0] as number, cpuMs[1] as number],
        ttftP50Ms: [median(ttft[0]), median(ttft[1])],
      };
    },
  };
}

function render(rounds: Round[], measure: Measure, base: string): string {
  const lines = [
    `Side by side: this build and ${base}, ${measure.title}, ${rounds.length} rounds.`,
    '',
    `| round | ${measure.cpu.column}: base | this | ratio | TTFT p50: base | this | ratio |`,
    '|---|---|---|---|---|---|---|',
  ];
  const { digits } = measure.cpu;
  rounds.forEach((r, i) => {
    const [cb, ch] = r.cpu;
    const [tb, th] = r.ttftP50Ms;
    lines.push(
      `| ${i + 1} | ${cb.toFixed(digits)} | ${ch.toFixed(digits)} | ${(ch / cb).toFixed(3)} | ${tb.toFixed(2)} ms | ${th.toFixed(2)} ms | ${(th / tb).toFixed(3)} |`,
    );
  });
  const cpu = rounds.map((r) => r.cpu[1] / r.cpu[0]);
  const ttft = rounds.map((r) => r.ttftP50Ms[1] / r.ttftP50Ms[0]);
  const sum = (i: 0 | 1) => rounds.reduce((s, r) => s + r.cpu[i], 0);
  lines.push(
    '',
    `${measure.cpu.name}, this build over the base: median ${median(cpu).toFixed(3)}, all rounds together ${(sum(1) / sum(0)).toFixed(3)}, rounds from ${Math.min(...cpu).toFixed(3)} to ${Math.max(...cpu).toFixed(3)}.`,
    `TTFT p50, this build over the base: median ${median(ttft).toFixed(3)}.`,
    '',
  );
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      base: { type: 'string' },
      rounds: { type: 'string', default: '10' },
      streams: { type: 'string', default: '100' },
      turns: { type: 'string' },
    },
  });
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const baseCli = values.base ? resolve(values.base, 'dist/cmd/earpiece.js') : undefined;
  if (!baseCli || !existsSync(baseCli)) {
    log(
      values.base
        ? `--base ${values.base}: ${baseCli} does not exist; run npm ci and npm run build in that checkout first.`
        : 'usage: npm run bench:ab -- --base DIR [--rounds 10] [--streams 100 | --turns 150] (DIR: another checkout, built)',
    );
    return 2;
  }
  const rounds = Number(values.rounds);
  const each = Math.floor(Number(values.streams) / 2);
  const turns = values.turns === undefined ? undefined : Number(values.turns);
  if (
    !Number.isInteger(rounds) ||
    rounds < 1 ||
    !Number.isInteger(each) ||
    each < 1 ||
    (turns !== undefined && !(Number.isInteger(turns) && turns >= 1))
  ) {
    log(
      `--rounds and --turns must be whole numbers from 1 and --streams one from 2 (got ${values.rounds}, ${values.turns}, ${values.streams}).`,
    );
    return 2;
  }
  const measure = turns === undefined ? streamsMeasure(each) : turnsMeasure(turns);

  const dir = await mkdtemp(join(tmpdir(), 'earpiece-ab-'));
  const upstream = await startUpstreamChild();
  const proxies: EarpieceProxy[] = [];
  try {
    const toolset = await writeToolSet(dir, upstream.toolUrl);
    const base = await startEarpiece(toolset, upstream.upstreamUrl, { cli: baseCli });
    proxies.push(base);
    const head = await startEarpiece(toolset, upstream.upstreamUrl);
    proxies.push(head);
    await sleep(2000);
    for (const proxy of [base, head]) {
      log(`Warm-up: ${WARMUP_WORKERS * WARMUP_PER_WORKER} or more unrecorded streams: ${proxy.url}`);
      await phase(target(proxy.url), STREAM_BODY, WARMUP_WORKERS, WARMUP_PER_WORKER, STREAM_EXPECTED);
    }
    const results: Round[] = [];
    for (let i = 0; i < rounds; i++) {
      log(`Round ${i + 1}/${rounds}: ${measure.title}`);
      results.push(await measure.round(base, head, i));
      await sleep(300);
    }
    process.stdout.write(render(results, measure, values.base as string));
    return 0;
  } finally {
    for (const proxy of proxies) await proxy.close();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main(process.argv.slice(2));
