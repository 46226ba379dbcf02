/**
 * The operator's Prometheus metrics, on its own registry (served on the operator's metrics port):
 * injections by the webhook, ToolSets it checked at admission, reconciles of the controller, opted-in
 * pods running without the sidecar, and the Node.js process defaults. Label values are fixed sets, never object names.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from './process-metrics.js';

export type ReconcileResult = 'ok' | 'invalid' | 'error' | 'deleted';
export const RECONCILE_RESULTS: readonly ReconcileResult[] = ['ok', 'invalid', 'error', 'deleted'];

/** Reconciles are a cache read, validation and up to three API writes. */
export const RECONCILE_SECONDS_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class OperatorMetrics {
  readonly registry = new Registry();
  private readonly injections: Counter<'outcome'>;
  private readonly admissions: Counter<'result'>;
  private readonly reconciles: Counter<'result'>;
  private readonly reconcileSeconds: Histogram<'result'>;
  private readonly uninjected: Gauge;

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
      help: 'ToolSet CREATEs and UPDATEs checked by the validating webhook, by result (allowed, refused).',
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
    // Known label values start at zero, so rates and alerts have series before the first event.
    for (const result of RECONCILE_RESULTS) this.reconciles.inc({ result }, 0);
    for (const result of ['allowed', 'refused']) this.admissions.inc({ result }, 0);
  }

  /** The validating webhook's onToolSetAdmission. */
  toolsetAdmission(allowed: boolean): void {
    this.admissions.inc({ result: allowed ? 'allowed' : 'refused' });
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

  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
