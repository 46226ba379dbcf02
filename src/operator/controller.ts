/**
 * The ToolSet controller. Informer events only add `namespace/name` keys to a queue; reconcile(key)
 * reads the latest ToolSet from the cache and makes the cluster match it, so it is correct after any
 * event, a restart or a missed watch:
 *   validate → (valid) server-side apply ConfigMap earpiece-toolset-<name> if it differs → status.
 * An invalid ToolSet never touches the last good ConfigMap: it gets Ready=False naming the fields, and
 * an Event. Each ToolSet is reconciled by one operator: the first to label it earpiece.dev/operator with
 * its instance (a release's, so two releases watching the same namespace never both write it); a
 * ToolSet labelled for another instance is left alone. Status is written through the status subresource, only when it changes, and says Ready only
 * after the ConfigMap write succeeded. A deleted ToolSet needs nothing: the ConfigMap's owner reference
 * lets the garbage collector remove it.
 */
import {
  type CoreV1Api,
  type CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
  type V1ConfigMap,
  type V1EnvVar,
  type V1OwnerReference,
  type V1Pod,
} from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import type { OperatorMetrics, ReconcileResult } from '../telemetry/operator-metrics.js';
import {
  API_GROUP,
  API_VERSION,
  canonicalJson,
  KIND,
  renderForSidecar,
  type StatusCondition,
  type ToolSet,
  type ToolSetStatus,
} from '../toolset/index.js';
import { describeApiError } from './api-errors.js';
import { type Clock, systemClock } from './clock.js';
import { renderConfigMap } from './configmap.js';
import type { EventRecorder } from './events.js';
import type { InformerSet } from './informers.js';
import { readInjection } from './patch.js';
import { WorkQueue } from './queue.js';
import { selectorQuery } from './select.js';
import {
  ANNOTATION_TOOLSET,
  APP_URL_ENV,
  configMapName,
  LABEL_INJECT,
  LABEL_INJECTED,
  LABEL_OPERATOR,
  UPSTREAM_ENV,
} from './sidecar.js';
import { staleChartEnv, validateForCluster } from './sidecar-env.js';
import type { SidecarProblem } from './sidecar-problems.js';
import {
  buildStatus,
  type ConditionInput,
  condition,
  INVALID_TOOLSET,
  issuesMessage,
  READY,
  RESTART_REQUIRED,
  SIDECARS_READY,
  sameStatus,
} from './status.js';

export const FIELD_MANAGER = 'earpiece';
/** On every ConfigMap the controller writes; its ConfigMap informer selects on it. */
export const MANAGED_BY = { key: 'app.kubernetes.io/managed-by', value: 'earpiece' } as const;
export const TOOLSETS = { group: API_GROUP, version: API_VERSION, plural: 'toolsets' } as const;
export const DEFAULT_INSTANCE = 'earpiece';

/** A ToolSet as the API server returns it (status and metadata as stored). */
export type ToolSetObject = ToolSet & {
  metadata: ToolSet['metadata'] & { deletionTimestamp?: Date };
};

export interface ControllerOptions {
  customObjects: CustomObjectsApi;
  core: CoreV1Api;
  toolsets: InformerSet<ToolSetObject>;
  configMaps: InformerSet<V1ConfigMap>;
  /** Injected pods (label earpiece.dev/injected=true), for RestartRequired. */
  pods: InformerSet<V1Pod>;
  /**
   * The ToolSet's pods without a working sidecar (sidecar-problems.ts), for SidecarsReady; undefined
   * while not known yet (the reporter has not looked since it started): SidecarsReady stays as it is.
   */
  sidecarProblems?: (namespace: string, name: string) => readonly SidecarProblem[] | undefined;
  /** The chart's sidecar image: injected pods that run an older one need a restart to get it. */
  sidecarImage?: string;
  /** The namespace is labelled earpiece.dev/inject=true: every pod in it asked for the sidecar. */
  namespaceOptedIn?: (namespace: string) => boolean;
  events: EventRecorder;
  metrics?: OperatorMetrics;
  clock?: Clock;
  logger: Logger;
  /**
   * The env vars every injected sidecar gets from the chart (injection.env, shared state): a
   * `valueFrom.env` may name only those not reserved (sidecar-env.ts). Default: none.
   */
  sidecarEnv?: readonly V1EnvVar[];
  /** This operator's name on the ToolSets it claims (label earpiece.dev/operator); default `earpiece`. */
  instance?: string;
  /** How often every cached ToolSet is reconciled again without an event. */
  resyncMs?: number;
  /** How soon a ToolSet whose SidecarsReady says NoPods is reconciled again (default NO_PODS_RECHECK_MS). */
  noPodsRecheckMs?: number;
  workers?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
}

