/**
 * The ConfigMap `earpiece-toolset-<name>` the sidecar mounts, pure: the ToolSet as the sidecar reads it
 * (every secretKeyRef rewritten to valueFrom.env, no status), under key `toolset.yaml`. The controller
 * adds the owner reference; `earpiece inject --with-configmap` prints it as it is.
 */
import type { V1ConfigMap } from '@kubernetes/client-node';
import { stringify } from 'yaml';
import { specHash } from '../toolset/defaults.js';
import type { ToolSet } from '../toolset/schema.js';
import { renderForSidecar } from '../toolset/values.js';
import { ANNOTATION_TOOLSET_HASH, configMapName } from './sidecar.js';

export const CONFIG_KEY = 'toolset.yaml';

/**
 * `namespace` is used when the ToolSet has none. Only content goes in (no resourceVersion, uid or
 * managedFields), so the same spec always renders the same ConfigMap and the controller writes only
 * on change.
 */
export function renderConfigMap(toolset: ToolSet, namespace?: string): V1ConfigMap {
  const rendered = renderForSidecar(toolset).toolset;
  const name = toolset.metadata.name;
  const ns = toolset.metadata.namespace ?? namespace;
  const document = {
    apiVersion: rendered.apiVersion,
    kind: rendered.kind,
    metadata: { name, ...(ns ? { namespace: ns } : {}) },
    spec: rendered.spec,
  };
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: {
      name: configMapName(name),
      ...(ns ? { namespace: ns } : {}),
      labels: {
        'app.kubernetes.io/name': 'earpiece',
        'app.kubernetes.io/component': 'toolset',
        'earpiece.dev/toolset': name,
      },
      annotations: { [ANNOTATION_TOOLSET_HASH]: specHash(toolset) },
    },
    data: { [CONFIG_KEY]: stringify(document, { lineWidth: 0 }) },
  };
}
