/** The bound the product promises: a tool call never waits on the shared state (Redis) longer than this. */
export const REDIS_BOUND_MS = 50;

/**
 * What a call's Redis operations may take in all: under the bound by the few milliseconds a busy event
 * loop fires a timer late, so the wait a caller sees stays within REDIS_BOUND_MS.
 */
export const REDIS_BUDGET_MS = 45;

/**
 * A call's time for Redis: every operation of one call draws on it, so a slow Redis costs a call at
 * most this much in all, however many round trips the call makes. Waiting for another sidecar's run
 * of the same call is waiting on the tool, not on Redis, and does not draw on it.
 */
export class RedisBudget {
  #spentMs = 0;
  constructor(readonly totalMs = REDIS_BUDGET_MS) {}
  remaining(): number {
    return this.totalMs - this.#spentMs;
  }
  spend(ms: number): void {
    this.#spentMs += ms;
  }
}
