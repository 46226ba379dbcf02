/**
 * A keyed work queue, after client-go's: at most one run per key at a time, repeats collapse (a key
 * added while queued is queued once; added while running, it runs once more afterwards), failures are
 * retried with exponential backoff per key. Informer handlers only add keys; the worker reads the
 * latest state itself, so collapsing loses nothing.
 */

export interface WorkQueueOptions {
  /** Handles one key; a throw schedules a retry. */
  worker: (key: string) => Promise<void>;
  /** Keys handled at the same time (never two runs of one key). */
  workers?: number;
  /** First retry delay; doubles per consecutive failure of the key, up to maxDelayMs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  onRetry?: (key: string, err: unknown, attempt: number, delayMs: number) => void;
}

export class WorkQueue {
  private readonly worker: (key: string) => Promise<void>;
  private readonly workers: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly onRetry: WorkQueueOptions['onRetry'];
  private readonly queue: string[] = [];
  private readonly queued = new Set<string>();
  private readonly running = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  /** Keys waiting for addAfter's time, each with its one timer. */
  private readonly waiting = new Map<string, { timer: NodeJS.Timeout; at: number }>();
  private readonly settled = new Set<() => void>();
  private active = false;

  constructor(options: WorkQueueOptions) {
    this.worker = options.worker;
    this.workers = options.workers ?? 2;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 300_000;
    this.onRetry = options.onRetry;
  }

  add(key: string): void {
    if (this.running.has(key)) this.dirty.add(key);
    else if (!this.queued.has(key)) {
      this.queued.add(key);
      this.queue.push(key);
    }
    this.pump();
  }

  /**
   * Adds the key after `delayMs`. A key waits once, as in client-go's delaying queue: asked again while it
   * waits, it keeps the sooner of the two times, so a key re-armed by each of its runs has one timer, not one
   * more per run.
   */
  addAfter(key: string, delayMs: number): void {
    const at = performance.now() + delayMs;
    const waiting = this.waiting.get(key);
    if (waiting && waiting.at <= at) return;
    if (waiting) clearTimeout(waiting.timer);
    const timer = setTimeout(() => {
      this.waiting.delete(key);
      this.add(key);
    }, delayMs);
    timer.unref();
    this.waiting.set(key, { timer, at });
  }

  /** Starts handing keys to the worker (keys added before are kept). */
  start(): void {
    this.active = true;
    this.pump();
  }

  /** Stops handing out keys, drops what is queued or waiting for a retry, and waits for running keys. */
  async stop(): Promise<void> {
    this.active = false;
    for (const { timer } of this.waiting.values()) clearTimeout(timer);
    this.waiting.clear();
    this.queue.length = 0;
    this.queued.clear();
    this.dirty.clear();
    this.failures.clear();
    await this.idle();
  }

  get length(): number {
    return this.queue.length + this.running.size;
  }

  /** Resolves when nothing is queued or running (retries waiting on a timer do not count). */
  idle(): Promise<void> {
    if (this.running.size === 0 && (this.queue.length === 0 || !this.active)) return Promise.resolve();
    return new Promise((resolve) => this.settled.add(resolve));
  }

  private pump(): void {
    while (this.active && this.running.size < this.workers && this.queue.length > 0) {
      const key = this.queue.shift()!;
      this.queued.delete(key);
      void this.run(key);
    }
    if (this.running.size === 0 && (this.queue.length === 0 || !this.active)) {
      for (const resolve of this.settled) resolve();
      this.settled.clear();
    }
  }

  private async run(key: string): Promise<void> {
    this.running.add(key);
    try {
      await this.worker(key);
      this.failures.delete(key);
    } catch (err) {
      const attempt = (this.failures.get(key) ?? 0) + 1;
      this.failures.set(key, attempt);
      const delayMs = Math.min(this.baseDelayMs * 2 ** (attempt - 1), this.maxDelayMs);
      this.onRetry?.(key, err, attempt, delayMs);
      if (this.active) this.addAfter(key, delayMs);
    } finally {
      this.running.delete(key);
      if (this.dirty.delete(key) && this.active) this.add(key);
      this.pump();
    }
  }
}
