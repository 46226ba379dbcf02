/**
 * The one definition of the earpiece-proxy sidecar: its container, volumes, the names and ports the
 * webhook, `earpiece inject`, the controller and the chart share, and the per-pod annotations that
 * override the operator's defaults. Nothing here reads the pod; patch.ts decides what goes where.
 */
import type { V1Container, V1EnvVar, V1ResourceRequirements, V1Volume } from '@kubernetes/client-node';
import type { SecretEnv } from '../toolset/values.js';
import type { OperatorErrorCode } from './errors.js';

export const SIDECAR_NAME = 'earpiece-proxy';
export const PROXY_PORT = 8095;
export const METRICS_PORT = 9464;
/** Named so PodMonitors can select it; at most 15 characters, as Kubernetes requires. */
export const METRICS_PORT_NAME = 'earpiece-metric';
export const CONFIG_DIR = '/etc/earpiece';
export const TOOLSET_PATH = `${CONFIG_DIR}/toolset.yaml`;
export const CONFIG_VOLUME = 'earpiece-toolset';
export const TMP_VOLUME = 'earpiece-tmp';
/** The distroless "nonroot" user. */
export const SIDECAR_UID = 65532;
export const APP_URL_ENV = 'KYUTAI_LLM_URL';
/** The sidecar's upstream when the ToolSet names none: the app's own KYUTAI_LLM_URL, handed over. */
export const UPSTREAM_ENV = 'EARPIECE_UPSTREAM_URL';

/** The startup probe's window (one probe a second): the app containers wait this long at most. */
export const SIDECAR_STARTUP_SECONDS = 120;

export const LABEL_INJECT = 'earpiece.dev/inject';
/** On a ToolSet: the instance of the operator that reconciles it (chart: `<namespace>-<release fullname>`). */
export const LABEL_OPERATOR = 'earpiece.dev/operator';
export const LABEL_INJECTED = 'earpiece.dev/injected';
export const ANNOTATION_TOOLSET = 'earpiece.dev/toolset';
export const ANNOTATION_TOOLSET_HASH = 'earpiece.dev/toolset-hash';
/**
 * On an injected pod: the sidecar image earpiece set. Only a sidecar still running that image has it
 * replaced by a newer one; an image another webhook or tool rewrote since (a registry mirror, a digest
 * pin) is left as it is.
 */
export const ANNOTATION_INJECTED_IMAGE = 'earpiece.dev/injected-image';
/**
 * On an injected pod: a hash of the chart's sidecar env vars (injection.env, the shared-state URL) earpiece
 * gave it. The pod is behind only when the chart's env has changed since; a value another webhook rewrote
 * after earpiece is left as it is.
 */
export const ANNOTATION_INJECTED_ENV = 'earpiece.dev/injected-env';
/**
 * On a pod the operator's webhook injected: that operator's instance. While the pod's ToolSet exists, its
 * operator label says which release reports the sidecar's problems; once it is gone, this does.
 */
export const ANNOTATION_INJECTED_BY = 'earpiece.dev/injected-by';
/** On the ConfigMap: the sidecar env vars its configuration needs (names and Secret keys, never values). */
export const ANNOTATION_SECRET_ENV = 'earpiece.dev/secret-env';

/** Per-pod overrides, read from the pod template's annotations. Documented in docs/operator-injection.md. */
export const OVERRIDE_ANNOTATIONS = {
  image: 'earpiece.dev/proxy-image',
  port: 'earpiece.dev/proxy-port',
  metricsPort: 'earpiece.dev/proxy-metrics-port',
  cpuRequest: 'earpiece.dev/proxy-cpu-request',
  cpuLimit: 'earpiece.dev/proxy-cpu-limit',
  memoryRequest: 'earpiece.dev/proxy-memory-request',
  memoryLimit: 'earpiece.dev/proxy-memory-limit',
  logLevel: 'earpiece.dev/proxy-log-level',
  nativeSidecar: 'earpiece.dev/native-sidecar',
} as const;

/** `auto`: native where the API server supports it (1.29+), decided by the operator at start. */
export const NATIVE_SIDECAR_VALUES = ['true', 'false', 'auto'];

/** True when EARPIECE_NATIVE_SIDECAR leaves the choice to the API server's version (unset or auto). */
export function nativeSidecarAuto(env: NodeJS.ProcessEnv): boolean {
  const value = env.EARPIECE_NATIVE_SIDECAR;
  return value === undefined || value === '' || value === 'auto';
}

