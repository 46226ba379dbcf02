/**
 * The patch builder: a pod template and the facts about its namespace in, the injected template or a
 * skip reason out. No I/O, no clock, no Kubernetes client. The webhook diffs the result against the pod
 * into a JSON Patch; `earpiece inject` writes the same difference into the manifest. A pod that already
 * has the sidecar for the same ToolSet and configuration hash comes back as a skip, so injecting twice
 * changes nothing, unless its sidecar image, image pull secrets or the chart's sidecar env vars are not the
 * ones asked for now (a new `--image`, a chart upgrade): those alone are updated. The image only while it is still the one earpiece
 * set (annotation earpiece.dev/injected-image): one another webhook rewrote since (a registry mirror, a
 * digest pin) is left as it is, so the API server's reinvocation does not undo it. One injected for another configuration has the
 * old injection taken out and is injected again, so its env vars match the configuration it mounts.
 */
import type { V1Container, V1EnvVar, V1PodSpec } from '@kubernetes/client-node';
import type { ToolSet } from '../toolset/schema.js';
import { selectToolSet, type ToolSetLookup } from './select.js';
import {
  ANNOTATION_INJECTED_BY,
  ANNOTATION_INJECTED_ENV,
  ANNOTATION_INJECTED_IMAGE,
  ANNOTATION_TOOLSET_HASH,
  APP_URL_ENV,
  CONFIG_VOLUME,
  configMapName,
  LABEL_INJECT,
  LABEL_INJECTED,
  LABEL_OPERATOR,
  LOG_LEVELS,
  METRICS_PORT,
  OVERRIDE_ANNOTATIONS,
  PROXY_PORT,
  type PullPolicy,
  resourcesProblem,
  SIDECAR_NAME,
  type SidecarConfig,
  type SidecarSpec,
  sidecarContainer,
  sidecarVolumes,
  TMP_VOLUME,
  UPSTREAM_ENV,
} from './sidecar.js';
import { chartEnvRecord, effectiveEnv, staleChartEnv } from './sidecar-env.js';
import { condition, INVALID_TOOLSET, READY } from './status.js';

export interface PodTemplate {
  metadata?: {
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    [key: string]: unknown;
  };
  spec?: V1PodSpec;
}

/**
 * Why a pod was left as it was. `warn`: the pod asked for the sidecar and did not get it, which the
 * webhook returns as an admission warning (and the operator as an Event); the others are quiet.
 */
export const SKIP_REASONS = {
  invalid_pod: { warn: true, summary: 'the pod spec has no containers' },
  not_opted_in: { warn: false, summary: `neither the pod nor its namespace has label ${LABEL_INJECT}=true` },
  opted_out: { warn: false, summary: `the pod has label ${LABEL_INJECT}=false` },
  already_injected: { warn: false, summary: `the pod already has the ${SIDECAR_NAME} container` },
  host_network: {
    warn: true,
    summary: "the pod uses the host network, where the proxy's loopback port is the node's",
  },
  toolset_not_found: { warn: true, summary: 'the ToolSet the pod names does not exist' },
  no_toolset: { warn: true, summary: 'no ToolSet in the namespace selects the pod' },
  several_toolsets: { warn: true, summary: 'several ToolSets select the pod' },
  // Quiet: that release's webhook sees the same pod and injects it.
  other_operator: {
    warn: false,
    summary: `the ToolSet is labelled ${LABEL_OPERATOR} for another release's operator, whose webhook injects the pod`,
  },
  toolset_not_ready: {
    warn: true,
    summary: 'the ToolSet has no ConfigMap: it has never been valid, or the operator has not written it yet',
  },
  no_upstream: {
    warn: true,
    summary: `the ToolSet names no spec.upstream.url and no container gives ${APP_URL_ENV} to hand over`,
  },
  conflict: { warn: true, summary: 'the pod already uses a port or volume name the sidecar needs' },
} as const satisfies Record<string, { warn: boolean; summary: string }>;

export type SkipReason = keyof typeof SKIP_REASONS;

