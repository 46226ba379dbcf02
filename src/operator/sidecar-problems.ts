/**
 * Opted-in pods that do not have a working sidecar, however they were opted in (their own label or
 * their namespace's):
 * - `not_injected`: running without it, created while the webhook was unreachable (failurePolicy
 *   Ignore lets them through) or skipped by it (no ToolSet selects them, ...);
 * - the kubelet's reason when the sidecar waits or died (`ImagePullBackOff`, `CrashLoopBackOff`,
 *   `CreateContainerConfigError`, `OOMKilled`, ...): as a native sidecar it holds the app back;
 * - `not_ready`: started but not ready past its startup window;
 * - `toolset_deleted`: injected for a ToolSet that no longer exists, so it serves stale tools.
 * They are counted in `earpiece_sidecar_problem_pods{namespace,reason}` (and the uninjected ones in
 * `earpiece_uninjected_pods`), each gets one Warning Event on its owner (the ReplicaSet, Job, ... that
 * made it) saying what to do, and their ToolSet lists them in its status. Run by the leader only, so
 * replicas neither repeat the Events nor add up the gauges.
 */
import type { V1ContainerStateTerminated, V1Pod } from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import type { OperatorMetrics } from '../telemetry/operator-metrics.js';
import type { ToolSet } from '../toolset/schema.js';
import { type Clock, systemClock } from './clock.js';
import type { EventRecorder, EventSubject } from './events.js';
import { buildInjection, hasSidecar, otherOperator, readInjection } from './patch.js';
import { selectToolSet, type ToolSetLookup } from './select.js';
import {
  LABEL_INJECT,
  LABEL_OPERATOR,
  SIDECAR_NAME,
  SIDECAR_STARTUP_SECONDS,
  type SidecarConfig,
} from './sidecar.js';

/** A source of pods to look at (an informer cache); several may hold the same pod. */
export interface PodSource {
  list(): ReadonlyArray<V1Pod>;
  onChange(handler: () => void): void;
}

export interface SidecarProblemOptions {
  /** Opted-in pods by their own label, injected pods, and the pods of opted-in namespaces. */
  pods: readonly PodSource[];
  /** The namespace carries label earpiece.dev/inject=true. */
  namespaceOptedIn: (namespace: string) => boolean;
  toolsets: (namespace: string) => ToolSetLookup;
  /** Namespaces the webhook is never called for (kube-system, the operator's own, ...): not reported. */
  excludeNamespaces: readonly string[];
  sidecar: SidecarConfig;
  /** This operator's instance: a pod whose ToolSet is another release's is that release's to report. */
  instance?: string | undefined;
  events: EventRecorder;
  metrics?: OperatorMetrics;
  logger: Logger;
  clock?: Clock;
  /** Called with the ToolSets (`namespace/name`) whose list of pods with a problem changed. */
  onToolSetsChanged?: (keys: string[]) => void;
  /** Called once the first look after start() is done: every ToolSet's list is known from then on. */
  onFirstCheck?: () => void;
  /** Pod events are gathered for this long before the pods are looked at again. */
  debounceMs?: number;
  /** Looked at again this often without events: `not_ready` comes with time alone. */
  recheckMs?: number;
}

export const NOT_INJECTED = 'not_injected';
export const NOT_READY = 'not_ready';
/** An injected pod whose ToolSet was deleted: its sidecar runs on with the last tools it loaded. */
export const TOOLSET_DELETED = 'toolset_deleted';

export interface SidecarProblem {
  namespace: string;
  name: string;
  uid: string;
  /** `not_injected`, `not_ready`, or the kubelet's reason (ImagePullBackOff, CrashLoopBackOff, ...). */
  reason: string;
  /** What is wrong and what to do, as a sentence. */
  message: string;
  /** The ToolSet the pod has (or would get), for its status. */
  toolset: string | undefined;
}

/** Kubelet reasons that are only steps on the way up: a problem only once they outlast the startup window. */
const STARTING = new Set(['ContainerCreating', 'PodInitializing']);
/** Beyond the startup probe's own window: the kubelet may take a while to pull and start. */
const STARTUP_WINDOW_MS = (SIDECAR_STARTUP_SECONDS + 60) * 1000;

/**
 * What is wrong with the pod's sidecar, now, or undefined when it is fine (or still starting). The
 * startup window runs from the sidecar's first start (or the pod's start, while it has not started):
 * a sidecar that has restarted and is not ready is a problem at once, whatever its current state, so
 * a crash loop (waiting in back-off, running again, exiting again) stays one problem with one reason
 * (the last exit's) and one detail, rather than clearing at every restart. The kubelet's back-off
 * message (`back-off 20s restarting ...`) changes at every restart and is left out, so the Events
 * repeat the same message and add up.
 */