const ssa = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);
const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const jsonPatch = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);

/** SidecarsReady's reason when no running pod has the ToolSet's sidecar. */
const NO_PODS = 'NoPods';
/** SidecarsReady's reason when pods run the sidecar but their app does not talk to it. */
const PROXY_UNUSED = 'ProxyUnused';
/** A NoPods message is at most this old; one list of the selector's pods per such ToolSet each time. */
export const NO_PODS_RECHECK_MS = 60_000;

export function toolSetKey(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}

export class ToolSetController {
  readonly queue: WorkQueue;
  private readonly clock: Clock;
  private leading = false;
  private resync: NodeJS.Timeout | undefined;
  /**
   * What this controller last wrote per ToolSet, with the resourceVersion the cache showed before the
   * write. The cache lags the controller's own writes; until the informer reports the object again
   * (which drops the memo) and while the cache still shows that version, the memo is the truth, so a
   * reconcile in between does not write the same again.
   */
  private readonly statusMemo = new Map<string, { before: string | undefined; status: ToolSetStatus }>();
  private readonly configMapMemo = new Map<string, { before: string | undefined; content: string }>();

  constructor(private readonly o: ControllerOptions) {
    this.clock = o.clock ?? systemClock;
    this.queue = new WorkQueue({
      worker: (key) => this.reconcile(key),
      workers: o.workers,
      baseDelayMs: o.retryBaseMs,
      maxDelayMs: o.retryMaxMs,
      onRetry: (key, err, attempt, delayMs) =>
        o.logger.warn(
          { key, attempt, retryInMs: delayMs, err: describeApiError(err) },
          'Failed to reconcile ToolSet',
        ),
    });
    o.toolsets.onChange((t) => {
      const key = toolSetKey(t.metadata.namespace, t.metadata.name);
      this.statusMemo.delete(key);
      this.enqueue(key);
    });
    // A ConfigMap changed or deleted by someone else is put back by its owner's reconcile.
    o.configMaps.onChange((cm) => {
      const owner = cm.metadata?.ownerReferences?.find((r) => r.kind === KIND && r.controller);
      if (!owner) return;
      const key = toolSetKey(cm.metadata?.namespace, owner.name);
      this.configMapMemo.delete(key);
      this.enqueue(key);
    });
    // Pods that come and go change who needs a restart.
    o.pods.onChange((pod) => {
      const injection = injectionOf(pod);
      if (injection) this.enqueue(toolSetKey(pod.metadata?.namespace, injection.toolset));
    });
  }

  /** Leading: reconcile everything now and on every resync. */
  start(): void {
    if (this.leading) return;
    this.leading = true;
    this.queue.start();
    this.enqueueAll();
    this.resync = setInterval(() => this.enqueueAll(), this.o.resyncMs ?? 600_000);
    this.resync.unref();
  }

  /** Not leading any more: no new reconciles; waits for the running ones. */
  async stop(): Promise<void> {
    this.leading = false;
    clearInterval(this.resync);
    await this.queue.stop();
  }

  /** Reconciles these ToolSets (`namespace/name`) soon, e.g. when their pods' sidecars changed. */
  refresh(keys: readonly string[]): void {
    for (const key of keys) this.enqueue(key);
  }

  /** Reconciles every ToolSet soon, e.g. once their pods' sidecars are known after a leader start. */
  refreshAll(): void {
    this.enqueueAll();
  }

