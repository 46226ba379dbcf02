/**
 * Wiring. Every replica runs the informers (the webhook reads ToolSets from their cache), the webhook
 * and its certificates; only the Lease holder runs the controller's writes, the pods of opted-in
 * namespaces and the sidecar-problem reports. SIGTERM (cmd/operator.ts calls stop()): /readyz turns 503 and the webhook keeps serving for
 * the shutdown grace period, then the controller stops, the Lease is released, the informers stop, the
 * servers close.
 */
import { X509Certificate } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  AdmissionregistrationV1Api,
  AuthorizationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type V1ConfigMap,
  type V1Namespace,
  type V1Pod,
} from '@kubernetes/client-node';
import { releaseStartupMemory } from '../runtime/heap.js';
import { createLogger, type Logger } from '../telemetry/log.js';
import { OperatorMetrics } from '../telemetry/operator-metrics.js';
import { type Clock, systemClock } from './clock.js';
import type { OperatorConfig } from './config.js';
import { readInjectionConfig } from './configmap.js';
import {
  DEFAULT_INSTANCE,
  MANAGED_BY,
  TOOLSETS,
  ToolSetController,
  type ToolSetObject,
} from './controller.js';
import { EventRecorder, type EventSubject } from './events.js';
import { Informer, InformerSet, WatchHealth } from './informers.js';
import { LeaderElector } from './leader.js';
import { NamespacePods } from './namespace-pods.js';
import { subjectAccessReviews } from './secret-access.js';
import type { ToolSetLookup } from './select.js';
import { sidecarForServer } from './server-version.js';
import { configMapName, LABEL_INJECT, LABEL_INJECTED, LABEL_OPERATOR } from './sidecar.js';
import { SidecarProblemReporter } from './sidecar-problems.js';
import { condition, READY } from './status.js';
import type { ToolSetAdmission } from './toolset-admission.js';
import {
  type InjectionOutcome,
  startWebhookServer,
  type WebhookLookups,
  type WebhookServer,
} from './webhook.js';
import { WebhookCertificates } from './webhook-certs.js';

/** Durations, all with production defaults; tests shorten them. */
export interface Timing {
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  /** Every cached ToolSet is reconciled again this often. */
  resyncMs?: number;
  /** A ToolSet whose SidecarsReady says NoPods is reconciled again this soon. */
  noPodsRecheckMs?: number;
  /** First retry of a failed reconcile (doubles up to retryMaxMs). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** The informers' reconnect and restart waits. */
  informerDelay?: (ms: number) => Promise<void>;
  informerRestartBaseMs?: number;
  /** Pod events are gathered this long before sidecar problems are looked for. */
  problemDebounceMs?: number;
  /** Sidecar problems are looked for again this often without events (not ready past the window). */
  problemRecheckMs?: number;
  /** The shutdown grace wait (default: a timer of config.shutdownGraceMs). */
  shutdownDelay?: (ms: number) => Promise<void>;
}

export interface ControlPlaneOptions {
  kc: KubeConfig;
  config: Pick<
    OperatorConfig,
    | 'namespace'
    | 'podName'
    | 'watchNamespaces'
    | 'excludeNamespaces'
    | 'leaderElection'
    | 'leaseName'
    | 'sidecar'
  > &
    Partial<Pick<OperatorConfig, 'instance'>>;
  clock?: Clock;
  logger?: Logger;
  metrics?: OperatorMetrics;
  timing?: Timing;
}

