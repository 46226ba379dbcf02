/** The examples of the Kubernetes walk-through (docs/kubernetes.md) fit together and with the chart. */
import { readFileSync } from 'node:fs';
import { parseTemplate } from 'url-template';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { injectManifests } from '../../src/operator/inject.js';
import { selectorMatches } from '../../src/operator/select.js';
import { APP_URL_ENV, DEFAULT_SIDECAR, SIDECAR_NAME } from '../../src/operator/sidecar.js';
import { parseToolSet, type ToolSet } from '../../src/toolset/index.js';
import { type K8sObject, kubernetesIssues } from '../support/k8s-schema.js';
import { find, NAMESPACE, RELEASE, render } from './render.js';

type Env = { name: string; value?: string; valueFrom?: unknown };
type Container = { name: string; env?: Env[] };
type PodTemplate = {
  metadata: { labels: Record<string, string> };
  spec: { containers: Container[]; initContainers?: Container[] };
};

const VOICE = 'voice';
const read = (file: string) => readFileSync(file, 'utf8');
const toolset = (file: string): ToolSet => {
  const result = parseToolSet(read(file));
  expect(result.issues, file).toEqual([]);
  if (!result.ok) throw new Error(`${file} is not a valid ToolSet`);
  return { ...result.toolset, metadata: { ...result.toolset.metadata, namespace: VOICE } };
};
const backendDocs = () =>
  parseAllDocuments(read('examples/unmute-backend.yaml')).map((d) => d.toJS() as K8sObject);
const template = (deployment: K8sObject) =>
  (deployment as unknown as { spec: { template: PodTemplate } }).spec.template;
const envOf = (c: Container | undefined) => Object.fromEntries((c?.env ?? []).map((e) => [e.name, e.value]));

describe('examples/', () => {
  it.each([
    'examples/weather-toolset.yaml',
    'examples/home-assistant-toolset.yaml',
    'examples/openrouter-toolset.yaml',
  ])('%s is a valid ToolSet for earpiece and for the API server', async (file) => {
    expect(await kubernetesIssues(toolset(file) as unknown as K8sObject)).toEqual([]);
  });

  it('asks Open-Meteo the right questions', () => {
    const tools = toolset('examples/weather-toolset.yaml').spec.tools;
    const url = (name: string, args: Record<string, unknown>) =>
      new URL(parseTemplate(tools.find((t) => t.name === name)!.http!.url).expand(args as never));
    const place = url('find_place', { name: 'San Francisco' });
    expect(place.origin + place.pathname).toBe('https://geocoding-api.open-meteo.com/v1/search');
    expect(Object.fromEntries(place.searchParams)).toEqual({
      name: 'San Francisco',
      count: '1',
      language: 'en',
      format: 'json',
    });
    const weather = url('get_weather', { latitude: 37.77, longitude: -122.42 });
    expect(weather.origin + weather.pathname).toBe('https://api.open-meteo.com/v1/forecast');
    expect(weather.searchParams.get('latitude')).toBe('37.77');
    expect(weather.searchParams.get('longitude')).toBe('-122.42');
    expect(weather.searchParams.get('current')).toContain('temperature_2m');
    expect(weather.searchParams.get('timezone')).toBe('auto');
  });

  it('keeps the Home Assistant token in a Secret', () => {
    const mcp = toolset('examples/home-assistant-toolset.yaml').spec.tools[0]!.mcp!;
    expect(new URL(mcp.url).pathname).toBe('/api/mcp');
    expect(mcp.headers).toEqual([
      {
        name: 'Authorization',
        valueFrom: { secretKeyRef: { name: 'home-assistant', key: 'authorization' } },
      },
    ]);
  });

  it('has an Unmute backend that opts in, is selected, and talks to the chart’s vLLM', async () => {
    const docs = backendDocs();
    for (const doc of docs) expect(await kubernetesIssues(doc), doc.kind).toEqual([]);
    const pod = template(find(docs, 'Deployment', 'unmute-backend'));
    expect(pod.metadata.labels['earpiece.dev/inject']).toBe('true');
    for (const file of ['examples/weather-toolset.yaml', 'examples/home-assistant-toolset.yaml'])
      expect(selectorMatches(toolset(file).spec.selector, pod.metadata.labels), file).toBe(true);

    const chart = render({ set: ['vllm.enabled=true'] });
    const service = find(chart, 'Service', `${RELEASE}-vllm`) as unknown as {
      metadata: { name: string; namespace: string };
      spec: { ports: { port: number }[] };
    };
    expect(service.metadata.namespace).toBe(NAMESPACE);
    const env = envOf(pod.spec.containers[0]);
    expect(env[APP_URL_ENV]).toBe(
      `http://${service.metadata.name}.${NAMESPACE}:${service.spec.ports[0]!.port}`,
    );
    const values = parse(read('charts/earpiece/values.yaml'));
    expect(env.KYUTAI_LLM_MODEL).toBe(values.vllm.model);
  });

  it('gets the sidecar from `earpiece inject`, pointed at vLLM, and stays schema-valid', async () => {
    const weather = toolset('examples/weather-toolset.yaml');
    const manifest = read('examples/unmute-backend.yaml').replaceAll(
      'name: unmute-backend\n',
      `name: unmute-backend\n  namespace: ${VOICE}\n`,
    );
    const { text, reports } = injectManifests(manifest, { toolsets: [weather], sidecar: DEFAULT_SIDECAR });
    expect(reports.map((r) => [r.kind, r.result.ok])).toEqual([['Deployment', true]]);
    const docs = parseAllDocuments(text).map((d) => d.toJS() as K8sObject);
    for (const doc of docs) expect(await kubernetesIssues(doc), doc.kind).toEqual([]);
    const pod = template(find(docs, 'Deployment', 'unmute-backend'));
    const sidecar = [...(pod.spec.initContainers ?? []), ...pod.spec.containers].find(
      (c) => c.name === SIDECAR_NAME,
    );
    expect(envOf(sidecar).EARPIECE_UPSTREAM_URL).toBe(`http://${RELEASE}-vllm.${NAMESPACE}:8000`);
    expect(envOf(pod.spec.containers.find((c) => c.name === 'backend'))[APP_URL_ENV]).toBe(
      'http://127.0.0.1:8095',
    );
  });
});
