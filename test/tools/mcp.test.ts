/**
 * The mcp provider against real MCP servers written with the SDK (test/support/mcp-server.ts), over
 * Streamable HTTP and the older HTTP+SSE transport, on 127.0.0.1.
 */
import { createServer } from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  createMcpProvider,
  END_SESSION_TIMEOUT_MS,
  MAX_MCP_SCHEMA_CHARS,
  MAX_MCP_SCHEMAS_CHARS,
} from '../../src/tools/mcp.js';
import { createToolRegistry } from '../../src/tools/registry.js';
import { type ToolContext, ToolError, type ToolProvider } from '../../src/tools/types.js';
import { type ResolvedTool, resolveToolSet } from '../../src/toolset/defaults.js';
import { LIMIT } from '../../src/toolset/schema.js';
import { formatIssues, validateToolSet } from '../../src/toolset/validate.js';
import { type HostileMcpServer, LATE_MS, startHostileMcpServer } from '../support/hostile-mcp.js';
import { type McpTestServer, startMcpServer } from '../support/mcp-server.js';
import { capturingLogger, startServer } from './helpers.js';

const logger = pino({ level: 'silent' });

/** Argument schemas compiled, counted through every compiler the registry makes. */
const compiles = vi.hoisted(() => ({ count: 0 }));
vi.mock('../../src/tools/arguments.js', async (importOriginal) => {
  const actual = await importOriginal<typeof import('../../src/tools/arguments.js')>();
  return {
    ...actual,
    createArgumentCompiler: () => {
      const compile = actual.createArgumentCompiler();
      return (...args: Parameters<typeof compile>) => {
        compiles.count++;
        return compile(...args);
      };
    },
  };
});
const cleanup: (() => Promise<void>)[] = [];

afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

function mcpTool(mcp: Record<string, unknown>, extra: Record<string, unknown> = {}): ResolvedTool {
  const result = validateToolSet({
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'test' },
    spec: { tools: [{ mcp, ...extra }] },
  });
  if (!result.ok) throw new Error(formatIssues(result.issues));
  return resolveToolSet(result.toolset).tools[0]!;
}

function provider(mcp: Record<string, unknown>, env: NodeJS.ProcessEnv = {}): ToolProvider {
  const p = createMcpProvider(mcpTool(mcp), { env, logger });
  cleanup.push(() => p.close?.() ?? Promise.resolve());
  return p;
}

async function server(options?: Parameters<typeof startMcpServer>[0]): Promise<McpTestServer> {
  const s = await startMcpServer(options);
  cleanup.push(() => s.stop());
  return s;
}

function ctx(signal = new AbortController().signal, seconds = 10): ToolContext {
  return { signal, deadline: Date.now() + seconds * 1000, toolName: 'test' };
}

