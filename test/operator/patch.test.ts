import { readFileSync } from 'node:fs';
import type { V1EnvVar } from '@kubernetes/client-node';
import fc from 'fast-check';
import fastJsonPatch from 'fast-json-patch';
import { describe, expect, it } from 'vitest';
import { readInjectionConfig, renderConfigMap } from '../../src/operator/configmap.js';
import {
  buildInjection,
  type InjectInput,
  type PodTemplate,
  readInjection,
  SKIP_REASONS,
} from '../../src/operator/patch.js';
import { toolsetLookup } from '../../src/operator/select.js';
import {
  DEFAULT_SIDECAR,
  parseQuantity,
  type SidecarConfig,
  SidecarConfigError,
  sidecarConfigFromEnv,
} from '../../src/operator/sidecar.js';
import { secretEnvName, specHash, type ToolSet } from '../../src/toolset/index.js';
import { workloadIssues } from '../support/pod-rules.js';

const toolset = (name: string, spec: Partial<ToolSet['spec']> = {}): ToolSet => ({
  apiVersion: 'earpiece.dev/v1alpha1',
  kind: 'ToolSet',
  metadata: { name, namespace: 'voice' },
  spec: {
    selector: { matchLabels: { app: 'unmute-backend' } },
    tools: [{ name: 'now', builtin: 'time' }],
    ...spec,
  },
});

const assistant = toolset('assistant', {
  tools: [
    {
      name: 'weather',
      description: 'Weather.',
      http: {
        url: 'https://w.example/',
        headers: [{ name: 'X-Key', valueFrom: { secretKeyRef: { name: 'weather', key: 'key' } } }],
      },
    },
  ],
});

function input(overrides: Partial<InjectInput> = {}, toolsets: ToolSet[] = [assistant]): InjectInput {
  return {
    namespace: 'voice',
    namespaceOptedIn: false,
    toolsets: toolsetLookup(toolsets, 'voice'),
    sidecar: DEFAULT_SIDECAR,
    ...overrides,
  };
}

function pod(
  options: {
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    env?: Record<string, unknown>[];
    spec?: Record<string, unknown>;
  } = {},
): PodTemplate {
  return {
    metadata: {
      labels: options.labels ?? { app: 'unmute-backend', 'earpiece.dev/inject': 'true' },
      ...(options.annotations ? { annotations: options.annotations } : {}),
    },
    spec: {
      containers: [
        {
          name: 'backend',
          image: 'unmute-backend',
          env: (options.env ?? [{ name: 'KYUTAI_LLM_URL', value: 'http://llm:8000' }]) as never,
        },
      ],
      ...options.spec,
    },
  };
}

function injected(template: PodTemplate, inp: InjectInput = input()) {
  const result = buildInjection(template, inp);
  if (!result.ok) throw new Error(`skipped: ${result.reason}: ${result.message}`);
  return result;
}

const sidecarOf = (t: PodTemplate) =>
  [...(t.spec?.initContainers ?? []), ...(t.spec?.containers ?? [])].find((c) => c.name === 'earpiece-proxy');
const envOf = (c: { env?: { name: string; value?: string; valueFrom?: unknown }[] } | undefined) =>
  Object.fromEntries((c?.env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]));

