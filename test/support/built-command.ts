/**
 * The built CLI (dist/cmd/earpiece.js) in a child process with the given Node flags, as the image starts it:
 * resolves once `started` finds what it looks for in the command's stdout (its log).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';

/** Commands started and not stopped yet: stopStartedCommands() kills what a failed or timed-out test leaves. */
const running = new Set<ChildProcess>();

export interface StartedCommand<T> {
  /** What `started` found. */
  found: T;
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** SIGKILL: the tests look at a command's start-up and its work, not at its shutdown. */
  stop(): Promise<void>;
}

export interface CommandOptions {
  /** Gets everything the command writes, stdout and stderr, as it comes. */
  onOutput?: (text: string) => void;
  /** How long its start may take (default 20 s). */
  startTimeoutMs?: number;
}

export async function startBuiltCommand<T>(
  nodeFlags: readonly string[],
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  started: (stdout: string) => T | undefined,
  options: CommandOptions = {},
): Promise<StartedCommand<T>> {
  const child = spawn(process.execPath, [...nodeFlags, 'dist/cmd/earpiece.js', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let stderr = '';
  let stdout = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (text: string) => {
    stderr += text;
    options.onOutput?.(text);
  });
  const exited = once(child, 'exit');
  const stop = async () => {
    child.kill('SIGKILL');
    await exited.catch(() => undefined);
    running.delete(child);
  };
  const timeoutMs = options.startTimeoutMs ?? 20_000;
  try {
    const found = await new Promise<T>((resolve, reject) => {
      let waiting = true;
      const timer = setTimeout(
        () => reject(new Error(`no start within ${timeoutMs / 1000} s:\n${stdout}\n${stderr}`)),
        timeoutMs,
      );
      child.stdout.on('data', (text: string) => {
        stdout += text;
        options.onOutput?.(text);
        if (!waiting) return;
        const value = started(stdout);
        if (value === undefined) return;
        waiting = false;
        clearTimeout(timer);
        resolve(value);
      });
      exited.then(([code]) => reject(new Error(`exited ${code}:\n${stdout}\n${stderr}`)), reject);
    });
    return { found, child, stdout: () => stdout, stderr: () => stderr, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** For afterAll/afterEach: kills every command still running. */
export function stopStartedCommands(): void {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
}

/** The proxy's arguments for loopback ports the system picks (read back from its "Proxy listening." line). */
export const LOOPBACK_PROXY_ARGS = ['--host', '127.0.0.1', '--port', '0', '--metrics-port', '0'] as const;
export const LOOPBACK_PROXY_ENV = { EARPIECE_METRICS_HOST: '127.0.0.1' };

/** The chat and metrics URLs of the proxy's "Proxy listening." line, once it has logged it. */
export function proxyListening(stdout: string): { url: string; metrics: string } | undefined {
  const line = stdout.match(/^.*"Proxy listening\.".*$/m)?.[0];
  return line === undefined ? undefined : (JSON.parse(line) as { url: string; metrics: string });
}

/** The young generation's size, as a started command's /metrics reports it. */
export async function newSpaceBytes(metricsUrl: string): Promise<number> {
  const metrics = await (await fetch(`${metricsUrl}/metrics`)).text();
  const size = metrics.match(/^nodejs_heap_space_size_total_bytes\{space="new"\} (\d+)$/m)?.[1];
  if (size === undefined) throw new Error(`${metricsUrl}/metrics has no new space gauge`);
  return Number(size);
}
