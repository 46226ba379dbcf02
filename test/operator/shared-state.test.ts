/** A ToolSet's Redis URL from a Secret reaches the sidecar as an env var, never in its ConfigMap. */
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { injectionConfig, renderConfigMap } from '../../src/operator/configmap.js';
import { validateToolSet } from '../../src/toolset/index.js';
import { secretEnvName } from '../../src/toolset/values.js';

describe('spec.sharedState.redis.url from a Secret', () => {
  it('becomes a sidecar env var through the shared name function, and the ConfigMap names only the variable', () => {
    const result = validateToolSet({
      apiVersion: 'earpiece.dev/v1alpha1',
      kind: 'ToolSet',
      metadata: { name: 'assistant', namespace: 'voice' },
      spec: {
        sharedState: { redis: { url: { valueFrom: { secretKeyRef: { name: 'fleet-redis', key: 'url' } } } } },
        tools: [{ name: 'now', builtin: 'time', rateLimit: { requests: 60, per: '1m' } }],
      },
    });
    if (!result.ok) throw new Error('invalid');
    const name = secretEnvName('fleet-redis', 'url');
    expect(injectionConfig(result.toolset).secretEnv).toEqual([
      { name, secretKeyRef: { name: 'fleet-redis', key: 'url' } },
    ]);
    const configMap = renderConfigMap(result.toolset);
    const text = configMap.data?.['toolset.yaml'] as string;
    expect(text).not.toContain('secretKeyRef');
    expect(parse(text).spec.sharedState).toEqual({ redis: { url: { valueFrom: { env: name } } } });
    expect(parse(text).spec.tools[0].rateLimit).toEqual({ requests: 60, per: '1m' });
  });
});
