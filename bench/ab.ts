/**
 * Two builds of earpiece side by side: `npm run bench:ab -- --base ../earpiece-base`. Each round gives both
 * the same streaming load at the same time (half the streams each, from one model server), so whatever else
 * the machine does in that round falls on both. It prints each build's CPU per chunk and TTFT p50 per round,
 * and the ratios (this build over the base). The full run (run.ts) compares earpiece with the bare Node hop
 * in turns, and its figures move by 10 % or more between runs; this one sees changes of a few percent.
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
import { phase, target } from './load.js';
import { cpuSeconds, type EarpieceProxy, startEarpiece, startUpstreamChild } from './procs.js';
import { STREAM_BODY, STREAM_EXPECTED, writeToolSet } from './workload.js';

const WARMUP_WORKERS = 50;
const WARMUP_PER_WORKER = 6;
const RECORDED_PER_WORKER = 3;

interface Round {
  cpuPerChunkUs: [base: number, head: number];
  ttftP50Ms: [base: number, head: number];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

/** One build's share of a round: its CPU per content chunk (µs) and its TTFT p50 (ms). */
async function share(proxy: EarpieceProxy, streams: number): Promise<{ cpuUs: number; ttftMs: number }> {
  const before = cpuSeconds(proxy.pid);
  const result = await phase(target(proxy.url), STREAM_BODY, streams, RECORDED_PER_WORKER, STREAM_EXPECTED);
  const cpu = cpuSeconds(proxy.pid) - before;
  if (result.errors.size > 0) {
    const errors = [...result.errors].map(([e, n]) => `${n} × ${e}`).join('; ');
    throw new Error(`streams failed through ${proxy.url}: ${errors}`);
  }
  return { cpuUs: (cpu / result.chunks) * 1e6, ttftMs: median(result.ttft) };
}

function render(rounds: Round[], each: number, base: string): string {
  const lines = [
    `Side by side: this build and ${base}, ${each} streams each at once, ${rounds.length} rounds.`,
    '',
    '| round | CPU µs / chunk: base | this | ratio | TTFT p50: base | this | ratio |',
    '|---|---|---|---|---|---|---|',
  ];
  rounds.forEach((r, i) => {
    const [cb, ch] = r.cpuPerChunkUs;
    const [tb, th] = r.ttftP50Ms;
    lines.push(
      `| ${i + 1} | ${cb.toFixed(1)} | ${ch.toFixed(1)} | ${(ch / cb).toFixed(3)} | ${tb.toFixed(2)} ms | ${th.toFixed(2)} ms | ${(th / tb).toFixed(3)} |`,
    );
  });
  const cpu = rounds.map((r) => r.cpuPerChunkUs[1] / r.cpuPerChunkUs[0]);
  const ttft = rounds.map((r) => r.ttftP50Ms[1] / r.ttftP50Ms[0]);
  const sum = (i: 0 | 1) => rounds.reduce((s, r) => s + r.cpuPerChunkUs[i], 0);
  lines.push(
    '',
    `CPU per chunk, this build over the base: median ${median(cpu).toFixed(3)}, all rounds together ${(sum(1) / sum(0)).toFixed(3)}, rounds from ${Math.min(...cpu).toFixed(3)} to ${Math.max(...cpu).toFixed(3)}.`,
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
    },
  });
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const baseCli = values.base ? resolve(values.base, 'dist/cmd/earpiece.js') : undefined;
  if (!baseCli || !existsSync(baseCli)) {
    log(
      values.base
        ? `--base ${values.base}: ${baseCli} does not exist; run npm ci and npm run build in that checkout first.`
        : 'usage: npm run bench:ab -- --base DIR [--rounds 10] [--streams 100] (DIR: another checkout, built)',
    );
    return 2;
  }
  const rounds = Number(values.rounds);
  const each = Math.floor(Number(values.streams) / 2);
  if (!Number.isInteger(rounds) || rounds < 1 || !Number.isInteger(each) || each < 1) {
    log(
      `--rounds must be a whole number from 1 and --streams one from 2 (got ${values.rounds}, ${values.streams}).`,
    );
    return 2;
  }

  const dir = await mkdtemp(join(tmpdir(), 'earpiece-ab-'));
  const upstream = await startUpstreamChild();
  const proxies: EarpieceProxy[] = [];
  try {
    const toolset = await writeToolSet(dir, upstream.toolUrl);
    const base = await startEarpiece(toolset, upstream.upstreamUrl, baseCli);
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
      log(`Round ${i + 1}/${rounds}: ${each} streams through each build at once`);
      // Which build's requests reach the model server first alternates from round to round.
      const [b, h] =
        i % 2 === 0
          ? await Promise.all([share(base, each), share(head, each)])
          : await Promise.all([share(head, each), share(base, each)]).then(([hh, bb]) => [bb, hh] as const);
      results.push({ cpuPerChunkUs: [b.cpuUs, h.cpuUs], ttftP50Ms: [b.ttftMs, h.ttftMs] });
      await sleep(300);
    }
    process.stdout.write(render(results, each, values.base as string));
    return 0;
  } finally {
    for (const proxy of proxies) await proxy.close();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main(process.argv.slice(2));
