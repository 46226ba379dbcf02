/**
 * The pods of namespaces labelled earpiece.dev/inject=true (the documented way to opt a whole namespace
 * in), so pods that missed the webhook there are seen even without a label of their own. One informer
 * per such namespace, started and stopped as namespaces gain or lose the label, watching the pods not
 * labelled earpiece.dev/inject=false: only the namespaces that asked for earpiece are watched whole.
 */
import type { V1Namespace, V1Pod } from '@kubernetes/client-node';
import type { Informer, InformerSet } from './informers.js';
import type { PodSource } from './sidecar-problems.js';

export interface NamespacePodsOptions {
  namespaces: InformerSet<V1Namespace>;
  /** The pod informer of one namespace. */
  make: (namespace: string) => Informer<V1Pod>;
  /** Namespaces the operator may watch (watchNamespaces) and the webhook is called for. */
  allowed: (namespace: string) => boolean;
  /**
   * A namespace labelled for injection that is not allowed: its pods get no sidecar from this operator and
   * nothing here reports them. Called once for each, again only after it lost the label in between.
   */
  onRefused?: (namespace: string) => void;
}

export class NamespacePods implements PodSource {
  private readonly informers = new Map<string, Informer<V1Pod>>();
  private readonly handlers: (() => void)[] = [];
  private refused = new Set<string>();
  private active = false;

  constructor(private readonly o: NamespacePodsOptions) {
    o.namespaces.onChange(() => this.sync());
  }

  list(): V1Pod[] {
    return [...this.informers.entries()].flatMap(([ns, informer]) => informer.list(ns));
  }

  onChange(handler: () => void): void {
    this.handlers.push(handler);
  }

  /** The namespaces watched now. */
  get watched(): string[] {
    return [...this.informers.keys()].sort();
  }

  start(): void {
    this.active = true;
    this.sync();
  }

  async stop(): Promise<void> {
    this.active = false;
    const stopping = [...this.informers.values()].map((i) => i.stop());
    this.informers.clear();
    await Promise.all(stopping);
  }

  private sync(): void {
    if (!this.active) return;
    const labelled = this.o.namespaces
      .list()
      .map((n) => n.metadata?.name ?? '')
      .filter(Boolean);
    const wanted = new Set(labelled.filter((name) => this.o.allowed(name)));
    const refused = new Set(labelled.filter((name) => !wanted.has(name)));
    for (const name of refused) if (!this.refused.has(name)) this.o.onRefused?.(name);
    this.refused = refused;
    for (const [name, informer] of this.informers) {
      if (wanted.has(name)) continue;
      this.informers.delete(name);
      void informer.stop();
      this.changed();
    }
    for (const name of wanted) {
      if (this.informers.has(name)) continue;
      const informer = this.o.make(name);
      for (const verb of ['add', 'update', 'delete'] as const) informer.on(verb, () => this.changed());
      this.informers.set(name, informer);
      void informer.start();
    }
  }

  private changed(): void {
    for (const handler of this.handlers) handler();
  }
}
