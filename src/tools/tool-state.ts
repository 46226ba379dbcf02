/**
 * What tool calls share: cached results, calls in flight and rate limits. In-process always (cache.ts,
 * rate-limit.ts); across every sidecar of the ToolSet when `spec.sharedState` names a Redis
 * (redis-state.ts, imported only then). Redis is asked first and the process decides alone whenever
 * Redis cannot answer within the call's budget.
 *
 * Fleet keys live under `earpiece:{<namespace>/<toolset>}:` (one hash slot per ToolSet). Results and
 * locks are keyed by the tool's name, a hash of its definition (an edited tool never reads an old
 * result) and a hash of its arguments; a secret in the definition enters that hash by its name (the
 * env variable or Secret it comes from), never by its value. Rate limits are keyed by tool name alone:
 * a quota belongs to the service behind the tool, whatever its description says.
 */
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../telemetry/log.js';
import { canonicalJson, type ResolvedToolSet } from '../toolset/defaults.js';
import type { ToolSetErrorCode } from '../toolset/errors.js';
import { redisUrlProblem } from '../toolset/validate.js';
import { resolveValue } from '../toolset/values.js';
import type { RedisBudget } from './budget.js';
import { ToolCache } from './cache.js';
import { LocalRateLimiter } from './rate-limit.js';
import type { Claim, RedisState, SharedOperation, SharedStateStatus } from './redis-state.js';
import { CallTimeout, type ProvidedTool } from './types.js';

export type { SharedOperation, SharedStateStatus };

export type SharedStateEvent =
  | { kind: 'connection'; up: boolean }
  | { kind: 'fallback'; operation: SharedOperation };

export interface ToolStateOptions {
  env: NodeJS.ProcessEnv;
  logger: Logger;
  now?: () => number;
  /** Connection changes and each operation decided in-process because Redis could not answer. */
  onSharedState?: (event: SharedStateEvent) => void;
  /** A call's time for Redis (default 50 ms); tests on a loaded machine give it more. */
  redisBudgetMs?: number;
}

/** Runs the tool with at most `timeoutMs` left of its timeout. */
export type Run = (timeoutMs: number) => Promise<string>;

export interface Fetched {
  content: string;
  /** Answered from a cache (another sidecar's run included), not by running the tool here. */
  hit: boolean;
  /** How long the result stays cached: the tool's ttl, or what is left of it for a shared hit. */
  ttlMs: number;
}

/** The sidecar's Redis URL for ToolSets that name no spec.sharedState (set by the chart's sharedState.redis). */
export const SHARED_STATE_ENV = 'EARPIECE_SHARED_STATE_REDIS_URL';

export class ToolStateError extends Error {
  readonly code: ToolSetErrorCode = 'ERP_SHARED_STATE_CONFIG';
}

const POLL_START_MS = 5;
const POLL_CAP_MS = 100;
/** A lock outlives a dead holder by at most this; a live holder renews it three times as often. */
const LOCK_MS = 1000;

/** Header and connection values by reference: a literal's text never enters a key, even hashed. */
function withoutLiterals(node: unknown): unknown {
  if (Array.isArray(node)) return node.map(withoutLiterals);
  if (node === null || typeof node !== 'object') return node;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(node)) {
    if (k === 'parameters') out[k] = v;
    else if (k === 'value' && typeof v === 'string') out[k] = 'literal';
    else out[k] = withoutLiterals(v);
  }
  return out;
}

function sha(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 24);
}

const definitionHashes = new WeakMap<object, string>();

/**
 * The hash that names a tool's results, and the deferred runs a later call may join: what the tool is
 * called, what it takes and how it runs. Kept per tool object (a table rebuild or a reload makes new ones).
 */
export function definitionHash(tool: Pick<ProvidedTool, 'name' | 'description' | 'parameters' | 'config'>) {
  let hash = definitionHashes.get(tool);
  if (hash === undefined) {
    hash = sha(
      canonicalJson({
        name: tool.name,
        description: tool.description,
        parameters: tool.parameters,
        spec: withoutLiterals(tool.config.spec),
      }),
    );
    definitionHashes.set(tool, hash);
  }
  return hash;
}

/**
 * What one call goes by: the tool's name, its definition hash and a hash of its canonical arguments (key
 * order never matters), so an id stays short however large the arguments are (up to 1 MiB). Cached
 * results (resultId) and deferred runs a later call may join (src/proxy/deferral.ts) are keyed on it.
 */
export function callId(name: string, definition: string, args: unknown): string {
  return `${name}:${definition}:${sha(canonicalJson(args))}`;
}

/**
 * What a tool's cached result goes by, in this process and across the fleet: the call, and the
 * limits.maxResultBytes its result is cut to. Sidecars on different limits (a rollout that changes it, a
 * reload) keep apart results, so none serves a result cut shorter or longer than its own limit.
 */
export function resultId(
  tool: Pick<ProvidedTool, 'name' | 'description' | 'parameters' | 'config'>,
  args: unknown,
  maxResultBytes: number,
) {
  return callId(tool.name, `${definitionHash(tool)}:${maxResultBytes}`, args);
}

export class ToolState {
  /** In-process results and single-flight. */
  readonly cache: ToolCache;
  readonly #limiter: LocalRateLimiter;
  readonly #redis: RedisState | undefined;
  readonly #prefix: string;
  readonly #onEvent: ((event: SharedStateEvent) => void) | undefined;
  readonly #process = randomBytes(6).toString('hex');
  #sequence = 0;