describe('buildInjection', () => {
  it('adds the native sidecar, the ConfigMap volume, secret env vars and points the app at it', () => {
    const template = pod();
    const { template: out, toolset: name, warnings } = injected(template);
    expect(name).toBe('assistant');
    expect(warnings).toEqual([]);
    const sidecar = sidecarOf(out);
    expect(out.spec?.initContainers?.map((c) => c.name)).toEqual(['earpiece-proxy']);
    expect(sidecar?.restartPolicy).toBe('Always');
    expect(sidecar?.startupProbe?.httpGet).toEqual({ path: '/readyz', port: 9464 });
    expect(sidecar?.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 9464 });
    expect(envOf(sidecar)).toEqual({
      EARPIECE_TOOLSET: '/etc/earpiece/toolset.yaml',
      EARPIECE_HOST: '127.0.0.1',
      EARPIECE_PORT: '8095',
      EARPIECE_METRICS_PORT: '9464',
      EARPIECE_LOG_LEVEL: 'info',
      EARPIECE_UPSTREAM_URL: 'http://llm:8000',
      [secretEnvName('weather', 'key')]: { secretKeyRef: { name: 'weather', key: 'key' } },
    });
    expect(sidecar?.securityContext).toEqual({
      runAsNonRoot: true,
      runAsUser: 65532,
      runAsGroup: 65532,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    });
    expect(sidecar?.volumeMounts).toEqual([
      { name: 'earpiece-toolset', mountPath: '/etc/earpiece', readOnly: true },
      { name: 'earpiece-tmp', mountPath: '/tmp' },
    ]);
    expect(out.spec?.volumes).toEqual([
      { name: 'earpiece-toolset', configMap: { name: 'earpiece-toolset-assistant' } },
      { name: 'earpiece-tmp', emptyDir: { sizeLimit: '16Mi' } },
    ]);
    expect(envOf(out.spec?.containers[0])).toEqual({ KYUTAI_LLM_URL: 'http://127.0.0.1:8095' });
    expect(out.metadata?.labels?.['earpiece.dev/injected']).toBe('true');
    expect(out.metadata?.annotations?.['earpiece.dev/toolset-hash']).toBe(specHash(assistant));
    // The input is left as it was.
    expect(template).toEqual(pod());
  });

  it('marks the pod with a ToolSet hash that follows the spec, and matches the ConfigMap', () => {
    const hashOf = (t: ToolSet) =>
      injected(pod(), input({}, [t])).template.metadata?.annotations?.['earpiece.dev/toolset-hash'];
    const before = hashOf(assistant);
    expect(before).toMatch(/^[0-9a-f]{16}$/);
    expect(before).toBe(renderConfigMap(assistant).metadata?.annotations?.['earpiece.dev/toolset-hash']);
    // A spec edit changes it; what is not spec (status, labels, resourceVersion) does not.
    const edited = structuredClone(assistant);
    edited.spec.limits = { toolTimeout: '3s' };
    expect(hashOf(edited)).not.toBe(before);
    const restated = {
      ...structuredClone(assistant),
      metadata: { ...assistant.metadata, labels: { team: 'voice' }, resourceVersion: '42' },
      status: { observedGeneration: 2, tools: 1, conditions: [] },
    } as ToolSet;
    expect(hashOf(restated)).toBe(before);
  });

  it('leaves EARPIECE_UPSTREAM_URL out when the ToolSet names its upstream', () => {
    const named = toolset('assistant', { upstream: { url: 'http://vllm:8000' } });
    const { template } = injected(pod(), input({}, [named]));
    expect(envOf(sidecarOf(template))).not.toHaveProperty('EARPIECE_UPSTREAM_URL');
    expect(envOf(template.spec?.containers[0])).toEqual({ KYUTAI_LLM_URL: 'http://127.0.0.1:8095' });
  });

  it('is a plain container when configured so, or by annotation, and warns when that keeps a Job running', () => {
    const plain: SidecarConfig = { ...DEFAULT_SIDECAR, nativeSidecar: false };
    const byConfig = injected(pod({ spec: { restartPolicy: 'Never' } }), input({ sidecar: plain }));
    expect(byConfig.template.spec?.containers.map((c) => c.name)).toEqual(['backend', 'earpiece-proxy']);
    expect(byConfig.template.spec?.initContainers).toBeUndefined();
    expect(sidecarOf(byConfig.template)?.restartPolicy).toBeUndefined();
    expect(byConfig.warnings).toEqual([expect.stringContaining('never completes')]);

    const byAnnotation = injected(pod({ annotations: { 'earpiece.dev/native-sidecar': 'false' } }));
    expect(byAnnotation.template.spec?.containers.map((c) => c.name)).toEqual(['backend', 'earpiece-proxy']);
    const backOn = injected(
      pod({ annotations: { 'earpiece.dev/native-sidecar': 'true' } }),
      input({ sidecar: plain }),
    );
    expect(backOn.template.spec?.initContainers?.map((c) => c.name)).toEqual(['earpiece-proxy']);
  });

  it('applies per-pod overrides, and ignores bad ones with a warning', () => {
    const good = injected(
      pod({
        annotations: {
          'earpiece.dev/proxy-image': 'registry.internal/earpiece:patched',
          'earpiece.dev/proxy-port': '18095',
          'earpiece.dev/proxy-metrics-port': '19464',
          'earpiece.dev/proxy-cpu-request': '100m',
          'earpiece.dev/proxy-memory-limit': '512Mi',
          'earpiece.dev/proxy-log-level': 'debug',
        },
      }),
    );
    const sidecar = sidecarOf(good.template);
    expect(sidecar?.image).toBe('registry.internal/earpiece:patched');
    expect(sidecar?.resources).toEqual({
      requests: { cpu: '100m', memory: '128Mi' },
      limits: { memory: '512Mi' },
    });
    expect(envOf(sidecar)).toMatchObject({
      EARPIECE_PORT: '18095',
      EARPIECE_METRICS_PORT: '19464',
      EARPIECE_LOG_LEVEL: 'debug',
    });
    expect(sidecar?.startupProbe?.httpGet?.port).toBe(19464);
    expect(envOf(good.template.spec?.containers[0])).toEqual({ KYUTAI_LLM_URL: 'http://127.0.0.1:18095' });

    const bad = injected(
      pod({
        annotations: {
          'earpiece.dev/proxy-port': 'http',
          'earpiece.dev/proxy-memory-request': '1Gi',
          'earpiece.dev/proxy-log-level': 'loud',
          'earpiece.dev/native-sidecar': 'maybe',
        },
      }),
    );
    expect(bad.warnings).toEqual([
      'annotation earpiece.dev/proxy-port ignored: "http" is not a port number',
      'annotation earpiece.dev/native-sidecar ignored: "maybe" is not true or false',
      'annotation earpiece.dev/proxy-log-level ignored: "loud" is not one of trace, debug, info, warn, error, fatal',
      'annotation earpiece.dev/proxy-memory-request ignored: resources requests.memory 1Gi is above limits.memory 256Mi',
    ]);
    expect(sidecarOf(bad.template)?.resources).toEqual(DEFAULT_SIDECAR.resources);
    expect(envOf(sidecarOf(bad.template)).EARPIECE_PORT).toBe('8095');
  });

  it('hands over a KYUTAI_LLM_URL reference as the same reference, with a warning', () => {
    const ref = { configMapKeyRef: { name: 'llm', key: 'url' } };
    const result = injected(pod({ env: [{ name: 'KYUTAI_LLM_URL', valueFrom: ref }] }));
    expect(envOf(sidecarOf(result.template)).EARPIECE_UPSTREAM_URL).toEqual(ref);
    expect(result.template.spec?.containers[0]?.env).toEqual([
      { name: 'KYUTAI_LLM_URL', value: 'http://127.0.0.1:8095' },
    ]);
    expect(result.warnings).toEqual([expect.stringContaining('comes from a configMapKeyRef')]);
  });

  it('warns about containers that disagree and about values that refer to other variables', () => {
    const template = pod();
    template.spec?.containers.push({
      name: 'worker',
      image: 'w',
      env: [{ name: 'KYUTAI_LLM_URL', value: 'http://other:8000' }],
    });
    const disagree = injected(template);
    expect(disagree.warnings).toEqual([expect.stringContaining('set different KYUTAI_LLM_URL values')]);
    expect(envOf(sidecarOf(disagree.template)).EARPIECE_UPSTREAM_URL).toBe('http://llm:8000');
    expect(disagree.template.spec?.containers.map((c) => envOf(c).KYUTAI_LLM_URL)).toEqual([
      'http://127.0.0.1:8095',
      'http://127.0.0.1:8095',
    ]);

    const dependent = injected(pod({ env: [{ name: 'KYUTAI_LLM_URL', value: 'http://$(LLM_HOST):8000' }] }));
    expect(dependent.warnings).toEqual([expect.stringContaining('refers to other variables')]);
  });

  it('warns when nothing in the pod would use the proxy', () => {
    const named = toolset('assistant', { upstream: { url: 'http://vllm:8000' } });
    const result = injected(pod({ env: [] }), input({}, [named]));
    expect(result.warnings).toEqual([expect.stringContaining('nothing in the pod uses the proxy')]);
  });

  describe('a KYUTAI_LLM_URL that may come from envFrom', () => {
    const envFrom = [{ configMapRef: { name: 'unmute-settings' } }];
    const withEnvFrom = (env: Record<string, unknown>[]) => {
      const template = pod({ env });
      (template.spec?.containers[0] as { envFrom?: unknown }).envFrom = envFrom;
      return template;
    };

    it('is overridden by an explicit entry pointing at the proxy when the ToolSet names its upstream', () => {
      const named = toolset('assistant', { upstream: { url: 'http://vllm:8000' } });
      const result = injected(withEnvFrom([{ name: 'TZ', value: 'UTC' }]), input({}, [named]));
      expect(result.template.spec?.containers[0]?.env).toEqual([
        { name: 'TZ', value: 'UTC' },
        { name: 'KYUTAI_LLM_URL', value: 'http://127.0.0.1:8095' },
      ]);
      expect(result.template.spec?.containers[0]?.envFrom).toEqual(envFrom);
      expect(result.warnings).toEqual([]);
    });

    it('cannot be handed over, so without spec.upstream.url the pod is skipped, saying why', () => {
      const result = buildInjection(withEnvFrom([]), input());
      expect(result).toMatchObject({ ok: false, reason: 'no_upstream', warn: true });
      if (!result.ok)
        expect(result.message).toMatch(/container backend can only get KYUTAI_LLM_URL through envFrom/);
    });

    it('is pointed at the proxy beside a container whose own value is handed over, with a warning', () => {
      const template = pod();
      template.spec?.containers.push({ name: 'worker', image: 'w', envFrom: envFrom as never });
      const result = injected(template);
      expect(envOf(sidecarOf(result.template)).EARPIECE_UPSTREAM_URL).toBe('http://llm:8000');
      expect(result.template.spec?.containers[1]?.env).toEqual([
        { name: 'KYUTAI_LLM_URL', value: 'http://127.0.0.1:8095' },
      ]);
      expect(result.warnings).toEqual([
        expect.stringContaining('container worker takes its environment from envFrom'),
      ]);
    });

    it('leaves an explicit entry as the one handed over', () => {
      const result = injected(withEnvFrom([{ name: 'KYUTAI_LLM_URL', value: 'http://llm:8000' }]));
      expect(envOf(sidecarOf(result.template)).EARPIECE_UPSTREAM_URL).toBe('http://llm:8000');
      expect(result.template.spec?.containers[0]?.env).toEqual([
        { name: 'KYUTAI_LLM_URL', value: 'http://127.0.0.1:8095' },
      ]);
    });
  });

  it('injects a pod of an opted-in namespace without the label', () => {
    const result = buildInjection(
      pod({ labels: { app: 'unmute-backend' } }),
      input({ namespaceOptedIn: true }),
    );
    expect(result.ok).toBe(true);
  });

  it("takes secret env vars, hash and upstream from the ToolSet's last valid ConfigMap, not the ToolSet now", () => {
    // The ConfigMap holds the last valid version; the ToolSet has since been edited (to another Secret,
    // and an upstream) into a version the controller refused, so it never reached the ConfigMap.
    const lastGood = readInjectionConfig(renderConfigMap(assistant));
    expect(lastGood).toEqual({
      hash: specHash(assistant),
      secretEnv: [{ name: secretEnvName('weather', 'key'), secretKeyRef: { name: 'weather', key: 'key' } }],
      upstreamNamed: false,
    });
    const edited = structuredClone(assistant);
    const header = (edited.spec.tools[0] as { http: { headers: { valueFrom: unknown }[] } }).http.headers[0]!;
    header.valueFrom = { secretKeyRef: { name: 'weather-v2', key: 'token' } };
    edited.spec.upstream = { url: 'http://vllm:8000' };
    const { template } = injected(
      pod(),
      input({ toolsets: toolsetLookup([edited], 'voice', () => lastGood) }),
    );
    const env = envOf(sidecarOf(template));
    expect(env[secretEnvName('weather', 'key')]).toEqual({ secretKeyRef: { name: 'weather', key: 'key' } });
    expect(env).not.toHaveProperty(secretEnvName('weather-v2', 'token'));
    expect(env.EARPIECE_UPSTREAM_URL).toBe('http://llm:8000');
    expect(template.metadata?.annotations?.['earpiece.dev/toolset-hash']).toBe(specHash(assistant));
  });

  it('reads nothing from a ConfigMap without its annotations or with a list it did not write', () => {
    const good = renderConfigMap(assistant);
    const without = structuredClone(good);
    delete without.metadata?.annotations?.['earpiece.dev/secret-env'];
    expect(readInjectionConfig(without)).toBeUndefined();
    const forged = structuredClone(good);
    forged.metadata!.annotations!['earpiece.dev/secret-env'] = JSON.stringify([
      { name: 'PATH', secretKeyRef: { name: 'weather', key: 'key' } },
    ]);
    expect(readInjectionConfig(forged)).toBeUndefined();
    const garbled = structuredClone(good);
    garbled.data = { 'toolset.yaml': 'spec: [' };
    expect(readInjectionConfig(garbled)).toBeUndefined();
  });

  it('reads back what an injected pod carries', () => {
    const { template } = injected(pod());
    expect(readInjection(template)).toEqual({
      toolset: 'assistant',
      hash: specHash(assistant),
      secretEnv: [secretEnvName('weather', 'key')],
      // The ToolSet names no spec.upstream.url: the app's KYUTAI_LLM_URL was handed over.
      upstreamHandedOver: true,
      sidecarEnv: sidecarOf(template)?.env,
      // DEFAULT_SIDECAR gives no chart env: nothing recorded.
      chartEnvRecord: undefined,
      chartImage: DEFAULT_SIDECAR.image,
      appUsesProxy: true,
    });
    // No container sets KYUTAI_LLM_URL (the ToolSet names its upstream, so the pod is still injected, with
    // a warning): nothing in the pod talks to the sidecar, even as a plain container beside the app.
    const named = toolset('assistant', { upstream: { url: 'http://vllm:8000' } });
    for (const nativeSidecar of [true, false]) {
      const unused = injected(
        pod({ env: [] }),
        input({ sidecar: { ...DEFAULT_SIDECAR, nativeSidecar } }, [named]),
      );
      expect(unused.warnings).toEqual([expect.stringContaining('nothing in the pod uses the proxy')]);
      expect(readInjection(unused.template)?.appUsesProxy).toBe(false);
    }
    // An image the pod chose, or one another webhook rewrote since, is not the chart's to replace.
    const own = injected(
      pod({ annotations: { 'earpiece.dev/proxy-image': 'registry.local/earpiece:pinned' } }),
    );
    expect(readInjection(own.template)?.chartImage).toBeUndefined();
    const mirrored = structuredClone(template);
    sidecarOf(mirrored)!.image = 'mirror.local/earpiece:0.1.0';
    expect(readInjection(mirrored)?.chartImage).toBeUndefined();
    expect(readInjection(pod())).toBeUndefined();
  });
});