export function configMapName(toolsetName: string): string {
  return `earpiece-toolset-${toolsetName}`;
}

export type PullPolicy = 'Always' | 'IfNotPresent' | 'Never';
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

/** The operator's defaults for every injected sidecar (chart values → env → sidecarConfigFromEnv). */
export interface SidecarConfig {
  image: string;
  imagePullPolicy: PullPolicy;
  resources: V1ResourceRequirements;
  /** An init container with restartPolicy Always (Kubernetes 1.29+), else a plain container. */
  nativeSidecar: boolean;
  /**
   * Secrets (in the pod's namespace) for pulling the sidecar image, merged into every injected pod's
   * imagePullSecrets: without them a private registry holds the sidecar, and so the app, in ImagePullBackOff.
   */
  imagePullSecrets: string[];
  logLevel: string;
  /** Added to the sidecar as they are, e.g. OTEL_EXPORTER_OTLP_ENDPOINT. */
  extraEnv: V1EnvVar[];
}

export const DEFAULT_SIDECAR_IMAGE = 'ghcr.io/earpiece-dev/earpiece:0.1.0';

/** Near the bench's idle RSS (about 90 MB) with room for streams; no CPU limit, which would add latency. */
export const DEFAULT_SIDECAR: SidecarConfig = {
  image: DEFAULT_SIDECAR_IMAGE,
  imagePullPolicy: 'IfNotPresent',
  resources: { requests: { cpu: '50m', memory: '128Mi' }, limits: { memory: '256Mi' } },
  nativeSidecar: true,
  imagePullSecrets: [],
  logLevel: 'info',
  extraEnv: [],
};

export class SidecarConfigError extends Error {
  readonly code: OperatorErrorCode = 'ERP_SIDECAR_CONFIG';
}

/**
 * The operator's sidecar defaults from its environment: EARPIECE_SIDECAR_IMAGE,
 * EARPIECE_SIDECAR_IMAGE_PULL_POLICY, EARPIECE_SIDECAR_RESOURCES (JSON, as in a pod spec: requests and limits, quantities as strings or
 * numbers),
 * EARPIECE_NATIVE_SIDECAR (true, false, or auto: true here, and the operator asks the API server at
 * start), EARPIECE_SIDECAR_IMAGE_PULL_SECRETS (JSON list of {"name": ...}, as in a pod spec),
 * EARPIECE_SIDECAR_LOG_LEVEL, EARPIECE_SIDECAR_ENV (JSON list of env vars). A bad value is an error naming the variable, so a misconfigured chart fails at start.
 */
