import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ajv } from 'ajv';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../../src/operator/config.js';
import {
  METRICS_PORT_NAME,
  parseQuantity,
  resourcesProblem,
  SidecarConfigError,
  sidecarConfigFromEnv,
} from '../../src/operator/sidecar.js';
import { envSecretRefs, namableEnv, sidecarEnvIssues } from '../../src/operator/sidecar-env.js';
import { DEFAULT_BODY_BYTES_IN_FLIGHT } from '../../src/operator/webhook.js';
import { validateToolSet } from '../../src/toolset/index.js';
import { operatorSampleNames } from '../support/dashboard.js';
import { type K8sObject, kubernetesIssues } from '../support/k8s-schema.js';
import { allowed } from './rbac.js';
import {
  CHART,
  find,
  helm,
  kinds,
  MONITORING_API,
  NAMESPACE,
  notes,
  RELEASE,
  render,
  renderError,
} from './render.js';

type Container = {
  name: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  ports?: { name: string; containerPort: number }[];
  [field: string]: unknown;
};
type PodSpec = { containers: Container[]; volumes?: Record<string, unknown>[]; [field: string]: unknown };
type Rule = { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] };
type Webhook = {
  name: string;
  clientConfig: { service: { name: string; namespace: string; path: string; port: number } };
  objectSelector: Record<string, unknown>;
  namespaceSelector: {
    matchLabels?: Record<string, string>;
    matchExpressions: { key: string; operator: string; values: string[] }[];
  };
  [field: string]: unknown;
};

const podSpec = (deployment: K8sObject) =>
  (deployment as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
const container = (deployment: K8sObject) => podSpec(deployment).containers[0]!;
const env = (c: Container) => Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]));
const webhooks = (objects: K8sObject[]) =>
  (find(objects, 'MutatingWebhookConfiguration') as unknown as { webhooks: Webhook[] }).webhooks;
const rules = (role: K8sObject) => (role as unknown as { rules: Rule[] }).rules;
/** What `earpiece operator` makes of the Deployment's environment, with the downward API filled in. */
const operatorConfig = (deployment: K8sObject) => {
  const values = Object.entries(env(container(deployment))).filter(([, v]) => typeof v === 'string');
  return loadConfig([], {
    ...Object.fromEntries(values),
    EARPIECE_NAMESPACE: NAMESPACE,
    EARPIECE_POD_NAME: 'p',
  }).config;
};

async function expectValid(objects: K8sObject[]) {
  const problems: string[] = [];
  for (const obj of objects)
    for (const issue of await kubernetesIssues(obj))
      problems.push(`${obj.kind} ${obj.metadata.name}: ${issue}`);
  expect(problems).toEqual([]);
}

const FULLNAME = RELEASE;
const CLUSTER_NAME = `${NAMESPACE}-${RELEASE}`;
const ALL_ON = { values: ['ci/all-on-values.yaml'], apiVersions: [MONITORING_API] };

