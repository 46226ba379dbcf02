/**
 * The ToolSet controller end to end: real @kubernetes/client-node informers, queue, server-side apply
 * and status writes against the in-process API server stand-in (test/support/fake-apiserver.ts).
 * Bounds are hang guards in seconds.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { connect as tlsConnect } from 'node:tls';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import type { Clock } from '../../src/operator/clock.js';
import { CONFIG_KEY } from '../../src/operator/configmap.js';
import { toolSetKey } from '../../src/operator/controller.js';
import { DEFAULT_SIDECAR, type SidecarConfig } from '../../src/operator/sidecar.js';
import { ControlPlane, startOperator, type Timing } from '../../src/operator/start.js';
import { createLogger } from '../../src/telemetry/log.js';
import { OperatorMetrics } from '../../src/telemetry/operator-metrics.js';
import { MAX_CONDITION_MESSAGE, MAX_TOOLSET_BYTES } from '../../src/toolset/index.js';
import { secretEnvName } from '../../src/toolset/values.js';
import { admissionReview, sendReview, WEBHOOK_SERVER_NAME } from '../support/admission.js';
import { injectBackend } from '../support/backend-pod.js';
import { type FakeApiServer, type KObject, startFakeApiServer } from '../support/fake-apiserver.js';
import { toolSetOfSize } from '../support/large-toolset.js';
import { testOperatorConfig } from '../support/scripted-operator.js';

const NS = 'voice';
const logger = createLogger('test', process.env.TEST_LOG ?? 'silent');
const POLL = { timeout: 10_000, interval: 20 };

class ManualClock implements Clock {
  private t = Date.parse('2026-01-01T00:00:00Z');
  now(): Date {
    return new Date(this.t);
  }
  advance(seconds: number): void {
    this.t += seconds * 1000;
  }
}

const TIMING: Timing = {
  informerDelay: (ms) => sleep(Math.min(ms, 50)),
  informerRestartBaseMs: 50,
  retryBaseMs: 20,
  retryMaxMs: 200,
  problemDebounceMs: 20,
  leaseDurationMs: 1000,
  renewDeadlineMs: 700,
  retryPeriodMs: 100,
};

function weatherTool(extra: Record<string, unknown> = {}) {
  return {
    name: 'get_weather',
    description: 'Current weather.',
    parameters: {
      type: 'object',
      properties: { latitude: { type: 'number' }, longitude: { type: 'number' } },
      required: ['latitude', 'longitude'],
    },
    timeout: '3s',
    http: {
      url: 'https://api.open-meteo.com/v1/forecast{?latitude,longitude}',
      headers: [{ name: 'X-Api-Key', valueFrom: { secretKeyRef: { name: 'weather', key: 'key' } } }],
    },
    ...extra,
  };
}

function toolset(name: string, tools: unknown[], extra: Record<string, unknown> = {}): KObject {
  return {
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name, namespace: NS },
    spec: {
      selector: { matchLabels: { app: 'unmute-backend' } },
      upstream: { url: 'http://vllm:8000' },
      tools,
      ...extra,
    },
  };
}

let api: FakeApiServer;
let clock: ManualClock;
let metrics: OperatorMetrics;
const planes: ControlPlane[] = [];

function controlPlane(
  user = 'operator',
  leaderElection = false,
  timing: Timing = TIMING,
  instance?: string,
  sidecar: SidecarConfig = DEFAULT_SIDECAR,
): ControlPlane {
  const plane = new ControlPlane({
    kc: api.kubeConfig(user),
    config: {
      ...(instance ? { instance } : {}),
      namespace: 'earpiece-system',
      podName: user,
      watchNamespaces: [],
      excludeNamespaces: [],
      leaderElection,
      leaseName: 'earpiece-operator',
      sidecar,
    },
    clock,
    logger,
    metrics,
    timing,
  });
  planes.push(plane);
  return plane;
}

beforeEach(async () => {
  api = await startFakeApiServer({ bookmarkIntervalMs: 200 });
  clock = new ManualClock();
  metrics = new OperatorMetrics({ defaultMetrics: false });
});
afterEach(async () => {
  await Promise.all(planes.splice(0).map((p) => p.stop()));
  await api.close();
});

const stored = (name: string) =>
  api.get('toolsets', NS, name) as
    | (KObject & { status?: { observedGeneration?: number; tools?: number; pods?: number } })
    | undefined;
const configMap = (name: string) => api.get('configmaps', NS, `earpiece-toolset-${name}`);
const condition = (name: string, type: string) =>
  (stored(name)?.status as { conditions?: Record<string, string>[] } | undefined)?.conditions?.find(
    (c) => c.type === type,
  );
const ready = (name: string) => condition(name, 'Ready');
const restartRequired = () => condition('assistant', 'RestartRequired');
const renderedTools = (name: string) => {
  const text = configMap(name)?.data as Record<string, string> | undefined;
  return text
    ? (parseYaml(text[CONFIG_KEY]!) as { spec: { tools: Record<string, unknown>[] } }).spec.tools
    : undefined;
};

/** The ToolSet's status as the controller last wrote it, once its cache has caught up with the server. */
async function settled(plane: ControlPlane, name: string): Promise<void> {
  await expect
    .poll(() => {
      const cached = plane.toolsets.get(name, NS);
      const cm = plane.configMaps.get(`earpiece-toolset-${name}`, NS);
      const server = configMap(name);
      return (
        cached?.metadata.resourceVersion === stored(name)?.metadata.resourceVersion &&
        cm?.metadata?.resourceVersion === server?.metadata.resourceVersion &&
        plane.controller.queue.length === 0
      );
    }, POLL)
    .toBe(true);
}

function edit(name: string, change: (spec: Record<string, unknown>) => void): void {
  const current = stored(name)!;
  change(current.spec as Record<string, unknown>);
  api.update('toolsets', current);
}