export function sidecarStatusProblem(pod: V1Pod, now: Date): { reason: string; detail: string } | undefined {
  const status = [
    ...(pod.status?.initContainerStatuses ?? []),
    ...(pod.status?.containerStatuses ?? []),
  ].find((s) => s.name === SIDECAR_NAME);
  if (!status) return undefined;
  const podStart = pod.status?.startTime ?? pod.metadata?.creationTimestamp ?? now;
  // Before any restart the current start is the first one.
  const since = new Date(status.state?.running?.startedAt ?? podStart);
  const late = now.getTime() - since.getTime() > STARTUP_WINDOW_MS;
  const waiting = status.state?.waiting;
  const exited = status.state?.terminated ?? status.lastState?.terminated;
  const restarted = (status.restartCount ?? 0) > 0;
  if (waiting) {
    const reason = waiting.reason ?? 'Waiting';
    if (reason === 'CrashLoopBackOff' || (restarted && STARTING.has(reason))) return crashed(exited);
    if (STARTING.has(reason)) return late ? { reason: NOT_READY, detail: `still ${reason}` } : undefined;
    return { reason, detail: waiting.message ?? '' };
  }
  if (status.state?.terminated || (restarted && !status.ready)) return crashed(exited);
  if (!status.ready && late) return { reason: NOT_READY, detail: 'running but not ready' };
  return undefined;
}

/** A sidecar that exited (and may be in back-off): named by its last exit, which restarts do not change. */
function crashed(exited: V1ContainerStateTerminated | undefined): { reason: string; detail: string } {
  if (!exited) return { reason: 'CrashLoopBackOff', detail: '' };
  return {
    reason: exited.reason ?? 'Error',
    detail: `exit code ${exited.exitCode}${exited.message ? `: ${exited.message}` : ''}`,
  };
}

/** The fix, by reason: what on-call should do first. */
function advice(pod: V1Pod, reason: string, detail: string, image: string | undefined): string {
  const name = pod.metadata?.name ?? '';
  const namespace = pod.metadata?.namespace ?? '';
  const why = detail ? ` (${detail})` : '';
  const holds = 'as a native sidecar it holds the app container back';
  switch (reason) {
    case 'ImagePullBackOff':
    case 'ErrImagePull':
    case 'InvalidImageName':
      return `the ${SIDECAR_NAME} image ${image ?? ''} cannot be pulled${why}; ${holds}. For a private registry set the chart's imagePullSecrets (or earpiece inject --image-pull-secret) to a Secret that exists in namespace ${namespace}`;
    case 'CrashLoopBackOff':
    case 'Error':
      return `the ${SIDECAR_NAME} sidecar keeps exiting${why}; ${holds}. See kubectl -n ${namespace} logs ${name} -c ${SIDECAR_NAME} --previous`;
    case 'OOMKilled':
      return `the ${SIDECAR_NAME} sidecar ran out of memory${why}; raise its limit (chart value injection.resources, or pod annotation earpiece.dev/proxy-memory-limit)`;
    case 'CreateContainerConfigError':
      return `the ${SIDECAR_NAME} sidecar cannot be created${why}; a Secret the ToolSet references is probably missing in namespace ${namespace}`;
    case NOT_READY:
      return `the ${SIDECAR_NAME} sidecar is not ready after ${STARTUP_WINDOW_MS / 1000} s${why}; its /readyz needs a valid ToolSet: see kubectl -n ${namespace} logs ${name} -c ${SIDECAR_NAME}`;
    default:
      return `the ${SIDECAR_NAME} sidecar is ${reason}${why}; see kubectl -n ${namespace} describe pod ${name}`;
  }
}

export class SidecarProblemReporter {
  private active = false;
  private timer: NodeJS.Timeout | undefined;
  private recheck: NodeJS.Timeout | undefined;
  /**
   * What each pod was last reported for (by uid): one Event per pod and reason, and for an uninjected pod
   * per message too, since its fix changes (no ToolSet selected it; now one does, and it needs recreating).
   * A sidecar's message is left out: a crash's detail may change at every restart.
   */
  private readonly reported = new Map<string, string>();
  private last: SidecarProblem[] = [];
  /** The pods have been looked at since start(): until then nobody knows which have a problem. */
  private checked = false;
  private readonly clock: Clock;

