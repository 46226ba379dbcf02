/**
 * The Redis (or Valkey) side of shared tool state, imported only when a ToolSet names
 * `spec.sharedState` (ioredis stays out of an idle proxy's memory otherwise). Each operation is one
 * round trip running a Lua script, so every check-and-write is atomic on the server:
 *
 * - `take`: the sliding-window rate limit of rate-limit.ts, on the server's clock, for every sidecar;
 * - `claim`: a cached result (within limits.maxResultBytes, which its key names: a larger one, not
 *   written by earpiece, stays in Redis and counts as a miss), or else the lock that makes this sidecar the one that runs the call (a key with a short
 *   expiry that its holder renews while the run goes on, so a holder that dies frees it within a
 *   second, well inside the tool timeout of the calls waiting on it);
 * - `store`: the result with its ttl, and the lock released if still ours; `release`: the lock alone.
 *
 * A voice turn must never wait on Redis: commands fail at once while disconnected (no offline queue),
 * time out after 50 ms, and a call's operations share one 50 ms budget. After a failure Redis is left
 * alone for a second, then two, up to ten, while ioredis reconnects with backoff; meanwhile the caller
 * decides in-process at once.
 */
import { Redis } from 'ioredis';
import type { Logger } from '../telemetry/log.js';
import type { ResolvedRateLimit } from '../toolset/defaults.js';
import { REDIS_BUDGET_MS, RedisBudget } from './budget.js';
import type { ToolErrorCode } from './errors.js';
import { burstWindowMs } from './rate-limit.js';

/**
 * How long Redis is left alone after a command failed or timed out (ioredis reconnects meanwhile),
 * doubling while it keeps failing.
 */
const REST_START_MS = 1000;
const REST_CAP_MS = 10_000;
const BACKOFF_START_MS = 100;
const BACKOFF_CAP_MS = 5000;

export type SharedStateConnection = 'connected' | 'connecting' | 'down';

export interface SharedStateStatus {
  backend: 'redis';
  /** Host and port only: the URL may carry a password. */
  endpoint: string;
  state: SharedStateConnection;
  /** True while tool calls are decided in this process (cache and rate limits per sidecar). */
  fallback: boolean;
  lastError?: string;
}

/** What a claim found: a result, the lock (run it), or another sidecar running it. */
export type Claim = { kind: 'hit'; content: string; ttlMs: number } | { kind: 'acquired' } | { kind: 'held' };

/** The operation that fell back, for the metric. */
export type SharedOperation = 'rate_limit' | 'cache' | 'store';

/** Thrown in place of a Redis error: the caller falls back. */
export class SharedStateUnavailable extends Error {
  readonly code: ToolErrorCode = 'ERP_SHARED_STATE_UNAVAILABLE';
}

const TAKE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local per, requests, burst, burstWindow = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - per)
if redis.call('ZCARD', KEYS[1]) >= requests then return 0 end
if burst < requests and redis.call('ZCOUNT', KEYS[1], '(' .. (now - burstWindow), '+inf') >= burst then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], per)
return 1`;

// A value over ARGV[3] bytes never leaves Redis (a sidecar would hold it): it counts as a miss, the caller
// runs the call and its result replaces it. The size, 0 when there was no value, comes back for the log.
const CLAIM = `
local size = redis.call('STRLEN', KEYS[1])
if size <= tonumber(ARGV[3]) then
  local value = redis.call('GET', KEYS[1])
  if value then return {1, value, redis.call('PTTL', KEYS[1])} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, size} end
return {3, size}`;

const STORE = `
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1`;

const EXTEND = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

interface Scripts {
  earpieceTake(key: string, ...args: (string | number)[]): Promise<number>;
  earpieceClaim(
    result: string,
    lock: string,
    token: string,
    lockMs: number,
    maxBytes: number,
  ): Promise<[1, string, number] | [2 | 3, number]>;
  earpieceStore(result: string, lock: string, value: string, ttlMs: number, token: string): Promise<number>;
  earpieceExtend(lock: string, token: string, lockMs: number): Promise<number>;
  earpieceRelease(lock: string, token: string): Promise<number>;
}

export interface RedisStateOptions {
  url: string;
  logger: Logger;
  /** A call's time for Redis, all operations together (default 50 ms). */
  budgetMs?: number;
  /** Called when the connection comes up or goes down. */
  onConnection?: (up: boolean) => void;
}

function endpointOf(url: string): string {
  const parsed = URL.parse(url);
  return parsed ? `${parsed.protocol}//${parsed.host}` : 'redis';
}

export class RedisState {
  readonly #client: Redis & Scripts;
  readonly #logger: Logger;
  readonly #endpoint: string;
  readonly #onConnection: ((up: boolean) => void) | undefined;
  #state: SharedStateConnection = 'connecting';
  #lastError: string | undefined;
  #restUntil = 0;
  #failures = 0;
  readonly #budgetMs: number;
  #closed = false;
  #warnedOversized = false;

