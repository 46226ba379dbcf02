/**
 * Opted-in pods running without the sidecar: counted in earpiece_uninjected_pods and reported once each
 * with an Event on their owner, by the leader only.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { toolsetLookup } from '../../src/operator/select.js';
import { DEFAULT_SIDECAR } from '../../src/operator/sidecar.js';
import { ControlPlane } from '../../src/operator/start.js';
import { createLogger } from '../../src/telemetry/log.js';
import { OperatorMetrics } from '../../src/telemetry/operator-metrics.js';
import type { ToolSet } from '../../src/toolset/index.js';
import { injectBackend } from '../support/backend-pod.js';
import { type FakeApiServer, type KObject, startFakeApiServer } from '../support/fake-apiserver.js';
import { capturingLogger } from '../tools/helpers.js';

const NS = 'voice';
const logger = createLogger('test', 'silent');
const POLL = { timeout: 10_000, interval: 20 };

let api: FakeApiServer;
const planes: ControlPlane[] = [];

beforeEach(async () => {
  api = await startFakeApiServer({ bookmarkIntervalMs: 200 });
});
afterEach(async () => {
  await Promise.all(planes.splice(0).map((p) => p.stop()));
  await api.close();
});

function controlPlane(
  user: string,
  metrics: OperatorMetrics,
  leaderElection = false,
  timing: { problemDebounceMs?: number } = {},
  log = logger,
): ControlPlane {
  const plane = new ControlPlane({
    kc: api.kubeConfig(user),
    config: {
      namespace: 'earpiece-system',
      podName: user,
      watchNamespaces: [],
      excludeNamespaces: ['kube-system', 'earpiece-system'],
      leaderElection,
      leaseName: 'earpiece-operator',
      sidecar: DEFAULT_SIDECAR,
    },
    logger: log,
    metrics,
    timing: {
      informerDelay: (ms) => sleep(Math.min(ms, 50)),
      retryBaseMs: 20,
      problemDebounceMs: 20,
      problemRecheckMs: 100,
      leaseDurationMs: 1000,
      renewDeadlineMs: 700,
      retryPeriodMs: 100,
      ...timing,
    },
  });
  planes.push(plane);
  return plane;
}

async function gauge(metrics: OperatorMetrics): Promise<number> {
  const line = (await metrics.metrics()).split('\n').find((l) => l.startsWith('earpiece_uninjected_pods '));
  return Number(line?.split(' ')[1]);
}

function replicaSet(name: string): KObject {
  return api.create('replicasets', {
    apiVersion: 'apps/v1',
    kind: 'ReplicaSet',
    metadata: { name, namespace: NS },
    spec: { selector: { matchLabels: { app: 'unmute-backend' } } },
  });
}

function pod(
  name: string,
  owner: KObject,
  labels: Record<string, string>,
  extra: Partial<KObject> & { annotations?: Record<string, string> } = {},
  namespace = NS,
): KObject {
  const { annotations, ...rest } = extra;
  return api.create('pods', {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace,
      labels,
      ...(annotations ? { annotations } : {}),
      ownerReferences: [
        {
          apiVersion: 'apps/v1',
          kind: 'ReplicaSet',
          name: owner.metadata.name!,
          uid: owner.metadata.uid!,
          controller: true,
        },
      ],
    },
    spec: {
      containers: [
        { name: 'backend', image: 'unmute', env: [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }] },
      ],
    },
    status: { phase: 'Running' },
    ...rest,
  });
}

/** A pod's status whose sidecar, started ten minutes ago, cannot pull its image. */
function pullBackOff(): Record<string, unknown> {
  return {
    phase: 'Pending',
    startTime: new Date(Date.now() - 600_000).toISOString(),
    initContainerStatuses: [
      {
        name: 'earpiece-proxy',
        image: 'ghcr.io/earpiece-dev/earpiece:0.1.0',
        imageID: '',
        ready: false,
        restartCount: 0,
        started: false,
        state: { waiting: { reason: 'ImagePullBackOff', message: 'Back-off pulling image' } },
      },
    ],
  };
}

