/**
 * The operator's settings: environment variables (what the Helm chart sets) with flags of the same
 * meaning taking precedence. The names are a contract with the chart; docs/operator.md lists them.
 */
import { parseArgs } from 'node:util';
import { parseDuration } from '../toolset/duration.js';
import type { OperatorErrorCode } from './errors.js';
import {
  DEFAULT_SIDECAR_IMAGE,
  nativeSidecarAuto,
  type SidecarConfig,
  sidecarConfigFromEnv,
} from './sidecar.js';
import { DEFAULT_BODY_BYTES_IN_FLIGHT } from './webhook.js';

export type CertMode = 'operator' | 'cert-manager';

export interface OperatorConfig {
  /** The operator's own namespace (Lease, certificate Secret, Events of cluster objects). */
  namespace: string;
  /** This replica, the Lease holder identity. */
  podName: string;
  /** Namespaces whose ToolSets and pods are watched; empty: all. */
  watchNamespaces: string[];
  /** This operator's name on the ToolSets it reconciles (label earpiece.dev/operator); unique per release. */
  instance: string;
  /** Namespaces the webhook configuration never sends pods from: their pods are not reported uninjected. */
  excludeNamespaces: string[];
  leaderElection: boolean;
  leaseName: string;
  webhookPort: number;
  probePort: number;
  metricsPort: number;
  /** The MutatingWebhookConfiguration whose caBundle the operator keeps. */
  webhookConfigName: string;
  /** The Service in front of the webhook; the serving certificate names it. */
  webhookServiceName: string;
  certMode: CertMode;
  certSecretName: string;
  certDir: string;
  /**
   * After SIGTERM, how long /readyz answers 503 while the webhook keeps serving, before it closes: the
   * API server may still send reviews until it has seen the replica leave the Service's endpoints.
   */
  shutdownGraceMs: number;
  /** Defaults of every injected sidecar (sidecar.ts reads them; the three flags below override). */
  sidecar: SidecarConfig;
  /** Native sidecar or not was left to the API server's version (EARPIECE_NATIVE_SIDECAR unset or auto). */
  nativeSidecarAuto: boolean;
  /** The ToolSet webhook refuses a ToolSet naming a Secret its author may not read (SubjectAccessReview). */
  toolsetSecretAccessCheck: boolean;
  /** Bytes the webhook's request bodies may hold together; past it a review gets 503 (src/http/body-budget.ts). */
  webhookMaxBodyBytesInFlight: number;
}

export class ConfigError extends Error {
  readonly code: OperatorErrorCode = 'ERP_CONFIG';
}

/** Each setting: flag name, environment variable, default. */
const SETTINGS = {
  namespace: { env: 'EARPIECE_NAMESPACE', default: 'earpiece-system' },
  'pod-name': { env: 'EARPIECE_POD_NAME', default: '' },
  'watch-namespaces': { env: 'EARPIECE_WATCH_NAMESPACES', default: '' },
  'exclude-namespaces': {
    env: 'EARPIECE_EXCLUDE_NAMESPACES',
    default: 'kube-system,kube-public,kube-node-lease',
  },
  'leader-election': { env: 'EARPIECE_LEADER_ELECTION', default: 'true' },
  'lease-name': { env: 'EARPIECE_LEASE_NAME', default: 'earpiece-operator' },
  instance: { env: 'EARPIECE_INSTANCE', default: 'earpiece' },
  'webhook-port': { env: 'EARPIECE_WEBHOOK_PORT', default: '9443' },
  'probe-port': { env: 'EARPIECE_PROBE_PORT', default: '8081' },
  'metrics-port': { env: 'EARPIECE_METRICS_PORT', default: '8080' },
  'webhook-config-name': { env: 'EARPIECE_WEBHOOK_CONFIG_NAME', default: 'earpiece-webhook' },
  'webhook-service-name': { env: 'EARPIECE_WEBHOOK_SERVICE_NAME', default: 'earpiece-webhook' },
  'cert-mode': { env: 'EARPIECE_CERT_MODE', default: 'operator' },
  'cert-secret-name': { env: 'EARPIECE_CERT_SECRET_NAME', default: 'earpiece-webhook-tls' },
  'cert-dir': { env: 'EARPIECE_CERT_DIR', default: '/etc/earpiece/certs' },
  'shutdown-grace': { env: 'EARPIECE_SHUTDOWN_GRACE', default: '5s' },
  'sidecar-image': { env: 'EARPIECE_SIDECAR_IMAGE', default: DEFAULT_SIDECAR_IMAGE },
  'sidecar-resources': { env: 'EARPIECE_SIDECAR_RESOURCES', default: '' },
  'native-sidecar': { env: 'EARPIECE_NATIVE_SIDECAR', default: 'auto' },
  'toolset-secret-access-check': { env: 'EARPIECE_TOOLSET_SECRET_ACCESS_CHECK', default: 'true' },
  'webhook-max-body-bytes-in-flight': {
    env: 'EARPIECE_WEBHOOK_MAX_BODY_BYTES_IN_FLIGHT',
    default: String(DEFAULT_BODY_BYTES_IN_FLIGHT),
  },
} as const;

