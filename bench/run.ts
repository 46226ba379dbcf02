/**
 * `npm run bench`: what earpiece adds to a streamed turn, against the same scripted vLLM server reached
 * directly, through nginx, through the bare Node hop (the floor for any Node.js proxy) and through the
 * decoding hop (the floor for one that reads the model's text before passing it on): steady load at
 * 1, 100 and 1,000 concurrent streams, one stream at a time (≥ 200 TTFT samples), bursts of 100 and 1,000
 * requests at once; the tool hand-offs on a tool turn and the early start of a two-call message; barge-in;
 * idle and peak memory; the tool memory's lookup cost. Prints a markdown table and writes it to
 * bench/results/latest.md. Figures only: the targets are marked pass/fail, never enforced.
 *
 * Method and caveats: docs/benchmark.md.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { IDLE_COLLECTION_AFTER_MS } from '../src/runtime/heap.js';
import { FLOODS, type FloodPeak } from './floods.js';
import { burst, type PhaseResult, phase, sequence, stream, type Target, target } from './load.js';
import { type LookupCost, measureLookup } from './memory.js';
import {
  cpuSeconds,
  type EarpieceProxy,
  memoryMb,
  type NginxProxy,
  type NodeHop,
  nginxVersion,
  openFileLimits,
  resetPeakMemory,
  startEarpiece,
  startNginx,
  startNodeHop,
  startUpstreamChild,
  type UpstreamChild,
} from './procs.js';
import { PACE_MS } from './protocol.js';
import {
  measureSharedState,
  REDIS_BOUND_MS,
  redisAvailable,
  type SharedStateCost,
  sharedStateReport,
} from './shared-state.js';
import { measureSilence, renderSilence } from './silence.js';
import { measureSpeakable, renderSpeakable } from './speakable.js';
import {
  BRIEF_BODY,
  BRIEF_EXPECTED,
  STREAM_BODY,
  STREAM_EXPECTED,
  unmuteRequest,
  writeToolSet,
} from './workload.js';

/**
 * `node` is the bare Node.js hop (bench/node-hop.ts): what Node itself costs as a proxy here; `decoding` is
 * the same hop decoding the model's stream and writing its text again with earpiece's own decoder and sink.
 */
type Mode = 'direct' | 'nginx' | 'node' | 'decoding' | 'earpiece';
const PATH_LABEL: Record<Mode, string> = {
  direct: 'direct',
  nginx: 'nginx',
  node: 'bare Node hop',
  decoding: 'decoding hop',
  earpiece: 'earpiece',
};
/** Measured streams per worker and round: more where there are few workers. */
function recordedPerWorker(concurrency: number): number {
  return concurrency === 1 ? 7 : concurrency <= 100 ? 3 : 2;
}
const WARMUP_WORKERS = 50;
const WARMUP_PER_WORKER = 6;
const TOOL_TURNS = 300;
const TOOL_WARMUP = 20;
const FILES_NEEDED = 8192;

const TWO_CALL_TURNS = 50;
/** Unrecorded two-call messages first: the mid-stream start is its own code, cold until a sidecar has run it. */
const TWO_CALL_WARMUP = 5;

/** Against the bare Node hop measured in the same run (nginx for the 100-stream tail). */
const TARGETS = {
  /** Added TTFT p50 at one stream ≤ the hop's added TTFT + this. */
  oneStreamOverHopMs: 0.3,
  oneStreamSamples: 200,
  burstP50VsHop: 1.15,
  burstP99VsHop: 1.25,
  steady100P99VsNginx: 1.2,
  steady1000P50VsHop: 1.3,
  cpuPerTurnVsHop: 1.2,
  cpuPerChunkVsHop: 1.15,
  earlyStartMs: 1,
  handoffMs: 1,
  cancelMs: 100,
  idleRssMb: 90,
  lookupUs: 20,
};

// ---- statistics ----

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] as number;
}

function sorted(values: number[]): Float64Array {
  return Float64Array.from(values).sort();
}

interface Series {
  ttft: number[];
  /** TTFT p50 of each round, to show how much rounds differ. */
  roundTtftP50: number[];
  gaps: number[];
  streams: number;
  chunks: number;
  errors: Map<string, number>;
  proxyCpu: number;
  driverCpu: number;
  upstreamCpu: number;
  wallSeconds: number;
}

interface Summary {
  roundTtftP50: number[];
  ttftP50: number;
  ttftP99: number;
  gapP50: number;
  gapP99: number;
  samples: number;
  errors: number;
  errorKinds: string[];
  cpuPer1k: number | undefined;
  driverLoad: number;
  upstreamLoad: number;
  proxyLoad: number | undefined;
  peakRssMb: number | undefined;
}

function summarize(s: Series, hasProxy: boolean, peakRssMb: number | undefined): Summary {
  const t = sorted(s.ttft);
  const g = sorted(s.gaps);
  let errors = 0;
  for (const n of s.errors.values()) errors += n;
  return {
    roundTtftP50: s.roundTtftP50,
    ttftP50: percentile(t, 50),
    ttftP99: percentile(t, 99),
    gapP50: percentile(g, 50),
    gapP99: percentile(g, 99),
    samples: s.ttft.length,
    errors,
    errorKinds: [...s.errors].map(([k, n]) => `${n}× ${k}`),
    cpuPer1k: hasProxy ? (s.proxyCpu / s.chunks) * 1000 : undefined,
    driverLoad: s.driverCpu / s.wallSeconds,
    upstreamLoad: s.upstreamCpu / s.wallSeconds,
    proxyLoad: hasProxy ? s.proxyCpu / s.wallSeconds : undefined,
    peakRssMb,
  };
}

