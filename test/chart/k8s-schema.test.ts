import { describe, expect, it } from 'vitest';
import { type K8sObject, kubernetesIssues } from '../support/k8s-schema.js';

const deployment = (container: Record<string, unknown>): K8sObject => ({
  apiVersion: 'apps/v1',
  kind: 'Deployment',
  metadata: { name: 'd' },
  spec: {
    selector: { matchLabels: { app: 'd' } },
    template: {
      metadata: { labels: { app: 'd' } },
      spec: { containers: [{ name: 'c', image: 'i', ...container }] },
    },
  },
});

// The chart tests trust an empty list from kubernetesIssues; these show it is not empty for what the
// API server refuses.
describe('kubernetesIssues', () => {
  it('accepts a valid Deployment', async () => {
    expect(await kubernetesIssues(deployment({ ports: [{ containerPort: 80 }] }))).toEqual([]);
  });

  it('refuses wrong types, missing required fields and unknown fields', async () => {
    expect(await kubernetesIssues(deployment({ ports: [{ containerPort: 'eighty' }] }))).toEqual([
      expect.stringContaining('containerPort must be integer'),
    ]);
    const noSelector = deployment({});
    (noSelector.spec as { selector?: unknown }).selector = undefined;
    expect((await kubernetesIssues(noSelector)).join()).toMatch(
      /spec must have required property .?selector/,
    );
    expect(
      await kubernetesIssues(deployment({ livenessProbe: { httpGet: { port: 1, pathh: '/' } } })),
    ).toEqual(['/spec/template/spec/containers/0/livenessProbe/httpGet/pathh: unknown field']);
  });

  it('checks prometheus-operator and cert-manager resources against their CRDs', async () => {
    const monitor = (endpoints: unknown): K8sObject => ({
      apiVersion: 'monitoring.coreos.com/v1',
      kind: 'PodMonitor',
      metadata: { name: 'p' },
      spec: { selector: {}, podMetricsEndpoints: endpoints },
    });
    expect(await kubernetesIssues(monitor([{ port: 'metrics' }]))).toEqual([]);
    expect(await kubernetesIssues(monitor({ port: 'metrics' }))).not.toEqual([]);
    const certificate: K8sObject = {
      apiVersion: 'cert-manager.io/v1',
      kind: 'Certificate',
      metadata: { name: 'c' },
      spec: { secretName: 's', issuerRef: { name: 'i' } },
    };
    expect(await kubernetesIssues(certificate)).toEqual([]);
    expect(await kubernetesIssues({ ...certificate, spec: { issuerRef: { name: 'i' } } })).not.toEqual([]);
  });

  it("checks ToolSets against the CRD's schema and CEL rules", async () => {
    const toolset = (tool: Record<string, unknown>): K8sObject => ({
      apiVersion: 'earpiece.dev/v1alpha1',
      kind: 'ToolSet',
      metadata: { name: 't' },
      spec: { tools: [tool] },
    });
    expect(await kubernetesIssues(toolset({ name: 'now', builtin: 'time' }))).toEqual([]);
    expect(await kubernetesIssues(toolset({ name: 'now', builtin: 'time', colour: 'red' }))).toEqual([
      '/spec/tools/0: must NOT have additional properties',
    ]);
    expect(
      (await kubernetesIssues(toolset({ name: 'now', builtin: 'time', http: { url: 'https://x' } }))).join(),
    ).toContain('/spec/tools/0');
  });

  it('names kinds it has no schema for', async () => {
    expect(
      await kubernetesIssues({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }),
    ).toEqual(['no schema known for example.com/v1 Widget']);
  });
});