type Setting = keyof typeof SETTINGS;

const SIDECAR_FLAGS = ['sidecar-image', 'sidecar-resources', 'native-sidecar'] as const;

export const HELP = `Usage: earpiece operator [options]

Runs the ToolSet controller (leader only), the injection webhook and its certificates (every replica).
Each option can also be set by the environment variable shown; an option given wins.

${(Object.entries(SETTINGS) as [Setting, (typeof SETTINGS)[Setting]][])
  .map(([flag, s]) => `  --${flag.padEnd(34)} ${s.env}${s.default ? ` (default ${s.default})` : ''}`)
  .join('\n')}

Set by environment variable only (the chart sets them):
  EARPIECE_SIDECAR_IMAGE_PULL_POLICY  the sidecar's imagePullPolicy (default IfNotPresent)
  EARPIECE_SIDECAR_IMAGE_PULL_SECRETS JSON list of Secret references added to injected pods
  EARPIECE_SIDECAR_LOG_LEVEL          the sidecar's log level (default info)
  EARPIECE_SIDECAR_ENV                JSON list of env vars every sidecar gets (the chart's injection.env)
  EARPIECE_LOG_LEVEL                  the operator's own log level (default info)

In a pod the in-cluster service account is used; elsewhere the current kubeconfig context.`;

export function parseBoolean(text: string, name: string): boolean {
  if (/^(true|1|yes)$/i.test(text)) return true;
  if (/^(false|0|no)$/i.test(text)) return false;
  throw new ConfigError(`${name}: "${text}" is not true or false`);
}

function parsePort(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new ConfigError(`${name}: "${text}" is not a port`);
  return n;
}

/** Reads the settings from flags and environment; throws a ConfigError naming the bad one. */
export function loadConfig(
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
): { config: OperatorConfig; help: boolean } {
  const options = Object.fromEntries(
    Object.keys(SETTINGS).map((flag) => [flag, { type: 'string' as const }]),
  ) as Record<Setting, { type: 'string' }>;
  let values: Partial<Record<Setting | 'help', string | boolean>>;
  try {
    ({ values } = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } } }));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const get = (flag: Setting): { text: string; name: string } => {
    const s = SETTINGS[flag];
    const given = values[flag];
    if (typeof given === 'string') return { text: given.trim(), name: `--${flag}` };
    return { text: (env[s.env] ?? s.default).trim(), name: s.env };
  };
  const text = (flag: Setting) => get(flag).text;

  const certMode = get('cert-mode');
  if (certMode.text !== 'operator' && certMode.text !== 'cert-manager') {
    throw new ConfigError(`${certMode.name}: "${certMode.text}" is not operator or cert-manager`);
  }
  // sidecar.ts reads the sidecar settings from the environment; a flag stands in for its variable.
  const sidecarEnv: NodeJS.ProcessEnv = { ...env };
  for (const flag of SIDECAR_FLAGS) {
    const given = values[flag];
    if (typeof given === 'string') sidecarEnv[SETTINGS[flag].env] = given.trim();
  }
  let sidecar: SidecarConfig;
  try {
    sidecar = sidecarConfigFromEnv(sidecarEnv);
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  const namespace = text('namespace');
  const podName = text('pod-name') || env.HOSTNAME || `earpiece-operator-${process.pid}`;
  const port = (flag: Setting) => {
    const { text: t, name } = get(flag);
    return parsePort(t, name);
  };
  const duration = (flag: Setting) => {
    const { text: t, name } = get(flag);
    const ms = parseDuration(t);
    if (ms === undefined) throw new ConfigError(`${name}: "${t}" is not a duration (e.g. 5s, 0s)`);
    return ms;
  };
  const list = (flag: Setting) =>
    text(flag)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  const bool = (flag: Setting) => {
    const { text: t, name } = get(flag);
    return parseBoolean(t, name);
  };
  const bytes = (flag: Setting) => {
    const { text: t, name } = get(flag);
    const n = /^[0-9]+$/.test(t) ? Number(t) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < 1)
      throw new ConfigError(
        `${name}: "${t}" is not a positive whole number of bytes (e.g. 25165824 for 24 MiB)`,
      );
    return n;
  };
  return {
    help: values.help === true,
    config: {
      namespace,
      podName,
      watchNamespaces: list('watch-namespaces'),
      excludeNamespaces: list('exclude-namespaces'),
      leaderElection: bool('leader-election'),
      leaseName: text('lease-name'),
      instance: text('instance'),
      webhookPort: port('webhook-port'),
      probePort: port('probe-port'),
      metricsPort: port('metrics-port'),
      webhookConfigName: text('webhook-config-name'),
      webhookServiceName: text('webhook-service-name'),
      certMode: certMode.text,
      certSecretName: text('cert-secret-name'),
      certDir: text('cert-dir'),
      shutdownGraceMs: duration('shutdown-grace'),
      sidecar,
      nativeSidecarAuto: nativeSidecarAuto(sidecarEnv),
      toolsetSecretAccessCheck: bool('toolset-secret-access-check'),
      webhookMaxBodyBytesInFlight: bytes('webhook-max-body-bytes-in-flight'),
    },
  };
}
