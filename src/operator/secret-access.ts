/**
 * Whether the user behind an admission request may read Secrets, asked of the API server with one
 * SubjectAccessReview per Secret (authorization.k8s.io/v1, no side effects), a few at a time; when there
 * are more than that, one review for every Secret of the namespace first, which may answer for all. A
 * ToolSet that names a Secret hands its value to the injected sidecar, and the pods are created by their
 * controllers, so nothing else ever checks that the ToolSet's author may read it.
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
  /**
   * Whether `user` may `get` every Secret of `namespace` (a review naming no Secret): asked first when a
   * ToolSet names more Secrets than are reviewed at once, so one answer covers any number of them.
   */
  mayGetEvery?(user: UserInfo, namespace: string, signal: AbortSignal): Promise<boolean>;
}

/** The whole check answers within this, well inside the webhook's own timeout (10 s by default). */
export const SECRET_ACCESS_TIMEOUT_MS = 3000;
/**
 * SubjectAccessReviews in flight at once for one request. There is no bound on how many are sent: any
 * ToolSet the schema admits must be checkable, and an update must check every Secret it names.
 */
export const SECRET_ACCESS_CONCURRENCY = 8;

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
  const ask = async (user: UserInfo, namespace: string, name: string | undefined, signal: AbortSignal) => {
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
            resourceAttributes: {
              namespace,
              verb: 'get',
              group: '',
              resource: 'secrets',
              ...(name === undefined ? {} : { name }),
            },
          },
        },
      },
      withSignal(signal),
    );
    return review.status?.allowed === true;
  };
  return {
    mayGet: (user, namespace, name, signal) => ask(user, namespace, name, signal),
    mayGetEvery: (user, namespace, signal) => ask(user, namespace, undefined, signal),
  };
}

export type AccessAnswer = { unreadable: string[] } | { error: string };

/**
 * The Secrets among `names` that `user` may not read, or why that could not be found out: an API error,
 * or no answer for all of them within `timeoutMs`. The caller refuses in either case: admitting
 * unchecked would defeat the check. At most `concurrency` reviews are in flight at once.
 */
export async function unreadableSecrets(
  access: SecretAccess,
  user: UserInfo,
  namespace: string,
  names: readonly string[],
  options: { timeoutMs?: number; concurrency?: number } = {},
): Promise<AccessAnswer> {
  const timeoutMs = options.timeoutMs ?? SECRET_ACCESS_TIMEOUT_MS;
  const concurrency = Math.max(1, options.concurrency ?? SECRET_ACCESS_CONCURRENCY);
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
    const every = async () =>
      names.length > concurrency &&
      access.mayGetEvery !== undefined &&
      (await access.mayGetEvery(user, namespace, abort.signal));
    if (await Promise.race([every(), deadline])) return { unreadable: [] };
    const answers: boolean[] = new Array(names.length);
    let next = 0;
    // Each worker takes the next name until none is left; the first failure (or the deadline) ends all.
    const worker = async () => {
      while (next < names.length && !abort.signal.aborted) {
        const i = next++;
        answers[i] = await access.mayGet(user, namespace, names[i] as string, abort.signal);
      }
    };
    const workers = Array.from({ length: Math.min(concurrency, names.length) }, worker);
    await Promise.race([Promise.all(workers), deadline]);
    return { unreadable: names.filter((_, i) => !answers[i]) };
  } catch (err) {
    const reason = abort.signal.aborted ? (abort.signal.reason as Error).message : describeApiError(err);
    return { error: reason };
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}
