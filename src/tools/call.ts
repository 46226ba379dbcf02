/**
 * One tool call end to end, in this order: unknown name, JSON arguments, the tool's schema, the cache
 * (this sidecar's, then the fleet's), the rate limit, then the executor under the tool's timeout. Every
 * failure becomes an outcome with a short sentence for the model; nothing here throws, and no error
 * content carries a stack, a secret or a JSON dump.
 */
import type { Logger } from '../telemetry/log.js';
import { untilAborted } from './abort.js';
import { type ArgumentCheck, parseArguments } from './arguments.js';
import { resultId, type ToolState } from './tool-state.js';
import {
  CallTimeout,
  type ProvidedTool,
  RateLimited,
  type ToolCall,
  ToolError,
  type ToolOutcome,
  type ToolOutcomeLabel,
} from './types.js';

export interface CallableTool extends ProvidedTool {
  check: ArgumentCheck;
}

export interface CallOptions {
  /** Cache, calls in flight and rate limits: in this process, and across the fleet with shared state. */
  state: ToolState;
  maxResultBytes: number;
  /** Every tool's name, for the answer to an unknown one. */
  names: () => string[];
  logger?: Logger;
}

const CUT_MARKER = '…(truncated)';

/** Cuts text to at most maxBytes of UTF-8, never inside a character, ending with a marker when cut. */
export function cutToBytes(text: string, maxBytes: number): string {
  if (text.length * 3 <= maxBytes || Buffer.byteLength(text) <= maxBytes) return text;
  const bytes = Buffer.from(text);
  let end = Math.max(0, maxBytes - Buffer.byteLength(CUT_MARKER));
  // bytes[end] is the first byte left out; a continuation byte there means a character straddles the cut.
  while (end > 0 && ((bytes[end] as number) & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end).toString('utf8') + CUT_MARKER;
}

function stringify(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === undefined) return '';
  try {
    return JSON.stringify(value) ?? '';
  } catch {
    throw new ToolError('the result could not be turned into JSON', 'ERP_TOOL_RESULT');
  }
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))}s`;
}

function unknownTool(name: string, names: string[]): string {
  const shown = JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}…` : name);
  if (names.length === 0) return `error: there is no tool named ${shown}, and no tools are available`;
  return `error: there is no tool named ${shown}; the tools are ${names.map((n) => JSON.stringify(n)).join(', ')}`;
}

/**
 * Runs the executor under what is left of the tool's timeout (all of it unless the call waited on
 * another sidecar's run); `signal` undefined means only the timeout can stop it.
 */
async function execute(
  tool: CallableTool,
  args: Record<string, unknown>,
  signal: AbortSignal | undefined,
  maxResultBytes: number,
  timeoutMs = tool.config.timeoutMs,
): Promise<string> {
  if (timeoutMs <= 0) throw new CallTimeout();
  // One controller for the timeout and the caller's abort (AbortSignal.any costs more on the way to the tool).
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(new CallTimeout()), timeoutMs);
  const callerAborted = () => stop.abort(signal?.reason);
  if (signal?.aborted) callerAborted();
  else signal?.addEventListener('abort', callerAborted, { once: true });
  try {
    const ctx = { signal: stop.signal, deadline: Date.now() + timeoutMs, toolName: tool.name };
    // An executor that ignores its signal still cannot hold the call past an abort.
    const value = await untilAborted(tool.executor.run(args, ctx), stop.signal);
    return cutToBytes(stringify(value), maxResultBytes);
  } catch (err) {
    throw stop.signal.aborted && !signal?.aborted ? stop.signal.reason : err;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', callerAborted);
  }
}

function describeFailure(err: unknown, tool: CallableTool, logger: Logger | undefined): string {
  if (err instanceof ToolError) return err.message;
  // Anything else may carry internals; the model gets its code at most, the log gets the message.
  const code = (err as { code?: unknown } | null)?.code;
  logger?.warn(
    { tool: tool.name, error: { name: (err as Error)?.name, code, message: (err as Error)?.message } },
    'Tool failed unexpectedly',
  );
  return typeof code === 'string' && /^[A-Z0-9_]{1,40}$/.test(code)
    ? `unexpected error (${code})`
    : 'unexpected error';
}

export async function callTool(
  tool: CallableTool | undefined,
  call: ToolCall,
  signal: AbortSignal,
  options: CallOptions,
): Promise<ToolOutcome> {
  const started = performance.now();
  const done = (outcome: ToolOutcomeLabel, content: string): ToolOutcome => ({
    call,
    content: cutToBytes(content, options.maxResultBytes),
    outcome,
    seconds: (performance.now() - started) / 1000,
    remember: tool?.config.memory ?? true,
  });
  if (!tool) return done('unknown_tool', unknownTool(call.name, options.names()));
  // A call that had not started when the turn ended (one queued for a maxParallelCalls slot) never starts:
  // onInterrupt: finish lets a side effect under way complete, it does not begin new ones for a user who left.
  if (signal.aborted) return done('cancelled', `error: ${tool.name} was cancelled`);
  // onInterrupt: finish — a side effect such as switching a light completes; only its timeout stops it.
  const caller = tool.config.onInterrupt === 'finish' ? undefined : signal;
  try {
    const parsed = parseArguments(call.arguments);
    if (!parsed.ok) {
      return done('invalid_arguments', `error: the arguments for ${tool.name} are wrong: ${parsed.problem}`);
    }
    const problem = tool.check(parsed.args);
    if (problem) return done('invalid_arguments', `error: invalid arguments for ${tool.name}: ${problem}`);

    if (caller?.aborted) throw caller.reason;
    const { state } = options;
    const budget = state.budget();
    // Only a tool with a rate limit waits for the check; the others start in this very tick.
    const limited = tool.config.rateLimit !== undefined;
    const admitted = async () => {
      if (!(await state.admit(tool, budget))) throw new RateLimited();
    };
    const ttl = tool.config.cacheTtlMs;
    if (ttl === undefined) {
      if (limited) await admitted();
      return done('ok', await execute(tool, parsed.args, caller, options.maxResultBytes));
    }
    const id = resultId(tool, parsed.args, options.maxResultBytes);
    const hit = state.cache.get(id);
    if (hit !== undefined) return done('cache_hit', hit);
    // Only the caller that starts the flight learns whether the fleet answered from its cache.
    let fromCache = false;
    const content = await state.cache.shared(id, caller, async (shared) => {
      const fetched = await state.fetchOrRun(
        tool,
        id,
        ttl,
        options.maxResultBytes,
        shared,
        budget,
        async (timeoutMs) => {
          if (limited) await admitted();
          return execute(tool, parsed.args, shared, options.maxResultBytes, timeoutMs);
        },
      );
      fromCache = fetched.hit;
      // Redis counts stored bytes, and bytes that are not UTF-8 decode larger: the cache holds no more than a run.
      const kept = cutToBytes(fetched.content, options.maxResultBytes);
      state.cache.set(id, kept, fetched.ttlMs);
      return kept;
    });
    return done(fromCache ? 'cache_hit' : 'ok', content);
  } catch (err) {
    if (err instanceof CallTimeout) {
      return done('timeout', `error: ${tool.name} timed out after ${seconds(tool.config.timeoutMs)}`);
    }
    if (err instanceof RateLimited) {
      return done(
        'rate_limited',
        `error: ${tool.name} is busy (its rate limit is reached); try again in a moment`,
      );
    }
    if (caller?.aborted) return done('cancelled', `error: ${tool.name} was cancelled`);
    return done('error', `error: ${tool.name} failed: ${describeFailure(err, tool, options.logger)}`);
  }
}
