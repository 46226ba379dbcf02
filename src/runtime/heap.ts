/**
 * Memory V8 keeps and gives back only under pressure, returned by a memory-reducing collection where it
 * costs no stream a pause. Both need node's --expose-gc, which the image's ENTRYPOINT passes; without it
 * (npm start, tests) neither does anything.
 */
import { MAX_DURATION_MS } from '../toolset/duration.js';

/** A collection that shrinks the young generation to its minimum and compacts old space. */
function collect(): void {
  globalThis.gc?.({ type: 'major', execution: 'sync', flavor: 'last-resort' });
}

/**
 * Start-up (loading modules, compiling the ToolSet's validators, opening MCP sessions) keeps most of what it
 * allocates, and V8 grows the young generation for it: under the image's cap of 16 MB semi-spaces an idle
 * proxy would hold 16 to 32 MB of it, the operator 32. One collection once start-up is done returns it (and
 * compacts what start-up left in old space); load grows the young generation again (see IdleCollection).
 */
export function releaseStartupMemory(): void {
  collect();
}

/** Default wait with no turn open before a collection. */
export const IDLE_COLLECTION_AFTER_MS = 30_000;
/** Default growth of RSS since the last collection that makes one worth its pause. */
export const IDLE_COLLECTION_GROWTH_BYTES = 32 * 1024 * 1024;

/**
 * `afterMs`, or the default; a RangeError naming the value when no timer can wait that long (Node fires a
 * timer past MAX_DURATION_MS after 1 ms, which would collect after every turn).
 */
function checkedWait(afterMs: number = IDLE_COLLECTION_AFTER_MS): number {
  if (!Number.isFinite(afterMs) || afterMs < 0 || afterMs > MAX_DURATION_MS)
    throw new RangeError(
      `idleCollection.afterMs must be from 0 (never) to ${MAX_DURATION_MS} ms, not ${afterMs}`,
    );
  return afterMs;
}

/**
 * `growthBytes`, or the default; a RangeError naming the value when it is negative or NaN (every idle
 * wait would collect) or infinite (none would: `afterMs: 0` is the way to turn the collection off).
 */
function checkedGrowth(growthBytes: number = IDLE_COLLECTION_GROWTH_BYTES): number {
  if (!Number.isFinite(growthBytes) || growthBytes < 0)
    throw new RangeError(`idleCollection.growthBytes must be a number of bytes from 0, not ${growthBytes}`);
  return growthBytes;
}

export interface IdleCollectionOptions {
  /**
   * How long no turn may have been open (default IDLE_COLLECTION_AFTER_MS); 0 turns the collection off.
   * Past MAX_DURATION_MS, negative or not a number: a RangeError.
   */
  afterMs?: number;
  /**
   * How much RSS must have grown since start-up or the last collection (default IDLE_COLLECTION_GROWTH_BYTES).
   * Negative or not a finite number: a RangeError.
   */
  growthBytes?: number;
  /** Work that runs with no turn open (calls deferred past their turn): while it does, the collection waits. */
  busy?: () => boolean;
  /** Hears of each collection, for the log. */
  onCollected?: (record: IdleCollectionRecord) => void;
}

export interface IdleCollectionRecord {
  rssBeforeBytes: number;
  rssAfterBytes: number;
  ms: number;
}

/** What the collection runs and reads; the process's own unless a test gives others. */
export interface HeapControl {
  collect(): void;
  rss(): number;
}

/**
 * Load grows the heap, and V8 keeps what it grew while the process idles: after bursts of 100 and 1,000
 * streams the proxy held 304 and 328 MB of RSS, where it had started at 82, and still did minutes later. Once
 * no turn has been open for `afterMs` and RSS has grown by `growthBytes` since the last collection (or since
 * start-up), one memory-reducing collection gives most of it back: 150 and 155 MB, in 110 ms. Smaller loads are
 * left alone (10 streams at once grew RSS by 14 MB, 50 by 41). With no turn open, the pause falls on no stream;
 * a request that arrives during it waits for it.
 */
export class IdleCollection {
  readonly #heap: HeapControl;
  readonly #afterMs: number;
  readonly #growthBytes: number;
  readonly #busy: () => boolean;
  readonly #onCollected: ((record: IdleCollectionRecord) => void) | undefined;
  #openTurns = 0;
  #timer: NodeJS.Timeout | undefined;
  /** RSS after the last collection, or after start-up. */
  #baseline: number;
  #closed = false;

  /** Undefined without --expose-gc (there is no collection to run then), or when `afterMs` is 0. */
  static forProcess(options: IdleCollectionOptions = {}): IdleCollection | undefined {
    checkedGrowth(options.growthBytes);
    if (checkedWait(options.afterMs) === 0 || globalThis.gc === undefined) return undefined;
    return new IdleCollection({ collect, rss: () => process.memoryUsage.rss() }, options);
  }

  constructor(heap: HeapControl, options: IdleCollectionOptions = {}) {
    this.#heap = heap;
    this.#afterMs = checkedWait(options.afterMs);
    this.#growthBytes = checkedGrowth(options.growthBytes);
    this.#busy = options.busy ?? (() => false);
    this.#onCollected = options.onCollected;
    this.#baseline = heap.rss();
  }

  /** Start-up's memory has just been given back (releaseStartupMemory): growth counts from here. */
  startupReleased(): void {
    this.#baseline = this.#heap.rss();
  }

  turnStarted(): void {
    this.#openTurns++;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  turnEnded(): void {
    this.#openTurns--;
    if (this.#openTurns > 0 || this.#closed) return;
    this.#wait();
  }

  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #wait(): void {
    this.#timer = setTimeout(() => this.#collectIfGrown(), this.#afterMs);
    // Never what keeps the process alive.
    this.#timer.unref();
  }

  #collectIfGrown(): void {
    this.#timer = undefined;
    // A deferred call's answer, or its shared state's reply from Redis, would wait out the pause.
    if (this.#busy()) {
      this.#wait();
      return;
    }
    const rssBeforeBytes = this.#heap.rss();
    if (rssBeforeBytes - this.#baseline < this.#growthBytes) return;
    const started = performance.now();
    this.#heap.collect();
    const ms = performance.now() - started;
    this.#baseline = this.#heap.rss();
    this.#onCollected?.({ rssBeforeBytes, rssAfterBytes: this.#baseline, ms });
  }
}