/** Informers, controller, Lease and sidecar-problem reports: everything that talks to the API server. */
export class ControlPlane {
  readonly toolsets: InformerSet<ToolSetObject>;
  readonly configMaps: InformerSet<V1ConfigMap>;
  readonly injectedPods: InformerSet<V1Pod>;
  readonly optedInPods: InformerSet<V1Pod>;
  /** Namespaces labelled earpiece.dev/inject=true. */
  readonly optedInNamespaces: InformerSet<V1Namespace>;
  readonly controller: ToolSetController;
  /** Pods of opted-in namespaces, watched by the leader only. */
  readonly namespacePods: NamespacePods;
  readonly sidecarProblems: SidecarProblemReporter;
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
    const health = new WatchHealth();
    this.metrics.watchWatches(() => health.byKind());
    const informerOptions = {
      kc,
      logger,
      delay: timing.informerDelay,
      restartBaseMs: timing.informerRestartBaseMs,
      health,
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
    const optedIn = `${LABEL_INJECT}=true`;
    this.optedInNamespaces = new InformerSet([], () => {
      return new Informer<V1Namespace>({
        ...informerOptions,
        kind: 'Namespace',
        path: '/api/v1/namespaces',
        labelSelector: optedIn,
        list: () => core.listNamespace({ labelSelector: optedIn }),
      });
    });

    this.events = new EventRecorder({ core, instance: config.podName, clock, logger });
    this.controller = new ToolSetController({
      customObjects,
      core,
      toolsets: this.toolsets,
      configMaps: this.configMaps,
      pods: this.injectedPods,
      sidecarProblems: (namespace, name) => this.sidecarProblems.forToolSet(namespace, name),
      namespaceOptedIn: (namespace) => this.optedInNamespaces.get(namespace) !== undefined,
      events: this.events,
      metrics: this.metrics,
      clock,
      logger,
      instance: config.instance ?? DEFAULT_INSTANCE,
      sidecarEnv: config.sidecar.extraEnv,
      sidecarImage: config.sidecar.image,
      resyncMs: timing.resyncMs,
      noPodsRecheckMs: timing.noPodsRecheckMs,
      retryBaseMs: timing.retryBaseMs,
      retryMaxMs: timing.retryMaxMs,
    });
    const notOptedOut = `${LABEL_INJECT}!=false`;
    this.namespacePods = new NamespacePods({
      namespaces: this.optedInNamespaces,
      allowed: (ns) =>
        (config.watchNamespaces.length === 0 || config.watchNamespaces.includes(ns)) &&
        !config.excludeNamespaces.includes(ns),
      onRefused: (namespace) =>
        logger.warn(
          {
            namespace,
            watchNamespaces: config.watchNamespaces,
            excludeNamespaces: config.excludeNamespaces,
          },
          'Namespace is labelled earpiece.dev/inject=true, but this release does not serve it (chart values watchNamespaces, excludeNamespaces): unless another release does, its pods get no sidecar and nothing reports them.',
        ),
      make: (ns) =>
        new Informer<V1Pod>({
          ...informerOptions,
          kind: 'Pod',
          path: `/api/v1/namespaces/${ns}/pods`,
          labelSelector: notOptedOut,
          list: () => core.listNamespacedPod({ namespace: ns, labelSelector: notOptedOut }),
        }),
    });
    this.sidecarProblems = new SidecarProblemReporter({
      pods: [this.optedInPods, this.injectedPods, this.namespacePods],
      namespaceOptedIn: (ns) => this.optedInNamespaces.get(ns) !== undefined,
      toolsets: (ns) => this.lookup(ns),
      excludeNamespaces: config.excludeNamespaces,
      sidecar: config.sidecar,
      instance: config.instance ?? DEFAULT_INSTANCE,
      events: this.events,
      metrics: this.metrics,
      logger,
      clock,
      onToolSetsChanged: (keys) => this.controller.refresh(keys),
      onFirstCheck: () => this.controller.refreshAll(),
      debounceMs: timing.problemDebounceMs,
      recheckMs: timing.problemRecheckMs,
    });
    this.metrics.watchToolSets(() =>
      this.leading
        ? this.toolsets.list().map((t) => ({
            namespace: t.metadata.namespace ?? '',
            ready: condition(t.status, READY)?.status === 'True',
            // Not one being deleted: setting deletionTimestamp bumps the generation, and nobody reconciles it.
            behind:
              !t.metadata.deletionTimestamp &&
              (t.metadata.generation ?? 0) > (t.status?.observedGeneration ?? 0),
            operator: t.metadata.labels?.[LABEL_OPERATOR] ?? '',
          }))
        : [],
    );
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

  /**
   * The ToolSets of one namespace from the cache, and their last valid configurations from their
   * ConfigMaps: what the webhook and the sidecar-problem report select from.
   */
  lookup(namespace: string): ToolSetLookup {
    return {
      byName: (name) => this.toolsets.get(name, namespace),
      all: () => this.toolsets.list(namespace),
      config: (name) => {
        const cm = this.configMaps.get(configMapName(name), namespace);
        return cm && readInjectionConfig(cm);
      },
    };
  }

  /** What the webhook reads: the informer caches, as lookup() gives them. */
  webhookLookups(): WebhookLookups {
    return {
      toolsetByName: (namespace, name) => this.lookup(namespace).byName(name),
      toolsetsInNamespace: (namespace) => this.lookup(namespace).all(),
      config: (namespace, name) => this.lookup(namespace).config(name),
      namespaceOptedIn: (namespace) => this.optedInNamespaces.get(namespace) !== undefined,
    };
  }

  /** The validating webhook's decisions: counted, and a refusal logged (the user sees why). */
  onToolSetAdmission({ result, issues, error, ...review }: ToolSetAdmission): void {
    this.metrics.toolsetAdmission(result);
    if (result === 'refused') {
      this.logger.info({ ...review, problems: issues.length }, 'Refused an invalid ToolSet');
    } else if (result === 'forbidden') {
      this.logger.info(
        { ...review, secrets: issues },
        'Refused a ToolSet naming Secrets its author may not read',
      );
    } else if (result === 'unwatched') {
      this.logger.info(review, 'Admitted a ToolSet of a namespace this release does not watch, unchecked');
    } else if (result === 'error') {
      // The API server did not answer the access check: worth a look, unlike a user's mistake.
      this.logger.warn(
        { ...review, err: error },
        'Refused a ToolSet whose Secret access could not be checked',
      );
    }
  }

  /** The webhook's decisions: counted, and an Event on the pod's owner (not for dry runs). */
  onInjection(o: InjectionOutcome): void {
    this.metrics.injection(o.outcome);
    if (o.dryRun || (o.outcome !== 'injected' && !o.warn)) return;
    const subject: EventSubject = o.owner
      ? {
          apiVersion: o.owner.apiVersion,
          kind: o.owner.kind,
          name: o.owner.name,
          namespace: o.namespace,
          uid: o.owner.uid,
        }
      : { apiVersion: 'v1', kind: 'Pod', name: o.pod, namespace: o.namespace };
    // A controller's pod shows its admission warnings to nobody (kube-controller-manager created it): they
    // go on the workload, as a Warning, with what was injected.
    if (o.outcome !== 'injected') void this.events.record(subject, 'Warning', 'InjectionSkipped', o.message);
    else if (o.warnings.length === 0) void this.events.record(subject, 'Normal', 'Injected', o.message);
    else
      void this.events.record(
        subject,
        'Warning',
        'InjectedWithWarnings',
        `${o.message}; ${o.warnings.join('; ')}`,
      );
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
    return [this.toolsets, this.configMaps, this.injectedPods, this.optedInPods, this.optedInNamespaces];
  }

  private async lead(): Promise<void> {
    this.leading = true;
    this.logger.info({ identity: this.o.config.podName }, 'Started leading');
    this.metrics.leading(true);
    this.controller.start();
    this.namespacePods.start();
    this.sidecarProblems.start();
  }

  private async follow(): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    this.metrics.leading(false);
    // The controller first: a reconcile after the reporter stopped would take its emptied list for "all ready".
    await this.controller.stop();
    this.sidecarProblems.stop();
    await this.namespacePods.stop();
    this.logger.info({ identity: this.o.config.podName }, 'Stopped leading');
  }
}

