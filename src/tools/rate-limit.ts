/**
 * Per-tool rate limits in this process: a sliding log of start times per key. A call is admitted when
 * fewer than `requests` calls started in the last `per`, and fewer than `burst` in the last
 * burst × per / requests. The same rule runs in Redis (redis-state.ts) when state is shared; this one
 * decides alone without shared state, and while Redis is unreachable.
 */
import type { ResolvedRateLimit } from '../toolset/defaults.js';

/** The stretch in which at most `burst` calls may start: the time the average rate takes to allow them. */
export function burstWindowMs(limit: ResolvedRateLimit): number {
  return Math.floor((limit.perMs * limit.burst) / limit.requests);
}

export class LocalRateLimiter {
  /** Start times per key, oldest first, none older than the key's `per`. */
  readonly #starts = new Map<string, number[]>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Admits one call (and records it) or refuses it. */
  take(key: string, limit: ResolvedRateLimit): boolean {
    const now = this.#now();
    const starts = this.#window(key, limit, now);
    if (starts.length >= limit.requests) return false;
    if (limit.burst < limit.requests) {
      const since = now - burstWindowMs(limit);
      let recent = 0;
      for (let i = starts.length - 1; i >= 0 && (starts[i] as number) > since; i--) recent++;
      if (recent >= limit.burst) return false;
    }
    starts.push(now);
    return true;
  }

  /**
   * Records a call the fleet admitted, so that this sidecar knows its own recent calls if it has to
   * decide alone later (Redis down).
   */
  record(key: string, limit: ResolvedRateLimit): void {
    const now = this.#now();
    const starts = this.#window(key, limit, now);
    starts.push(now);
    if (starts.length > limit.requests) starts.splice(0, starts.length - limit.requests);
  }

  /** The key's log with the calls older than `per` dropped. */
  #window(key: string, limit: ResolvedRateLimit, now: number): number[] {
    let starts = this.#starts.get(key);
    if (!starts) {
      starts = [];
      this.#starts.set(key, starts);
    }
    let expired = 0;
    while (expired < starts.length && (starts[expired] as number) <= now - limit.perMs) expired++;
    if (expired > 0) starts.splice(0, expired);
    return starts;
  }
}