  private enqueue(key: string): void {
    if (this.leading) this.queue.add(key);
  }

  private enqueueAll(): void {
    for (const t of this.o.toolsets.list()) this.enqueue(toolSetKey(t.metadata.namespace, t.metadata.name));
  }

  async reconcile(key: string): Promise<void> {
    const started = performance.now();
    let result: ReconcileResult = 'error';
    try {
      result = await this.sync(key);
    } finally {
      this.o.metrics?.reconcile(result, (performance.now() - started) / 1000);
    }
  }

  private async sync(key: string): Promise<ReconcileResult> {
    const slash = key.indexOf('/');
    const namespace = key.slice(0, slash);
    const name = key.slice(slash + 1);
    const log = this.o.logger.child({ toolset: name, namespace });
    const cached = this.o.toolsets.get(name, namespace);
    if (!cached || cached.metadata.deletionTimestamp) {
      this.statusMemo.delete(key);
      this.configMapMemo.delete(key);
      log.debug('Skipped deleted ToolSet');
      return 'deleted';
    }
    const instance = this.o.instance ?? DEFAULT_INSTANCE;
    const claimedBy = cached.metadata.labels?.[LABEL_OPERATOR];
    if (claimedBy !== undefined && claimedBy !== instance) {
      log.debug({ operator: claimedBy }, 'Left ToolSet of another operator alone');
      return 'foreign';
    }
    if (claimedBy === undefined) {
      // Fails when another operator labelled it first; the retry reads its label from the cache. On
      // success the labelled ToolSet's watch event brings the reconcile that writes ConfigMap and status.
      await this.claim(cached, instance);
      return 'claimed';
    }
    const generation = cached.metadata.generation;
    const cmName = configMapName(name);
    const existing = this.o.configMaps.get(cmName, namespace);
    const owned = existing && ownerOf(existing)?.uid === cached.metadata.uid ? existing : undefined;

    // Status is ours, not the user's: a malformed status must not make the spec invalid.
    const { status: _status, ...document } = cached;
    const validation = validateForCluster(document, this.o.sidecarEnv ?? []);
    if (!validation.ok) {
      const fields = issuesMessage(validation.issues);
      const message = `${fields}; ${
        owned
          ? `ConfigMap ${cmName} keeps the last valid configuration`
          : `no ConfigMap is written until the ToolSet is valid`
      }`;
      const others = carriedOver(cached);
      const wrote = await this.writeStatus(cached, {
        observedGeneration: generation,
        tools: owned ? (cached.status?.tools ?? 0) : 0,
        pods: this.injectedFor(name, namespace).length,
        conditions: [{ type: READY, status: 'False', reason: INVALID_TOOLSET, message }, ...others],
      });
      if (wrote) {
        log.info({ generation, issues: validation.issues.length }, 'Rejected invalid ToolSet');
        await this.o.events.record(subject(cached), 'Warning', INVALID_TOOLSET, fields);
      }
      return 'invalid';
    }

    const toolset = validation.toolset;
    const desired = this.desiredConfigMap(toolset, cached);
    const content = canonicalJson(desired);
    const applied = this.configMapMemo.get(key);
    const justApplied =
      applied?.before === existing?.metadata?.resourceVersion && applied?.content === content;
    if (!justApplied && !configMapCurrent(owned, desired)) {
      try {
        await this.o.core.patchNamespacedConfigMap(
          { name: cmName, namespace, body: desired, fieldManager: FIELD_MANAGER, force: true },
          ssa,
        );
        this.configMapMemo.set(key, { before: existing?.metadata?.resourceVersion, content });
        log.info({ configmap: cmName, generation }, existing ? 'Updated ConfigMap' : 'Created ConfigMap');
      } catch (err) {
        // Truthful status even when the write fails; the queue retries the whole reconcile.
        await this.writeStatus(cached, {
          observedGeneration: generation,
          tools: cached.status?.tools ?? 0,
          pods: this.injectedFor(name, namespace).length,
          conditions: [
            {
              type: READY,
              status: 'False',
              reason: 'ConfigMapWriteFailed',
              message: `writing ConfigMap ${cmName} failed: ${describeApiError(err)}`,
            },
            ...carriedOver(cached),
          ],
        }).catch(() => undefined);
        throw err;
      }
    }

    const tools = toolset.spec.tools.length;
    const injected = this.injectedFor(name, namespace);
    const sidecars = await this.sidecarCondition(toolset, namespace, cached, injected);
    await this.writeStatus(cached, {
      observedGeneration: generation,
      tools,
      pods: injected.length,
      conditions: [
        {
          type: READY,
          status: 'True',
          reason: 'Valid',
          message: `ConfigMap ${cmName} holds ${tools} tool ${tools === 1 ? 'entry' : 'entries'}`,
        },
        this.restartCondition(toolset, injected),
        ...sidecars,
      ],
    });
    // NoPods names pods no informer here watches (matched by the selector, never opted in): looked at again
    // soon, so that its message does not wait for the resync to name a pod that came or went.
    if (this.leading && sidecars.some((c) => c.reason === NO_PODS))
      this.queue.addAfter(key, this.o.noPodsRecheckMs ?? NO_PODS_RECHECK_MS);
    return 'ok';
  }

