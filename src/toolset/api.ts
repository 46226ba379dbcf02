/** The ToolSet's API coordinates, kept apart from schema.ts so run-time code can use them without TypeBox. */
export const API_GROUP = 'earpiece.dev';
export const API_VERSION = 'v1alpha1';
export const KIND = 'ToolSet';
/** The CRD's bound on a status condition's message (schema.ts); a longer one fails the whole status write. */
export const MAX_CONDITION_MESSAGE = 32768;
/**
 * The most a ToolSet may be, in bytes, as the sidecar reads it: the ConfigMap's `toolset.yaml` and the
 * proxy's file both. The API server refuses a ConfigMap whose data passes 1 MiB; 16 KiB are left for the
 * key and whatever else the data may gain, so whatever passes validation is written and loaded.
 */
export const MAX_TOOLSET_BYTES = 1024 * 1024 - 16 * 1024;

/** A ToolSet document around a spec, as `kubectl apply` and `earpiece proxy --toolset` take it. */
export function toolSetDocument<S>(
  name: string,
  spec: S,
): { apiVersion: string; kind: typeof KIND; metadata: { name: string }; spec: S } {
  return { apiVersion: `${API_GROUP}/${API_VERSION}`, kind: KIND, metadata: { name }, spec };
}
