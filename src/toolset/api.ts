/** The ToolSet's API coordinates, kept apart from schema.ts so run-time code can use them without TypeBox. */
export const API_GROUP = 'earpiece.dev';
export const API_VERSION = 'v1alpha1';
export const KIND = 'ToolSet';
/** The CRD's bound on a status condition's message (schema.ts); a longer one fails the whole status write. */
export const MAX_CONDITION_MESSAGE = 32768;

/** A ToolSet document around a spec, as `kubectl apply` and `earpiece proxy --toolset` take it. */
export function toolSetDocument<S>(
  name: string,
  spec: S,
): { apiVersion: string; kind: typeof KIND; metadata: { name: string }; spec: S } {
  return { apiVersion: `${API_GROUP}/${API_VERSION}`, kind: KIND, metadata: { name }, spec };
}
