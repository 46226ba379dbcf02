/** `earpiece proxy` as a process: flags, readiness, SIGTERM draining. */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { startScriptedUpstream, textReply } from '../../src/demo/scripted-upstream.js';

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  return port;
}

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

async function waitReady(url: string): Promise<void> {
  const until = Date.now() + 20_000;
  for (;;) {
    try {
      if ((await fetch(url)).status === 200) return;
    } catch {}
    if (Date.now() > until) throw new Error(`${url} not ready within 20 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('earpiece proxy process', () => {
  it('serves on the given ports and drains open turns on SIGTERM', async () => {
    const upstream = await startScriptedUpstream({
      respond: () => ({ sse: textReply('one two three four five six', 'vllm-llama3json', { delayMs: 150 }) }),
    });
    const [port, metricsPort] = [await freePort(), await freePort()];
    const child = spawn(
      process.execPath,
      [
        'dist/cmd/earpiece.js',
        'proxy',
        '--toolset',
        'examples/toolset.yaml',
        '--port',
        String(port),
        '--metrics-port',
        String(metricsPort),
      ],
      {
        env: {
          ...process.env,
          EARPIECE_UPSTREAM_URL: upstream.url,
          EARPIECE_HOST: '127.0.0.1',
          EARPIECE_LOG_LEVEL: 'warn',
        },
        stdio: 'pipe',
      },
    );
    children.push(child);
    const exited = once(child, 'exit');
    await waitReady(`http://127.0.0.1:${metricsPort}/readyz`);
    const ready = (await (await fetch(`http://127.0.0.1:${port}/readyz`)).json()) as {
      toolset: { name: string };
    };
    expect(ready.toolset.name).toBe('assistant');

    const res = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer EMPTY' },
      body: JSON.stringify({
        model: 'm',
        messages: [{ role: 'user', content: 'Count' }],
        stream: true,
        temperature: 0.3,
      }),
    });
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    await reader.read(); // the stream is open
    child.kill('SIGTERM');
    let body = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      body += new TextDecoder().decode(value);
    }
    expect(body).toContain('six');
    expect(body.trimEnd().endsWith('data: [DONE]')).toBe(true);
    const [code] = await exited;
    expect(code).toBe(0);
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toThrow();
    await upstream.close();
  });

  it('exits 1 naming the problems of an invalid ToolSet', async () => {
    const child = spawn(process.execPath, ['dist/cmd/earpiece.js', 'proxy', '--toolset', 'package.json'], {
      stdio: 'pipe',
    });
    children.push(child);
    let stderr = '';
    child.stderr?.on('data', (d) => {
      stderr += d;
    });
    const [code] = await once(child, 'exit');
    expect(code).toBe(1);
    expect(stderr).toMatch(/apiVersion: is required/);
  });

  it('exits 2 with one line naming the setting of an unusable upstream URL, never echoing it', async () => {
    const cases = [
      { args: ['--upstream', 'http://me:s3cret@vllm:80000'], env: {}, line: '--upstream has port 80000' },
      { args: [], env: { EARPIECE_UPSTREAM_URL: 'http://me:s3cret@[::1' }, line: 'EARPIECE_UPSTREAM_URL' },
      // What Unmute's KYUTAI_LLM_URL never has: the client adds /v1 itself.
      { args: ['--upstream', 'http://me:s3cret@vllm:8000/v1'], env: {}, line: '--upstream ends in /v1' },
    ];
    for (const { args, env, line } of cases) {
      const child = spawn(
        process.execPath,
        ['dist/cmd/earpiece.js', 'proxy', '--toolset', 'examples/toolset.yaml', ...args],
        { env: { ...process.env, ...env }, stdio: 'pipe' },
      );
      children.push(child);
      let stderr = '';
      child.stderr?.on('data', (d) => {
        stderr += d;
      });
      const [code] = await once(child, 'exit');
      expect(code).toBe(2);
      expect(stderr.trimEnd().split('\n')).toEqual([expect.stringContaining(`earpiece proxy: ${line}`)]);
      expect(stderr).not.toContain('s3cret');
    }
  });
});