describe('helm lint --strict', () => {
  it('passes with the default values', () => {
    const result = helm(['lint', '--strict', CHART]);
    expect(result.stderr + result.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
    expect(result.status).toBe(0);
  });

  it('passes with every option on', () => {
    const result = helm(['lint', '--strict', CHART, '--values', path.join(CHART, 'ci/all-on-values.yaml')]);
    expect(result.stderr + result.stdout).toContain('1 chart(s) linted, 0 chart(s) failed');
    expect(result.status).toBe(0);
  });
});

describe('default values', () => {
  const objects = render();

  it('renders the operator, its RBAC, webhook, CRD and dashboard, each valid for the API server', async () => {
    expect(kinds(objects)).toEqual([
      'ClusterRole',
      'ClusterRole',
      'ClusterRoleBinding',
      'ClusterRoleBinding',
      'ConfigMap',
      'CustomResourceDefinition',
      'Deployment',
      'MutatingWebhookConfiguration',
      'PodDisruptionBudget',
      'Role',
      'RoleBinding',
      'Service',
      'ServiceAccount',
      'ValidatingWebhookConfiguration',
    ]);
    await expectValid(objects);
  });

  it('runs two non-root replicas on a read-only root filesystem, probed on port 8081', () => {
    const deployment = find(objects, 'Deployment', FULLNAME);
    expect((deployment.spec as { replicas: number }).replicas).toBe(2);
    const pod = podSpec(deployment);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 65532 });
    const c = container(deployment);
    expect(c.args).toEqual(['operator']);
    expect(c.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    expect(c.ports).toEqual([
      { name: 'webhook', containerPort: 9443, protocol: 'TCP' },
      { name: 'metrics', containerPort: 8080, protocol: 'TCP' },
      { name: 'probes', containerPort: 8081, protocol: 'TCP' },
    ]);
    expect(c.livenessProbe).toMatchObject({ httpGet: { path: '/healthz', port: 'probes' } });
    expect(c.readinessProbe).toMatchObject({ httpGet: { path: '/readyz', port: 'probes' } });
    expect(c.resources).toMatchObject({ requests: { cpu: expect.any(String), memory: expect.any(String) } });
  });

  it("sets the operator's whole environment contract", () => {
    const deployment = find(objects, 'Deployment', FULLNAME);
    expect(env(container(deployment))).toEqual({
      EARPIECE_NAMESPACE: { fieldRef: { fieldPath: 'metadata.namespace' } },
      EARPIECE_POD_NAME: { fieldRef: { fieldPath: 'metadata.name' } },
      EARPIECE_WATCH_NAMESPACES: '',
      EARPIECE_EXCLUDE_NAMESPACES: `kube-system,kube-public,kube-node-lease,${NAMESPACE}`,
      EARPIECE_LEADER_ELECTION: 'true',
      EARPIECE_LEASE_NAME: `${FULLNAME}-controller`,
      EARPIECE_INSTANCE: CLUSTER_NAME,
      EARPIECE_WEBHOOK_PORT: '9443',
      EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT: '25165824',
      EARPIECE_PROBE_PORT: '8081',
      EARPIECE_METRICS_PORT: '8080',
      EARPIECE_WEBHOOK_CONFIG_NAME: CLUSTER_NAME,
      EARPIECE_WEBHOOK_SERVICE_NAME: FULLNAME,
      EARPIECE_CERT_MODE: 'operator',
      EARPIECE_CERT_SECRET_NAME: `${FULLNAME}-webhook-tls`,
      EARPIECE_CERT_DIR: '/var/run/earpiece/webhook-certs',
      EARPIECE_SIDECAR_IMAGE: 'ghcr.io/earpiece-dev/earpiece:0.1.0',
      EARPIECE_SIDECAR_IMAGE_PULL_POLICY: 'IfNotPresent',
      EARPIECE_SIDECAR_RESOURCES: JSON.stringify({
        limits: { memory: '256Mi' },
        requests: { cpu: '50m', memory: '128Mi' },
      }),
      EARPIECE_SIDECAR_IMAGE_PULL_SECRETS: '[]',
      EARPIECE_NATIVE_SIDECAR: 'auto',
      EARPIECE_SIDECAR_LOG_LEVEL: 'info',
      EARPIECE_SIDECAR_ENV: '[]',
      EARPIECE_LOG_LEVEL: 'info',
      EARPIECE_SHUTDOWN_GRACE: '5s',
      EARPIECE_TOOLSET_SECRET_ACCESS_CHECK: 'true',
    });
    // The operator reads the sidecar's settings with the same parser it uses at start.
    expect(sidecarConfigFromEnv(env(container(deployment)) as NodeJS.ProcessEnv)).toEqual({
      image: 'ghcr.io/earpiece-dev/earpiece:0.1.0',
      imagePullPolicy: 'IfNotPresent',
      resources: { limits: { memory: '256Mi' }, requests: { cpu: '50m', memory: '128Mi' } },
      nativeSidecar: true,
      imagePullSecrets: [],
      logLevel: 'info',
      extraEnv: [],
    });
  });

  it.each([
    [[], 'ghcr.io/earpiece-dev/earpiece:0.1.0'],
    [['image.tag=0.1.1'], 'ghcr.io/earpiece-dev/earpiece:0.1.1'],
    // A tag alone is a tag of the operator's repository, not ignored.
    [['injection.image.tag=0.2.0-rc.1'], 'ghcr.io/earpiece-dev/earpiece:0.2.0-rc.1'],
    [
      ['image.repository=registry.example/earpiece', 'injection.image.tag=next'],
      'registry.example/earpiece:next',
    ],
    [['injection.image.repository=mirror.example/earpiece'], 'mirror.example/earpiece:0.1.0'],
    [
      ['injection.image.repository=mirror.example/earpiece', 'injection.image.tag=x'],
      'mirror.example/earpiece:x',
    ],
  ])('with %j injects the sidecar image %s', (set, image) => {
    const deployment = find(render({ set }), 'Deployment', FULLNAME);
    expect(sidecarConfigFromEnv(env(container(deployment)) as NodeJS.ProcessEnv).image).toBe(image);
  });

  it('gives the chart-wide image pull secrets to the sidecars as well', () => {
    const rendered = render({ set: ['imagePullSecrets[0].name=regcred', 'imagePullSecrets[1].name=mirror'] });
    const deployment = find(rendered, 'Deployment', FULLNAME);
    const spec = (deployment as unknown as { spec: { template: { spec: { imagePullSecrets: unknown } } } })
      .spec;
    expect(spec.template.spec.imagePullSecrets).toEqual([{ name: 'regcred' }, { name: 'mirror' }]);
    expect(sidecarConfigFromEnv(env(container(deployment)) as NodeJS.ProcessEnv).imagePullSecrets).toEqual([
      'regcred',
      'mirror',
    ]);
  });

  it.each([
    ['1.27.3', [], 'false'],
    ['1.28.0', [], 'false'],
    ['1.29.0', [], 'auto'],
    ['1.33.1', [], 'auto'],
    ['1.28.0', ['injection.nativeSidecar=true'], 'true'],
    ['1.33.1', ['injection.nativeSidecar=false'], 'false'],
  ])('on Kubernetes %s with %j sets EARPIECE_NATIVE_SIDECAR=%s', (kubeVersion, set, expected) => {
    const deployment = find(render({ kubeVersion, set }), 'Deployment', FULLNAME);
    expect(env(container(deployment)).EARPIECE_NATIVE_SIDECAR).toBe(expected);
  });

  it('configures the operator with the names of the objects the chart creates', () => {
    const config = operatorConfig(find(objects, 'Deployment', FULLNAME));
    const role = rules(find(objects, 'Role', FULLNAME));
    const named = (resource: string) => role.find((r) => r.resources[0] === resource && r.resourceNames)!;
    const service = find(objects, 'Service', FULLNAME) as unknown as {
      metadata: { name: string };
      spec: { ports: { name: string; targetPort: string }[] };
    };
    expect(config).toMatchObject({
      namespace: NAMESPACE,
      watchNamespaces: [],
      leaderElection: true,
      leaseName: named('leases').resourceNames![0],
      webhookPort: 9443,
      probePort: 8081,
      metricsPort: 8080,
      webhookConfigName: find(objects, 'MutatingWebhookConfiguration').metadata.name,
      webhookServiceName: service.metadata.name,
      certMode: 'operator',
      certSecretName: named('secrets').resourceNames![0],
    });
    expect(rules(find(objects, 'ClusterRole', `${CLUSTER_NAME}-cluster`))[1]!.resourceNames).toEqual([
      config.webhookConfigName,
    ]);
  });

  it('allows the operator its own Lease and Secret, and nobody else’s', () => {
    const sa = { name: FULLNAME, namespace: NAMESPACE };
    const secret = (verb: string, name: string | undefined, namespace = NAMESPACE) =>
      allowed(objects, sa, { verb, apiGroup: '', resource: 'secrets', namespace, name });
    expect(secret('get', `${FULLNAME}-webhook-tls`)).toBe(true);
    expect(secret('create', undefined)).toBe(true);
    expect(secret('get', 'someone-elses')).toBe(false);
    expect(secret('list', undefined)).toBe(false);
    expect(secret('get', `${FULLNAME}-webhook-tls`, 'voice')).toBe(false);
    const lease = (verb: string, name: string) =>
      allowed(objects, sa, {
        verb,
        apiGroup: 'coordination.k8s.io',
        resource: 'leases',
        namespace: NAMESPACE,
        name,
      });
    expect(lease('update', `${FULLNAME}-controller`)).toBe(true);
    expect(lease('update', 'kube-controller-manager')).toBe(false);
    expect(
      allowed(objects, sa, { verb: 'delete', apiGroup: '', resource: 'pods', namespace: 'voice', name: 'p' }),
    ).toBe(false);
  });

  it('grants least privilege: no wildcards, names where Kubernetes allows them', () => {
    for (const role of objects.filter((o) => o.kind === 'ClusterRole' || o.kind === 'Role'))
      for (const rule of rules(role))
        for (const field of [rule.apiGroups, rule.resources, rule.verbs]) expect(field).not.toContain('*');

    expect(rules(find(objects, 'ClusterRole', CLUSTER_NAME))).toEqual([
      { apiGroups: ['earpiece.dev'], resources: ['toolsets'], verbs: ['list', 'watch', 'patch'] },
      { apiGroups: ['earpiece.dev'], resources: ['toolsets/status'], verbs: ['patch'] },
      { apiGroups: [''], resources: ['configmaps'], verbs: ['list', 'watch', 'create', 'patch'] },
      { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
      { apiGroups: [''], resources: ['pods'], verbs: ['list', 'watch'] },
    ]);
    expect(rules(find(objects, 'ClusterRole', `${CLUSTER_NAME}-cluster`))).toEqual([
      { apiGroups: [''], resources: ['namespaces'], verbs: ['list', 'watch'] },
      {
        apiGroups: ['admissionregistration.k8s.io'],
        resources: ['mutatingwebhookconfigurations', 'validatingwebhookconfigurations'],
        resourceNames: [CLUSTER_NAME],
        verbs: ['get', 'patch'],
      },
      { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
    ]);
    const role = find(objects, 'Role', FULLNAME);
    expect(role.metadata.namespace).toBe(NAMESPACE);
    expect(rules(role)).toEqual([
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
      {
        apiGroups: ['coordination.k8s.io'],
        resources: ['leases'],
        resourceNames: [`${FULLNAME}-controller`],
        verbs: ['get', 'update'],
      },
      { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
      {
        apiGroups: [''],
        resources: ['secrets'],
        resourceNames: [`${FULLNAME}-webhook-tls`],
        verbs: ['get', 'update'],
      },
    ]);
    // Every binding hands its role to the operator's ServiceAccount, and nothing else.
    for (const binding of objects.filter((o) => o.kind.endsWith('Binding')))
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: FULLNAME, namespace: NAMESPACE }]);
  });

  it("routes the webhook through the Service to the operator's port 9443", () => {
    const service = find(objects, 'Service', FULLNAME) as unknown as {
      spec: { selector: Record<string, string>; ports: { name: string; port: number; targetPort: string }[] };
    };
    expect(service.spec.ports).toEqual([
      { name: 'webhook', port: 443, targetPort: 'webhook', protocol: 'TCP' },
      { name: 'metrics', port: 8080, targetPort: 'metrics', protocol: 'TCP' },
    ]);
    const deployment = find(objects, 'Deployment', FULLNAME);
    const podLabels = (deployment.spec as { template: { metadata: { labels: Record<string, string> } } })
      .template.metadata.labels;
    expect(podLabels).toMatchObject(service.spec.selector);
    for (const hook of webhooks(objects))
      expect(hook.clientConfig).toEqual({
        service: { name: FULLNAME, namespace: NAMESPACE, path: '/mutate', port: 443 },
      });
  });

  it('calls the webhook for opted-in pods and namespaces, never for kube-system or its own namespace', () => {
    const [pods, namespaces] = webhooks(objects);
    for (const hook of [pods!, namespaces!]) {
      expect(hook).toMatchObject({
        rules: [{ operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'] }],
        failurePolicy: 'Ignore',
        sideEffects: 'None',
        timeoutSeconds: 10,
        reinvocationPolicy: 'IfNeeded',
        admissionReviewVersions: ['v1'],
      });
      expect(hook.clientConfig).not.toHaveProperty('caBundle');
      expect(hook.namespaceSelector.matchExpressions).toEqual([
        {
          key: 'kubernetes.io/metadata.name',
          operator: 'NotIn',
          values: ['kube-system', 'kube-public', 'kube-node-lease', NAMESPACE],
        },
      ]);
    }
    // The operator knows them too, so it does not report their pods as uninjected.
    expect(operatorConfig(find(objects, 'Deployment', FULLNAME)).excludeNamespaces).toEqual(
      pods!.namespaceSelector.matchExpressions[0]!.values,
    );
    expect(pods!.objectSelector).toEqual({ matchLabels: { 'earpiece.dev/inject': 'true' } });
    expect(pods!.namespaceSelector.matchLabels).toBeUndefined();
    expect(namespaces!.namespaceSelector.matchLabels).toEqual({ 'earpiece.dev/inject': 'true' });
    // Pods labelled "false" opt out; pods labelled "true" are already sent by the first entry.
    expect(namespaces!.objectSelector).toEqual({
      matchExpressions: [{ key: 'earpiece.dev/inject', operator: 'NotIn', values: ['true', 'false'] }],
    });
  });

  it('ships the CRD from templates/, kept on uninstall, with the spec of crds/', () => {
    const copy = readFileSync(path.join(CHART, 'files/toolsets.earpiece.dev.yaml'), 'utf8');
    expect(copy, 'stale chart copy: cp crds/toolsets.earpiece.dev.yaml charts/earpiece/files/').toBe(
      readFileSync('crds/toolsets.earpiece.dev.yaml', 'utf8'),
    );
    const source = parse(copy);
    const crd = find(objects, 'CustomResourceDefinition', 'toolsets.earpiece.dev');
    expect(crd.spec).toEqual(source.spec);
    expect(crd.metadata.annotations).toEqual({ 'helm.sh/resource-policy': 'keep' });
    expect(crd.metadata.labels).toMatchObject({ 'app.kubernetes.io/instance': RELEASE });
  });

  it('ships the Grafana dashboard as a ConfigMap labelled for the Grafana sidecar', () => {
    const dashboard = find(objects, 'ConfigMap', `${FULLNAME}-dashboard`);
    expect(dashboard.metadata.labels).toMatchObject({ grafana_dashboard: '1' });
    const json = (dashboard.data as Record<string, string>)['earpiece.json']!;
    expect(json).toBe(readFileSync(path.join(CHART, 'dashboards/earpiece.json'), 'utf8').trimEnd());
    expect(JSON.parse(json)).toMatchObject({ title: expect.any(String), panels: expect.any(Array) });
  });

  it('renders no monitors unless asked, even where the Prometheus operator runs', () => {
    const withApi = render({ apiVersions: [MONITORING_API] });
    expect(kinds(withApi)).toEqual(kinds(objects));
  });
});

describe('every option on', () => {
  const objects = render(ALL_ON);

  it('renders every object, each valid for the API server or its CRD', async () => {
    expect(kinds(objects)).toEqual([
      'Certificate',
      'Certificate',
      'ClusterRole',
      'ClusterRole',
      'ClusterRoleBinding',
      'ConfigMap',
      'CustomResourceDefinition',
      'Deployment',
      'Deployment',
      'Issuer',
      'Issuer',
      'MutatingWebhookConfiguration',
      'PodDisruptionBudget',
      'PodMonitor',
      'PrometheusRule',
      'Role',
      'RoleBinding',
      'RoleBinding',
      'RoleBinding',
      'Secret',
      'Secret',
      'Service',
      'Service',
      'ServiceAccount',
      'ServiceMonitor',
      'ToolSet',
      'ValidatingWebhookConfiguration',
    ]);
    await expectValid(objects);
  });

  it('hands the certificate to cert-manager: Issuer, Certificate, CA injection, the Secret mounted', () => {
    const certificate = find(objects, 'Certificate', `${FULLNAME}-webhook`) as unknown as {
      metadata: { namespace: string };
      spec: { secretName: string; dnsNames: string[]; issuerRef: { name: string; kind: string } };
    };
    expect(certificate.spec.dnsNames).toContain(`${FULLNAME}.${NAMESPACE}.svc`);
    expect(certificate.spec.issuerRef).toMatchObject({ name: `${FULLNAME}-webhook-ca`, kind: 'Issuer' });
    find(objects, 'Issuer', `${FULLNAME}-selfsigned`);
    find(objects, 'Issuer', `${FULLNAME}-webhook-ca`);
    for (const kind of ['MutatingWebhookConfiguration', 'ValidatingWebhookConfiguration'])
      expect(find(objects, kind).metadata.annotations, kind).toEqual({
        'cert-manager.io/inject-ca-from': `${certificate.metadata.namespace}/${FULLNAME}-webhook`,
      });

    const deployment = find(objects, 'Deployment', FULLNAME);
    const config = operatorConfig(deployment);
    expect(config.certMode).toBe('cert-manager');
    expect(config.certSecretName).toBe(certificate.spec.secretName);
    const mount = (container(deployment).volumeMounts as { name: string; mountPath: string }[]).find(
      (m) => m.mountPath === config.certDir,
    );
    const volume = podSpec(deployment).volumes?.find((v) => v.name === mount?.name);
    expect(volume).toEqual({ name: 'webhook-certs', secret: { secretName: certificate.spec.secretName } });
    // cert-manager fills the caBundle and owns the Secret: the operator gets neither right.
    expect(rules(find(objects, 'ClusterRole', `${CLUSTER_NAME}-cluster`))).toEqual([
      { apiGroups: [''], resources: ['namespaces'], verbs: ['list', 'watch'] },
      { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
    ]);
    expect(rules(find(objects, 'Role')).some((r) => r.resources.includes('secrets'))).toBe(false);
  });

  it('watches only the named namespaces: RBAC and webhook both limited to them', () => {
    const bindings = objects.filter((o) => o.kind === 'RoleBinding' && o.metadata.namespace !== NAMESPACE);
    expect(bindings.map((b) => b.metadata.namespace)).toEqual(['voice', 'voice-staging']);
    for (const b of bindings)
      expect(b.roleRef).toEqual({
        apiGroup: 'rbac.authorization.k8s.io',
        kind: 'ClusterRole',
        name: CLUSTER_NAME,
      });
    // Only the cluster-scoped rights (namespaces) are still bound cluster-wide.
    expect(objects.filter((o) => o.kind === 'ClusterRoleBinding').map((b) => b.roleRef)).toEqual([
      { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: `${CLUSTER_NAME}-cluster` },
    ]);
    for (const hook of webhooks(objects)) {
      expect(hook.failurePolicy).toBe('Fail');
      expect(hook.namespaceSelector.matchExpressions).toContainEqual({
        key: 'kubernetes.io/metadata.name',
        operator: 'In',
        values: ['voice', 'voice-staging'],
      });
    }
    // ToolSet validation covers the ToolSets the operator reconciles.
    const validating = find(objects, 'ValidatingWebhookConfiguration') as unknown as { webhooks: Webhook[] };
    expect(validating.webhooks[0]).toMatchObject({
      failurePolicy: 'Fail',
      namespaceSelector: {
        matchExpressions: [
          { key: 'kubernetes.io/metadata.name', operator: 'In', values: ['voice', 'voice-staging'] },
        ],
      },
    });
    // The rest are sent too, to be admitted with a warning, never blocked, on the same endpoint.
    expect(validating.webhooks[1]).toMatchObject({
      name: 'toolsets-unwatched.validate.earpiece.dev',
      clientConfig: validating.webhooks[0]!.clientConfig,
      failurePolicy: 'Ignore',
      namespaceSelector: {
        matchExpressions: [
          { key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: ['voice', 'voice-staging'] },
        ],
      },
    });
    expect(validating.webhooks).toHaveLength(2);
    expect(operatorConfig(find(objects, 'Deployment', FULLNAME)).watchNamespaces).toEqual([
      'voice',
      'voice-staging',
    ]);
  });

  it('hands the sidecar settings to the operator', () => {
    const vars = env(container(find(objects, 'Deployment', FULLNAME))) as NodeJS.ProcessEnv;
    expect(sidecarConfigFromEnv(vars)).toMatchObject({
      nativeSidecar: false,
      logLevel: 'debug',
      extraEnv: [{ name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://otel-collector.observability:4318' }],
    });
  });

  it('monitors the operator and every injected sidecar, with the alert rules', () => {
    const serviceMonitor = find(objects, 'ServiceMonitor') as unknown as {
      metadata: K8sObject['metadata'];
      spec: {
        selector: { matchLabels: Record<string, string> };
        endpoints: { port: string; relabelings: { targetLabel: string; replacement: string }[] }[];
      };
    };
    expect(serviceMonitor.metadata.labels).toMatchObject({ release: 'kube-prometheus-stack' });
    expect(serviceMonitor.spec.endpoints[0]!.port).toBe('metrics');
    // EarpieceOperatorDown finds the operator's scrape targets by this label on `up`.
    expect(serviceMonitor.spec.endpoints[0]!.relabelings).toContainEqual({
      targetLabel: 'earpiece_component',
      replacement: 'operator',
    });
    expect(readFileSync('charts/earpiece/rules/earpiece.rules.yaml', 'utf8')).toContain(
      'up{earpiece_component="operator"}',
    );
    const service = find(objects, 'Service', FULLNAME) as unknown as {
      metadata: { labels: Record<string, string> };
    };
    expect(service.metadata.labels).toMatchObject(serviceMonitor.spec.selector.matchLabels);

    const podMonitor = find(objects, 'PodMonitor') as unknown as {
      spec: {
        selector: unknown;
        namespaceSelector: unknown;
        podMetricsEndpoints: { port: string; path: string }[];
      };
    };
    expect(podMonitor.spec.selector).toEqual({ matchLabels: { 'earpiece.dev/injected': 'true' } });
    expect(podMonitor.spec.namespaceSelector).toEqual({ matchNames: ['voice', 'voice-staging'] });
    expect(podMonitor.spec.podMetricsEndpoints).toMatchObject([
      { port: METRICS_PORT_NAME, path: '/metrics' },
    ]);

    const rule = find(objects, 'PrometheusRule');
    const file = parse(readFileSync(path.join(CHART, 'rules/earpiece.rules.yaml'), 'utf8'));
    expect(rule.spec).toEqual({ groups: file.groups });
  });

  it('points the runbook links where metrics.prometheusRule.runbookBaseUrl says', () => {
    const rendered = render({
      values: ['ci/all-on-values.yaml'],
      set: ['metrics.prometheusRule.runbookBaseUrl=https://wiki.example/earpiece'],
      apiVersions: [MONITORING_API],
    });
    const rules = (
      find(rendered, 'PrometheusRule') as unknown as {
        spec: { groups: { rules: { alert: string; annotations: { runbook_url: string } }[] }[] };
      }
    ).spec.groups.flatMap((g) => g.rules);
    expect(rules.length).toBeGreaterThan(0);
    for (const r of rules)
      expect(r.annotations.runbook_url).toBe(`https://wiki.example/earpiece#${r.alert.toLowerCase()}`);
  });

  it('runs vLLM with tool calling on, a context of at least 4096 tokens and a GPU', () => {
    const vllm = find(objects, 'Deployment', `${FULLNAME}-vllm`);
    const c = container(vllm);
    expect(c.args).toEqual([
      '--model=Qwen/Qwen3-4B-Instruct-2507',
      '--served-model-name=Qwen/Qwen3-4B-Instruct-2507',
      '--port=8000',
      '--max-model-len=8192',
      '--gpu-memory-utilization=0.9',
      '--enable-auto-tool-choice',
      '--tool-call-parser=hermes',
      '--chat-template=/templates/tool_chat.jinja',
      '--enable-prefix-caching',
    ]);
    expect(c.resources).toMatchObject({ limits: { 'nvidia.com/gpu': 1 } });
    expect(env(c).HF_TOKEN).toEqual({ secretKeyRef: { name: 'huggingface', key: 'token' } });
    const service = find(objects, 'Service', `${FULLNAME}-vllm`) as unknown as {
      spec: { selector: Record<string, string>; ports: { port: number }[] };
    };
    expect(service.spec.ports[0]!.port).toBe(8000);
    const podLabels = (vllm.spec as { template: { metadata: { labels: Record<string, string> } } }).template
      .metadata.labels;
    expect(podLabels).toMatchObject(service.spec.selector);
  });

  it('creates an example ToolSet that earpiece itself accepts', () => {
    const toolset = find(objects, 'ToolSet', 'assistant');
    expect(toolset.metadata.namespace).toBe('voice');
    expect(validateToolSet(toolset).issues).toEqual([]);
  });
});

describe('switches and guards', () => {
  it('leaves monitors out when the cluster has no Prometheus operator, and says so in the notes', () => {
    const objects = render({ values: ['ci/all-on-values.yaml'] });
    for (const kind of ['ServiceMonitor', 'PodMonitor', 'PrometheusRule'])
      expect(objects.map((o) => o.kind)).not.toContain(kind);
    expect(notes({ values: ['ci/all-on-values.yaml'] })).toContain('does not serve monitoring.coreos.com/v1');
    expect(notes()).not.toContain('WARNING');
  });

  it("leaves the operator's alerts out of the PrometheusRule unless the ServiceMonitor scrapes the operator, and says so", async () => {
    // Every metric the operator exposes, once each kind of record was made.
    const names = new Set((await operatorSampleNames()).filter((name) => name.startsWith('earpiece_')));
    const readsOperator = (expr: string) => [...names].some((name) => new RegExp(`\\b${name}\\b`).test(expr));
    const alerts = (set: string[]) =>
      (
        find(render({ ...ALL_ON, set }), 'PrometheusRule') as unknown as {
          spec: { groups: { rules: { alert: string; expr: string }[] }[] };
        }
      ).spec.groups.flatMap((g) => g.rules);
    const scraped = alerts([]);
    const unscraped = alerts(['metrics.serviceMonitor.enabled=false']);
    const onOperator = scraped.filter((r) => readsOperator(r.expr)).map((r) => r.alert);
    expect(onOperator).toContain('EarpieceOperatorDown');
    expect(unscraped.map((r) => r.alert)).toEqual(
      scraped.filter((r) => !readsOperator(r.expr)).map((r) => r.alert),
    );
    const text = notes({ set: ['metrics.prometheusRule.enabled=true'] });
    expect(text).toContain(`as nothing would scrape the operator: ${onOperator.join(', ')}.`);
    expect(
      notes({ set: ['metrics.prometheusRule.enabled=true', 'metrics.serviceMonitor.enabled=true'] }),
    ).not.toContain('nothing would scrape the operator');
  });

  it("gives the pods their podLabels, over the chart's own labels but never over their selector's", () => {
    const objects = render({
      set: [
        'podLabels.team=voice',
        'podLabels.app\\.kubernetes\\.io/part-of=voice-platform',
        'vllm.enabled=true',
        'vllm.podLabels.app\\.kubernetes\\.io/part-of=voice-platform',
      ],
    });
    for (const name of [FULLNAME, `${FULLNAME}-vllm`]) {
      const { spec } = find(objects, 'Deployment', name) as unknown as {
        spec: {
          selector: { matchLabels: Record<string, string> };
          template: { metadata: { labels: Record<string, string> } };
        };
      };
      expect(spec.template.metadata.labels).toMatchObject(spec.selector.matchLabels);
      expect(spec.template.metadata.labels['app.kubernetes.io/part-of'], name).toBe('voice-platform');
    }
  });

  it('drops the CRD, the dashboard and the PodDisruptionBudget when told to', () => {
    const objects = render({ set: ['crds.enabled=false', 'dashboards.enabled=false', 'replicaCount=1'] });
    for (const kind of ['CustomResourceDefinition', 'ConfigMap', 'PodDisruptionBudget'])
      expect(objects.map((o) => o.kind)).not.toContain(kind);
  });

  it('uses an existing cert-manager issuer when named', () => {
    const objects = render({
      set: [
        'certManager.enabled=true',
        'certManager.issuerRef.name=cluster-ca',
        'certManager.issuerRef.kind=ClusterIssuer',
      ],
    });
    expect(objects.map((o) => o.kind)).not.toContain('Issuer');
    expect((find(objects, 'Certificate').spec as { issuerRef: unknown }).issuerRef).toEqual({
      name: 'cluster-ca',
      kind: 'ClusterIssuer',
    });
  });

  it("gives the pod longer to stop than the operator's shutdown grace period and its last reviews", () => {
    for (const set of [[], ['shutdownGraceSeconds=20', 'webhook.timeoutSeconds=30']]) {
      const objects = render({ set });
      const deployment = find(objects, 'Deployment', FULLNAME);
      const { shutdownGraceMs } = operatorConfig(deployment);
      const terminationGracePeriodSeconds = podSpec(deployment).terminationGracePeriodSeconds as number;
      const [hook] = webhooks(objects);
      expect(shutdownGraceMs).toBe(set.length ? 20_000 : 5000);
      expect(terminationGracePeriodSeconds * 1000).toBeGreaterThan(
        shutdownGraceMs + (hook!.timeoutSeconds as number) * 1000,
      );
    }
  });

  it("passes webhook.maxBodyBytesInFlight to the operator's webhook, the code's default unless set", () => {
    const configured = (set: string[]) =>
      operatorConfig(find(render({ set }), 'Deployment', FULLNAME)).webhookMaxBodyBytesInFlight;
    expect(configured([])).toBe(DEFAULT_BODY_BYTES_IN_FLIGHT);
    // Large numbers too: helm holds them as floats, which must not reach the variable as 6.7108864e+07.
    expect(configured(['webhook.maxBodyBytesInFlight=67108864'])).toBe(64 * 1024 * 1024);
    expect(configured(['webhook.maxBodyBytesInFlight=9007199254740991'])).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('tells the operator the namespaces the webhook leaves out, as the webhook has them', () => {
    const objects = render({ set: [`webhook.excludeNamespaces={kube-system,${NAMESPACE},ops}`] });
    const expected = ['kube-system', NAMESPACE, 'ops'];
    expect(operatorConfig(find(objects, 'Deployment', FULLNAME)).excludeNamespaces).toEqual(expected);
    for (const hook of webhooks(objects))
      expect(hook.namespaceSelector.matchExpressions[0]!.values).toEqual(expected);
    // null clears the list: the release namespace alone is left out.
    const cleared = render({ set: ['webhook.excludeNamespaces=null'] });
    expect(operatorConfig(find(cleared, 'Deployment', FULLNAME)).excludeNamespaces).toEqual([NAMESPACE]);
    for (const hook of webhooks(cleared))
      expect(hook.namespaceSelector.matchExpressions[0]!.values).toEqual([NAMESPACE]);
  });

  it('validates ToolSets through /validate, on the Service and certificate of the injection webhook', () => {
    const objects = render();
    const config = find(objects, 'ValidatingWebhookConfiguration', CLUSTER_NAME) as unknown as {
      webhooks: (Webhook & { rules: unknown[] })[];
    };
    const mutating = webhooks(objects)[0]!;
    expect(config.webhooks).toEqual([
      {
        name: 'toolsets.validate.earpiece.dev',
        clientConfig: { service: { ...mutating.clientConfig.service, path: '/validate' } },
        rules: [
          {
            operations: ['CREATE', 'UPDATE'],
            apiGroups: ['earpiece.dev'],
            apiVersions: ['v1alpha1'],
            resources: ['toolsets'],
            scope: 'Namespaced',
          },
        ],
        matchPolicy: 'Equivalent',
        failurePolicy: 'Ignore',
        sideEffects: 'None',
        timeoutSeconds: mutating.timeoutSeconds,
        admissionReviewVersions: ['v1'],
      },
    ]);
    // The operator keeps its caBundle, under the name it is configured with.
    const sa = { name: FULLNAME, namespace: NAMESPACE };
    const patch = (name: string) =>
      allowed(objects, sa, {
        verb: 'patch',
        apiGroup: 'admissionregistration.k8s.io',
        resource: 'validatingwebhookconfigurations',
        namespace: undefined,
        name,
      });
    expect(patch(operatorConfig(find(objects, 'Deployment', FULLNAME)).webhookConfigName)).toBe(true);
    expect(patch('someone-elses')).toBe(false);
  });

  it('takes the ToolSet validation failurePolicy from the values, and leaves validation out when told to', () => {
    const failing = render({ set: ['toolsetValidation.failurePolicy=Fail'] });
    const config = find(failing, 'ValidatingWebhookConfiguration') as unknown as { webhooks: Webhook[] };
    expect(config.webhooks[0]?.failurePolicy).toBe('Fail');
    // The injection webhook keeps its own.
    for (const hook of webhooks(failing)) expect(hook.failurePolicy).toBe('Ignore');
    expect(kinds(render({ set: ['toolsetValidation.enabled=false'] }))).not.toContain(
      'ValidatingWebhookConfiguration',
    );
    expect(renderError({ set: ['toolsetValidation.failurePolicy=Maybe'] })).toContain('failurePolicy');
  });

  it('leaves the unwatched namespaces to another release when told to', () => {
    const names = (set: string[]) =>
      (
        find(render({ set }), 'ValidatingWebhookConfiguration') as unknown as { webhooks: Webhook[] }
      ).webhooks.map((w) => w.name);
    expect(names(['watchNamespaces={voice}'])).toEqual([
      'toolsets.validate.earpiece.dev',
      'toolsets-unwatched.validate.earpiece.dev',
    ]);
    expect(names(['watchNamespaces={voice}', 'toolsetValidation.warnUnwatchedNamespaces=false'])).toEqual([
      'toolsets.validate.earpiece.dev',
    ]);
    expect(renderError({ set: ['toolsetValidation.warnUnwatchedNamespaces=maybe'] })).toContain(
      'warnUnwatchedNamespaces',
    );
  });

  it('lets the operator ask who may read a Secret exactly while it checks ToolSets for it', () => {
    const sa = { name: FULLNAME, namespace: NAMESPACE };
    const askedFor = (set: string[]) => {
      const objects = render({ set });
      const review = {
        verb: 'create',
        apiGroup: 'authorization.k8s.io',
        resource: 'subjectaccessreviews',
        namespace: undefined,
        name: undefined,
      };
      return {
        granted: allowed(objects, sa, review),
        checked: operatorConfig(find(objects, 'Deployment', FULLNAME)).toolsetSecretAccessCheck,
      };
    };
    expect(askedFor([])).toEqual({ granted: true, checked: true });
    // A cluster-scoped question: granted cluster-wide even when the operator watches a few namespaces.
    expect(askedFor(['watchNamespaces={voice}'])).toEqual({ granted: true, checked: true });
    expect(askedFor(['toolsetValidation.checkSecretAccess=false'])).toEqual({
      granted: false,
      checked: false,
    });
    // Without the validating webhook no ToolSet reaches the check.
    expect(askedFor(['toolsetValidation.enabled=false'])).toEqual({ granted: false, checked: false });
    expect(renderError({ set: ['toolsetValidation.checkSecretAccess=maybe'] })).toContain(
      'checkSecretAccess',
    );
  });

  it('takes failurePolicy from the values', () => {
    for (const hook of webhooks(render({ set: ['webhook.failurePolicy=Fail'] })))
      expect(hook.failurePolicy).toBe('Fail');
  });

  it('refuses several replicas without leader election, which would all reconcile', () => {
    expect(renderError({ set: ['leaderElection.enabled=false'] })).toContain('replicaCount=1');
    const single = render({ set: ['leaderElection.enabled=false', 'replicaCount=1'] });
    expect(operatorConfig(find(single, 'Deployment', FULLNAME)).leaderElection).toBe(false);
  });

  it('asks where the example ToolSet goes: never the release namespace', () => {
    expect(renderError({ set: ['exampleToolSet.enabled=true'] })).toContain('exampleToolSet.namespace');
    expect(
      renderError({ set: ['exampleToolSet.enabled=true', `exampleToolSet.namespace=${NAMESPACE}`] }),
    ).toContain('never injected');
  });

  it('prints the next steps after install', () => {
    const text = notes();
    expect(text).toContain(`kubectl -n ${NAMESPACE} rollout status deployment/${FULLNAME}`);
    expect(text).toContain('earpiece.dev/inject');
    // Everything it needs is in the notes: the ToolSet is printed, not a file of the repository.
    expect(text).toContain("kubectl -n VOICE apply -f - <<'EOF'");
    expect(text).not.toMatch(/examples\//);
  });

  it('prints a ToolSet that earpiece and the API server accept, with the API key of its vLLM', async () => {
    for (const set of [[], ['vllm.enabled=true']]) {
      const text = notes({ set });
      // What the shell's heredoc hands kubectl: the lines up to the one that is just EOF.
      const heredoc = /<<'EOF'\n([\s\S]*?)\nEOF\n/.exec(text)![1]!;
      const toolset = parse(heredoc) as K8sObject;
      toolset.metadata.namespace = 'voice';
      expect(validateToolSet(toolset).issues).toEqual([]);
      expect(await kubernetesIssues(toolset)).toEqual([]);
      const apiKey = (toolset.spec as { upstream?: { apiKey: unknown } }).upstream?.apiKey;
      if (set.length === 0) expect(apiKey).toBeUndefined();
      else {
        // The copy is named as the example ToolSet's (VOICE may hold other releases' copies).
        expect(apiKey).toEqual({
          valueFrom: { secretKeyRef: { name: `${CLUSTER_NAME}-vllm-api-key`, key: 'api-key' } },
        });
        // …and the command that copies vLLM's own Secret into the ToolSet's namespace under that name.
        expect(text).toContain(`kubectl -n VOICE create secret generic ${CLUSTER_NAME}-vllm-api-key`);
        expect(text).toContain(`kubectl -n ${NAMESPACE} get secret ${FULLNAME}-vllm-api-key`);
      }
    }
  });
});

describe('values.schema.json', () => {
  it.each([
    ['webhook.failurePolicy=Maybe', '/webhook/failurePolicy'],
    ['vllm.maxModelLen=1536', '/vllm/maxModelLen'],
    ['webhook.failurepolicy=Fail', 'failurepolicy'],
    ['injection.nativeSidecar=maybe', '/injection/nativeSidecar'],
    ['image.digest=latest', '/image/digest'],
    ['webhook.maxBodyBytesInFlight=0', '/webhook/maxBodyBytesInFlight'],
    ['webhook.maxBodyBytesInFlight=24Mi', '/webhook/maxBodyBytesInFlight'],
    ['webhook.maxBodyBytesInFlight=1.5', '/webhook/maxBodyBytesInFlight'],
    // cert-manager cannot find an issuer without its name.
    ['certManager.issuerRef.kind=ClusterIssuer', '/certManager/issuerRef'],
    // No pod of the chart has resourceClaims for a claim to name.
    ['resources.claims[0].name=gpu', '/resources'],
    ['vllm.resources.claims[0].name=gpu', '/vllm/resources'],
    ['webhook.excludeNamespaces={Kube_System}', '/webhook/excludeNamespaces/0'],
    // The Deployments' selectors need their own labels on the pods.
    ['podLabels.app\\.kubernetes\\.io/instance=canary', "invalid propertyName 'app.kubernetes.io/instance'"],
    [
      'vllm.podLabels.app\\.kubernetes\\.io/component=gpu',
      "invalid propertyName 'app.kubernetes.io/component'",
    ],
    ['podDisruptionBudget.minAvailable=lots', '/podDisruptionBudget/minAvailable'],
    ['podDisruptionBudget.minAvailable=150%', '/podDisruptionBudget/minAvailable'],
    // The namespace's default ServiceAccount would get the operator's roles.
    ['serviceAccount.create=false', '/serviceAccount'],
    // A password in plain values lands in the Deployment and in every injected pod spec.
    ['sharedState.redis.url=redis://:hunter2@redis:6379', '/sharedState/redis/url'],
    ['sharedState.redis.url=redis://default:hunter2@redis:6379/0', '/sharedState/redis/url'],
    ['sharedState.redis.url=redis://redis:6379/0?password=hunter2', '/sharedState/redis/url'],
  ])('rejects %s', (set, where) => {
    expect(renderError({ set: [set] })).toContain(where);
  });

  it('takes a percentage or a number for the PodDisruptionBudget', () => {
    for (const [set, expected] of [
      ['podDisruptionBudget.minAvailable=50%', '50%'],
      ['podDisruptionBudget.minAvailable=0', 0],
    ] as const) {
      const pdb = find(render({ set: [set] }), 'PodDisruptionBudget');
      expect((pdb.spec as { minAvailable: unknown }).minAvailable).toBe(expected);
    }
  });

  it('binds the operator’s roles to the ServiceAccount named, when the chart creates none', () => {
    const objects = render({ set: ['serviceAccount.create=false', 'serviceAccount.name=earpiece-ops'] });
    expect(kinds(objects)).not.toContain('ServiceAccount');
    const bindings = objects.filter((o) => o.kind.endsWith('Binding'));
    expect(bindings.length).toBeGreaterThan(0);
    for (const binding of bindings)
      expect(binding.subjects).toEqual([
        { kind: 'ServiceAccount', name: 'earpiece-ops', namespace: NAMESPACE },
      ]);
    expect(podSpec(find(objects, 'Deployment', FULLNAME)).serviceAccountName).toBe('earpiece-ops');
  });
});

describe('injection.resources: the chart and the operator take the same quantities', () => {
  const schema = JSON.parse(readFileSync(path.join(CHART, 'values.schema.json'), 'utf8'));
  const ajv = new Ajv({ strict: false });
  // The chart's own check of injection.resources, as `helm install` runs it.
  const chartAccepts = ajv.compile({
    definitions: schema.definitions,
    $ref: '#/definitions/resources',
  });
  const operatorAccepts = (resources: unknown) => {
    try {
      sidecarConfigFromEnv({ EARPIECE_SIDECAR_RESOURCES: JSON.stringify(resources) });
      return true;
    } catch (err) {
      if (err instanceof SidecarConfigError) return false;
      throw err;
    }
  };
  const examples: unknown[] = [
    ...['1', '0', '250m', '1.5', '.5', '1.', '+1', '128Mi', '0.5Gi', '1e3', '1E-2', '1e+21', '1E', '2k'],
    ...['500u', '100n', '3Ei', '1Pi', '7T', '1P', '9G', '4M'],
    ...[1, 0, 0.5, 1e9, 1073741824, 1e21, 1e-7],
    ...['-1', '1e', '1.2.3', '.', '', ' 1', '1 ', '1K', '1mi', 'lots', '1Mb', '0x10', '1_000', 'Infinity'],
    ...[-1, -0.5],
  ];
  const asRequest = (q: unknown) => ({ requests: { cpu: q } });

  it('every quantity: the schema accepts it exactly when the operator does', () => {
    for (const q of examples)
      expect([q, chartAccepts(asRequest(q))]).toEqual([q, operatorAccepts(asRequest(q))]);
    // What the schema accepts the operator parses, and the other way round, on generated text too.
    const text = fc.oneof(
      fc.stringMatching(
        /^[+-]?[0-9.]{0,4}([eE][+-]?[0-9]{0,2})?(n|u|m|k|K|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|i|b)?$/,
      ),
      fc.string({ maxLength: 6 }),
    );
    fc.assert(
      fc.property(fc.oneof(text, fc.double({ noNaN: true, noDefaultInfinity: true })), (q) => {
        expect(chartAccepts(asRequest(q))).toBe(operatorAccepts(asRequest(q)));
        if (typeof q === 'string' && chartAccepts(asRequest(q))) expect(parseQuantity(q)).toBeDefined();
      }),
      { numRuns: 2000 },
    );
  });

  it('a request above its limit: the chart refuses at render exactly the pairs the operator refuses at start', () => {
    /** m·10^k written with a decimal point where needed (shift 7 by -1: "0.7", by 2: "700"). */
    const shifted = (m: number, k: number) => {
      const digits = String(m);
      if (k >= 0) return digits + '0'.repeat(k);
      const padded = digits.padStart(1 - k, '0');
      return `${padded.slice(0, k)}.${padded.slice(k)}`;
    };
    const units: [string, number][] = [
      ['n', -9],
      ['u', -6],
      ['m', -3],
      ['', 0],
      ['k', 3],
      ['M', 6],
      ['G', 9],
    ];
    // One value m·10^k in any notation: an exponent, any decimal suffix, or a plain number when small.
    const notation = (m: number, k: number) =>
      fc.oneof(
        fc.constant(`${m}e${k}`),
        fc.constantFrom(...units).map(([unit, u]) => `${shifted(m, k - u)}${unit}`),
        ...(k >= -3 && k <= 6 ? [fc.constant(Number(shifted(m, k)))] : []),
      );
    const scaled = fc.record({ m: fc.integer({ min: 0, max: 99_999 }), k: fc.integer({ min: -9, max: 9 }) });
    // Equal values written differently, values one digit apart, binary beside decimal, and any two quantities.
    const equal = scaled.chain(({ m, k }) => fc.tuple(notation(m, k), notation(m, k)));
    const near = fc
      .tuple(scaled, fc.constantFrom(-1, 1))
      .chain(([{ m, k }, d]) => fc.tuple(notation(m, k), notation(Math.max(0, m + d), k)));
    const binary = fc
      .tuple(fc.integer({ min: 0, max: 4096 }), fc.constantFrom(['Ki', 10], ['Mi', 20], ['Gi', 30]))
      .chain(([n, [unit, b]]) =>
        fc.tuple(
          fc.constant(`${n}${unit}`),
          fc.constantFrom(-1, 0, 1).chain((d) => notation(Math.max(0, n * 2 ** b + d), 0)),
        ),
      )
      .chain((pair) => fc.shuffledSubarray(pair, { minLength: 2 }));
    const any = fc.stringMatching(
      /^\+?([0-9]{1,4}(\.[0-9]{0,3})?|\.[0-9]{1,3})([eE][+-]?[0-9]{1,2}|n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/,
    );
    const pairs = fc.sample(fc.oneof(equal, near, binary, fc.tuple(any, any)), { numRuns: 3000, seed: 42 });

    const name = (i: number) => `example.com/r${i}`;
    const operatorRefuses = pairs.flatMap(([request, limit], i) =>
      resourcesProblem({ requests: { cpu: request }, limits: { cpu: limit } }) ? [name(i)] : [],
    );
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-values-'));
    try {
      const file = path.join(dir, 'values.yaml');
      // JSON is YAML: strings stay strings, numbers reach helm as numbers.
      const group = (at: 0 | 1) => Object.fromEntries(pairs.map((pair, i) => [name(i), pair[at]]));
      writeFileSync(
        file,
        JSON.stringify({ injection: { resources: { requests: group(0), limits: group(1) } } }),
      );
      const result = helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, '--values', file]);
      const chartRefuses = [...result.stderr.matchAll(/requests\.(example\.com\/r\d+) /g)].map((m) => m[1]);
      expect(result.stderr).not.toMatch(/schema|out of range/);
      expect(chartRefuses.sort()).toEqual(operatorRefuses.sort());
      // Both answers were given many times.
      expect(operatorRefuses.length).toBeGreaterThan(300);
      expect(pairs.length - operatorRefuses.length).toBeGreaterThan(300);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('helm refuses a request above its limit, naming both, as the operator would at start', () => {
    const error = renderError({ set: ['injection.resources.requests.memory=512Mi'] });
    expect(error).toContain('injection.resources: requests.memory 512Mi is above limits.memory 256Mi');
    expect(() =>
      sidecarConfigFromEnv({
        EARPIECE_SIDECAR_RESOURCES: JSON.stringify({
          requests: { memory: '512Mi' },
          limits: { memory: '256Mi' },
        }),
      }),
    ).toThrow('requests.memory 512Mi is above limits.memory 256Mi');
    // Equal in another notation is not above: 700m is 0.7 exactly, for both.
    render({ set: ['injection.resources.requests.cpu=700m', 'injection.resources.limits.cpu=0.7'] });
    expect(resourcesProblem({ requests: { cpu: '700m' }, limits: { cpu: '0.7' } })).toBeUndefined();
    // Past a float's range the chart refuses (the operator would read it as Infinity).
    expect(renderError({ set: ['injection.resources.limits.cpu=1e400'] })).toContain('1e400 is out of range');
  });

  it('claims are neither in the schema nor taken by the operator: injection adds no resourceClaims', () => {
    const claims = { requests: { cpu: '100m' }, claims: [{ name: 'gpu' }] };
    expect(chartAccepts(claims)).toBe(false);
    expect(resourcesProblem(claims)).toMatch(/has claims/);
    expect(renderError({ set: ['injection.resources.claims[0].name=gpu'] })).toContain(
      '/injection/resources',
    );
  });

  it.each([
    ['-1', 'injection.resources.requests.cpu=-1'],
    ['1.2.3', 'injection.resources.requests.cpu=1.2.3'],
  ])('helm refuses cpu: %s', (_q, set) => {
    expect(renderError({ set: [set] })).toContain('/injection/resources/requests/cpu');
  });

  it('numbers, u and n suffixes and exponents from a values file reach the operator, which starts with them', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-values-'));
    try {
      const file = path.join(dir, 'values.yaml');
      // Helm reads YAML numbers as floats: 1073741824 and 1.5e9 must not reach the operator as 1.073741824e+09.
      writeFileSync(
        file,
        [
          'injection:',
          '  resources:',
          '    requests: {cpu: 1, memory: 1073741824, ephemeral-storage: 100n}',
          '    limits: {cpu: 1.5, memory: 1.5e9, ephemeral-storage: 500u, example.com/dongle: "2"}',
          '',
        ].join('\n'),
      );
      const deployment = find(render({ values: [file] }), 'Deployment', FULLNAME);
      expect(sidecarConfigFromEnv(env(container(deployment)) as NodeJS.ProcessEnv).resources).toEqual({
        requests: { cpu: '1', memory: '1073741824', 'ephemeral-storage': '100n' },
        limits: { cpu: '1.5', memory: '1500000000', 'ephemeral-storage': '500u', 'example.com/dongle': '2' },
      });
      // --set gives integers, not floats.
      const viaSet = find(
        render({ set: ['injection.resources.requests.cpu=1', 'injection.resources.limits.memory=500Mi'] }),
        'Deployment',
        FULLNAME,
      );
      expect(sidecarConfigFromEnv(env(container(viaSet)) as NodeJS.ProcessEnv).resources).toEqual({
        requests: { cpu: '1', memory: '128Mi' },
        limits: { memory: '500Mi' },
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sharedState.redis', () => {
  const sidecarEnv = (set: string[]) =>
    sidecarConfigFromEnv(env(container(find(render({ set }), 'Deployment', FULLNAME))) as NodeJS.ProcessEnv)
      .extraEnv;

  it('passes an existing Redis to every sidecar: from a Secret, or as a plain URL, after injection.env', () => {
    expect(sidecarEnv([])).toEqual([]);
    expect(
      sidecarEnv([
        'injection.env[0].name=OTEL_EXPORTER_OTLP_ENDPOINT',
        'injection.env[0].value=http://collector:4318',
        'sharedState.redis.existingSecret.name=fleet-redis',
      ]),
    ).toEqual([
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://collector:4318' },
      {
        name: 'EARPIECE_SHARED_STATE_REDIS_URL',
        valueFrom: { secretKeyRef: { name: 'fleet-redis', key: 'url' } },
      },
    ]);
    expect(sidecarEnv(['sharedState.redis.url=redis://redis.cache:6379/2'])).toEqual([
      { name: 'EARPIECE_SHARED_STATE_REDIS_URL', value: 'redis://redis.cache:6379/2' },
    ]);
  });

  it("gives the operator what a ToolSet's valueFrom.env may name: injection.env, never the Redis URL, Secrets behind them known", () => {
    const extraEnv = sidecarEnv([
      'injection.env[0].name=OTEL_EXPORTER_OTLP_HEADERS',
      'injection.env[0].valueFrom.secretKeyRef.name=otel-auth',
      'injection.env[0].valueFrom.secretKeyRef.key=headers',
      'sharedState.redis.existingSecret.name=fleet-redis',
    ]);
    expect(namableEnv(extraEnv)).toEqual(['OTEL_EXPORTER_OTLP_HEADERS']);
    const header = (env: string) => ({ tools: [{ http: { headers: [{ name: 'X', valueFrom: { env } }] } }] });
    expect(sidecarEnvIssues(header('EARPIECE_SHARED_STATE_REDIS_URL'), extraEnv)[0]?.message).toContain(
      'EARPIECE_SHARED_STATE_REDIS_URL is reserved',
    );
    expect(envSecretRefs(header('OTEL_EXPORTER_OTLP_HEADERS'), extraEnv)).toEqual([
      {
        path: 'spec.tools[0].http.headers[0].valueFrom.env',
        name: 'otel-auth',
        key: 'headers',
        env: 'OTEL_EXPORTER_OTLP_HEADERS',
      },
    ]);
  });

  it('refuses a URL that is not redis://, and both a URL and a Secret', () => {
    expect(renderError({ set: ['sharedState.redis.url=http://redis:6379'] })).toMatch(
      /sharedState\/redis\/url/,
    );
    expect(
      renderError({
        set: ['sharedState.redis.url=redis://r:6379', 'sharedState.redis.existingSecret.name=s'],
      }),
    ).toMatch(/give url or existingSecret.name, not both/);
  });
});