  constructor(options: RedisStateOptions) {
    this.#logger = options.logger;
    this.#endpoint = endpointOf(options.url);
    this.#onConnection = options.onConnection;
    this.#budgetMs = options.budgetMs ?? REDIS_BUDGET_MS;
    this.#client = new Redis(options.url, {
      commandTimeout: this.#budgetMs,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      autoResendUnfulfilledCommands: false,
      connectTimeout: 2000,
      retryStrategy: (times) => Math.min(BACKOFF_START_MS * 2 ** (times - 1), BACKOFF_CAP_MS),
    }) as Redis & Scripts;
    this.#client.defineCommand('earpieceTake', { numberOfKeys: 1, lua: TAKE });
    this.#client.defineCommand('earpieceClaim', { numberOfKeys: 2, lua: CLAIM });
    this.#client.defineCommand('earpieceStore', { numberOfKeys: 2, lua: STORE });
    this.#client.defineCommand('earpieceExtend', { numberOfKeys: 1, lua: EXTEND });
    this.#client.defineCommand('earpieceRelease', { numberOfKeys: 1, lua: RELEASE });
    this.#client.on('ready', () => this.#set('connected'));
    this.#client.on('close', () => this.#set('down'));
    this.#client.on('error', (err: Error) => this.#failed(err));
  }

  /** A new call's time for Redis. */
  budget(): RedisBudget {
    return new RedisBudget(this.#budgetMs);
  }

  status(): SharedStateStatus {
    return {
      backend: 'redis',
      endpoint: this.#endpoint,
      state: this.#state,
      fallback: !this.#usable(),
      ...(this.#lastError ? { lastError: this.#lastError } : {}),
    };
  }

  /** Admits one call against the fleet's quota for `key`. */
  take(key: string, limit: ResolvedRateLimit, member: string, budget: RedisBudget): Promise<boolean> {
    return this.#run(budget, () =>
      this.#client.earpieceTake(key, limit.perMs, limit.requests, limit.burst, burstWindowMs(limit), member),
    ).then((admitted) => admitted === 1);
  }

  /** A cached result of at most `maxBytes` bytes, else the lock or word that another sidecar holds it. */
  async claim(
    result: string,
    lock: string,
    token: string,
    lockMs: number,
    maxBytes: number,
    budget: RedisBudget,
  ): Promise<Claim> {
    const reply = await this.#run(budget, () =>
      this.#client.earpieceClaim(result, lock, token, Math.max(1, Math.ceil(lockMs)), maxBytes),
    );
    if (reply[0] === 1) return { kind: 'hit', content: reply[1], ttlMs: reply[2] };
    if (reply[1] > 0 && !this.#warnedOversized) {
      // Once: earpiece never writes one (a key names the limit its result was cut to), so whatever wrote
      // this may have written many.
      this.#warnedOversized = true;
      this.#logger.warn(
        { endpoint: this.#endpoint, key: result, bytes: reply[1], maxResultBytes: maxBytes },
        'A cached result in the shared state is larger than limits.maxResultBytes (not written by earpiece): it is ignored, and the call runs and replaces it.',
      );
    }
    return reply[0] === 2 ? { kind: 'acquired' } : { kind: 'held' };
  }

  store(result: string, lock: string, content: string, ttlMs: number, token: string): Promise<void> {
    return this.#run(this.budget(), () =>
      this.#client.earpieceStore(result, lock, content, ttlMs, token),
    ).then(() => undefined);
  }

  /** Keeps a held lock alive while its run goes on. */
  extend(lock: string, token: string, lockMs: number): Promise<void> {
    return this.#run(this.budget(), () => this.#client.earpieceExtend(lock, token, lockMs)).then(
      () => undefined,
    );
  }

  release(lock: string, token: string): Promise<void> {
    return this.#run(this.budget(), () => this.#client.earpieceRelease(lock, token)).then(() => undefined);
  }

  async close(): Promise<void> {
    // A retired ToolSet's connection going away says nothing about the shared state of the one now loaded.
    this.#closed = true;
    this.#client.disconnect();
  }

  #usable(): boolean {
    return this.#client.status === 'ready' && performance.now() >= this.#restUntil;
  }

  /** Runs one command within the call's budget; any failure is SharedStateUnavailable. */
  async #run<T>(budget: RedisBudget, command: () => Promise<T>): Promise<T> {
    const remaining = budget.remaining();
    if (remaining <= 0 || !this.#usable()) throw new SharedStateUnavailable('shared state is not available');
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      const pending = command();
      // commandTimeout bounds a whole budget; a call that spent part of it races the rest.
      pending.catch(() => {});
      const result =
        remaining >= this.#budgetMs
          ? await pending
          : await Promise.race([
              pending,
              new Promise<never>((_, reject) => {
                timer = setTimeout(() => reject(new Error('Command timed out')), remaining);
              }),
            ]);
      this.#failures = 0;
      return result;
    } catch (err) {
      this.#failures++;
      this.#restUntil = performance.now() + Math.min(REST_START_MS * 2 ** (this.#failures - 1), REST_CAP_MS);
      this.#failed(err as Error);
      throw new SharedStateUnavailable((err as Error).message);
    } finally {
      clearTimeout(timer);
      budget.spend(performance.now() - started);
    }
  }

  #failed(err: Error): void {
    const message = err.message.slice(0, 200);
    if (message !== this.#lastError) {
      this.#logger.warn(
        { endpoint: this.#endpoint, err: message },
        'Shared state unavailable: tool cache and rate limits are decided in this sidecar until it answers again.',
      );
    }
    this.#lastError = message;
  }

  #set(state: SharedStateConnection): void {
    if (state === this.#state || this.#closed) return;
    const was = this.#state;
    this.#state = state;
    if (state === 'connected') {
      this.#restUntil = 0;
      this.#failures = 0;
      this.#logger.info({ endpoint: this.#endpoint }, 'Connected to the shared state.');
      this.#onConnection?.(true);
    } else if (was === 'connected') {
      this.#onConnection?.(false);
    }
  }
}