/** Polls until the check passes; the limit only guards against a hang. */
async function waitFor(check: () => boolean, what: string, seconds = 20): Promise<void> {
  const until = Date.now() + seconds * 1000;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

function run(p: ToolProvider, name: string, args: Record<string, unknown> = {}, c = ctx()) {
  const tool = p.tools().find((t) => t.name === name);
  if (!tool) throw new Error(`no tool ${name} in ${p.tools().map((t) => t.name)}`);
  return tool.executor.run(args, c);
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise((resolve) => s.close(resolve));
  return port;
}

const connected = (p: ToolProvider) => p.status?.().state === 'connected';

/** How a call fails when the server answers it with another request's id, on either transport. */
const WRONG_ID = {
  code: 'ERP_MCP_CALL_FAILED',
  message: expect.stringMatching(/^the MCP server answered with the id \d+, not \d+$/),
};

describe('mcp provider over Streamable HTTP', () => {
  it('offers the listed tools with their schemas, prefixed and filtered, and sends headers from env', async () => {
    const s = await server();
    const p = provider(
      {
        url: s.url,
        prefix: 'home_',
        include: ['echo', 'weather', 'slow', 'broken', 'snapshot'],
        headers: [{ name: 'Authorization', valueFrom: { env: 'HA_TOKEN' } }],
      },
      { HA_TOKEN: 'Bearer s3cret' },
    );
    await waitFor(() => connected(p), 'connection');
    const names = p.tools().map((t) => t.name);
    expect(names.sort()).toEqual(['home_broken', 'home_echo', 'home_slow', 'home_snapshot', 'home_weather']);
    const echo = p.tools().find((t) => t.name === 'home_echo')!;
    expect(echo.description).toBe('Echoes the text back.');
    expect(echo.parameters).toMatchObject({
      type: 'object',
      properties: { text: { type: 'string', description: 'What to echo' } },
      required: ['text'],
    });
    expect(echo.parameters).not.toHaveProperty('$schema');
    expect(echo.config.kind).toBe('mcp');

    expect(await run(p, 'home_echo', { text: 'hi' })).toBe('echo: hi');
    // The server gets the original name, and every request carried the header.
    expect(s.calls).toEqual([{ name: 'echo', args: { text: 'hi' } }]);
    expect(s.authorizations.length).toBeGreaterThan(0);
    expect(new Set(s.authorizations)).toEqual(new Set(['Bearer s3cret']));
    expect(p.status?.()).toEqual({ url: s.url, state: 'connected', tools: 5 });
  });

  it('sends credentials in the URL as Basic auth, and never shows them or query values', async () => {
    const s = await server();
    const withUser = provider({ url: s.url.replace('//', '//ha-user:pa%40ss-word@') });
    await waitFor(() => connected(withUser), 'connection');
    expect(await run(withUser, 'echo', { text: 'hi' })).toBe('echo: hi');
    expect(new Set(s.authorizations)).toEqual(
      new Set([`Basic ${Buffer.from('ha-user:pa@ss-word').toString('base64')}`]),
    );
    expect(withUser.status?.()).toEqual({ url: s.url, state: 'connected', tools: 6 });

    // A server whose 404 page quotes the request, as Express's does.
    const quoting = await startServer((req, res) => {
      res.writeHead(404, { 'content-type': 'text/html' });
      res.end(`<pre>Cannot ${req.method} ${req.url} (${req.headers.authorization})</pre>`);
    });
    cleanup.push(() => quoting.close());
    const { logger: capturing, lines } = capturingLogger();
    const refused = createMcpProvider(
      mcpTool({
        url: `${quoting.origin.replace('//', '//ha-user:pa%40ss-word@')}/mcp?token=q-s3cret%2Btoken`,
      }),
      { env: {}, logger: capturing },
    );
    cleanup.push(() => refused.close?.() ?? Promise.resolve());
    await waitFor(() => refused.status?.().state === 'down', 'down state');
    const shown = JSON.stringify([refused.status?.(), lines()]);
    expect(shown).toContain('Cannot POST /mcp?token=[redacted]');
    for (const secret of [
      'pa%40ss-word',
      'pa@ss-word',
      'q-s3cret',
      Buffer.from('ha-user:pa@ss-word').toString('base64'),
    ]) {
      expect(shown).not.toContain(secret);
    }
  });

  it('include leaves out tools not named', async () => {
    const s = await server();
    const p = provider({ url: s.url, include: ['echo'] });
    await waitFor(() => connected(p), 'connection');
    expect(p.tools().map((t) => t.name)).toEqual(['echo']);
  });

  it('turns results into text: structured content, media notes, and errors the model sees', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');

    expect(await run(p, 'weather', { city: 'Paris' })).toEqual({ city: 'Paris', temperature: 21 });
    expect(await run(p, 'snapshot')).toBe('Front door camera:\n[image omitted]\nNobody is there.');
    const failure = await run(p, 'broken').catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ToolError);
    expect((failure as ToolError).message).toBe('the light is unreachable');
    expect((failure as ToolError).code).toBe('ERP_MCP_TOOL_ERROR');
    // Arguments the server's own schema rejects come back as a short error, not a broken connection.
    const invalid = await run(p, 'echo', { text: 42 }).catch((e: unknown) => e);
    expect(invalid).toBeInstanceOf(Error);
    expect(connected(p)).toBe(true);
  });

  it('cuts off an answer larger than the cap while reading it, and keeps the connection', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    const failure = await run(p, 'huge').catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(Error);
    expect((failure as Error).message).toMatch(/larger than \d+ MiB/);
    expect(await run(p, 'echo', { text: 'still here' })).toBe('echo: still here');
  });

  it('a cancelled call sends MCP cancellation to the server', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    const abort = new AbortController();
    const call = run(p, 'slow', { id: 'c1', seconds: 30 }, ctx(abort.signal, 60));
    await waitFor(() => s.started.includes('c1'), 'the slow call to start');
    abort.abort(new DOMException('the user interrupted', 'AbortError'));
    await expect(call).rejects.toBeDefined();
    await waitFor(() => s.cancelled.includes('c1'), 'the server to see the cancellation');
    // The session survives a cancelled call.
    expect(await run(p, 'echo', { text: 'still here' })).toBe('echo: still here');
  });

  it('lists again on notifications/tools/list_changed and tells its listeners', async () => {
    const s = await server();
    const p = provider({ url: s.url, prefix: 'x_' });
    let changes = 0;
    p.onChange?.(() => changes++);
    await waitFor(() => connected(p), 'connection');
    const before = changes;
    // A name with characters OpenAI function names do not allow is offered cleaned, and called by its own name.
    s.addTool('lights.on', 'lights are on');
    await waitFor(() => p.tools().some((t) => t.name === 'x_lights_on'), 'the new tool');
    expect(changes).toBeGreaterThan(before);
    expect(await run(p, 'x_lights_on')).toBe('lights are on');
    expect(s.calls.at(-1)).toEqual({ name: 'lights.on', args: {} });
  });

  it('a server down at start: down with the reason, then its tools appear once it is up', async () => {
    const port = await freePort();
    const p = provider({ url: `http://127.0.0.1:${port}/mcp` });
    let changes = 0;
    p.onChange?.(() => changes++);
    await waitFor(() => p.status?.().state === 'down', 'down state');
    expect(p.status?.()).toMatchObject({
      state: 'down',
      tools: 0,
      lastError: expect.stringMatching(/ECONNREFUSED/),
    });
    expect(p.tools()).toEqual([]);

    await server({ port });
    await waitFor(() => connected(p), 'the reconnect', 30);
    expect(changes).toBe(1);
    expect(p.status?.()).toEqual({ url: `http://127.0.0.1:${port}/mcp`, state: 'connected', tools: 6 });
    expect(await run(p, 'echo', { text: 'up' })).toBe('echo: up');
  });

  it('a server restarted mid-session is reconnected with a new session', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    expect(await run(p, 'echo', { text: 'one' })).toBe('echo: one');

    await s.stop();
    await waitFor(() => !connected(p), 'the provider to notice');
    await s.start();
    await waitFor(() => connected(p) && s.sessionCount() === 1, 'the reconnect', 30);
    expect(await run(p, 'echo', { text: 'two' })).toBe('echo: two');
  });

  it('a session the server forgot (404) is initialized again and the call goes through', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await s.forgetSessions(true);
    expect(await run(p, 'echo', { text: 'again' })).toBe('echo: again');
    expect(s.calls.map((c) => c.args.text)).toEqual(['again']);
    expect(s.sessionCount()).toBe(1);
    // The server said the session is gone: there is nothing to end. A DELETE would have gone out before
    // the new session's initialize.
    expect(s.deletes).toEqual([]);
  });

  it('a server that answers 400 to a forgotten session gets a new one too', async () => {
    const s = await server({ unknownSessionStatus: 400 });
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await s.forgetSessions(true);
    expect(await run(p, 'echo', { text: 'fresh' })).toBe('echo: fresh');
    expect(s.sessionCount()).toBe(1);
  });

  it('a session whose stream the server ended is initialized again without waiting for a call', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p) && s.sessionCount() === 1, 'connection');
    await s.forgetSessions();
    expect(s.sessionCount()).toBe(0);
    await waitFor(() => s.sessionCount() === 1 && connected(p), 'a new session', 30);
    // The ping was answered 404: the session is gone, not to be ended.
    expect(s.deletes).toEqual([]);
  });

  it('a session dropped after a call lost its connection is ended on the server', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    s.breakNext('tools/call');
    // The call may have run: it is not sent again, and the session it was on is dropped.
    await expect(run(p, 'echo', { text: 'cut' })).rejects.toMatchObject({ code: 'ERP_MCP_UNAVAILABLE' });
    expect(await run(p, 'echo', { text: 'again' })).toBe('echo: again');
    // The DELETE went out before the new session's initialize; the server holds only the new session.
    expect(s.deletes).toEqual([s.sessionIds[0]]);
    expect(s.sessionIds).toHaveLength(2);
    expect(s.sessionCount()).toBe(1);
  });

  it('a session whose tool listing failed is ended on the server, and the next one lists the tools', async () => {
    const s = await server();
    s.breakNext('tools/list');
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'the reconnect');
    // The DELETE went out at the failure, the backoff (0.5 s) before the next session.
    expect(s.deletes).toEqual([s.sessionIds[0]]);
    expect(s.sessionIds).toHaveLength(2);
    expect(s.sessionCount()).toBe(1);
    expect(p.tools()).toHaveLength(6);
  });

  it('a call does not wait for the server to take the DELETE of a session it dropped', async () => {
    const s = await server({ holdDeletes: true });
    const { logger: capturing, lines } = capturingLogger('debug');
    const p = createMcpProvider(mcpTool({ url: s.url }), { env: {}, logger: capturing });
    cleanup.push(() => p.close?.() ?? Promise.resolve());
    await waitFor(() => connected(p), 'connection');
    // The call's 404 drops the first session (gone, so not ended); the listing on the second fails.
    await s.forgetSessions(true);
    s.breakNext('tools/list');
    const started = Date.now();
    await expect(run(p, 'echo', { text: 'x' })).rejects.toMatchObject({ code: 'ERP_MCP_UNAVAILABLE' });
    // Not held for the DELETE the server never answers.
    expect(Date.now() - started).toBeLessThan(END_SESSION_TIMEOUT_MS);
    await waitFor(() => s.deletes.length > 0, 'the DELETE');
    expect(s.deletes).toEqual([s.sessionIds[1]]);
    // Given up at the bound, and said so at debug level.
    await waitFor(
      () => lines().some((l) => l.msg === 'Could not end the MCP session on the server'),
      'the log',
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(END_SESSION_TIMEOUT_MS);
  });

  it('a server that stays away fails calls with a short error and keeps retrying', async () => {
    const s = await server();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await s.stop();
    await waitFor(() => p.status?.().state === 'down', 'down state', 30);
    const failure = await run(p, 'echo', { text: 'x' }).catch((e: unknown) => e);
    expect(failure).toBeInstanceOf(ToolError);
    expect((failure as ToolError).message).toBe('the MCP server is unavailable');
    // The last known tools stay offered, so the model hears why a call failed rather than losing them.
    expect(p.tools().length).toBe(6);
  });

  it('close stops reconnecting', async () => {
    const port = await freePort();
    const p = createMcpProvider(mcpTool({ url: `http://127.0.0.1:${port}/mcp` }), { env: {}, logger });
    await waitFor(() => p.status?.().state === 'down', 'down state');
    await p.close?.();
    const s = await server({ port });
    // Longer than the first backoff steps: a provider still retrying would have connected by now.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(s.sessionCount()).toBe(0);
    expect(p.status?.().state).toBe('down');
  });
});