export interface InjectInput {
  /** The pod's namespace, for messages (the lookup is already scoped to it). */
  namespace?: string | undefined;
  /** The namespace carries label earpiece.dev/inject=true. */
  namespaceOptedIn: boolean;
  toolsets: ToolSetLookup;
  sidecar: SidecarConfig;
  /**
   * The webhook's operator instance: a ToolSet labelled for another one is left to that release. Undefined
   * (`earpiece inject`) injects whatever the label says.
   */
  instance?: string | undefined;
  /**
   * The image was asked for explicitly (`earpiece inject --image`): it replaces the sidecar's image even
   * when that is not the one earpiece recorded. Otherwise only the recorded image is replaced.
   */
  replaceImage?: boolean | undefined;
}

export type InjectResult =
  | {
      ok: true;
      template: PodTemplate;
      toolset: string;
      warnings: string[];
      /** The injection that was taken out and done again: its ToolSet and hash. */
      replaced?: { toolset: string; hash: string | undefined };
      /** An injection already current but for these changes (new image, pull secrets added). */
      updated?: string[];
    }
  | { ok: false; reason: SkipReason; message: string; warn: boolean };

function skip(reason: SkipReason, message: string = SKIP_REASONS[reason].summary): InjectResult {
  return { ok: false, reason, message, warn: SKIP_REASONS[reason].warn };
}

/**
 * The controller's verdict on the ToolSet's spec as it is now: Ready=False with reason InvalidToolSet
 * (controller.ts). Without it (no status yet, a failed ConfigMap write, a status from before the last
 * edit) a missing ConfigMap only means the operator has not written it yet.
 */
function statusSaysInvalid(toolset: ToolSet): boolean {
  const ready = condition(toolset.status, READY);
  return (
    ready?.status === 'False' &&
    ready.reason === INVALID_TOOLSET &&
    ready.observedGeneration === toolset.metadata.generation
  );
}

/** The operator a ToolSet is labelled for, when `instance` is given and that operator is another one. */
export function otherOperator(
  toolset: ToolSet | undefined,
  instance: string | undefined,
): string | undefined {
  const owner = toolset?.metadata.labels?.[LABEL_OPERATOR];
  return instance !== undefined && owner !== undefined && owner !== instance ? owner : undefined;
}

export function hasSidecar(spec: V1PodSpec | undefined): boolean {
  return [...(spec?.containers ?? []), ...(spec?.initContainers ?? [])].some((c) => c?.name === SIDECAR_NAME);
}

