/**
 * The operator's Prometheus metrics, on its own registry (served on the operator's metrics port):
 * injections by the webhook and its latency, ToolSets it checked at admission, reconciles of the controller, ToolSets by readiness, opted-in
 * pods without a working sidecar, the leader, the webhook certificate's expiry, and the Node.js process
 * defaults. Label values are fixed sets or namespaces, never the names of pods or ToolSets.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from './process-metrics.js';

/**
 * `claimed`: the ToolSet was labelled as this operator's (its reconcile follows); `foreign`: it belongs
 * to another release's operator and was left alone.
 */
/** A ToolSet as the operator's gauges count it. */
export interface WatchedToolSet {
  namespace: string;
  ready: boolean;
  /** Its metadata.generation is ahead of status.observedGeneration. */
  behind: boolean;
  /** The operator instance it is labelled for, '' when none has claimed it. */
  operator: string;
}

export type ReconcileResult = 'ok' | 'invalid' | 'error' | 'deleted' | 'claimed' | 'foreign';
export const RECONCILE_RESULTS: readonly ReconcileResult[] = [
  'ok',
  'invalid',
  'error',
  'deleted',
  'claimed',
  'foreign',
];

/** How the validating webhook answered a ToolSet (the operator's ToolSetAdmission.result). */
export type ToolSetAdmissionResult = 'allowed' | 'refused' | 'forbidden' | 'error' | 'unwatched';
export const TOOLSET_ADMISSION_RESULTS: readonly ToolSetAdmissionResult[] = [
  'allowed',
  'refused',
  'forbidden',
  'error',
  'unwatched',
];

/** The kinds the operator's informers watch: each has a series from the start. */
export const WATCHED_KINDS = ['ToolSet', 'ConfigMap', 'Pod', 'Namespace'] as const;
export type WatchedKind = (typeof WATCHED_KINDS)[number];

