/**
 * Chaos: a hostile MCP server against a real `earpiece proxy` process (the built CLI), replaying the
 * attacks that once broke it: 10,000 tools, a tools/list_changed storm, answers over 4 MiB or with
 * another request's id, and a barge-in storm of calls that never finish. After each: a turn keeps the
 * stream contract (the role first, one finish_reason, [DONE], never an `error` event) and the user
 * hears the answer; the proxy's resident memory stays bounded; it holds no connection to the MCP
 * server beyond its session's.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import {
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
} from '../../src/demo/scripted-upstream.js';
import { type HostileMcpServer, startHostileMcpServer } from '../support/hostile-mcp.js';
import { toolsetDoc } from '../support/proxy.js';
import { startProxyProcess } from '../support/proxy-process.js';

/** Generous: idle is under 100 MB. */
const RSS_LIMIT_MB = 512;

let mcp: HostileMcpServer;
let upstream: ScriptedUpstream;
let proxy: ChildProcess;
let proxyUrl: string;
let metricsUrl: string;
let dir: string;
let logs = '';
/** The connections a healthy session holds: its event stream and a kept-alive one or two. */
let idleSockets = 0;

beforeAll(async () => {
  mcp = await startHostileMcpServer();
  mcp.tools = 10_000;
  upstream = await startScriptedUpstream({
    // The model calls the first MCP tool, then answers from its result.
    respond: (req) =>
      req.body.messages?.some((m) => m.role === 'tool')
        ? { sse: textReply('Here is what I found.') }
        : { sse: toolCallReply([{ name: 'tool_0', arguments: { q: 'x' } }]) },
  });
  dir = await mkdtemp(join(tmpdir(), 'earpiece-chaos-mcp-'));
  const toolset = join(dir, 'toolset.yaml');
  await writeFile(
    toolset,
    stringify(
      toolsetDoc(
        { limits: { turnTimeout: '60s', toolTimeout: '30s' }, tools: [{ mcp: { url: mcp.url } }] },
        'chaos-mcp',
      ),
    ),
  );
  const started = await startProxyProcess(toolset, upstream.url, {}, (text) => {
    logs += text;
  });
  proxy = started.child;
  proxyUrl = started.url;
  metricsUrl = started.metricsUrl;
  await waitFor(async () => (await readyz()).mcp[0]?.state === 'connected', 'the MCP session');
  idleSockets = mcp.openSockets();
});

afterAll(async () => {
  if (proxy && proxy.exitCode === null) {
    proxy.kill('SIGKILL');
    await once(proxy, 'exit');
  }
  await mcp?.close();
  await upstream?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

// ---- what is checked ----

interface Readyz {
  mcp: { state: string; tools: number; lastError?: string }[];
  warnings?: string[];
}

async function readyz(): Promise<Readyz> {
  return (await (await fetch(`${metricsUrl}/readyz`)).json()) as Readyz;
}

async function waitFor(check: () => boolean | Promise<boolean>, what: string, seconds = 30): Promise<void> {
  const until = Date.now() + seconds * 1000;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}\n${logs.slice(-2000)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function rssMb(): number {
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${proxy.pid}/status`, 'utf8'))?.[1];
  return Number(kb) / 1024;
}

/** One turn as Unmute sends it, read raw; checks the stream contract and returns what the user hears. */
async function turn(signal?: AbortSignal): Promise<string> {
  const res = await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'm',
      stream: true,
      temperature: 0.3,
      messages: [{ role: 'user', content: 'Look it up.' }],
    }),
    signal: signal ?? AbortSignal.timeout(90_000),
  });
  expect(res.status).toBe(200);
  const events = (await res.text()).split('\n\n').filter((e) => e.trim() !== '');
  expect(events.at(-1)).toBe('data: [DONE]');
  const chunks = events.slice(0, -1).map((e) => {
    expect(e.startsWith('data: {')).toBe(true);
    return JSON.parse(e.slice(6)) as Record<string, unknown> & {
      choices: { delta: { role?: string; content?: string }; finish_reason: string | null }[];
    };
  });
  expect(chunks.some((c) => 'error' in c)).toBe(false);
  expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
  expect(chunks.filter((c) => c.choices[0]?.finish_reason).length).toBe(1);
  return chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
}

/** After every attack: a normal turn works, memory is bounded, no MCP connection is left behind. */
async function stillHealthy(): Promise<void> {
  mcp.mode = 'ok';
  expect(await turn()).toContain('Here is what I found.');
  expect(rssMb()).toBeLessThan(RSS_LIMIT_MB);
  await waitFor(() => mcp.openSockets() <= idleSockets + 2, 'the MCP connections to close');
}

describe('a hostile MCP server', () => {
  it('10,000 tools: at most 64 are offered, and /readyz names the cap', async () => {
    expect((await readyz()).mcp[0]?.tools).toBe(64);
    expect((await readyz()).warnings).toEqual([
      expect.stringMatching(/lists 10000 tools; only the first 64/),
    ]);
    await stillHealthy();
    const sent = upstream.requests.at(-1)?.body;
    expect(sent?.tools).toHaveLength(64);
    expect(JSON.stringify(sent).length).toBeLessThan(100_000);
  });

  it('a tools/list_changed storm is coalesced while turns go on', async () => {
    const before = mcp.listings;
    const storm = mcp.storm(5_000);
    for (let i = 0; i < 3; i++) expect(await turn()).toContain('Here is what I found.');
    await storm;
    // About one listing a second for five seconds; a busy loop lists thousands of times.
    expect(mcp.listings - before).toBeLessThanOrEqual(10);
    await stillHealthy();
  });

  it('answers over 4 MiB or with another id fail the call at once, and the turn goes on', async () => {
    for (const mode of ['oversized', 'wrong-id'] as const) {
      mcp.mode = mode;
      expect(await turn()).toContain('Here is what I found.');
      // The model heard what was wrong with the answer, not that the call timed out.
      const toolMessage = upstream.requests
        .at(-1)
        ?.body.messages?.find((m) => m.role === 'tool')
        ?.content?.toString();
      expect(toolMessage).toMatch(/larger than 4 MiB|answered with the id/);
    }
    await stillHealthy();
  });

  it('a barge-in storm of calls that never finish leaves no connection behind', async () => {
    mcp.mode = 'hang';
    const callsBefore = mcp.calls;
    for (let round = 1; round <= 4; round++) {
      // Twenty-five users speak over the assistant while its tool calls hang.
      const aborts = Array.from({ length: 25 }, () => new AbortController());
      const turns = aborts.map((abort) => turn(abort.signal).catch(() => undefined));
      await waitFor(() => mcp.calls >= callsBefore + 25 * round, 'the calls to reach the server');
      for (const abort of aborts) abort.abort();
      await Promise.all(turns);
    }
    expect(mcp.calls - callsBefore).toBe(100);
    await stillHealthy();
  });
});
