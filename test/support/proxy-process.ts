/**
 * The built proxy (`dist/`) as its own process, as the chaos tests attack it: its memory and sockets are
 * read from /proc, apart from the test's own. Resolves once it logs where it listens.
 */
import type { ChildProcess } from 'node:child_process';
import {
  LOOPBACK_PROXY_ARGS,
  LOOPBACK_PROXY_ENV,
  proxyListening,
  startBuiltCommand,
} from './built-command.js';

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
  const started = await startBuiltCommand(
    [],
    ['proxy', '--toolset', toolsetPath, '--upstream', upstreamUrl, ...LOOPBACK_PROXY_ARGS],
    { ...LOOPBACK_PROXY_ENV, EARPIECE_LOG_LEVEL: 'info', ...env },
    proxyListening,
    { onOutput, startTimeoutMs: 30_000 },
  );
  return { child: started.child, url: started.found.url, metricsUrl: started.found.metrics };
}
