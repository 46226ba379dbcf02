/**
 * A real Redis for tests: the Debian `redis-server` binary (installed by .ci/run), on a free 127.0.0.1
 * port, with no persistence and no config file. `stop()` kills it (an outage); `start()` brings it back
 * on the same port, empty, as a restarted Redis without persistence would be.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

export interface TestRedis {
  url: string;
  port: number;
  /** A client of its own, for checking what the code under test wrote. */
  admin(): Redis;
  /** Kills the server (SIGKILL: no goodbye to clients). */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  start(): Promise<void>;
  /** Freezes the server (SIGSTOP): connections stay open, nothing answers. `resume()` thaws it. */
  pause(): void;
  resume(): void;
  /** Stops it and closes the admin client; for afterAll. */
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise((resolve) => s.close(resolve));
  return port;
}

async function launch(port: number): Promise<ChildProcess> {
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--protected-mode',
      'no',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const ready = new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) resolve();
    });
    child.once('error', reject);
    child.once('exit', (code) =>
      reject(new Error(`redis-server exited with ${code}: ${output.slice(-500)}`)),
    );
  });
  const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
  try {
    await ready;
  } finally {
    clearTimeout(guard);
  }
  return child;
}

export async function startRedis(): Promise<TestRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined = await launch(port);
  let admin: Redis | undefined;
  const stop = async () => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    const exited = once(running, 'exit');
    running.kill('SIGKILL');
    running.kill('SIGCONT');
    await exited;
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    admin() {
      if (!admin) {
        admin = new Redis({ port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
        // It reconnects by itself after a restart; the refusals in between are expected.
        admin.on('error', () => {});
      }
      return admin;
    },
    stop,
    pause: () => child?.kill('SIGSTOP'),
    resume: () => child?.kill('SIGCONT'),
    start: async () => {
      child = await launch(port);
    },
    close: async () => {
      admin?.disconnect();
      await stop();
    },
  };
}
