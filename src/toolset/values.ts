/**
 * Values that may be secrets: `{ value }`, `{ valueFrom: { env } }` or `{ valueFrom: { secretKeyRef } }`.
 * In a pod, the operator turns every secretKeyRef into an env var of the sidecar (named by
 * secretEnvName, the one function the controller, the webhook and `earpiece inject` share), so the
 * rendered config only ever holds `valueFrom.env` and no secret sits in a ConfigMap.
 */
import { createHash } from 'node:crypto';
import { stringify } from 'yaml';
import type { ToolSetErrorCode } from './errors.js';
import type { ToolSet, ValueRef } from './schema.js';

export class ValueError extends Error {
  readonly code: ToolSetErrorCode = 'ERP_VALUE';
}

/** Resolves a value against the process environment. Throws a ValueError naming what is missing. */
export function resolveValue(ref: ValueRef, path: string, env: NodeJS.ProcessEnv = process.env): string {
  if (ref.value !== undefined) return ref.value;
  const from = ref.valueFrom;
  if (from?.env !== undefined) {
    const found = env[from.env];
    if (found === undefined) throw new ValueError(`${path}: environment variable ${from.env} is not set`);
    return found;
  }
  if (from?.secretKeyRef) {
    throw new ValueError(
      `${path}: secretKeyRef ${from.secretKeyRef.name}/${from.secretKeyRef.key} can only be resolved in Kubernetes; ` +
        'run locally, use valueFrom.env instead',
    );
  }
  throw new ValueError(`${path}: needs value or valueFrom`);
}

/** The sidecar env var that carries one key of one Secret. Stable, unique per (secret, key), a valid env name. */
export function secretEnvName(secret: string, key: string): string {
  const clean = (s: string) => s.toUpperCase().replace(/[^A-Z0-9]/g, '_');
  const hash = createHash('sha256').update(`${secret}\0${key}`).digest('hex').slice(0, 6).toUpperCase();
  return `EARPIECE_SECRET_${clean(secret)}__${clean(key)}_${hash}`;
}

export interface SecretEnv {
  name: string;
  secretKeyRef: { name: string; key: string };
}

/** One `valueFrom.secretKeyRef`, with the path of the field that holds it. */
export interface SecretRef {
  /** `spec.tools[0].http.headers[1].valueFrom.secretKeyRef` */
  path: string;
  name: string;
  key: string;
}

/**
 * The spec with each `valueFrom` that holds a secretKeyRef replaced by what `replace` returns for it:
 * the one walk that finds Secret references, for the sidecar's rendering and for the admission check of
 * who may name them. `parameters` of a tool are JSON Schemas written by users, where a property literally
 * named valueFrom is data, so they are not searched. Anything that is not a well-formed reference (a
 * spec admitted unchecked may hold one) is kept as it is.
 */
function replaceSecretRefs(spec: unknown, replace: (ref: SecretRef) => unknown): unknown {
  const walk = (node: unknown, path: string): unknown => {
    if (Array.isArray(node)) return node.map((n, i) => walk(n, `${path}[${i}]`));
    if (node === null || typeof node !== 'object') return node;
    const isTool = /^spec\.tools\[\d+\]$/.test(path);
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(node)) {
      const ref =
        k === 'valueFrom'
          ? (v as { secretKeyRef?: { name?: unknown; key?: unknown } } | null)?.secretKeyRef
          : undefined;
      if (typeof ref?.name === 'string' && typeof ref.key === 'string') {
        out[k] = replace({ path: `${path}.valueFrom.secretKeyRef`, name: ref.name, key: ref.key });
      } else {
        out[k] = isTool && k === 'parameters' ? v : walk(v, `${path}.${k}`);
      }
    }
    return out;
  };
  return walk(spec, 'spec');
}

/** One `valueFrom.env`, with the path of the field that holds it. */
export interface EnvRef {
  /** `spec.tools[0].http.headers[1].valueFrom.env` */
  path: string;
  name: string;
}

