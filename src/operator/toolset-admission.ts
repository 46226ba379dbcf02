/**
 * The validating admission webhook's decision for a ToolSet (`POST /validate`): the same check as
 * `earpiece validate` (checkToolSet), so `kubectl apply` refuses a broken ToolSet with the lines
 * `earpiece validate` prints, each with its field path. The decision has no side effects, so a dry run
 * is answered like any other request and the configuration can declare `sideEffects: None`.
 *
 * An UPDATE that leaves the spec as it was is allowed whatever the spec holds, with the problems as
 * warnings: a ToolSet that got in while the webhook was down (failurePolicy Ignore) must still take
 * labels, annotations and finalizers, and its Ready condition already reports what is wrong.
 *
 * In a cluster a `valueFrom.env` may name only a variable the injected sidecar gets from the chart's
 * injection.env, never one of the operator's own EARPIECE_… variables (sidecar-env.ts); the controller
 * holds ToolSets to the same rule, so what it would report Ready=False is refused here (422).
 *
 * A valid ToolSet that names Secrets is then admitted only if the requesting user may `get` each of them
 * (secret-access.ts): the injected sidecar receives their values, and nothing else checks who named them.
 * A `valueFrom.env` naming an injection.env variable the chart fills from a Secret names that Secret.
 * An UPDATE that changes the spec is checked the same way, since any change may send a Secret named before
 * elsewhere; one that leaves the spec as it was (labels, finalizers) is not.
 *
 * A release with watchNamespaces reconciles no ToolSet elsewhere, and without a word that ToolSet would
 * simply never get a status. The chart sends those too (a second entry that never blocks): they are
 * admitted unchecked, with a warning that kubectl prints, unless another release has claimed them.
 */
import { isDeepStrictEqual } from 'node:util';
import type { V1EnvVar } from '@kubernetes/client-node';
import type { ToolSetAdmissionResult } from '../telemetry/operator-metrics.js';
import { API_GROUP, KIND } from '../toolset/api.js';
import { type CheckResult, checkToolSet } from '../toolset/check.js';
import type { ToolSet } from '../toolset/schema.js';
import { formatIssues, type Issue } from '../toolset/validate.js';
import { type SecretRef, secretRefs } from '../toolset/values.js';
import { type SecretAccess, type UserInfo, unreadableSecrets } from './secret-access.js';
import { selectorQuery, selectorsOverlap } from './select.js';
import { ANNOTATION_TOOLSET, LABEL_OPERATOR } from './sidecar.js';
import { type EnvSecretRef, envSecretRefs, sidecarEnvIssues } from './sidecar-env.js';

export interface ToolSetAdmissionRequest {
  uid: string;
  kind?: { group?: string; version?: string; kind?: string };
  operation?: string;
  name?: string;
  namespace?: string;
  object?: unknown;
  oldObject?: unknown;
  dryRun?: boolean;
  userInfo?: UserInfo;
}

export interface StatusCause {
  field: string;
  message: string;
  reason: 'FieldValueInvalid' | 'FieldValueForbidden';
}

export interface ToolSetAdmissionResponse {
  uid: string;
  allowed: boolean;
  status?: {
    code: number;
    reason: 'Invalid' | 'BadRequest' | 'Forbidden' | 'InternalError';
    message: string;
    details?: { group: string; kind: string; name?: string; causes: StatusCause[] };
  };
  warnings?: string[];
}

/** What the operator logs and counts about one decision. */
export interface ToolSetAdmission {
  namespace: string | undefined;
  name: string | undefined;
  operation: string | undefined;
  /**
   * `refused`: invalid; `forbidden`: names a Secret the requesting user may not read; `error`: whether
   * the user may read them could not be found out (refused too); `unwatched`: in a namespace this release
   * does not watch, admitted unchecked.
   */
  result: ToolSetAdmissionResult;
  /** The problems of a refused ToolSet; for a forbidden one, each reference to a Secret the user may not read. */
  issues: Issue[];
  dryRun: boolean;
  user: string | undefined;
  /** Why the access check could not be made (`error`). */
  error?: string;
}

/** The namespaces this release reconciles ToolSets in (empty: all), and its operator instance. */
export interface ServedNamespaces {
  watchNamespaces: readonly string[];
  /** Undefined: the ToolSet's operator label is not looked at. */
  instance?: string | undefined;
}

/** Who may name which Secret; without it, a valid ToolSet is admitted whatever Secrets it names. */
export interface SecretAccessCheck {
  access: SecretAccess;
  timeoutMs?: number;
  /** Reviews in flight at once (default SECRET_ACCESS_CONCURRENCY). */
  concurrency?: number;
}

