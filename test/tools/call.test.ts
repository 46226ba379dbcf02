import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_ARGUMENT_BYTES } from '../../src/tools/arguments.js';
import { type CallableTool, callTool, cutToBytes } from '../../src/tools/call.js';
import { ToolState } from '../../src/tools/tool-state.js';
import type { ToolExecutor } from '../../src/tools/types.js';
import { capturingLogger, silentLogger, toolset } from './helpers.js';

const base = toolset([{ name: 't', builtin: 'time' }]).tools[0]!;

function tool(executor: ToolExecutor, config: Partial<typeof base> = {}): CallableTool {
  return {
    name: 't',
    description: '',
    parameters: { type: 'object' },
    executor,
    config: { ...base, ...config },
    check: () => undefined,
  };
}

const options = (logger = silentLogger) => ({
  state: ToolState.local(toolset([], { cache: { maxEntries: 10 } }), { env: {}, logger }),
  maxResultBytes: 2048,
  names: () => ['t'],
  logger,
});
const call = { id: 'c1', name: 't', arguments: '{}' };
/** An executor that never settles and never looks at its signal. */
const deaf: ToolExecutor = { run: () => new Promise(() => {}) };

describe('callTool', () => {
  it('times out an executor that ignores its signal', async () => {
    const outcome = await callTool(
      tool(deaf, { timeoutMs: 50 }),
      call,
      new AbortController().signal,
      options(),
    );
    expect(outcome).toMatchObject({ outcome: 'timeout', content: 'error: t timed out after 0.05s' });
  });

  it('cancels an executor that ignores its signal as soon as the caller leaves', async () => {
    const controller = new AbortController();
    const pending = callTool(tool(deaf, { timeoutMs: 60_000 }), call, controller.signal, options());
    controller.abort();
    expect(await pending).toMatchObject({ outcome: 'cancelled', content: 'error: t was cancelled' });
  });

  it('hands the executor a signal that aborts on the caller leaving or on the timeout', async () => {
    let seen: AbortSignal | undefined;
    const watching: ToolExecutor = {
      run: (_args, ctx) => {
        seen = ctx.signal;
        return new Promise(() => {});
      },
    };
    const controller = new AbortController();
    const pending = callTool(tool(watching, { timeoutMs: 60_000 }), call, controller.signal, options());
    expect(seen?.aborted).toBe(false);
    controller.abort();
    await pending;
    expect(seen?.aborted).toBe(true);
  });

  it('shows the model no message of an unexpected error, only a safe code, and logs it', async () => {
    const { logger, lines } = capturingLogger();
    const leaky = (code?: string): ToolExecutor => ({
      run: async () => {
        throw Object.assign(new Error('connect to postgres://admin:hunter2@db failed'), code ? { code } : {});
      },
    });
    const signal = new AbortController().signal;
    expect(await callTool(tool(leaky()), call, signal, options(logger))).toMatchObject({
      outcome: 'error',
      content: 'error: t failed: unexpected error',
    });
    expect(await callTool(tool(leaky('ECONNRESET')), call, signal, options(logger))).toMatchObject({
      content: 'error: t failed: unexpected error (ECONNRESET)',
    });
    expect(await callTool(tool(leaky('has spaces: hunter2')), call, signal, options(logger))).toMatchObject({
      content: 'error: t failed: unexpected error',
    });
    expect(lines().filter((l) => l.msg === 'Tool failed unexpectedly')).toHaveLength(3);
  });

  it('sends strings as they are and serializes other values', async () => {
    const returning = (value: unknown): ToolExecutor => ({ run: async () => value });
    const signal = new AbortController().signal;
    const content = async (value: unknown) =>
      (await callTool(tool(returning(value)), call, signal, options())).content;
    expect(await content('plain "text"')).toBe('plain "text"');
    expect(await content({ a: [1, null], b: 'x' })).toBe('{"a":[1,null],"b":"x"}');
    expect(await content(42)).toBe('42');
    expect(await content(undefined)).toBe('');
    expect(await callTool(tool(returning({ big: 1n })), call, signal, options())).toMatchObject({
      outcome: 'error',
      content: 'error: t failed: the result could not be turned into JSON',
    });
  });

  it('keys a cached result on a hash of the arguments, so a key stays short however large they are', async () => {
    const opts = options();
    const keys: string[] = [];
    const set = opts.state.cache.set.bind(opts.state.cache);
    opts.state.cache.set = (key, content, ttlMs) => {
      keys.push(key);
      set(key, content, ttlMs);
    };
    const cached = tool({ run: async () => 'result' }, { cacheTtlMs: 60_000 });
    const signal = new AbortController().signal;
    const big = { note: 'x'.repeat(MAX_ARGUMENT_BYTES - 64), city: 'Lisbon' };
    const first = await callTool(cached, { ...call, arguments: JSON.stringify(big) }, signal, opts);
    const reordered = JSON.stringify({ city: 'Lisbon', note: big.note });
    const again = await callTool(cached, { ...call, arguments: reordered }, signal, opts);
    expect([first.outcome, again.outcome]).toEqual(['ok', 'cache_hit']);
    expect(keys).toHaveLength(1);
    expect(keys[0]!.length).toBeLessThan(100);
  });

  it('cuts any text to the byte limit at a character boundary', () => {
    fc.assert(
      fc.property(
        fc.string({ unit: 'grapheme', maxLength: 200 }),
        fc.integer({ min: 16, max: 400 }),
        (text, max) => {
          const cut = cutToBytes(text, max);
          expect(Buffer.byteLength(cut)).toBeLessThanOrEqual(max);
          if (Buffer.byteLength(text) <= max) {
            expect(cut).toBe(text);
          } else {
            expect(cut.endsWith('…(truncated)')).toBe(true);
            expect(text.startsWith(cut.slice(0, -'…(truncated)'.length))).toBe(true);
          }
        },
      ),
    );
  });
});