export function buildInjection(given: PodTemplate, input: InjectInput): InjectResult {
  if (!given.spec || !Array.isArray(given.spec.containers) || given.spec.containers.length === 0)
    return skip('invalid_pod');
  const label = given.metadata?.labels?.[LABEL_INJECT];
  if (label === 'false') return skip('opted_out');
  if (label !== 'true' && !input.namespaceOptedIn) {
    return label === undefined
      ? skip('not_opted_in')
      : skip('not_opted_in', `label ${LABEL_INJECT} is "${label}"; only "true" opts the pod in`);
  }

  // An injected pod is looked at as it was before, and is left alone unless its configuration changed.
  let previous: ReturnType<typeof readInjection>;
  let template = given;
  let upstreamLost = false;
  if (hasSidecar(given.spec)) {
    previous = readInjection(given);
    // A container of that name that is not a whole injection: not ours to take out.
    if (!previous) return skip('already_injected');
    ({ template, upstreamLost } = stripInjection(given));
  }
  const spec = template.spec as V1PodSpec;
  const labels = template.metadata?.labels ?? {};
  const annotations = template.metadata?.annotations ?? {};
  if (spec.hostNetwork) return skip('host_network');

  const selection = selectToolSet({ labels, annotations }, input.namespace, input.toolsets);
  if (!selection.ok) return previous ? skip('already_injected') : skip(selection.reason, selection.message);
  const name = selection.toolset.metadata.name;
  const owner = otherOperator(selection.toolset, input.instance);
  if (owner !== undefined) {
    if (previous) return skip('already_injected');
    return skip(
      'other_operator',
      `ToolSet ${name} is reconciled by operator ${owner} (label ${LABEL_OPERATOR}), not ${input.instance}: that release's webhook injects the pod`,
    );
  }
  // The last valid configuration, which the sidecar mounts: env vars and hash come from it, not from the
  // ToolSet as it is now, which may have been edited into an invalid state since.
  const config = input.toolsets.config(name);
  if (!config) {
    if (previous) return skip('already_injected');
    const namespace = input.namespace ?? selection.toolset.metadata.namespace;
    const describeCommand = `kubectl describe toolset ${name}${namespace ? ` -n ${namespace}` : ''}`;
    return skip(
      'toolset_not_ready',
      statusSaysInvalid(selection.toolset)
        ? `ToolSet ${name} has never been valid, so ConfigMap ${configMapName(name)} does not exist; see ${describeCommand}`
        : `ConfigMap ${configMapName(name)} of ToolSet ${name} is not written yet (see ${describeCommand}); recreate the pod once the ToolSet is Ready`,
    );
  }
  const warnings: string[] = [];
  const settings = overrides(annotations, input.sidecar, warnings);
  if (previous?.toolset === name && previous.hash === config.hash) {
    const refreshed = refreshInjection(given, {
      image: settings.image,
      pullSecrets: input.sidecar.imagePullSecrets,
      chartEnv: input.sidecar.extraEnv,
      forceImage: input.replaceImage ?? false,
    });
    if (!refreshed) return skip('already_injected');
    return { ok: true, template: refreshed.template, toolset: name, warnings, updated: refreshed.changes };
  }
  if (upstreamLost && !config.upstreamNamed) {
    return skip(
      'no_upstream',
      `the pod was injected for a configuration that named spec.upstream.url, so its own ${APP_URL_ENV} is no longer known; set spec.upstream.url in ToolSet ${name}, or inject the original manifest`,
    );
  }

  const conflict = conflictWith(spec, settings.port, settings.metricsPort);
  if (conflict) return skip('conflict', conflict);

  const handover = upstreamFor(spec, name, config.upstreamNamed, warnings);
  if (!handover.ok) return skip('no_upstream', handover.message);

  const out = structuredClone(template) as PodTemplate & { spec: V1PodSpec };
  const proxyUrl = `http://127.0.0.1:${settings.port}`;
  for (const container of envFromOnly(out.spec))
    container.env = [...(container.env ?? []), { name: APP_URL_ENV, value: proxyUrl }];
  for (const container of out.spec.containers) {
    for (const env of container.env ?? []) {
      if (env.name !== APP_URL_ENV) continue;
      env.value = proxyUrl;
      delete env.valueFrom;
    }
  }
  const sidecar = sidecarContainer({
    ...settings,
    toolsetName: name,
    upstream: handover.env,
    secretEnv: config.secretEnv,
    extraEnv: input.sidecar.extraEnv,
  });
  if (settings.native) {
    out.spec.initContainers = [...(out.spec.initContainers ?? []), sidecar];
  } else {
    out.spec.containers.push(sidecar);
    if (out.spec.restartPolicy === 'Never' || out.spec.restartPolicy === 'OnFailure') {
      warnings.push(
        `the ${SIDECAR_NAME} sidecar is a plain container and keeps running, so this pod never completes; use native sidecars (Kubernetes 1.29+)`,
      );
    }
  }
  out.spec.volumes = [...(out.spec.volumes ?? []), ...sidecarVolumes(name)];
  mergePullSecrets(out.spec, input.sidecar.imagePullSecrets);
  out.metadata ??= {};
  out.metadata.labels = { ...out.metadata.labels, [LABEL_INJECTED]: 'true' };
  out.metadata.annotations = {
    ...out.metadata.annotations,
    [ANNOTATION_TOOLSET_HASH]: config.hash,
    [ANNOTATION_INJECTED_IMAGE]: settings.image,
    ...envRecord(input.sidecar.extraEnv),
    ...(input.instance === undefined ? {} : { [ANNOTATION_INJECTED_BY]: input.instance }),
  };
  return {
    ok: true,
    template: out,
    toolset: name,
    warnings,
    ...(previous ? { replaced: { toolset: previous.toolset, hash: previous.hash } } : {}),
  };
}

/**
 * Adds the sidecar's image pull secrets the pod does not list yet, after its own; returns those added.
 * Never removed again: the pod may have listed them itself.
 */
