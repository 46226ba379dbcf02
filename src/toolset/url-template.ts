/**
 * Static checks of RFC 6570 URL templates (expansion itself is url-template's job, in tools/http.ts).
 * The scheme and host must be literal, and the expression after the host may only add a path or a
 * query, so no argument can ever change where a request goes. Reserved (`{+x}`) and fragment (`{#x}`)
 * expansions are refused because they leave `/`, `?` and `#` unencoded.
 */
const EXPRESSION = /\{([^{}]*)\}/g;
const ORIGIN = /^https?:\/\/[^/?#{}\s]+/;

export function templateVariables(template: string): string[] {
  const names: string[] = [];
  for (const [, body = ''] of template.matchAll(EXPRESSION)) {
    const list = /^[+#./;?&]/.test(body) ? body.slice(1) : body;
    for (const spec of list.split(',')) {
      const name = spec.replace(/(\*|:\d+)$/, '');
      if (name) names.push(name);
    }
  }
  return names;
}

/** Problems with a template, as sentences; empty when it is safe. */
export function checkUrlTemplate(template: string): string[] {
  const problems: string[] = [];
  const opens = (template.match(/\{/g) ?? []).length;
  const closes = (template.match(/\}/g) ?? []).length;
  if (opens !== closes) problems.push('has unbalanced { }');
  const origin = ORIGIN.exec(template);
  if (!origin) {
    problems.push(
      'must start with http:// or https:// and a literal host (arguments can never set the host)',
    );
    return problems;
  }
  if (origin[0].includes('@')) {
    problems.push('has credentials in the URL; send them in a header (headers: [{ name, valueFrom }])');
  }
  const after = template.slice(origin[0].length);
  if (after.startsWith('{') && !/^\{[/?&]/.test(after)) {
    problems.push('an expression right after the host could change it; use {/x}, {?x} or put a / first');
  }
  for (const [, body = ''] of template.matchAll(EXPRESSION)) {
    if (body.startsWith('+') || body.startsWith('#')) {
      problems.push(`{${body}} would leave reserved characters unencoded; use {${body.slice(1)}}`);
    }
    if (!/^[./;?&]?[A-Za-z0-9_%.]+(\*|:\d+)?(,[A-Za-z0-9_%.]+(\*|:\d+)?)*$/.test(body.replace(/^[+#]/, ''))) {
      problems.push(`{${body}} is not a valid expression`);
    }
  }
  return problems;
}

/** The scheme://host[:port] part of a template, which every expansion must keep. */
export function templateOrigin(template: string): string | undefined {
  const m = ORIGIN.exec(template);
  return m ? new URL(m[0]).origin : undefined;
}