  /**
   * Labels the ToolSet as this operator's. The patch tests the resourceVersion the cache showed, so of
   * two operators claiming at once exactly one succeeds.
   */
  private async claim(cached: ToolSetObject, instance: string): Promise<void> {
    const labelPath = `/metadata/labels/${LABEL_OPERATOR.replace('~', '~0').replace('/', '~1')}`;
    await this.o.customObjects.patchNamespacedCustomObject(
      {
        ...TOOLSETS,
        namespace: cached.metadata.namespace ?? '',
        name: cached.metadata.name,
        body: [
          { op: 'test', path: '/metadata/resourceVersion', value: cached.metadata.resourceVersion },
          ...(cached.metadata.labels ? [] : [{ op: 'add', path: '/metadata/labels', value: {} }]),
          { op: 'add', path: labelPath, value: instance },
        ],
        fieldManager: FIELD_MANAGER,
      },
      jsonPatch,
    );
    this.o.logger.info(
      { toolset: cached.metadata.name, namespace: cached.metadata.namespace, operator: instance },
      'Claimed ToolSet',
    );
  }

  private desiredConfigMap(toolset: ToolSet, owner: ToolSetObject): V1ConfigMap {
    const rendered = renderConfigMap(toolset);
    // No blockOwnerDeletion: where OwnerReferencesPermissionEnforcement runs (OpenShift), setting it needs
    // `update` on toolsets/finalizers, and it only matters to foreground deletion of a ToolSet.
    const ownerReference: V1OwnerReference = {
      apiVersion: `${API_GROUP}/${API_VERSION}`,
      kind: KIND,
      name: owner.metadata.name,
      uid: owner.metadata.uid ?? '',
      controller: true,
    };
    return {
      ...rendered,
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: {
        ...rendered.metadata,
        namespace: owner.metadata.namespace,
        labels: { ...rendered.metadata?.labels, [MANAGED_BY.key]: MANAGED_BY.value },
        ownerReferences: [ownerReference],
      },
    };
  }

