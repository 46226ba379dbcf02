/**
 * Which ToolSet a pod gets: the one its annotation `earpiece.dev/toolset` names, else the one ToolSet in
 * its namespace whose `spec.selector` matches its labels. Pure: the ToolSets come in through a lookup
 * (the informer cache in the operator, the files given to `earpiece inject`).
 */
import type { LabelSelectorSpec, ToolSet } from '../toolset/schema.js';
import { type InjectionConfig, injectionConfig } from './configmap.js';
import { ANNOTATION_TOOLSET } from './sidecar.js';

/** The ToolSets of one namespace. */
export interface ToolSetLookup {
  byName(name: string): ToolSet | undefined;
  all(): readonly ToolSet[];
  /**
   * The ToolSet's last valid configuration (in the operator, read from its ConfigMap), which the
   * sidecar will run: undefined for a ToolSet that has never been valid, or whose ConfigMap the operator
   * has not written yet.
   */
  config(name: string): InjectionConfig | undefined;
}

/**
 * A lookup over a list of ToolSets, e.g. those given to `earpiece inject`. A ToolSet without a namespace
 * serves any namespace; the configuration is the ToolSet's own (files were validated when read).
 */
export function toolsetLookup(
  toolsets: readonly ToolSet[],
  namespace?: string,
  config: (toolset: ToolSet) => InjectionConfig | undefined = injectionConfig,
): ToolSetLookup {
  const here = toolsets.filter(
    (t) =>
      namespace === undefined || t.metadata.namespace === undefined || t.metadata.namespace === namespace,
  );
  const byName = (name: string) => here.find((t) => t.metadata.name === name);
  return {
    byName,
    all: () => here,
    config: (name) => {
      const toolset = byName(name);
      return toolset && config(toolset);
    },
  };
}

export type Selection =
  | { ok: true; toolset: ToolSet; by: 'annotation' | 'selector' }
  | { ok: false; reason: 'toolset_not_found' | 'no_toolset' | 'several_toolsets'; message: string };

/** Kubernetes label-selector semantics. An absent selector selects nothing; an empty one, everything. */
export function selectorMatches(
  selector: LabelSelectorSpec | undefined,
  labels: Record<string, string>,
): boolean {
  if (!selector) return false;
  for (const [key, value] of Object.entries(selector.matchLabels ?? {}))
    if (labels[key] !== value) return false;
  for (const { key, operator, values = [] } of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, key);
    const ok =
      operator === 'In'
        ? has && values.includes(labels[key] as string)
        : operator === 'NotIn'
          ? !has || !values.includes(labels[key] as string)
          : operator === 'Exists'
            ? has
            : !has;
    if (!ok) return false;
  }
  return true;
}

/** What one label key must be for a pod to match a selector. */
interface KeyRule {
  present?: true;
  absent?: true;
  /** The values it may take (matchLabels, In), when limited. */
  oneOf?: Set<string>;
  notOneOf: Set<string>;
}

/**
 * Whether some pod's labels could match both selectors: then a pod both select would get neither
 * ToolSet (several_toolsets). Exact for Kubernetes label selectors, which constrain each key on its own.
 */
export function selectorsOverlap(
  a: LabelSelectorSpec | undefined,
  b: LabelSelectorSpec | undefined,
): boolean {
  if (!a || !b) return false;
  const rules = new Map<string, KeyRule>();
  const rule = (key: string) => {
    const known = rules.get(key);
    if (known) return known;
    const r: KeyRule = { notOneOf: new Set() };
    rules.set(key, r);
    return r;
  };
  const limit = (r: KeyRule, values: readonly string[]) => {
    r.present = true;
    r.oneOf = new Set(r.oneOf ? values.filter((v) => r.oneOf?.has(v)) : values);
  };
  for (const selector of [a, b]) {
    for (const [key, value] of Object.entries(selector.matchLabels ?? {})) limit(rule(key), [value]);
    for (const { key, operator, values = [] } of selector.matchExpressions ?? []) {
      const r = rule(key);
      if (operator === 'In') limit(r, values);
      else if (operator === 'NotIn') for (const v of values) r.notOneOf.add(v);
      else if (operator === 'Exists') r.present = true;
      else r.absent = true;
    }
  }
  for (const r of rules.values()) {
    if (r.present && r.absent) return false;
    if (r.oneOf && ![...r.oneOf].some((v) => !r.notOneOf.has(v))) return false;
  }
  return true;
}

/**
 * The selector as a list call's labelSelector (`app=x,tier in (a,b),!canary`); undefined for one that
 * selects nothing (absent) or everything (empty), which no list should be asked for.
 */
export function selectorQuery(selector: LabelSelectorSpec | undefined): string | undefined {
  if (!selector) return undefined;
  const terms = Object.entries(selector.matchLabels ?? {}).map(([key, value]) => `${key}=${value}`);
  for (const { key, operator, values = [] } of selector.matchExpressions ?? []) {
    if (operator === 'In' || operator === 'NotIn')
      terms.push(`${key} ${operator === 'In' ? 'in' : 'notin'} (${values.join(',')})`);
    else terms.push(operator === 'Exists' ? key : `!${key}`);
  }
  return terms.length > 0 ? terms.join(',') : undefined;
}

export function selectToolSet(
  meta: { labels?: Record<string, string>; annotations?: Record<string, string> },
  namespace: string | undefined,
  toolsets: ToolSetLookup,
): Selection {
  const where = namespace ? ` in namespace ${namespace}` : '';
  const named = meta.annotations?.[ANNOTATION_TOOLSET];
  if (named !== undefined) {
    const toolset = toolsets.byName(named);
    if (toolset) return { ok: true, toolset, by: 'annotation' };
    return {
      ok: false,
      reason: 'toolset_not_found',
      message: `annotation ${ANNOTATION_TOOLSET} names ToolSet "${named}", which does not exist${where}`,
    };
  }
  const labels = meta.labels ?? {};
  const matching = toolsets.all().filter((t) => selectorMatches(t.spec.selector, labels));
  const [first, ...others] = matching;
  if (first && others.length === 0) return { ok: true, toolset: first, by: 'selector' };
  if (!first) {
    return {
      ok: false,
      reason: 'no_toolset',
      message: `no ToolSet${where} selects this pod; add a spec.selector matching its labels, or annotation ${ANNOTATION_TOOLSET}`,
    };
  }
  const names = matching.map((t) => t.metadata.name).sort();
  return {
    ok: false,
    reason: 'several_toolsets',
    message: `ToolSets ${names.join(', ')} all select this pod; name one with annotation ${ANNOTATION_TOOLSET}`,
  };
}
