import { describe, expect, it } from 'vitest';
import {
  selectorMatches,
  selectorQuery,
  selectorsOverlap,
  selectToolSet,
  toolsetLookup,
} from '../../src/operator/select.js';
import type { LabelSelectorSpec, ToolSet } from '../../src/toolset/index.js';
import { parseSelector } from '../support/fake-apiserver.js';

const toolset = (name: string, selector?: LabelSelectorSpec, namespace?: string): ToolSet => ({
  apiVersion: 'earpiece.dev/v1alpha1',
  kind: 'ToolSet',
  metadata: { name, ...(namespace ? { namespace } : {}) },
  spec: { ...(selector ? { selector } : {}), tools: [] },
});

describe('selectorMatches', () => {
  const labels = { app: 'unmute-backend', tier: 'edge' };
  it.each<[string, LabelSelectorSpec | undefined, boolean]>([
    ['no selector selects nothing', undefined, false],
    ['an empty selector selects everything', {}, true],
    ['matchLabels all equal', { matchLabels: { app: 'unmute-backend', tier: 'edge' } }, true],
    ['matchLabels one differs', { matchLabels: { app: 'unmute-backend', tier: 'core' } }, false],
    ['In', { matchExpressions: [{ key: 'tier', operator: 'In', values: ['edge', 'core'] }] }, true],
    [
      'In, value not listed',
      { matchExpressions: [{ key: 'tier', operator: 'In', values: ['core'] }] },
      false,
    ],
    ['In, label absent', { matchExpressions: [{ key: 'zone', operator: 'In', values: ['a'] }] }, false],
    [
      'NotIn, value listed',
      { matchExpressions: [{ key: 'tier', operator: 'NotIn', values: ['edge'] }] },
      false,
    ],
    ['NotIn, label absent', { matchExpressions: [{ key: 'zone', operator: 'NotIn', values: ['a'] }] }, true],
    ['Exists', { matchExpressions: [{ key: 'tier', operator: 'Exists' }] }, true],
    ['DoesNotExist', { matchExpressions: [{ key: 'tier', operator: 'DoesNotExist' }] }, false],
    [
      'labels and expressions together',
      {
        matchLabels: { app: 'unmute-backend' },
        matchExpressions: [{ key: 'zone', operator: 'DoesNotExist' }],
      },
      true,
    ],
  ])('%s', (_name, selector, expected) => {
    expect(selectorMatches(selector, labels)).toBe(expected);
  });
});

describe('selectorQuery', () => {
  it('writes a selector as a list call asks for it, and nothing for one that selects nothing or everything', () => {
    const selector: LabelSelectorSpec = {
      matchLabels: { app: 'unmute-backend' },
      matchExpressions: [
        { key: 'tier', operator: 'In', values: ['voice', 'chat'] },
        { key: 'canary', operator: 'DoesNotExist' },
        { key: 'region', operator: 'NotIn', values: ['eu'] },
        { key: 'team', operator: 'Exists' },
      ],
    };
    const query = selectorQuery(selector);
    expect(query).toBe('app=unmute-backend,tier in (voice,chat),!canary,region notin (eu),team');
    // As the API server reads it (the test API server's parser follows its grammar).
    expect(parseSelector(query)).toHaveLength(5);
    expect(selectorQuery(undefined)).toBeUndefined();
    expect(selectorQuery({})).toBeUndefined();
  });
});