  /**
   * Pods a ConfigMap reload cannot bring up to date; restarting them is the user's call (it ends live
   * voice sessions), so they are only named:
   * - pods injected before a new secretKeyRef was added lack its env var;
   * - pods injected under the other answer to "does the ToolSet name spec.upstream.url?": one handed the
   *   app's KYUTAI_LLM_URL as EARPIECE_UPSTREAM_URL keeps that server (the env var overrides
   *   spec.upstream.url), and one injected while the ToolSet named its upstream was never handed the
   *   app's own URL, so after spec.upstream.url is removed its sidecar keeps the last one it loaded;
   * - pods injected before the chart changed its sidecar env vars (injection.env, the shared-state URL)
   *   lack them, have the old ones, or keep ones it dropped: a ToolSet's valueFrom.env may already name
   *   the new ones (staleChartEnv decides, from what the pod records it was given);
   * - pods injected before the chart's sidecar image changed (an upgrade, perhaps a security fix) still
   *   run the old one, as recorded in earpiece.dev/injected-image (not when the pod chose its own image,
   *   or another webhook rewrote it since).
   */
  private restartCondition(toolset: ToolSet, injected: readonly InjectedPod[]): ConditionInput {
    const needed = renderForSidecar(toolset).env;
    const upstreamNamed = toolset.spec.upstream?.url !== undefined;
    const lacking: { pod: string; secrets: string[] }[] = [];
    const upstreamStale: string[] = [];
    const envStale: { pod: string; env: string[] }[] = [];
    const imageStale: { pod: string; image: string }[] = [];
    const chartEnv = this.o.sidecarEnv ?? [];
    const chartImage = this.o.sidecarImage;
    for (const { pod, injection } of injected) {
      const has = new Set(injection.secretEnv);
      const missing = needed.filter((e) => !has.has(e.name));
      if (missing.length > 0) {
        lacking.push({
          pod: pod.metadata?.name ?? '',
          secrets: missing.map((e) => `${e.secretKeyRef.name}/${e.secretKeyRef.key}`),
        });
      }
      if (injection.upstreamHandedOver === upstreamNamed) upstreamStale.push(pod.metadata?.name ?? '');
      const stale = staleChartEnv(injection.chartEnvRecord, injection.sidecarEnv, chartEnv);
      if (stale !== undefined) envStale.push({ pod: pod.metadata?.name ?? '', env: stale.names });
      if (
        chartImage !== undefined &&
        injection.chartImage !== undefined &&
        injection.chartImage !== chartImage
      )
        imageStale.push({ pod: pod.metadata?.name ?? '', image: injection.chartImage });
    }
    const kinds = [
      lacking.length > 0 && 'SecretEnvMissing',
      upstreamStale.length > 0 && 'UpstreamChanged',
      envStale.length > 0 && 'SidecarEnvChanged',
      imageStale.length > 0 && 'SidecarImageChanged',
    ].filter((kind) => kind !== false);
    if (kinds.length === 0) {
      return { type: RESTART_REQUIRED, status: 'False', reason: 'PodsUpToDate', message: '' };
    }
    // Every list is capped, so the message stays far below MAX_CONDITION_MESSAGE and the advice at
    // its end is never cut off (a ToolSet may name thousands of Secrets, each name/key up to 507 characters).
    const parts: string[] = [];
    if (lacking.length > 0) {
      lacking.sort((a, b) => a.pod.localeCompare(b.pod));
      const pods = listed(lacking.map((l) => l.pod));
      const names = [...new Set(lacking.flatMap((l) => l.secrets))].sort();
      const secrets = listed(names);
      parts.push(
        names.length === 1
          ? `pods ${pods} started before secret ${secrets} was added and lack its env var`
          : `pods ${pods} started before secrets ${secrets} were added and lack their env vars`,
      );
    }
    if (upstreamStale.length > 0) {
      const pods = listed(upstreamStale.sort());
      parts.push(
        upstreamNamed
          ? `pods ${pods} were injected while the ToolSet named no spec.upstream.url; their sidecar's ${UPSTREAM_ENV} (the app's own ${APP_URL_ENV}) overrides spec.upstream.url, so they still forward to that server`
          : `pods ${pods} were injected while the ToolSet named spec.upstream.url and were not handed the app's own ${APP_URL_ENV}; they keep forwarding to the last spec.upstream.url they loaded`,
      );
    }
    if (envStale.length > 0) {
      envStale.sort((a, b) => a.pod.localeCompare(b.pod));
      const names = [...new Set(envStale.flatMap((e) => e.env))].sort();
      const pods = listed(envStale.map((e) => e.pod));
      parts.push(
        `pods ${pods} were injected before the chart's sidecar env changed, and differ from it in ${listed(names)}`,
      );
    }
    if (imageStale.length > 0) {
      imageStale.sort((a, b) => a.pod.localeCompare(b.pod));
      const images = listed([...new Set(imageStale.map((i) => i.image))].sort());
      parts.push(
        `pods ${listed(imageStale.map((i) => i.pod))} run the sidecar image ${images}, not the chart's ${chartImage}`,
      );
    }
    return {
      type: RESTART_REQUIRED,
      status: 'True',
      reason: kinds.length === 1 ? (kinds[0] as string) : 'PodsOutdated',
      message: `${parts.join('; ')}; restart them (e.g. kubectl rollout restart) to use it`,
    };
  }

