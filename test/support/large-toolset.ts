/** ToolSets whose configuration, as the operator renders it into the ConfigMap, is an exact size. */
import type { ToolSet } from '../../src/toolset/schema.js';
import { renderSidecarText } from '../../src/toolset/values.js';

const TOOLS = 128;

/**
 * A valid ToolSet in `namespace` whose rendered `toolset.yaml` is exactly `bytes` long (from about
 * 20 KB up): 128 tools whose parameter descriptions are padded (plain YAML scalars, one byte a
 * character, never folded).
 */
export function toolSetOfSize(bytes: number, name = 'big', namespace = 'voice'): ToolSet {
  const make = (pad: (i: number) => string): ToolSet =>
    ({
      apiVersion: 'earpiece.dev/v1alpha1',
      kind: 'ToolSet',
      metadata: { name, namespace },
      spec: {
        selector: { matchLabels: { app: 'unmute-backend' } },
        tools: Array.from({ length: TOOLS }, (_, i) => ({
          name: `lookup_${i}`,
          description: 'Looks a thing up.',
          parameters: { type: 'object', properties: { q: { type: 'string', description: pad(i) } } },
          http: { url: `https://example.com/${i}/{q}` },
        })),
      },
    }) as ToolSet;
  const base = Buffer.byteLength(renderSidecarText(make(() => 'x')).text);
  const extra = bytes - base;
  if (extra < 0) throw new Error(`a ToolSet of ${TOOLS} tools renders to at least ${base} bytes`);
  const each = Math.floor(extra / TOOLS);
  const toolset = make((i) => 'x'.repeat(1 + each + (i === 0 ? extra - each * TOOLS : 0)));
  const size = Buffer.byteLength(renderSidecarText(toolset).text);
  if (size !== bytes) throw new Error(`rendered ${size} bytes, not ${bytes}`);
  return toolset;
}
