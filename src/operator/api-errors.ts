/**
 * The HTTP status of a failed Kubernetes API call (client-node's ApiException carries it as `code`), or
 * undefined for any other error, such as a connection that failed (whose `code` is a string).
 */
export function statusOf(err: unknown): number | undefined {
  const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined;
  return typeof code === 'number' ? code : undefined;
}