describe('ToolSet controller', () => {
  it('renders a new ToolSet into its ConfigMap, secrets as env references, and reports Ready', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool(), { name: 'now', builtin: 'time' }]));

    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    const cm = configMap('assistant')!;
    const owner = stored('assistant')!;
    expect(cm.metadata.ownerReferences).toEqual([
      {
        apiVersion: 'earpiece.dev/v1alpha1',
        kind: 'ToolSet',
        name: 'assistant',
        uid: owner.metadata.uid,
        controller: true,
      },
    ]);
    expect(cm.metadata.labels).toMatchObject({ 'app.kubernetes.io/managed-by': 'earpiece' });
    const text = (cm.data as Record<string, string>)[CONFIG_KEY]!;
    expect(text).not.toContain('secretKeyRef');
    const [weather] = renderedTools('assistant')!;
    expect(weather).toMatchObject({
      http: { headers: [{ name: 'X-Api-Key', valueFrom: { env: secretEnvName('weather', 'key') } }] },
    });
    await settled(plane, 'assistant');
    // One write each, even though the ConfigMap's own event reconciled again before the cache had the status.
    const applies = api.writes.filter((w) => w.resource === 'configmaps');
    expect(applies.map((w) => [w.verb, w.fieldManager])).toEqual([['apply', 'earpiece']]);
    expect(api.writes.filter((w) => w.subresource === 'status')).toHaveLength(1);
    expect(owner.status).toEqual({
      observedGeneration: 1,
      tools: 2,
      pods: 0,
      conditions: [
        {
          type: 'Ready',
          status: 'True',
          reason: 'Valid',
          message: 'ConfigMap earpiece-toolset-assistant holds 2 tool entries',
          lastTransitionTime: '2026-01-01T00:00:00Z',
          observedGeneration: 1,
        },
        {
          type: 'RestartRequired',
          status: 'False',
          reason: 'PodsUpToDate',
          message: '',
          lastTransitionTime: '2026-01-01T00:00:00Z',
          observedGeneration: 1,
        },
        {
          type: 'SidecarsReady',
          status: 'False',
          reason: 'NoPods',
          message: `no running pod has this ToolSet's earpiece-proxy sidecar: a pod gets one when it or its namespace is labelled earpiece.dev/inject: "true" and spec.selector matches it (or it names the ToolSet in the annotation earpiece.dev/toolset); no running pod matches spec.selector (app=unmute-backend)`,
          lastTransitionTime: '2026-01-01T00:00:00Z',
          observedGeneration: 1,
        },
      ],
    });
    // Ready was written only after the ConfigMap existed.
    const readyWrite = api.writes.findIndex((w) => w.subresource === 'status');
    const cmWrite = api.writes.findIndex((w) => w.resource === 'configmaps' && w.changed);
    expect(cmWrite).toBeGreaterThanOrEqual(0);
    expect(cmWrite).toBeLessThan(readyWrite);
  });

  it('follows updates, keeps the last good ConfigMap through an invalid edit, and recovers when fixed', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');

    // Update: a second tool. Ready stays True, so its lastTransitionTime stays.
    clock.advance(60);
    edit('assistant', (spec) => (spec.tools as unknown[]).push({ name: 'now', builtin: 'time' }));
    await expect.poll(() => renderedTools('assistant')?.length, POLL).toBe(2);
    await expect.poll(() => stored('assistant')?.status?.observedGeneration, POLL).toBe(2);
    expect(ready('assistant')).toMatchObject({ status: 'True', lastTransitionTime: '2026-01-01T00:00:00Z' });
    expect((stored('assistant')!.status as { tools: number }).tools).toBe(2);

    // Invalid: a bad duration. ConfigMap untouched, Ready False naming the field, an Event.
    await settled(plane, 'assistant');
    const goodConfigMap = configMap('assistant')!;
    clock.advance(60);
    edit('assistant', (spec) => {
      (spec.tools as Record<string, unknown>[])[0]!.timeout = 'soon';
    });
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('False');
    expect(ready('assistant')).toMatchObject({
      reason: 'InvalidToolSet',
      lastTransitionTime: '2026-01-01T00:02:00Z',
      observedGeneration: 3,
    });
    expect(ready('assistant')!.message).toContain(
      'spec.tools[0].timeout: "soon" is not a duration (use 500ms, 5s, 10m)',
    );
    expect(ready('assistant')!.message).toContain(
      'ConfigMap earpiece-toolset-assistant keeps the last valid',
    );
    expect(stored('assistant')!.status).toMatchObject({ observedGeneration: 3, tools: 2 });
    // RestartRequired was worked out for generation 2 and says so.
    expect(restartRequired()).toMatchObject({ status: 'False', observedGeneration: 2 });
    await settled(plane, 'assistant');
    expect(configMap('assistant')).toEqual(goodConfigMap);
    const events = api.list('events', NS);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      type: 'Warning',
      reason: 'InvalidToolSet',
      involvedObject: { kind: 'ToolSet', name: 'assistant', uid: stored('assistant')!.metadata.uid },
      count: 1,
    });
    expect(events[0]!.message).toContain('spec.tools[0].timeout');

    // Fixed: a valid spec again, with a new instruction.
    clock.advance(60);
    edit('assistant', (spec) => {
      (spec.tools as Record<string, unknown>[])[0]!.timeout = '4s';
    });
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    expect(ready('assistant')).toMatchObject({ reason: 'Valid', lastTransitionTime: '2026-01-01T00:03:00Z' });
    await expect.poll(() => renderedTools('assistant')?.[0]?.timeout, POLL).toBe('4s');
    expect(stored('assistant')!.status).toMatchObject({ observedGeneration: 4 });
  });

  it('refuses a ToolSet too large for its ConfigMap rather than retry a write the API server refuses', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolSetOfSize(MAX_TOOLSET_BYTES + 1, 'big', NS) as unknown as KObject);
    await expect.poll(() => ready('big')?.status, POLL).toBe('False');
    expect(ready('big')).toMatchObject({ reason: 'InvalidToolSet' });
    expect(ready('big')!.message).toContain(
      `spec: renders to ${MAX_TOOLSET_BYTES + 1} bytes of configuration, more than the ${MAX_TOOLSET_BYTES} (1008 KiB) a ToolSet may have`,
    );
    await settled(plane, 'big');
    expect(configMap('big')).toBeUndefined();
  });

  it('injects the last valid configuration while the ToolSet is invalid', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()], { upstream: undefined }));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');
    const good = configMap('assistant')!;
    const weatherEnv = {
      name: secretEnvName('weather', 'key'),
      secretKeyRef: { name: 'weather', key: 'key' },
    };
    expect(good.metadata.annotations).toMatchObject({
      'earpiece.dev/toolset-hash': expect.stringMatching(/^[0-9a-f]{16}$/),
      'earpiece.dev/secret-env': JSON.stringify([weatherEnv]),
    });

    // An edit that swaps the Secret and names an upstream, made invalid by a bad duration: refused.
    edit('assistant', (spec) => {
      const tool = (spec.tools as ReturnType<typeof weatherTool>[])[0]!;
      tool.http.headers[0]!.valueFrom.secretKeyRef = { name: 'weather-v2', key: 'token' };
      tool.timeout = 'soon';
      spec.upstream = { url: 'http://vllm:8000' };
    });
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('False');
    await settled(plane, 'assistant');
    expect(configMap('assistant')).toEqual(good);

    // A pod created now gets what the ConfigMap's configuration needs.
    const injectedTemplate = injectBackend(NS, plane.lookup(NS));
    const sidecar = injectedTemplate.spec!.initContainers!.find((c) => c.name === 'earpiece-proxy')!;
    expect(sidecar.env?.filter((e) => e.valueFrom?.secretKeyRef)).toEqual([
      { name: weatherEnv.name, valueFrom: { secretKeyRef: weatherEnv.secretKeyRef } },
    ]);
    expect(sidecar.env).toContainEqual({ name: 'EARPIECE_UPSTREAM_URL', value: 'http://vllm:8000' });
    expect(injectedTemplate.metadata?.annotations?.['earpiece.dev/toolset-hash']).toBe(
      good.metadata.annotations!['earpiece.dev/toolset-hash'],
    );
  });

  it('deletes the ConfigMap through its owner reference when the ToolSet goes', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => configMap('assistant'), POLL).toBeDefined();
    api.delete('toolsets', NS, 'assistant');
    await expect.poll(() => configMap('assistant'), POLL).toBeUndefined();
    await expect.poll(() => plane.toolsets.get('assistant', NS), POLL).toBeUndefined();
    expect(api.changes('configmaps').map((w) => w.verb)).toEqual(['apply']);
  });

  it('writes no ConfigMap for a ToolSet that was never valid', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create(
      'toolsets',
      toolset('broken', [
        { name: 'a', builtin: 'time' },
        { name: 'a', builtin: 'time' },
      ]),
    );
    await expect.poll(() => ready('broken')?.status, POLL).toBe('False');
    expect(ready('broken')!.message).toBe(
      'spec.tools[1].name: "a" is already the name of spec.tools[0]; no ConfigMap is written until the ToolSet is valid',
    );
    expect(stored('broken')!.status).toMatchObject({ observedGeneration: 1, tools: 0 });
    await settled(plane, 'broken');
    expect(configMap('broken')).toBeUndefined();
    expect(api.writes.filter((w) => w.resource === 'configmaps')).toEqual([]);
  });

  it('is idempotent: once settled, reconciling again writes nothing', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    api.create('toolsets', toolset('broken', [{ name: 'x', builtin: 'time', timeout: 'later' }]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await expect.poll(() => ready('broken')?.status, POLL).toBe('False');
    await settled(plane, 'assistant');
    await settled(plane, 'broken');
    const writes = api.writes.length;
    clock.advance(3600);
    for (let i = 0; i < 2; i++) {
      await plane.controller.reconcile(toolSetKey(NS, 'assistant'));
      await plane.controller.reconcile(toolSetKey(NS, 'broken'));
    }
    expect(api.writes.slice(writes)).toEqual([]);
    expect(api.list('events', NS)).toHaveLength(1);
  });

  it('puts back a ConfigMap deleted or changed by someone else', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => configMap('assistant'), POLL).toBeDefined();
    const original = configMap('assistant')!.data;
    api.delete('configmaps', NS, 'earpiece-toolset-assistant');
    await expect.poll(() => configMap('assistant')?.data, POLL).toEqual(original);
    const current = configMap('assistant')!;
    api.update('configmaps', { ...current, data: { [CONFIG_KEY]: 'spec: {tools: []}' } });
    await expect.poll(() => configMap('assistant')?.data, POLL).toEqual(original);
  });

  it('never reports Ready before the ConfigMap write succeeded, and retries it', async () => {
    const plane = controlPlane();
    await plane.start();
    api.fail((r) => r.resource === 'configmaps' && r.method === 'PATCH', 500, 2);
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    const statusWrites = api.writes
      .filter((w) => w.subresource === 'status' && w.changed)
      .map(
        (w) =>
          (w.object.status as { conditions: { type: string; status: string; reason: string }[] })
            .conditions[0]!,
      );
    expect(statusWrites[0]).toMatchObject({ status: 'False', reason: 'ConfigMapWriteFailed' });
    expect(statusWrites.at(-1)).toMatchObject({ status: 'True', reason: 'Valid' });
    const firstTrue = api.writes.findIndex(
      (w) => w.subresource === 'status' && JSON.stringify(w.object.status).includes('"Valid"'),
    );
    const applied = api.writes.findIndex((w) => w.resource === 'configmaps');
    expect(applied).toBeGreaterThanOrEqual(0);
    expect(applied).toBeLessThan(firstTrue);
    // A reconcile is counted once it returns, just after its status write the poll above saw.
    await expect.poll(() => metrics.metrics(), POLL).toMatch(/earpiece_reconcile_total\{result="ok"\} [1-9]/);
    expect(await metrics.metrics()).toMatch(/earpiece_reconcile_total\{result="error"\} 2/);
  });

  it('puts the truth back when someone else writes the status', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('broken', [{ name: 'x', builtin: 'time', timeout: 'later' }]));
    await expect.poll(() => ready('broken')?.status, POLL).toBe('False');
    const current = stored('broken')!;
    api.update(
      'toolsets',
      {
        ...current,
        status: {
          observedGeneration: 1,
          tools: 1,
          conditions: [
            {
              type: 'Ready',
              status: 'True',
              reason: 'Valid',
              message: '',
              lastTransitionTime: '2026-01-01T00:00:00Z',
            },
          ],
        },
      },
      'status',
    );
    await expect.poll(() => ready('broken')?.status, POLL).toBe('False');
    expect(stored('broken')!.status).toMatchObject({ tools: 0 });
  });

  /** A running pod made from `template`, as the API server stores it. */
  function createRunningPod(template: ReturnType<typeof injectBackend>, name: string): void {
    api.create('pods', {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { ...template.metadata, name, namespace: NS },
      spec: template.spec,
      status: { phase: 'Running' },
    } as KObject);
  }

  /** Pod backend-1, running, injected now by the same builder the webhook uses; resolves once the operator sees it. */
  async function runInjectedPod(
    plane: ControlPlane,
    sidecar: SidecarConfig = DEFAULT_SIDECAR,
    name = 'backend-1',
  ): Promise<void> {
    const injectedTemplate = injectBackend(NS, plane.lookup(NS), undefined, sidecar);
    const before = plane.injectedPods.list(NS).length;
    createRunningPod(injectedTemplate, name);
    await expect.poll(() => plane.injectedPods.list(NS).length, POLL).toBe(before + 1);
  }

  it('counts the pods that run its sidecar, and with none names the pods its selector matches that never asked', async () => {
    const plane = controlPlane();
    await plane.start();
    const plain = (name: string, labels: Record<string, string>) =>
      api.create('pods', {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: NS, labels },
        spec: { containers: [{ name: 'backend', image: 'unmute' }] },
        status: { phase: 'Running' },
      } as KObject);
    // A forgotten label, a value other than "true", one opted out, one the selector does not match.
    plain('backend-a', { app: 'unmute-backend' });
    plain('backend-b', { app: 'unmute-backend', 'earpiece.dev/inject': 'True' });
    plain('backend-c', { app: 'unmute-backend', 'earpiece.dev/inject': 'false' });
    plain('vllm-0', { app: 'vllm' });
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => condition('assistant', 'SidecarsReady')?.reason, POLL).toBe('NoPods');
    expect(stored('assistant')!.status).toMatchObject({ pods: 0 });
    expect(condition('assistant', 'SidecarsReady')).toMatchObject({
      status: 'False',
      message: expect.stringMatching(
        /^no running pod has this ToolSet's earpiece-proxy sidecar: .*; pods backend-a, backend-b \(earpiece\.dev\/inject: "True"\), backend-c \(earpiece\.dev\/inject: "false"\) match spec\.selector but are not opted in$/,
      ),
    });

    await runInjectedPod(plane);
    await expect.poll(() => stored('assistant')!.status?.pods, POLL).toBe(1);
    expect(condition('assistant', 'SidecarsReady')).toMatchObject({
      status: 'True',
      reason: 'SidecarsReady',
    });
  });

  it('names, within its recheck, a pod its selector matches that came after the NoPods message', async () => {
    // Such pods never asked for a sidecar, so no informer of the operator sees them come or go.
    const plane = controlPlane('operator', false, { ...TIMING, noPodsRecheckMs: 100 });
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => condition('assistant', 'SidecarsReady')?.reason, POLL).toBe('NoPods');
    expect(condition('assistant', 'SidecarsReady')?.message).toMatch(
      /; no running pod matches spec\.selector \(app=unmute-backend\)$/,
    );
    // The reconciles that the ToolSet's own status writes bring are over before the pod comes.
    const settle = () => sleep(400);
    await settle();
    const late = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'backend-late', namespace: NS, labels: { app: 'unmute-backend' } },
      spec: { containers: [{ name: 'backend', image: 'unmute' }] },
      status: { phase: 'Running' },
    } as KObject;
    api.create('pods', late);
    await expect
      .poll(() => condition('assistant', 'SidecarsReady')?.message, POLL)
      .toMatch(/; pods backend-late match spec\.selector but are not opted in$/);
    await settle();
    api.delete('pods', NS, 'backend-late');
    await expect
      .poll(() => condition('assistant', 'SidecarsReady')?.message, POLL)
      .toMatch(/; no running pod matches spec\.selector \(app=unmute-backend\)$/);
  });

  it('is not SidecarsReady while the app of an injected pod never talks to its sidecar', async () => {
    const plane = controlPlane();
    await plane.start();
    // The ToolSet names its upstream, so a backend without KYUTAI_LLM_URL is injected, with a warning
    // that only an Event on its ReplicaSet carries.
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => configMap('assistant'), POLL).toBeDefined();
    const template = injectBackend(NS, plane.lookup(NS));
    template.spec!.containers[0]!.env = [];
    const unusedPod = (name: string) => createRunningPod(template, name);
    unusedPod('backend-1');
    await expect.poll(() => condition('assistant', 'SidecarsReady')?.reason, POLL).toBe('ProxyUnused');
    expect(stored('assistant')!.status?.pods).toBe(1);
    expect(condition('assistant', 'SidecarsReady')).toMatchObject({
      status: 'False',
      message: expect.stringMatching(
        /^pods backend-1 run the earpiece-proxy sidecar, but no container of theirs sets KYUTAI_LLM_URL in env/,
      ),
    });
    // Said where problems are looked for, once.
    const warnings = () =>
      api
        .list('events', NS)
        .filter(
          (e) => (e.involvedObject as { name?: string }).name === 'assistant' && e.reason === 'ProxyUnused',
        );
    await expect.poll(() => warnings().length, POLL).toBe(1);
    expect(warnings()[0]).toMatchObject({
      type: 'Warning',
      involvedObject: { kind: 'ToolSet' },
      message: expect.stringMatching(/^SidecarsReady: pods backend-1 run the earpiece-proxy sidecar/),
    });
    // Another such pod changes the message, not the reason: no second Event.
    unusedPod('backend-3');
    await expect
      .poll(() => condition('assistant', 'SidecarsReady')?.message, POLL)
      .toMatch(/^pods backend-1, backend-3 run/);
    await settled(plane, 'assistant');
    expect(warnings().map((e) => e.count)).toEqual([1]);
    // Recreated with the variable set, they are ready.
    api.delete('pods', NS, 'backend-1');
    api.delete('pods', NS, 'backend-3');
    await expect.poll(() => plane.injectedPods.list(NS).length, POLL).toBe(0);
    await runInjectedPod(plane, DEFAULT_SIDECAR, 'backend-2');
    await expect.poll(() => condition('assistant', 'SidecarsReady')?.reason, POLL).toBe('SidecarsReady');
  });

  it("says, for a second ToolSet over the same pods, that they run the first one's sidecar", async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => configMap('assistant'), POLL).toBeDefined();
    await runInjectedPod(plane);
    // One that chose its ToolSet by annotation is no clash of selectors: not named below.
    const chosen = injectBackend(NS, plane.lookup(NS), undefined, DEFAULT_SIDECAR, {
      'earpiece.dev/toolset': 'assistant',
    });
    createRunningPod(chosen, 'backend-chosen');
    await expect.poll(() => stored('assistant')!.status?.pods, POLL).toBe(2);
    // The docs' second example selects the same pods: it runs nowhere, and must not say no pod matches.
    api.create('toolsets', toolset('home-assistant', [weatherTool()]));
    await expect.poll(() => condition('home-assistant', 'SidecarsReady')?.reason, POLL).toBe('NoPods');
    expect(condition('home-assistant', 'SidecarsReady')?.message).toMatch(
      /; pods backend-1 \(ToolSet assistant\) match spec\.selector but run another ToolSet's sidecar, injected before; a pod created now that both ToolSets select gets neither unless its earpiece\.dev\/toolset annotation names one$/,
    );
    expect(condition('assistant', 'SidecarsReady')?.status).toBe('True');
  });

  it('counts the ToolSets whose edit no operator takes up, by the operator they are labelled for', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    // Left labelled for a canary release that was uninstalled: this operator leaves it alone.
    const canary = toolset('canary', [weatherTool()]);
    api.create('toolsets', {
      ...canary,
      metadata: { ...canary.metadata, labels: { 'earpiece.dev/operator': 'earpiece-canary' } },
    });
    // One being deleted, held by a finalizer: its generation moved with its deletionTimestamp, nobody
    // reconciles it, and it is no stale edit.
    const leaving = toolset('leaving', [weatherTool()]);
    api.create('toolsets', {
      ...leaving,
      metadata: {
        ...leaving.metadata,
        deletionTimestamp: '2026-01-01T00:00:00Z',
        finalizers: ['gitops.example/keep'],
      },
    });
    expect(stored('leaving')?.metadata.deletionTimestamp).toBeDefined();
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');
    const unreconciled = async () =>
      (await metrics.metrics()).split('\n').filter((l) => l.startsWith('earpiece_toolsets_unreconciled{'));
    expect(await unreconciled()).toEqual([
      'earpiece_toolsets_unreconciled{namespace="voice",operator="earpiece-canary"} 1',
    ]);
    expect(stored('canary')!.status).toBeUndefined();
  });

  it('names the injected pods that lack the env var of a newly added secret', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');

    await runInjectedPod(plane);

    // The ToolSet gains a tool with a new secret: the pod cannot get it by reload.
    edit('assistant', (spec) =>
      (spec.tools as unknown[]).push({
        name: 'orders',
        description: 'Order status.',
        parameters: { type: 'object', properties: { id: { type: 'string' } }, required: ['id'] },
        sql: {
          connection: { valueFrom: { secretKeyRef: { name: 'orders-db', key: 'url' } } },
          query: 'SELECT status FROM orders WHERE id = $1',
          args: ['id'],
        },
      }),
    );
    await expect.poll(() => restartRequired()?.status, POLL).toBe('True');
    expect(restartRequired()).toMatchObject({ reason: 'SecretEnvMissing' });
    expect(restartRequired()!.message).toContain(
      'pods backend-1 started before secret orders-db/url was added',
    );
    expect(ready('assistant')).toMatchObject({ status: 'True' });
    expect(api.list('pods', NS)).toHaveLength(1);

    // The pod goes (a rollout restart): nothing left to restart.
    api.delete('pods', NS, 'backend-1');
    await expect.poll(() => restartRequired()?.status, POLL).toBe('False');
  });

  /** A ToolSet with or without spec.upstream.url, and one pod injected for it by the webhook's builder. */
  async function podInjectedFor(plane: ControlPlane, upstreamUrl: string | undefined): Promise<void> {
    const created = toolset('assistant', [{ name: 'now', description: 'The time.', builtin: 'time' }]);
    const spec = created.spec as Record<string, unknown>;
    if (upstreamUrl === undefined) delete spec.upstream;
    else spec.upstream = { url: upstreamUrl };
    api.create('toolsets', created);
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');
    await runInjectedPod(plane);
  }

  it('names the pods still on their handed-over upstream after spec.upstream.url is added', async () => {
    const plane = controlPlane();
    await plane.start();
    // Injected while the ToolSet named no upstream: the sidecar got the app's KYUTAI_LLM_URL.
    await podInjectedFor(plane, undefined);
    await expect.poll(() => restartRequired()?.reason, POLL).toBe('PodsUpToDate');

    // EARPIECE_UPSTREAM_URL overrides spec.upstream.url, so a reload leaves the pod on its old server.
    edit('assistant', (spec) => {
      spec.upstream = { url: 'http://new-vllm:8000' };
    });
    await expect.poll(() => restartRequired()?.status, POLL).toBe('True');
    expect(restartRequired()).toMatchObject({ reason: 'UpstreamChanged' });
    expect(restartRequired()!.message).toContain(
      'pods backend-1 were injected while the ToolSet named no spec.upstream.url',
    );
    expect(restartRequired()!.message).toMatch(/restart them \(e\.g\. kubectl rollout restart\) to use it$/);
    expect(ready('assistant')).toMatchObject({ status: 'True' });
    // And a Warning Event on the ToolSet, where kubectl get events shows it.
    const restartEvents = () => api.list('events', NS).filter((e) => e.reason === 'UpstreamChanged');
    await expect.poll(() => restartEvents().length, POLL).toBe(1);
    expect(restartEvents()[0]).toMatchObject({
      type: 'Warning',
      involvedObject: { kind: 'ToolSet', name: 'assistant' },
      message: expect.stringContaining('RestartRequired: pods backend-1 were injected while'),
    });

    // Back to no upstream: the pod's handed-over URL is right again.
    edit('assistant', (spec) => {
      delete spec.upstream;
    });
    await expect.poll(() => restartRequired()?.status, POLL).toBe('False');
  });

  it("names the pods never handed the app's upstream after spec.upstream.url is removed", async () => {
    const plane = controlPlane();
    await plane.start();
    // Injected while the ToolSet named its upstream: no EARPIECE_UPSTREAM_URL in the sidecar.
    await podInjectedFor(plane, 'http://vllm:8000');
    await expect.poll(() => restartRequired()?.reason, POLL).toBe('PodsUpToDate');

    edit('assistant', (spec) => {
      delete spec.upstream;
    });
    await expect.poll(() => restartRequired()?.status, POLL).toBe('True');
    expect(restartRequired()).toMatchObject({ reason: 'UpstreamChanged' });
    expect(restartRequired()!.message).toContain(
      "pods backend-1 were injected while the ToolSet named spec.upstream.url and were not handed the app's own KYUTAI_LLM_URL",
    );
    expect(ready('assistant')).toMatchObject({ status: 'True' });

    // The pod goes (a rollout restart): nothing left to restart.
    api.delete('pods', NS, 'backend-1');
    await expect.poll(() => restartRequired()?.status, POLL).toBe('False');
  });

  it("names the pods injected before the chart's sidecar env changed, until they are injected again", async () => {
    // The chart now gives the sidecar an OTLP endpoint; backend-1 was injected before, without one.
    const chart = {
      ...DEFAULT_SIDECAR,
      extraEnv: [{ name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel:4318' }],
    };
    const plane = controlPlane('operator', false, TIMING, undefined, chart);
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');
    await runInjectedPod(plane);
    await expect.poll(() => restartRequired()?.status, POLL).toBe('True');
    expect(restartRequired()).toMatchObject({ reason: 'SidecarEnvChanged' });
    expect(restartRequired()!.message).toBe(
      "pods backend-1 were injected before the chart's sidecar env changed, and differ from it in OTEL_EXPORTER_OTLP_ENDPOINT; restart them (e.g. kubectl rollout restart) to use it",
    );

    // With the ToolSet's spec.upstream.url removed too, both are named.
    edit('assistant', (spec) => {
      delete spec.upstream;
    });
    await expect.poll(() => restartRequired()?.reason, POLL).toBe('PodsOutdated');
    expect(restartRequired()!.message).toContain(
      'pods backend-1 were injected while the ToolSet named spec.upstream.url',
    );
    expect(restartRequired()!.message).toContain("before the chart's sidecar env changed");

    // The restart: the old pod goes, the new one is injected under the chart and ToolSet as they are.
    api.delete('pods', NS, 'backend-1');
    await expect.poll(() => plane.injectedPods.list(NS).length, POLL).toBe(0);
    await runInjectedPod(plane, chart, 'backend-2');
    await expect.poll(() => restartRequired()?.reason, POLL).toBe('PodsUpToDate');
  });

  it("names the pods that run an older sidecar image than the chart's, but not one the pod chose itself", async () => {
    const old = { ...DEFAULT_SIDECAR, image: 'ghcr.io/earpiece-dev/earpiece:0.1.0' };
    const plane = controlPlane('operator', false, TIMING, undefined, {
      ...DEFAULT_SIDECAR,
      image: 'ghcr.io/earpiece-dev/earpiece:0.2.0',
    });
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');
    // Injected by the release before the upgrade.
    await runInjectedPod(plane, old, 'backend-1');
    await expect.poll(() => restartRequired()?.reason, POLL).toBe('SidecarImageChanged');
    expect(restartRequired()!.message).toBe(
      "pods backend-1 run the sidecar image ghcr.io/earpiece-dev/earpiece:0.1.0, not the chart's ghcr.io/earpiece-dev/earpiece:0.2.0; restart them (e.g. kubectl rollout restart) to use it",
    );
    api.delete('pods', NS, 'backend-1');
    await expect.poll(() => restartRequired()?.reason, POLL).toBe('PodsUpToDate');

    // A pod that names its own image (earpiece.dev/proxy-image) keeps it, and is up to date.
    const own = injectBackend(NS, plane.lookup(NS), undefined, old, {
      'earpiece.dev/proxy-image': 'registry.local/earpiece:pinned',
    });
    api.create('pods', {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { ...own.metadata, name: 'backend-2', namespace: NS },
      spec: own.spec,
      status: { phase: 'Running' },
    } as KObject);
    await expect.poll(() => stored('assistant')!.status?.pods, POLL).toBe(1);
    expect(restartRequired()).toMatchObject({ reason: 'PodsUpToDate' });
  });

  it('names at most 20 missing Secrets, so the restart advice survives however many there are', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('assistant', [weatherTool()]));
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(plane, 'assistant');
    await runInjectedPod(plane);

    // A hundred new Secrets with names near their 253-character limit: listed in full, the message
    // would pass MAX_CONDITION_MESSAGE and be cut before its advice.
    const refs = Array.from({ length: 100 }, (_, i) => ({
      name: `s${i}-`.padEnd(253, 'x'),
      key: 'k'.repeat(150),
    }));
    const tool = (n: number, part: typeof refs) => ({
      name: `lookup_${n}`,
      description: 'Looks things up.',
      http: {
        url: `https://example.com/${n}`,
        headers: part.map((ref, i) => ({ name: `X-Key-${i}`, valueFrom: { secretKeyRef: ref } })),
      },
    });
    edit('assistant', (spec) =>
      (spec.tools as unknown[]).push(tool(1, refs.slice(0, 50)), tool(2, refs.slice(50))),
    );
    await expect.poll(() => restartRequired()?.status, POLL).toBe('True');
    const message = restartRequired()!.message!;
    expect(message.length).toBeLessThanOrEqual(MAX_CONDITION_MESSAGE);
    expect(message).toMatch(
      / and lack their env vars; restart them \(e\.g\. kubectl rollout restart\) to use it$/,
    );
    const names = refs.map((r) => `${r.name}/${r.key}`).sort();
    expect(message).toContain(
      `pods backend-1 started before secrets ${names.slice(0, 20).join(', ')} and 80 more were added`,
    );
    expect(message).not.toContain(names[20]!);
  });

  it('recovers from 410 Gone after a watch outage, picking up what changed meanwhile', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('old', [weatherTool()]));
    await expect.poll(() => ready('old')?.status, POLL).toBe('True');
    await settled(plane, 'old');

    // Cut the operator off; meanwhile one ToolSet goes and another comes; the history is compacted.
    api.block('operator');
    api.delete('toolsets', NS, 'old');
    api.create('toolsets', toolset('new', [weatherTool()]));
    api.compact();
    const from = api.requests.length;
    api.unblock('operator');

    await expect.poll(() => ready('new')?.status, POLL).toBe('True');
    await expect.poll(() => plane.toolsets.get('old', NS), POLL).toBeUndefined();
    await expect.poll(() => configMap('old'), POLL).toBeUndefined();
    const after = api.requests.slice(from).filter((r) => r.resource === 'toolsets');
    // The informer resumed from its resourceVersion, was told 410, and listed again.
    expect(after.some((r) => r.watch && r.resourceVersion !== undefined)).toBe(true);
    expect(after.some((r) => !r.watch && r.method === 'GET')).toBe(true);
  });

  it('restarts failed watches with its default backoff', async () => {
    const plane = controlPlane('operator', false, {});
    await plane.start();
    api.block('operator');
    await sleep(200);
    api.unblock('operator');
    api.create('toolsets', toolset('later', [weatherTool()]));
    await expect.poll(() => ready('later')?.status, POLL).toBe('True');
  });

  it('counts the watches that are down, by kind, until they list again', async () => {
    const plane = controlPlane();
    await plane.start();
    const failing = async () =>
      Object.fromEntries(
        (await metrics.metrics())
          .split('\n')
          .filter((l) => l.startsWith('earpiece_watches_failing{'))
          .map((l) => [/kind="(\w+)"/.exec(l)![1], Number(l.split(' ')[1])]),
      );
    expect(await failing()).toEqual({ ToolSet: 0, ConfigMap: 0, Pod: 0, Namespace: 0 });
    // Cut off from the API server (a pruned RoleBinding fails the same way): every watch goes down, and
    // the caches stay as they were.
    api.block('operator');
    await expect.poll(failing, POLL).toEqual({ ToolSet: 1, ConfigMap: 1, Pod: 2, Namespace: 1 });
    api.unblock('operator');
    await expect.poll(failing, POLL).toEqual({ ToolSet: 0, ConfigMap: 0, Pod: 0, Namespace: 0 });
  });

  it('relists after an ERROR 410 event on a live watch', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('a', [weatherTool()]));
    await expect.poll(() => ready('a')?.status, POLL).toBe('True');
    const from = api.requests.length;
    api.expireWatches();
    api.create('toolsets', toolset('b', [weatherTool()]));
    await expect.poll(() => ready('b')?.status, POLL).toBe('True');
    expect(api.requests.slice(from).some((r) => r.resource === 'toolsets' && !r.watch)).toBe(true);
  });

  it('resumes from bookmarks without relisting, even when the history was compacted', async () => {
    const plane = controlPlane();
    await plane.start();
    api.create('toolsets', toolset('a', [weatherTool()]));
    await expect.poll(() => ready('a')?.status, POLL).toBe('True');
    await settled(plane, 'a');
    // Writes elsewhere move the resourceVersion on; ToolSet watches see only bookmarks.
    for (let i = 0; i < 5; i++) {
      api.create('configmaps', {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: `other-${i}`, namespace: NS },
      });
    }
    const moved = Number(api.resourceVersion);
    // Before the history is compacted, the watch must have taken in a bookmark at `moved`: a watch resumed
    // after one asks from there. Until one does, the new watch gets a bookmark and is resumed again.
    const resumedWatch = (from: number) =>
      api.requests.slice(from).find((r) => r.resource === 'toolsets' && r.watch);
    await expect
      .poll(async () => {
        const from = api.requests.length;
        api.closeWatches();
        await expect.poll(() => resumedWatch(from), POLL).toBeDefined();
        const asked = Number(resumedWatch(from)?.resourceVersion);
        if (asked < moved) api.bookmark();
        return asked;
      }, POLL)
      .toBeGreaterThanOrEqual(moved);
    api.compact();
    const from = api.requests.length;
    api.closeWatches();
    api.create('toolsets', toolset('b', [weatherTool()]));
    await expect.poll(() => ready('b')?.status, POLL).toBe('True');
    const toolsetRequests = api.requests.slice(from).filter((r) => r.resource === 'toolsets');
    expect(toolsetRequests.filter((r) => !r.watch && r.method === 'GET')).toEqual([]);
    const resumed = toolsetRequests.find((r) => r.watch);
    expect(Number(resumed?.resourceVersion)).toBeGreaterThanOrEqual(moved);
  });

  it("claims a ToolSet for one release's operator; another release's operator leaves it alone", async () => {
    // Two releases watching the same namespace, each leading on its own.
    const first = controlPlane('first', false, TIMING, 'earpiece-system-earpiece');
    const canary = controlPlane('canary', false, TIMING, 'earpiece-canary-earpiece-canary');
    await Promise.all([first.start(), canary.start()]);
    api.create('toolsets', toolset('assistant', [weatherTool()]));

    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    await settled(first, 'assistant');
    await settled(canary, 'assistant');
    const owner = stored('assistant')!.metadata.labels?.['earpiece.dev/operator'];
    const winner = owner === 'earpiece-system-earpiece' ? 'first' : 'canary';
    expect(['earpiece-system-earpiece', 'earpiece-canary-earpiece-canary']).toContain(owner);
    // Status and ConfigMap come from the claimer alone.
    const writers = api.writes
      .filter((w) => w.changed && (w.resource === 'configmaps' || w.subresource === 'status'))
      .map((w) => w.user);
    expect(new Set(writers)).toEqual(new Set([winner]));
    expect(api.writes.filter((w) => w.resource === 'toolsets' && !w.subresource && w.changed)).toHaveLength(
      1,
    );

    // An edit is reconciled by the claimer only; the other counts it as foreign.
    const before = api.writes.length;
    api.update('toolsets', {
      ...stored('assistant')!,
      spec: {
        ...(stored('assistant')!.spec as object),
        tools: [weatherTool(), { name: 'now', builtin: 'time' }],
      },
    });
    await expect.poll(() => (stored('assistant')!.status as { tools?: number }).tools, POLL).toBe(2);
    await settled(first, 'assistant');
    await settled(canary, 'assistant');
    expect(
      new Set(
        api.writes
          .slice(before)
          .filter((w) => w.changed)
          .map((w) => w.user),
      ),
    ).toEqual(new Set([winner]));
    expect(await metrics.registry.getSingleMetricAsString('earpiece_reconcile_total')).toMatch(
      /result="foreign"\} [1-9]/,
    );
  });

  it('leaves a ToolSet labelled for another operator alone, and takes it when relabelled', async () => {
    const plane = controlPlane('operator', false, TIMING, 'earpiece-system-earpiece');
    await plane.start();
    const labelled = toolset('assistant', [weatherTool()]);
    labelled.metadata.labels = { 'earpiece.dev/operator': 'gone-release' };
    api.create('toolsets', labelled);
    await expect.poll(() => plane.toolsets.get('assistant', NS), POLL).toBeDefined();
    await plane.controller.reconcile(toolSetKey(NS, 'assistant'));
    expect(stored('assistant')!.status).toBeUndefined();
    expect(configMap('assistant')).toBeUndefined();
    expect(
      api.writes.filter((w) => w.user === 'operator' && w.resource !== 'leases' && w.resource !== 'events'),
    ).toEqual([]);

    // Handing it over, as docs/upgrading.md says: remove the label (or set it to this instance).
    const current = stored('assistant')!;
    api.update('toolsets', { ...current, metadata: { ...current.metadata, labels: {} } });
    await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
    expect(stored('assistant')!.metadata.labels).toEqual({
      'earpiece.dev/operator': 'earpiece-system-earpiece',
    });
  });

  it('hands the controller over when the leader stops, and when it is cut off', async () => {
    const one = controlPlane('replica-1', true);
    await one.start();
    await expect.poll(() => one.isLeader, POLL).toBe(true);
    const two = controlPlane('replica-2', true);
    await two.start();
    api.create('toolsets', toolset('first', [weatherTool()]));
    await expect.poll(() => ready('first')?.status, POLL).toBe('True');
    expect(two.isLeader).toBe(false);
    const writers = (name: string) =>
      new Set(
        api.writes
          .filter((w) => w.changed && (w.name === name || w.name === `earpiece-toolset-${name}`))
          .map((w) => w.user),
      );
    expect(writers('first')).toEqual(new Set(['replica-1']));

    // Graceful stop (SIGTERM): the Lease is released and the other replica takes over.
    await one.stop();
    await expect.poll(() => two.isLeader, POLL).toBe(true);
    api.create('toolsets', toolset('second', [weatherTool()]));
    await expect.poll(() => ready('second')?.status, POLL).toBe('True');
    expect(writers('second')).toEqual(new Set(['replica-2']));

    // A third replica; the leader is cut off from the API server and the third takes over.
    const three = controlPlane('replica-3', true);
    await three.start();
    await sleep(300);
    expect(three.isLeader).toBe(false);
    api.block('replica-2');
    await expect.poll(() => three.isLeader, POLL).toBe(true);
    await expect.poll(() => two.isLeader, POLL).toBe(false);
    api.create('toolsets', toolset('third', [weatherTool()]));
    await expect.poll(() => ready('third')?.status, POLL).toBe('True');
    expect(writers('third')).toEqual(new Set(['replica-3']));
    api.unblock('replica-2');
  });
});