describe('selectorsOverlap', () => {
  it('finds the pods two selectors share, and none where a key rules them apart', () => {
    const app = (value: string): LabelSelectorSpec => ({ matchLabels: { app: value } });
    expect(selectorsOverlap(app('unmute-backend'), app('unmute-backend'))).toBe(true);
    expect(selectorsOverlap(app('unmute-backend'), app('unmute-frontend'))).toBe(false);
    // Different keys: a pod may carry both.
    expect(selectorsOverlap(app('unmute-backend'), { matchLabels: { tier: 'voice' } })).toBe(true);
    expect(
      selectorsOverlap(app('unmute-backend'), {
        matchLabels: { app: 'unmute-backend' },
        matchExpressions: [{ key: 'canary', operator: 'Exists' }],
      }),
    ).toBe(true);
    expect(
      selectorsOverlap(
        { matchExpressions: [{ key: 'canary', operator: 'Exists' }] },
        { matchExpressions: [{ key: 'canary', operator: 'DoesNotExist' }] },
      ),
    ).toBe(false);
    // Empty selects every pod; absent, none.
    expect(selectorsOverlap({}, app('x'))).toBe(true);
    expect(selectorsOverlap(undefined, app('x'))).toBe(false);
  });

  it('agrees with trying every labelling, over random selectors', () => {
    // Label values come from VALUES; a pod may also carry a value no selector names.
    const KEYS = ['app', 'tier'];
    const VALUES = ['x', 'y', 'z'];
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      // The high bits: an LCG's low bits repeat in short cycles.
      return Math.floor(seed / 2 ** 16) % n;
    };
    const someValues = () => VALUES.filter(() => random(2) === 0);
    const randomSelector = (): LabelSelectorSpec => {
      const selector: LabelSelectorSpec = { matchLabels: {}, matchExpressions: [] };
      for (const key of KEYS) {
        const kind = random(6);
        if (kind === 1) (selector.matchLabels as Record<string, string>)[key] = VALUES[random(3)] as string;
        if (kind === 2) selector.matchExpressions?.push({ key, operator: 'In', values: someValues() });
        if (kind === 3) selector.matchExpressions?.push({ key, operator: 'NotIn', values: someValues() });
        if (kind === 4) selector.matchExpressions?.push({ key, operator: 'Exists' });
        if (kind === 5) selector.matchExpressions?.push({ key, operator: 'DoesNotExist' });
      }
      return selector;
    };
    const labellings: Record<string, string>[] = [{}];
    for (const key of KEYS)
      for (const labels of [...labellings])
        for (const value of [...VALUES, 'fresh']) labellings.push({ ...labels, [key]: value });
    let overlapping = 0;
    for (let i = 0; i < 2000; i++) {
      const [a, b] = [randomSelector(), randomSelector()];
      const shared = labellings.some((l) => selectorMatches(a, l) && selectorMatches(b, l));
      expect(selectorsOverlap(a, b), JSON.stringify([a, b])).toBe(shared);
      if (shared) overlapping++;
    }
    // Both answers are well represented.
    expect(overlapping).toBeGreaterThan(200);
    expect(overlapping).toBeLessThan(1800);
  });
});

describe('selectToolSet', () => {
  const a = toolset('a', { matchLabels: { app: 'unmute-backend' } }, 'voice');
  const b = toolset('b', { matchLabels: { team: 'research' } }, 'voice');
  const c = toolset('c', { matchLabels: { team: 'research' } });
  const elsewhere = toolset('d', { matchLabels: { app: 'unmute-backend' } }, 'lab');
  const lookup = toolsetLookup([a, b, c, elsewhere], 'voice');

  it('takes the ToolSet the annotation names, even when its selector does not match', () => {
    const s = selectToolSet(
      { labels: { app: 'x' }, annotations: { 'earpiece.dev/toolset': 'b' } },
      'voice',
      lookup,
    );
    expect(s).toMatchObject({ ok: true, by: 'annotation', toolset: { metadata: { name: 'b' } } });
  });

  it('finds the one ToolSet whose selector matches, in the pod namespace only', () => {
    const s = selectToolSet({ labels: { app: 'unmute-backend' } }, 'voice', lookup);
    expect(s).toMatchObject({ ok: true, by: 'selector', toolset: { metadata: { name: 'a' } } });
    expect(lookup.all().map((t) => t.metadata.name)).toEqual(['a', 'b', 'c']);
  });

  it('names every candidate when several match', () => {
    expect(selectToolSet({ labels: { team: 'research' } }, 'voice', lookup)).toEqual({
      ok: false,
      reason: 'several_toolsets',
      message: 'ToolSets b, c all select this pod; name one with annotation earpiece.dev/toolset',
    });
  });

  it('says so when nothing matches or the named one does not exist', () => {
    expect(selectToolSet({ labels: {} }, 'voice', lookup)).toMatchObject({ ok: false, reason: 'no_toolset' });
    expect(selectToolSet({ annotations: { 'earpiece.dev/toolset': 'd' } }, 'voice', lookup)).toMatchObject({
      ok: false,
      reason: 'toolset_not_found',
      message: 'annotation earpiece.dev/toolset names ToolSet "d", which does not exist in namespace voice',
    });
  });

  it('without a namespace (manifests applied with kubectl -n), every ToolSet is a candidate', () => {
    expect(toolsetLookup([a, b, c, elsewhere]).all()).toHaveLength(4);
  });
});
