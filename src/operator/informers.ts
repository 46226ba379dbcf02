/**
 * Informers (list, then watch from the list's resourceVersion) from @kubernetes/client-node, made to
 * run for good:
 * - watches ask for bookmarks, so a quiet resource still moves its resourceVersion forward and a
 *   reconnect rarely needs a relist;
 * - 410 Gone and normal watch ends are handled by client-node's ListWatch (relist, or resume from the
 *   last resourceVersion); any other error stops it, so a supervisor restarts it with exponential
 *   backoff (client-node leaves this to the caller);
 * - one informer per watched namespace, or one for the cluster, behind one cache.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  ListWatch,
  type ObjectCache,
  Watch,
} from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import type { WatchedKind } from '../telemetry/operator-metrics.js';

/**
 * Watch with allowWatchBookmarks, which ListWatch does not ask for by itself. Once the informer is
 * stopped it opens nothing: ListWatch may still be waiting out a reconnect delay when stop() comes.
 */
class BookmarkWatch extends Watch {
  constructor(
    kc: KubeConfig,
    private readonly stopped: AbortSignal,
  ) {
    super(kc);
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    if (this.stopped.aborted) {
      done(null);
      return new AbortController();
    }
    return super.watch(path, { ...queryParams, allowWatchBookmarks: true }, callback, done);
  }
}

export type ObjectHandler<T> = (obj: T) => void;

/**
 * The informers whose watch is down now, by kind. Their caches are kept, so the operator goes on from
 * what it saw last: without this, a watch that keeps failing (a RoleBinding pruned, a policy engine)
 * would leave it applying no ToolSet edit with nothing but a log line to say so.
 */
export class WatchHealth {
  readonly #failing = new Map<object, WatchedKind>();

  failing(informer: object, kind: WatchedKind): void {
    this.#failing.set(informer, kind);
  }

  recovered(informer: object): void {
    this.#failing.delete(informer);
  }

  /** How many watches of each kind are down. */
  byKind(): Map<WatchedKind, number> {
    const counts = new Map<WatchedKind, number>();
    for (const kind of this.#failing.values()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
    return counts;
  }
}

export interface InformerOptions<T extends KubernetesObject> {
  kc: KubeConfig;
  /** What this informer watches, for log lines and earpiece_watches_failing. */
  kind: WatchedKind;
  path: string;
  list: () => Promise<KubernetesListObject<T>>;
  labelSelector?: string;
  logger: Logger;
  /** How to wait: client-node's reconnect delays and the restart backoff (tests shorten it). */
  delay?: (ms: number) => Promise<void>;
  restartBaseMs?: number;
  restartMaxMs?: number;
  /** Told when the watch fails, and when a list succeeds again. */
  health?: WatchHealth;
}

/** One ListWatch, restarted with backoff when it stops on an error. */
export class Informer<T extends KubernetesObject> implements ObjectCache<T> {
  private readonly lw: ListWatch<T>;
  private readonly o: InformerOptions<T> & { delay: (ms: number) => Promise<void> };
  private readonly abort = new AbortController();
  private hasSynced = false;
  private errors = 0;
  private backoffMs: number;
  private startedAt = 0;
  private running: Promise<void> | undefined;
  private readonly syncedOnce = Promise.withResolvers<void>();

  constructor(options: InformerOptions<T>) {
    const signal = this.abort.signal;
    this.o = {
      ...options,
      delay: options.delay ?? ((ms) => sleep(ms, undefined, { signal }).catch(() => undefined)),
    };
    this.backoffMs = options.restartBaseMs ?? 1000;
    this.lw = new ListWatch<T>(
      options.path,
      new BookmarkWatch(options.kc, signal),
      options.list,
      false,
      options.labelSelector,
      undefined,
      { delayFn: this.o.delay },
    );
    this.lw.on('error', (err) => this.failed(err));
  }