/** The API server keeps at most 4 KiB of warnings per response and may cut each after 256 characters. */
const MAX_WARNING = 256;
const MAX_WARNINGS = 12;
/** Overlapping ToolSets named one per line, within what the validation warnings leave of the 4 KiB. */
const MAX_OVERLAP_WARNINGS = 3;

function warnings(issues: Issue[], prefix = ''): string[] {
  const lines = issues.map((i) => clip(`earpiece: ${prefix}${i.path}: ${i.message}`));
  if (lines.length <= MAX_WARNINGS) return lines;
  return [...lines.slice(0, MAX_WARNINGS - 1), `earpiece: and ${lines.length - MAX_WARNINGS + 1} more`];
}

function metadataOf(object: unknown): { name?: unknown; namespace?: unknown; labels?: unknown } {
  const metadata = (object as { metadata?: unknown } | null | undefined)?.metadata;
  return metadata && typeof metadata === 'object' ? metadata : {};
}

/**
 * checkToolSet, then the cluster's rule for `valueFrom.env` (sidecar-env.ts), as the controller checks it:
 * what the controller would report Ready=False is refused here.
 */
function checkInCluster(object: unknown, sidecarEnv: readonly V1EnvVar[]): CheckResult {
  const result = checkToolSet(object);
  if (!result.ok) return result;
  const issues = sidecarEnvIssues(result.toolset.spec, sidecarEnv);
  return issues.length === 0 ? result : { ok: false, issues, warnings: result.warnings };
}

function reviewsToolSet(request: ToolSetAdmissionRequest): boolean {
  return request.kind?.group === API_GROUP && request.kind?.kind === KIND;
}

/** The ToolSet's own answer, before any access check: its validity. */
function validation(
  request: ToolSetAdmissionRequest,
  name: string | undefined,
  sidecarEnv: readonly V1EnvVar[],
): { response: ToolSetAdmissionResponse; result?: 'allowed' | 'refused'; issues: Issue[] } {
  const object = request.object;
  if (!reviewsToolSet(request) || (request.operation !== 'CREATE' && request.operation !== 'UPDATE')) {
    return {
      response: {
        uid: request.uid,
        allowed: true,
        warnings: ["earpiece: only ToolSet CREATE and UPDATE are validated; check the webhook's rules"],
      },
      issues: [],
    };
  }
  if (!object || typeof object !== 'object' || Array.isArray(object)) {
    const message = 'the review carries no ToolSet object';
    return {
      response: { uid: request.uid, allowed: false, status: { code: 400, reason: 'BadRequest', message } },
      result: 'refused',
      issues: [{ path: '(object)', message }],
    };
  }

  const result = checkInCluster(object, sidecarEnv);
  const spec = (object as { spec?: unknown }).spec;
  const oldSpec = (request.oldObject as { spec?: unknown } | undefined)?.spec;
  const specUnchanged = request.operation === 'UPDATE' && isDeepStrictEqual(spec, oldSpec);
  if (result.ok || specUnchanged) {
    const all = [
      ...warnings(result.issues, 'the spec is unchanged but invalid: '),
      ...warnings(result.warnings),
    ];
    return {
      response: { uid: request.uid, allowed: true, ...(all.length ? { warnings: all } : {}) },
      result: 'allowed',
      issues: result.issues,
    };
  }
  const count = result.issues.length;
  return {
    response: {
      uid: request.uid,
      allowed: false,
      status: {
        code: 422,
        reason: 'Invalid',
        // kubectl prints this after `admission webhook "…" denied the request: `.
        message: `ToolSet${name ? ` ${name}` : ''} has ${count} problem${count === 1 ? '' : 's'}:\n${formatIssues(result.issues)}`,
        details: {
          group: API_GROUP,
          kind: 'toolsets',
          ...(name ? { name } : {}),
          causes: result.issues.map((i) => ({
            field: i.path,
            message: i.message,
            reason: 'FieldValueInvalid',
          })),
        },
      },
    },
    result: 'refused',
    issues: result.issues,
  };
}

/**
 * The Secret references that need the access check: all of them, unless an UPDATE leaves the spec as it
 * was (labels, annotations, finalizers). Any change to the spec may send a Secret named before somewhere
 * else (a tool's URL, the upstream), so it takes the right to read every Secret the ToolSet names. A
 * `valueFrom.env` naming a sidecar variable the chart's injection.env fills from a Secret names that Secret.
 */