function mergePullSecrets(spec: V1PodSpec, names: readonly string[]): string[] {
  const have = new Set((spec.imagePullSecrets ?? []).map((s) => s?.name));
  const added = names.filter((n) => !have.has(n));
  if (added.length)
    spec.imagePullSecrets = [...(spec.imagePullSecrets ?? []), ...added.map((name) => ({ name }))];
  return added;
}

/**
 * A current injection given the sidecar image, pull secrets and chart env vars asked for now; undefined
 * when it has them. Only these change: everything else the configuration hash already vouches for. The
 * image is replaced only while it is the one earpiece recorded setting (or `forceImage`): a later
 * mutating webhook that rewrote it (registry mirror, digest pin) has the last word, and the API server's
 * reinvocation of this webhook is then no change at all. The chart's env vars likewise: set again as the
 * chart gives them now (after the others, as in a new injection) only when the chart changed them since the
 * pod's injection (annotation earpiece.dev/injected-env), not when another webhook rewrote one.
 */
function refreshInjection(
  given: PodTemplate,
  wanted: {
    image: string;
    pullSecrets: readonly string[];
    chartEnv: readonly V1EnvVar[];
    forceImage: boolean;
  },
): { template: PodTemplate; changes: string[] } | undefined {
  const { image, pullSecrets, chartEnv, forceImage: force } = wanted;
  const out = structuredClone(given) as PodTemplate & { spec: V1PodSpec };
  const changes: string[] = [];
  const sidecar = [...(out.spec.initContainers ?? []), ...out.spec.containers].find(
    (c) => c.name === SIDECAR_NAME,
  );
  const recorded = given.metadata?.annotations?.[ANNOTATION_INJECTED_IMAGE];
  const ours = force || (recorded !== undefined && sidecar?.image === recorded);
  if (sidecar && ours && sidecar.image !== image) {
    changes.push(`image ${sidecar.image ?? '(none)'} replaced by ${image}`);
    sidecar.image = image;
    out.metadata = {
      ...out.metadata,
      annotations: { ...out.metadata?.annotations, [ANNOTATION_INJECTED_IMAGE]: image },
    };
  }
  for (const name of mergePullSecrets(out.spec, pullSecrets)) changes.push(`image pull secret ${name} added`);
  const stale = sidecar
    ? staleChartEnv(given.metadata?.annotations?.[ANNOTATION_INJECTED_ENV], sidecar.env ?? [], chartEnv)
    : undefined;
  if (sidecar && stale !== undefined) {
    const chart = effectiveEnv(chartEnv);
    const replaced = new Set([...chart.map((e) => e.name), ...stale.ours]);
    sidecar.env = [...(sidecar.env ?? []).filter((e) => !replaced.has(e.name)), ...structuredClone(chart)];
    const { [ANNOTATION_INJECTED_ENV]: _old, ...annotations } = out.metadata?.annotations ?? {};
    out.metadata = { ...out.metadata, annotations: { ...annotations, ...envRecord(chartEnv) } };
    changes.push(`env ${stale.names.join(', ')} brought to the chart's injection.env as it is now`);
  }
  return changes.length ? { template: out, changes } : undefined;
}

/** The injected-env annotation; none while the chart gives no env vars (nothing to bring up to date). */
function envRecord(chartEnv: readonly V1EnvVar[]): Record<string, string> {
  return chartEnv.length > 0 ? { [ANNOTATION_INJECTED_ENV]: chartEnvRecord(chartEnv) } : {};
}

/**
 * The pod as it was before injection: the sidecar, its volumes, the label and the hash and image
 * annotations taken out, and the app containers' KYUTAI_LLM_URL given back the value the sidecar was handed.
 * `upstreamLost`: an app container points at the proxy but the sidecar had no EARPIECE_UPSTREAM_URL
 * (its configuration named the upstream), so the app's own value is gone.
 */