// ---- formatting ----

const ms = (v: number | undefined, digits = 2) =>
  v === undefined || Number.isNaN(v) ? '—' : `${v.toFixed(digits)} ms`;
const signedMs = (v: number) => (Number.isNaN(v) ? '—' : `${v >= 0 ? '+' : '−'}${Math.abs(v).toFixed(2)} ms`);
const mark = (ok: boolean) => (ok ? 'pass' : '**FAIL**');

// ---- the run ----

interface Proxies {
  upstream: UpstreamChild;
  nginx: NginxProxy | undefined;
  node: NodeHop;
  decoding: NodeHop;
  earpiece: EarpieceProxy;
}

function proxyPid(mode: Mode, p: Proxies): number | undefined {
  if (mode === 'nginx') return p.nginx?.workerPid;
  if (mode === 'earpiece') return p.earpiece.pid;
  if (mode === 'node') return p.node.pid;
  if (mode === 'decoding') return p.decoding.pid;
  return undefined;
}

async function measuredPhase(
  mode: Mode,
  to: Target,
  p: Proxies,
  concurrency: number,
  series: Series,
): Promise<void> {
  const pid = proxyPid(mode, p);
  const proxyBefore = pid === undefined ? 0 : cpuSeconds(pid);
  const upstreamBefore = cpuSeconds(p.upstream.pid);
  const driverBefore = process.cpuUsage();
  const r: PhaseResult = await phase(
    to,
    STREAM_BODY,
    concurrency,
    recordedPerWorker(concurrency),
    STREAM_EXPECTED,
  );
  const driver = process.cpuUsage(driverBefore);
  series.driverCpu += (driver.user + driver.system) / 1e6;
  series.upstreamCpu += cpuSeconds(p.upstream.pid) - upstreamBefore;
  if (pid !== undefined) series.proxyCpu += cpuSeconds(pid) - proxyBefore;
  series.ttft.push(...r.ttft);
  series.roundTtftP50.push(percentile(sorted(r.ttft), 50));
  for (const gap of r.gaps) series.gaps.push(gap);
  series.streams += r.streams;
  series.chunks += r.chunks;
  series.wallSeconds += r.wallSeconds;
  for (const [k, n] of r.errors) series.errors.set(k, (series.errors.get(k) ?? 0) + n);
}

interface Handoffs {
  callToTool: number[];
  toolToNext: number[];
  errors: number;
}

const CANCEL_TURNS = 100;

export interface Cancellations {
  /** Client hang-up → the model's response closed by the proxy, ms. */
  upstream: number[];
  /** Client hang-up → the running tool's request closed by the proxy, ms. */
  tool: number[];
  errors: number;
}

/**
 * Unmute's barge-in: the client closes the socket mid-answer (after the first word) or mid-tool (after the
 * filler). The hang-up time is taken here and the closes in the child, on the same system clock
 * (performance.timeOrigin + performance.now() in both processes).
 */
function interrupt(to: Target, body: string, after: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const guard = setTimeout(() => {
      req.destroy();
      resolve(undefined);
    }, 10_000);
    const req = request(to.url, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    });
    req.on('response', (res) => {
      let seen = '';
      res.setEncoding('utf8');
      res.on('data', (text: string) => {
        seen += text;
        if (!seen.includes(after)) return;
        // The tool request leaves right after the filler; give it a moment to be in flight.
        const hangUp = () => {
          clearTimeout(guard);
          const at = performance.timeOrigin + performance.now();
          req.destroy();
          resolve(at);
        };
        res.removeAllListeners('data');
        if (after === 'One moment.') setTimeout(hangUp, 50);
        else hangUp();
      });
    });
    req.on('error', () => {});
    req.end(body);
  });
}

async function cancellations(p: Proxies, to: Target): Promise<Cancellations> {
  let errors = 0;
  const hungUp: Record<string, number> = {};
  for (let n = 0; n < CANCEL_TURNS; n++) {
    for (const kind of ['stream', 'tool'] as const) {
      const key = `${kind}-${n}`;
      const at = await interrupt(
        to,
        unmuteRequest(`Talk about cancel-${key}, please.`),
        kind === 'stream' ? '"delta":{"content":"' : 'One moment.',
      );
      if (at === undefined) errors++;
      else hungUp[key] = at;
    }
  }
  await sleep(1000); // every close has happened by now, or it never will
  const stamps = await p.upstream.stamps();
  const upstream: number[] = [];
  const tool: number[] = [];
  for (const [key, at] of Object.entries(hungUp)) {
    const s = stamps[key];
    const closed = key.startsWith('stream') ? s?.upstreamClosed : s?.toolClosed;
    if (closed === undefined) {
      errors++;
      continue;
    }
    (key.startsWith('stream') ? upstream : tool).push(closed - at);
  }
  return { upstream, tool, errors };
}

/** Sequential tool turns through earpiece; the hand-off stamps come from the upstream child's clock. */
async function toolTurns(p: Proxies, to: Target): Promise<Handoffs> {
  let errors = 0;
  for (let n = 0; n < TOOL_WARMUP + TOOL_TURNS; n++) {
    const outcome = await stream(to, unmuteRequest(`What's the weather at bench-${n}?`));
    if (!outcome.ok || !outcome.text.includes(`sunny at bench-${n}`)) errors++;
  }
  const stamps = await p.upstream.stamps();
  const callToTool: number[] = [];
  const toolToNext: number[] = [];
  for (let n = TOOL_WARMUP; n < TOOL_WARMUP + TOOL_TURNS; n++) {
    const s = stamps[String(n)];
    if (
      s?.callSent === undefined ||
      s.toolAsked === undefined ||
      s.toolAnswered === undefined ||
      s.nextAsked === undefined
    ) {
      errors++;
      continue;
    }
    callToTool.push(s.toolAsked - s.callSent);
    toolToNext.push(s.nextAsked - s.toolAnswered);
  }
  return { callToTool, toolToNext, errors };
}

