/**
 * The built proxy (`dist/`) as its own process, as the chaos tests attack it: its memory and sockets are
 * read from /proc, apart from the test's own. Resolves once it logs where it listens.
 */
import { type ChildProcess, spawn } from 'node:child_process';

export interface ProxyProcess {
  child: ChildProcess;
  url: string;
  metricsUrl: string;
}

/** `onOutput` gets everything the proxy writes (its JSON log lines), from the start. */
export async function startProxyProcess(
  toolsetPath: string,
  upstreamUrl: string,
  env: Record<string, string>,
  onOutput: (text: string) => void,
): Promise<ProxyProcess> {
  const child = spawn(
    process.execPath,
    [
      'dist/cmd/earpiece.js',
      'proxy',
      '--toolset',
      toolsetPath,
      '--upstream',
      upstreamUrl,
      '--port',
      '0',
      '--metrics-port',
      '0',
    ],
    {
      env: {
        ...process.env,
        EARPIECE_HOST: '127.0.0.1',
        EARPIECE_METRICS_HOST: '127.0.0.1',
        EARPIECE_LOG_LEVEL: 'info',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  const take = (text: string) => {
    output += text;
    onOutput(text);
  };
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', take);
  return new Promise<ProxyProcess>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the proxy did not start:\n${output}`)), 30_000);
    child.once('exit', (code) => reject(new Error(`the proxy exited with ${code}:\n${output}`)));
    child.stdout?.on('data', (text: string) => {
      take(text);
      const line = /\{[^\n]*"Proxy listening\."[^\n]*\}/.exec(output)?.[0];
      if (!line) return;
      clearTimeout(timer);
      const { url, metrics } = JSON.parse(line) as { url: string; metrics: string };
      resolve({ child, url, metricsUrl: metrics });
    });
  });
}
