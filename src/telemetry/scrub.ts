/**
 * Secrets out of error texts. A server's error may quote the request it refused, headers included, and
 * that text reaches logs, /readyz and error bodies. One function for every source of such text (the LLM
 * server, MCP servers, databases): it removes the given secret values wherever they appear, the credential
 * after an auth scheme (`Bearer …`), and the value of an echoed credential header, known or not.
 */

const REDACTED = '[redacted]';
/** Shorter values would blank out ordinary words. */
const MIN_SECRET_LENGTH = 4;
const CREDENTIAL = /\b(Bearer|Basic|Token|ApiKey)(\s+)[A-Za-z0-9._~+/=:-]+/gi;
const CREDENTIAL_HEADER =
  /\b((?:proxy-)?authorization|x-api-key|api-key|cookie)(["']?\s*[:=]\s*["']?)(?!\[redacted\]|(?:Bearer|Basic|Token|ApiKey)\s)[^\s"',;}]+/gi;

/** A function removing `secrets` (and any credential) from a text. */
export function secretScrubber(secrets: readonly (string | undefined)[]): (text: string) => string {
  const values = new Set<string>();
  for (const secret of secrets) {
    if (!secret) continue;
    values.add(secret);
    // "Bearer abc…" also goes as "abc…", as a server may quote the token alone.
    const space = secret.indexOf(' ');
    if (space !== -1) values.add(secret.slice(space + 1));
  }
  // Longest first, so a secret that contains another goes whole.
  const ordered = [...values]
    .filter((s) => s.length >= MIN_SECRET_LENGTH)
    .sort((a, b) => b.length - a.length);
  return (text) =>
    ordered
      .reduce((out, secret) => out.split(secret).join(REDACTED), text)
      .replace(CREDENTIAL, `$1$2${REDACTED}`)
      .replace(CREDENTIAL_HEADER, `$1$2${REDACTED}`);
}

/** Credentials only, for text from anywhere (log lines). */
export const scrubCredentials = secretScrubber([]);

/** A log call's arguments with credentials scrubbed from its message and the top-level fields of its object. */
export function scrubLogArguments(args: unknown[]): unknown[] {
  return args.map((arg) => {
    if (typeof arg === 'string') return scrubCredentials(arg);
    if (arg instanceof Error) return scrubError(arg);
    if (arg === null || typeof arg !== 'object' || Array.isArray(arg)) return arg;
    const out: Record<string, unknown> = {};
    for (const [key, value] of Object.entries(arg))
      out[key] =
        typeof value === 'string'
          ? scrubCredentials(value)
          : value instanceof Error
            ? scrubError(value)
            : value;
    return out;
  });
}

function scrubError(err: Error): Error {
  const copy = Object.assign(Object.create(Object.getPrototypeOf(err)) as Error, err);
  copy.message = scrubCredentials(err.message);
  if (err.stack) copy.stack = scrubCredentials(err.stack);
  return copy;
}