/** TTFT samples of one kind of load per path, with the proxy's CPU over the same phases. */
interface Samples {
  ttft: number[];
  streams: number;
  chunks: number;
  errors: Map<string, number>;
  proxyCpu: number;
}

function emptySamples(): Samples {
  return { ttft: [], streams: 0, chunks: 0, errors: new Map(), proxyCpu: 0 };
}

async function sampled(
  mode: Mode,
  p: Proxies,
  into: Samples,
  run: () => Promise<PhaseResult>,
): Promise<void> {
  const pid = proxyPid(mode, p);
  const before = pid === undefined ? 0 : cpuSeconds(pid);
  const r = await run();
  if (pid !== undefined) into.proxyCpu += cpuSeconds(pid) - before;
  into.ttft.push(...r.ttft);
  into.streams += r.streams;
  into.chunks += r.chunks;
  for (const [k, n] of r.errors) into.errors.set(k, (into.errors.get(k) ?? 0) + n);
}

/**
 * Rounds over the paths (first path rotating), each running `run` once per round, after `prepare` (not
 * measured) when given.
 */
async function interleaved(
  label: string,
  modes: readonly Mode[],
  rounds: number,
  p: Proxies,
  run: (mode: Mode) => Promise<PhaseResult>,
  prepare?: (mode: Mode) => Promise<unknown>,
): Promise<Map<Mode, Samples>> {
  const out = new Map<Mode, Samples>(modes.map((m) => [m, emptySamples()]));
  for (let round = 0; round < rounds; round++) {
    for (const mode of modes.map((_, i) => modes[(i + round) % modes.length] as Mode)) {
      process.stderr.write(`${label}, round ${round + 1}/${rounds}: ${mode}\n`);
      await prepare?.(mode);
      await sampled(mode, p, out.get(mode) as Samples, () => run(mode));
      await sleep(300);
    }
  }
  return out;
}

interface EarlyStart {
  /** Call 0 complete (the model wrote call 1's first delta) → tool 0's request received, ms. */
  afterComplete: number[];
  /** Tool 0's request received before the model wrote call 1's last token. */
  beforeSecondEnded: number;
  errors: number;
}

/**
 * Two-call messages at a model's pace through earpiece, one at a time, after the tool turns: a sidecar's tool
 * path has run before, and measured on a process that never ran a tool, the early start read 0.3 ms slower
 * (JIT tiers, the tool origin's first connection).
 */
