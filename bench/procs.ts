/**
 * The processes under test, and what /proc says about them: CPU time (utime + stime) and resident
 * memory (VmRSS now, VmHWM the peak so far). Everything listens on 127.0.0.1 only.
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { type AddressInfo, connect, createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { ChildMessage, ParentMessage, TurnStamps } from './protocol.js';

const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** User + system CPU seconds the process has used so far. */
export function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is [0], utime [11], stime [12].
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** Resident memory in MB: `VmRSS` (now) or `VmHWM` (the peak so far). */
export function memoryMb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1];
  if (kb === undefined) throw new Error(`/proc/${pid}/status has no ${field}`);
  return Number(kb) / 1024;
}

/** Starts a new peak: VmHWM becomes the current RSS (Linux: clear_refs 5). False where that is refused. */
export function resetPeakMemory(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** The open-file limits; 1,000 streams through a proxy need about 2,000 descriptors in one process. */
export function openFileLimits(): { soft: number; hard: number } {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const [, soft = '0', hard = '0'] = /^Max open files\s+(\S+)\s+(\S+)/m.exec(limits) ?? [];
  const value = (v: string) => (v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
  return { soft: value(soft), hard: value(hard) };
}

async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}

async function waitForPort(port: number, child: ChildProcess, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with code ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`${what} did not listen on 127.0.0.1:${port}`);
}

async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

// ---- the model server and HTTP tool (bench/upstream.ts) ----

export interface UpstreamChild {
  pid: number;
  upstreamUrl: string;
  toolUrl: string;
  stamps(): Promise<Record<string, TurnStamps>>;
  close(): Promise<void>;
}

export async function startUpstreamChild(): Promise<UpstreamChild> {
  const child = fork(fileURLToPath(new URL('./upstream.js', import.meta.url)), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const ready = await new Promise<Extract<ChildMessage, { type: 'ready' }>>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`the benchmark upstream exited with code ${code}`)));
    child.on('message', (m: ChildMessage) => {
      if (m.type === 'ready') resolve(m);
    });
  });
  const ask = (message: ParentMessage) => child.send(message);
  return {
    pid: child.pid as number,
    upstreamUrl: ready.upstreamUrl,
    toolUrl: ready.toolUrl,
    stamps: () =>
      new Promise((resolve) => {
        const onMessage = (m: ChildMessage) => {
          if (m.type !== 'stamps') return;
          child.off('message', onMessage);
          resolve(m.turns);
        };
        child.on('message', onMessage);
        ask({ type: 'stamps' });
      }),
    close: () => stop(child, 'SIGTERM'),
  };
}

// ---- nginx as a bare proxy hop ----

export interface NginxProxy {
  url: string;
  version: string;
  /** The single worker process, which does all the proxying. */
  workerPid: number;
  close(): Promise<void>;
}

export function nginxVersion(): string | undefined {
  try {
    // `nginx -v` writes to stderr.
    const out = execFileSync('nginx', ['-v'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return out.trim() || 'nginx';
  } catch (err) {
    const e = err as { code?: string; stderr?: string; status?: number };
    if (e.code === 'ENOENT') return undefined;
    return e.stderr?.trim().replace(/^nginx version: /, '') ?? 'nginx';
  }
}

function nginxConfig(dir: string, port: number, upstreamPort: number): string {
  return `worker_processes 1;
worker_rlimit_nofile 16384;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events {
  worker_connections 8192;
}
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  upstream model {
    server 127.0.0.1:${upstreamPort};
    keepalive 2048;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / {
      proxy_pass http://model;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
`;
}

function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

export async function startNginx(dir: string, upstreamUrl: string, version: string): Promise<NginxProxy> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, nginxConfig(dir, port, Number(new URL(upstreamUrl).port)));
  const child = spawn('nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', conf, '-g', 'daemon off;'], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  await waitForPort(port, child, 'nginx');
  let workerPid: number | undefined;
  for (let i = 0; i < 100 && workerPid === undefined; i++) {
    workerPid = childPids(child.pid as number)[0];
    if (workerPid === undefined) await sleep(20);
  }
  if (workerPid === undefined) throw new Error('nginx started no worker process');
  return {
    url: `http://127.0.0.1:${port}`,
    version,
    workerPid,
    close: () => stop(child, 'SIGTERM'),
  };
}

// ---- earpiece, the built CLI ----

export interface EarpieceProxy {
  url: string;
  pid: number;
  close(): Promise<void>;
}

