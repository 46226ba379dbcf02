/**
 * Results of tools with `cache.ttl`, by the call's resultId (tool-state.ts: the tool, the maxResultBytes
 * its result is cut to and a hash of its canonical arguments, as in Redis), in an LRU bounded by `cache.maxEntries`
 * and by MAX_CACHE_CHARS of results together, each entry with its
 * tool's ttl. Identical calls in flight share one execution: a pending run has waiters, each with its
 * own signal; one leaving does not disturb the others, and the run is aborted only when every waiter
 * has left.
 */
import { LRUCache } from 'lru-cache';

/**
 * Characters the results may hold together, whatever maxEntries allows: a thousand results of a
 * megabyte each, keyed by arguments the model chooses, would hold a gigabyte.
 */
export const MAX_CACHE_CHARS = 16 * 1024 * 1024;

interface Flight {
  result: Promise<string>;
  controller: AbortController;
  waiters: number;
}

export interface ToolCacheOptions {
  /** 0 turns the result cache off (calls in flight are still shared). */
  maxEntries: number;
  /** Characters all results may hold together; default MAX_CACHE_CHARS. */
  maxChars?: number;
  /** Clock for ttls, epoch milliseconds; tests move it by hand. */
  now?: () => number;
}

export class ToolCache {
  readonly #results: LRUCache<string, string> | undefined;
  readonly #flights = new Map<string, Flight>();

  constructor(options: ToolCacheOptions) {
    this.#results =
      options.maxEntries > 0
        ? new LRUCache<string, string>({
            max: options.maxEntries,
            maxSize: options.maxChars ?? MAX_CACHE_CHARS,
            sizeCalculation: (content) => Math.max(1, content.length),
            // An exact clock: lru-cache otherwise reuses one reading for a while, which a hand-moved clock defeats.
            ttlResolution: 0,
            perf: { now: options.now ?? Date.now },
          })
        : undefined;
  }

  get(key: string): string | undefined {
    return this.#results?.get(key);
  }

  set(key: string, content: string, ttlMs: number): void {
    if (ttlMs > 0) this.#results?.set(key, content, { ttl: ttlMs });
  }

  get size(): number {
    return this.#results?.size ?? 0;
  }

  /** Calls currently running on behalf of one or more waiters. */
  get inFlight(): number {
    return this.#flights.size;
  }

  /**
   * Joins the run for `key`, starting it with `run` if none is pending. Resolves with the run's result,
   * or rejects with `signal.reason` when this waiter's signal aborts first. A waiter without a signal
   * never leaves, so a run it joined is never aborted (onInterrupt: finish).
   */
  shared(key: string, signal: AbortSignal | undefined, run: (signal: AbortSignal) => Promise<string>) {
    let flight = this.#flights.get(key);
    if (!flight) {
      const controller = new AbortController();
      const started: Flight = { controller, waiters: 0, result: run(controller.signal) };
      started.result
        .finally(() => {
          if (this.#flights.get(key) === started) this.#flights.delete(key);
        })
        // Waiters that left no longer observe the result; its rejection is theirs, not the process's.
        .catch(() => {});
      this.#flights.set(key, started);
      flight = started;
    }
    return this.#wait(key, flight, signal);
  }

  #wait(key: string, flight: Flight, signal: AbortSignal | undefined): Promise<string> {
    flight.waiters++;
    if (!signal) return flight.result;
    if (signal.aborted) {
      this.#leave(key, flight);
      return Promise.reject(signal.reason);
    }
    return new Promise<string>((resolve, reject) => {
      const leave = () => {
        this.#leave(key, flight);
        reject(signal.reason);
      };
      signal.addEventListener('abort', leave, { once: true });
      flight.result.then(
        (value) => {
          signal.removeEventListener('abort', leave);
          resolve(value);
        },
        (err: unknown) => {
          signal.removeEventListener('abort', leave);
          reject(err);
        },
      );
    });
  }

  #leave(key: string, flight: Flight): void {
    if (--flight.waiters > 0) return;
    // The next identical call starts afresh rather than joining a run that is being aborted.
    if (this.#flights.get(key) === flight) this.#flights.delete(key);
    flight.controller.abort(new Error('every caller of this tool call left'));
  }
}