  constructor(private readonly o: SidecarProblemOptions) {
    this.clock = o.clock ?? systemClock;
    for (const source of o.pods) source.onChange(() => this.schedule());
  }

  /** The pods found at the last look. */
  get pods(): readonly SidecarProblem[] {
    return this.last;
  }

  /** The pods with a problem that belong to one ToolSet; undefined before the first look after start(). */
  forToolSet(namespace: string, name: string): SidecarProblem[] | undefined {
    if (!this.checked) return undefined;
    return this.last.filter((p) => p.namespace === namespace && p.toolset === name);
  }

  start(): void {
    this.active = true;
    this.schedule();
    this.recheck = setInterval(() => this.schedule(), this.o.recheckMs ?? 30_000);
    this.recheck.unref();
  }

  /**
   * Not leading any more: forgets what it found and zeroes its gauges. It tells no ToolSet anything:
   * what it found is still true, and the next leader's first look writes what is true then.
   */
  stop(): void {
    this.active = false;
    this.checked = false;
    clearTimeout(this.timer);
    clearInterval(this.recheck);
    this.timer = undefined;
    this.last = [];
    this.reported.clear();
    this.o.metrics?.uninjectedPods(0);
    this.o.metrics?.sidecarProblems([]);
  }

  /** Pod events from any source land here: the newest state is read when the timer fires. */
  private schedule(): void {
    if (!this.active || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.check();
    }, this.o.debounceMs ?? 1000);
    this.timer.unref();
  }

  /** Looks at every opted-in pod now, counts those with a problem, and reports the new ones. */
  async check(): Promise<SidecarProblem[]> {
    const excluded = new Set(this.o.excludeNamespaces);
    const now = this.clock.now();
    const seen = new Set<string>();
    const found: { pod: V1Pod; problem: SidecarProblem }[] = [];
    for (const source of this.o.pods) {
      for (const pod of source.list()) {
        const meta = pod.metadata;
        if (!meta?.uid || seen.has(meta.uid) || meta.deletionTimestamp) continue;
        seen.add(meta.uid);
        const namespace = meta.namespace ?? '';
        // The webhook is never asked about these pods, so deleting them would bring them back as they are.
        if (excluded.has(namespace)) continue;
        if (pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') continue;
        const problem = this.problemOf(pod, namespace, now);
        if (problem) found.push({ pod, problem });
      }
    }
    const problems = found.map((f) => f.problem);
    if (!this.active) return problems;
    const before = this.last;
    const first = !this.checked;
    this.last = problems;
    this.checked = true;
    this.o.metrics?.uninjectedPods(problems.filter((p) => p.reason === NOT_INJECTED).length);
    this.o.metrics?.sidecarProblems(problems);
    const present = new Set(problems.map((p) => p.uid));
    for (const uid of this.reported.keys()) if (!present.has(uid)) this.reported.delete(uid);
    if (first) this.o.onFirstCheck?.();
    else this.notify(before, problems);
    for (const { pod, problem } of found) {
      const report =
        problem.reason === NOT_INJECTED ? `${problem.reason}: ${problem.message}` : problem.reason;
      if (this.reported.get(problem.uid) === report) continue;
      this.reported.set(problem.uid, report);
      this.o.logger.warn(
        { pod: problem.name, namespace: problem.namespace, reason: problem.reason, why: problem.message },
        problem.reason === NOT_INJECTED
          ? 'Found uninjected pod'
          : problem.reason === TOOLSET_DELETED
            ? 'Found pod whose ToolSet was deleted'
            : 'Found pod whose sidecar is not ready',
      );
      await this.o.events.record(
        ownerOf(pod),
        'Warning',
        problem.reason === NOT_INJECTED
          ? 'UninjectedPod'
          : problem.reason === TOOLSET_DELETED
            ? 'ToolSetDeleted'
            : 'SidecarNotReady',
        problem.reason === NOT_INJECTED
          ? `pod ${problem.name} is opted in (${pod.metadata?.labels?.[LABEL_INJECT] === 'true' ? '' : 'by its namespace, '}${LABEL_INJECT}=true) but runs without the earpiece sidecar: ${problem.message}`
          : `pod ${problem.name}: ${problem.message}`,
      );
    }
    return problems;
  }

  private problemOf(pod: V1Pod, namespace: string, now: Date): SidecarProblem | undefined {
    const meta = pod.metadata ?? {};
    const base = { namespace, name: meta.name ?? '', uid: meta.uid ?? '' };
    if (!hasSidecar(pod.spec)) {
      const label = meta.labels?.[LABEL_INJECT];
      const optedIn = label === 'true' || (label !== 'false' && this.o.namespaceOptedIn(namespace));
      if (!optedIn) return undefined;
      const selected = selectToolSet(meta, namespace, this.o.toolsets(namespace));
      const toolset = selected.ok ? selected.toolset : undefined;
      return {
        ...base,
        reason: NOT_INJECTED,
        message: this.why(pod, namespace, toolset),
        toolset: toolset?.metadata.name,
      };
    }
    const injection = readInjection({ metadata: { annotations: meta.annotations }, spec: pod.spec });
    const injectedFor = injection?.toolset;
    const injectedToolSet =
      injectedFor === undefined ? undefined : this.o.toolsets(namespace).byName(injectedFor);
    // One being deleted is gone already, to the controller too (a finalizer may hold it for long).
    const gone =
      injectedToolSet === undefined ||
      (injectedToolSet.metadata as { deletionTimestamp?: unknown }).deletionTimestamp != null;
    // A sidecar is reported by the release whose operator writes its ToolSet's status (the ToolSet's label,
    // which a hand-over moves); once the ToolSet is gone, by the release whose webhook injected it, as the
    // pod records (pods injected before that record: by every release that watches them).
    const labelled = otherOperator(injectedToolSet, this.o.instance);
    const owner = gone ? (injection?.injectedBy ?? labelled) : labelled;
    if (this.o.instance !== undefined && owner !== undefined && owner !== this.o.instance) return undefined;
    const problem = sidecarStatusProblem(pod, now);
    if (!problem && injectedFor !== undefined && gone) {
      // Deleted (or renamed) while the pod runs: no ToolSet is left to carry a condition, and the
      // sidecar goes on serving what it last loaded.
      return {
        ...base,
        reason: TOOLSET_DELETED,
        message: `ToolSet ${injectedFor}, which its ${SIDECAR_NAME} sidecar was injected for, no longer exists: the sidecar goes on with the tools it last loaded. Delete the pod (or roll out its workload) to have it injected as things are now`,
        toolset: injectedFor,
      };
    }
    if (!problem) return undefined;
    const sidecar = [...(pod.spec?.initContainers ?? []), ...(pod.spec?.containers ?? [])].find(
      (c) => c.name === SIDECAR_NAME,
    );
    return {
      ...base,
      reason: problem.reason,
      message: advice(pod, problem.reason, problem.detail, sidecar?.image),
      toolset: injectedFor,
    };
  }

  /** The webhook's own decision for this pod, now: a skip reason, or "it would be injected". `toolset`: the one that selects it. */
  private why(pod: V1Pod, namespace: string, toolset: ToolSet | undefined): string {
    const result = buildInjection(
      { metadata: { labels: pod.metadata?.labels, annotations: pod.metadata?.annotations }, spec: pod.spec },
      {
        namespace,
        namespaceOptedIn: this.o.namespaceOptedIn(namespace),
        toolsets: this.o.toolsets(namespace),
        sidecar: this.o.sidecar,
        instance: this.o.instance,
      },
    );
    if (result.ok) {
      return 'it would be injected now, so the webhook did not see it (unreachable when the pod was created?); delete the pod so its controller recreates it with the sidecar';
    }
    if (result.reason === 'other_operator') {
      // That release's webhook should have injected it: its label may outlive the release (an uninstall).
      const name = toolset?.metadata.name;
      const owner = otherOperator(toolset, this.o.instance);
      return `ToolSet ${name} is labelled ${LABEL_OPERATOR}=${owner}, and that operator's webhook did not inject the pod: is its release still installed? To let this operator take the ToolSet: kubectl -n ${namespace} label toolset ${name} ${LABEL_OPERATOR}-`;
    }
    return result.message;
  }

  /** Tells which ToolSets' lists changed, so their status is written again. */
  private notify(before: readonly SidecarProblem[], after: readonly SidecarProblem[]): void {
    if (!this.o.onToolSetsChanged) return;
    const lines = (list: readonly SidecarProblem[]) => {
      const byToolSet = new Map<string, string[]>();
      for (const p of list) {
        if (!p.toolset) continue;
        const key = `${p.namespace}/${p.toolset}`;
        byToolSet.set(key, [...(byToolSet.get(key) ?? []), `${p.name}:${p.reason}`]);
      }
      return byToolSet;
    };
    const old = lines(before);
    const now = lines(after);
    const changed = [...new Set([...old.keys(), ...now.keys()])].filter(
      (k) => (old.get(k) ?? []).sort().join() !== (now.get(k) ?? []).sort().join(),
    );
    if (changed.length) this.o.onToolSetsChanged(changed);
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
