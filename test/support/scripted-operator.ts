/**
 * The real `earpiece operator` against the API fake, in the situations on-call must see: a namespace
 * labelled earpiece.dev/inject=true with a ToolSet, a pod there that missed the webhook, a pod whose
 * sidecar image cannot be pulled (a private registry without imagePullSecrets), and one whose sidecar
 * crash-loops, and a ToolSet left labelled for a release that is gone. Its metrics port is what a
 * ServiceMonitor would scrape.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { OperatorConfig } from '../../src/operator/config.js';
import { DEFAULT_SIDECAR } from '../../src/operator/sidecar.js';
import { type RunningOperator, startOperator } from '../../src/operator/start.js';
import { createLogger } from '../../src/telemetry/log.js';
import { admissionReview, sendReview } from './admission.js';
import { injectBackend } from './backend-pod.js';
import { type FakeApiServer, startFakeApiServer } from './fake-apiserver.js';

/** A whole operator config for tests: one replica, ports chosen by the OS, certificates it makes itself. */
export function testOperatorConfig(overrides: Partial<OperatorConfig> = {}): OperatorConfig {
  return {
    namespace: 'earpiece-system',
    podName: 'earpiece-operator-0',
    instance: 'earpiece',
    watchNamespaces: [],
    excludeNamespaces: [],
    leaderElection: false,
    leaseName: 'earpiece-operator',
    webhookPort: 0,
    probePort: 0,
    metricsPort: 0,
    webhookConfigName: 'earpiece-webhook',
    webhookServiceName: 'earpiece-webhook',
    certMode: 'operator',
    certSecretName: 'earpiece-webhook-tls',
    certDir: '/nonexistent',
    shutdownGraceMs: 0,
    sidecar: DEFAULT_SIDECAR,
    nativeSidecarAuto: false,
    toolsetSecretAccessCheck: true,
    webhookMaxBodyBytesInFlight: 24 * 1024 * 1024,
    ...overrides,
  };
}

export interface ScriptedOperator {
  api: FakeApiServer;
  operator: RunningOperator;
  /** host:port of the operator's /metrics. */
  metricsTarget: string;
  /** Sends a backend pod through the webhook, as the API server does on every pod creation. */
  admit(name: string): Promise<void>;
  close(): Promise<void>;
}

async function until<T>(what: string, check: () => T | undefined): Promise<T> {
  for (let i = 0; i < 400; i++) {
    const value = check();
    if (value !== undefined && value !== false) return value;
    await sleep(25);
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function startScriptedOperator(namespace: string): Promise<ScriptedOperator> {
  const api = await startFakeApiServer({ bookmarkIntervalMs: 200 });
  api.create('mutatingwebhookconfigurations', {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name: 'earpiece-webhook' },
    webhooks: [{ name: 'pods.earpiece.dev', clientConfig: {} }],
  });
  api.create('namespaces', {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: { name: namespace, labels: { 'earpiece.dev/inject': 'true' } },
  });
  const operator = await startOperator({
    kc: api.kubeConfig('operator'),
    config: testOperatorConfig({
      excludeNamespaces: ['kube-system', 'earpiece-system'],
      leaderElection: true,
      nativeSidecarAuto: true,
    }),
    host: '127.0.0.1',
    logger: createLogger('operator', process.env.EARPIECE_TEST_LOG_LEVEL ?? 'silent'),
    timing: {
      informerDelay: (ms) => sleep(Math.min(ms, 50)),
      problemDebounceMs: 50,
      problemRecheckMs: 500,
      leaseDurationMs: 2000,
      renewDeadlineMs: 1500,
      retryPeriodMs: 200,
    },
  });
  api.create('toolsets', {
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'assistant', namespace },
    spec: { selector: { matchLabels: { app: 'unmute-backend' } }, tools: [{ name: 'now', builtin: 'time' }] },
  });
  // Left labelled for a canary release that was uninstalled: nobody reconciles it.
  api.create('toolsets', {
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'canary', namespace, labels: { 'earpiece.dev/operator': 'earpiece-canary' } },
    spec: { selector: { matchLabels: { app: 'canary-backend' } }, tools: [{ name: 'now', builtin: 'time' }] },
  });
  const lookup = operator.plane.lookup(namespace);
  await until('the ToolSet ConfigMap', () => lookup.config('assistant'));

  const ca = await until('the webhook CA bundle', () => {
    const webhooks = api.get('mutatingwebhookconfigurations', undefined, 'earpiece-webhook')?.webhooks as
      | { clientConfig: { caBundle?: string } }[]
      | undefined;
    const bundle = webhooks?.[0]?.clientConfig.caBundle;
    return bundle ? Buffer.from(bundle, 'base64').toString() : undefined;
  });

  // Injected, but the sidecar image sits in a private registry the pods have no pull secret for.
  const injected = injectBackend(namespace, lookup, { app: 'unmute-backend', 'earpiece.dev/inject': 'true' });
  const sidecarPod = (name: string, state: Record<string, unknown>) => {
    api.create('pods', {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name,
        namespace,
        labels: injected.metadata?.labels,
        annotations: injected.metadata?.annotations,
      },
      spec: injected.spec,
    });
    const pod = api.get('pods', namespace, name)!;
    api.update(
      'pods',
      {
        ...pod,
        status: {
          phase: 'Pending',
          startTime: new Date().toISOString(),
          initContainerStatuses: [
            { name: 'earpiece-proxy', image: 'earpiece', imageID: '', ready: false, restartCount: 3, state },
          ],
        },
      },
      'status',
    );
  };
  sidecarPod('backend-private', {
    waiting: {
      reason: 'ImagePullBackOff',
      message: 'Back-off pulling image "registry.example/earpiece:0.1.0"',
    },
  });
  sidecarPod('backend-crashing', { waiting: { reason: 'CrashLoopBackOff', message: 'back-off 40s' } });
  // Opted in by its namespace only, created while the webhook was away.
  api.create('pods', {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'backend-missed', namespace, labels: { app: 'unmute-backend' } },
    spec: {
      containers: [
        { name: 'backend', image: 'unmute', env: [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }] },
      ],
    },
    status: { phase: 'Running' },
  });
  await until('the sidecar problems', () => operator.plane.sidecarProblems.pods.length === 3);

  const admit = async (name: string): Promise<void> => {
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace, labels: { app: 'unmute-backend' } },
      spec: {
        containers: [
          { name: 'backend', image: 'unmute', env: [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }] },
        ],
      },
    };
    const { status } = await sendReview(
      operator.ports.webhook,
      ca,
      admissionReview(pod, { uid: name, namespace }),
    );
    if (status !== 200) throw new Error(`webhook: ${status}`);
  };

  return {
    api,
    operator,
    metricsTarget: `127.0.0.1:${operator.ports.metrics}`,
    admit,
    close: async () => {
      await operator.stop();
      await api.close();
    },
  };
}