const OPTED_IN = { app: 'unmute-backend', 'earpiece.dev/inject': 'true' };

async function readyToolSet(): Promise<void> {
  api.create('toolsets', {
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'assistant', namespace: NS },
    spec: { selector: { matchLabels: { app: 'unmute-backend' } }, tools: [{ name: 'now', builtin: 'time' }] },
  });
  await expect.poll(() => api.get('configmaps', NS, 'earpiece-toolset-assistant'), POLL).toBeDefined();
}

/** The operator started (and leading), with ToolSet `assistant` loaded: pods can be injected for it. */
async function operatorWithToolSet(metrics: OperatorMetrics): Promise<ControlPlane> {
  const plane = controlPlane('operator', metrics);
  await plane.start();
  await readyToolSet();
  await expect.poll(() => plane.lookup(NS).config('assistant'), POLL).toBeDefined();
  return plane;
}

describe('uninjected pods', () => {
  it('counts opted-in pods without the sidecar and reports each once on its owner', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = await operatorWithToolSet(metrics);
    await expect.poll(() => plane.toolsets.get('assistant', NS)?.status, POLL).toBeDefined();

    const rs = replicaSet('backend-7d9f');
    pod('backend-7d9f-a', rs, OPTED_IN);
    // A pod the webhook did inject, a finished one, and one that never asked.
    const injectedTemplate = injectBackend(NS, plane.lookup(NS), OPTED_IN);
    pod('backend-7d9f-b', rs, injectedTemplate.metadata!.labels!, { spec: injectedTemplate.spec });
    pod('backend-7d9f-c', rs, OPTED_IN, { status: { phase: 'Succeeded' } });
    pod('backend-7d9f-d', rs, { app: 'unmute-backend' });

    await expect.poll(() => gauge(metrics), POLL).toBe(1);
    await expect.poll(() => api.list('events', NS).length, POLL).toBe(1);
    const [event] = api.list('events', NS);
    expect(event).toMatchObject({
      type: 'Warning',
      reason: 'UninjectedPod',
      involvedObject: { kind: 'ReplicaSet', name: 'backend-7d9f', uid: rs.metadata.uid },
    });
    expect(event!.message).toContain('pod backend-7d9f-a is opted in');
    expect(event!.message).toContain('the webhook did not see it');
    expect(plane.sidecarProblems.pods.map((p) => p.name)).toEqual(['backend-7d9f-a']);

    // A second one, which no ToolSet selects: counted, and the Event says why.
    pod('backend-7d9f-e', rs, { app: 'other', 'earpiece.dev/inject': 'true' });
    await expect.poll(() => gauge(metrics), POLL).toBe(2);
    await expect.poll(() => api.list('events', NS).length, POLL).toBe(2);
    const second = api.list('events', NS).find((e) => String(e.message).includes('backend-7d9f-e'));
    expect(second!.message).toContain('no ToolSet in namespace voice selects this pod');

    // Re-counting reports nothing new; pods that go leave the count.
    await plane.sidecarProblems.check();
    expect(api.list('events', NS)).toHaveLength(2);
    api.delete('pods', NS, 'backend-7d9f-a');
    api.delete('pods', NS, 'backend-7d9f-e');
    await expect.poll(() => gauge(metrics), POLL).toBe(0);
  });

  it('reports a pod again when what to do changed: created before its ToolSet, it then needs recreating', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = controlPlane('operator', metrics);
    await plane.start();
    const rs = replicaSet('backend-early');
    pod('backend-early-a', rs, OPTED_IN);
    await expect.poll(() => api.list('events', NS).length, POLL).toBe(1);
    expect(api.list('events', NS)[0]!.message).toContain('no ToolSet in namespace voice selects this pod');

    await readyToolSet();
    await expect.poll(() => plane.lookup(NS).config('assistant'), POLL).toBeDefined();
    await plane.sidecarProblems.check();
    const messages = () => api.list('events', NS).map((e) => String(e.message));
    await expect.poll(() => messages().length, POLL).toBe(2);
    expect(messages()[1]).toContain('it would be injected now');
    // The same advice is not repeated.
    await plane.sidecarProblems.check();
    expect(messages()).toHaveLength(2);
  });

  it('a ToolSet labelled for another release: that release reports its sidecars; a pod it never injected is reported here, naming the label', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = controlPlane('operator', metrics);
    await plane.start();
    const canary = api.create('toolsets', {
      apiVersion: 'earpiece.dev/v1alpha1',
      kind: 'ToolSet',
      metadata: { name: 'canary', namespace: NS, labels: { 'earpiece.dev/operator': 'voice-canary' } },
      spec: {
        selector: { matchLabels: { app: 'canary-backend' } },
        tools: [{ name: 'now', builtin: 'time' }],
      },
    }) as unknown as ToolSet;
    await expect.poll(() => plane.toolsets.get('canary', NS), POLL).toBeDefined();
    const rs = replicaSet('backend-3');
    const labels = { app: 'canary-backend', 'earpiece.dev/inject': 'true' };
    // Injected by the canary's webhook, its sidecar waiting on its image: the canary's operator reports it.
    const template = injectBackend(NS, toolsetLookup([canary], NS), labels);
    pod('backend-3-injected', rs, template.metadata!.labels!, {
      spec: template.spec,
      status: pullBackOff(),
    });
    // Never injected, although the canary's webhook should have: reported here, with the way out.
    pod('backend-3-missed', rs, labels);
    await expect
      .poll(() => plane.sidecarProblems.pods.map((p) => p.name), POLL)
      .toEqual(['backend-3-missed']);
    await plane.sidecarProblems.check();
    expect(plane.sidecarProblems.pods.map((p) => p.name)).toEqual(['backend-3-missed']);
    expect(plane.sidecarProblems.pods[0]?.message).toBe(
      "ToolSet canary is labelled earpiece.dev/operator=voice-canary, and that operator's webhook did not inject the pod: is its release still installed? To let this operator take the ToolSet: kubectl -n voice label toolset canary earpiece.dev/operator-",
    );
  });

  it('leaves out namespaces the webhook is never called for', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = controlPlane('operator', metrics);
    await plane.start();
    const rs = replicaSet('backend-2');
    // Opted in by label, but the webhook configuration never sends pods of these namespaces.
    pod('coredns-a', rs, OPTED_IN, {}, 'kube-system');
    pod('earpiece-a', rs, OPTED_IN, {}, 'earpiece-system');
    pod('backend-2-a', rs, OPTED_IN);
    await expect.poll(() => plane.optedInPods.list().length, POLL).toBe(3);
    await expect.poll(() => plane.sidecarProblems.pods.map((p) => p.name), POLL).toEqual(['backend-2-a']);
    expect(await gauge(metrics)).toBe(1);
    expect(api.list('events', 'kube-system')).toEqual([]);
    expect(api.list('events', 'earpiece-system')).toEqual([]);
  });

  it('is reported by the leader only', async () => {
    const leaderMetrics = new OperatorMetrics({ defaultMetrics: false });
    const followerMetrics = new OperatorMetrics({ defaultMetrics: false });
    const leader = controlPlane('replica-1', leaderMetrics, true);
    await leader.start();
    await expect.poll(() => leader.isLeader, POLL).toBe(true);
    const follower = controlPlane('replica-2', followerMetrics, true);
    await follower.start();
    const rs = replicaSet('backend-1');
    pod('backend-1-a', rs, OPTED_IN);
    await expect.poll(() => gauge(leaderMetrics), POLL).toBe(1);
    await expect.poll(() => follower.optedInPods.list(NS).length, POLL).toBe(1);
    await sleep(100);
    expect(await gauge(followerMetrics)).toBe(0);
    expect(api.list('events', NS).map((e) => e.reportingInstance)).toEqual(['replica-1']);
  });
});

