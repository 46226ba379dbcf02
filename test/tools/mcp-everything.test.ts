/**
 * The mcp provider against the published reference server `@modelcontextprotocol/server-everything`,
 * run as a child process in its Streamable HTTP mode on a free local port.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createMcpProvider } from '../../src/tools/mcp.js';
import type { ToolContext, ToolProvider } from '../../src/tools/types.js';
import { resolveToolSet } from '../../src/toolset/defaults.js';
import { formatIssues, validateToolSet } from '../../src/toolset/validate.js';
import { type EverythingServer, startEverythingServer } from '../support/mcp-server.js';

const logger = pino({ level: 'silent' });
let everything: EverythingServer;
let url: string;

beforeAll(async () => {
  everything = await startEverythingServer();
  url = everything.url;
});

afterAll(async () => {
  await everything?.stop();
});

function provider(mcp: Record<string, unknown>): ToolProvider {
  const result = validateToolSet({
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'everything' },
    spec: { tools: [{ mcp: { url, ...mcp } }] },
  });
  if (!result.ok) throw new Error(formatIssues(result.issues));
  return createMcpProvider(resolveToolSet(result.toolset).tools[0]!, { env: {}, logger });
}

function ctx(signal = new AbortController().signal, seconds = 15): ToolContext {
  return { signal, deadline: Date.now() + seconds * 1000, toolName: 'test' };
}

async function connected(p: ToolProvider): Promise<void> {
  const until = Date.now() + 20_000;
  while (p.status?.().state !== 'connected') {
    if (Date.now() > until) throw new Error(`not connected: ${JSON.stringify(p.status?.())}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

function run(p: ToolProvider, name: string, args: Record<string, unknown>, c = ctx()) {
  const tool = p.tools().find((t) => t.name === name);
  if (!tool) throw new Error(`no tool ${name}`);
  return tool.executor.run(args, c);
}

describe('mcp provider with @modelcontextprotocol/server-everything', () => {
  it('lists its tools with their input schemas', async () => {
    const p = provider({});
    try {
      await connected(p);
      const names = p.tools().map((t) => t.name);
      expect(names).toEqual(
        expect.arrayContaining(['echo', 'get-sum', 'get-tiny-image', 'get-structured-content']),
      );
      const sum = p.tools().find((t) => t.name === 'get-sum')!;
      expect(sum.description).toMatch(/sum|add/i);
      expect(sum.parameters).toMatchObject({
        type: 'object',
        properties: { a: { type: 'number' }, b: { type: 'number' } },
      });
    } finally {
      await p.close?.();
    }
  });

  it('calls tools by their original names behind a prefix, with each kind of result', async () => {
    const p = provider({
      prefix: 'ev_',
      include: [
        'echo',
        'get-sum',
        'get-tiny-image',
        'get-structured-content',
        'trigger-long-running-operation',
      ],
    });
    try {
      await connected(p);
      expect(
        p
          .tools()
          .map((t) => t.name)
          .sort(),
      ).toEqual([
        'ev_echo',
        'ev_get-structured-content',
        'ev_get-sum',
        'ev_get-tiny-image',
        'ev_trigger-long-running-operation',
      ]);
      expect(await run(p, 'ev_echo', { message: 'hello' })).toBe('Echo: hello');
      expect(await run(p, 'ev_get-sum', { a: 2, b: 3 })).toMatch(/\b5\b/);
      const image = await run(p, 'ev_get-tiny-image', {});
      expect(image).toContain('[image omitted]');
      expect(image).not.toMatch(/iVBOR/);
      expect(await run(p, 'ev_get-structured-content', { location: 'Chicago' })).toEqual({
        temperature: 36,
        conditions: 'Light rain / drizzle',
        humidity: 82,
      });

      // A long operation cut short: the call ends at once and the session stays usable.
      const abort = new AbortController();
      const long = run(
        p,
        'ev_trigger-long-running-operation',
        { duration: 30, steps: 3 },
        ctx(abort.signal, 60),
      );
      setTimeout(() => abort.abort(new DOMException('interrupted', 'AbortError')), 200);
      await expect(long).rejects.toBeDefined();
      expect(await run(p, 'ev_echo', { message: 'after' })).toBe('Echo: after');
    } finally {
      await p.close?.();
    }
  });
});