export function sidecarConfigFromEnv(env: NodeJS.ProcessEnv): SidecarConfig {
  const config = structuredClone(DEFAULT_SIDECAR);
  const get = (name: string) => (env[name] === undefined || env[name] === '' ? undefined : env[name]);
  const fail = (name: string, why: string): never => {
    throw new SidecarConfigError(`${name}: ${why}`);
  };
  const image = get('EARPIECE_SIDECAR_IMAGE');
  if (image !== undefined) config.image = image;
  const pull = get('EARPIECE_SIDECAR_IMAGE_PULL_POLICY');
  if (pull !== undefined) {
    if (!['Always', 'IfNotPresent', 'Never'].includes(pull))
      fail('EARPIECE_SIDECAR_IMAGE_PULL_POLICY', `"${pull}" is not one of Always, IfNotPresent, Never`);
    config.imagePullPolicy = pull as PullPolicy;
  }
  const resources = get('EARPIECE_SIDECAR_RESOURCES');
  if (resources !== undefined) {
    const parsed = parseJson(resources) ?? fail('EARPIECE_SIDECAR_RESOURCES', 'is not JSON');
    const problem = resourcesProblem(parsed);
    if (problem) fail('EARPIECE_SIDECAR_RESOURCES', problem);
    config.resources = normalizeResources(parsed as V1ResourceRequirements);
  }
  const native = get('EARPIECE_NATIVE_SIDECAR');
  if (native !== undefined) {
    if (!NATIVE_SIDECAR_VALUES.includes(native))
      fail('EARPIECE_NATIVE_SIDECAR', `"${native}" is not one of ${NATIVE_SIDECAR_VALUES.join(', ')}`);
    config.nativeSidecar = native !== 'false';
  }
  const secrets = get('EARPIECE_SIDECAR_IMAGE_PULL_SECRETS');
  if (secrets !== undefined) {
    const parsed = parseJson(secrets);
    const names = Array.isArray(parsed)
      ? parsed.map((s) => (typeof s === 'string' ? s : (s as { name?: unknown } | null)?.name))
      : [];
    if (!Array.isArray(parsed) || !names.every((n) => typeof n === 'string' && n !== ''))
      fail('EARPIECE_SIDECAR_IMAGE_PULL_SECRETS', 'is not a JSON list of secret references ({"name": ...})');
    config.imagePullSecrets = [...new Set(names as string[])];
  }
  const level = get('EARPIECE_SIDECAR_LOG_LEVEL');
  if (level !== undefined) {
    if (!(LOG_LEVELS as readonly string[]).includes(level))
      fail('EARPIECE_SIDECAR_LOG_LEVEL', `"${level}" is not one of ${LOG_LEVELS.join(', ')}`);
    config.logLevel = level;
  }
  const extra = get('EARPIECE_SIDECAR_ENV');
  if (extra !== undefined) {
    const parsed = parseJson(extra);
    const ok =
      Array.isArray(parsed) &&
      parsed.every((e) => e && typeof e === 'object' && typeof (e as V1EnvVar).name === 'string');
    if (!ok) fail('EARPIECE_SIDECAR_ENV', 'is not a JSON list of env vars ({"name": ..., "value": ...})');
    config.extraEnv = parsed as V1EnvVar[];
  }
  return config;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Decimal suffixes as powers of ten, binary ones as powers of two. */
const DECIMAL: Record<string, number> = { '': 0, n: -9, u: -6, m: -3, k: 3, M: 6, G: 9, T: 12, P: 15, E: 18 };
const BINARY: Record<string, number> = { Ki: 10, Mi: 20, Gi: 30, Ti: 40, Pi: 50, Ei: 60 };

/**
 * Kubernetes' quantity syntax, without the minus sign a container's resources may not have: a number
 * (`1`, `1.5`, `.5`, `1.`), then a decimal exponent (`1e3`, `1E-2`), a decimal SI suffix (n, u, m, k, M,
 * G, T, P, E) or a binary one (Ki ... Ei). The chart's values.schema.json has the same pattern (a test
 * holds them together).
 */
const QUANTITY = /^\+?(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+)|(n|u|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei))?$/;

/**
 * A Kubernetes resource quantity (`250m`, `1.5`, `128Mi`, `1e3`, `500u`) as a number, or undefined when it
 * is none. A decimal one is read as one decimal number (`700m` as `700e-3`), so the nearest double stands
 * for it: `700m` and `0.7` are equal, as Kubernetes has them (700 * 0.001 is not 0.7), and the chart's
 * template (_helpers.tpl, earpiece.quantity) gets the same value from Go's strconv.
 */
export function parseQuantity(text: string): number | undefined {
  const m = QUANTITY.exec(text);
  if (!m) return undefined;
  const [, amount, exponent, unit = ''] = m;
  if (unit in BINARY) return Number(amount) * 2 ** (BINARY[unit] as number);
  return Number(`${amount}e${exponent ?? DECIMAL[unit]}`);
}

/**
 * A quantity as a pod spec takes it: JSON numbers (`"cpu": 1`, as Helm's toJson writes a number
 * value) are quantities too, and become strings. Undefined when it is none.
 */
function quantityText(q: unknown): string | undefined {
  if (typeof q === 'number') return Number.isFinite(q) && q >= 0 ? String(q) : undefined;
  return typeof q === 'string' && parseQuantity(q) !== undefined ? q : undefined;
}

/**
 * Resources as the operator's environment gives them (numbers allowed), with every quantity a string;
 * call after resourcesProblem found none.
 */
export function normalizeResources(resources: V1ResourceRequirements): V1ResourceRequirements {
  const out: V1ResourceRequirements = {};
  for (const group of ['requests', 'limits'] as const) {
    const g = resources[group] as Record<string, unknown> | undefined;
    if (g) out[group] = Object.fromEntries(Object.entries(g).map(([k, q]) => [k, quantityText(q) as string]));
  }
  return out;
}