export interface OperatorOptions extends Omit<ControlPlaneOptions, 'config'> {
  config: OperatorConfig;
  /** Where the servers listen (all interfaces in a pod). */
  host?: string;
  /** Aborting it during start (SIGTERM while waiting for a certificate) stops what started and throws. */
  signal?: AbortSignal;
  /** Certificate checks and lifetimes (webhook-certs.ts); tests shorten them. */
  certificates?: {
    checkIntervalMs?: number;
    rotateBeforeMs?: number;
    caValidityDays?: number;
    servingValidityDays?: number;
    caOverlapMs?: number;
    retryBaseMs?: number;
  };
}

export interface RunningOperator {
  plane: ControlPlane;
  certificates: WebhookCertificates;
  ports: { webhook: number; probe: number; metrics: number };
  /** Informers synced, the webhook serving and not stopping: what /readyz answers. */
  ready(): boolean;
  /**
   * Graceful stop: not ready at once while the webhook serves on for the grace period (pods created
   * meanwhile still get the sidecar), then controller and Lease, informers, and the servers.
   */
  stop(): Promise<void>;
}

/** The whole `earpiece operator`: probes and metrics first, then informers, certificates, webhook. */
export async function startOperator(o: OperatorOptions): Promise<RunningOperator> {
  const { kc } = o;
  const host = o.host ?? '0.0.0.0';
  const logger = o.logger ?? createLogger('operator');
  const config = o.config.nativeSidecarAuto
    ? { ...o.config, sidecar: await sidecarForServer(kc, o.config.sidecar, logger) }
    : o.config;
  const metrics = o.metrics ?? new OperatorMetrics();
  let webhook: WebhookServer | undefined;
  let plane: ControlPlane | undefined;
  let stopping = false;
  let stopped: Promise<void> | undefined;
  const ready = () => !stopping && webhook !== undefined && plane?.synced === true;

  const probes = await listen(host, config.probePort, (url) => {
    if (url === '/healthz') return { code: 200, body: 'ok' };
    if (url === '/readyz') {
      const state = {
        informersSynced: plane?.synced === true,
        webhookServing: webhook !== undefined,
        stopping,
      };
      return { code: ready() ? 200 : 503, body: JSON.stringify(state), type: 'application/json' };
    }
    return undefined;
  });
  const metricsServer = await listen(host, config.metricsPort, async (url) =>
    url === '/metrics' ? { code: 200, body: await metrics.metrics(), type: metrics.contentType } : undefined,
  );

  plane = new ControlPlane({ ...o, config, logger, metrics });
  const certificates = new WebhookCertificates({
    mode: config.certMode,
    core: kc.makeApiClient(CoreV1Api),
    admission: kc.makeApiClient(AdmissionregistrationV1Api),
    namespace: config.namespace,
    secretName: config.certSecretName,
    serviceName: config.webhookServiceName,
    webhookConfigName: config.webhookConfigName,
    certDir: config.certDir,
    clock: o.clock,
    logger,
    ...o.certificates,
  });
  const running = plane;
  const onAbort = () => certificates.stop();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  const stop = async () => {
    await running.stop();
    certificates.stop();
    await webhook?.close();
    await Promise.all([close(probes), close(metricsServer)]);
  };
  try {
    await plane.start();
    const holder = await certificates.start();
    webhook = await startWebhookServer({
      port: config.webhookPort,
      host,
      certificate: holder,
      lookups: plane.webhookLookups(),
      sidecar: config.sidecar,
      instance: config.instance,
      watchNamespaces: config.watchNamespaces,
      logger,
      maxBodyBytesInFlight: config.webhookMaxBodyBytesInFlight,
      onInjection: (outcome) => running.onInjection(outcome),
      onReviewed: (operation, seconds) => metrics.webhookReview(operation, seconds),
      onToolSetAdmission: (decision) => running.onToolSetAdmission(decision),
      secretAccess: config.toolsetSecretAccessCheck
        ? { access: subjectAccessReviews(kc.makeApiClient(AuthorizationV1Api)) }
        : undefined,
    });
    metrics.watchCertificate(() => notAfter(holder.current.certPem));
    const serving = webhook;
    metrics.watchWebhookBodies(() => serving.bodyBytesInFlight());
  } catch (err) {
    await stop();
    throw err;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
  logger.info(
    { webhookPort: webhook.port, probePort: port(probes), metricsPort: port(metricsServer) },
    'Started operator',
  );
  // The informers have listed once and the certificates are made: their garbage goes, the caches stay. (A
  // leader's first reconciles come later, as its ordinary work.)
  releaseStartupMemory();
  return {
    plane,
    certificates,
    ports: { webhook: webhook.port, probe: port(probes), metrics: port(metricsServer) },
    ready,
    stop: () => {
      stopped ??= (async () => {
        stopping = true;
        logger.info({ graceMs: config.shutdownGraceMs }, 'Stopping operator after the shutdown grace period');
        await (o.timing?.shutdownDelay ?? sleep)(config.shutdownGraceMs);
        await stop();
      })();
      return stopped;
    },
  };
}

type Answer = { code: number; body: string; type?: string } | undefined;

/** A tiny GET-only server for probes and metrics (fastify would add nothing here). */
async function listen(host: string, portNumber: number, route: (url: string) => Answer | Promise<Answer>) {
  const server = createServer((req, res) => {
    Promise.resolve(req.method === 'GET' ? route((req.url ?? '/').split('?')[0] ?? '/') : undefined)
      .then((answer) => {
        const a = answer ?? { code: 404, body: 'not found' };
        res.writeHead(a.code, { 'content-type': a.type ?? 'text/plain; charset=utf-8' });
        res.end(a.body);
      })
      .catch((err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' });
        res.end(String(err));
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(portNumber, host, () => resolve());
  });
  return server;
}

/** When a PEM certificate expires; undefined when it cannot be read. */
function notAfter(certPem: string): Date | undefined {
  try {
    return new X509Certificate(certPem).validToDate;
  } catch {
    return undefined;
  }
}

function port(server: Server): number {
  return (server.address() as AddressInfo).port;
}

function close(server: Server): Promise<void> {
  server.closeAllConnections();
  return new Promise((resolve) => server.close(() => resolve()));
}