/**
 * The Node flags of the shipped image (Dockerfile ENTRYPOINT): a young generation capped at 16 MB
 * semi-spaces and given back after start-up (src/runtime/heap.ts, which needs --expose-gc), and WebAssembly
 * left on its baseline compiler (the SQL parser's optimization took 550 MB at once).
 * EARPIECE_BENCH_NODE_FLAGS replaces them, to compare (" " for none).
 */
export const EARPIECE_NODE_FLAGS = (
  process.env.EARPIECE_BENCH_NODE_FLAGS ?? '--max-semi-space-size=16 --expose-gc --liftoff-only'
)
  .split(' ')
  .filter(Boolean);

export interface EarpieceStart {
  /** Another build's dist/cmd/earpiece.js (ab.ts); this build's by default. */
  cli?: string;
  /** Node flags after the image's (heap.ts asks for heap snapshots). */
  extraFlags?: readonly string[];
  /**
   * EARPIECE_IDLE_COLLECTION_AFTER; "0" (off) by default: a proxy that idles while the other paths are
   * measured would start its next round with its memory given back, unlike the hop and unlike earlier runs.
   * run.ts measures the collection on a proxy of its own.
   */
  idleCollectionAfter?: string;
}

export async function startEarpiece(
  toolsetPath: string,
  upstreamUrl: string,
  options: EarpieceStart = {},
): Promise<EarpieceProxy> {
  const cli = options.cli ?? fileURLToPath(new URL('../cmd/earpiece.js', import.meta.url));
  const child = spawn(
    process.execPath,
    [
      // The container image starts node with these flags (Dockerfile ENTRYPOINT): the bench measures the same.
      ...EARPIECE_NODE_FLAGS,
      ...(options.extraFlags ?? []),
      cli,
      'proxy',
      '--toolset',
      toolsetPath,
      '--upstream',
      upstreamUrl,
      '--host',
      '127.0.0.1',
      '--port',
      '0',
      '--metrics-port',
      '0',
    ],
    {
      env: {
        ...process.env,
        EARPIECE_METRICS_HOST: '127.0.0.1',
        EARPIECE_IDLE_COLLECTION_AFTER: options.idleCollectionAfter ?? '0',
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  // The log line "Proxy listening." names the ports the system chose.
  const url = await new Promise<string>((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error('earpiece proxy did not start within 30 s')), 30_000);
    child.once('exit', (code) => reject(new Error(`earpiece proxy exited with code ${code}:\n${buffered}`)));
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (text: string) => {
      buffered += text;
      for (const line of buffered.split('\n')) {
        if (!line.includes('"Proxy listening."')) continue;
        clearTimeout(timer);
        resolve((JSON.parse(line) as { url: string }).url);
      }
      if (buffered.length > 64 * 1024) buffered = buffered.slice(-16 * 1024);
    });
  });
  // Later log lines are drained and dropped; warnings and errors would still reach stderr's pipe here.
  child.stdout.removeAllListeners('data');
  child.stdout.on('data', (text: string) => {
    if (/"level":(4|5|6)0/.test(text)) process.stderr.write(text);
  });
  return { url, pid: child.pid as number, close: () => stop(child, 'SIGTERM') };
}

// ---- the bare Node.js hop (bench/node-hop.ts): the floor for a Node.js proxy ----

export interface NodeHop {
  url: string;
  pid: number;
  close(): Promise<void>;
}

export interface NodeHopStart {
  /** Node flags after the image's (heap.ts asks for heap snapshots). */
  extraFlags?: readonly string[];
  /** The decoding hop: the model's text decoded and written again (see bench/node-hop.ts). */
  decode?: boolean;
}

export async function startNodeHop(upstreamUrl: string, options: NodeHopStart = {}): Promise<NodeHop> {
  const child = spawn(
    process.execPath,
    [
      ...EARPIECE_NODE_FLAGS,
      ...(options.extraFlags ?? []),
      fileURLToPath(new URL('./node-hop.js', import.meta.url)),
      upstreamUrl,
      ...(options.decode ? ['--decode'] : []),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const url = await new Promise<string>((resolve, reject) => {
    const name = options.decode ? 'the decoding hop' : 'the bare Node hop';
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 30 s`)), 30_000);
    child.once('exit', (code) => reject(new Error(`${name} exited with code ${code}`)));
    child.stdout.setEncoding('utf8');
    child.stdout.once('data', (text: string) => {
      clearTimeout(timer);
      resolve(text.trim());
    });
  });
  return { url, pid: child.pid as number, close: () => stop(child, 'SIGTERM') };
}
