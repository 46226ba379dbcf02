/**
 * Wiring. Every replica runs the informers (the webhook reads ToolSets from their cache), the webhook
 * and its certificates; only the Lease holder runs the controller's writes and the uninjected-pod
 * reports. SIGTERM (cmd/operator.ts calls stop()): the controller stops, the Lease is released, the
 * informers stop, the servers close.
 */
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type V1ConfigMap,
  type V1Pod,
} from '@kubernetes/client-node';
import { createLogger, type Logger } from '../telemetry/log.js';
import { OperatorMetrics } from '../telemetry/operator-metrics.js';
import { type Clock, systemClock } from './clock.js';
import type { OperatorConfig } from './config.js';
import { MANAGED_BY, TOOLSETS, ToolSetController, type ToolSetObject } from './controller.js';
import { EventRecorder } from './events.js';
import { Informer, InformerSet } from './informers.js';
import { LeaderElector } from './leader.js';
import type { ToolSetLookup } from './select.js';
import { configMapName, LABEL_INJECT, LABEL_INJECTED } from './sidecar.js';
import { UninjectedReporter } from './uninjected.js';

/** Durations, all with production defaults; tests shorten them. */
export interface Timing {
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** Every cached ToolSet is reconciled again this often. */
  resyncMs?: number;
  /** First retry of a failed reconcile (doubles up to retryMaxMs). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** The informers' reconnect and restart waits. */
  informerDelay?: (ms: number) => Promise<void>;
  informerRestartBaseMs?: number;
  uninjectedDebounceMs?: number;
}

export interface ControlPlaneOptions {
  kc: KubeConfig;
  config: Pick<
    OperatorConfig,
    'namespace' | 'podName' | 'watchNamespaces' | 'leaderElection' | 'leaseName' | 'sidecar'
  >;
  clock?: Clock;
  logger?: Logger;
  metrics?: OperatorMetrics;
  timing?: Timing;
}

/** Informers, controller, Lease and uninjected-pod reports: everything that talks to the API server. */
export class ControlPlane {
  readonly toolsets: InformerSet<ToolSetObject>;
  readonly configMaps: InformerSet<V1ConfigMap>;
  readonly injectedPods: InformerSet<V1Pod>;
  readonly optedInPods: InformerSet<V1Pod>;
  readonly controller: ToolSetController;
  readonly uninjected: UninjectedReporter;
  readonly events: EventRecorder;
  readonly metrics: OperatorMetrics;
  private readonly elector: LeaderElector | undefined;
  private readonly logger: Logger;
  private leading = false;
  private stopping = false;
  private campaign: Promise<void> | undefined;