  /**
   * One line naming the pods whose sidecar does not work, and why; none where nobody looks for them.
   * Before the reporter's first look the stored condition is kept as it is (or left out): an empty list
   * then means "not looked yet", not "all ready".
   */
  private async sidecarCondition(
    toolset: ToolSet,
    namespace: string,
    cached: ToolSetObject,
    injected: InjectedPod[],
  ): Promise<ConditionInput[]> {
    if (!this.o.sidecarProblems) return [];
    const found = this.o.sidecarProblems(namespace, toolset.metadata.name);
    if (found === undefined) {
      const stored = condition(this.currentStatus(cached), SIDECARS_READY);
      return stored ? [asInput(stored)] : [];
    }
    const problems = [...found].sort((a, b) => a.name.localeCompare(b.name));
    // Injected with a warning nobody reads (an Event on the ReplicaSet): the sidecar runs, and the app
    // never talks to it, so the voice assistant has no tools while everything else reads green.
    const unused = injected
      .filter((p) => !p.injection.appUsesProxy)
      .map((p) => p.pod.metadata?.name ?? '')
      .sort();
    if (problems.length === 0 && unused.length > 0) {
      return [
        {
          type: SIDECARS_READY,
          status: 'False',
          reason: PROXY_UNUSED,
          message: `pods ${listed(unused)} run the earpiece-proxy sidecar, but no container of theirs sets ${APP_URL_ENV} in env, so the app does not talk to it and has no tools; set ${APP_URL_ENV} in the backend container's env (the webhook points it at the sidecar when the pod is created again)`,
        },
      ];
    }
    if (problems.length === 0 && injected.length > 0) {
      return [{ type: SIDECARS_READY, status: 'True', reason: 'SidecarsReady', message: '' }];
    }
    if (problems.length === 0) {
      return [
        {
          type: SIDECARS_READY,
          status: 'False',
          reason: NO_PODS,
          message: await this.noPods(toolset, namespace),
        },
      ];
    }
    const shown = problems.slice(0, 10).map((p) => `${p.name} (${p.reason})`);
    const more = problems.length - shown.length;
    return [
      {
        type: SIDECARS_READY,
        status: 'False',
        reason: 'SidecarProblems',
        message: `pods ${shown.join(', ')}${more > 0 ? ` and ${more} more` : ''} have no working earpiece-proxy sidecar; the Warning Events on their workloads say what to do`,
      },
    ];
  }

  /** Running pods whose sidecar was injected for this ToolSet, with what each was given. */
  private injectedFor(name: string, namespace: string): InjectedPod[] {
    const found: InjectedPod[] = [];
    for (const pod of this.o.pods.list(namespace)) {
      if (!running(pod)) continue;
      const injection = injectionOf(pod);
      if (injection?.toolset === name) found.push({ pod, injection });
    }
    return found;
  }

