/** The most a tool call waits on the shared state (Redis), over all its operations. */
export const REDIS_BUDGET_MS = 50;

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