describe('mcp provider against a hostile server', () => {
  async function hostile(): Promise<HostileMcpServer> {
    const s = await startHostileMcpServer();
    cleanup.push(() => s.close());
    return s;
  }

  it("passes on a server's own error answered with the SDK's codes, keeping the session", async () => {
    const s = await hostile();
    s.tools = 1;
    s.mode = 'rpc-error';
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    // -32000 is the usual code for a tool's own failure, -32001 rarer: the SDK uses both for its own
    // closed connection and timeout, which once made the model hear "unavailable" and the session end.
    for (const code of [-32000, -32001, -32602]) {
      s.rpcErrorCode = code;
      await expect(run(p, 'tool_0')).rejects.toMatchObject({
        code: 'ERP_MCP_CALL_FAILED',
        message: 'City not found',
      });
    }
    expect(s.initializations).toBe(1);
    expect(s.deletes).toEqual([]);
  });

  it('offers at most 64 tools of a server listing 10,000, and says so', async () => {
    const s = await hostile();
    s.tools = 10_000;
    const { logger: capturing, lines } = capturingLogger();
    const p = createMcpProvider(mcpTool({ url: s.url }), { env: {}, logger: capturing });
    cleanup.push(() => p.close?.() ?? Promise.resolve());
    await waitFor(() => connected(p), 'connection');
    expect(p.tools()).toHaveLength(64);
    expect(p.tools()[63]?.name).toBe('tool_63');
    expect(p.status?.()).toMatchObject({ tools: 64 });
    const warning = `MCP server ${s.url} lists 10000 tools; only the first 64 are offered (the cap per server); choose others with mcp.include`;
    expect(p.warnings?.()).toEqual([warning]);
    expect(lines().filter((l) => l.msg === warning)).toHaveLength(1);
  });

  it('cuts a listed description to 4096 characters and leaves out a tool whose schema passes 64 KB', async () => {
    const s = await hostile();
    s.oversizedListing = true;
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    expect(p.tools().map((t) => t.name)).toEqual(['tool_0', 'tool_2']);
    expect(p.tools()[0]?.description).toBe('d'.repeat(4096));
  });

  it('stops paging once it has more tools than the cap, and says so', async () => {
    const s = await hostile();
    s.tools = 10_000;
    s.pageSize = 10;
    const { logger: capturing, lines } = capturingLogger();
    const p = createMcpProvider(mcpTool({ url: s.url }), { env: {}, logger: capturing });
    cleanup.push(() => p.close?.() ?? Promise.resolve());
    await waitFor(() => connected(p), 'connection');
    // 65 tools, one past the cap, are on the first 7 pages; the old code read 100 pages.
    expect(s.listings).toBe(7);
    expect(p.tools()).toHaveLength(64);
    const warning = `MCP server ${s.url} lists more than 64 tools; only the first 64 are offered (the cap per server); choose others with mcp.include`;
    expect(p.warnings?.()).toEqual([warning]);
    expect(lines().filter((l) => l.msg === warning)).toHaveLength(1);
  });

  it('stops paging once every included tool is found', async () => {
    const s = await hostile();
    s.tools = 10_000;
    s.pageSize = 10;
    const p = provider({ url: s.url, include: ['tool_25', 'tool_3'] });
    await waitFor(() => connected(p), 'connection');
    expect(s.listings).toBe(3);
    expect(p.tools().map((t) => t.name)).toEqual(['tool_3', 'tool_25']);
  });

  it('stops paging once the tools held pass 8 MiB, and says so', async () => {
    const s = await hostile();
    s.tools = 10_000;
    s.pageSize = 1;
    s.descriptionChars = 1024 * 1024;
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    // A little over 1 MiB a page (the name and schema too): the eighth passes 8 MiB. The old code read
    // 100 pages and held 100 MiB.
    expect(s.listings).toBe(8);
    expect(p.tools()).toHaveLength(8);
    expect(p.warnings?.()).toEqual([
      `MCP server ${s.url} lists more tools than one listing reads (100 pages or 8 MiB); only the 8 read are offered`,
    ]);
  });

  it('gives the whole listing one 10 s deadline, not one per page', async () => {
    const s = await hostile();
    s.tools = 1;
    s.pageSize = 1;
    s.endless = true;
    s.pageDelayMs = 3_000;
    const started = Date.now();
    const p = provider({ url: s.url });
    // Each page comes within 10 s; the old code waited 10 s for each of up to 100.
    await waitFor(() => p.status?.().lastError !== undefined, 'the listing to fail', 14);
    expect(Date.now() - started).toBeGreaterThanOrEqual(9_500);
    expect(p.status?.()).toMatchObject({
      state: 'down',
      lastError: expect.stringMatching(/^listing the tools took longer than 10 s \(3 pages read\)$/),
    });
    expect(s.listings).toBe(4);
  }, 20_000);

  it('refuses an answer nested past 256 levels before parsing it, on either transport', async () => {
    for (const transport of ['streamable', 'sse'] as const) {
      const s = await startHostileMcpServer({ transport });
      cleanup.push(() => s.close());
      s.tools = 1;
      s.mode = 'deep';
      const p = provider({ url: s.url });
      await waitFor(() => connected(p), 'connection');
      const failed = run(p, 'tool_0', {}, ctx(undefined, 5));
      if (transport === 'streamable') {
        await expect(failed).rejects.toMatchObject({
          message: expect.stringContaining('nests JSON more than 256 levels deep'),
        });
      } else {
        // The older transport's answers come on the session's event stream, which ends there, as for an
        // event over the size cap.
        await expect(failed).rejects.toMatchObject({ code: 'ERP_MCP_UNAVAILABLE' });
        expect(p.status?.().lastError).toContain('nests JSON more than 256 levels deep');
      }
    }
  });

  it("says what the server answered to tools/list with the SDK's timeout code, not that it took too long", async () => {
    const s = await hostile();
    s.listErrorCode = -32001;
    const p = provider({ url: s.url });
    await waitFor(() => p.status?.().lastError !== undefined, 'the listing to fail');
    expect(p.status?.().lastError).toContain('Listing is broken');
  });

  it('cuts a long tool name to 64 characters in the log', async () => {
    const s = await hostile();
    s.longNames = true;
    s.oversizedListing = true;
    const { logger: capturing, lines } = capturingLogger();
    const p = createMcpProvider(mcpTool({ url: s.url }), { env: {}, logger: capturing });
    cleanup.push(() => p.close?.() ?? Promise.resolve());
    await waitFor(() => connected(p), 'connection');
    expect(p.tools().map((t) => t.name)).toEqual([`tool_0${'n'.repeat(58)}`]);
    const logged = lines()
      .filter((l) => /clashes|input schema/.test(l.msg))
      .map((l) => (l as { tool?: string }).tool);
    expect(logged).toEqual([`tool_1${'n'.repeat(LIMIT.name - 6)}…`, `tool_0${'n'.repeat(LIMIT.name - 6)}…`]);
  });

  it('coalesces a tools/list_changed storm into a few listings', async () => {
    const s = await hostile();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await waitFor(() => s.openSockets() > 0 && s.listings === 1, 'the first listing');
    s.tools = 5;
    // Two seconds of notifications: listing after each (or in a loop while they come) lists hundreds of times.
    await s.storm(2_000);
    await waitFor(() => p.tools().length === 5, 'the changed list');
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    // At most one listing a second, and one after the storm for the changes it coalesced.
    expect(s.listings).toBeGreaterThanOrEqual(2);
    expect(s.listings).toBeLessThanOrEqual(6);
  });

  it('fails at once on an answer over 4 MiB or one with another id, and keeps the session', async () => {
    const s = await hostile();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    // A tool timeout far beyond the test's: only an immediate failure passes.
    s.mode = 'oversized';
    await expect(run(p, 'tool_0', {}, ctx(undefined, 600))).rejects.toMatchObject({
      code: 'ERP_MCP_CALL_FAILED',
      message: "the MCP server's answer is larger than 4 MiB",
    });
    s.mode = 'wrong-id';
    await expect(run(p, 'tool_0', {}, ctx(undefined, 600))).rejects.toMatchObject(WRONG_ID);
    s.mode = 'ok';
    expect(await run(p, 'tool_0')).toBe('ok');
    expect(connected(p)).toBe(true);
  }, 20_000);

  it("ends the server's event stream at an event past 4 MiB, and keeps the session", async () => {
    const s = await hostile();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await waitFor(() => s.eventStreams > 0, 'the event stream');
    const flood = await s.endlessEvent(64 * 1024 * 1024);
    expect(flood.closedByClient).toBe(true);
    // 4 MiB read, plus what the sockets' buffers held when the client let go.
    expect(flood.written).toBeLessThan(16 * 1024 * 1024);
    expect(await run(p, 'tool_0')).toBe('ok');
    expect(connected(p)).toBe(true);
  }, 20_000);

  it('lets go of the connection of every cancelled or timed-out call', async () => {
    const s = await hostile();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    const idle = s.openSockets();
    s.mode = 'hang';
    const calls = Array.from({ length: 30 }, (_, i) => {
      const abort = new AbortController();
      // Half barge-ins, half tool timeouts (the registry aborts at the deadline).
      const call = run(p, 'tool_0', {}, ctx(abort.signal, 60));
      return { abort, call, timeout: i % 2 === 1 };
    });
    await waitFor(() => s.calls === 30, 'the calls to arrive');
    expect(s.openSockets()).toBeGreaterThanOrEqual(30);
    for (const { abort, timeout } of calls) {
      abort.abort(timeout ? new DOMException('the tool timed out', 'TimeoutError') : undefined);
    }
    await Promise.allSettled(calls.map((c) => c.call));
    await waitFor(() => s.openSockets() <= idle + 1, 'the connections to close');
    s.mode = 'ok';
    expect(await run(p, 'tool_0')).toBe('ok');
  });

  it('ends a connected session on the server once when closed', async () => {
    const s = await hostile();
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await p.close?.();
    await p.close?.();
    expect(s.deletes).toEqual(['hostile-1']);
  });

  it('closed while initialize is unanswered, ends the session the server answers with afterwards', async () => {
    const s = await hostile();
    s.holding = 'initialize';
    const p = provider({ url: s.url });
    await waitFor(() => s.initializations === 1, 'initialize to arrive');
    const started = Date.now();
    const closing = p.close?.();
    setTimeout(() => s.release(), 100);
    await closing;
    // It waited for the answer, not for its time to run out.
    expect(Date.now() - started).toBeLessThan(END_SESSION_TIMEOUT_MS);
    expect(s.deletes).toEqual(['hostile-1']);
    expect(s.listings).toBe(0);
    await p.close?.();
    expect(s.deletes).toEqual(['hostile-1']);
  });

  it('closed while tools/list is unanswered, ends the session at once', async () => {
    const s = await hostile();
    s.holding = 'tools/list';
    const p = provider({ url: s.url });
    await waitFor(() => s.listings === 1, 'tools/list to arrive');
    await p.close?.();
    expect(s.deletes).toEqual(['hostile-1']);
  });

  it('closed while initialize is unanswered, completes even if the answer never comes', async () => {
    const s = await hostile();
    s.holding = 'initialize';
    const p = provider({ url: s.url });
    await waitFor(() => s.initializations === 1, 'initialize to arrive');
    const started = Date.now();
    await p.close?.();
    // The bound, plus closing the client.
    expect(Date.now() - started).toBeLessThan(END_SESSION_TIMEOUT_MS + 1_000);
    expect(s.deletes).toEqual([]);
    expect(p.status?.().state).toBe('down');
  });

  /** The longest the event loop was held up while `work` ran, in milliseconds. */
  async function longestStall(work: () => Promise<unknown>): Promise<number> {
    const delay = monitorEventLoopDelay({ resolution: 10 });
    delay.enable();
    try {
      await work();
    } finally {
      delay.disable();
    }
    return delay.max / 1e6;
  }

  it('never runs an output schema: a catastrophic pattern cannot stall the event loop', async () => {
    const s = await hostile();
    s.outputSchema = { type: 'object', properties: { s: { type: 'string', pattern: '^(a+)+$' } } };
    // The SDK's own validator backtracks for about 6 s on these 26 characters.
    s.structuredContent = { s: `${'a'.repeat(25)}!` };
    const p = createMcpProvider(mcpTool({ url: s.url }), { env: {}, logger });
    cleanup.push(() => p.close?.() ?? Promise.resolve());
    await waitFor(() => connected(p), 'connection');
    // An ok result that breaks the output schema's pattern: the schema was never run.
    expect(await run(p, 'tool_0')).toBe(`ok\n${JSON.stringify(s.structuredContent)}`);
  });

  it('compiles no output schema on a listing, of tools offered or not, however often it lists', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const s = await hostile();
    s.tools = 64;
    // About 12 KB each: the SDK's own validator took some 3 s to compile the 64 and kept 10 MB of them.
    s.outputSchema = {
      type: 'object',
      properties: Object.fromEntries(Array.from({ length: 500 }, (_, n) => [`p${n}`, { type: 'string' }])),
    };
    let p: ToolProvider | undefined;
    const relist = async (listings: number) => {
      await s.storm(20);
      await waitFor(() => s.listings >= listings, `listing ${listings}`);
      // The listing's answer arrived; give the client a moment to take it in.
      await new Promise((resolve) => setTimeout(resolve, 200));
    };
    const stall = await longestStall(async () => {
      p = createMcpProvider(mcpTool({ url: s.url, include: ['tool_0'] }), { env: {}, logger });
      cleanup.push(() => p?.close?.() ?? Promise.resolve());
      await waitFor(() => connected(p!), 'connection');
      await relist(2);
    });
    expect(stall).toBeLessThan(1_000);
    gc();
    const before = process.memoryUsage().heapUsed;
    await relist(3);
    await relist(4);
    gc();
    gc();
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(8 * 1024 * 1024);
    expect(p?.tools().map((t) => t.name)).toEqual(['tool_0']);
  });

  /** A registry of the one MCP entry. */
  async function registryOf(mcp: Record<string, unknown>) {
    const result = validateToolSet({
      apiVersion: 'earpiece.dev/v1alpha1',
      kind: 'ToolSet',
      metadata: { name: 'test' },
      spec: { tools: [{ mcp }] },
    });
    if (!result.ok) throw new Error(formatIssues(result.issues));
    const registry = await createToolRegistry(resolveToolSet(result.toolset), { env: {}, logger });
    cleanup.push(() => registry.close());
    return registry;
  }

  it('compiles an argument schema on its first call, and again only when its content changes', async () => {
    const s = await hostile();
    s.tools = 2;
    s.inputProperties = 50;
    const registry = await registryOf({ url: s.url });
    await waitFor(() => registry.has('tool_1'), 'the tools');
    const call = (name: string) =>
      registry.call({ id: name, name, arguments: '{"q":"x"}' }, new AbortController().signal);
    const described = (suffix: string) => () =>
      registry.offered([]).every((d) => d.function.description?.endsWith(suffix));

    const start = compiles.count;
    expect(registry.offered([])).toHaveLength(2);
    expect(compiles.count).toBe(start);
    await call('tool_0');
    await call('tool_1');
    // The two tools have the same schema.
    expect(compiles.count).toBe(start + 1);

    // A listing with new descriptions brings new schema objects of the same content: nothing compiles.
    s.descriptionSuffix = ' Now with more.';
    await s.storm(20);
    await waitFor(described(' Now with more.'), 'the new descriptions');
    await call('tool_0');
    await call('tool_1');
    expect(compiles.count).toBe(start + 1);

    s.inputProperties = 51;
    s.descriptionSuffix = ' And a field.';
    await s.storm(20);
    await waitFor(described(' And a field.'), 'the new schemas');
    expect((await call('tool_0')).outcome).toBe('ok');
    expect(compiles.count).toBe(start + 2);
    expect(s.calls).toBe(5);
  });

  it('leaves out the tools whose input schemas pass the budget of the server, and names them', async () => {
    const s = await hostile();
    s.tools = 12;
    // Each schema just under the cap of one: twelve of them are half again the budget of all.
    s.inputProperties = 2_300;
    const { logger: capturing, lines } = capturingLogger();
    const p = createMcpProvider(mcpTool({ url: s.url }), { env: {}, logger: capturing });
    cleanup.push(() => p.close?.() ?? Promise.resolve());
    await waitFor(() => connected(p), 'connection');
    const size = JSON.stringify(p.tools()[0]?.parameters).length;
    expect(size).toBeGreaterThan(MAX_MCP_SCHEMAS_CHARS / 9);
    expect(size).toBeLessThan(MAX_MCP_SCHEMA_CHARS);
    expect(p.tools().map((t) => t.name)).toEqual(Array.from({ length: 8 }, (_, i) => `tool_${i}`));
    const warning = lines().find((l) => l.msg.includes('past their budget')) as
      | { tools?: string[]; cap?: number }
      | undefined;
    expect(warning).toMatchObject({
      tools: ['tool_8', 'tool_9', 'tool_10', 'tool_11'],
      cap: MAX_MCP_SCHEMAS_CHARS,
    });
  });

  it('checks arguments against a hostile pattern in linear time', async () => {
    const s = await hostile();
    s.pattern = '^(a+)+$';
    const registry = await createToolRegistry(
      resolveToolSet(
        (() => {
          const result = validateToolSet({
            apiVersion: 'earpiece.dev/v1alpha1',
            kind: 'ToolSet',
            metadata: { name: 'test' },
            spec: { tools: [{ mcp: { url: s.url } }] },
          });
          if (!result.ok) throw new Error(formatIssues(result.issues));
          return result.toolset;
        })(),
      ),
      { env: {}, logger },
    );
    cleanup.push(() => registry.close());
    await waitFor(() => registry.has('tool_0'), 'the tools');
    // Backtracking would take longer than the age of the universe on these 40 characters.
    const outcome = await registry.call(
      { id: 'c1', name: 'tool_0', arguments: JSON.stringify({ q: `${'a'.repeat(40)}!` }) },
      new AbortController().signal,
    );
    expect(outcome.content).toMatch(/must match pattern/);
    expect(s.calls).toBe(0);
  });
});