  private constructor(toolset: ResolvedToolSet, redis: RedisState | undefined, options: ToolStateOptions) {
    const now = options.now ?? Date.now;
    this.cache = new ToolCache({ maxEntries: toolset.cacheMaxEntries, now });
    this.#limiter = new LocalRateLimiter(now);
    this.#redis = redis;
    this.#prefix = `earpiece:{${toolset.namespace ?? '-'}/${toolset.name}}:`;
    this.#onEvent = options.onSharedState;
  }

  /** State kept in this process only, whatever the ToolSet says. */
  static local(toolset: ResolvedToolSet, options: ToolStateOptions): ToolState {
    return new ToolState(toolset, undefined, options);
  }

  /**
   * Shared state when the ToolSet names it, else when the sidecar was given one for every ToolSet
   * (EARPIECE_SHARED_STATE_REDIS_URL, from the chart's sharedState.redis); otherwise in-process only.
   */
  static async create(toolset: ResolvedToolSet, options: ToolStateOptions): Promise<ToolState> {
    const sidecarUrl = options.env[SHARED_STATE_ENV] || undefined;
    if (!toolset.sharedState && !sidecarUrl) return ToolState.local(toolset, options);
    const url = toolset.sharedState
      ? resolveValue(toolset.sharedState.redisUrl, 'spec.sharedState.redis.url', options.env)
      : (sidecarUrl as string);
    const problem = redisUrlProblem(url);
    if (problem) {
      throw new ToolStateError(
        `${toolset.sharedState ? 'spec.sharedState.redis.url' : SHARED_STATE_ENV}: ${problem}`,
      );
    }
    const { RedisState } = await import('./redis-state.js');
    const redis = new RedisState({
      url,
      logger: options.logger,
      ...(options.redisBudgetMs === undefined ? {} : { budgetMs: options.redisBudgetMs }),
      onConnection: (up) => options.onSharedState?.({ kind: 'connection', up }),
    });
    options.onSharedState?.({ kind: 'connection', up: false });
    return new ToolState(toolset, redis, options);
  }

  /** A new call's Redis budget; undefined without shared state. */
  budget(): RedisBudget | undefined {
    return this.#redis?.budget();
  }

  /** Admits a run of the tool under its rate limit, if it has one. */
  async admit(tool: ProvidedTool, budget: RedisBudget | undefined): Promise<boolean> {
    const limit = tool.config.rateLimit;
    if (!limit) return true;
    const key = `${this.#prefix}q:${tool.name}`;
    if (this.#redis && budget) {
      try {
        const admitted = await this.#redis.take(key, limit, this.#token(), budget);
        if (admitted) this.#limiter.record(key, limit);
        return admitted;
      } catch {
        this.#onEvent?.({ kind: 'fallback', operation: 'rate_limit' });
      }
    }
    return this.#limiter.take(key, limit);
  }

  /**
   * A cached result from any sidecar, else one run for every identical call in flight across the fleet:
   * this sidecar runs it (holding the lock), or waits for the sidecar that does and reads its result.
   * Without shared state, or when Redis cannot answer, it runs here. Caching in this process is the
   * caller's (cache.ts), before and after. `id` is the call's resultId, which names `maxBytes` (the limit
   * the caller cuts its own runs to); a cached result over it, which earpiece never writes, is a miss.
   */
  async fetchOrRun(
    tool: ProvidedTool,
    id: string,
    ttlMs: number,
    maxBytes: number,
    signal: AbortSignal,
    budget: RedisBudget | undefined,
    run: Run,
  ): Promise<Fetched> {
    const redis = this.#redis;
    const started = performance.now();
    const left = () => tool.config.timeoutMs - (performance.now() - started);
    if (!redis || !budget) return { content: await run(left()), hit: false, ttlMs };

    const resultKey = `${this.#prefix}r:${id}`;
    const lockKey = `${this.#prefix}l:${id}`;
    const token = this.#token();
    const lockMs = Math.min(LOCK_MS, tool.config.timeoutMs);
    let claim: Claim;
    let wait = POLL_START_MS;
    let callBudget: RedisBudget = budget;
    for (;;) {
      try {
        claim = await redis.claim(resultKey, lockKey, token, lockMs, maxBytes, callBudget);
      } catch {
        this.#onEvent?.({ kind: 'fallback', operation: 'cache' });
        return { content: await run(left()), hit: false, ttlMs };
      }
      if (claim.kind !== 'held') break;
      // Another sidecar runs this call: wait for its result, no longer than this call's own timeout.
      if (left() <= wait) throw new CallTimeout();
      await sleep(wait, undefined, { signal });
      wait = Math.min(wait * 2, POLL_CAP_MS);
      callBudget = redis.budget();
    }
    if (claim.kind === 'hit') {
      // Another sidecar's ttl, or a key written by hand, may be longer: never past this tool's own.
      return { content: claim.content, hit: true, ttlMs: Math.min(claim.ttlMs, ttlMs) };
    }
    const heartbeat = setInterval(() => redis.extend(lockKey, token, lockMs).catch(() => {}), lockMs / 3);
    try {
      const content = await run(left());
      redis.store(resultKey, lockKey, content, ttlMs, token).catch(() => {
        this.#onEvent?.({ kind: 'fallback', operation: 'store' });
      });
      return { content, hit: false, ttlMs };
    } catch (err) {
      // Free the others at once rather than at the lock's expiry; they then run it themselves.
      redis.release(lockKey, token).catch(() => {});
      throw err;
    } finally {
      clearInterval(heartbeat);
    }
  }

  status(): SharedStateStatus | undefined {
    return this.#redis?.status();
  }

  async close(): Promise<void> {
    await this.#redis?.close();
  }

  #token(): string {
    return `${this.#process}:${++this.#sequence}`;
  }
}
