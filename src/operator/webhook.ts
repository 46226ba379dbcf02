/**
 * The admission webhooks, over one HTTPS server: `POST /validate` checks ToolSets, and who may name
 * their Secrets (toolset-admission.ts),
 * and the mutating webhook is a thin shell around the patch builder. `POST /mutate` takes an
 * AdmissionReview v1, picks the ToolSet through lookups the caller backs with its informer caches,
 * builds the injected pod, diffs it into a JSON Patch and answers. It never refuses a pod: anything
 * it cannot handle is allowed unchanged with a warning, and only a body that is not an AdmissionReview
 * at all gets a 400 (the API server never sends one; the webhook's failurePolicy covers that case).
 * The serving certificate sits in a CertificateHolder, so a rotated certificate is served to new
 * connections without a restart.
 */
import type { V1OwnerReference } from '@kubernetes/client-node';
import fastJsonPatch from 'fast-json-patch';
import Fastify, { type FastifyInstance, LogController } from 'fastify';
import { BodyBudget, BodyBudgetExceeded } from '../http/body-budget.js';
import {
  BODY_SHAPE_REFUSED,
  boundedJsonParser,
  boundJsonBodies,
  type JsonShape,
} from '../http/json-shape.js';
import type { Logger } from '../telemetry/log.js';
import type { ToolSet } from '../toolset/schema.js';
import type { KeyPairPem } from './certs.js';
import type { InjectionConfig } from './configmap.js';
import { buildInjection, type PodTemplate, type SkipReason } from './patch.js';
import type { SidecarConfig } from './sidecar.js';
import { admitToolSet, type SecretAccessCheck, type ToolSetAdmission } from './toolset-admission.js';

const { compare } = fastJsonPatch;

/** The cluster facts the webhook needs, synchronous (informer caches). */
export interface WebhookLookups {
  toolsetByName(namespace: string, name: string): ToolSet | undefined;
  toolsetsInNamespace(namespace: string): readonly ToolSet[];
  /** The ToolSet's last valid configuration, from its ConfigMap; undefined until the operator has written one. */
  config(namespace: string, toolsetName: string): InjectionConfig | undefined;
  /** The namespace carries label earpiece.dev/inject=true. */
  namespaceOptedIn?(namespace: string): boolean;
}

/** One admission decision, for the metric earpiece_injections_total{outcome} and Events. */
export interface InjectionOutcome {
  /** `injected`, a skip reason, or `error` when the request could not be handled. */
  outcome: 'injected' | SkipReason | 'error';
  namespace: string;
  /** The pod's name, or its generateName when it has none yet. */
  pod: string;
  /** The pod's controller (a ReplicaSet, Job …), where Events about the workload belong. */
  owner: V1OwnerReference | undefined;
  toolset: string | undefined;
  message: string;
  warnings: string[];
  /** The pod asked for the sidecar and did not get it: worth a Warning Event. */
  warn: boolean;
  /** A dry run: nothing is created, so no Event should be written. */
  dryRun: boolean;
}

export class CertificateHolder {
  #current: KeyPairPem;
  #listeners = new Set<(pair: KeyPairPem) => void>();

  constructor(initial: KeyPairPem) {
    this.#current = initial;
  }

  get current(): KeyPairPem {
    return this.#current;
  }

