/** Go-style durations (`1h2m3.5s`, `500ms`), the form Kubernetes users already write. */
const UNIT_MS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  µs: 1e-3,
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
};

const WHOLE = /^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$/;
const PART = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)/g;

/** Also used by the CRD as the `pattern` of every duration field. */
export const DURATION_PATTERN = WHOLE.source;

/**
 * The longest duration a ToolSet may give: Node.js timers hold at most 2^31 - 1 ms and fire a longer
 * delay after 1 ms instead, which would time out every turn at once.
 */
export const MAX_DURATION_MS = 2 ** 31 - 1;
export const MAX_DURATION = '596h31m23.647s';

/** How a duration error says what is accepted. */
export const DURATION_FORMS = '500ms, 5s, 10m';

export function isDuration(text: string): boolean {
  return WHOLE.test(text);
}

/** Milliseconds, or undefined when `text` is not a duration (a unit is always required). */
export function parseDuration(text: string): number | undefined {
  if (!WHOLE.test(text)) return undefined;
  let ms = 0;
  for (const [, amount, unit] of text.matchAll(PART))
    ms += Number(amount) * (UNIT_MS[unit as string] as number);
  return ms;
}