/** What the API server would refuse in a container's resources, or undefined. */
export function resourcesProblem(resources: unknown): string | undefined {
  if (!resources || typeof resources !== 'object' || Array.isArray(resources)) return 'is not an object';
  const r = resources as Record<string, unknown>;
  for (const key of Object.keys(r))
    if (key !== 'requests' && key !== 'limits') return `has ${key}; only requests and limits are allowed`;
  for (const group of ['requests', 'limits'] as const) {
    const g = r[group];
    if (g === undefined) continue;
    if (!g || typeof g !== 'object' || Array.isArray(g)) return `${group} is not an object`;
    for (const [name, q] of Object.entries(g))
      if (quantityText(q) === undefined) return `${group}.${name}: ${JSON.stringify(q)} is not a quantity`;
  }
  const requests = (r.requests ?? {}) as Record<string, unknown>;
  const limits = (r.limits ?? {}) as Record<string, unknown>;
  const value = (q: unknown) => parseQuantity(quantityText(q) as string) as number;
  for (const [name, q] of Object.entries(requests)) {
    const limit = limits[name];
    if (limit !== undefined && value(q) > value(limit))
      return `requests.${name} ${q} is above limits.${name} ${limit}`;
  }
  return undefined;
}

/** What one sidecar gets: the operator's defaults with the pod's overrides applied (see patch.ts). */
export interface SidecarSpec {
  toolsetName: string;
  image: string;
  imagePullPolicy: PullPolicy;
  resources: V1ResourceRequirements;
  native: boolean;
  port: number;
  metricsPort: number;
  logLevel: string;
  /** EARPIECE_UPSTREAM_URL, when the ToolSet names no upstream: the app's own value or reference. */
  upstream: V1EnvVar | undefined;
  secretEnv: SecretEnv[];
  extraEnv: V1EnvVar[];
}

/**
 * The container. The chat port listens on loopback only (EARPIECE_HOST), so nothing else in the
 * cluster can run the pod's tools; probes use the metrics port. As a native sidecar the startup probe
 * holds the app containers back until the ToolSet is loaded, and the kubelet stops the proxy only
 * after the app, so a Job still completes.
 */
export function sidecarContainer(s: SidecarSpec): V1Container {
  const probe = (path: string, periodSeconds: number, failureThreshold: number) => ({
    httpGet: { path, port: s.metricsPort },
    periodSeconds,
    failureThreshold,
  });
  const env: V1EnvVar[] = [
    { name: 'EARPIECE_TOOLSET', value: TOOLSET_PATH },
    { name: 'EARPIECE_HOST', value: '127.0.0.1' },
    { name: 'EARPIECE_PORT', value: String(s.port) },
    { name: 'EARPIECE_METRICS_PORT', value: String(s.metricsPort) },
    { name: 'EARPIECE_LOG_LEVEL', value: s.logLevel },
    ...(s.upstream ? [s.upstream] : []),
    ...s.secretEnv.map((e) => ({ name: e.name, valueFrom: { secretKeyRef: { ...e.secretKeyRef } } })),
    ...structuredClone(s.extraEnv),
  ];
  return {
    name: SIDECAR_NAME,
    image: s.image,
    imagePullPolicy: s.imagePullPolicy,
    args: ['proxy'],
    ...(s.native ? { restartPolicy: 'Always' } : {}),
    env,
    ports: [{ name: METRICS_PORT_NAME, containerPort: s.metricsPort, protocol: 'TCP' }],
    startupProbe: probe('/readyz', 1, SIDECAR_STARTUP_SECONDS),
    livenessProbe: probe('/healthz', 10, 3),
    resources: structuredClone(s.resources),
    securityContext: {
      runAsNonRoot: true,
      runAsUser: SIDECAR_UID,
      runAsGroup: SIDECAR_UID,
      readOnlyRootFilesystem: true,
      allowPrivilegeEscalation: false,
      capabilities: { drop: ['ALL'] },
      seccompProfile: { type: 'RuntimeDefault' },
    },
    volumeMounts: [
      // A whole-directory mount (never subPath): the kubelet swaps the ConfigMap in place and the proxy reloads.
      { name: CONFIG_VOLUME, mountPath: CONFIG_DIR, readOnly: true },
      { name: TMP_VOLUME, mountPath: '/tmp' },
    ],
  };
}

/** The ConfigMap with the rendered ToolSet, and a small writable /tmp beside the read-only root. */
export function sidecarVolumes(toolsetName: string): V1Volume[] {
  return [
    { name: CONFIG_VOLUME, configMap: { name: configMapName(toolsetName) } },
    { name: TMP_VOLUME, emptyDir: { sizeLimit: '16Mi' } },
  ];
}