export function secretRefsToCheck(
  object: unknown,
  oldObject?: unknown,
  sidecarEnv: readonly V1EnvVar[] = [],
): (SecretRef | EnvSecretRef)[] {
  const spec = (object as { spec?: unknown }).spec;
  if (oldObject !== undefined && isDeepStrictEqual(spec, (oldObject as { spec?: unknown } | null)?.spec))
    return [];
  return [...secretRefs(spec), ...envSecretRefs(spec, sidecarEnv)];
}

/** The user as messages name them. */
function who(user: UserInfo | undefined): string {
  return user?.username ? `user ${user.username}` : 'the requesting user';
}

function forbidden(
  uid: string,
  toolset: string | undefined,
  namespace: string,
  user: UserInfo | undefined,
  refs: (SecretRef | EnvSecretRef)[],
): ToolSetAdmissionResponse {
  const one = new Set(refs.map((r) => r.name)).size === 1;
  const lines = refs.map(
    (r) =>
      `${r.path}: Secret ${r.name} (key ${r.key}${'env' in r ? `, the sidecar's ${r.env} from injection.env` : ''})`,
  );
  return {
    uid,
    allowed: false,
    status: {
      code: 403,
      reason: 'Forbidden',
      message:
        `ToolSet${toolset ? ` ${toolset}` : ''} names ${one ? 'a Secret' : 'Secrets'} of namespace ${namespace} that ${who(user)} may not read:\n` +
        `${lines.join('\n')}\n` +
        `The injected sidecar would get ${one ? 'its value' : 'their values'}, so naming a Secret takes the right to read it: ` +
        `ask for get on ${one ? 'that Secret' : 'those Secrets'}, or have someone who may read ${one ? 'it' : 'them'} apply the ToolSet.`,
      details: {
        group: API_GROUP,
        kind: 'toolsets',
        ...(toolset ? { name: toolset } : {}),
        causes: refs.map((r) => ({
          field: r.path,
          message: `${who(user)} may not get Secret ${r.name}`,
          reason: 'FieldValueForbidden',
        })),
      },
    },
  };
}

function checkFailed(
  uid: string,
  toolset: string | undefined,
  user: UserInfo | undefined,
  names: string[],
  error: string,
): ToolSetAdmissionResponse {
  // A ToolSet may name hundreds of Secrets; a few say which change it is.
  const listed =
    names.length <= 8 ? names.join(', ') : `${names.slice(0, 8).join(', ')} and ${names.length - 8} more`;
  return {
    uid,
    allowed: false,
    status: {
      code: 500,
      reason: 'InternalError',
      message:
        `ToolSet${toolset ? ` ${toolset}` : ''} is refused because the operator could not check that ${who(user)} may read ` +
        `the Secrets it names (${listed}): ${error}. A ToolSet is never admitted unchecked; try again.`,
    },
  };
}

/**
 * Other ToolSets of the namespace whose selectors can pick the same pods: a pod both select is injected
 * with neither (several_toolsets), and a running pod keeps the one it has, so the new ToolSet seems to do
 * nothing until the next rollout leaves the pods without a sidecar. Said when the selector is new or changed.
 */
function overlapWarnings(
  request: ToolSetAdmissionRequest,
  name: string | undefined,
  others: readonly ToolSet[],
): string[] {
  const selector = (request.object as { spec?: { selector?: ToolSet['spec']['selector'] } }).spec?.selector;
  const before = (request.oldObject as { spec?: { selector?: unknown } } | null | undefined)?.spec?.selector;
  if (!selector || (request.operation === 'UPDATE' && isDeepStrictEqual(selector, before))) return [];
  const lines = others
    .filter((t) => t.metadata.name !== name && selectorsOverlap(selector, t.spec.selector))
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
    .map((t) =>
      clip(
        `earpiece: spec.selector can select the same pods as ToolSet ${t.metadata.name} (${selectorQuery(t.spec.selector) ?? 'every pod'}): a pod both select gets neither sidecar unless its ${ANNOTATION_TOOLSET} annotation names one, and running pods keep theirs`,
      ),
    );
  if (lines.length <= MAX_OVERLAP_WARNINGS) return lines;
  return [
    ...lines.slice(0, MAX_OVERLAP_WARNINGS - 1),
    `earpiece: and ${lines.length - MAX_OVERLAP_WARNINGS + 1} more ToolSets whose selectors can select the same pods`,
  ];
}

function clip(text: string): string {
  return text.length <= MAX_WARNING ? text : `${text.slice(0, MAX_WARNING - 1)}…`;
}

/**
 * A ToolSet in a namespace this release does not watch: not this release's to judge (another may watch
 * it), so admitted as it is; the warning says nothing reconciles it unless another release claims it.
 * None for a ToolSet another operator has already labelled as its own.
 */
