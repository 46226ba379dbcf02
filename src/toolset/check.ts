/**
 * One ToolSet checked the way `earpiece validate` and the validating admission webhook both do: every
 * problem with the path of its field, and warnings about what is valid but probably not meant. The
 * multi-document reader splits a GitOps file into its documents and checks each ToolSet through
 * parseToolSet, so each document gets every guard the proxy's own loading has.
 */
import { isCollection, isMap, isScalar, LineCounter, parseAllDocuments, visit } from 'yaml';
import type { ToolSet } from './schema.js';
import { type Issue, type ParseResult, parseToolSet, validateToolSet, yamlIssue } from './validate.js';
import { unresolvableValues } from './values.js';

export interface CheckOptions {
  /** For a proxy run outside Kubernetes, where a secretKeyRef cannot be resolved. */
  local?: boolean;
}

export type CheckResult =
  | { ok: true; toolset: ToolSet; issues: []; warnings: Issue[] }
  | { ok: false; issues: Issue[]; warnings: Issue[] };

/** Valid but probably not meant: said, never refused. */
export function toolSetWarnings(toolset: ToolSet, options: CheckOptions = {}): Issue[] {
  const warnings: Issue[] = [];
  if (toolset.spec.selector === undefined) {
    warnings.push({
      path: 'spec.selector',
      message:
        'is not set: only pods that name this ToolSet in the annotation earpiece.dev/toolset get its tools',
    });
  }
  if (urlCredentials(toolset.spec.upstream?.url).userinfo) {
    warnings.push({
      path: 'spec.upstream.url',
      message:
        'carries user:password@, which is never sent (the proxy keeps only the scheme, host, port and path) and is stored in plain text: give the key as spec.upstream.apiKey with valueFrom.secretKeyRef',
    });
  }
  toolset.spec.tools.forEach((tool, i) => {
    const mcp = urlCredentials(tool.mcp?.url);
    if (mcp.userinfo || mcp.query) {
      // The URL itself is not echoed: warnings reach kubectl, Events and logs.
      warnings.push({
        path: `spec.tools[${i}].mcp.url`,
        message: `${mcp.userinfo ? 'carries user:password@' : 'has a query string, which may carry a token'}, stored in plain text in the ToolSet and the ConfigMap rendered from it: put credentials in mcp.headers with valueFrom.secretKeyRef instead`,
      });
    }
  });
  if (options.local) {
    // Environment variables are the local user's to set; only a secretKeyRef can never resolve here.
    const secrets = unresolvableValues(toolset, {}).filter((i) => i.message.startsWith('secretKeyRef'));
    warnings.push(...secrets);
  }
  return warnings;
}

/** What of a URL may hold a secret (nothing for a missing or unparsable one). */
function urlCredentials(text: string | undefined): { userinfo: boolean; query: boolean } {
  const url = URL.parse(text ?? '');
  return {
    userinfo: !!url && (url.username !== '' || url.password !== ''),
    query: !!url && url.search !== '',
  };
}

/** A parsed document, such as an AdmissionReview's object. */
export function checkToolSet(doc: unknown, options: CheckOptions = {}): CheckResult {
  return withWarnings(validateToolSet(doc), options);
}

/** The verdict of validateToolSet or parseToolSet, with the warnings of a valid ToolSet. */
function withWarnings(result: ParseResult, options: CheckOptions): CheckResult {
  if (!result.ok) return { ok: false, issues: result.issues, warnings: [] };
  return { ...result, warnings: toolSetWarnings(result.toolset, options) };
}

export interface DocumentCheck {
  /** 1-based position in the file. */
  document: number;
  /** The line the document starts on. */
  line: number;
  kind: string | undefined;
  name: string | undefined;
  /** Undefined for a document of another kind, which is left alone. */
  result: CheckResult | undefined;
}

/**
 * Every document of a YAML (or JSON) text. Documents of other kinds are passed over, as a GitOps
 * folder mixes them; a document that looks meant as a ToolSet (its kind or its API group says so, or
 * it has no kind at all) is checked, so a misspelt kind is reported rather than skipped.
 */
export function checkToolSetText(text: string, options: CheckOptions = {}): DocumentCheck[] {
  const lineCounter = new LineCounter();
  const documents = parseAllDocuments(text, { prettyErrors: true, lineCounter });
  const list = Array.isArray(documents) ? documents : [];
  const checks: DocumentCheck[] = [];
  for (const [i, document] of list.entries()) {
    const [start = 0, , end = text.length] = document.range;
    const contents = document.contents as { range?: [number, number, number] } | null;
    const line = lineCounter.linePos(contents?.range?.[0] ?? start).line;
    const field = (key: string) => {
      const value = isMap(document.contents) ? document.get(key) : undefined;
      return typeof value === 'string' ? value : undefined;
    };
    const meta = isMap(document.contents) ? document.get('metadata') : undefined;
    const nameNode = isMap(meta) ? meta.get('name') : undefined;
    const base = {
      document: i + 1,
      line,
      kind: field('kind'),
      name: typeof nameNode === 'string' ? nameNode : undefined,
    };
    if (document.errors.length) {
      const issues = document.errors.map((e) => yamlIssue(e, unclosedStart(document, e.pos[0], lineCounter)));
      checks.push({ ...base, result: { ok: false, issues, warnings: [] } });
      continue;
    }
    // An empty document, as after a trailing `---`.
    if (document.contents === null || (isScalar(document.contents) && document.contents.value === null))
      continue;
    if (!meantAsToolSet(base.kind, field('apiVersion'))) {
      checks.push({ ...base, result: undefined });
      continue;
    }
    checks.push({ ...base, result: withWarnings(parseToolSet(text.slice(start, end)), options) });
  }
  return checks;
}

function meantAsToolSet(kind: string | undefined, apiVersion: string | undefined): boolean {
  return (
    kind === undefined ||
    kind.toLowerCase() === 'toolset' ||
    (apiVersion?.startsWith('earpiece.dev/') ?? false)
  );
}

/**
 * An unclosed quote or flow collection is reported where the parser gave up, often lines later; the
 * line where the quote or bracket was opened is where the problem starts.
 */
function unclosedStart(
  document: ReturnType<typeof parseAllDocuments>[number] & object,
  offset: number,
  lineCounter: LineCounter,
): number | undefined {
  let start: number | undefined;
  visit(document, (_key, node) => {
    const opened =
      (isCollection(node) && node.flow === true) ||
      (isScalar(node) && (node.type === 'QUOTE_DOUBLE' || node.type === 'QUOTE_SINGLE'));
    const range = (node as { range?: [number, number, number] }).range;
    if (
      opened &&
      range &&
      range[0] <= offset &&
      offset <= range[2] &&
      (start === undefined || range[0] < start)
    )
      start = range[0];
  });
  return start === undefined ? undefined : lineCounter.linePos(start).line;
}
