/**
 * What `helm install` and `helm upgrade` do with the chart on a real cluster, checked on what it renders:
 * the order Helm creates objects in, every documented combination of values against the Kubernetes
 * OpenAPI schema and the restricted Pod Security profile, the certificate rules, vLLM's hardening and two
 * releases side by side.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { type K8sObject, kubernetesIssues } from '../support/k8s-schema.js';
import { podSpecOf, restrictedIssues } from '../support/pod-security.js';
import {
  CHART,
  find,
  helm,
  MONITORING_API,
  NAMESPACE,
  RELEASE,
  type RenderOptions,
  render,
} from './render.js';

type Obj = Record<string, unknown>;
const spec = (o: K8sObject) => o.spec as Obj;
const annotations = (o: K8sObject) => (o.metadata.annotations ?? {}) as Record<string, string>;
const hooks = (o: K8sObject) => (annotations(o)['helm.sh/hook'] ?? '').split(',').filter(Boolean);

const DOCS = ['README.md', 'docs/kubernetes.md', 'docs/upgrading.md', 'charts/earpiece/README.md'];

/**
 * The `helm install` commands of the docs, as `helm template` options: release, namespace and every
 * `--set`, with the monitoring API the guide assumes (kube-prometheus-stack).
 */
function documentedInstalls(): [string, RenderOptions][] {
  const found: [string, RenderOptions][] = [];
  for (const file of DOCS) {
    const text = readFileSync(file, 'utf8').replace(/\\\n\s*/g, ' ');
    for (const [line] of text.matchAll(/^helm install .*$/gm)) {
      const words = [...line.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
      const options: RenderOptions = { release: words[2], set: [], apiVersions: [MONITORING_API] };
      for (const [i, word] of words.entries()) {
        if (word === '-n' || word === '--namespace') options.namespace = words[i + 1];
        if (word === '--set') options.set!.push(words[i + 1]!);
      }
      found.push([`${file}: helm install ${words[2]}`, options]);
    }
  }
  return found;
}

/** Every combination the docs describe, as `helm template` options. */
const COMBINATIONS: Record<string, RenderOptions> = {
  ...Object.fromEntries(documentedInstalls()),
  default: {},
  'all-on': { values: ['ci/all-on-values.yaml'], apiVersions: [MONITORING_API] },
  'cert-manager': { values: ['ci/cert-manager-values.yaml'] },
  'cert-manager, long release name': {
    release: 'voice-assistant-platform-team-production-canary',
    namespace: 'earpiece-system-production',
    values: ['ci/cert-manager-values.yaml'],
  },
  'an issuer of your own (cert-manager)': {
    values: ['ci/cert-manager-values.yaml'],
    set: ['certManager.issuerRef.name=cluster-ca', 'certManager.issuerRef.kind=ClusterIssuer'],
  },
  'Kubernetes 1.27 and 1.28 (no native sidecars)': { set: ['injection.nativeSidecar=false'] },
  'second release': {
    release: 'earpiece-canary',
    namespace: 'earpiece-canary',
    values: ['ci/second-release-values.yaml'],
  },
  vLLM: { values: ['ci/vllm-values.yaml'], apiVersions: [MONITORING_API] },
  // Helm's longest release name: 53 characters.
  'vLLM, the longest release name': {
    release: 'voice-assistant-platform-team-production-canary-west2',
    values: ['ci/vllm-values.yaml'],
    apiVersions: [MONITORING_API],
  },
  'vLLM with NetworkPolicy': { values: ['ci/vllm-networkpolicy-values.yaml'], apiVersions: [MONITORING_API] },
};

describe.each(Object.entries(COMBINATIONS))('%s', (_name, options) => {
  const objects = render(options);

  it('renders only objects the API server accepts', async () => {
    const problems: string[] = [];
    for (const obj of objects)
      for (const issue of await kubernetesIssues(obj))
        problems.push(`${obj.kind} ${obj.metadata.name}: ${issue}`);
    expect(problems).toEqual([]);
  });

  it('names each object once, each Service within the 63 characters of a DNS label', () => {
    const ids = objects.map((o) => `${o.kind} ${o.metadata.namespace ?? ''}/${o.metadata.name}`);
    expect(ids.filter((id, i) => ids.indexOf(id) !== i)).toEqual([]);
    for (const service of objects.filter((o) => o.kind === 'Service'))
      expect(service.metadata.name.length, service.metadata.name).toBeLessThanOrEqual(63);
  });

  it('runs every pod under the restricted Pod Security profile', () => {
    const pods = objects.flatMap((o) => {
      const pod = podSpecOf(o);
      return pod ? [[`${o.kind} ${o.metadata.name}`, pod] as const] : [];
    });
    expect(pods.length).toBeGreaterThan(0);
    for (const [where, pod] of pods) expect(restrictedIssues(pod), where).toEqual([]);
  });

  it('creates custom resources only after their CRD, as hooks that run on install and upgrade', () => {
    const crds = objects.filter((o) => o.kind === 'CustomResourceDefinition');
    for (const crd of crds) expect(hooks(crd), 'a CRD is created with the release').toEqual([]);
    const chartKinds = new Set(
      crds.map((c) => {
        const s = c.spec as { group: string; names: { kind: string } };
        return `${s.group}/${s.names.kind}`;
      }),
    );
    // Kinds of earpiece.dev exist only through the chart's own CRD (or the first release's).
    for (const obj of objects.filter((o) => o.apiVersion.startsWith('earpiece.dev/'))) {
      expect(chartKinds.size === 0 || chartKinds.has(`earpiece.dev/${obj.kind}`)).toBe(true);
      expect(hooks(obj)).toEqual(['post-install', 'post-upgrade']);
    }
  });
});

describe('helm lint --strict', () => {
  it.each(readdirSync(path.join(CHART, 'ci')))('passes with ci/%s', (file) => {
    const result = helm(['lint', '--strict', CHART, '--values', path.join(CHART, 'ci', file)]);
    expect(result.stderr + result.stdout).toContain('0 chart(s) failed');
  });
});

describe('the documented install commands', () => {
  it('are all among the combinations checked above', () => {
    const installs = documentedInstalls();
    expect(installs.map(([name]) => name)).toEqual([
      'README.md: helm install earpiece',
      'docs/kubernetes.md: helm install earpiece',
      'docs/upgrading.md: helm install earpiece-canary',
      'charts/earpiece/README.md: helm install earpiece',
    ]);
    expect(installs.find(([n]) => n.startsWith('docs/upgrading.md'))![1]).toEqual({
      release: 'earpiece-canary',
      namespace: 'earpiece-canary',
      set: [
        'crds.enabled=false',
        'dashboards.enabled=false',
        'metrics.podMonitor.enabled=false',
        'watchNamespaces={voice-canary}',
        'toolsetValidation.warnUnwatchedNamespaces=false',
      ],
      apiVersions: [MONITORING_API],
    });
  });
});

describe('Pod Security check', () => {
  // The combinations above trust an empty list from restrictedIssues.
  it('names what the restricted profile forbids', () => {
    expect(
      restrictedIssues({
        hostNetwork: true,
        volumes: [{ name: 'h', hostPath: { path: '/' } }],
        containers: [{ name: 'c', securityContext: { capabilities: { add: ['SYS_ADMIN'] } } }],
      }),
    ).toEqual([
      'hostNetwork: must not be true',
      'volume h: type hostPath is not allowed',
      'container c: allowPrivilegeEscalation must be false',
      'container c: capabilities must drop ALL',
      'container c: capability SYS_ADMIN added',
      'container c: runAsNonRoot must be true (pod or container)',
      'container c: seccompProfile must be RuntimeDefault or Localhost (pod or container)',
    ]);
  });
});

describe('the example ToolSet', () => {
  const options = { values: ['ci/vllm-values.yaml'], apiVersions: [MONITORING_API] };

  it('is a post-install and post-upgrade hook: Helm creates it after the CRD the release installs', () => {
    // helm's own split: the MANIFEST is applied first, HOOKS after (post-install ones once it is).
    const result = helm([
      'install',
      RELEASE,
      CHART,
      '--dry-run=client',
      '--namespace',
      NAMESPACE,
      '--values',
      `${CHART}/ci/vllm-values.yaml`,
    ]);
    expect(result.status, result.stderr).toBe(0);
    const section = (from: string, to: string) =>
      parseAllDocuments(
        result.stdout.slice(result.stdout.indexOf(from) + from.length, result.stdout.indexOf(to)),
      )
        .map((d) => d.toJS() as K8sObject | null)
        .flatMap((o) => (o ? [o.kind] : []));
    expect(section('HOOKS:', 'MANIFEST:')).toEqual(['ToolSet']);
    expect(section('MANIFEST:', 'NOTES:')).toContain('CustomResourceDefinition');
    const objects = render(options);
    const toolset = find(objects, 'ToolSet');
    expect(annotations(toolset)).toMatchObject({ 'helm.sh/hook-delete-policy': 'before-hook-creation' });
    // Claimed for this release's operator from the start.
    const operator = (
      podSpecOf(find(objects, 'Deployment', RELEASE))!.containers as {
        env: { name: string; value?: string }[];
      }[]
    )[0]!.env.find((e) => e.name === 'EARPIECE_INSTANCE')!.value;
    expect(toolset.metadata.labels).toMatchObject({ 'earpiece.dev/operator': operator });
  });

  it("talks to the chart's vLLM with its API key, from a copy in the ToolSet's namespace", () => {
    const objects = render(options);
    const toolset = find(objects, 'ToolSet');
    const ref = (
      spec(toolset).upstream as { apiKey: { valueFrom: { secretKeyRef: { name: string; key: string } } } }
    ).apiKey.valueFrom.secretKeyRef;
    const vllm = find(objects, 'Deployment', `${RELEASE}-vllm`);
    const env = (podSpecOf(vllm)!.containers as { env: { name: string; valueFrom?: unknown }[] }[])[0]!.env;
    const own = (env.find((e) => e.name === 'VLLM_API_KEY')!.valueFrom as { secretKeyRef: typeof ref })
      .secretKeyRef;
    expect(own.key).toBe(ref.key);
    const key = (name: string, namespace: string) => {
      const secret = objects.find(
        (o) => o.kind === 'Secret' && o.metadata.name === name && o.metadata.namespace === namespace,
      )!;
      return Buffer.from((secret.data as Record<string, string>)[ref.key]!, 'base64').toString();
    };
    expect(key(own.name, NAMESPACE)).toMatch(/^[A-Za-z0-9]{48}$/);
    // The copy shares its namespace with other releases' objects: it is named after this release's namespace too.
    expect(ref.name).toBe(`${NAMESPACE}-${RELEASE}-vllm-api-key`);
    expect(key(ref.name, 'voice')).toBe(key(own.name, NAMESPACE));
  });
});

describe('vLLM', () => {
  const objects = render({ values: ['ci/vllm-networkpolicy-values.yaml'], apiVersions: [MONITORING_API] });
  const vllm = find(objects, 'Deployment', `${RELEASE}-vllm`);
  const pod = podSpecOf(vllm)!;

  it('gets no service-account token and writes only to its volumes', () => {
    expect(pod.automountServiceAccountToken).toBe(false);
    const container = (pod.containers as Obj[])[0]!;
    expect(container.securityContext).toMatchObject({ readOnlyRootFilesystem: true });
    const mounts = (container.volumeMounts as { mountPath: string }[]).map((m) => m.mountPath);
    const env = Object.fromEntries(
      (container.env as { name: string; value?: string }[]).map((e) => [e.name, e.value]),
    );
    for (const dir of ['HOME', 'HF_HOME', 'XDG_CACHE_HOME', 'XDG_CONFIG_HOME', 'TRITON_CACHE_DIR'])
      expect(
        mounts.some((m) => env[dir]!.startsWith(m)),
        `${dir}=${env[dir]}`,
      ).toBe(true);
  });

  it('admits only injected sidecars of the watched namespaces and Prometheus, on its port', () => {
    const policy = find(objects, 'NetworkPolicy', `${RELEASE}-vllm`);
    const s = spec(policy) as {
      podSelector: { matchLabels: Record<string, string> };
      policyTypes: string[];
      ingress: { from: Obj[]; ports: { port: string }[] }[];
    };
    const podLabels = (vllm.spec as { template: { metadata: { labels: Record<string, string> } } }).template
      .metadata.labels;
    expect(podLabels).toMatchObject(s.podSelector.matchLabels);
    expect(s.policyTypes).toEqual(['Ingress']);
    expect(s.ingress).toHaveLength(1);
    expect(s.ingress[0]!.ports).toEqual([{ port: 'http', protocol: 'TCP' }]);
    expect(s.ingress[0]!.from).toEqual([
      {
        podSelector: { matchLabels: { 'earpiece.dev/injected': 'true' } },
        namespaceSelector: {
          matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values: ['voice'] }],
        },
      },
      {
        namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } },
        podSelector: { matchLabels: { 'app.kubernetes.io/name': 'prometheus' } },
      },
    ]);
  });

  it('admits injected sidecars of every namespace when the operator watches all', () => {
    const all = render({ values: ['ci/vllm-networkpolicy-values.yaml'], set: ['watchNamespaces=null'] });
    const from = (spec(find(all, 'NetworkPolicy')) as { ingress: { from: Obj[] }[] }).ingress[0]!.from;
    expect(from[0]).toEqual({
      podSelector: { matchLabels: { 'earpiece.dev/injected': 'true' } },
      namespaceSelector: {},
    });
  });

  it('is open to the whole cluster only without the NetworkPolicy', () => {
    const without = render({ values: ['ci/vllm-values.yaml'], apiVersions: [MONITORING_API] });
    expect(without.map((o) => o.kind)).not.toContain('NetworkPolicy');
  });

  it("is scraped by a ServiceMonitor on its Service's /metrics", () => {
    const monitor = find(objects, 'ServiceMonitor', `${RELEASE}-vllm`);
    const service = find(objects, 'Service', `${RELEASE}-vllm`);
    const s = spec(monitor) as { selector: { matchLabels: Record<string, string> }; endpoints: Obj[] };
    expect(service.metadata.labels).toMatchObject(s.selector.matchLabels);
    expect(s.endpoints).toEqual([{ port: 'http', path: '/metrics', interval: '15s' }]);
    expect((spec(service) as { ports: { name: string }[] }).ports.map((p) => p.name)).toContain('http');
    // Without the Prometheus operator there is nothing to render it for.
    expect(render({ values: ['ci/vllm-networkpolicy-values.yaml'] }).map((o) => o.kind)).not.toContain(
      'ServiceMonitor',
    );
  });

  it('uses an existing Secret for the API key when named, and creates none', () => {
    const objects = render({
      values: ['ci/vllm-values.yaml'],
      set: ['vllm.apiKey.existingSecret=vllm-key', 'vllm.apiKey.secretKey=token'],
    });
    expect(objects.map((o) => o.kind)).not.toContain('Secret');
    const ref = (
      spec(find(objects, 'ToolSet')).upstream as { apiKey: { valueFrom: { secretKeyRef: unknown } } }
    ).apiKey.valueFrom.secretKeyRef;
    expect(ref).toEqual({ name: 'vllm-key', key: 'token' });
  });
});

