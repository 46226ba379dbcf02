/**
 * ToolSet status, pure: conditions in the metav1.Condition shape, `lastTransitionTime` kept unless the
 * condition's status flips, and an equality check so the controller writes status only when it changes
 * (every write bumps resourceVersion and comes back as an update).
 */
import {
  canonicalJson,
  type Issue,
  MAX_CONDITION_MESSAGE,
  type StatusCondition,
  type ToolSetStatus,
} from '../toolset/index.js';

export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface ConditionInput {
  type: string;
  status: ConditionStatus;
  /** CamelCase, as Kubernetes conditions want. */
  reason: string;
  message: string;
  /** The generation this condition was worked out for, when not the status' own (a carried-over one). */
  observedGeneration?: number;
}

export const READY = 'Ready';
/** Ready's reason when the spec as it is now does not validate; the webhook reads it too. */
export const INVALID_TOOLSET = 'InvalidToolSet';
export const RESTART_REQUIRED = 'RestartRequired';
/** False while pods of the ToolSet run without a working sidecar (not injected, ImagePullBackOff, ...). */
export const SIDECARS_READY = 'SidecarsReady';

/** metav1.Time: RFC 3339 with whole seconds. */
export function kubeTime(date: Date): string {
  return date.toISOString().replace(/\.\d+Z$/, 'Z');
}

/** The new conditions, each keeping its old lastTransitionTime unless its status changed. */
export function mergeConditions(
  previous: readonly StatusCondition[] | undefined,
  next: readonly ConditionInput[],
  observedGeneration: number | undefined,
  now: Date,
): StatusCondition[] {
  return next.map((c) => {
    const old = previous?.find((p) => p.type === c.type);
    const lastTransitionTime = old && old.status === c.status ? old.lastTransitionTime : kubeTime(now);
    const generation = c.observedGeneration ?? observedGeneration;
    return {
      type: c.type,
      status: c.status,
      reason: c.reason,
      message: fitMessage(c.message),
      lastTransitionTime,
      ...(generation !== undefined ? { observedGeneration: generation } : {}),
    };
  });
}

/** A message cut to what the CRD takes, so a long list of names cannot make the status unwritable. */
function fitMessage(message: string): string {
  if (message.length <= MAX_CONDITION_MESSAGE) return message;
  // The ending's own digits are at most those of the message's length.
  let cut = MAX_CONDITION_MESSAGE - ` … and ${message.length} more characters`.length;
  // Never split a surrogate pair.
  if (/[\uD800-\uDBFF]/.test(message[cut - 1] ?? '')) cut -= 1;
  return `${message.slice(0, cut)} … and ${message.length - cut} more characters`;
}

export function buildStatus(
  previous: ToolSetStatus | undefined,
  input: {
    observedGeneration: number | undefined;
    tools: number;
    pods?: number | undefined;
    conditions: readonly ConditionInput[];
  },
  now: Date,
): ToolSetStatus {
  return {
    ...(input.observedGeneration !== undefined ? { observedGeneration: input.observedGeneration } : {}),
    tools: input.tools,
    ...(input.pods !== undefined ? { pods: input.pods } : {}),
    conditions: mergeConditions(previous?.conditions, input.conditions, input.observedGeneration, now),
  };
}

export function sameStatus(a: ToolSetStatus | undefined, b: ToolSetStatus | undefined): boolean {
  return canonicalJson(a ?? {}) === canonicalJson(b ?? {});
}

const MAX_LISTED = 10;

/** One message naming every field at fault (the first few, then how many more). */
export function issuesMessage(issues: readonly Issue[]): string {
  const shown = issues.slice(0, MAX_LISTED).map((i) => `${i.path}: ${i.message}`);
  const more = issues.length - shown.length;
  return `${shown.join('; ')}${more > 0 ? `; and ${more} more` : ''}`;
}

export function condition(status: ToolSetStatus | undefined, type: string): StatusCondition | undefined {
  return status?.conditions?.find((c) => c.type === type);
}