  constructor(private readonly o: ControlPlaneOptions) {
    const { kc, config, timing = {} } = o;
    const logger = o.logger ?? createLogger('operator');
    this.logger = logger;
    const clock = o.clock ?? systemClock;
    this.metrics = o.metrics ?? new OperatorMetrics();
    const customObjects = kc.makeApiClient(CustomObjectsApi);
    const core = kc.makeApiClient(CoreV1Api);
    const informerOptions = {
      kc,
      logger,
      delay: timing.informerDelay,
      restartBaseMs: timing.informerRestartBaseMs,
    };
    const scope = (ns: string | undefined) => (ns ? `/namespaces/${ns}` : '');

    this.toolsets = new InformerSet(config.watchNamespaces, (ns) => {
      return new Informer<ToolSetObject>({
        ...informerOptions,
        kind: 'ToolSet',
        path: `/apis/${TOOLSETS.group}/${TOOLSETS.version}${scope(ns)}/${TOOLSETS.plural}`,
        list: () =>
          ns
            ? customObjects.listNamespacedCustomObject({ ...TOOLSETS, namespace: ns })
            : customObjects.listClusterCustomObject(TOOLSETS),
      });
    });
    const managed = `${MANAGED_BY.key}=${MANAGED_BY.value}`;
    this.configMaps = new InformerSet(config.watchNamespaces, (ns) => {
      return new Informer<V1ConfigMap>({
        ...informerOptions,
        kind: 'ConfigMap',
        path: `/api/v1${scope(ns)}/configmaps`,
        labelSelector: managed,
        list: () =>
          ns
            ? core.listNamespacedConfigMap({ namespace: ns, labelSelector: managed })
            : core.listConfigMapForAllNamespaces({ labelSelector: managed }),
      });
    });
    const pods = (labelSelector: string) =>
      new InformerSet(config.watchNamespaces, (ns) => {
        return new Informer<V1Pod>({
          ...informerOptions,
          kind: 'Pod',
          path: `/api/v1${scope(ns)}/pods`,
          labelSelector,
          list: () =>
            ns
              ? core.listNamespacedPod({ namespace: ns, labelSelector })
              : core.listPodForAllNamespaces({ labelSelector }),
        });
      });
    this.injectedPods = pods(`${LABEL_INJECTED}=true`);
    this.optedInPods = pods(`${LABEL_INJECT}=true`);

    this.events = new EventRecorder({ core, instance: config.podName, clock, logger });
    this.controller = new ToolSetController({
      customObjects,
      core,
      toolsets: this.toolsets,
      configMaps: this.configMaps,
      pods: this.injectedPods,
      events: this.events,
      metrics: this.metrics,
      clock,
      logger,
      resyncMs: timing.resyncMs,
      retryBaseMs: timing.retryBaseMs,
      retryMaxMs: timing.retryMaxMs,
    });
    this.uninjected = new UninjectedReporter({
      pods: this.optedInPods,
      toolsets: (ns) => this.lookup(ns),
      sidecar: config.sidecar,
      events: this.events,
      metrics: this.metrics,
      logger,
      debounceMs: timing.uninjectedDebounceMs,
    });
    if (config.leaderElection) {
      this.elector = new LeaderElector({
        api: kc.makeApiClient(CoordinationV1Api),
        namespace: config.namespace,
        name: config.leaseName,
        identity: config.podName,
        leaseDurationMs: timing.leaseDurationMs,
        renewDeadlineMs: timing.renewDeadlineMs,
        retryPeriodMs: timing.retryPeriodMs,
        clock,
        logger,
        onStartedLeading: () => this.lead(),
        onStoppedLeading: () => this.follow(),
      });
    }
  }

  /** Every informer has listed once. */
  get synced(): boolean {
    return this.informers().every((i) => i.synced);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** The ToolSets of one namespace, from the cache: what the webhook and the uninjected report select from. */
  lookup(namespace: string): ToolSetLookup {
    return {
      byName: (name) => this.toolsets.get(name, namespace),
      all: () => this.toolsets.list(namespace),
      hasConfigMap: (name) => this.configMaps.get(configMapName(name), namespace) !== undefined,
    };
  }

  /** Starts the informers and, once they have synced, campaigns (or leads at once without election). */
  async start(): Promise<void> {
    await Promise.all(this.informers().map((i) => i.start()));
    // Leading from caches not yet filled would take missing ToolSets for deleted ones.
    this.campaign = Promise.all(this.informers().map((i) => i.whenSynced())).then(async () => {
      if (this.stopping) return;
      if (this.elector) this.elector.start();
      else await this.lead();
    });
    if (this.synced) await this.campaign;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.elector) await this.elector.stop();
    else await this.follow();
    await Promise.all(this.informers().map((i) => i.stop()));
  }

  private informers() {
    return [this.toolsets, this.configMaps, this.injectedPods, this.optedInPods];
  }

  private async lead(): Promise<void> {
    this.leading = true;
    this.logger.info({ identity: this.o.config.podName }, 'Started leading');
    this.controller.start();
    this.uninjected.start();
  }

  private async follow(): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    this.uninjected.stop();
    await this.controller.stop();
    this.logger.info({ identity: this.o.config.podName }, 'Stopped leading');
  }
}