  /** True once the first list has been stored; stays true while reconnecting (the cache is kept). */
  get synced(): boolean {
    return this.hasSynced;
  }

  /** Resolves once synced. */
  whenSynced(): Promise<void> {
    return this.syncedOnce.promise;
  }

  on(verb: 'add' | 'update' | 'delete', handler: ObjectHandler<T>): void {
    this.lw.on(verb, handler);
  }

  get(name: string, namespace?: string): T | undefined {
    return this.lw.get(name, namespace);
  }

  list(namespace?: string): ReadonlyArray<T> {
    return this.lw.list(namespace);
  }

  /** Lists and starts watching; resolves after the first attempt (see `synced`). */
  start(): Promise<void> {
    this.running ??= this.run();
    return this.running;
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.o.health?.recovered(this);
    await this.lw.stop();
  }

  private async run(): Promise<void> {
    const before = this.errors;
    this.startedAt = Date.now();
    await this.lw.start();
    if (this.errors === before && !this.abort.signal.aborted) {
      if (!this.hasSynced) this.o.logger.info({ kind: this.o.kind, path: this.o.path }, 'Synced informer');
      this.hasSynced = true;
      this.syncedOnce.resolve();
      this.o.health?.recovered(this);
    }
  }

  private failed(err: unknown): void {
    this.errors++;
    if (this.abort.signal.aborted) return;
    this.o.health?.failing(this, this.o.kind);
    const max = this.o.restartMaxMs ?? 30_000;
    // A watch that ran for a while before failing starts its backoff afresh.
    if (Date.now() - this.startedAt > max) this.backoffMs = this.o.restartBaseMs ?? 1000;
    const delayMs = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, max);
    this.o.logger.warn(
      { kind: this.o.kind, path: this.o.path, err: describe(err), retryInMs: delayMs },
      'Stopped watch',
    );
    void this.o.delay(delayMs).then(() => {
      if (!this.abort.signal.aborted) this.running = this.run();
    });
  }
}

/** Several informers of one kind (one per namespace, or one for the cluster) as one cache. */
export class InformerSet<T extends KubernetesObject> implements ObjectCache<T> {
  private readonly byNamespace: Map<string, Informer<T>>;

  /**
   * `namespaces` empty: one cluster-wide informer. `make(namespace)` builds the informer for one
   * namespace, or for the cluster when given undefined.
   */
  constructor(namespaces: readonly string[], make: (namespace: string | undefined) => Informer<T>) {
    this.byNamespace = new Map(
      namespaces.length === 0 ? [['', make(undefined)]] : namespaces.map((ns) => [ns, make(ns)]),
    );
  }

  get synced(): boolean {
    return [...this.byNamespace.values()].every((i) => i.synced);
  }

  async whenSynced(): Promise<void> {
    await Promise.all([...this.byNamespace.values()].map((i) => i.whenSynced()));
  }

  on(verb: 'add' | 'update' | 'delete', handler: ObjectHandler<T>): void {
    for (const i of this.byNamespace.values()) i.on(verb, handler);
  }

  /** Add, update and delete alike. */
  onChange(handler: ObjectHandler<T>): void {
    for (const verb of ['add', 'update', 'delete'] as const) this.on(verb, handler);
  }

  get(name: string, namespace?: string): T | undefined {
    return this.informerFor(namespace)?.get(name, namespace);
  }

  list(namespace?: string): ReadonlyArray<T> {
    if (namespace !== undefined) return this.informerFor(namespace)?.list(namespace) ?? [];
    return [...this.byNamespace.values()].flatMap((i) => i.list());
  }

  async start(): Promise<void> {
    await Promise.all([...this.byNamespace.values()].map((i) => i.start()));
  }

  async stop(): Promise<void> {
    await Promise.all([...this.byNamespace.values()].map((i) => i.stop()));
  }

  private informerFor(namespace: string | undefined): Informer<T> | undefined {
    return this.byNamespace.get('') ?? this.byNamespace.get(namespace ?? '');
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