  /**
   * Why no pod runs this ToolSet's sidecar, with the pods its selector matches that never asked for one (a
   * forgotten label, or a value other than "true"): the webhook is called only for opted-in pods, so
   * nothing else would ever name them. Listed from the API server, which filters by the selector.
   */
  private async noPods(toolset: ToolSet, namespace: string): Promise<string> {
    const why = `no running pod has this ToolSet's earpiece-proxy sidecar: a pod gets one when it or its namespace is labelled ${LABEL_INJECT}: "true" and spec.selector matches it (or it names the ToolSet in the annotation ${ANNOTATION_TOOLSET})`;
    const query = selectorQuery(toolset.spec.selector);
    // In an opted-in namespace every pod asked: one without the sidecar is the reporter's to name.
    if (query === undefined || this.o.namespaceOptedIn?.(namespace)) return why;
    let found: V1Pod[];
    try {
      found = (await this.o.core.listNamespacedPod({ namespace, labelSelector: query, limit: 100 })).items;
    } catch (err) {
      this.o.logger.debug(
        { namespace, err: describeApiError(err) },
        'Could not list the pods a selector matches',
      );
      return why;
    }
    // Labelled "true" they asked (the reporter names those the webhook missed); "false" is named with its
    // label, as any other value, so that a selector matching only opted-out pods says so.
    const unasked = found
      .filter(
        (p) =>
          running(p) &&
          p.metadata?.labels?.[LABEL_INJECT] !== 'true' &&
          !p.metadata?.labels?.[LABEL_INJECTED],
      )
      .map((p) => {
        const value = p.metadata?.labels?.[LABEL_INJECT];
        return `${p.metadata?.name ?? ''}${value === undefined ? '' : ` (${LABEL_INJECT}: ${JSON.stringify(value)})`}`;
      })
      .sort();
    // Pods the selector matches that run another ToolSet's sidecar: injected before this ToolSet's selector
    // matched them, they keep it; created now, they would get neither.
    // A pod that names its ToolSet in the annotation chose it: not a clash of selectors.
    const taken = found
      .flatMap((p) => {
        const chose = p.metadata?.annotations?.[ANNOTATION_TOOLSET] !== undefined;
        const other = running(p) && !chose ? injectionOf(p)?.toolset : undefined;
        return other !== undefined && other !== toolset.metadata.name
          ? [`${p.metadata?.name ?? ''} (ToolSet ${other})`]
          : [];
      })
      .sort();
    const parts = [
      ...(unasked.length > 0 ? [`pods ${listed(unasked)} match spec.selector but are not opted in`] : []),
      ...(taken.length > 0
        ? [
            `pods ${listed(taken)} match spec.selector but run another ToolSet's sidecar, injected before; a pod created now that both ToolSets select gets neither unless its ${ANNOTATION_TOOLSET} annotation names one`,
          ]
        : []),
    ];
    if (parts.length === 0) return `${why}; no running pod matches spec.selector (${query})`;
    return `${why}; ${parts.join('; ')}`;
  }

  /**
   * A Warning Event on the ToolSet when RestartRequired turns True, or SidecarsReady False for a reason no
   * pod's Event already gives (ProxyUnused), or either's reason changes: `kubectl get events` is where
   * problems are looked for, and a condition alone is read by nobody who is not already looking. NoPods
   * gets none: a ToolSet applied before its pods start is the usual order, and PODS 0 shows it.
   */
  private async announce(
    t: ToolSetObject,
    before: ToolSetStatus | undefined,
    after: ToolSetStatus,
  ): Promise<void> {
    const bad = [
      { type: RESTART_REQUIRED, status: 'True', reasons: undefined },
      { type: SIDECARS_READY, status: 'False', reasons: [PROXY_UNUSED] },
    ];
    for (const { type, status, reasons } of bad) {
      const now = condition(after, type);
      if (!now || now.status !== status || (reasons && !reasons.includes(now.reason))) continue;
      const was = condition(before, type);
      if (was?.status === now.status && was.reason === now.reason) continue;
      await this.o.events.record(subject(t), 'Warning', now.reason, `${type}: ${now.message}`);
    }
  }

  /** The status as stored: the cached one, or what this controller wrote since the cache showed it. */
  private currentStatus(cached: ToolSetObject): ToolSetStatus | undefined {
    const memo = this.statusMemo.get(toolSetKey(cached.metadata.namespace, cached.metadata.name));
    return memo && memo.before === cached.metadata.resourceVersion ? memo.status : cached.status;
  }