/** Reconciles are a cache read, validation and up to three API writes. */
export const RECONCILE_SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class OperatorMetrics {
  readonly registry = new Registry();
  private readonly injections: Counter<'outcome'>;
  private readonly admissions: Counter<'result'>;
  private readonly reconciles: Counter<'result'>;
  private readonly reconcileSeconds: Histogram<'result'>;
  private readonly uninjected: Gauge;
  private readonly problems: Gauge<'namespace' | 'reason'>;
  private readonly leader: Gauge;
  private readonly webhookSeconds: Histogram<'operation'>;
  private toolsetSource: () => readonly WatchedToolSet[] = () => [];
  private certificateSource: () => Date | undefined = () => undefined;
  private webhookBodiesSource: () => number = () => 0;
  private watchHealthSource: () => ReadonlyMap<string, number> = () => new Map();

  constructor(options: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectProcessMetrics(this.registry);
    this.injections = new Counter({
      name: 'earpiece_injections_total',
      help: 'Pods seen by the injection webhook, by outcome (injected, skipped, error, ...).',
      labelNames: ['outcome'],
      registers,
    });
    this.admissions = new Counter({
      name: 'earpiece_toolset_admissions_total',
      help: 'ToolSet CREATEs and UPDATEs checked by the validating webhook, by result (allowed; refused: invalid; forbidden: names a Secret its author may not read; error: that could not be checked).',
      labelNames: ['result'],
      registers,
    });
    this.reconciles = new Counter({
      name: 'earpiece_reconcile_total',
      help: 'ToolSet reconciles by result (ok, invalid, error: retried with backoff, deleted).',
      labelNames: ['result'],
      registers,
    });
    this.reconcileSeconds = new Histogram({
      name: 'earpiece_reconcile_duration_seconds',
      help: 'Duration of ToolSet reconciles, API writes included.',
      labelNames: ['result'],
      buckets: RECONCILE_SECONDS_BUCKETS,
      registers,
    });
    this.uninjected = new Gauge({
      name: 'earpiece_uninjected_pods',
      help: 'Pods opted in to injection (earpiece.dev/inject=true) that run without the earpiece sidecar.',
      registers,
    });
    this.problems = new Gauge({
      name: 'earpiece_sidecar_problem_pods',
      help: 'Opted-in pods without a working earpiece sidecar, by reason (not_injected, not_ready, toolset_deleted: its ToolSet is gone and it serves stale tools, or the kubelet reason such as ImagePullBackOff).',
      labelNames: ['namespace', 'reason'],
      registers,
    });
    this.leader = new Gauge({
      name: 'earpiece_leader',
      help: '1 while this replica holds the Lease and runs the controller, else 0.',
      registers,
    });
    this.webhookSeconds = new Histogram({
      name: 'earpiece_webhook_duration_seconds',
      help: 'Time the webhook took to answer an admission review.',
      labelNames: ['operation'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
    const source = () => this.toolsetSource();
    new Gauge({
      name: 'earpiece_toolsets',
      help: 'ToolSets by readiness (ready="false": invalid, or its ConfigMap cannot be written); leader only.',
      labelNames: ['namespace', 'ready'],
      registers,
      collect() {
        this.reset();
        for (const t of source()) this.inc({ namespace: t.namespace, ready: String(t.ready) });
      },
    });
    new Gauge({
      name: 'earpiece_toolsets_unreconciled',
      help: "ToolSets whose generation no operator has reconciled yet, by the operator they are labelled for (earpiece.dev/operator; '' for none yet); a lasting one has no live operator; leader only.",
      labelNames: ['namespace', 'operator'],
      registers,
      collect() {
        this.reset();
        for (const t of source()) if (t.behind) this.inc({ namespace: t.namespace, operator: t.operator });
      },
    });
    const certificate = () => this.certificateSource();
    new Gauge({
      name: 'earpiece_webhook_certificate_expiry_timestamp_seconds',
      help: 'When the serving certificate of the webhook expires (Unix time).',
      registers,
      collect() {
        const notAfter = certificate();
        if (notAfter) this.set(notAfter.getTime() / 1000);
      },
    });
    const watches = () => this.watchHealthSource();
    new Gauge({
      name: 'earpiece_watches_failing',
      help: "Informer watches of this replica that are down now, by kind (ToolSet, ConfigMap, Pod, Namespace): it works from what it saw last, and misses every change meanwhile; its log says why ('Stopped watch').",
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        for (const kind of WATCHED_KINDS) this.set({ kind }, 0);
        for (const [kind, count] of watches()) this.set({ kind }, count);
      },
    });
    const bodies = () => this.webhookBodiesSource();
    new Gauge({
      name: 'earpiece_webhook_body_bytes_in_flight',
      help: 'Bytes of admission review bodies the webhook holds now, from their first byte until their answer ends; past webhook.maxBodyBytesInFlight a review is answered 503 and the failurePolicy decides.',
      registers,
      collect() {
        this.set(bodies());
      },
    });
    // Known label values start at zero, so rates and alerts have series before the first event.
    for (const result of RECONCILE_RESULTS) this.reconciles.inc({ result }, 0);
    this.leader.set(0);
    for (const result of TOOLSET_ADMISSION_RESULTS) this.admissions.inc({ result }, 0);
  }

  /** The validating webhook's onToolSetAdmission. */
  toolsetAdmission(result: ToolSetAdmissionResult): void {
    this.admissions.inc({ result });
  }

  /** The webhook's onInjection. */
  injection(outcome: string): void {
    this.injections.inc({ outcome });
  }

  reconcile(result: ReconcileResult, seconds: number): void {
    this.reconciles.inc({ result });
    this.reconcileSeconds.observe({ result }, seconds);
  }

  uninjectedPods(count: number): void {
    this.uninjected.set(count);
  }

  /** Counted per namespace and reason; a pair that no longer occurs goes away. */
  sidecarProblems(pods: readonly { namespace: string; reason: string }[]): void {
    this.problems.reset();
    for (const p of pods) this.problems.inc({ namespace: p.namespace, reason: p.reason });
  }

  leading(leading: boolean): void {
    this.leader.set(leading ? 1 : 0);
  }

  webhookReview(operation: string, seconds: number): void {
    this.webhookSeconds.observe({ operation }, seconds);
  }

  /** Where earpiece_toolsets reads the ToolSets from when scraped (empty on followers). */
  watchToolSets(source: () => readonly WatchedToolSet[]): void {
    this.toolsetSource = source;
  }

  /** Where the failing watches are read from when scraped (WatchHealth.byKind). */
  watchWatches(failing: () => ReadonlyMap<string, number>): void {
    this.watchHealthSource = failing;
  }

  /** Where the webhook's body bytes in flight are read from when scraped. */
  watchWebhookBodies(used: () => number): void {
    this.webhookBodiesSource = used;
  }

  /** Where the certificate expiry is read from when scraped. */
  watchCertificate(notAfter: () => Date | undefined): void {
    this.certificateSource = notAfter;
  }

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