export function stripInjection(template: PodTemplate): { template: PodTemplate; upstreamLost: boolean } {
  const out = structuredClone(template) as PodTemplate & { spec: V1PodSpec };
  const spec = out.spec;
  const ours = (c: { name: string }) => c.name === SIDECAR_NAME;
  const sidecar = [...(spec.initContainers ?? []), ...spec.containers].find(ours);
  const sidecarEnv = sidecar?.env ?? [];
  const port = sidecarEnv.find((e) => e.name === 'EARPIECE_PORT')?.value ?? String(PROXY_PORT);
  const upstream = sidecarEnv.find((e) => e.name === UPSTREAM_ENV);
  let upstreamLost = false;

  spec.containers = spec.containers.filter((c) => !ours(c));
  for (const env of spec.containers.flatMap((c) => c.env ?? [])) {
    if (env.name !== APP_URL_ENV || env.valueFrom || env.value !== `http://127.0.0.1:${port}`) continue;
    if (!upstream) {
      upstreamLost = true;
    } else if (upstream.valueFrom) {
      delete env.value;
      env.valueFrom = structuredClone(upstream.valueFrom);
    } else {
      env.value = upstream.value;
    }
  }
  const initContainers = (spec.initContainers ?? []).filter((c) => !ours(c));
  if (initContainers.length) spec.initContainers = initContainers;
  else delete spec.initContainers;
  const volumes = (spec.volumes ?? []).filter((v) => v.name !== CONFIG_VOLUME && v.name !== TMP_VOLUME);
  if (volumes.length) spec.volumes = volumes;
  else delete spec.volumes;

  const meta = out.metadata;
  if (meta) {
    delete meta.labels?.[LABEL_INJECTED];
    delete meta.annotations?.[ANNOTATION_TOOLSET_HASH];
    delete meta.annotations?.[ANNOTATION_INJECTED_IMAGE];
    delete meta.annotations?.[ANNOTATION_INJECTED_ENV];
    delete meta.annotations?.[ANNOTATION_INJECTED_BY];
    if (meta.labels && Object.keys(meta.labels).length === 0) delete meta.labels;
    if (meta.annotations && Object.keys(meta.annotations).length === 0) delete meta.annotations;
  }
  return { template: out, upstreamLost };
}

type Settings = Pick<
  SidecarSpec,
  'image' | 'imagePullPolicy' | 'resources' | 'native' | 'port' | 'metricsPort' | 'logLevel'
>;

/** The operator's defaults with the pod's annotations applied; a bad annotation is a warning and the default. */
function overrides(annotations: Record<string, string>, config: SidecarConfig, warnings: string[]): Settings {
  const a = OVERRIDE_ANNOTATIONS;
  const ignored = (key: string, why: string) => warnings.push(`annotation ${key} ignored: ${why}`);
  const port = (key: string, fallback: number) => {
    const text = annotations[key];
    if (text === undefined) return fallback;
    const n = Number(text);
    if (/^\d+$/.test(text) && n >= 1 && n <= 65535) return n;
    ignored(key, `"${text}" is not a port number`);
    return fallback;
  };
  let proxyPort = port(a.port, PROXY_PORT);
  let metricsPort = port(a.metricsPort, METRICS_PORT);
  if (proxyPort === metricsPort) {
    ignored(`${a.port}/${a.metricsPort}`, `both are ${proxyPort}`);
    proxyPort = PROXY_PORT;
    metricsPort = METRICS_PORT;
  }

  let native = config.nativeSidecar;
  const nativeText = annotations[a.nativeSidecar];
  if (nativeText === 'true' || nativeText === 'false') native = nativeText === 'true';
  else if (nativeText !== undefined) ignored(a.nativeSidecar, `"${nativeText}" is not true or false`);

  let logLevel = config.logLevel;
  const level = annotations[a.logLevel];
  if (level !== undefined) {
    if ((LOG_LEVELS as readonly string[]).includes(level)) logLevel = level;
    else ignored(a.logLevel, `"${level}" is not one of ${LOG_LEVELS.join(', ')}`);
  }

  let resources = structuredClone(config.resources);
  const wanted = structuredClone(config.resources);
  const keys: [string, 'requests' | 'limits', 'cpu' | 'memory'][] = [
    [a.cpuRequest, 'requests', 'cpu'],
    [a.cpuLimit, 'limits', 'cpu'],
    [a.memoryRequest, 'requests', 'memory'],
    [a.memoryLimit, 'limits', 'memory'],
  ];
  const given = keys.filter(([key]) => annotations[key] !== undefined);
  for (const [key, group, resource] of given)
    wanted[group] = { ...wanted[group], [resource]: annotations[key] as string };
  if (given.length) {
    const problem = resourcesProblem(wanted);
    if (problem) ignored(given.map(([key]) => key).join(', '), `resources ${problem}`);
    else resources = wanted;
  }

  return {
    image: annotations[a.image] || config.image,
    imagePullPolicy: config.imagePullPolicy as PullPolicy,
    resources,
    native,
    port: proxyPort,
    metricsPort,
    logLevel,
  };
}