describe('mcp provider over the older HTTP+SSE transport', () => {
  it('falls back when Streamable HTTP is refused, and lists and calls tools', async () => {
    const s = await server({ transport: 'sse' });
    const p = provider({ url: s.url, headers: [{ name: 'Authorization', value: 'Bearer legacy' }] }, {});
    await waitFor(() => connected(p), 'connection');
    expect(p.tools().length).toBe(6);
    expect(await run(p, 'echo', { text: 'old' })).toBe('echo: old');
    expect(await run(p, 'snapshot')).toContain('[image omitted]');
    expect(new Set(s.authorizations)).toEqual(new Set(['Bearer legacy']));
  });

  /** A hand-written HTTP+SSE server: every answer comes on the event stream, matched by its id alone. */
  async function hostileLegacy(): Promise<{ s: HostileMcpServer; p: ToolProvider }> {
    const s = await startHostileMcpServer({ transport: 'sse' });
    cleanup.push(() => s.close());
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    return { s, p };
  }

  it('fails a call at once on an answer with another id, and keeps the session', async () => {
    const { s, p } = await hostileLegacy();
    s.mode = 'wrong-id';
    // A tool timeout far beyond the test's: only an immediate failure passes.
    await expect(run(p, 'tool_0', {}, ctx(undefined, 600))).rejects.toMatchObject(WRONG_ID);
    s.mode = 'ok';
    expect(await run(p, 'tool_0')).toBe('ok');
    expect(connected(p)).toBe(true);
    expect(s.eventStreams).toBe(1);
  }, 20_000);

  it("a stray answer fails the waiting call once: that call's own late answer does not fail the next", async () => {
    const { s, p } = await hostileLegacy();
    s.mode = 'stray';
    await expect(run(p, 'tool_0', {}, ctx(undefined, 600))).rejects.toMatchObject({
      code: 'ERP_MCP_CALL_FAILED',
    });
    // Waiting when the first call's own answer comes, LATE_MS after it was asked.
    s.mode = 'late';
    expect(await run(p, 'tool_0')).toBe('ok');
    expect(connected(p)).toBe(true);
    expect(s.eventStreams).toBe(1);
  }, 20_000);

  it('matches an answer whose id comes back as a string, as the SDK does', async () => {
    const { s, p } = await hostileLegacy();
    s.mode = 'string-id';
    expect(await run(p, 'tool_0', {}, ctx(undefined, 600))).toBe('ok');
  });

  it('reads the body of a refused request no further than 4 MiB', async () => {
    const { s, p } = await hostileLegacy();
    s.mode = 'refused';
    await expect(run(p, 'tool_0', {}, ctx(undefined, 600))).rejects.toBeInstanceOf(Error);
    await waitFor(() => s.refusal.closedByClient, 'the client to let go of the body');
    // 4 MiB read, plus what the sockets' buffers held when the client let go.
    expect(s.refusal.written).toBeLessThan(16 * 1024 * 1024);
  }, 20_000);

  it('lets the late answer of a cut-off call go by without ending the session', async () => {
    const { s, p } = await hostileLegacy();
    s.mode = 'late';
    const abort = new AbortController();
    const call = run(p, 'tool_0', {}, ctx(abort.signal));
    await waitFor(() => s.calls === 1, 'the call');
    abort.abort();
    await expect(call).rejects.toBeInstanceOf(Error);
    // The answer the SDK no longer waits for arrives.
    await new Promise((resolve) => setTimeout(resolve, LATE_MS + 300));
    s.mode = 'ok';
    expect(await run(p, 'tool_0')).toBe('ok');
    expect(connected(p)).toBe(true);
    expect(s.eventStreams).toBe(1);
  }, 20_000);

  it('reconnects after the server restarts', async () => {
    const s = await server({ transport: 'sse' });
    const p = provider({ url: s.url });
    await waitFor(() => connected(p), 'connection');
    await s.stop();
    await waitFor(() => !connected(p), 'the provider to notice');
    await s.start();
    await waitFor(() => connected(p), 'the reconnect', 30);
    expect(await run(p, 'echo', { text: 'back' })).toBe('echo: back');
  });
});