async function twoCallTurns(p: Proxies, to: Target): Promise<EarlyStart> {
  let errors = 0;
  for (let n = 0; n < TWO_CALL_WARMUP + TWO_CALL_TURNS; n++) {
    const outcome = await stream(to, unmuteRequest(`Weather at two places, two-calls-${n}?`));
    if (!outcome.ok || !outcome.text.includes('Sunny at both.')) errors++;
  }
  const stamps = await p.upstream.stamps();
  const afterComplete: number[] = [];
  let beforeSecondEnded = 0;
  for (let n = TWO_CALL_WARMUP; n < TWO_CALL_WARMUP + TWO_CALL_TURNS; n++) {
    const s = stamps[`two-${n}`];
    if (s?.firstCallComplete === undefined || s.toolAsked === undefined || s.secondCallEnd === undefined) {
      errors++;
      continue;
    }
    afterComplete.push(s.toolAsked - s.firstCallComplete);
    if (s.toolAsked < s.secondCallEnd) beforeSecondEnded++;
  }
  return { afterComplete, beforeSecondEnded, errors };
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      rounds: { type: 'string', default: '3' },
      streams: { type: 'string', default: '1,100,1000' },
      burst: { type: 'string', default: '100,1000' },
      single: { type: 'string', default: String(TARGETS.oneStreamSamples + 10) },
      // `--only voice`: the silence on tool turns and the speakable filter's cost, without the stream load.
      only: { type: 'string' },
    },
  });
  const rounds = Math.max(1, Number(values.rounds));
  const levels = values.streams.split(',').filter(Boolean).map(Number);
  const bursts = values.burst.split(',').filter(Boolean).map(Number);
  const singlePerRound = Math.ceil(Math.max(1, Number(values.single)) / rounds);
  const log = (line: string) => process.stderr.write(`${line}\n`);
  if (values.only === 'voice') {
    const report = await voiceReport(log);
    process.stdout.write(report);
    const out = fileURLToPath(new URL('../../bench/results/voice.md', import.meta.url));
    await writeFile(out, report);
    log(`Written to ${out}`);
    return 0;
  }
  const began = performance.now();
  // Other work on the machine shows in every figure: the run reports the load it started under.
  const loadBefore = loadavg()[0] as number;

  const files = openFileLimits();
  if (files.soft < FILES_NEEDED) {
    if (files.hard < FILES_NEEDED || process.env.EARPIECE_BENCH_RAISED) {
      log(
        `The open-file limit is ${files.soft} (hard ${files.hard}); 1,000 streams need ${FILES_NEEDED}: raise it (ulimit -n).`,
      );
      return 1;
    }
    // The soft limit may be raised up to the hard one; the shell does it, then runs the benchmark again.
    const child = spawn(
      'sh',
      [
        '-c',
        `ulimit -n ${FILES_NEEDED} && exec "$0" "$@"`,
        process.execPath,
        ...process.execArgv,
        fileURLToPath(import.meta.url),
        ...argv,
      ],
      {
        stdio: 'inherit',
        env: { ...process.env, EARPIECE_BENCH_RAISED: '1' },
      },
    );
    const [code] = (await once(child, 'exit')) as [number | null];
    return code ?? 1;
  }

  log('Tool memory lookup (in process)…');
  const lookup: LookupCost = measureLookup();
  const sharedState = redisAvailable() ? await measureSharedState(log) : undefined;

  const dir = await mkdtemp(join(tmpdir(), 'earpiece-bench-'));
  const version = nginxVersion();
  const upstream = await startUpstreamChild();
  let nginx: NginxProxy | undefined;
  let earpiece: EarpieceProxy | undefined;
  let node: NodeHop | undefined;
  let decoding: NodeHop | undefined;
  let targets: Partial<Record<Mode, Target>> | undefined;
  try {
    if (version) nginx = await startNginx(join(dir, 'nginx'), upstream.upstreamUrl, version);
    else log('nginx is not on PATH: the nginx column is skipped (Debian: apt-get install nginx-light).');
    const toolsetPath = await writeToolSet(dir, upstream.toolUrl);
    earpiece = await startEarpiece(toolsetPath, upstream.upstreamUrl);
    node = await startNodeHop(upstream.upstreamUrl);
    decoding = await startNodeHop(upstream.upstreamUrl, { decode: true });
    const p: Proxies = { upstream, nginx, node, decoding, earpiece };
    // Let start-up work (module loading, first GC) settle before reading the idle footprint.
    await sleep(2000);
    const idle = {
      earpiece: memoryMb(earpiece.pid, 'VmRSS'),
      nginx: nginx ? memoryMb(nginx.workerPid, 'VmRSS') : undefined,
    };

    const to: Partial<Record<Mode, Target>> = {
      direct: target(upstream.upstreamUrl),
      earpiece: target(earpiece.url),
      node: target(node.url),
      decoding: target(decoding.url),
      ...(nginx ? { nginx: target(nginx.url) } : {}),
    };
    targets = to;
    const modes = (['direct', 'nginx', 'node', 'decoding', 'earpiece'] as const).filter((m) => to[m]);
    const results = new Map<number, Map<Mode, Summary>>();

    // A sidecar has served many turns before any one that counts: every path first streams a few hundred
    // unrecorded turns, so the figures are of code V8 has compiled, not of a process's first requests.
    for (const mode of modes) {
      log(`Warm-up: ${WARMUP_WORKERS * WARMUP_PER_WORKER} or more unrecorded streams: ${mode}`);
      await phase(to[mode] as Target, STREAM_BODY, WARMUP_WORKERS, WARMUP_PER_WORKER, STREAM_EXPECTED);
    }

    for (const concurrency of levels) {
      const series = new Map<Mode, Series>(
        modes.map((m) => [
          m,
          {
            ttft: [],
            roundTtftP50: [],
            gaps: [],
            streams: 0,
            chunks: 0,
            errors: new Map(),
            proxyCpu: 0,
            driverCpu: 0,
            upstreamCpu: 0,
            wallSeconds: 0,
          },
        ]),
      );
      for (let round = 0; round < rounds; round++) {
        // Rotate which mode goes first, so drift over the run (heat, other tenants) spreads evenly.
        const order = modes.map((_, i) => modes[(i + round) % modes.length] as Mode);
        for (const mode of order) {
          log(`${concurrency} stream(s), round ${round + 1}/${rounds}: ${mode}`);
          await measuredPhase(mode, to[mode] as Target, p, concurrency, series.get(mode) as Series);
          await sleep(300);
        }
      }
      const peak: Partial<Record<Mode, number>> = {
        earpiece: memoryMb(earpiece.pid, 'VmHWM'),
        ...(nginx ? { nginx: memoryMb(nginx.workerPid, 'VmHWM') } : {}),
      };
      results.set(
        concurrency,
        new Map(modes.map((m) => [m, summarize(series.get(m) as Series, m !== 'direct', peak[m])])),
      );
    }

    const single = await interleaved('One stream at a time (brief answers)', modes, rounds, p, (mode) =>
      sequence(to[mode] as Target, BRIEF_BODY, singlePerRound, BRIEF_EXPECTED),
    );
    const burstResults = new Map<number, Map<Mode, Samples>>();
    for (const size of bursts)
      burstResults.set(
        size,
        await interleaved(
          `Burst of ${size}`,
          modes,
          rounds,
          p,
          (mode) => burst(to[mode] as Target, STREAM_BODY, size, STREAM_EXPECTED),
          // Each path gets its burst on as many kept-alive connections as it has requests: paths close idle
          // ones after different times (earpiece 65 s, the hop 120 s), and a burst of new connections
          // measures the client's and the kernel's connection set-up more than the proxy.
          (mode) => phase(to[mode] as Target, BRIEF_BODY, size, 1, BRIEF_EXPECTED),
        ),
      );

    log(`Tool turns through earpiece (${TOOL_TURNS}, one at a time)…`);
    const handoffs = await toolTurns(p, to.earpiece as Target);
    log(`Two-call messages through earpiece (${TWO_CALL_TURNS}, one at a time)…`);
    const early = await twoCallTurns(p, to.earpiece as Target);
    log(`Interrupted turns through earpiece (${CANCEL_TURNS} streams, ${CANCEL_TURNS} tool calls)…`);
    const cancelled = await cancellations(p, to.earpiece as Target);
    const floods = await floodPeaks(earpiece, log);
    const released = await idleCollection(toolsetPath, upstream.upstreamUrl, log);

    const voice = await voiceReport(log);
    const report = render({
      results,
      single,
      bursts: burstResults,
      early,
      modes,
      idle,
      released,
      handoffs,
      cancelled,
      floods,
      lookup,
      sharedState,
      rounds,
      loadBefore,
      nginxVersion: version,
      seconds: (performance.now() - began) / 1000,
    });
    process.stdout.write(report + voice);
    const out = fileURLToPath(new URL('../../bench/results/latest.md', import.meta.url));
    await writeFile(out, report + voice);
    log(`Written to ${out}`);
    return 0;
  } finally {
    for (const t of Object.values(targets ?? {})) t.agent.destroy();
    await earpiece?.close();
    await node?.close();
    await decoding?.close();
    await nginx?.close();
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The streams of the burst after which the idle collection is measured. */
const RELEASE_STREAMS = 1000;

/**
 * The memory a load grows, given back once no turn has been open for the idle collection's wait: a proxy
 * of its own (the measured one runs without the collection; see startEarpiece) takes two phases of
 * RELEASE_STREAMS streams, then idles.
 */
async function idleCollection(
  toolsetPath: string,
  upstreamUrl: string,
  log: (line: string) => void,
): Promise<Released> {
  const idleCollectionAfter = `${IDLE_COLLECTION_AFTER_MS}ms`;
  // Past the wait, with room for the collection itself.
  const quietMs = IDLE_COLLECTION_AFTER_MS + 5000;
  const earpiece = await startEarpiece(toolsetPath, upstreamUrl, { idleCollectionAfter });
  const to = target(earpiece.url);
  try {
    await sleep(2000);
    const idle = memoryMb(earpiece.pid, 'VmRSS');
    log(
      `Idle collection: ${RELEASE_STREAMS} streams at once, twice, then ${quietMs / 1000} s with no turn open…`,
    );
    const r = await phase(to, STREAM_BODY, RELEASE_STREAMS, 2, STREAM_EXPECTED);
    const afterLoad = memoryMb(earpiece.pid, 'VmRSS');
    await sleep(quietMs);
    return {
      idle,
      afterLoad,
      afterQuiet: memoryMb(earpiece.pid, 'VmRSS'),
      quietSeconds: quietMs / 1000,
      errors: r.errors.size,
    };
  } finally {
    to.agent.destroy();
    await earpiece.close();
  }
}

interface Released {
  idle: number;
  afterLoad: number;
  afterQuiet: number;
  quietSeconds: number;
  errors: number;
}

/** Each flood alone against earpiece, with its own RSS peak; undefined where the peak cannot be reset. */
async function floodPeaks(
  earpiece: EarpieceProxy,
  log: (line: string) => void,
): Promise<FloodPeak[] | undefined> {
  const peaks: FloodPeak[] = [];
  for (const flood of FLOODS) {
    log(`Flood: ${flood.name}…`);
    await sleep(1000);
    if (!resetPeakMemory(earpiece.pid)) return undefined;
    const began = performance.now();
    const answers = await flood.run(earpiece.url);
    peaks.push({
      name: flood.name,
      answers,
      peakMb: memoryMb(earpiece.pid, 'VmHWM'),
      seconds: (performance.now() - began) / 1000,
    });
  }
  return peaks;
}

/** The voice figures: silence on tool turns (real proxy, real waits) and the speakable filter's cost. */
async function voiceReport(log: (line: string) => void): Promise<string> {
  const loadBefore = loadavg()[0] as number;
  log('Speakable-text filter (in process)…');
  const speakable = renderSpeakable(measureSpeakable());
  const silence = renderSilence(await measureSilence(log));
  return [
    '',
    `## Voice (load average ${loadBefore.toFixed(2)} at the start: on a shared machine these figures are noisy)`,
    '',
    silence,
    speakable,
  ].join('\n');
}

function render(r: {
  results: Map<number, Map<Mode, Summary>>;
  single: Map<Mode, Samples>;
  bursts: Map<number, Map<Mode, Samples>>;
  early: EarlyStart;
  modes: Mode[];
  idle: { earpiece: number; nginx: number | undefined };
  released: Released;
  handoffs: Handoffs;
  cancelled: Cancellations;
  floods: FloodPeak[] | undefined;
  lookup: LookupCost;
  sharedState: SharedStateCost | undefined;
  rounds: number;
  loadBefore: number;
  nginxVersion: string | undefined;
  seconds: number;
}): string {
  const lines: string[] = [];
  const cpu = cpus();
  lines.push(
    `Run of ${new Date().toISOString().slice(0, 10)} on ${cpu.length} × ${cpu[0]?.model.trim() ?? 'CPU'}, Node ${process.versions.node}, ${r.nginxVersion ?? 'no nginx'}; ${r.rounds} interleaved rounds, ${Math.round(r.seconds)} s in all; 1-minute load average before the run ${r.loadBefore.toFixed(2)}.`,
    '',
    '| streams | path | TTFT p50 | TTFT p99 | added TTFT p50 | added TTFT p99 | added gap p50 | added gap p99 | proxy CPU s / 1k chunks | proxy peak RSS | errors |',
    '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  );
  for (const [concurrency, byMode] of r.results) {
    const direct = byMode.get('direct') as Summary;
    for (const mode of r.modes) {
      const s = byMode.get(mode) as Summary;
      const base = mode === 'direct';
      lines.push(
        `| ${concurrency.toLocaleString('en')} | ${PATH_LABEL[mode]} | ${ms(s.ttftP50)} | ${ms(s.ttftP99)} | ${base ? '—' : signedMs(s.ttftP50 - direct.ttftP50)} | ${base ? '—' : signedMs(s.ttftP99 - direct.ttftP99)} | ${base ? '—' : signedMs(s.gapP50 - direct.gapP50)} | ${base ? '—' : signedMs(s.gapP99 - direct.gapP99)} | ${s.cpuPer1k === undefined ? '—' : s.cpuPer1k.toFixed(3)} | ${s.peakRssMb === undefined ? '—' : `${s.peakRssMb.toFixed(0)} MB`} | ${s.errors} |`,
      );
    }
  }
  if (!r.modes.includes('nginx')) lines.push('', 'nginx was not on PATH: the nginx rows were skipped.');
  const saturated = [...r.results]
    .filter(([, byMode]) => (byMode.get('direct') as Summary).gapP50 > PACE_MS * 1.1)
    .map(([c]) => c.toLocaleString('en'));
  if (saturated.length > 0)
    lines.push(
      '',
      `At ${saturated.join(' and ')} streams the model server could not keep its ${PACE_MS} ms pace even when reached directly: the machine was saturated, and the figures there compare who got the CPU.`,
    );

  const h = r.handoffs;
  const call = sorted(h.callToTool);
  const next = sorted(h.toolToNext);
  lines.push(
    '',
    `Tool turn through earpiece (${h.callToTool.length} turns, one at a time; one clock, in the process that serves both the model and the tool):`,
    '',
    '| hand-off | p50 | p99 | max |',
    '|---|---:|---:|---:|',
    `| model's last tool-call byte → tool request received | ${ms(percentile(call, 50), 3)} | ${ms(percentile(call, 99), 3)} | ${ms(call.at(-1), 3)} |`,
    `| tool answer sent → next model request received | ${ms(percentile(next, 50), 3)} | ${ms(percentile(next, 99), 3)} | ${ms(next.at(-1), 3)} |`,
  );
  if (h.errors > 0) lines.push('', `${h.errors} tool turns failed or lacked a timestamp.`);

  const c = r.cancelled;
  const sortedUpstream = sorted(c.upstream);
  const sortedTool = sorted(c.tool);
  lines.push(
    '',
    `Barge-in through earpiece (${CANCEL_TURNS} of each, one at a time; the client hangs up after the first word, or 50 ms after the filler while a tool runs):`,
    '',
    '| client hangs up → | p50 | p99 | max |',
    '|---|---:|---:|---:|',
    `| model's response closed by the proxy | ${ms(percentile(sortedUpstream, 50), 3)} | ${ms(percentile(sortedUpstream, 99), 3)} | ${ms(sortedUpstream.at(-1), 3)} |`,
    `| running tool's request closed by the proxy | ${ms(percentile(sortedTool, 50), 3)} | ${ms(percentile(sortedTool, 99), 3)} | ${ms(sortedTool.at(-1), 3)} |`,
  );
  if (c.errors > 0) lines.push('', `${c.errors} interrupted turns failed or lacked a timestamp.`);

  lines.push(
    '',
    `Proxy RSS at idle after start: earpiece ${r.idle.earpiece.toFixed(1)} MB${r.idle.nginx === undefined ? '' : `, nginx worker ${r.idle.nginx.toFixed(1)} MB`}. ` +
      `Tool memory lookup (ToolMemory.prepare, 40 messages, ${r.lookup.historyChars.toLocaleString('en')} characters, median of ${r.lookup.hitRuns.length} runs): ` +
      `${r.lookup.hitUs.toFixed(2)} µs with two exchanges spliced back, ${r.lookup.missUs.toFixed(2)} µs with none.`,
    '',
    `The idle collection (a proxy of its own, with the default --idle-collection-after ${IDLE_COLLECTION_AFTER_MS / 1000}s): RSS ${r.released.idle.toFixed(1)} MB at idle, ` +
      `${r.released.afterLoad.toFixed(1)} MB after two phases of ${RELEASE_STREAMS} streams${r.released.errors > 0 ? ` (${r.released.errors} kinds of error)` : ''}, ` +
      `${r.released.afterQuiet.toFixed(1)} MB after ${r.released.quietSeconds} s with no turn open.`,
  );
  lines.push(...sharedStateReport(r.sharedState));

  if (r.floods) {
    lines.push(
      '',
      'Hostile clients at earpiece (each flood alone; the proxy with its default request timeout and body budget):',
      '',
      '| flood | answers | proxy RSS peak | seconds |',
      '|---|---|---:|---:|',
      ...r.floods.map(
        (f) =>
          `| ${f.name} | ${Object.entries(f.answers)
            .map(([k, n]) => `${n} × ${k}`)
            .join(', ')} | ${f.peakMb.toFixed(0)} MB | ${f.seconds.toFixed(1)} |`,
      ),
    );
  } else {
    lines.push(
      '',
      'Floods skipped: this kernel does not let the benchmark reset the peak RSS (/proc/PID/clear_refs).',
    );
  }

  // Targets.
  const at = (c: number, m: Mode) => r.results.get(c)?.get(m);
  lines.push('', '| target | result | |', '|---|---|---|');
  const ratioRow = (label: string, value: number, floor: number, limit: number, what = 'the bare Node hop') =>
    `| ${label} ≤ ${limit}× ${what} | ${ms(value)} vs ${ms(floor)} (${(value / floor).toFixed(2)}×) | ${mark(value / floor <= limit)} |`;
  const oneE = r.single.get('earpiece');
  const oneD = r.single.get('direct');
  const oneH = r.single.get('node');
  if (oneE && oneD && oneH) {
    const [e, d, h] = [oneE, oneD, oneH].map((x) => sorted(x.ttft));
    const added = percentile(e as Float64Array, 50) - percentile(d as Float64Array, 50);
    const hop = percentile(h as Float64Array, 50) - percentile(d as Float64Array, 50);
    lines.push(
      `| added TTFT p50 at 1 stream ≤ the hop's + ${TARGETS.oneStreamOverHopMs} ms (${oneE.ttft.length} samples; p99 ${signedMs(percentile(e as Float64Array, 99) - percentile(d as Float64Array, 99))}) | ${signedMs(added)} vs the hop's ${signedMs(hop)} | ${mark(added <= hop + TARGETS.oneStreamOverHopMs && oneE.ttft.length >= TARGETS.oneStreamSamples)} |`,
    );
  }
  for (const [size, byMode] of r.bursts) {
    const e = byMode.get('earpiece');
    const h = byMode.get('node');
    if (!e || !h) continue;
    const [se, sh] = [sorted(e.ttft), sorted(h.ttft)];
    const n = size.toLocaleString('en');
    lines.push(
      ratioRow(`burst of ${n}: TTFT p50`, percentile(se, 50), percentile(sh, 50), TARGETS.burstP50VsHop),
      ratioRow(`burst of ${n}: TTFT p99`, percentile(se, 99), percentile(sh, 99), TARGETS.burstP99VsHop),
      `| zero errors through earpiece in bursts of ${n} | ${[...e.errors.values()].reduce((a, b) => a + b, 0)} | ${mark(e.errors.size === 0)} |`,
    );
  }
  const s100 = at(100, 'earpiece');
  const n100 = at(100, 'nginx');
  if (s100 && n100)
    lines.push(
      ratioRow(
        'steady 100 streams: TTFT p99',
        s100.ttftP99,
        n100.ttftP99,
        TARGETS.steady100P99VsNginx,
        'nginx',
      ),
    );
  const s1000 = at(1000, 'earpiece');
  const h1000 = at(1000, 'node');
  if (s1000 && h1000)
    lines.push(
      ratioRow('steady 1,000 streams: TTFT p50', s1000.ttftP50, h1000.ttftP50, TARGETS.steady1000P50VsHop),
    );
  // What decoding alone costs against the same hop, beside each CPU target: the share of the ratio that any
  // proxy reading the model's text pays before its own work.
  const decodingShare = (value: number | undefined, hop: number, unit: string) =>
    value === undefined ? '' : `; decoding hop ${value.toFixed(3)}${unit} (${(value / hop).toFixed(2)}×)`;
  if (oneE && oneH) {
    const perTurn = (x: Samples) => (x.proxyCpu / x.streams) * 1000;
    const [e, h] = [perTurn(oneE), perTurn(oneH)];
    const oneDecoding = r.single.get('decoding');
    lines.push(
      `| proxy CPU per turn (brief answers, one at a time) ≤ ${TARGETS.cpuPerTurnVsHop}× the bare Node hop | ${e.toFixed(3)} ms vs ${h.toFixed(3)} ms (${(e / h).toFixed(2)}×)${decodingShare(oneDecoding && perTurn(oneDecoding), h, ' ms')} | ${mark(e / h <= TARGETS.cpuPerTurnVsHop)} |`,
    );
  }
  const c100 = at(100, 'node');
  if (s100?.cpuPer1k !== undefined && c100?.cpuPer1k !== undefined) {
    const ratio = s100.cpuPer1k / c100.cpuPer1k;
    lines.push(
      `| proxy CPU per chunk (100 streams) ≤ ${TARGETS.cpuPerChunkVsHop}× the bare Node hop | ${s100.cpuPer1k.toFixed(3)} vs ${c100.cpuPer1k.toFixed(3)} s / 1k chunks (${ratio.toFixed(2)}×)${decodingShare(at(100, 'decoding')?.cpuPer1k, c100.cpuPer1k, '')} | ${mark(ratio <= TARGETS.cpuPerChunkVsHop)} |`,
    );
  }
  for (const c of [100, 1000]) {
    const e = at(c, 'earpiece');
    if (!e) continue;
    lines.push(
      `| zero errors through earpiece at ${c.toLocaleString('en')} streams | ${e.errors}${e.errorKinds.length ? ` (${e.errorKinds.join('; ')})` : ''} | ${mark(e.errors === 0)} |`,
    );
  }
  const ea = sorted(r.early.afterComplete);
  lines.push(
    `| two-call message: call 0 complete → tool 0 requested, p50 (p99) ≤ ${TARGETS.earlyStartMs} ms | ${ms(percentile(ea, 50), 3)} (${ms(percentile(ea, 99), 3)}) | ${mark(percentile(ea, 50) <= TARGETS.earlyStartMs)} |`,
    `| two-call message: tool 0 requested before the model finished call 1 | ${r.early.beforeSecondEnded} of ${TWO_CALL_TURNS}${r.early.errors ? ` (${r.early.errors} failed)` : ''} | ${mark(r.early.beforeSecondEnded === TWO_CALL_TURNS)} |`,
  );
  for (const [label, values] of [
    ['last tool-call byte → tool request, p50 (p99)', call],
    ['tool answer → next model request, p50 (p99)', next],
  ] as const) {
    const p50 = percentile(values, 50);
    lines.push(
      `| ${label} ≤ ${TARGETS.handoffMs} ms | ${ms(p50, 3)} (${ms(percentile(values, 99), 3)}) | ${mark(p50 <= TARGETS.handoffMs)} |`,
    );
  }
  for (const [label, values] of [
    ['hang-up → model response closed, max', sortedUpstream],
    ['hang-up → tool request closed, max', sortedTool],
  ] as const) {
    const worst = values.at(-1) ?? Number.POSITIVE_INFINITY;
    lines.push(
      `| ${label} ≤ ${TARGETS.cancelMs} ms | ${ms(worst, 3)} | ${mark(worst <= TARGETS.cancelMs)} |`,
    );
  }
  lines.push(
    `| earpiece idle RSS ≤ ${TARGETS.idleRssMb} MB | ${r.idle.earpiece.toFixed(1)} MB | ${mark(r.idle.earpiece <= TARGETS.idleRssMb)} |`,
    `| memory lookup ≤ ${TARGETS.lookupUs} µs (40 messages) | ${r.lookup.hitUs.toFixed(2)} µs | ${mark(r.lookup.hitUs <= TARGETS.lookupUs)} |`,
    ...(r.sharedState
      ? [
          `| Redis frozen: wait on Redis ≤ ${REDIS_BOUND_MS} ms per call (first call minus an in-process one) | ${ms(r.sharedState.frozenFirst - r.sharedState.frozen.p50)} | ${mark(r.sharedState.frozenFirst - r.sharedState.frozen.p50 <= REDIS_BOUND_MS)} |`,
        ]
      : []),
  );

  lines.push(
    '',
    'One stream at a time (brief answers, 8 chunks) and bursts (requests sent at once, the full answer), after the warm-up:',
    '',
    '| load | path | TTFT p50 | TTFT p99 | samples | proxy CPU ms / turn | errors |',
    '|---|---|---:|---:|---:|---:|---:|',
  );
  const loads: Array<[string, Map<Mode, Samples>]> = [
    ['1 stream', r.single],
    ...[...r.bursts].map(([size, byMode]): [string, Map<Mode, Samples>] => [
      `burst of ${size.toLocaleString('en')}`,
      byMode,
    ]),
  ];
  for (const [label, byMode] of loads) {
    for (const mode of r.modes) {
      const x = byMode.get(mode);
      if (!x) continue;
      const t = sorted(x.ttft);
      const errors = [...x.errors.values()].reduce((a, b) => a + b, 0);
      lines.push(
        `| ${label} | ${PATH_LABEL[mode]} | ${ms(percentile(t, 50))} | ${ms(percentile(t, 99))} | ${x.ttft.length} | ${mode === 'direct' ? '—' : ((x.proxyCpu / x.streams) * 1000).toFixed(3)} | ${errors} |`,
      );
    }
  }

  // The same figures for the two hops: what any Node.js proxy pays on this machine before its own work, and
  // what one pays that reads the model's text.
  const floors = (['node', 'decoding', 'earpiece'] as const).filter((m) => r.modes.includes(m));
  lines.push(
    '',
    "The floors for a Node.js proxy on this machine: the bare Node hop (bench/node-hop.ts) parses the body, adds tools and copies the response bytes, nothing more; the decoding hop (the same with `--decode`) also reads the model's stream with earpiece's decoder and writes its text with earpiece's sink.",
    '',
    `| streams | measure | ${floors.map((m) => PATH_LABEL[m]).join(' | ')} |`,
    `|---:|---|${floors.map(() => '---:').join('|')}|`,
  );
  for (const [c, byMode] of r.results) {
    const d = byMode.get('direct');
    const n = byMode.get('nginx');
    const paths = floors.map((m) => byMode.get(m));
    if (!d || paths.some((x) => x === undefined)) continue;
    const of = (cell: (x: Summary) => string) => (paths as Summary[]).map(cell).join(' | ');
    const level = c.toLocaleString('en');
    lines.push(
      `| ${level} | added TTFT p50 (p99) | ${of((x) => `${signedMs(x.ttftP50 - d.ttftP50)} (${signedMs(x.ttftP99 - d.ttftP99)})`)} |`,
    );
    if (n)
      lines.push(
        `| ${level} | TTFT p50 (p99) against nginx | ${of((x) => `${(x.ttftP50 / n.ttftP50).toFixed(2)}× (${(x.ttftP99 / n.ttftP99).toFixed(2)}×)`)} |`,
      );
    lines.push(`| ${level} | proxy CPU s / 1k chunks | ${of((x) => x.cpuPer1k?.toFixed(3) ?? '—')} |`);
  }

  // Where the CPU went: the driver and the upstream share the two cores with the proxy.
  lines.push(
    '',
    "CPU in use during each path's phases (cores): load generator / scripted model / proxy.",
    '',
    `| streams | ${r.modes.map((m) => PATH_LABEL[m]).join(' | ')} |`,
    `|---:|${r.modes.map(() => '---').join('|')}|`,
  );
  for (const [concurrency, byMode] of r.results) {
    const cells = r.modes.map((m) => {
      const s = byMode.get(m) as Summary;
      return `${s.driverLoad.toFixed(2)} / ${s.upstreamLoad.toFixed(2)} / ${s.proxyLoad === undefined ? '—' : s.proxyLoad.toFixed(2)}`;
    });
    lines.push(`| ${concurrency.toLocaleString('en')} | ${cells.join(' | ')} |`);
  }
  const samples = [...r.results].map(
    ([c, byMode]) =>
      `${c.toLocaleString('en')}: ${(byMode.get('direct') as Summary).samples.toLocaleString('en')}`,
  );
  lines.push('', `Measured streams per path (after warm-up): ${samples.join(', ')}.`, '');
  return lines.join('\n');
}

process.exitCode = await main(process.argv.slice(2));
