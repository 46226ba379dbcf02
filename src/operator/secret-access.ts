/**
 * Whether the user behind an admission request may read Secrets, asked of the API server with one
 * SubjectAccessReview per Secret (authorization.k8s.io/v1, no side effects). A ToolSet that names a
 * Secret hands its value to the injected sidecar, and the pods are created by their controllers, so
 * nothing else ever checks that the ToolSet's author may read it.
 */
import {
  type AuthorizationV1Api,
  type ConfigurationOptions,
  Observable,
  type RequestContext,
  type ResponseContext,
} from '@kubernetes/client-node';
import { describeApiError } from './api-errors.js';

/** The requesting user, as AdmissionReview `request.userInfo` gives it. */
export interface UserInfo {
  username?: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
}

/** The one question the admission check asks; the operator asks the API server, tests may stub it. */
export interface SecretAccess {
  /** Whether `user` may `get` Secret `name` of `namespace`; throws when no answer could be had. */
  mayGet(user: UserInfo, namespace: string, name: string, signal: AbortSignal): Promise<boolean>;
}

/** The whole check answers within this, well inside the webhook's own timeout (10 s by default). */
export const SECRET_ACCESS_TIMEOUT_MS = 3000;
/** Distinct Secrets checked for one request at most, all at once. */
export const MAX_SECRETS_CHECKED = 32;

/** Client options that abort the request with `signal` (client-node takes a signal only from a middleware). */
function withSignal(signal: AbortSignal): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (request: RequestContext) => {
          request.setSignal(signal);
          return new Observable(Promise.resolve(request));
        },
        post: (response: ResponseContext) => new Observable(Promise.resolve(response)),
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}

export function subjectAccessReviews(api: AuthorizationV1Api): SecretAccess {
  return {
    async mayGet(user, namespace, name, signal) {
      const review = await api.createSubjectAccessReview(
        {
          body: {
            apiVersion: 'authorization.k8s.io/v1',
            kind: 'SubjectAccessReview',
            spec: {
              user: user.username,
              uid: user.uid,
              groups: user.groups,
              extra: user.extra,
              resourceAttributes: { namespace, verb: 'get', group: '', resource: 'secrets', name },
            },
          },
        },
        withSignal(signal),
      );
      return review.status?.allowed === true;
    },
  };
}

export type AccessAnswer = { unreadable: string[] } | { error: string };

/**
 * The Secrets among `names` that `user` may not read, or why that could not be found out: an API error,
 * no answer within `timeoutMs`, or more Secrets than one request may have checked. The caller refuses
 * in every such case: admitting unchecked would defeat the check.
 */
export async function unreadableSecrets(
  access: SecretAccess,
  user: UserInfo,
  namespace: string,
  names: readonly string[],
  options: { timeoutMs?: number; max?: number } = {},
): Promise<AccessAnswer> {
  const timeoutMs = options.timeoutMs ?? SECRET_ACCESS_TIMEOUT_MS;
  const max = options.max ?? MAX_SECRETS_CHECKED;
  if (names.length > max) {
    return {
      error: `it names ${names.length} Secrets not named before, and at most ${max} are checked in one request: add them in several steps`,
    };
  }
  const abort = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  // A check that ignores the signal must not hold the review past the deadline either.
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const err = new Error(`the Kubernetes API did not answer within ${timeoutMs} ms`);
      abort.abort(err);
      reject(err);
    }, timeoutMs);
  });
  try {
    const answers = await Promise.race([
      Promise.all(names.map((name) => access.mayGet(user, namespace, name, abort.signal))),
      deadline,
    ]);
    return { unreadable: names.filter((_, i) => !answers[i]) };
  } catch (err) {
    const reason = abort.signal.aborted ? (abort.signal.reason as Error).message : describeApiError(err);
    return { error: reason };
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}
