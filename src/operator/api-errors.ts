/**
 * The HTTP status of a failed Kubernetes API call (client-node's ApiException carries it as `code`), or
 * undefined for any other error, such as a connection that failed (whose `code` is a string).
 */
export function statusOf(err: unknown): number | undefined {
  const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined;
  return typeof code === 'number' ? code : undefined;
}

/** An API error as its status and the API server's message (not the whole response); another error's message. */
export function describeApiError(err: unknown): string {
  const status = statusOf(err);
  if (status === undefined) return err instanceof Error ? err.message : String(err);
  const message = statusMessage((err as { body?: unknown }).body);
  return `HTTP ${status}${message ? `: ${message}` : ''}`;
}

/** The message of a metav1.Status response body, as text or parsed. */
function statusMessage(body: unknown): string | undefined {
  try {
    const parsed: unknown = typeof body === 'string' ? JSON.parse(body) : body;
    const message = (parsed as { message?: unknown } | undefined)?.message;
    return typeof message === 'string' ? message : undefined;
  } catch {
    return undefined;
  }
}
