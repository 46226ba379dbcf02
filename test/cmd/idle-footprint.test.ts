/**
 * The idle sidecar stays small (DESIGN: idle RSS): a proxy serving HTTP and builtin tools never loads the
 * packages only other ToolSets or tools need. Checked on the built proxy in a fresh process, with a module
 * hook that reports every package it resolves.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';

const HOOK = `
import { registerHooks } from 'node:module';
const seen = new Set();
registerHooks({
  resolve(specifier, context, next) {
    const result = next(specifier, context);
    const name = result.url.match(/node_modules\\/((?:@[^/]+\\/)?[^/]+)/)?.[1];
    if (name && !seen.has(name)) {
      seen.add(name);
      process.stderr.write('loaded ' + name + '\\n');
    }
    return result;
  },
});
`;

/** Each is loaded only when a ToolSet or the environment asks for it, or never by the proxy. */
const NOT_AT_IDLE = [
  '@sinclair/typebox',
  'tinyld',
  'ioredis',
  'pg',
  '@modelcontextprotocol/sdk',
  '@opentelemetry/sdk-node',
];

describe('an idle proxy with HTTP and builtin tools', () => {
  it('loads none of the packages it does not need', async () => {
    const child = spawn(
      process.execPath,
      [
        '--import',
        `data:text/javascript,${encodeURIComponent(HOOK)}`,
        'dist/cmd/earpiece.js',
        'proxy',
        '--toolset',
        'examples/weather-toolset.yaml',
        '--upstream',
        'http://127.0.0.1:9',
        '--host',
        '127.0.0.1',
        '--port',
        '0',
        '--metrics-port',
        '0',
      ],
      { env: { ...process.env, EARPIECE_METRICS_HOST: '127.0.0.1' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk;
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no start within 20 s:\n${stdout}\n${stderr}`)),
          20_000,
        );
        child.stdout.on('data', (chunk: Buffer) => {
          stdout += chunk;
          if (/listening|Server listening|"port"/i.test(stdout)) {
            clearTimeout(timer);
            resolve();
          }
        });
        child.once('exit', (code) => reject(new Error(`exited ${code}:\n${stdout}\n${stderr}`)));
      });
    } finally {
      child.kill('SIGKILL');
      await once(child, 'exit').catch(() => undefined);
    }
    const loaded = [...stderr.matchAll(/^loaded (.+)$/gm)].map((m) => m[1]);
    expect(loaded).toContain('fastify');
    expect(loaded.filter((name) => NOT_AT_IDLE.includes(name as string))).toEqual([]);
  });
});