describe('earpiece operator', () => {
  /** The pod webhook's configuration as the chart installs it; the operator fills in its caBundle. */
  const createWebhookConfiguration = () =>
    api.create('mutatingwebhookconfigurations', {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: 'earpiece-webhook' },
      webhooks: [{ name: 'pods.earpiece.dev', clientConfig: {} }],
    });

  async function get(port: number, path: string): Promise<{ status: number; body: string }> {
    const res = await fetch(`http://127.0.0.1:${port}${path}`);
    return { status: res.status, body: await res.text() };
  }

  /** The CA the operator wrote into its webhook configuration (the pod webhook's, or the ToolSet one's). */
  function webhookCa(plural = 'mutatingwebhookconfigurations'): string {
    const hooks = api.get(plural, undefined, 'earpiece-webhook')!.webhooks as {
      clientConfig: { caBundle?: string };
    }[];
    return Buffer.from(hooks[0]!.clientConfig.caBundle!, 'base64').toString();
  }

  /** An AdmissionReview of `pod` to the webhook on `port` over TLS, trusting only `ca`: its status and body. */
  function review(
    port: number,
    ca: string,
    pod: Record<string, unknown>,
    path = '/mutate',
    overrides: Record<string, unknown> = {},
  ): Promise<{ status: number; text: string }> {
    return sendReview(port, ca, admissionReview(pod, { namespace: NS, overrides }), path);
  }

  /** The webhook's answer to an AdmissionReview (review()). */
  async function admit(
    port: number,
    ca: string,
    pod: Record<string, unknown>,
    path = '/mutate',
    overrides: Record<string, unknown> = {},
  ): Promise<Record<string, unknown>> {
    const { text } = await review(port, ca, pod, path, overrides);
    return (JSON.parse(text) as { response: Record<string, unknown> }).response;
  }

  it('serves probes, metrics and the webhook, injects from the cache, and releases its Lease on stop', async () => {
    createWebhookConfiguration();
    const rs = api.create('replicasets', {
      apiVersion: 'apps/v1',
      kind: 'ReplicaSet',
      metadata: { name: 'backend-5c', namespace: NS },
    });
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      config: testOperatorConfig({ leaderElection: true }),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics(),
      timing: TIMING,
    });
    let stopped = false;
    try {
      const { ports } = operator;
      expect(await get(ports.probe, '/healthz')).toEqual({ status: 200, body: 'ok' });
      await expect.poll(async () => (await get(ports.probe, '/readyz')).status, POLL).toBe(200);
      expect(JSON.parse((await get(ports.probe, '/readyz')).body)).toEqual({
        informersSynced: true,
        webhookServing: true,
        stopping: false,
      });
      await expect.poll(() => operator.plane.isLeader, POLL).toBe(true);

      api.create('toolsets', toolset('assistant', [weatherTool()]));
      await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
      await expect.poll(() => operator.plane.lookup(NS).config('assistant'), POLL).toBeDefined();

      const ca = webhookCa();
      const backend = (
        labels: Record<string, string>,
        env = [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }],
      ) => ({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: {
          generateName: 'backend-5c-',
          namespace: NS,
          labels,
          ownerReferences: [
            {
              apiVersion: 'apps/v1',
              kind: 'ReplicaSet',
              name: 'backend-5c',
              uid: rs.metadata.uid,
              controller: true,
            },
          ],
        },
        spec: {
          containers: [
            {
              name: 'backend',
              image: 'unmute',
              env,
            },
          ],
        },
      });
      const injected = await admit(
        ports.webhook,
        ca,
        backend({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' }),
      );
      expect(injected).toMatchObject({ uid: 'a1b2', allowed: true, patchType: 'JSONPatch' });
      const skipped = await admit(
        ports.webhook,
        ca,
        backend({ app: 'other', 'earpiece.dev/inject': 'true' }),
      );
      expect(skipped.patch).toBeUndefined();
      expect(String(skipped.warnings)).toContain('no ToolSet');
      // Injected, but nothing in the pod reads KYUTAI_LLM_URL: the warning must reach the workload's Events.
      const unused = await admit(
        ports.webhook,
        ca,
        backend({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' }, []),
      );
      expect(unused).toMatchObject({ allowed: true, patchType: 'JSONPatch' });

      const text = (await get(ports.metrics, '/metrics')).body;
      expect(text).toMatch(/earpiece_injections_total\{outcome="injected"\} 2/);
      expect(text).toMatch(/earpiece_injections_total\{outcome="no_toolset"\} 1/);
      expect(text).toMatch(/earpiece_reconcile_total\{result="ok"\} [1-9]/);
      expect(text).toMatch(/earpiece_reconcile_duration_seconds_bucket/);
      expect(text).toMatch(/earpiece_uninjected_pods 0/);
      expect(text).toMatch(/process_cpu_user_seconds_total/);
      // A review whose body is still coming holds its declared bytes; answered or gone, nothing.
      const bodyBytes = async () =>
        Number(
          /^earpiece_webhook_body_bytes_in_flight (\S+)$/m.exec(
            (await get(ports.metrics, '/metrics')).body,
          )?.[1],
        );
      expect(await bodyBytes()).toBe(0);
      const slow = tlsConnect({
        host: '127.0.0.1',
        port: ports.webhook,
        ca,
        servername: WEBHOOK_SERVER_NAME,
      });
      slow.on('error', () => {});
      slow.write(
        'POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{',
      );
      await expect.poll(bodyBytes, POLL).toBe(4096);
      slow.destroy();
      await expect.poll(bodyBytes, POLL).toBe(0);
      await expect
        .poll(
          () =>
            api
              .list('events', NS)
              .filter((e) => (e.involvedObject as { kind: string }).kind === 'ReplicaSet')
              .map((e) => [e.type, e.reason])
              .sort(),
          POLL,
        )
        .toEqual([
          ['Normal', 'Injected'],
          ['Warning', 'InjectedWithWarnings'],
          ['Warning', 'InjectionSkipped'],
        ]);
      const warned = api.list('events', NS).find((e) => e.reason === 'InjectedWithWarnings');
      expect(warned?.message).toMatch(
        /injected the earpiece-proxy sidecar with ToolSet assistant; .*KYUTAI_LLM_URL/,
      );

      await operator.stop();
      stopped = true;
      expect(api.get('leases', 'earpiece-system', 'earpiece-operator')?.spec).toMatchObject({
        holderIdentity: '',
      });
      await expect(get(ports.probe, '/healthz')).rejects.toThrow();
      await expect.poll(() => api.watchCount(), POLL).toBe(0);
    } finally {
      if (!stopped) await operator.stop();
    }
  });
  it('validates ToolSets on /validate, trusted through the caBundle it keeps, and counts the decisions', async () => {
    for (const [plural, kind] of [
      ['mutatingwebhookconfigurations', 'MutatingWebhookConfiguration'],
      ['validatingwebhookconfigurations', 'ValidatingWebhookConfiguration'],
    ] as const) {
      api.create(plural, {
        apiVersion: 'admissionregistration.k8s.io/v1',
        kind,
        metadata: { name: 'earpiece-webhook' },
        webhooks: [{ name: 'x.earpiece.dev', clientConfig: {} }],
      });
    }
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      config: testOperatorConfig(),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics(),
      timing: TIMING,
    });
    try {
      const { ports } = operator;
      await expect.poll(async () => (await get(ports.probe, '/readyz')).status, POLL).toBe(200);
      const bundle = (plural: string) =>
        (
          api.get(plural, undefined, 'earpiece-webhook')!.webhooks as {
            clientConfig: { caBundle?: string };
          }[]
        )[0]!.clientConfig.caBundle;
      expect(bundle('validatingwebhookconfigurations')).toBe(bundle('mutatingwebhookconfigurations'));
      const ca = Buffer.from(bundle('validatingwebhookconfigurations')!, 'base64').toString();

      const toolsetReview = (spec: Record<string, unknown>, username = 'alice') =>
        admit(ports.webhook, ca, { ...toolset('assistant', []), spec }, '/validate', {
          kind: { group: 'earpiece.dev', version: 'v1alpha1', kind: 'ToolSet' },
          resource: { group: 'earpiece.dev', version: 'v1alpha1', resource: 'toolsets' },
          userInfo: { username, groups: ['system:authenticated'] },
        });
      // weatherTool() names Secret weather: alice may read it, bob may not.
      api.allow({ user: 'alice', verb: 'get', resource: 'secrets', namespace: NS, names: ['weather'] });
      const spec = { selector: { matchLabels: { app: 'a' } }, tools: [weatherTool()] };
      const good = await toolsetReview(spec);
      expect(good).toEqual({ uid: 'a1b2', allowed: true });
      const bad = await toolsetReview({ tools: [{ ...weatherTool(), timeout: 'soon' }] });
      expect(bad).toMatchObject({
        allowed: false,
        status: {
          code: 422,
          message:
            'ToolSet assistant has 1 problem:\nspec.tools[0].timeout: "soon" is not a duration (use 500ms, 5s, 10m)',
        },
      });
      const forbidden = await toolsetReview(spec, 'bob');
      expect(forbidden).toMatchObject({ allowed: false, status: { code: 403, reason: 'Forbidden' } });
      expect(api.accessReviews.map((r) => [r.caller, r.spec.user, r.allowed])).toEqual([
        ['operator', 'alice', true],
        ['operator', 'bob', false],
      ]);

      const text = (await get(ports.metrics, '/metrics')).body;
      expect(text).toMatch(/earpiece_toolset_admissions_total\{result="allowed"\} 1/);
      expect(text).toMatch(/earpiece_toolset_admissions_total\{result="refused"\} 1/);
      expect(text).toMatch(/earpiece_toolset_admissions_total\{result="forbidden"\} 1/);
      expect(text).toMatch(/earpiece_toolset_admissions_total\{result="error"\} 0/);
      expect(text).toMatch(/earpiece_webhook_duration_seconds_count\{operation="validate"\} 3/);
    } finally {
      await operator.stop();
    }
  });

  it('agrees with its webhook on what a valueFrom.env may name: Ready=False and the last good ConfigMap kept, 422 at the door', async () => {
    for (const [plural, kind] of [
      ['mutatingwebhookconfigurations', 'MutatingWebhookConfiguration'],
      ['validatingwebhookconfigurations', 'ValidatingWebhookConfiguration'],
    ] as const) {
      api.create(plural, {
        apiVersion: 'admissionregistration.k8s.io/v1',
        kind,
        metadata: { name: 'earpiece-webhook' },
        webhooks: [{ name: 'x.earpiece.dev', clientConfig: {} }],
      });
    }
    // The chart's injection.env and sharedState.redis.existingSecret, as EARPIECE_SIDECAR_ENV hands them over.
    const extraEnv = [
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel:4318' },
      {
        name: 'EARPIECE_SHARED_STATE_REDIS_URL',
        valueFrom: { secretKeyRef: { name: 'redis-auth', key: 'url' } },
      },
    ];
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      config: testOperatorConfig({ sidecar: { ...DEFAULT_SIDECAR, extraEnv } }),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics(),
      timing: TIMING,
    });
    try {
      const { ports } = operator;
      await expect.poll(async () => (await get(ports.probe, '/readyz')).status, POLL).toBe(200);
      const ca = webhookCa('validatingwebhookconfigurations');
      const sending = (env: string) => ({
        name: 'lookup',
        description: 'Looks things up.',
        http: { url: 'https://collector.example/x', headers: [{ name: 'X-K', valueFrom: { env } }] },
      });
      const field = 'spec.tools[0].http.headers[0].valueFrom.env';
      const reserved = `${field}: EARPIECE_SHARED_STATE_REDIS_URL is reserved: names starting with EARPIECE_ are the operator's own variables of the injected sidecar`;
      const missing = `${field}: the injected sidecar has no environment variable VLLM_API_KEY: it has only OTEL_EXPORTER_OTLP_ENDPOINT, from the chart's injection.env`;

      const review = (spec: unknown) =>
        admit(ports.webhook, ca, { ...toolset('assistant', []), spec }, '/validate', {
          kind: { group: 'earpiece.dev', version: 'v1alpha1', kind: 'ToolSet' },
          resource: { group: 'earpiece.dev', version: 'v1alpha1', resource: 'toolsets' },
          userInfo: { username: 'alice', groups: ['system:authenticated'] },
        });
      const spec = (env: string) => toolset('assistant', [sending(env)]).spec;
      expect(await review(spec('OTEL_EXPORTER_OTLP_ENDPOINT'))).toEqual({ uid: 'a1b2', allowed: true });
      for (const [env, message] of [
        ['EARPIECE_SHARED_STATE_REDIS_URL', reserved],
        ['VLLM_API_KEY', missing],
      ] as const) {
        const refused = (await review(spec(env))) as {
          allowed: boolean;
          status: { code: number; message: string };
        };
        expect(refused).toMatchObject({ allowed: false, status: { code: 422, reason: 'Invalid' } });
        expect(refused.status.message).toContain(message);
      }

      // What got in while the webhook was down is the controller's to report, as for any invalid ToolSet.
      api.create('toolsets', toolset('assistant', [sending('OTEL_EXPORTER_OTLP_ENDPOINT')]));
      await expect.poll(() => ready('assistant')?.status, POLL).toBe('True');
      await settled(operator.plane, 'assistant');
      const good = configMap('assistant')!;
      for (const [env, message] of [
        ['EARPIECE_SHARED_STATE_REDIS_URL', reserved],
        ['VLLM_API_KEY', missing],
      ] as const) {
        edit('assistant', (s) => {
          s.tools = [sending(env)];
        });
        await expect.poll(() => String(ready('assistant')?.message), POLL).toContain(message);
        expect(ready('assistant')).toMatchObject({ status: 'False', reason: 'InvalidToolSet' });
        expect(ready('assistant')!.message).toContain(
          'ConfigMap earpiece-toolset-assistant keeps the last valid',
        );
        await settled(operator.plane, 'assistant');
        expect(configMap('assistant')).toEqual(good);
      }
    } finally {
      await operator.stop();
    }
  });

  it("holds the webhook's request bodies to the budget it is configured with", async () => {
    createWebhookConfiguration();
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      config: testOperatorConfig({ webhookMaxBodyBytesInFlight: 8192 }),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics(),
      timing: TIMING,
    });
    try {
      await expect.poll(async () => (await get(operator.ports.probe, '/readyz')).status, POLL).toBe(200);
      const ca = webhookCa();
      /** The HTTP status of a review of a pod carrying an annotation of `bytes`. */
      const status = async (bytes: number) =>
        (
          await review(operator.ports.webhook, ca, {
            metadata: { annotations: { note: 'x'.repeat(bytes) } },
            spec: { containers: [] },
          })
        ).status;
      // Far below the default budget of 24 MiB, past the configured one.
      expect(await status(16 * 1024)).toBe(503);
      expect(await status(1024)).toBe(200);
    } finally {
      await operator.stop();
    }
  });

  it('names Secrets in ToolSets without asking who may read them when the check is switched off', async () => {
    createWebhookConfiguration();
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      config: testOperatorConfig({ toolsetSecretAccessCheck: false }),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics(),
      timing: TIMING,
    });
    try {
      await expect.poll(async () => (await get(operator.ports.probe, '/readyz')).status, POLL).toBe(200);
      const ca = webhookCa();
      const spec = { selector: { matchLabels: { app: 'a' } }, tools: [weatherTool()] };
      const response = await admit(
        operator.ports.webhook,
        ca,
        { ...toolset('assistant', []), spec },
        '/validate',
        {
          kind: { group: 'earpiece.dev', version: 'v1alpha1', kind: 'ToolSet' },
          userInfo: { username: 'bob', groups: ['system:authenticated'] },
        },
      );
      expect(response).toEqual({ uid: 'a1b2', allowed: true });
      expect(api.accessReviews).toEqual([]);
    } finally {
      await operator.stop();
    }
  });

  it.each([
    ['v1.28.9-eks-036c24b', true, 'containers'],
    ['v1.29.0', true, 'initContainers'],
    ['v1.28.9-eks-036c24b', false, 'initContainers'],
  ])('on an API server %s (auto: %s) injects the sidecar into %s', async (version, auto, where) => {
    api.version = version;
    createWebhookConfiguration();
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      // auto leaves it to the server; false stands for an explicit true (the default config's value).
      config: testOperatorConfig({ nativeSidecarAuto: auto }),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics({ defaultMetrics: false }),
      timing: TIMING,
    });
    try {
      api.create('toolsets', toolset('assistant', [weatherTool()]));
      await expect.poll(() => operator.plane.lookup(NS).config('assistant'), POLL).toBeDefined();
      const ca = webhookCa();
      const response = await admit(operator.ports.webhook, ca, {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: {
          name: 'backend',
          namespace: NS,
          labels: { app: 'unmute-backend', 'earpiece.dev/inject': 'true' },
        },
        spec: {
          containers: [
            {
              name: 'backend',
              image: 'unmute',
              env: [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }],
            },
          ],
        },
      });
      const ops = JSON.parse(Buffer.from(String(response.patch), 'base64').toString()) as {
        path: string;
        value: { name?: string }[] | { name?: string };
      }[];
      const sidecarAt = ops
        .filter((op) => [op.value].flat().some((v) => v?.name === 'earpiece-proxy'))
        .map((op) => op.path.split('/')[2]);
      expect(sidecarAt).toEqual([where]);
    } finally {
      await operator.stop();
    }
  });

  it('on stop answers /readyz 503 and keeps injecting for the grace period, then closes the webhook', async () => {
    createWebhookConfiguration();
    let endGrace: (() => void) | undefined;
    let graceMs: number | undefined;
    const operator = await startOperator({
      kc: api.kubeConfig('operator'),
      config: testOperatorConfig({ shutdownGraceMs: 5000 }),
      host: '127.0.0.1',
      logger,
      metrics: new OperatorMetrics({ defaultMetrics: false }),
      // The grace period ends when the test says so.
      timing: {
        ...TIMING,
        shutdownDelay: (ms) => {
          graceMs = ms;
          return new Promise<void>((resolve) => {
            endGrace = resolve;
          });
        },
      },
    });
    const { ports } = operator;
    let stopping: Promise<void> | undefined;
    try {
      await expect.poll(async () => (await get(ports.probe, '/readyz')).status, POLL).toBe(200);
      api.create('toolsets', toolset('assistant', [weatherTool()]));
      await expect.poll(() => operator.plane.lookup(NS).config('assistant'), POLL).toBeDefined();
      const ca = webhookCa();
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: {
          generateName: 'backend-',
          namespace: NS,
          labels: { app: 'unmute-backend', 'earpiece.dev/inject': 'true' },
        },
        spec: {
          containers: [
            {
              name: 'backend',
              image: 'unmute',
              env: [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }],
            },
          ],
        },
      };

      stopping = operator.stop();
      const readyz = await get(ports.probe, '/readyz');
      expect(readyz.status).toBe(503);
      expect(JSON.parse(readyz.body)).toMatchObject({ stopping: true });
      expect(graceMs).toBe(5000);
      // The API server has not yet seen the replica leave the endpoints: its reviews are still answered.
      expect(await admit(ports.webhook, ca, pod)).toMatchObject({ allowed: true, patchType: 'JSONPatch' });

      endGrace?.();
      await stopping;
      await expect(admit(ports.webhook, ca, pod)).rejects.toThrow();
      await expect(get(ports.probe, '/readyz')).rejects.toThrow();
    } finally {
      endGrace?.();
      await (stopping ?? operator.stop());
    }
  });
});