  /** Writes status through the status subresource when it differs; true when it wrote. */
  private async writeStatus(
    reconciled: ToolSetObject,
    input: Parameters<typeof buildStatus>[1],
  ): Promise<boolean> {
    // The cache as it is now: this reconcile may have waited on the API server since it read the ToolSet,
    // and a status written meanwhile (its event clears the memo) is in the cache by now.
    const cached = this.o.toolsets.get(reconciled.metadata.name, reconciled.metadata.namespace) ?? reconciled;
    const current = this.currentStatus(cached);
    const next = buildStatus(current, input, this.clock.now());
    if (sameStatus(current, next)) return false;
    await this.o.customObjects.patchNamespacedCustomObjectStatus(
      {
        ...TOOLSETS,
        namespace: cached.metadata.namespace ?? '',
        name: cached.metadata.name,
        body: { status: next },
        fieldManager: FIELD_MANAGER,
      },
      merge,
    );
    this.statusMemo.set(toolSetKey(cached.metadata.namespace, cached.metadata.name), {
      before: cached.metadata.resourceVersion,
      status: next,
    });
    await this.announce(cached, current, next);
    const ready = condition(next, READY);
    this.o.logger.info(
      {
        toolset: cached.metadata.name,
        namespace: cached.metadata.namespace,
        ready: ready?.status,
        reason: ready?.reason,
        observedGeneration: next.observedGeneration,
      },
      'Updated ToolSet status',
    );
    return true;
  }
}

/** A running pod with an earpiece sidecar, and what the webhook gave it. */
interface InjectedPod {
  pod: V1Pod;
  injection: NonNullable<ReturnType<typeof injectionOf>>;
}

/** Not being deleted, and not finished (a Job's pod that completed). */
function running(pod: V1Pod): boolean {
  return !pod.metadata?.deletionTimestamp && !['Succeeded', 'Failed'].includes(pod.status?.phase ?? '');
}

/** What the webhook put into a pod (its ToolSet, secret env vars), or undefined when not injected. */
export function injectionOf(pod: V1Pod): ReturnType<typeof readInjection> {
  return readInjection({ metadata: { annotations: pod.metadata?.annotations }, spec: pod.spec });
}

/** The conditions other than Ready, kept as they are when this reconcile cannot work them out anew. */
function carriedOver(t: ToolSetObject): ConditionInput[] {
  return (t.status?.conditions ?? []).filter((c) => c.type !== READY).map(asInput);
}

/** A stored condition to be written again as it is (its observedGeneration too). */
function asInput(c: StatusCondition): ConditionInput {
  return {
    type: c.type,
    status: c.status,
    reason: c.reason,
    message: c.message,
    ...(c.observedGeneration !== undefined ? { observedGeneration: c.observedGeneration } : {}),
  };
}

function ownerOf(cm: V1ConfigMap): V1OwnerReference | undefined {
  return cm.metadata?.ownerReferences?.find((r) => r.kind === KIND && r.controller);
}

/** Whether the cached ConfigMap already has everything the controller would apply. */
export function configMapCurrent(cached: V1ConfigMap | undefined, desired: V1ConfigMap): boolean {
  if (!cached) return false;
  if (canonicalJson(cached.data ?? {}) !== canonicalJson(desired.data ?? {})) return false;
  if (cached.binaryData && Object.keys(cached.binaryData).length > 0) return false;
  for (const field of ['labels', 'annotations'] as const) {
    const have = cached.metadata?.[field] ?? {};
    for (const [k, v] of Object.entries(desired.metadata?.[field] ?? {})) if (have[k] !== v) return false;
  }
  const want = desired.metadata?.ownerReferences?.[0];
  return !!cached.metadata?.ownerReferences?.some((r) => r.uid === want?.uid && r.controller === true);
}

function subject(t: ToolSetObject) {
  return {
    apiVersion: `${API_GROUP}/${API_VERSION}`,
    kind: KIND,
    name: t.metadata.name,
    namespace: t.metadata.namespace,
    uid: t.metadata.uid,
  };
}

/** Names listed in a condition's message at most (RestartRequired, NoPods), of pods and of Secrets each. */
const MAX_RESTART_LISTED = 20;

/** The first names, then how many more: a message that fits the CRD's limit however many there are. */
function listed(names: readonly string[]): string {
  const shown = names.slice(0, MAX_RESTART_LISTED);
  const more = names.length - shown.length;
  return `${shown.join(', ')}${more > 0 ? ` and ${more} more` : ''}`;
}