/** A port or volume name the sidecar needs that the pod already uses, or undefined. */
function conflictWith(spec: V1PodSpec, port: number, metricsPort: number): string | undefined {
  for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
    for (const p of c.ports ?? []) {
      if (p.containerPort === port || p.containerPort === metricsPort) {
        const which = p.containerPort === port ? OVERRIDE_ANNOTATIONS.port : OVERRIDE_ANNOTATIONS.metricsPort;
        return `container ${c.name} already uses port ${p.containerPort}; choose another with annotation ${which}`;
      }
    }
  }
  for (const v of spec.volumes ?? [])
    if (v.name === CONFIG_VOLUME || v.name === TMP_VOLUME)
      return `the pod already has a volume named ${v.name}`;
  return undefined;
}

type Handover = { ok: true; env: V1EnvVar | undefined } | { ok: false; message: string };

/**
 * App containers that may get KYUTAI_LLM_URL only through envFrom: injection gives them an explicit
 * entry pointing at the proxy (an env entry wins over envFrom), since the value they would read is not
 * known here.
 */
function envFromOnly(spec: V1PodSpec): V1Container[] {
  return spec.containers.filter(
    (c) => (c.envFrom?.length ?? 0) > 0 && !(c.env ?? []).some((e) => e.name === APP_URL_ENV),
  );
}

/**
 * What the sidecar gets as EARPIECE_UPSTREAM_URL: nothing when the ToolSet names its upstream, else the
 * app's own KYUTAI_LLM_URL (the last entry wins, as in Kubernetes). A reference (ConfigMap, Secret,
 * field) is handed over as the same reference, since its value is not known here. A value that may come
 * from envFrom cannot be handed over: the ConfigMap or Secret key it would come from, if any, is not
 * known, and a sidecar without an upstream would never start and hold the app back.
 */
function upstreamFor(
  spec: V1PodSpec,
  toolsetName: string,
  upstreamNamed: boolean,
  warnings: string[],
): Handover {
  const found: { container: V1Container; env: V1EnvVar }[] = [];
  for (const container of spec.containers) {
    const envs = (container.env ?? []).filter((e) => e.name === APP_URL_ENV);
    const last = envs.at(-1);
    if (last) found.push({ container, env: last });
  }
  const viaEnvFrom = envFromOnly(spec).map((c) => c.name);
  if (found.length === 0) {
    if (!upstreamNamed) {
      return {
        ok: false,
        message: viaEnvFrom.length
          ? `ToolSet ${toolsetName} names no spec.upstream.url, and container ${viaEnvFrom.join(', ')} can only get ${APP_URL_ENV} through envFrom, whose value cannot be known here to hand over to the proxy; set spec.upstream.url in the ToolSet, or ${APP_URL_ENV} in the container's env`
          : `ToolSet ${toolsetName} names no spec.upstream.url and no container sets ${APP_URL_ENV} in env, so the proxy would have no upstream`,
      };
    }
    if (viaEnvFrom.length === 0) {
      warnings.push(
        `no container sets ${APP_URL_ENV} in env, so nothing in the pod uses the proxy; set it to http://127.0.0.1:${PROXY_PORT}`,
      );
    }
    return { ok: true, env: undefined };
  }
  if (upstreamNamed) return { ok: true, env: undefined };

  const [first] = found as [(typeof found)[number], ...typeof found];
  const differs = found.some((f) => JSON.stringify(f.env) !== JSON.stringify(first.env));
  if (differs) {
    warnings.push(
      `containers ${found.map((f) => f.container.name).join(', ')} set different ${APP_URL_ENV} values; the proxy forwards to the one of ${first.container.name}`,
    );
  }
  if (viaEnvFrom.length) {
    warnings.push(
      `container ${viaEnvFrom.join(', ')} takes its environment from envFrom; its ${APP_URL_ENV} now points at the proxy, which forwards to the one of ${first.container.name}`,
    );
  }
  const { value, valueFrom } = first.env;
  if (valueFrom) {
    const kind = Object.keys(valueFrom).find((k) =>
      ['configMapKeyRef', 'secretKeyRef', 'fieldRef'].includes(k),
    );
    if (!kind) {
      return {
        ok: false,
        message: `${APP_URL_ENV} of container ${first.container.name} comes from a source the sidecar cannot share; set spec.upstream.url in the ToolSet`,
      };
    }
    warnings.push(
      `${APP_URL_ENV} of container ${first.container.name} comes from a ${kind}, so its value is not known here; the sidecar reads the same ${kind} as EARPIECE_UPSTREAM_URL (or set spec.upstream.url in the ToolSet)`,
    );
    return { ok: true, env: { name: UPSTREAM_ENV, valueFrom: structuredClone(valueFrom) } };
  }
  if (!value) {
    return {
      ok: false,
      message: `${APP_URL_ENV} of container ${first.container.name} is empty; set it, or spec.upstream.url in the ToolSet`,
    };
  }
  if (value.includes('$(')) {
    warnings.push(
      `${APP_URL_ENV} of container ${first.container.name} refers to other variables ($(...)), which the sidecar does not have; set spec.upstream.url in the ToolSet`,
    );
  }
  return { ok: true, env: { name: UPSTREAM_ENV, value } };
}