/**
 * Every `valueFrom.env` of a ToolSet's spec, in document order, found by the same rules as the Secret
 * references (`parameters` of a tool are not searched); the spec need not be valid.
 */
export function envRefs(spec: unknown): EnvRef[] {
  const refs: EnvRef[] = [];
  const walk = (node: unknown, path: string): void => {
    if (Array.isArray(node)) {
      for (const [i, n] of node.entries()) walk(n, `${path}[${i}]`);
      return;
    }
    if (node === null || typeof node !== 'object') return;
    const isTool = /^spec\.tools\[\d+\]$/.test(path);
    for (const [k, v] of Object.entries(node)) {
      const env = k === 'valueFrom' ? (v as { env?: unknown } | null)?.env : undefined;
      if (typeof env === 'string') refs.push({ path: `${path}.valueFrom.env`, name: env });
      else if (!(isTool && k === 'parameters')) walk(v, `${path}.${k}`);
    }
  };
  walk(spec, 'spec');
  return refs;
}

/** Every secretKeyRef of a ToolSet's spec, in document order; the spec need not be valid. */
export function secretRefs(spec: unknown): SecretRef[] {
  const refs: SecretRef[] = [];
  replaceSecretRefs(spec, (ref) => {
    refs.push(ref);
  });
  return refs;
}

/**
 * The ToolSet as the sidecar sees it: every secretKeyRef replaced by valueFrom.env, and the env vars
 * the sidecar needs for them (sorted and unique, so renders are stable). `status` is dropped.
 */
export function renderForSidecar(toolset: ToolSet): { toolset: ToolSet; env: SecretEnv[] } {
  const env = new Map<string, SecretEnv>();
  const { status: _status, ...rest } = toolset;
  const spec = replaceSecretRefs(rest.spec, (ref) => {
    const name = secretEnvName(ref.name, ref.key);
    env.set(name, { name, secretKeyRef: { name: ref.name, key: ref.key } });
    return { env: name };
  }) as ToolSet['spec'];
  return {
    toolset: { ...rest, spec },
    env: [...env.values()].sort((a, b) => a.name.localeCompare(b.name)),
  };
}

/**
 * The configuration the sidecar reads, as text: the ConfigMap's `toolset.yaml` (`namespace` where the
 * ToolSet names none), with its secret env vars. Only content goes in, so the same spec always renders
 * the same text.
 */
export function renderSidecarText(toolset: ToolSet, namespace?: string): { text: string; env: SecretEnv[] } {
  const rendered = renderForSidecar(toolset);
  const ns = toolset.metadata.namespace ?? namespace;
  const document = {
    apiVersion: rendered.toolset.apiVersion,
    kind: rendered.toolset.kind,
    metadata: { name: toolset.metadata.name, ...(ns ? { namespace: ns } : {}) },
    spec: rendered.toolset.spec,
  };
  return { text: stringify(document, { lineWidth: 0 }), env: rendered.env };
}

/**
 * Every value the proxy will need, checked against the environment now rather than mid-turn:
 * a missing env var or a secretKeyRef outside Kubernetes is an issue with its path.
 */
export function unresolvableValues(
  toolset: ToolSet,
  env: NodeJS.ProcessEnv = process.env,
): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  const visit = (node: unknown, path: string): void => {
    if (Array.isArray(node)) {
      for (const [i, n] of node.entries()) visit(n, `${path}[${i}]`);
      return;
    }
    if (node === null || typeof node !== 'object') return;
    const obj = node as Record<string, unknown>;
    if ('valueFrom' in obj || ('value' in obj && typeof obj.value === 'string')) {
      try {
        resolveValue(obj as ValueRef, path, env);
      } catch (err) {
        const [, message = String(err)] = /^[^:]*: (.*)$/s.exec((err as Error).message) ?? [];
        issues.push({ path, message });
      }
      return;
    }
    for (const [k, v] of Object.entries(obj)) if (k !== 'parameters') visit(v, path ? `${path}.${k}` : k);
  };
  visit(toolset.spec, 'spec');
  return issues;
}