type Certificate = {
  metadata: K8sObject['metadata'];
  spec: {
    commonName?: string;
    dnsNames?: string[];
    isCA?: boolean;
    secretName: string;
    privateKey: { rotationPolicy: string };
    issuerRef: { name: string; kind: string };
  };
};

describe('cert-manager certificates', () => {
  for (const [name, options] of Object.entries(COMBINATIONS).filter(([n]) => n.startsWith('cert-manager'))) {
    it(`${name}: DNS names only, signed by a CA whose renewals keep its key`, () => {
      const objects = render(options);
      const certificates = objects.filter((o) => o.kind === 'Certificate') as unknown as Certificate[];
      const serving = certificates.find((c) => !c.spec.isCA)!;
      const ca = certificates.find((c) => c.spec.isCA)!;
      expect(serving.spec.commonName).toBeUndefined();
      for (const dns of serving.spec.dnsNames!) {
        expect(dns.length).toBeLessThanOrEqual(253);
        for (const label of dns.split('.')) expect(label.length, dns).toBeLessThanOrEqual(63);
      }
      // The caBundle comes from the serving certificate's Secret: its ca.crt is the CA's certificate.
      const mwc = find(objects, 'MutatingWebhookConfiguration');
      expect(annotations(mwc)['cert-manager.io/inject-ca-from']).toBe(
        `${serving.metadata.namespace}/${serving.metadata.name}`,
      );
      const caIssuer = find(objects, 'Issuer', serving.spec.issuerRef.name);
      expect(serving.spec.issuerRef.kind).toBe('Issuer');
      expect((caIssuer.spec as { ca: { secretName: string } }).ca.secretName).toBe(ca.spec.secretName);
      expect(ca.spec.privateKey.rotationPolicy).toBe('Never');
      expect((ca.spec.commonName ?? '').length).toBeLessThanOrEqual(64);
      const root = find(objects, 'Issuer', ca.spec.issuerRef.name);
      expect(root.spec).toEqual({ selfSigned: {} });
    });
  }

  it('signs with the named issuer instead, creating no chain of its own', () => {
    const objects = render({
      values: ['ci/cert-manager-values.yaml'],
      set: ['certManager.issuerRef.name=cluster-ca', 'certManager.issuerRef.kind=ClusterIssuer'],
    });
    expect(objects.filter((o) => o.kind === 'Issuer' || o.kind === 'Certificate').map((o) => o.kind)).toEqual(
      ['Certificate'],
    );
  });
});