describe('skip reasons', () => {
  const several = [assistant, toolset('other')];
  /** The assistant at generation 2, with the Ready condition the controller wrote for `observedGeneration`. */
  const withReady = (status: 'True' | 'False', reason: string, observedGeneration = 2): ToolSet => ({
    ...assistant,
    metadata: { ...assistant.metadata, generation: 2 },
    status: {
      observedGeneration,
      conditions: [
        {
          type: 'Ready',
          status,
          reason,
          message: '',
          lastTransitionTime: '2025-01-01T00:00:00Z',
          observedGeneration,
        },
      ],
    },
  });
  const withoutConfigMap = (t: ToolSet) => input({ toolsets: toolsetLookup([t], 'voice', () => undefined) });
  const notWrittenYet =
    /^ConfigMap earpiece-toolset-assistant of ToolSet assistant is not written yet \(see kubectl describe toolset assistant -n voice\); recreate the pod once the ToolSet is Ready$/;
  const cases: [string, PodTemplate, InjectInput, keyof typeof SKIP_REASONS, RegExp][] = [
    [
      'a pod without containers',
      { metadata: {}, spec: { containers: [] } },
      input(),
      'invalid_pod',
      /no containers/,
    ],
    [
      'no label',
      pod({ labels: { app: 'unmute-backend' } }),
      input(),
      'not_opted_in',
      /neither the pod nor its namespace/,
    ],
    [
      'a label that is not "true"',
      pod({ labels: { 'earpiece.dev/inject': 'yes' } }),
      input(),
      'not_opted_in',
      /"yes"; only "true"/,
    ],
    [
      'label false in an opted-in namespace',
      pod({ labels: { 'earpiece.dev/inject': 'false' } }),
      input({ namespaceOptedIn: true }),
      'opted_out',
      /=false/,
    ],
    ['the host network', pod({ spec: { hostNetwork: true } }), input(), 'host_network', /host network/],
    [
      'an unknown ToolSet by name',
      pod({ annotations: { 'earpiece.dev/toolset': 'nope' } }),
      input(),
      'toolset_not_found',
      /"nope", which does not exist in namespace voice/,
    ],
    [
      'no matching ToolSet',
      pod({ labels: { app: 'x', 'earpiece.dev/inject': 'true' } }),
      input(),
      'no_toolset',
      /no ToolSet in namespace voice selects this pod/,
    ],
    [
      'two matching ToolSets',
      pod(),
      input({ toolsets: toolsetLookup(several, 'voice') }),
      'several_toolsets',
      /ToolSets assistant, other all select/,
    ],
    [
      "a ToolSet labelled for another release's operator",
      pod(),
      input({
        instance: 'stable',
        toolsets: toolsetLookup(
          [
            {
              ...assistant,
              metadata: { ...assistant.metadata, labels: { 'earpiece.dev/operator': 'canary' } },
            },
          ],
          'voice',
        ),
      }),
      'other_operator',
      /ToolSet assistant is reconciled by operator canary \(label earpiece.dev\/operator\), not stable/,
    ],
    [
      'a ToolSet never valid',
      pod(),
      withoutConfigMap(withReady('False', 'InvalidToolSet')),
      'toolset_not_ready',
      /^ToolSet assistant has never been valid, so ConfigMap earpiece-toolset-assistant does not exist; see kubectl describe toolset assistant -n voice$/,
    ],
    [
      'a valid ToolSet not reconciled yet (no status)',
      pod(),
      withoutConfigMap(assistant),
      'toolset_not_ready',
      notWrittenYet,
    ],
    [
      'a valid ToolSet whose ConfigMap is not in the cache yet',
      pod(),
      withoutConfigMap(withReady('True', 'Valid')),
      'toolset_not_ready',
      notWrittenYet,
    ],
    [
      'a valid ToolSet whose ConfigMap write failed',
      pod(),
      withoutConfigMap(withReady('False', 'ConfigMapWriteFailed')),
      'toolset_not_ready',
      notWrittenYet,
    ],
    [
      'a ToolSet edited since the operator found it invalid',
      pod(),
      withoutConfigMap(withReady('False', 'InvalidToolSet', 1)),
      'toolset_not_ready',
      notWrittenYet,
    ],
    [
      'no upstream at all',
      pod({ env: [] }),
      input(),
      'no_upstream',
      /no spec.upstream.url and no container sets KYUTAI_LLM_URL/,
    ],
    [
      'an empty KYUTAI_LLM_URL',
      pod({ env: [{ name: 'KYUTAI_LLM_URL', value: '' }] }),
      input(),
      'no_upstream',
      /is empty/,
    ],
    [
      'a KYUTAI_LLM_URL from resources',
      pod({ env: [{ name: 'KYUTAI_LLM_URL', valueFrom: { resourceFieldRef: { resource: 'limits.cpu' } } }] }),
      input(),
      'no_upstream',
      /cannot share/,
    ],
    [
      'a port the app uses',
      pod({
        spec: {
          containers: [
            {
              name: 'a',
              image: 'a',
              ports: [{ containerPort: 9464 }],
              env: [{ name: 'KYUTAI_LLM_URL', value: 'http://x' }],
            },
          ],
        },
      }),
      input(),
      'conflict',
      /port 9464; choose another with annotation earpiece.dev\/proxy-metrics-port/,
    ],
    [
      'a volume name taken',
      pod({ spec: { volumes: [{ name: 'earpiece-tmp', emptyDir: {} }] } }),
      input(),
      'conflict',
      /volume named earpiece-tmp/,
    ],
  ];
  it.each(cases)('%s', (_name, template, inp, reason, message) => {
    const result = buildInjection(template, inp);
    expect(result).toMatchObject({ ok: false, reason, warn: SKIP_REASONS[reason].warn });
    if (!result.ok) expect(result.message).toMatch(message);
  });

  it('a ToolSet labelled for this operator, or for any when no instance is given (earpiece inject), is injected', () => {
    const labelled = {
      ...assistant,
      metadata: { ...assistant.metadata, labels: { 'earpiece.dev/operator': 'canary' } },
    };
    const toolsets = toolsetLookup([labelled], 'voice');
    expect(buildInjection(pod(), input({ instance: 'canary', toolsets }))).toMatchObject({ ok: true });
    expect(buildInjection(pod(), input({ toolsets }))).toMatchObject({ ok: true });
  });

  it("records the webhook's operator instance on the pod, for that release's reports; injected again, the new one's", () => {
    const byCanary = injected(pod(), input({ instance: 'canary' })).template;
    expect(byCanary.metadata?.annotations?.['earpiece.dev/injected-by']).toBe('canary');
    expect(readInjection(byCanary)?.injectedBy).toBe('canary');
    // `earpiece inject` is no release: it records none.
    expect(injected(pod()).template.metadata?.annotations).not.toHaveProperty('earpiece.dev/injected-by');
    const edited = structuredClone(assistant);
    edited.spec.instructions = 'Answer in one short sentence.';
    const again = injected(byCanary, input({ instance: 'stable' }, [edited])).template;
    expect(readInjection(again)?.injectedBy).toBe('stable');
    expect(readInjection(injected(byCanary, input({}, [edited])).template)?.injectedBy).toBeUndefined();
  });

  it('already injected: a second run returns the pod unchanged', () => {
    const once = injected(pod()).template;
    const twice = buildInjection(once, input());
    expect(twice).toMatchObject({ ok: false, reason: 'already_injected', warn: false });
  });

  // A later mutating webhook (registry mirror, Kyverno mutateDigest) rewrites the sidecar image, and the
  // API server calls this webhook again (reinvocationPolicy: IfNeeded) with the rewritten pod.
  const mirrored = (template: PodTemplate) => {
    const out = structuredClone(template);
    const sidecar = sidecarOf(out)!;
    sidecar.image = `mirror.corp/earpiece@sha256:${'a'.repeat(64)}`;
    return out;
  };

  it('records the image it set; a reinvocation after another webhook rewrote it changes nothing', () => {
    const once = injected(pod()).template;
    expect(once.metadata?.annotations?.['earpiece.dev/injected-image']).toBe(DEFAULT_SIDECAR.image);
    const rewritten = mirrored(once);
    // A skip: no patch, and no `injected` outcome, so no second Injected Event.
    expect(buildInjection(rewritten, input())).toMatchObject({ ok: false, reason: 'already_injected' });
    // Also when the operator now asks for another image (a chart upgrade): the rewrite is not ours to undo.
    const upgraded = input({ sidecar: { ...DEFAULT_SIDECAR, image: 'ghcr.io/earpiece-dev/earpiece:9.9.9' } });
    expect(buildInjection(rewritten, upgraded)).toMatchObject({ ok: false, reason: 'already_injected' });
    // A pod injected before earpiece recorded its image: not known to be ours, left as it is.
    const unrecorded = structuredClone(once);
    delete unrecorded.metadata?.annotations?.['earpiece.dev/injected-image'];
    expect(buildInjection(mirrored(unrecorded), upgraded)).toMatchObject({ reason: 'already_injected' });
  });

  it("replaces earpiece's own outdated image, and records the new one; --image replaces any image", () => {
    const older = injected(
      pod(),
      input({ sidecar: { ...DEFAULT_SIDECAR, image: 'r/earpiece:0.0.9' } }),
    ).template;
    const result = injected(older);
    expect(result.updated).toEqual([`image r/earpiece:0.0.9 replaced by ${DEFAULT_SIDECAR.image}`]);
    expect(sidecarOf(result.template)?.image).toBe(DEFAULT_SIDECAR.image);
    expect(result.template.metadata?.annotations?.['earpiece.dev/injected-image']).toBe(
      DEFAULT_SIDECAR.image,
    );
    // Only the image and its record changed, and the next run has nothing to do.
    expect(fastJsonPatch.compare(older, result.template).map((op) => op.path)).toEqual([
      '/spec/initContainers/0/image',
      '/metadata/annotations/earpiece.dev~1injected-image',
    ]);
    expect(buildInjection(result.template, input())).toMatchObject({ ok: false, reason: 'already_injected' });

    // `earpiece inject --image` is an explicit request: it replaces a rewritten or unrecorded image too.
    const forced = injected(mirrored(older), input({ replaceImage: true }));
    expect(sidecarOf(forced.template)?.image).toBe(DEFAULT_SIDECAR.image);
    expect(forced.template.metadata?.annotations?.['earpiece.dev/injected-image']).toBe(
      DEFAULT_SIDECAR.image,
    );
  });

  const chart = (extraEnv: SidecarConfig['extraEnv']) => input({ sidecar: { ...DEFAULT_SIDECAR, extraEnv } });
  const withEnv = (template: PodTemplate, edit: (env: V1EnvVar[]) => V1EnvVar[]) => {
    const out = structuredClone(template);
    const sidecar = sidecarOf(out)!;
    sidecar.env = edit(sidecar.env ?? []);
    return out;
  };

  it("brings the chart's sidecar env vars up to date when the chart changed them, and leaves the rest as it was", () => {
    const first = chart([
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://old-otel:4318' },
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    ]);
    // As the API server stores it (its defaults filled in), with a variable another webhook added and one
    // it rewrote (a mirror of the collector).
    const stored = withEnv(injected(pod(), first).template, (env) => [
      ...env.map((e) =>
        e.name === 'POD_NAME'
          ? { ...e, valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } }
          : e.name === 'OTEL_EXPORTER_OTLP_ENDPOINT'
            ? { ...e, value: 'http://otel-mirror:4318' }
            : e,
      ),
      { name: 'AWS_ROLE_ARN', value: 'arn:aws:iam::1:role/x' },
    ]);
    // The chart has not changed: the other webhook's value has the last word, and a reinvocation is no change.
    expect(buildInjection(stored, first)).toMatchObject({ ok: false, reason: 'already_injected' });

    const now = chart([
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel:4318' },
      { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      { name: 'HTTPS_PROXY', value: 'http://proxy:3128' },
    ]);
    const result = injected(stored, now);
    expect(result.updated).toEqual([
      "env OTEL_EXPORTER_OTLP_ENDPOINT, HTTPS_PROXY brought to the chart's injection.env as it is now",
    ]);
    expect(envOf(sidecarOf(result.template))).toMatchObject({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://otel:4318',
      HTTPS_PROXY: 'http://proxy:3128',
      POD_NAME: { fieldRef: { fieldPath: 'metadata.name' } },
      AWS_ROLE_ARN: 'arn:aws:iam::1:role/x',
      EARPIECE_TOOLSET: '/etc/earpiece/toolset.yaml',
    });
    expect(buildInjection(result.template, now)).toMatchObject({ ok: false, reason: 'already_injected' });

    // A variable the chart no longer gives is taken out; another webhook's stays.
    const fewer = chart([
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel:4318' },
      { name: 'HTTPS_PROXY', value: 'http://proxy:3128' },
    ]);
    const dropped = injected(result.template, fewer);
    expect(dropped.updated).toEqual(["env POD_NAME brought to the chart's injection.env as it is now"]);
    expect(envOf(sidecarOf(dropped.template))).not.toHaveProperty('POD_NAME');
    expect(envOf(sidecarOf(dropped.template))).toHaveProperty('AWS_ROLE_ARN');
    expect(buildInjection(dropped.template, fewer)).toMatchObject({ ok: false, reason: 'already_injected' });
  });

  it('compares the values of a pod injected before earpiece recorded its chart env, as the API server stores them', () => {
    const given = chart([
      { name: 'CPU_LIMIT', valueFrom: { resourceFieldRef: { resource: 'limits.cpu', divisor: '1000m' } } },
      {
        name: 'MEMORY_LIMIT',
        valueFrom: { resourceFieldRef: { resource: 'limits.memory', divisor: '1024Ki' } },
      },
    ]);
    const template = injected(pod(), given).template;
    delete template.metadata?.annotations?.['earpiece.dev/injected-env'];
    // Stored canonical: 1000m as 1, 1024Ki as 1Mi.
    const stored = withEnv(template, (env) =>
      env.map((e) =>
        e.name === 'CPU_LIMIT'
          ? { ...e, valueFrom: { resourceFieldRef: { resource: 'limits.cpu', divisor: '1' } } }
          : e.name === 'MEMORY_LIMIT'
            ? { ...e, valueFrom: { resourceFieldRef: { resource: 'limits.memory', divisor: '1Mi' } } }
            : e,
      ),
    );
    expect(buildInjection(stored, given)).toMatchObject({ ok: false, reason: 'already_injected' });
    const lacking = injected(
      stored,
      chart([...given.sidecar.extraEnv, { name: 'OTEL_SERVICE_NAME', value: 'x' }]),
    );
    expect(lacking.updated).toEqual([
      "env OTEL_SERVICE_NAME brought to the chart's injection.env as it is now",
    ]);
  });

  it('gives a name the chart lists twice its last value, as a container does, and stays with it', () => {
    const twice = chart([
      { name: 'EARPIECE_SHARED_STATE_REDIS_URL', value: 'redis://first:6379' },
      { name: 'EARPIECE_SHARED_STATE_REDIS_URL', value: 'redis://second:6379' },
    ]);
    const template = injected(pod(), twice).template;
    const effective = (t: PodTemplate) =>
      (sidecarOf(t)?.env ?? []).filter((e) => e.name === 'EARPIECE_SHARED_STATE_REDIS_URL').at(-1)?.value;
    expect(effective(template)).toBe('redis://second:6379');
    expect(buildInjection(template, twice)).toMatchObject({ ok: false, reason: 'already_injected' });
    // Recorded before earpiece kept a record: compared by the value in effect.
    delete template.metadata?.annotations?.['earpiece.dev/injected-env'];
    expect(buildInjection(template, twice)).toMatchObject({ ok: false, reason: 'already_injected' });
  });

  it('injected for another configuration: the old injection is taken out and done again', () => {
    const once = injected(pod()).template;
    const edited = structuredClone(assistant);
    const header = (edited.spec.tools[0] as { http: { headers: { valueFrom: unknown }[] } }).http.headers[0]!;
    header.valueFrom = { secretKeyRef: { name: 'weather-v2', key: 'token' } };
    const again = injected(once, input({}, [edited]));
    expect(again.replaced).toEqual({ toolset: 'assistant', hash: specHash(assistant) });
    // The same pod as injecting the original with the new ToolSet: one sidecar, the new env and hash.
    expect(again.template).toEqual(injected(pod(), input({}, [edited])).template);
    expect(envOf(sidecarOf(again.template))).toHaveProperty(secretEnvName('weather-v2', 'token'));
    expect(envOf(sidecarOf(again.template))).not.toHaveProperty(secretEnvName('weather', 'key'));
    expect(envOf(sidecarOf(again.template)).EARPIECE_UPSTREAM_URL).toBe('http://llm:8000');
    expect(buildInjection(again.template, input({}, [edited]))).toMatchObject({ reason: 'already_injected' });

    // Another ToolSet named by the pod: the volume follows it.
    const other = toolset('other', { selector: undefined });
    const moved = injected(
      { ...once, metadata: { ...once.metadata, annotations: { 'earpiece.dev/toolset': 'other' } } },
      input({}, [assistant, other]),
    );
    expect(moved.template.spec?.volumes?.[0]).toEqual({
      name: 'earpiece-toolset',
      configMap: { name: 'earpiece-toolset-other' },
    });
  });

  it('cannot inject again without an upstream once the old one named it, and says so', () => {
    const named = toolset('assistant', { upstream: { url: 'http://vllm:8000' } });
    const once = injected(pod(), input({}, [named])).template;
    const result = buildInjection(once, input({}, [assistant]));
    expect(result).toMatchObject({ ok: false, reason: 'no_upstream' });
    if (!result.ok) expect(result.message).toMatch(/KYUTAI_LLM_URL is no longer known/);
    // A pod whose ToolSet is gone keeps its injection.
    expect(buildInjection(once, input({}, []))).toMatchObject({ ok: false, reason: 'already_injected' });
  });

  it('each reason is documented in docs/operator-injection.md', () => {
    const docs = readFileSync('docs/operator-injection.md', 'utf8');
    for (const reason of Object.keys(SKIP_REASONS)) expect(docs, reason).toContain(`\`${reason}\``);
  });
});

