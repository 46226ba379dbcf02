/**
 * What a ToolSet's `valueFrom.env` may name in a cluster, where the injected sidecar's environment is the
 * operator's to give: the controller, the validating webhook and `earpiece inject` share these checks.
 *
 * The sidecar's environment holds the operator's own variables, all named EARPIECE_… (its settings,
 * EARPIECE_UPSTREAM_URL, EARPIECE_SHARED_STATE_REDIS_URL, and one EARPIECE_SECRET_… per Secret key any
 * ToolSet version named, see secretEnvName), and the chart's `injection.env` (EARPIECE_SIDECAR_ENV). A
 * `valueFrom.env` naming one of the operator's would read a Secret nobody checked the ToolSet's author
 * may read, so that prefix is refused: Secrets are named with `valueFrom.secretKeyRef`. A name the
 * sidecar does not have would crash every new sidecar, so only `injection.env` names are allowed; one
 * that the chart fills from a Secret counts as naming that Secret, for the admission's access check.
 * Outside a cluster (`earpiece proxy`) none of this applies: env refs resolve from the process env.
 */
import { createHash } from 'node:crypto';
import type { V1EnvVar } from '@kubernetes/client-node';
import type { Issue, ParseResult } from '../toolset/validate.js';
import { validateToolSet } from '../toolset/validate.js';
import { envRefs, type SecretRef } from '../toolset/values.js';
import { parseQuantity } from './sidecar.js';

/** The prefix of every environment variable the operator gives the sidecar itself. */
export const RESERVED_ENV_PREFIX = 'EARPIECE_';

/** Names listed in a message at most. */
const MAX_LISTED = 20;

/** The sidecar env vars a ToolSet may name: those of `injection.env`, less the reserved ones. Sorted, unique. */
export function namableEnv(extraEnv: readonly V1EnvVar[]): string[] {
  const names = extraEnv.map((e) => e.name).filter((n) => !n.startsWith(RESERVED_ENV_PREFIX));
  return [...new Set(names)].sort();
}

/** Every `valueFrom.env` of the spec the injected sidecar cannot or may not give, with its field path. */
export function sidecarEnvIssues(spec: unknown, extraEnv: readonly V1EnvVar[]): Issue[] {
  const allowed = namableEnv(extraEnv);
  const known = new Set(allowed);
  const listed =
    allowed.length === 0
      ? 'the chart gives it none (injection.env is empty)'
      : `it has only ${allowed.slice(0, MAX_LISTED).join(', ')}${allowed.length > MAX_LISTED ? ` and ${allowed.length - MAX_LISTED} more` : ''}, from the chart's injection.env`;
  const issues: Issue[] = [];
  for (const ref of envRefs(spec)) {
    if (ref.name.startsWith(RESERVED_ENV_PREFIX)) {
      issues.push(reserved(ref));
    } else if (!known.has(ref.name)) {
      issues.push({
        path: ref.path,
        message: `the injected sidecar has no environment variable ${ref.name}: ${listed}; name a Secret with valueFrom.secretKeyRef, or add the variable to injection.env`,
      });
    }
  }
  return issues;
}

function reserved(ref: { path: string; name: string }): Issue {
  return {
    path: ref.path,
    message: `${ref.name} is reserved: names starting with ${RESERVED_ENV_PREFIX} are the operator's own variables of the injected sidecar (Secrets other ToolSets name, shared state, settings); name a Secret with valueFrom.secretKeyRef instead`,
  };
}

/**
 * The cluster's rule where the chart's `injection.env` may not be known (`earpiece validate`): with the
 * list, the rule itself; without it, the reserved prefix is refused and every other name is a warning.
 */
export function clusterEnvCheck(
  spec: unknown,
  chartEnv: readonly V1EnvVar[] | undefined,
): { issues: Issue[]; warnings: Issue[] } {
  if (chartEnv !== undefined) return { issues: sidecarEnvIssues(spec, chartEnv), warnings: [] };
  const issues: Issue[] = [];
  const warnings: Issue[] = [];
  for (const ref of envRefs(spec)) {
    if (ref.name.startsWith(RESERVED_ENV_PREFIX)) issues.push(reserved(ref));
    else
      warnings.push({
        path: ref.path,
        message: `in a cluster the injected sidecar has ${ref.name} only if the chart's injection.env gives it; set EARPIECE_SIDECAR_ENV to the chart's list (JSON) to check it here`,
      });
  }
  return { issues, warnings };
}

/** A reference to a Secret by way of an `injection.env` variable the chart fills from it. */
export type EnvSecretRef = SecretRef & { env: string };

/** Each `valueFrom.env` of the spec that names an `injection.env` variable filled from a Secret. */
export function envSecretRefs(spec: unknown, extraEnv: readonly V1EnvVar[]): EnvSecretRef[] {
  const fromSecret = new Map<string, { name: string; key: string }>();
  for (const e of extraEnv) {
    const ref = e.valueFrom?.secretKeyRef;
    if (ref?.name && !e.name.startsWith(RESERVED_ENV_PREFIX))
      fromSecret.set(e.name, { name: ref.name, key: ref.key });
  }
  return envRefs(spec).flatMap((ref) => {
    const secret = fromSecret.get(ref.name);
    return secret ? [{ path: ref.path, name: secret.name, key: secret.key, env: ref.name }] : [];
  });
}