async function problems(metrics: OperatorMetrics): Promise<Record<string, number>> {
  const lines = (await metrics.metrics())
    .split('\n')
    .filter((l) => l.startsWith('earpiece_sidecar_problem_pods{'));
  return Object.fromEntries(
    lines.map((l) => {
      const [series, value] = l.split(' ');
      return [series!.replace('earpiece_sidecar_problem_pods', ''), Number(value)];
    }),
  );
}

const sidecarsReady = (name = 'assistant') =>
  (
    api.get('toolsets', NS, name)?.status as { conditions?: Record<string, string>[] } | undefined
  )?.conditions?.find((c) => c.type === 'SidecarsReady');

describe('sidecar problems', () => {
  it('reports a pod opted in by its namespace label and created without the sidecar', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = controlPlane('operator', metrics);
    await plane.start();
    api.create('namespaces', {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: NS, labels: { 'earpiece.dev/inject': 'true' } },
    });
    await readyToolSet();
    await expect.poll(() => plane.lookup(NS).config('assistant'), POLL).toBeDefined();
    await expect.poll(() => plane.namespacePods.watched, POLL).toEqual([NS]);

    const rs = replicaSet('backend-9');
    // No label of its own: only its namespace opts it in. One labelled "false" stays out.
    pod('backend-9-a', rs, { app: 'unmute-backend' });
    pod('backend-9-b', rs, { app: 'unmute-backend', 'earpiece.dev/inject': 'false' });

    await expect
      .poll(() => problems(metrics), POLL)
      .toEqual({ '{namespace="voice",reason="not_injected"}': 1 });
    expect(await gauge(metrics)).toBe(1);
    await expect.poll(() => api.list('events', NS).length, POLL).toBe(1);
    const [event] = api.list('events', NS);
    expect(event).toMatchObject({
      type: 'Warning',
      reason: 'UninjectedPod',
      involvedObject: { kind: 'ReplicaSet', name: 'backend-9' },
    });
    expect(event!.message).toBe(
      'pod backend-9-a is opted in (by its namespace, earpiece.dev/inject=true) but runs without the earpiece sidecar: it would be injected now, so the webhook did not see it (unreachable when the pod was created?); delete the pod so its controller recreates it with the sidecar',
    );
    await expect
      .poll(() => sidecarsReady(), POLL)
      .toMatchObject({
        status: 'False',
        reason: 'SidecarProblems',
        message: expect.stringContaining(
          'pods backend-9-a (not_injected) have no working earpiece-proxy sidecar',
        ),
      });

    // The namespace loses its label: its pods are no longer watched nor reported.
    const ns = api.get('namespaces', undefined, NS)!;
    api.update('namespaces', { ...ns, metadata: { ...ns.metadata, labels: {} } });
    await expect.poll(() => plane.namespacePods.watched, POLL).toEqual([]);
    await expect.poll(() => problems(metrics), POLL).toEqual({});
    // Nothing reports the pod now, but no pod runs the ToolSet's sidecar either, and the ToolSet names the
    // pods its selector matches, with the label of the one opted out.
    await expect.poll(() => sidecarsReady()?.reason, POLL).toBe('NoPods');
    expect(sidecarsReady()).toMatchObject({
      status: 'False',
      message: expect.stringMatching(
        /; pods backend-9-a, backend-9-b \(earpiece\.dev\/inject: "false"\) match spec\.selector but are not opted in$/,
      ),
    });
  });

  it('says once that a namespace labelled for injection is one this release does not serve', async () => {
    const captured = capturingLogger('warn');
    const plane = controlPlane(
      'operator',
      new OperatorMetrics({ defaultMetrics: false }),
      false,
      {},
      captured.logger,
    );
    await plane.start();
    const label = { 'earpiece.dev/inject': 'true' };
    api.create('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: NS, labels: label } });
    api.create('namespaces', {
      apiVersion: 'v1',
      kind: 'Namespace',
      metadata: { name: 'kube-system', labels: label },
    });
    await expect.poll(() => plane.namespacePods.watched, POLL).toEqual([NS]);
    const refusals = () =>
      captured.lines().filter((l) => l.msg.includes('does not serve it')) as unknown as {
        namespace: string;
      }[];
    await expect.poll(() => refusals().map((l) => l.namespace), POLL).toEqual(['kube-system']);
    // Another change to the labelled namespaces does not repeat it.
    const ns = api.get('namespaces', undefined, NS)!;
    api.update('namespaces', { ...ns, metadata: { ...ns.metadata, labels: {} } });
    await expect.poll(() => plane.namespacePods.watched, POLL).toEqual([]);
    expect(refusals()).toHaveLength(1);
  });

  it('reports an injected pod whose ToolSet was deleted: its sidecar runs on with stale tools', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = await operatorWithToolSet(metrics);
    const rs = replicaSet('backend-5');
    const template = injectBackend(NS, plane.lookup(NS), OPTED_IN);
    pod('backend-5-a', rs, template.metadata!.labels!, { spec: template.spec });
    await expect.poll(() => sidecarsReady()?.reason, POLL).toBe('SidecarsReady');
    expect(await problems(metrics)).toEqual({});

    api.delete('toolsets', NS, 'assistant');
    await expect
      .poll(() => problems(metrics), POLL)
      .toEqual({ '{namespace="voice",reason="toolset_deleted"}': 1 });
    await expect.poll(() => api.list('events', NS).length, POLL).toBe(1);
    expect(api.list('events', NS)[0]).toMatchObject({
      type: 'Warning',
      reason: 'ToolSetDeleted',
      involvedObject: { kind: 'ReplicaSet', name: 'backend-5' },
      message:
        'pod backend-5-a: ToolSet assistant, which its earpiece-proxy sidecar was injected for, no longer exists: the sidecar goes on with the tools it last loaded. Delete the pod (or roll out its workload) to have it injected as things are now',
    });
    // Not an uninjected pod.
    expect(await gauge(metrics)).toBe(0);
  });

  it("reports a sidecar for its ToolSet's operator, and once the ToolSet is gone for the release that injected it", async () => {
    // Two releases both watch every namespace: without the pod's record of who injected it, a deleted
    // ToolSet (and its operator label with it) would leave both reporting the pod. While the ToolSet
    // exists its label decides, as it decides who writes the status (a hand-over moves it).
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = await operatorWithToolSet(metrics);
    const rs = replicaSet('backend-6');
    const ours = injectBackend(NS, plane.lookup(NS), OPTED_IN, DEFAULT_SIDECAR, undefined, 'earpiece');
    // Injected while the ToolSet was labelled for the canary's operator, by the canary's webhook.
    const assistant = plane.toolsets.get('assistant', NS) as unknown as ToolSet;
    const canaryLabelled = toolsetLookup(
      [
        {
          ...assistant,
          metadata: { ...assistant.metadata, labels: { 'earpiece.dev/operator': 'voice-canary' } },
        },
      ],
      NS,
      () => plane.lookup(NS).config('assistant'),
    );
    const theirs = injectBackend(NS, canaryLabelled, OPTED_IN, DEFAULT_SIDECAR, undefined, 'voice-canary');
    expect(ours.metadata?.annotations?.['earpiece.dev/injected-by']).toBe('earpiece');
    pod('backend-6-ours', rs, ours.metadata!.labels!, {
      spec: ours.spec,
      annotations: ours.metadata!.annotations!,
    });
    // The canary's sidecar cannot pull its image, and the ToolSet was handed over to this operator since.
    pod('backend-6-theirs', rs, theirs.metadata!.labels!, {
      spec: theirs.spec,
      annotations: theirs.metadata!.annotations!,
      status: pullBackOff(),
    });
    await expect.poll(() => plane.injectedPods.list(NS).length, POLL).toBe(2);
    await expect
      .poll(() => plane.sidecarProblems.pods.map((p) => [p.name, p.reason]), POLL)
      .toEqual([['backend-6-theirs', 'ImagePullBackOff']]);

    api.delete('toolsets', NS, 'assistant');
    await expect
      .poll(() => problems(metrics), POLL)
      .toEqual({ '{namespace="voice",reason="toolset_deleted"}': 1 });
    await plane.sidecarProblems.check();
    expect(plane.sidecarProblems.pods.map((p) => [p.name, p.reason])).toEqual([
      ['backend-6-ours', 'toolset_deleted'],
    ]);
  });

  it('reports an injected pod whose sidecar waits in ImagePullBackOff, until it runs', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = await operatorWithToolSet(metrics);
    await expect.poll(() => sidecarsReady()?.reason, POLL).toBe('NoPods');

    const rs = replicaSet('backend-3');
    const template = injectBackend(NS, plane.lookup(NS), OPTED_IN);
    pod('backend-3-a', rs, template.metadata!.labels!, {
      spec: template.spec,
      status: { phase: 'Pending' },
    });
    const setStatus = (status: Record<string, unknown>) =>
      api.update('pods', { ...api.get('pods', NS, 'backend-3-a')!, status }, 'status');
    const proxy = (state: Record<string, unknown>, ready: boolean) => ({
      phase: ready ? 'Running' : 'Pending',
      startTime: new Date().toISOString(),
      initContainerStatuses: [
        {
          name: 'earpiece-proxy',
          image: 'ghcr.io/earpiece-dev/earpiece:0.1.0',
          imageID: '',
          ready,
          restartCount: 0,
          started: ready,
          state,
        },
      ],
    });
    setStatus(
      proxy(
        {
          waiting: {
            reason: 'ImagePullBackOff',
            message: 'Back-off pulling image "ghcr.io/earpiece-dev/earpiece:0.1.0"',
          },
        },
        false,
      ),
    );
    await expect
      .poll(() => problems(metrics), POLL)
      .toEqual({
        '{namespace="voice",reason="ImagePullBackOff"}': 1,
      });
    expect(await gauge(metrics)).toBe(0);
    await expect.poll(() => api.list('events', NS).length, POLL).toBe(1);
    const [event] = api.list('events', NS);
    expect(event).toMatchObject({
      type: 'Warning',
      reason: 'SidecarNotReady',
      involvedObject: { kind: 'ReplicaSet', name: 'backend-3', uid: rs.metadata.uid },
    });
    expect(event!.message).toBe(
      `pod backend-3-a: the earpiece-proxy image ghcr.io/earpiece-dev/earpiece:0.1.0 cannot be pulled (Back-off pulling image "ghcr.io/earpiece-dev/earpiece:0.1.0"); as a native sidecar it holds the app container back. For a private registry set the chart's imagePullSecrets (or earpiece inject --image-pull-secret) to a Secret that exists in namespace ${NS}`,
    );
    await expect
      .poll(() => sidecarsReady(), POLL)
      .toMatchObject({
        status: 'False',
        message: expect.stringMatching(/^pods backend-3-a \(ImagePullBackOff\) have no working/),
      });
    expect(plane.sidecarProblems.pods.map((p) => [p.name, p.reason, p.toolset])).toEqual([
      ['backend-3-a', 'ImagePullBackOff', 'assistant'],
    ]);

    // Another reason for the same pod is reported again.
    setStatus(proxy({ waiting: { reason: 'CrashLoopBackOff', message: 'back-off 10s restarting' } }, false));
    await expect
      .poll(() => problems(metrics), POLL)
      .toEqual({
        '{namespace="voice",reason="CrashLoopBackOff"}': 1,
      });
    await expect
      .poll(() => api.list('events', NS).map((e) => e.reason), POLL)
      .toEqual(['SidecarNotReady', 'SidecarNotReady']);
    expect(
      api
        .list('events', NS)
        .map((e) => e.message)
        .at(-1),
    ).toContain(`kubectl -n ${NS} logs backend-3-a -c earpiece-proxy --previous`);

    // The image is pulled and the proxy runs: no longer reported, and the ToolSet says so.
    setStatus(proxy({ running: { startedAt: new Date().toISOString() } }, true));
    await expect.poll(() => problems(metrics), POLL).toEqual({});
    await expect.poll(() => sidecarsReady()?.status, POLL).toBe('True');
    expect(plane.sidecarProblems.pods).toEqual([]);
  });

  it('reports a sidecar that runs but is not ready past its startup window', async () => {
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const plane = await operatorWithToolSet(metrics);
    const rs = replicaSet('backend-4');
    const template = injectBackend(NS, plane.lookup(NS), OPTED_IN);
    const status = (startedAt: Date) => ({
      phase: 'Pending',
      initContainerStatuses: [
        {
          name: 'earpiece-proxy',
          image: 'earpiece',
          imageID: '',
          ready: false,
          restartCount: 0,
          state: { running: { startedAt: startedAt.toISOString() } },
        },
      ],
    });
    pod('backend-4-a', rs, template.metadata!.labels!, { spec: template.spec });
    pod('backend-4-b', rs, template.metadata!.labels!, { spec: template.spec });
    const set = (name: string, s: Record<string, unknown>) =>
      api.update('pods', { ...api.get('pods', NS, name)!, status: s }, 'status');
    set('backend-4-a', status(new Date(Date.now() - 10 * 60_000)));
    // Started a moment ago: still within its window.
    set('backend-4-b', status(new Date()));
    await expect.poll(() => problems(metrics), POLL).toEqual({ '{namespace="voice",reason="not_ready"}': 1 });
    expect(plane.sidecarProblems.pods.map((p) => p.name)).toEqual(['backend-4-a']);
  });
});

