/**
 * The validating admission webhook's decision for a ToolSet (`POST /validate`): the same check as
 * `earpiece validate` (checkToolSet), so `kubectl apply` refuses a broken ToolSet with the lines
 * `earpiece validate` prints, each with its field path. The decision has no side effects, so a dry run
 * is answered like any other request and the configuration can declare `sideEffects: None`.
 *
 * An UPDATE that leaves the spec as it was is allowed whatever the spec holds, with the problems as
 * warnings: a ToolSet that got in while the webhook was down (failurePolicy Ignore) must still take
 * labels, annotations and finalizers, and its Ready condition already reports what is wrong.
 */
import { isDeepStrictEqual } from 'node:util';
import { API_GROUP, KIND } from '../toolset/api.js';
import { checkToolSet } from '../toolset/check.js';
import { formatIssues, type Issue } from '../toolset/validate.js';

export interface ToolSetAdmissionRequest {
  uid: string;
  kind?: { group?: string; version?: string; kind?: string };
  operation?: string;
  name?: string;
  namespace?: string;
  object?: unknown;
  oldObject?: unknown;
  dryRun?: boolean;
}

export interface StatusCause {
  field: string;
  message: string;
  reason: 'FieldValueInvalid';
}

export interface ToolSetAdmissionResponse {
  uid: string;
  allowed: boolean;
  status?: {
    code: number;
    reason: 'Invalid' | 'BadRequest';
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
  allowed: boolean;
  issues: Issue[];
  dryRun: boolean;
}

/** The API server keeps at most 4 KiB of warnings per response and may cut each after 256 characters. */
const MAX_WARNING = 256;
const MAX_WARNINGS = 12;

function warnings(issues: Issue[], prefix = ''): string[] {
  const lines = issues.map((i) => {
    const text = `earpiece: ${prefix}${i.path}: ${i.message}`;
    return text.length <= MAX_WARNING ? text : `${text.slice(0, MAX_WARNING - 1)}…`;
  });
  if (lines.length <= MAX_WARNINGS) return lines;
  return [...lines.slice(0, MAX_WARNINGS - 1), `earpiece: and ${lines.length - MAX_WARNINGS + 1} more`];
}

function metadataOf(object: unknown): { name?: unknown; namespace?: unknown } {
  const metadata = (object as { metadata?: unknown } | null | undefined)?.metadata;
  return metadata && typeof metadata === 'object' ? metadata : {};
}

export function admitToolSet(
  request: ToolSetAdmissionRequest,
  onDecision?: (decision: ToolSetAdmission) => void,
): ToolSetAdmissionResponse {
  const object = request.object;
  const meta = metadataOf(object);
  const name = typeof meta.name === 'string' ? meta.name : request.name;
  const decision = (allowed: boolean, issues: Issue[]) =>
    onDecision?.({
      namespace: request.namespace,
      name,
      operation: request.operation,
      allowed,
      issues,
      dryRun: request.dryRun === true,
    });

  const isToolSet = request.kind?.group === API_GROUP && request.kind?.kind === KIND;
  if (!isToolSet || (request.operation !== 'CREATE' && request.operation !== 'UPDATE')) {
    return {
      uid: request.uid,
      allowed: true,
      warnings: ["earpiece: only ToolSet CREATE and UPDATE are validated; check the webhook's rules"],
    };
  }
  if (!object || typeof object !== 'object' || Array.isArray(object)) {
    const issues = [{ path: '(object)', message: 'the review carries no ToolSet object' }];
    decision(false, issues);
    return {
      uid: request.uid,
      allowed: false,
      status: { code: 400, reason: 'BadRequest', message: 'the review carries no ToolSet object' },
    };
  }

  const result = checkToolSet(object);
  const spec = (object as { spec?: unknown }).spec;
  const oldSpec = (request.oldObject as { spec?: unknown } | undefined)?.spec;
  const specUnchanged = request.operation === 'UPDATE' && isDeepStrictEqual(spec, oldSpec);
  if (result.ok || specUnchanged) {
    decision(true, result.issues);
    const all = [
      ...warnings(result.issues, 'the spec is unchanged but invalid: '),
      ...warnings(result.warnings),
    ];
    return { uid: request.uid, allowed: true, ...(all.length ? { warnings: all } : {}) };
  }
  decision(false, result.issues);
  const count = result.issues.length;
  return {
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
  };
}