  set(pair: KeyPairPem): void {
    this.#current = pair;
    for (const listener of this.#listeners) listener(pair);
  }

  onChange(listener: (pair: KeyPairPem) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

export interface WebhookServerOptions {
  port?: number;
  host?: string;
  certificate: CertificateHolder;
  lookups: WebhookLookups;
  sidecar: SidecarConfig;
  /** This release's operator instance: pods whose ToolSet is labelled for another are left to it. */
  instance?: string | undefined;
  logger: Logger;
  onInjection?: (outcome: InjectionOutcome) => void;
  /** How long each review took (earpiece_webhook_duration_seconds). */
  onReviewed?: (operation: 'mutate' | 'validate', seconds: number) => void;
  /** Each ToolSet the validating webhook (`POST /validate`) decided on. */
  onToolSetAdmission?: (decision: ToolSetAdmission) => void;
  /** The namespaces whose ToolSets this release reconciles (empty: all): others are admitted with a warning. */
  watchNamespaces?: readonly string[] | undefined;
  /** Asks whether the author of a ToolSet may read the Secrets it names; absent, nobody is asked. */
  secretAccess?: SecretAccessCheck | undefined;
  /** Bytes; a pod is at most about 1.5 MB in etcd, and the review wraps it once for CREATE. */
  bodyLimit?: number;
  /**
   * Bytes all request bodies together may hold (see src/http/body-budget.ts); past it a request gets 503,
   * which the API server treats per the webhook's failurePolicy. Any pod can reach the port.
   */
  maxBodyBytesInFlight?: number;
  /**
   * Longest wait for a whole request, headers and body, in ms (fastify's default 0 waits forever, so a
   * trickled body pins memory and a connection while admission starves).
   */
  requestTimeoutMs?: number;
}

/** The API server gives up on a webhook after its timeoutSeconds: 10 s by default, 30 s at most. */
const DEFAULT_REQUEST_TIMEOUT_MS = 10_000;
const DEFAULT_BODY_LIMIT = 6 * 1024 * 1024;
/**
 * Four of the largest reviews: their parsed copies must still fit in the operator's 256 Mi. The operator's
 * default too (EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT, chart value webhook.maxBodyBytesInFlight).
 */
export const DEFAULT_BODY_BYTES_IN_FLIGHT = 24 * 1024 * 1024;

/**
 * What an AdmissionReview's JSON may hold: a pod or a ToolSet nests some tens of levels, and the largest
 * the API server stores (1.5 MB) holds some tens of thousands of objects.
 */
const REVIEW_JSON_BOUNDS: JsonShape = { depth: 128, structures: 250_000 };

export interface WebhookServer {
  port: number;
  /** Bytes the request bodies in flight hold now (earpiece_webhook_body_bytes_in_flight). */
  bodyBytesInFlight(): number;
  close(): Promise<void>;
}

interface AdmissionRequest {
  uid: string;
  kind?: { group?: string; version?: string; kind?: string };
  resource?: { resource?: string };
  subResource?: string;
  namespace?: string;
  operation?: string;
  object?: unknown;
  dryRun?: boolean;
}

interface AdmissionResponse {
  uid: string;
  allowed: true;
  patchType?: 'JSONPatch';
  patch?: string;
  warnings?: string[];
}

const WARNING_PREFIX = 'earpiece: ';
/** The API server may cut a warning after 256 characters; cutting it here keeps the end readable. */
const MAX_WARNING = 256;

function warning(text: string): string {
  const full = `${WARNING_PREFIX}${text}`;
  return full.length <= MAX_WARNING ? full : `${full.slice(0, MAX_WARNING - 1)}…`;
}

function isReview(body: unknown): body is { apiVersion: string; kind: string; request: AdmissionRequest } {
  if (!body || typeof body !== 'object') return false;
  const b = body as Record<string, unknown>;
  const request = b.request as Record<string, unknown> | undefined;
  return (
    b.kind === 'AdmissionReview' &&
    b.apiVersion === 'admission.k8s.io/v1' &&
    typeof request === 'object' &&
    request !== null &&
    typeof request.uid === 'string'
  );
}

type Pod = {
  metadata?: PodTemplate['metadata'] & { name?: string; generateName?: string };
  spec?: PodTemplate['spec'];
};

/** The decision for one review, without HTTP. */
function review(
  request: AdmissionRequest,
  deps: Pick<WebhookServerOptions, 'lookups' | 'sidecar' | 'instance' | 'logger' | 'onInjection'>,
): AdmissionResponse {
  const allow = (extra: Partial<AdmissionResponse> = {}): AdmissionResponse => ({
    uid: request.uid,
    allowed: true,
    ...extra,
  });
  const isPodCreate =
    request.kind?.kind === 'Pod' && request.resource?.resource === 'pods' && !request.subResource;
  if (!isPodCreate) {
    return allow({ warnings: [warning("only pods are injected; check the webhook's rules")] });
  }
  if (request.operation !== 'CREATE') return allow();
  const pod = request.object as Pod | undefined;
  const namespace =
    request.namespace ?? (pod?.metadata as { namespace?: string } | undefined)?.namespace ?? 'default';
  // Read before the builder's try: a malformed owner list must not turn into a 500.
  const owners = pod?.metadata?.ownerReferences;
  const base = {
    namespace,
    pod: String(pod?.metadata?.name ?? pod?.metadata?.generateName ?? ''),
    owner: Array.isArray(owners)
      ? ((owners as (V1OwnerReference | null)[]).find((o) => o?.controller === true) ?? undefined)
      : undefined,
    dryRun: request.dryRun === true,
  };
  const report = (outcome: InjectionOutcome) => {
    try {
      deps.onInjection?.(outcome);
    } catch (err) {
      deps.logger.error({ err }, 'Injection callback failed');
    }
  };

  if (!pod || typeof pod !== 'object' || Array.isArray(pod)) {
    const message = 'the review has no pod object';
    report({ ...base, outcome: 'error', toolset: undefined, message, warnings: [], warn: true });
    return allow({ warnings: [warning(`${message}; the pod is left as it is`)] });
  }
  const { lookups } = deps;
  try {
    const result = buildInjection(
      { metadata: pod.metadata, spec: pod.spec },
      {
        namespace,
        namespaceOptedIn: lookups.namespaceOptedIn?.(namespace) ?? false,
        toolsets: {
          byName: (name) => lookups.toolsetByName(namespace, name),
          all: () => lookups.toolsetsInNamespace(namespace),
          config: (name) => lookups.config(namespace, name),
        },
        sidecar: deps.sidecar,
        instance: deps.instance,
      },
    );
    if (!result.ok) {
      report({
        ...base,
        outcome: result.reason,
        toolset: undefined,
        message: result.message,
        warnings: [],
        warn: result.warn,
      });
      return result.warn ? allow({ warnings: [warning(`no sidecar: ${result.message}`)] }) : allow();
    }
    const patch = compare(pod, { ...pod, metadata: result.template.metadata, spec: result.template.spec });
    report({
      ...base,
      outcome: 'injected',
      toolset: result.toolset,
      message: result.updated
        ? `updated the earpiece-proxy sidecar the pod came with (ToolSet ${result.toolset}): ${result.updated.join('; ')}`
        : result.replaced
          ? `injected the earpiece-proxy sidecar again with ToolSet ${result.toolset}, replacing the one for ToolSet ${result.replaced.toolset} (hash ${result.replaced.hash ?? 'none'}) the pod came with`
          : `injected the earpiece-proxy sidecar with ToolSet ${result.toolset}`,
      warnings: result.warnings,
      warn: false,
    });
    return allow({
      patchType: 'JSONPatch',
      patch: Buffer.from(JSON.stringify(patch)).toString('base64'),
      ...(result.warnings.length ? { warnings: result.warnings.map(warning) } : {}),
    });
  } catch (err) {
    // A malformed pod the builder tripped over: the pod goes ahead without the sidecar.
    deps.logger.error({ err, namespace, pod: base.pod }, 'Injection failed');
    const message = `injection failed: ${(err as Error).message}`;
    report({ ...base, outcome: 'error', toolset: undefined, message, warnings: [], warn: true });
    return allow({ warnings: [warning(`${message}; the pod is left as it is`)] });
  }
}

export async function startWebhookServer(options: WebhookServerOptions): Promise<WebhookServer> {
  const { certificate, logger } = options;
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const bodyLimit = options.bodyLimit ?? DEFAULT_BODY_LIMIT;
  const app = Fastify({
    https: {
      cert: certificate.current.certPem,
      key: certificate.current.keyPem,
      minVersion: 'TLSv1.2',
      // Node's server options ride along with the TLS ones (fastify reads `http` only for plain HTTP).
      // Node checks the request timeout this often (30 s by default, three times the whole timeout).
      connectionsCheckingInterval: Math.min(1000, requestTimeoutMs),
      headersTimeout: requestTimeoutMs,
      // A client that never finishes the TLS handshake holds its connection too (120 s by default).
      handshakeTimeout: requestTimeoutMs,
    },
    requestTimeout: requestTimeoutMs,
    bodyLimit,
    loggerInstance: logger,
    logController: new LogController({ disableRequestLogging: true }),
  });
  const stopWatching = certificate.onChange((pair) => {
    app.server.setSecureContext({ cert: pair.certPem, key: pair.keyPem, minVersion: 'TLSv1.2' });
    logger.info('Loaded a new webhook serving certificate');
  });

  const budget = new BodyBudget(options.maxBodyBytesInFlight ?? DEFAULT_BODY_BYTES_IN_FLIGHT, bodyLimit);
  app.addHook('preParsing', budget.hook);
  // Any pod can reach the port: a body of nested brackets would otherwise cost the operator its memory.
  const fastify = app as unknown as FastifyInstance;
  boundJsonBodies(
    fastify,
    boundedJsonParser(fastify, REVIEW_JSON_BOUNDS, (message) => new Error(message)),
  );
  // Request logging is off (a line per review is noise), so a refused body would pass unseen. It is the
  // client's doing, not the operator's: one warn line each, never error (fastify's level for a 503).
  app.addHook('onError', (request, _reply, error, done) => {
    if (
      error instanceof BodyBudgetExceeded ||
      (error as { code?: string }).code === 'FST_ERR_CTP_BODY_TOO_LARGE' ||
      (error as { bodyShape?: string }).bodyShape === BODY_SHAPE_REFUSED
    ) {
      request.log.warn(
        { statusCode: error.statusCode, url: request.url, remoteAddress: request.ip },
        `Refused a request body: ${error.message}`,
      );
    }
    done();
  });
  app.get('/healthz', async () => 'ok');
  app.post('/mutate', async (request, reply) => {
    const body = request.body;
    if (!isReview(body)) {
      return reply
        .code(400)
        .send({ message: 'expected an admission.k8s.io/v1 AdmissionReview with request.uid' });
    }
    const started = performance.now();
    const response = review(body.request, options);
    options.onReviewed?.('mutate', (performance.now() - started) / 1000);
    return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response };
  });
  app.post('/validate', async (request, reply) => {
    const body = request.body;
    if (!isReview(body)) {
      return reply
        .code(400)
        .send({ message: 'expected an admission.k8s.io/v1 AdmissionReview with request.uid' });
    }
    const started = performance.now();
    const response = await admitToolSet(body.request, {
      secretAccess: options.secretAccess,
      onDecision: options.onToolSetAdmission,
      sidecarEnv: options.sidecar.extraEnv,
      served: { watchNamespaces: options.watchNamespaces ?? [], instance: options.instance },
      toolsetsInNamespace: options.lookups.toolsetsInNamespace,
    });
    options.onReviewed?.('validate', (performance.now() - started) / 1000);
    return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response };
  });

  try {
    await app.listen({ port: options.port ?? 9443, host: options.host ?? '0.0.0.0' });
  } catch (err) {
    stopWatching();
    throw err;
  }
  const address = app.server.address();
  return {
    port: typeof address === 'object' && address ? address.port : (options.port ?? 9443),
    bodyBytesInFlight: () => budget.used,
    close: async () => {
      stopWatching();
      await app.close();
    },
  };
}
