/**
 * What an open turn keeps on the heap, earpiece beside the bare Node hop: `npm run bench:heap`. Each proxy
 * takes a burst of streams; a heap snapshot (which first collects all garbage) is written once before the
 * burst and once in its middle, and the difference over the open responses is the heap one open turn keeps.
 * The collector's work at many streams grows with it (docs/benchmark.md). Unlike a timing, it does not
 * depend on what else the machine does; it moves only with the build (and with Node's own objects).
 *
 * Usage: node dist/bench/heap.js [--streams 500] [--base DIR]  (DIR: another built checkout, measured too)
 */
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { stream, target } from './load.js';
import { startEarpiece, startNodeHop, startUpstreamChild } from './procs.js';
import { STREAM_BODY, writeToolSet } from './workload.js';

/** The middle of a burst: every request is in, and the answers (64 chunks, 20 ms apart) are under way. */
const SNAPSHOT_AFTER_MS = 600;
const WARMUP_STREAMS = 200;

interface HeapSnapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
  nodes: number[];
  strings: string[];
}

/** Self size by kind of object (strings together, objects by constructor), and the open responses. */
interface HeapTally {
  total: number;
  responses: number;
  byKind: Map<string, number>;
}

function tally(snapshot: HeapSnapshot): HeapTally {
  const fields = snapshot.snapshot.meta.node_fields;
  const types = snapshot.snapshot.meta.node_types[0];
  const [type, name, size] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f)) as [
    number,
    number,
    number,
  ];
  const byKind = new Map<string, number>();
  let total = 0;
  let responses = 0;
  for (let i = 0; i < snapshot.nodes.length; i += fields.length) {
    const kind = types[snapshot.nodes[i + type] as number] as string;
    const label = snapshot.strings[snapshot.nodes[i + name] as number] as string;
    const bytes = snapshot.nodes[i + size] as number;
    total += bytes;
    if (kind === 'object' && label === 'ServerResponse') responses++;
    const key = kind.includes('string') ? 'strings' : kind === 'object' ? label : `(${kind})`;
    byKind.set(key, (byKind.get(key) ?? 0) + bytes);
  }
  return { total, responses, byKind };
}

/** Signals the process for a snapshot and reads it once Node has finished writing it. */
async function snapshot(pid: number, dir: string): Promise<HeapTally> {
  const before = new Set(await readdir(dir));
  process.kill(pid, 'SIGUSR2');
  for (let waited = 0; waited < 60_000; waited += 250) {
    await sleep(250);
    const file = (await readdir(dir)).find((f) => f.endsWith('.heapsnapshot') && !before.has(f));
    if (!file) continue;
    // Written in one go: done when its size holds still.
    const size = (await stat(join(dir, file))).size;
    await sleep(500);
    if ((await stat(join(dir, file))).size !== size || size === 0) continue;
    try {
      const result = tally(JSON.parse(await readFile(join(dir, file), 'utf8')) as HeapSnapshot);
      await rm(join(dir, file));
      return result;
    } catch {
      // Still being written after a pause: read it again.
    }
  }
  throw new Error(`process ${pid} wrote no heap snapshot within 60 s`);
}

interface OpenTurnHeap {
  bytesPerTurn: number;
  openTurns: number;
  /** Bytes per open turn by kind, largest first. */
  parts: [string, number][];
}

async function measure(
  start: (flags: string[]) => Promise<{ url: string; pid: number; close(): Promise<void> }>,
  streams: number,
): Promise<OpenTurnHeap> {
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-heap-'));
  const proxy = await start(['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${dir}`]);
  try {
    const to = target(proxy.url);
    await Promise.all(Array.from({ length: WARMUP_STREAMS }, () => stream(to, STREAM_BODY)));
    const idle = await snapshot(proxy.pid, dir);
    const burst = Promise.all(Array.from({ length: streams }, () => stream(to, STREAM_BODY)));
    await sleep(SNAPSHOT_AFTER_MS);
    const busy = await snapshot(proxy.pid, dir);
    const outcomes = await burst;
    const failed = outcomes.filter((o) => !o.ok).length;
    if (failed > 0) throw new Error(`${failed} of ${streams} streams failed`);
    const openTurns = busy.responses - idle.responses;
    if (openTurns < streams / 10) throw new Error(`only ${openTurns} turns were open at the snapshot`);
    const parts = [...busy.byKind]
      .map(([kind, bytes]): [string, number] => [kind, (bytes - (idle.byKind.get(kind) ?? 0)) / openTurns])
      .sort((a, b) => b[1] - a[1]);
    return { bytesPerTurn: (busy.total - idle.total) / openTurns, openTurns, parts };
  } finally {
    await proxy.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { streams: { type: 'string', default: '500' }, base: { type: 'string' } },
  });
  const streams = Number(values.streams);
  const upstream = await startUpstreamChild();
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-heap-toolset-'));
  try {
    const toolset = await writeToolSet(dir, upstream.toolUrl);
    const earpiece = await measure(
      (flags) => startEarpiece(toolset, upstream.upstreamUrl, { extraFlags: flags }),
      streams,
    );
    const hop = await measure((flags) => startNodeHop(upstream.upstreamUrl, { extraFlags: flags }), streams);
    const base =
      values.base === undefined
        ? undefined
        : await measure(
            (flags) =>
              startEarpiece(toolset, upstream.upstreamUrl, {
                cli: join(resolve(values.base as string), 'dist/cmd/earpiece.js'),
                extraFlags: flags,
              }),
            streams,
          );
    const kb = (bytes: number) => `${(bytes / 1024).toFixed(1)} KB`;
    const lines = [
      `Heap kept per open turn (a burst of ${streams} streams, snapshots before it and ${SNAPSHOT_AFTER_MS} ms in):`,
      '',
      '| proxy | per open turn | open turns at the snapshot |',
      '|---|---:|---:|',
      `| bare Node hop | ${kb(hop.bytesPerTurn)} | ${hop.openTurns} |`,
      ...(base ? [`| earpiece, ${values.base} | ${kb(base.bytesPerTurn)} | ${base.openTurns} |`] : []),
      `| earpiece | ${kb(earpiece.bytesPerTurn)} | ${earpiece.openTurns} |`,
      '',
      `earpiece's largest parts per open turn: ${earpiece.parts
        .slice(0, 8)
        .map(([kind, bytes]) => `${kind} ${kb(bytes)}`)
        .join(', ')}.`,
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } finally {
    await upstream.close();
    await rm(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main(process.argv.slice(2));
