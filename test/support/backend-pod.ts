/** The Unmute backend pod template the operator tests inject, and its injection as the webhook builds it. */
import { buildInjection, type PodTemplate } from '../../src/operator/patch.js';
import type { ToolSetLookup } from '../../src/operator/select.js';
import { DEFAULT_SIDECAR, type SidecarConfig } from '../../src/operator/sidecar.js';

export function injectBackend(
  namespace: string,
  toolsets: ToolSetLookup,
  labels: Record<string, string> = { app: 'unmute-backend', 'earpiece.dev/inject': 'true' },
  sidecar: SidecarConfig = DEFAULT_SIDECAR,
  annotations?: Record<string, string>,
  /** The injecting webhook's operator instance; undefined as `earpiece inject` injects. */
  instance?: string,
): PodTemplate {
  const result = buildInjection(
    {
      metadata: { labels, ...(annotations ? { annotations } : {}) },
      spec: {
        containers: [
          { name: 'backend', image: 'unmute', env: [{ name: 'KYUTAI_LLM_URL', value: 'http://vllm:8000' }] },
        ],
      },
    },
    { namespace, namespaceOptedIn: false, toolsets, sidecar, instance },
  );
  if (!result.ok) throw new Error(result.message);
  return result.template;
}