describe('two releases', () => {
  const first = render();
  const second = render(COMBINATIONS['second release']!);
  // Objects without a namespace; the chart names them after the release and its namespace.
  const clusterScoped = (objects: K8sObject[]) =>
    objects.filter((o) => o.metadata.namespace === undefined).map((o) => `${o.kind}/${o.metadata.name}`);

  it('share no cluster-scoped object: the second leaves the CRD to the first', () => {
    const a = clusterScoped(first);
    const b = clusterScoped(second);
    expect(a).toContain('CustomResourceDefinition/toolsets.earpiece.dev');
    expect(b.filter((name) => a.includes(name))).toEqual([]);
  });

  it('never put the same object into a namespace both write to, even under the same release name', () => {
    // Both watch voice and give their example ToolSet (each its own) the chart's vLLM key there.
    const options = {
      set: [
        'watchNamespaces={voice}',
        'vllm.enabled=true',
        'exampleToolSet.enabled=true',
        'exampleToolSet.namespace=voice',
        'dashboards.namespace=monitoring',
      ],
      apiVersions: [MONITORING_API],
    };
    const first = render(options);
    const second = render({
      ...options,
      namespace: 'earpiece-canary',
      set: [...options.set, 'crds.enabled=false', 'exampleToolSet.name=assistant-canary'],
    });
    const id = (o: K8sObject) => `${o.kind} ${o.metadata.namespace ?? ''}/${o.metadata.name}`;
    const taken = new Set(first.map(id));
    expect(second.filter((o) => o.metadata.namespace !== 'earpiece-canary').length).toBeGreaterThan(0);
    expect(second.map(id).filter((name) => taken.has(name))).toEqual([]);
  });

  it("scrape each sidecar once: the documented second release leaves its sidecars to the first one's PodMonitor", () => {
    // The first release with the guide's monitors, all namespaces watched; the second installed as
    // upgrading.md says, after the same metrics flags (from a values file the two share, say).
    const guide = documentedInstalls().find(([n]) => n.startsWith('docs/kubernetes.md'))![1];
    const canary = documentedInstalls().find(([n]) => n.startsWith('docs/upgrading.md'))![1];
    const metricsFlags = guide.set!.filter((s) => s.startsWith('metrics.'));
    const monitors = [
      ...render(guide),
      ...render({ ...canary, set: [...metricsFlags, ...canary.set!] }),
    ].filter((o) => o.kind === 'PodMonitor');
    const reaching = (namespace: string) =>
      monitors.filter((m) => {
        const selector = (spec(m) as { namespaceSelector: { any?: boolean; matchNames?: string[] } })
          .namespaceSelector;
        return selector.any === true || (selector.matchNames ?? []).includes(namespace);
      });
    expect(reaching('voice-canary')).toHaveLength(1);
    expect(reaching('voice')).toHaveLength(1);
  });

  it('give their operators different identities, each claiming ToolSets for itself', () => {
    const instance = (objects: K8sObject[]) => {
      const deployment = find(objects, 'Deployment');
      const env = (podSpecOf(deployment)!.containers as { env: { name: string; value?: string }[] }[])[0]!
        .env;
      return env.find((e) => e.name === 'EARPIECE_INSTANCE')?.value;
    };
    expect(instance(first)).toBe(`${NAMESPACE}-${RELEASE}`);
    expect(instance(second)).toBe('earpiece-canary-earpiece-canary');
  });
});