/**
 * What an injected pod carries: its ToolSet, the hash it was injected with, its secret env vars, whether
 * the sidecar was handed the app's KYUTAI_LLM_URL as EARPIECE_UPSTREAM_URL (it was injected for a
 * configuration that named no spec.upstream.url), and the sidecar's env.
 */
export function readInjection(template: PodTemplate):
  | {
      toolset: string;
      hash: string | undefined;
      secretEnv: string[];
      upstreamHandedOver: boolean;
      /** The sidecar's whole env, as the pod has it. */
      sidecarEnv: V1EnvVar[];
      /** The chart env earpiece gave it (annotation earpiece.dev/injected-env), when recorded. */
      chartEnvRecord: string | undefined;
      /**
       * The chart's image earpiece gave the sidecar, while the sidecar still runs it: undefined when not
       * recorded, set by the pod's own earpiece.dev/proxy-image, or rewritten since by another webhook.
       */
      chartImage: string | undefined;
      /**
       * A container of the app sets KYUTAI_LLM_URL in its env, which the webhook pointed at the proxy:
       * without one, nothing in the pod talks to the sidecar (read from the spec, whatever was recorded).
       */
      appUsesProxy: boolean;
      /** The instance of the operator whose webhook injected it (annotation earpiece.dev/injected-by), when recorded. */
      injectedBy: string | undefined;
    }
  | undefined {
  const spec = template.spec;
  const sidecar = [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])].find(
    (c) => c.name === SIDECAR_NAME,
  );
  const volume = spec?.volumes?.find((v) => v.name === CONFIG_VOLUME)?.configMap?.name;
  if (!sidecar || !volume) return undefined;
  const annotations = template.metadata?.annotations;
  const image = annotations?.[ANNOTATION_INJECTED_IMAGE];
  return {
    toolset: volume.slice(configMapName('').length),
    hash: template.metadata?.annotations?.[ANNOTATION_TOOLSET_HASH],
    secretEnv: (sidecar.env ?? []).filter((e) => e.valueFrom?.secretKeyRef).map((e) => e.name),
    upstreamHandedOver: (sidecar.env ?? []).some((e) => e.name === UPSTREAM_ENV),
    sidecarEnv: sidecar.env ?? [],
    chartEnvRecord: template.metadata?.annotations?.[ANNOTATION_INJECTED_ENV],
    chartImage:
      image !== undefined &&
      image === sidecar.image &&
      annotations?.[OVERRIDE_ANNOTATIONS.image] === undefined
        ? image
        : undefined,
    appUsesProxy: (spec?.containers ?? []).some(
      (c) => c.name !== SIDECAR_NAME && (c.env ?? []).some((e) => e.name === APP_URL_ENV),
    ),
    injectedBy: annotations?.[ANNOTATION_INJECTED_BY],
  };
}
