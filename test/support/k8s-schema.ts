/**
 * Checks Kubernetes objects the way the API server and `kubectl apply` (strict field validation) would,
 * without a cluster:
 * - built-in kinds against the Kubernetes OpenAPI schema (kubernetes-models), and unknown fields found by
 *   walking @kubernetes/client-node's generated models (the OpenAPI schema alone allows any field);
 * - prometheus-operator and cert-manager kinds against their CRD schemas (@kubernetes-models/*);
 * - ToolSets against the CRD in crds/: its OpenAPI schema with unknown fields refused, then its CEL rules.
 */
import { readFileSync } from 'node:fs';
import { run } from '@bufbuild/cel';
import * as k8s from '@kubernetes/client-node';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import { parse } from 'yaml';

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> } & Record<string, unknown>;
  [field: string]: unknown;
}

type Schema = Record<string, unknown>;
type ModelClass = new (data: unknown) => { validate(): void };

/** Packages with models for custom resources the chart renders, by API group. */
const CUSTOM_GROUPS: Record<string, string> = {
  'monitoring.coreos.com': '@kubernetes-models/prometheus-operator',
  'cert-manager.io': '@kubernetes-models/cert-manager',
};

function splitApiVersion(apiVersion: string): { group: string; version: string } {
  const slash = apiVersion.lastIndexOf('/');
  return slash < 0
    ? { group: '', version: apiVersion }
    : { group: apiVersion.slice(0, slash), version: apiVersion.slice(slash + 1) };
}

async function modelClass(obj: K8sObject): Promise<ModelClass | undefined> {
  const { group, version } = splitApiVersion(obj.apiVersion);
  const pkg = CUSTOM_GROUPS[group];
  const spec = pkg
    ? `${pkg}/${group}/${version}/${obj.kind}`
    : `kubernetes-models/${group ? `${group}/` : ''}${version}/${obj.kind}`;
  try {
    const mod = (await import(spec)) as Record<string, ModelClass>;
    return mod[obj.kind];
  } catch {
    return undefined;
  }
}

type AttributeMap = { baseName: string; type: string }[];
const clientModels = k8s as unknown as Record<
  string,
  { getAttributeTypeMap?: () => AttributeMap } | undefined
>;

/** Fields the client-node model of `type` does not declare, recursively, as JSON pointers. */
function unknownFields(value: unknown, type: string, path: string, out: string[]): void {
  if (value === null || typeof value !== 'object') return;
  const list = /^Array<(.+)>$/.exec(type);
  if (list) {
    if (Array.isArray(value))
      for (const [i, v] of value.entries()) unknownFields(v, list[1]!, `${path}/${i}`, out);
    return;
  }
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map) {
    for (const [k, v] of Object.entries(value)) unknownFields(v, map[1]!, `${path}/${k}`, out);
    return;
  }
  const attributes = clientModels[type]?.getAttributeTypeMap?.();
  if (!attributes) return;
  const fields = new Map(attributes.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    const fieldType = fields.get(k);
    if (fieldType === undefined) out.push(`${path}/${k}: unknown field`);
    else unknownFields(v, fieldType, `${path}/${k}`, out);
  }
}

let toolSetCheck: ((doc: unknown) => string[]) | undefined;

/** The ToolSet CRD's schema from crds/, made strict as the API server's field validation is. */
function toolSetIssues(doc: unknown): string[] {
  if (!toolSetCheck) {
    const crd = parse(
      readFileSync(new URL('../../crds/toolsets.earpiece.dev.yaml', import.meta.url), 'utf8'),
    );
    const schema = crd.spec.versions[0].schema.openAPIV3Schema as Schema;
    const strict = (s: Schema): Schema => {
      const out: Schema = { ...s };
      if (s.properties && !s['x-kubernetes-preserve-unknown-fields']) {
        out.properties = Object.fromEntries(
          Object.entries(s.properties as Record<string, Schema>).map(([k, v]) => [k, strict(v)]),
        );
        out.additionalProperties = false;
      }
      if (s.items) out.items = strict(s.items as Schema);
      return out;
    };
    const ajv = new Ajv({ allErrors: true, strict: false });
    addFormats.default(ajv);
    // metadata is checked by the API server itself, not by the CRD's schema.
    const validate = ajv.compile(
      strict({ ...schema, properties: { ...(schema.properties as Schema), metadata: { type: 'object' } } }),
    );
    toolSetCheck = (value) => {
      if (!validate(value))
        return (validate.errors ?? []).map((e) => `${e.instancePath || '/'}: ${e.message}`);
      const issues: string[] = [];
      const visit = (s: Schema, v: unknown, path: string) => {
        if (v === undefined || v === null) return;
        for (const { rule, message } of (s['x-kubernetes-validations'] ?? []) as {
          rule: string;
          message: string;
        }[])
          if (run(rule, { self: v as never }) !== true) issues.push(`${path || '/'}: ${message}`);
        if (Array.isArray(v) && s.items)
          for (const [i, item] of v.entries()) visit(s.items as Schema, item, `${path}/${i}`);
        else if (typeof v === 'object')
          for (const [k, sub] of Object.entries((s.properties ?? {}) as Record<string, Schema>))
            visit(sub, (v as Record<string, unknown>)[k], `${path}/${k}`);
      };
      visit(schema, value, '');
      return issues;
    };
  }
  return toolSetCheck(doc);
}

/** Every problem the API server would report for `obj`; empty when it would accept it. */
export async function kubernetesIssues(obj: K8sObject): Promise<string[]> {
  if (obj.apiVersion === 'earpiece.dev/v1alpha1' && obj.kind === 'ToolSet') return toolSetIssues(obj);
  const Model = await modelClass(obj);
  if (!Model) return [`no schema known for ${obj.apiVersion} ${obj.kind}`];
  const issues: string[] = [];
  try {
    new Model(obj).validate();
  } catch (err) {
    issues.push((err as Error).message);
  }
  const { group, version } = splitApiVersion(obj.apiVersion);
  if (!CUSTOM_GROUPS[group]) {
    const type = `${version[0]!.toUpperCase()}${version.slice(1)}${obj.kind}`;
    if (!clientModels[type]?.getAttributeTypeMap) issues.push(`no client model ${type} to check fields with`);
    unknownFields(obj, type, '', issues);
  }
  return issues;
}
