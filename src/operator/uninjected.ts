/**
 * Opted-in pods (label earpiece.dev/inject=true) that run without the sidecar: created while the
 * webhook was unreachable (failurePolicy Ignore lets them through), or skipped by it (no ToolSet
 * selects them, ...). They are counted in `earpiece_uninjected_pods`, and each gets one Warning Event
 * on its owner (the ReplicaSet, Job, ... that made it) saying why and what to do. Run by the leader only,
 * so replicas neither repeat the Events nor add up the gauge.
 */
import type { V1Pod } from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import type { OperatorMetrics } from '../telemetry/operator-metrics.js';
import type { EventRecorder, EventSubject } from './events.js';
import type { InformerSet } from './informers.js';
import { buildInjection, hasSidecar } from './patch.js';
import type { ToolSetLookup } from './select.js';
import type { SidecarConfig } from './sidecar.js';

export interface UninjectedOptions {
  /** Pods with label earpiece.dev/inject=true. */
  pods: InformerSet<V1Pod>;
  toolsets: (namespace: string) => ToolSetLookup;
  /** Namespaces the webhook is never called for (kube-system, the operator's own, ...): not reported. */
  excludeNamespaces: readonly string[];
  sidecar: SidecarConfig;
  events: EventRecorder;
  metrics?: OperatorMetrics;
  logger: Logger;
  /** Pod events are gathered for this long before the pods are counted again. */
  debounceMs?: number;
}

export interface UninjectedPod {
  namespace: string;
  name: string;
  uid: string;
  /** Why it has no sidecar, as a sentence. */
  why: string;
}

export class UninjectedReporter {
  private active = false;
  private timer: NodeJS.Timeout | undefined;
  /** Pods already reported with an Event (by uid). */
  private readonly reported = new Set<string>();
  private last: UninjectedPod[] = [];

  constructor(private readonly o: UninjectedOptions) {
    o.pods.onChange(() => this.schedule());
  }

  /** The pods found at the last count. */
  get pods(): readonly UninjectedPod[] {
    return this.last;
  }

  start(): void {
    this.active = true;
    this.schedule();
  }

  stop(): void {
    this.active = false;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.last = [];
    this.o.metrics?.uninjectedPods(0);
  }

  private schedule(): void {
    if (!this.active || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.check();
    }, this.o.debounceMs ?? 1000);
    this.timer.unref();
  }

  /** Counts the uninjected pods now, and reports the new ones. */
  async check(): Promise<UninjectedPod[]> {
    const found: { pod: V1Pod; entry: UninjectedPod }[] = [];
    const excluded = new Set(this.o.excludeNamespaces);
    for (const pod of this.o.pods.list()) {
      const meta = pod.metadata;
      if (!meta?.uid || meta.deletionTimestamp) continue;
      // The webhook is never asked about these pods, so deleting them would bring them back as they are.
      if (excluded.has(meta.namespace ?? '')) continue;
      if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
      if (hasSidecar(pod.spec)) continue;
      found.push({
        pod,
        entry: { namespace: meta.namespace ?? '', name: meta.name ?? '', uid: meta.uid, why: this.why(pod) },
      });
    }
    if (!this.active) return found.map((f) => f.entry);
    this.last = found.map((f) => f.entry);
    this.o.metrics?.uninjectedPods(found.length);
    const present = new Set(found.map((f) => f.entry.uid));
    for (const uid of this.reported) if (!present.has(uid)) this.reported.delete(uid);
    for (const { pod, entry } of found) {
      if (this.reported.has(entry.uid)) continue;
      this.reported.add(entry.uid);
      this.o.logger.warn(
        { pod: entry.name, namespace: entry.namespace, why: entry.why },
        'Found uninjected pod',
      );
      await this.o.events.record(
        ownerOf(pod),
        'Warning',
        'UninjectedPod',
        `pod ${entry.name} is opted in (earpiece.dev/inject=true) but runs without the earpiece sidecar: ${entry.why}`,
      );
    }
    return this.last;
  }

  /** The webhook's own decision for this pod, now: a skip reason, or "it would be injected". */
  private why(pod: V1Pod): string {
    const namespace = pod.metadata?.namespace ?? '';
    const result = buildInjection(
      { metadata: { labels: pod.metadata?.labels, annotations: pod.metadata?.annotations }, spec: pod.spec },
      { namespace, namespaceOptedIn: false, toolsets: this.o.toolsets(namespace), sidecar: this.o.sidecar },
    );
    if (result.ok) {
      return 'it would be injected now, so the webhook did not see it (unreachable when the pod was created?); delete the pod so its controller recreates it with the sidecar';
    }
    return result.message;
  }
}

/** Events go on the pod's controller (ReplicaSet, Job, ...), where users look; a bare pod gets them itself. */
function ownerOf(pod: V1Pod): EventSubject {
  const meta = pod.metadata ?? {};
  const owner = meta.ownerReferences?.find((r) => r.controller) ?? meta.ownerReferences?.[0];
  if (owner) {
    return {
      apiVersion: owner.apiVersion,
      kind: owner.kind,
      name: owner.name,
      namespace: meta.namespace,
      uid: owner.uid,
    };
  }
  return { apiVersion: 'v1', kind: 'Pod', name: meta.name ?? '', namespace: meta.namespace, uid: meta.uid };
}