function unwatched(
  request: ToolSetAdmissionRequest,
  name: string | undefined,
  namespace: string,
  served: ServedNamespaces,
  labels: unknown,
): ToolSetAdmissionResponse {
  const owner =
    labels && typeof labels === 'object' ? (labels as Record<string, unknown>)[LABEL_OPERATOR] : undefined;
  if (served.instance !== undefined && typeof owner === 'string' && owner !== '' && owner !== served.instance)
    return { uid: request.uid, allowed: true };
  const release = served.instance === undefined ? 'this earpiece release' : `release ${served.instance}`;
  return {
    uid: request.uid,
    allowed: true,
    warnings: [
      clip(
        `earpiece: ${release} does not watch namespace ${namespace} (watchNamespaces: ${served.watchNamespaces.join(', ')}): ` +
          `unless another earpiece release does, nothing checks or reconciles ToolSet${name ? ` ${name}` : ''} and no pod gets its sidecar`,
      ),
      clip(
        `earpiece: apply it in a watched namespace, or add ${namespace} to the release's watchNamespaces (chart value)`,
      ),
    ],
  };
}

export async function admitToolSet(
  request: ToolSetAdmissionRequest,
  options: {
    secretAccess?: SecretAccessCheck | undefined;
    onDecision?: ((decision: ToolSetAdmission) => void) | undefined;
    /** The env vars the chart gives every sidecar (injection.env, shared state); default none. */
    sidecarEnv?: readonly V1EnvVar[] | undefined;
    /** Without it, every namespace is this release's. */
    served?: ServedNamespaces | undefined;
    /** The namespace's other ToolSets (the operator's cache), for selectors that overlap; default none. */
    toolsetsInNamespace?: ((namespace: string) => readonly ToolSet[]) | undefined;
  } = {},
): Promise<ToolSetAdmissionResponse> {
  const meta = metadataOf(request.object);
  const name = typeof meta.name === 'string' ? meta.name : request.name;
  const namespace = request.namespace ?? (typeof meta.namespace === 'string' ? meta.namespace : undefined);
  /** What every decision about this review records, besides its namespace, result and issues. */
  const review = {
    name,
    operation: request.operation,
    dryRun: request.dryRun === true,
    user: request.userInfo?.username,
  };
  const served = options.served;
  if (
    served &&
    served.watchNamespaces.length > 0 &&
    namespace !== undefined &&
    !served.watchNamespaces.includes(namespace) &&
    reviewsToolSet(request)
  ) {
    options.onDecision?.({ ...review, namespace, result: 'unwatched', issues: [] });
    return unwatched(request, name, namespace, served, meta.labels);
  }
  const sidecarEnv = options.sidecarEnv ?? [];
  const { response, result, issues } = validation(request, name, sidecarEnv);
  if (!result) return response;
  if (response.allowed && namespace !== undefined && options.toolsetsInNamespace) {
    const overlaps = overlapWarnings(request, name, options.toolsetsInNamespace(namespace));
    if (overlaps.length > 0) response.warnings = [...(response.warnings ?? []), ...overlaps];
  }
  const decision: ToolSetAdmission = { ...review, namespace: request.namespace, result, issues };
  const check = options.secretAccess;
  const refs =
    check && result === 'allowed' ? secretRefsToCheck(request.object, request.oldObject, sidecarEnv) : [];
  if (!check || refs.length === 0) {
    options.onDecision?.(decision);
    return response;
  }

  const names = [...new Set(refs.map((r) => r.name))];
  const user = request.userInfo;
  const failed = (error: string) => {
    options.onDecision?.({ ...decision, result: 'error', issues: [], error });
    return checkFailed(request.uid, name, user, names, error);
  };
  // The API server always sends both; a SubjectAccessReview without a user or a group is invalid.
  if (namespace === undefined) return failed('the review names no namespace');
  if (!user?.username && !user?.groups?.length) return failed('the review names no user');
  const answer = await unreadableSecrets(check.access, user, namespace, names, {
    timeoutMs: check.timeoutMs,
    concurrency: check.concurrency,
  });
  if ('error' in answer) return failed(answer.error);
  if (answer.unreadable.length === 0) {
    options.onDecision?.(decision);
    return response;
  }
  const denied = refs.filter((r) => answer.unreadable.includes(r.name));
  options.onDecision?.({
    ...decision,
    result: 'forbidden',
    issues: denied.map((r) => ({ path: r.path, message: `${who(user)} may not get Secret ${r.name}` })),
  });
  return forbidden(request.uid, name, namespace, user, denied);
}