/** The SidecarsReady conditions of the ToolSet's status writes since write number `from`. */
const sidecarsReadyWrites = (from: number) =>
  api.writes
    .slice(from)
    .filter((w) => w.resource === 'toolsets' && w.subresource === 'status' && w.changed)
    .map(
      (w) =>
        (w.object.status as { conditions?: Record<string, string>[] } | undefined)?.conditions?.find(
          (c) => c.type === 'SidecarsReady',
        ) ?? null,
    );

describe('SidecarsReady across leaders', () => {
  it('is neither written True at a leader start before its first look at the pods, nor written at all at a step-down', async () => {
    const a = controlPlane('operator-a', new OperatorMetrics({ defaultMetrics: false }));
    await a.start();
    await readyToolSet();
    pod('backend-1-a', replicaSet('backend-1'), OPTED_IN);
    await expect.poll(() => sidecarsReady()?.reason, POLL).toBe('SidecarProblems');
    const found = sidecarsReady();

    // Stepping down says nothing about the pods: backend-1-a still runs without its sidecar.
    let from = api.writes.length;
    await a.stop();
    await sleep(100);
    expect(sidecarsReadyWrites(from)).toEqual([]);

    // The next leader reconciles every ToolSet at once, well before its first look at the pods: the
    // condition stays as it was (same lastTransitionTime), and after the look there is nothing to change.
    from = api.writes.length;
    const metrics = new OperatorMetrics({ defaultMetrics: false });
    const b = controlPlane('operator-b', metrics, false, { problemDebounceMs: 500 });
    await b.start();
    await expect.poll(() => gauge(metrics), POLL).toBe(1);
    await sleep(200);
    expect(sidecarsReadyWrites(from)).toEqual([]);
    expect(sidecarsReady()).toEqual(found);
    await b.stop();

    // Gone while nobody led: the next leader's first look writes that, though its list did not change
    // (no pod left, so no pod runs the sidecar).
    api.delete('pods', NS, 'backend-1-a');
    from = api.writes.length;
    const c = controlPlane('operator-c', new OperatorMetrics({ defaultMetrics: false }));
    await c.start();
    await expect.poll(() => sidecarsReady()?.reason, POLL).toBe('NoPods');
    expect(sidecarsReadyWrites(from).map((s) => s?.reason)).toEqual(['NoPods']);
  });
});