/** validateToolSet, then the cluster's rule for `valueFrom.env`: the controller's and `earpiece inject`'s check. */
export function validateForCluster(doc: unknown, extraEnv: readonly V1EnvVar[]): ParseResult {
  const result = validateToolSet(doc);
  if (!result.ok) return result;
  const issues = sidecarEnvIssues(result.toolset.spec, extraEnv);
  return issues.length === 0 ? result : { ok: false, issues };
}

/** The chart's sidecar env as a container has it: the last entry of a name is the one in effect. */
export function effectiveEnv(chartEnv: readonly V1EnvVar[]): V1EnvVar[] {
  return [...new Map(chartEnv.map((e) => [e.name, e])).values()];
}

/**
 * What the injected-env annotation records: the names of the chart env vars earpiece gave the sidecar, and
 * a hash of their definitions. The names let a later injection take out those the chart no longer gives.
 */
export function chartEnvRecord(chartEnv: readonly V1EnvVar[]): string {
  const { hash, names } = chartEnvDigest(chartEnv);
  return JSON.stringify({ hash, names });
}

interface ChartEnvDigest {
  /** The variables in effect, in the chart's order. */
  env: V1EnvVar[];
  /** Their names, sorted, and a hash of their definitions. */
  names: string[];
  hash: string;
}

/**
 * Digests by list: the operator's configuration holds one list for its life, and a reconcile compares
 * every pod of a namespace against it, so it is hashed once rather than once per pod.
 */
const DIGESTS = new WeakMap<readonly V1EnvVar[], ChartEnvDigest>();

function chartEnvDigest(chartEnv: readonly V1EnvVar[]): ChartEnvDigest {
  let digest = DIGESTS.get(chartEnv);
  if (digest === undefined) {
    const env = effectiveEnv(chartEnv);
    const sorted = [...env].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const hash = createHash('sha256')
      .update(JSON.stringify(sorted.map((e) => [e.name, definition(e)])))
      .digest('base64url')
      .slice(0, 22);
    digest = { env, names: sorted.map((e) => e.name), hash };
    DIGESTS.set(chartEnv, digest);
  }
  return digest;
}

/** The record of an annotation, or undefined when it is none (absent, or edited into something else). */
function readRecord(text: string | undefined): { hash: string; names: string[] } | undefined {
  if (text === undefined) return undefined;
  try {
    const value = JSON.parse(text) as { hash?: unknown; names?: unknown };
    const { hash, names } = value;
    if (typeof hash !== 'string' || !Array.isArray(names) || !names.every((n) => typeof n === 'string'))
      return undefined;
    return { hash, names };
  } catch {
    return undefined;
  }
}

/**
 * Whether an injected sidecar is behind the chart's sidecar env vars (injection.env, the shared-state
 * URL): undefined when it is not, else the names it lacks, has another value of, or still has though the
 * chart no longer gives them (`ours`: those to take out). With the injected-env annotation only a change
 * of the chart counts, so a value another webhook rewrote since has the last word. Without it (injected
 * before earpiece recorded it) the values are compared, with the API server's defaults and canonical
 * quantities taken into account, and a variable the chart no longer gives is not looked for.
 */
export function staleChartEnv(
  annotation: string | undefined,
  sidecarEnv: readonly V1EnvVar[],
  chartEnv: readonly V1EnvVar[],
): { names: string[]; ours: string[] } | undefined {
  const digest = chartEnvDigest(chartEnv);
  const recorded = readRecord(annotation);
  if (recorded?.hash === digest.hash) return undefined;
  const defined = new Map(sidecarEnv.map((e) => [e.name, definition(e)]));
  const chart = digest.env;
  const differing = chart.filter((e) => defined.get(e.name) !== definition(e)).map((e) => e.name);
  if (!recorded) return differing.length > 0 ? { names: differing, ours: [] } : undefined;
  const given = new Set(chart.map((e) => e.name));
  const dropped = recorded.names.filter((n) => !given.has(n) && defined.has(n));
  // The chart changed, but not in anything this pod has or lacks: it is as a new injection would make it.
  if (differing.length === 0 && dropped.length === 0) return undefined;
  return { names: [...differing, ...dropped], ours: recorded.names };
}

function definition(e: V1EnvVar): string {
  const from = e.valueFrom;
  if (!from) return JSON.stringify(['value', e.value ?? '']);
  const {
    secretKeyRef: secret,
    configMapKeyRef: configMap,
    fieldRef: field,
    resourceFieldRef: resource,
  } = from;
  if (secret) return JSON.stringify(['secret', secret.name ?? '', secret.key, secret.optional ?? false]);
  if (configMap)
    return JSON.stringify(['configMap', configMap.name ?? '', configMap.key, configMap.optional ?? false]);
  if (field) return JSON.stringify(['field', field.apiVersion ?? 'v1', field.fieldPath]);
  if (resource) {
    // Stored canonical (1024Ki as 1Mi), and 1 as "0": compared as numbers.
    const divisor = parseQuantity(String(resource.divisor ?? '1'));
    return JSON.stringify(['resource', resource.containerName ?? '', resource.resource, divisor || 1]);
  }
  return JSON.stringify(['other', from]);
}
