/**
 * The part of the API server's pod validation that no OpenAPI schema expresses (a subset of
 * pkg/apis/core/validation), for pod templates the injection tests produce: unique container and volume
 * names, mounts of declared volumes, what a non-restartable init container may not have, port and env
 * names, requests within limits, label syntax, and a workload's selector matching its template labels.
 * `workloadIssues` adds it to kubernetesIssues (k8s-schema.ts: OpenAPI schema and unknown fields).
 */
import { parseQuantity } from '../../src/operator/sidecar.js';
import { type K8sObject, kubernetesIssues } from './k8s-schema.js';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const QUALIFIED_NAME =
  /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
const ENV_NAME = /^[-._a-zA-Z][-._a-zA-Z0-9]*$/;
const PORT_NAME = /^(?=.{1,15}$)(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;

function metadataIssues(meta: unknown, path: string, issues: string[]): void {
  if (!isObj(meta)) return;
  for (const [k, v] of Object.entries(isObj(meta.labels) ? meta.labels : {})) {
    if (!QUALIFIED_NAME.test(k)) issues.push(`${path}.labels: key ${k} is not a qualified name`);
    if (typeof v !== 'string' || v.length > 63 || !LABEL_VALUE.test(v))
      issues.push(`${path}.labels.${k}: bad value ${JSON.stringify(v)}`);
  }
  for (const [k, v] of Object.entries(isObj(meta.annotations) ? meta.annotations : {})) {
    if (!QUALIFIED_NAME.test(k)) issues.push(`${path}.annotations: key ${k} is not a qualified name`);
    if (typeof v !== 'string') issues.push(`${path}.annotations.${k}: must be a string`);
  }
}

type Container = Obj & { name?: string };

function podSpecIssues(spec: unknown, path: string, issues: string[], claims: string[] = []): void {
  if (!isObj(spec)) return;
  const containers = (Array.isArray(spec.containers) ? spec.containers : []) as Container[];
  const inits = (Array.isArray(spec.initContainers) ? spec.initContainers : []) as Container[];
  const volumes = (Array.isArray(spec.volumes) ? spec.volumes : []) as Obj[];
  // A StatefulSet's volume claim templates are volumes of its pods too.
  const volumeNames = new Set<string>(claims);
  for (const v of volumes) {
    if (volumeNames.has(String(v.name))) issues.push(`${path}.volumes: duplicate name ${v.name}`);
    volumeNames.add(String(v.name));
  }
  const names = new Set<string>();
  const portNames = new Set<string>();
  const all: [string, Container][] = [
    ...inits.map((c, i): [string, Container] => [`${path}.initContainers[${i}]`, c]),
    ...containers.map((c, i): [string, Container] => [`${path}.containers[${i}]`, c]),
  ];
  for (const [p, c] of all) {
    if (names.has(String(c.name))) issues.push(`${p}: duplicate container name ${c.name}`);
    names.add(String(c.name));
    const mounts = new Set<string>();
    for (const m of (c.volumeMounts ?? []) as Obj[]) {
      if (!volumeNames.has(String(m.name)))
        issues.push(`${p}.volumeMounts: volume ${m.name} is not declared`);
      if (mounts.has(String(m.mountPath))) issues.push(`${p}.volumeMounts: ${m.mountPath} mounted twice`);
      mounts.add(String(m.mountPath));
    }
    for (const e of (c.env ?? []) as Obj[])
      if (!ENV_NAME.test(String(e.name))) issues.push(`${p}.env: bad name ${JSON.stringify(e.name)}`);
    for (const port of (c.ports ?? []) as Obj[]) {
      if (port.name === undefined) continue;
      if (!PORT_NAME.test(String(port.name))) issues.push(`${p}.ports: bad name ${port.name}`);
      if (portNames.has(String(port.name))) issues.push(`${p}.ports: duplicate name ${port.name}`);
      portNames.add(String(port.name));
    }
    const resources = isObj(c.resources) ? c.resources : {};
    const requests = isObj(resources.requests) ? resources.requests : {};
    const limits = isObj(resources.limits) ? resources.limits : {};
    for (const [r, q] of Object.entries(requests)) {
      const limit = limits[r];
      if (limit !== undefined && (parseQuantity(String(q)) ?? 0) > (parseQuantity(String(limit)) ?? Infinity))
        issues.push(`${p}.resources: requests.${r} above limits.${r}`);
    }
  }
  for (const [i, c] of inits.entries()) {
    const p = `${path}.initContainers[${i}]`;
    if (c.restartPolicy !== undefined && c.restartPolicy !== 'Always')
      issues.push(`${p}.restartPolicy: only Always is allowed on an init container`);
    if (c.restartPolicy !== 'Always')
      for (const field of ['startupProbe', 'livenessProbe', 'readinessProbe', 'lifecycle'])
        if (c[field] !== undefined)
          issues.push(`${p}.${field}: not allowed on a non-restartable init container`);
  }
}

function templateIssues(obj: Obj, path: string[], issues: string[]): void {
  let template: unknown = obj;
  for (const key of path) template = isObj(template) ? template[key] : undefined;
  if (!isObj(template)) return;
  const where = path.length ? path.join('.') : '(pod)';
  if (path.length) metadataIssues(template.metadata, `${where}.metadata`, issues);
  const spec = isObj(obj.spec) ? obj.spec : {};
  const claims = Array.isArray(spec.volumeClaimTemplates)
    ? spec.volumeClaimTemplates.map((c) => String((c as { metadata?: { name?: string } }).metadata?.name))
    : [];
  podSpecIssues(template.spec, `${where}.spec`, issues, claims);
  const selector = isObj(spec.selector) ? spec.selector : undefined;
  const labels = isObj(template.metadata) && isObj(template.metadata.labels) ? template.metadata.labels : {};
  const matchLabels = selector && isObj(selector.matchLabels) ? selector.matchLabels : {};
  for (const [k, v] of Object.entries(matchLabels))
    if (labels[k] !== v) issues.push(`spec.selector: does not match template label ${k}`);
}

const TEMPLATE_PATHS: Record<string, string[]> = {
  Pod: [],
  ReplicationController: ['spec', 'template'],
  Deployment: ['spec', 'template'],
  StatefulSet: ['spec', 'template'],
  DaemonSet: ['spec', 'template'],
  ReplicaSet: ['spec', 'template'],
  Job: ['spec', 'template'],
  CronJob: ['spec', 'jobTemplate', 'spec', 'template'],
};

/** Every problem the API server (with kubectl's strict field validation) would have with `obj`; `List`s walked. */
export async function workloadIssues(obj: unknown): Promise<string[]> {
  if (!isObj(obj)) return ['not an object'];
  if (obj.kind === 'List' && Array.isArray(obj.items)) {
    const nested = await Promise.all(
      obj.items.map(async (item, i) => (await workloadIssues(item)).map((m) => `items[${i}]: ${m}`)),
    );
    return nested.flat();
  }
  const issues = await kubernetesIssues(obj as K8sObject);
  metadataIssues(obj.metadata, 'metadata', issues);
  const path = TEMPLATE_PATHS[String(obj.kind)];
  if (path) templateIssues(obj, path, issues);
  return issues;
}