describe('a crash-looping sidecar', () => {
  it('keeps SidecarsReady False through its restarts, named by its last exit, with one Event that adds up', async () => {
    const plane = await operatorWithToolSet(new OperatorMetrics({ defaultMetrics: false }));
    await expect.poll(() => sidecarsReady()?.reason, POLL).toBe('NoPods');
    const rs = replicaSet('backend-5');
    const template = injectBackend(NS, plane.lookup(NS), OPTED_IN);
    pod('backend-5-a', rs, template.metadata!.labels!, { spec: template.spec, status: { phase: 'Pending' } });
    // A pod runs the ToolSet's sidecar now (not yet a crashing one).
    await expect.poll(() => sidecarsReady()?.status, POLL).toBe('True');
    const startTime = new Date(Date.now() - 3600_000).toISOString();
    /** What the kubelet reports, and the reporter's look at it once the cache has it. */
    const kubelet = async (restartCount: number, state: Record<string, unknown>, ready = false) => {
      const updated = api.update(
        'pods',
        {
          ...api.get('pods', NS, 'backend-5-a')!,
          status: {
            phase: ready ? 'Running' : 'Pending',
            startTime,
            initContainerStatuses: [
              {
                name: 'earpiece-proxy',
                image: 'earpiece',
                imageID: '',
                ready,
                started: ready,
                restartCount,
                state,
                ...(restartCount > 0
                  ? {
                      lastState: {
                        terminated: {
                          exitCode: 1,
                          reason: 'Error',
                          startedAt: startTime,
                          finishedAt: startTime,
                        },
                      },
                    }
                  : {}),
              },
            ],
          },
        },
        'status',
      );
      await expect
        .poll(() => plane.injectedPods.get('backend-5-a', NS)?.metadata?.resourceVersion, POLL)
        .toBe(updated.metadata.resourceVersion);
      return (await plane.sidecarProblems.check()).map((p) => p.reason);
    };
    const from = api.writes.length;
    // Each restart: back-off (its message doubling), then running again and not ready, then exiting.
    const seen: string[][] = [];
    for (let restart = 1; restart <= 4; restart++) {
      seen.push(
        await kubelet(restart, {
          waiting: {
            reason: 'CrashLoopBackOff',
            message: `back-off ${10 * 2 ** (restart - 1)}s restarting failed container=earpiece-proxy pod=backend-5-a`,
          },
        }),
      );
      seen.push(await kubelet(restart, { running: { startedAt: new Date().toISOString() } }));
    }
    expect(seen).toEqual(Array(8).fill(['Error']));
    await sleep(200);
    const writes = sidecarsReadyWrites(from);
    expect(writes.map((c) => c?.status)).toEqual(['False']);
    expect(writes[0]!.message).toMatch(/^pods backend-5-a \(Error\) have no working/);
    const events = () => api.list('events', NS).filter((e) => e.reason === 'SidecarNotReady');
    expect(events()).toHaveLength(1);
    expect(events()[0]!.message).toBe(
      `pod backend-5-a: the earpiece-proxy sidecar keeps exiting (exit code 1); as a native sidecar it holds the app container back. See kubectl -n ${NS} logs backend-5-a -c earpiece-proxy --previous`,
    );

    // Ready at last, then crashing again later: the same Event again, so its count goes up.
    await kubelet(5, { running: { startedAt: new Date().toISOString() } }, true);
    await expect.poll(() => sidecarsReady()?.status, POLL).toBe('True');
    await kubelet(6, { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 5m0s restarting failed' } });
    await expect.poll(() => sidecarsReady()?.status, POLL).toBe('False');
    await expect.poll(() => events().map((e) => e.count), POLL).toEqual([2]);
  });
});