describe('the sidecar settings', () => {
  it('come from the operator environment, and a bad value names its variable', () => {
    expect(sidecarConfigFromEnv({})).toEqual(DEFAULT_SIDECAR);
    expect(
      sidecarConfigFromEnv({
        EARPIECE_SIDECAR_IMAGE: 'r/e:1',
        EARPIECE_SIDECAR_IMAGE_PULL_POLICY: 'Always',
        EARPIECE_SIDECAR_RESOURCES: '{"requests":{"cpu":"10m"}}',
        EARPIECE_NATIVE_SIDECAR: 'false',
        EARPIECE_SIDECAR_IMAGE_PULL_SECRETS: '[{"name":"regcred"},{"name":"regcred"}]',
        EARPIECE_SIDECAR_LOG_LEVEL: 'warn',
        EARPIECE_SIDECAR_ENV: '[{"name":"OTEL_EXPORTER_OTLP_ENDPOINT","value":"http://otel:4318"}]',
      }),
    ).toEqual({
      image: 'r/e:1',
      imagePullPolicy: 'Always',
      resources: { requests: { cpu: '10m' } },
      nativeSidecar: false,
      imagePullSecrets: ['regcred'],
      logLevel: 'warn',
      extraEnv: [{ name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel:4318' }],
    });
    const bad: [string, string, RegExp][] = [
      ['EARPIECE_SIDECAR_RESOURCES', '{"requests":{"cpu":"lots"}}', /requests.cpu: "lots" is not a quantity/],
      ['EARPIECE_SIDECAR_RESOURCES', 'cpu=1', /is not JSON/],
      ['EARPIECE_NATIVE_SIDECAR', 'yes', /"yes" is not one of true, false, auto/],
      ['EARPIECE_SIDECAR_IMAGE_PULL_SECRETS', '[{"nom":"x"}]', /is not a JSON list of secret references/],
      ['EARPIECE_SIDECAR_IMAGE_PULL_POLICY', 'Sometimes', /"Sometimes" is not one of Always/],
      ['EARPIECE_SIDECAR_ENV', '{"a":1}', /is not a JSON list of env vars/],
    ];
    for (const [name, value, message] of bad) {
      const attempt = () => sidecarConfigFromEnv({ [name]: value });
      expect(attempt).toThrow(SidecarConfigError);
      expect(attempt).toThrow(new RegExp(`^${name}: ${message.source}`));
    }
  });

  it('passes extra env vars through to the sidecar', () => {
    const sidecar: SidecarConfig = {
      ...DEFAULT_SIDECAR,
      extraEnv: [{ name: 'OTEL_SERVICE_NAME', value: 'earpiece' }],
    };
    expect(envOf(sidecarOf(injected(pod(), input({ sidecar })).template)).OTEL_SERVICE_NAME).toBe('earpiece');
  });

  it.each([
    ['250m', 0.25],
    ['1', 1],
    ['1.5', 1.5],
    ['128Mi', 128 * 2 ** 20],
    ['1G', 1e9],
    ['1e3', 1000],
    ['1E-2', 0.01],
    ['1e+21', 1e21],
    ['500u', 500e-6],
    ['100n', 100e-9],
    ['2k', 2000],
    ['1E', 1e18],
    ['.5', 0.5],
    ['1.', 1],
    ['+1', 1],
    ['3Ei', 3 * 2 ** 60],
    // The double nearest each, as Kubernetes has them equal: 700 * 0.001 would be 0.7000000000000001.
    ['700m', 0.7],
    ['1100P', 1.1e18],
    ['lots', undefined],
    ['-1', undefined],
    ['1Mb', undefined],
    ['1e', undefined],
    ['1.2.3', undefined],
    ['.', undefined],
    ['1 ', undefined],
    ['1K', undefined],
    ['1mi', undefined],
    ['', undefined],
  ])('reads the quantity %s', (text, value) => {
    if (value === undefined) expect(parseQuantity(text)).toBeUndefined();
    else expect(parseQuantity(text)).toBe(value);
  });

  it('takes JSON numbers as quantities in EARPIECE_SIDECAR_RESOURCES, as a pod spec does, and gives the sidecar strings', () => {
    const resources = (json: string) => sidecarConfigFromEnv({ EARPIECE_SIDECAR_RESOURCES: json }).resources;
    expect(resources('{"requests":{"cpu":1,"memory":"0.5Gi"},"limits":{"memory":1e9}}')).toEqual({
      requests: { cpu: '1', memory: '0.5Gi' },
      limits: { memory: '1000000000' },
    });
    expect(resources('{"requests":{"cpu":"500u","memory":1e21}}')).toEqual({
      requests: { cpu: '500u', memory: '1e+21' },
    });
    expect(() => resources('{"requests":{"cpu":-1}}')).toThrow(/requests.cpu: -1 is not a quantity/);
    expect(() => resources('{"requests":{"cpu":"2"},"limits":{"cpu":1}}')).toThrow(
      /requests.cpu 2 is above limits.cpu 1/,
    );
    expect(() => resources('{"requests":["1"]}')).toThrow(/requests is not an object/);
    expect(() => resources('{"claims":[{"name":"gpu"}]}')).toThrow(/has claims; only requests and limits/);
  });
});

describe('injection as a property', () => {
  const name = fc.stringMatching(/^[a-z][a-z0-9-]{0,10}[a-z0-9]$/);
  const env = fc.oneof(
    fc.record({
      name: fc.constant('KYUTAI_LLM_URL'),
      value: fc.webUrl({ withQueryParameters: false, withFragments: false }),
    }),
    fc.record({
      name: fc.constant('KYUTAI_LLM_URL'),
      valueFrom: fc.record({ secretKeyRef: fc.record({ name, key: name }) }),
    }),
    fc.record({ name: fc.stringMatching(/^[A-Z][A-Z0-9_]{0,15}$/), value: fc.string() }),
  );
  const template = fc
    .record({
      names: fc.uniqueArray(name, { minLength: 1, maxLength: 4 }),
      envs: fc.array(fc.array(env, { maxLength: 4 }), { minLength: 4, maxLength: 4 }),
      init: fc.boolean(),
      label: fc.constantFrom('true', 'false', undefined),
      namespaceOptedIn: fc.boolean(),
      native: fc.constantFrom('true', 'false', undefined),
      port: fc.constantFrom('18095', 'nope', undefined),
      upstream: fc.boolean(),
      otherUpstream: fc.boolean(),
      envFrom: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }),
      restartPolicy: fc.constantFrom('Always', 'OnFailure', 'Never'),
    })
    .map((g) => {
      const [initName, ...appNames] = g.names.length > 1 && g.init ? g.names : [undefined, ...g.names];
      const annotations: Record<string, string> = {};
      if (g.native) annotations['earpiece.dev/native-sidecar'] = g.native;
      if (g.port) annotations['earpiece.dev/proxy-port'] = g.port;
      const podTemplate: PodTemplate = {
        metadata: {
          labels: { app: 'unmute-backend', ...(g.label ? { 'earpiece.dev/inject': g.label } : {}) },
          annotations,
        },
        spec: {
          restartPolicy: g.restartPolicy,
          ...(initName ? { initContainers: [{ name: initName, image: 'busybox' }] } : {}),
          containers: appNames.map((n, i) => ({
            name: n as string,
            image: 'app',
            env: g.envs[i] as never,
            ...(g.envFrom[i] ? { envFrom: [{ configMapRef: { name: 'settings' } }] } : {}),
          })),
        },
      };
      const ts = toolset('assistant', g.upstream ? { upstream: { url: 'http://vllm:8000' } } : {});
      // Another configuration of the same ToolSet, which the pod may have been injected for before.
      const other: ToolSet = g.otherUpstream
        ? { ...assistant, spec: { ...assistant.spec, upstream: { url: 'http://old:8000' } } }
        : assistant;
      const inp = input({ namespaceOptedIn: g.namespaceOptedIn }, [ts]);
      return { podTemplate, inp, before: { ...inp, toolsets: toolsetLookup([other], 'voice') } };
    });

  it('injecting twice equals injecting once, the diff rebuilds the result, and the pod stays valid', async () => {
    let injectedRuns = 0;
    let reinjectedRuns = 0;
    await fc.assert(
      fc.asyncProperty(template, async ({ podTemplate, inp, before }) => {
        const once = buildInjection(podTemplate, inp);
        if (!once.ok) {
          expect(buildInjection(podTemplate, inp)).toEqual(once);
          return;
        }
        injectedRuns++;
        expect(buildInjection(once.template, inp)).toMatchObject({ ok: false, reason: 'already_injected' });
        // Injected for another configuration, then for this one: as if injected for this one alone (unless
        // the other one named the upstream and this one does not: the app's own URL is gone then).
        const first = buildInjection(podTemplate, before);
        const lost =
          before.toolsets.config('assistant')?.upstreamNamed &&
          !inp.toolsets.config('assistant')?.upstreamNamed;
        if (first.ok && !lost) {
          reinjectedRuns++;
          const again = buildInjection(first.template, inp);
          expect(again).toMatchObject({ ok: true, replaced: { toolset: 'assistant' } });
          if (again.ok) expect(again.template).toEqual(once.template);
        }
        const ops = fastJsonPatch.compare(podTemplate, once.template);
        expect(fastJsonPatch.applyPatch(structuredClone(podTemplate), ops, true, false).newDocument).toEqual(
          once.template,
        );
        const asPod = {
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: { name: 'p', ...once.template.metadata },
          spec: once.template.spec,
        };
        expect(await workloadIssues(asPod)).toEqual([]);
      }),
      { numRuns: 150 },
    );
    // The generator reaches the injecting path often, not only the skips.
    expect(injectedRuns).toBeGreaterThan(30);
    expect(reinjectedRuns).toBeGreaterThan(15);
  });
});
