/**
 * The ConfigMap `earpiece-toolset-<name>` the sidecar mounts, pure: the ToolSet as the sidecar reads it
 * (every secretKeyRef rewritten to valueFrom.env, no status), under key `toolset.yaml`. The controller
 * adds the owner reference; `earpiece inject --with-configmap` prints it as it is.
 *
 * The ConfigMap is the last valid configuration (an invalid ToolSet never overwrites it), so what
 * injection must match it with — the secret env vars and the hash — is written beside it as
 * annotations, and the webhook reads them from there rather than from the ToolSet as it is now.
 */
import type { V1ConfigMap } from '@kubernetes/client-node';
import { parse } from 'yaml';
import { specHash } from '../toolset/defaults.js';
import type { ToolSet } from '../toolset/schema.js';
import { renderForSidecar, renderSidecarText, type SecretEnv, secretEnvName } from '../toolset/values.js';
import { ANNOTATION_SECRET_ENV, ANNOTATION_TOOLSET_HASH, configMapName } from './sidecar.js';

export const CONFIG_KEY = 'toolset.yaml';

/** What injection takes from a ToolSet's configuration. */
export interface InjectionConfig {
  /** The spec's hash, the pod's earpiece.dev/toolset-hash. */
  hash: string;
  /** One sidecar env var per Secret key the configuration refers to. */
  secretEnv: SecretEnv[];
  /** The configuration names spec.upstream.url, so the app's KYUTAI_LLM_URL is not handed over. */
  upstreamNamed: boolean;
}

/** The injection config of a valid ToolSet (what its ConfigMap will say). */
export function injectionConfig(toolset: ToolSet): InjectionConfig {
  return {
    hash: specHash(toolset),
    secretEnv: renderForSidecar(toolset).env,
    upstreamNamed: toolset.spec.upstream?.url !== undefined,
  };
}

/**
 * `namespace` is used when the ToolSet has none. Only content goes in (no resourceVersion, uid or
 * managedFields), so the same spec always renders the same ConfigMap and the controller writes only
 * on change.
 */
export function renderConfigMap(toolset: ToolSet, namespace?: string): V1ConfigMap {
  const rendered = renderSidecarText(toolset, namespace);
  const name = toolset.metadata.name;
  const ns = toolset.metadata.namespace ?? namespace;
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: configMapName(name),
      ...(ns ? { namespace: ns } : {}),
      labels: {
        'app.kubernetes.io/name': 'earpiece',
        'app.kubernetes.io/component': 'toolset',
        'earpiece.dev/toolset': name,
      },
      annotations: {
        [ANNOTATION_TOOLSET_HASH]: specHash(toolset),
        [ANNOTATION_SECRET_ENV]: JSON.stringify(rendered.env),
      },
    },
    data: { [CONFIG_KEY]: rendered.text },
  };
}

/** Parsed once per ConfigMap object: the informer replaces the object on every change. */
const readCache = new WeakMap<V1ConfigMap, InjectionConfig | undefined>();

/**
 * The injection config a ConfigMap holds, or undefined when it lacks the annotations or its document
 * does not parse (changed by someone else; the controller puts it back).
 */
export function readInjectionConfig(cm: V1ConfigMap): InjectionConfig | undefined {
  if (readCache.has(cm)) return readCache.get(cm);
  const config = parseInjectionConfig(cm);
  readCache.set(cm, config);
  return config;
}

function parseInjectionConfig(cm: V1ConfigMap): InjectionConfig | undefined {
  const annotations = cm.metadata?.annotations ?? {};
  const hash = annotations[ANNOTATION_TOOLSET_HASH];
  const secretEnv = parseSecretEnv(annotations[ANNOTATION_SECRET_ENV]);
  let document: { spec?: { upstream?: { url?: unknown } } } | undefined;
  try {
    document = parse(cm.data?.[CONFIG_KEY] ?? '') ?? undefined;
  } catch {
    return undefined;
  }
  if (!hash || !secretEnv || !document?.spec || typeof document.spec !== 'object') return undefined;
  return { hash, secretEnv, upstreamNamed: document.spec.upstream?.url !== undefined };
}

/** The annotation's list, only when every entry is named as secretEnvName names it. */
function parseSecretEnv(text: string | undefined): SecretEnv[] | undefined {
  if (text === undefined) return undefined;
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!Array.isArray(list)) return undefined;
  const out: SecretEnv[] = [];
  for (const entry of list as { name?: unknown; secretKeyRef?: { name?: unknown; key?: unknown } }[]) {
    const ref = entry?.secretKeyRef;
    if (typeof ref?.name !== 'string' || typeof ref.key !== 'string') return undefined;
    if (entry.name !== secretEnvName(ref.name, ref.key)) return undefined;
    out.push({ name: entry.name, secretKeyRef: { name: ref.name, key: ref.key } });
  }
  return out;
}
