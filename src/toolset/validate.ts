/**
 * Validation: the schema (ajv), then the rules a schema cannot say. Every problem is reported, each
 * with the path of the field it is about (`spec.tools[2].timeout: "soon" is not a duration`).
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { RegExpEngine } from 'ajv/dist/types/index.js';
import addFormats from 'ajv-formats';
import { RE2JS } from 're2js';
import { parseDocument, type YAMLError } from 'yaml';
import { MAX_TOOLSET_BYTES } from './api.js';
import { DURATION_FORMS, isDuration, MAX_DURATION, MAX_DURATION_MS, parseDuration } from './duration.js';
import type { ToolSet, ToolSpec, ValueRef } from './schema.js';
import { validate as generatedValidator } from './toolset-validator.generated.js';
import { checkUrlTemplate, templateVariables } from './url-template.js';
import { renderSidecarText } from './values.js';

export interface Issue {
  path: string;
  message: string;
}

export type ParseResult = { ok: true; toolset: ToolSet; issues: [] } | { ok: false; issues: Issue[] };

/**
 * `pattern`s come from ToolSets and MCP servers: RE2 matches in linear time, so a pattern such as
 * `^(a+)+$` cannot stall the event loop. Patterns RE2 cannot express (lookaround, backreferences) do
 * not compile, and the schema holding them is reported as unusable.
 */
const linearRegExp: RegExpEngine = Object.assign(
  (pattern: string) => {
    const re = RE2JS.compile(pattern);
    return { test: (s: string) => re.test(s) };
  },
  { code: 'linearRegExp' },
);

/**
 * An ajv instance that knows the `duration` format; also used to compile tool parameter schemas.
 * ajv keeps every schema it compiled (and their patterns) for as long as the instance lives, so
 * callers make one per batch of schemas and let it go with them. `lean`, for schemas compiled while voice
 * turns wait (a tool's arguments, on its first call): errors carry no data, and the generated code gets no
 * optimizing pass. A 60 KB MCP input schema then compiles about 4 times faster (30 ms, not 120 ms, on the
 * event loop every stream shares); checking a model's few arguments is no slower to notice.
 */
export function createAjv({
  allErrors = true,
  lean = false,
}: {
  allErrors?: boolean;
  lean?: boolean;
} = {}): Ajv {
  const ajv = new Ajv({
    allErrors,
    strict: false,
    verbose: !lean,
    code: { regExp: linearRegExp, optimize: !lean },
  });
  addFormats.default(ajv);
  ajv.addFormat('duration', isDuration);
  return ajv;
}

const PRIMITIVE_TYPES = new Set(['string', 'number', 'integer', 'boolean', 'null']);

/**
 * Where a schema has `uniqueItems` on items without a primitive `type`, with the problem; undefined when
 * nowhere. ajv checks such items pair by pair with a deep comparison (its hash lookup needs primitive
 * types): the square of the array's length, synchronously, on arguments the model writes. Every value is
 * walked, data keywords too: a false alarm there is harmless, a miss is not. (ajv refuses a uniqueItems
 * that is not a boolean, so a property named uniqueItems is no alarm.)
 */
export function quadraticUniqueItems(schema: unknown): { at: string; problem: string } | undefined {
  const stack: [unknown, string][] = [[schema, '']];
  const seen = new Set<object>();
  for (let next = stack.pop(); next; next = stack.pop()) {
    const [node, at] = next;
    if (node === null || typeof node !== 'object' || seen.has(node)) continue;
    seen.add(node);
    const { uniqueItems, items } = node as { uniqueItems?: unknown; items?: unknown };
    if (uniqueItems === true && !primitiveItems(items)) {
      return {
        at: pointerToPath(at),
        problem:
          'uses uniqueItems on items without a primitive type (string, number, integer, boolean or null), which takes time quadratic in the length of the array to check',
      };
    }
    for (const [key, value] of Object.entries(node))
      stack.push([value, `${at}/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`]);
  }
  return undefined;
}

function primitiveItems(items: unknown): boolean {
  if (items === null || typeof items !== 'object' || Array.isArray(items)) return false;
  const type = (items as { type?: unknown }).type;
  const types: unknown[] = typeof type === 'string' ? [type] : Array.isArray(type) ? type : [];
  return types.length > 0 && types.every((t) => PRIMITIVE_TYPES.has(t as string));
}

/** The ToolSet schema's validator, generated ahead of time (validator-gen.ts). */
const validateSchema = generatedValidator as unknown as ValidateFunction<ToolSet>;

/** `/spec/tools/2/timeout` → `spec.tools[2].timeout` */
export function pointerToPath(pointer: string): string {
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(part) ? `[${part}]` : out === '' ? part : `.${part}`;
  }
  return out;
}

function join(path: string, field: string): string {
  return path === '' ? field : `${path}.${field}`;
}

function schemaIssue(e: ErrorObject): Issue | undefined {
  const path = pointerToPath(e.instancePath);
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return { path: join(path, String(p.missingProperty)), message: 'is required' };
    case 'additionalProperties':
      return { path: join(path, String(p.additionalProperty)), message: 'is not a known field' };
    case 'format':
      return {
        path,
        message:
          p.format === 'duration'
            ? `${JSON.stringify(e.data)} is not a duration (use ${DURATION_FORMS})`
            : `${JSON.stringify(e.data)} is not a ${p.format}`,
      };
    case 'enum':
      return {
        path,
        message: `${JSON.stringify(e.data)} is not one of ${(p.allowedValues as string[]).join(', ')}`,
      };
    case 'pattern':
      return { path, message: `${JSON.stringify(e.data)} does not match ${p.pattern}` };
    case 'type':
      return { path, message: `must be ${a(String(p.type))}` };
    case 'if':
    case 'anyOf':
      return undefined;
    default:
      return { path, message: e.message ?? e.keyword };
  }
}

function a(type: string): string {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

function checkValue(v: ValueRef | undefined, path: string, issues: Issue[]): void {
  if (!v) return;
  const n = Number(v.value !== undefined) + Number(v.valueFrom !== undefined);
  if (n !== 1) issues.push({ path, message: 'needs exactly one of value or valueFrom' });
  const from = v.valueFrom;
  if (from && Number(from.env !== undefined) + Number(from.secretKeyRef !== undefined) !== 1) {
    issues.push({ path: `${path}.valueFrom`, message: 'needs exactly one of env or secretKeyRef' });
  }
}

const EXECUTORS = ['http', 'mcp', 'sql', 'builtin'] as const;

function checkTool(tool: ToolSpec, path: string, issues: Issue[], ajv: () => Ajv): void {
  const kinds = EXECUTORS.filter((k) => tool[k] !== undefined);
  if (kinds.length !== 1) {
    issues.push({
      path,
      message: `needs exactly one of http, mcp, sql or builtin${kinds.length ? ` (has ${kinds.join(', ')})` : ''}`,
    });
    return;
  }
  const kind = kinds[0];
  if (kind === 'mcp') {
    if (tool.name !== undefined) {
      issues.push({
        path: `${path}.name`,
        message: 'an mcp entry takes its names from the server; use mcp.prefix',
      });
    }
    for (const field of ['parameters', 'description'] as const) {
      if (tool[field] !== undefined) {
        issues.push({ path: `${path}.${field}`, message: 'an mcp entry takes this from the server' });
      }
    }
  } else if (tool.name === undefined) {
    issues.push({ path: `${path}.name`, message: 'is required' });
  }

  const limit = tool.rateLimit;
  if (limit && typeof limit.burst === 'number' && limit.burst > limit.requests) {
    issues.push({
      path: `${path}.rateLimit.burst`,
      message: `${limit.burst} is more than requests (${limit.requests}); a burst can only spread a quota, not add to it`,
    });
  }

  const declared = new Set<string>();
  if (tool.parameters !== undefined) {
    const params = tool.parameters as Record<string, unknown>;
    if (params.type !== 'object') {
      issues.push({
        path: `${path}.parameters.type`,
        message: 'must be "object" (tool arguments are an object)',
      });
    }
    try {
      ajv().compile(params);
    } catch (err) {
      issues.push({
        path: `${path}.parameters`,
        message: `is not a valid JSON Schema: ${(err as Error).message}`,
      });
    }
    const quadratic = quadraticUniqueItems(params);
    if (quadratic) {
      issues.push({
        path: `${path}.parameters${quadratic.at ? `.${quadratic.at}` : ''}`,
        message: `${quadratic.problem}; give the items a primitive type, or drop uniqueItems`,
      });
    }
    const props = params.properties;
    if (props && typeof props === 'object') for (const k of Object.keys(props)) declared.add(k);
  }

  if (tool.http) {
    const h = tool.http;
    for (const problem of checkUrlTemplate(h.url))
      issues.push({ path: `${path}.http.url`, message: problem });
    if (tool.parameters !== undefined) {
      for (const name of templateVariables(h.url)) {
        if (!declared.has(name)) {
          issues.push({
            path: `${path}.http.url`,
            message: `uses {${name}}, which parameters.properties does not declare`,
          });
        }
      }
    }
    if (h.select !== undefined && !/^(\/([^~/]|~[01])*)*$/.test(h.select)) {
      issues.push({
        path: `${path}.http.select`,
        message: `${JSON.stringify(h.select)} is not a JSON Pointer`,
      });
    }
    for (const [i, hd] of (h.headers ?? []).entries()) checkValue(hd, `${path}.http.headers[${i}]`, issues);
  }
  if (tool.mcp) {
    if (!/^https?:\/\//.test(tool.mcp.url)) {
      // Not echoed: it may carry credentials (user:pass@), and issues reach logs, Events and status.
      issues.push({ path: `${path}.mcp.url`, message: 'is not an http:// or https:// URL' });
    }
    for (const [i, hd] of (tool.mcp.headers ?? []).entries())
      checkValue(hd, `${path}.mcp.headers[${i}]`, issues);
  }
  if (tool.sql) {
    const s = tool.sql;
    checkValue(s.connection, `${path}.sql.connection`, issues);
    if (s.query === undefined) {
      if (s.args !== undefined) issues.push({ path: `${path}.sql.args`, message: 'needs sql.query' });
      checkFreeFormSqlParameters(tool.parameters, path, issues);
    } else {
      const placeholders = new Set([...s.query.matchAll(/\$(\d+)/g)].map((m) => Number(m[1])));
      const highest = Math.max(0, ...placeholders);
      const args = s.args ?? [];
      if (highest !== args.length) {
        issues.push({
          path: `${path}.sql.args`,
          message: `has ${args.length} entries but the query uses $1..$${highest}`,
        });
      }
      args.forEach((arg, i) => {
        if (!declared.has(arg)) {
          issues.push({
            path: `${path}.sql.args[${i}]`,
            message: `"${arg}" is not declared in parameters.properties`,
          });
        }
      });
    }
  }
  if (tool.builtin !== undefined && tool.parameters !== undefined) {
    issues.push({ path: `${path}.parameters`, message: `builtin ${tool.builtin} has its own parameters` });
  }
}

/** A literal Redis URL is checked now; one from the environment when the proxy starts. */
function checkRedisUrl(url: string | undefined, issues: Issue[]): void {
  if (url === undefined) return;
  const problem = redisUrlProblem(url);
  if (problem) issues.push({ path: 'spec.sharedState.redis.url.value', message: problem });
}

/** Why a text is not a Redis URL, without echoing it (it may carry a password); undefined when it is one. */
export function redisUrlProblem(url: string): string | undefined {
  const parsed = URL.parse(url);
  if (!parsed || (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') || !parsed.hostname) {
    return 'is not a redis:// or rediss:// URL with a host';
  }
  return undefined;
}

const MAX_PORT = 65535;

/** The port of a URL that parsing refused, past any user:pass@ (a password may hold `:` or `@`). */
function unparsedPort(url: string): string | undefined {
  const authority = url.replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').split(/[/?#]/, 1)[0] ?? '';
  const hostAndPort = authority.slice(authority.lastIndexOf('@') + 1);
  return /^(?:\[[^\]]*\]|[^:[\]]*):(\d+)$/.exec(hostAndPort)?.[1];
}

/**
 * Why a text is not an LLM server base URL the proxy can connect to, without echoing it (it may carry
 * user:pass@); undefined when it is one.
 */
export function upstreamUrlProblem(url: string): string | undefined {
  const parsed = URL.parse(url);
  const portProblem = (port: string) => `has port ${port}; a port is a number from 1 to ${MAX_PORT}`;
  if (!parsed) {
    const port = unparsedPort(url);
    if (port !== undefined && Number(port) > MAX_PORT) return portProblem(port);
    return 'is not a valid URL: check its host, its port and that it has no spaces';
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') return 'is not an http:// or https:// URL';
  if (parsed.port === '0') return portProblem('0');
  if (/\/v1\/?$/.test(parsed.pathname))
    return 'ends in /v1; give the base URL without /v1 (as in KYUTAI_LLM_URL)';
  return undefined;
}

/**
 * Without a query the model writes the SELECT in argument "sql", so declared parameters may only
 * describe that argument (the tables it can read, say): one property, `sql`, a string.
 */
function checkFreeFormSqlParameters(parameters: unknown, path: string, issues: Issue[]): void {
  if (parameters === undefined) return;
  const properties = (parameters as { properties?: unknown }).properties;
  const props = properties && typeof properties === 'object' ? (properties as Record<string, unknown>) : {};
  const sql = props.sql as { type?: unknown } | undefined;
  if (sql?.type !== 'string') {
    issues.push({
      path: `${path}.parameters.properties.sql`,
      message:
        'must be declared with type "string" (sql without query: the model writes the SELECT in argument "sql")',
    });
  }
  for (const name of Object.keys(props).filter((n) => n !== 'sql')) {
    issues.push({
      path: `${path}.parameters.properties.${name}`,
      message: 'is not an argument of sql without query, which takes only "sql"',
    });
  }
}

const LANGUAGE_TAG = /^[a-z]{2,3}$/;

/** A voice line: a string, or a non-empty map from a primary language tag to a string. */
function checkVoiceText(value: unknown, path: string, issues: Issue[]): void {
  if (value === undefined || typeof value === 'string') return;
  const shape = 'must be a string, or a map from a language tag such as en or fr to a string';
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    issues.push({ path, message: shape });
    return;
  }
  const entries = Object.entries(value);
  if (entries.length === 0) issues.push({ path, message: `${shape} (the map is empty)` });
  for (const [tag, text] of entries) {
    if (!LANGUAGE_TAG.test(tag)) {
      issues.push({
        path: `${path}.${tag}`,
        message: 'is not a primary language tag (two or three lower-case letters, such as en or fr)',
      });
    } else if (typeof text !== 'string') {
      issues.push({ path: `${path}.${tag}`, message: 'must be a string' });
    }
  }
}

/** The voice lines, and the deferral rules: deferAfter below the timeout, and memory to deliver through. */
function checkVoice(toolset: ToolSet, issues: Issue[]): void {
  const spec = toolset.spec;
  const voice = spec.voice;
  for (const field of ['filler', 'errorMessage', 'stillWorking'] as const)
    checkVoiceText(voice?.[field], `spec.voice.${field}`, issues);
  const defaultTimeout = spec.limits?.toolTimeout ?? '5s';
  spec.tools.forEach((tool, i) => {
    if (tool === null || typeof tool !== 'object') return;
    checkVoiceText(tool.filler, `spec.tools[${i}].filler`, issues);
    if (typeof tool.deferAfter !== 'string') return;
    const path = `spec.tools[${i}].deferAfter`;
    const defer = parseDuration(tool.deferAfter);
    const timeoutText = typeof tool.timeout === 'string' ? tool.timeout : defaultTimeout;
    const timeout = parseDuration(timeoutText);
    if (defer !== undefined && timeout !== undefined && defer >= timeout) {
      issues.push({
        path,
        message: `${JSON.stringify(tool.deferAfter)} must be shorter than the tool's timeout (${timeoutText}): the call runs on after it`,
      });
    }
    if (spec.memory?.turns === 0) {
      issues.push({
        path,
        message: 'needs spec.memory.turns above 0: a late result reaches the next turn through tool memory',
      });
    }
    if (tool.memory === false) {
      issues.push({
        path,
        message: 'needs memory: true on the tool: a late result reaches the next turn through tool memory',
      });
    }
  });
}

/**
 * Durations must be longer than zero and at most MAX_DURATION: a zero turn timeout, or one past what a
 * Node.js timer holds, would fail every turn at once.
 */
function checkDurations(toolset: ToolSet, issues: Issue[]): void {
  const spec = toolset.spec;
  const fields: [string, unknown][] = [
    ['spec.limits.turnTimeout', spec.limits?.turnTimeout],
    ['spec.limits.toolTimeout', spec.limits?.toolTimeout],
    ['spec.memory.ttl', spec.memory?.ttl],
    ['spec.voice.stillWorkingAfter', spec.voice?.stillWorkingAfter],
    ...spec.tools.flatMap((t, i): [string, unknown][] => [
      [`spec.tools[${i}].timeout`, t?.timeout],
      [`spec.tools[${i}].deferAfter`, t?.deferAfter],
      [`spec.tools[${i}].cache.ttl`, t?.cache?.ttl],
      [`spec.tools[${i}].rateLimit.per`, t?.rateLimit?.per],
    ]),
  ];
  for (const [path, value] of fields) {
    if (typeof value !== 'string') continue;
    const ms = parseDuration(value);
    if (ms === 0) issues.push({ path, message: `${JSON.stringify(value)} must be longer than zero` });
    if (ms !== undefined && ms > MAX_DURATION_MS) {
      issues.push({
        path,
        message: `${JSON.stringify(value)} is longer than the largest allowed duration, ${MAX_DURATION}`,
      });
    }
  }
}

/** The name becomes the value of the ConfigMap's label earpiece.dev/toolset, and label values stop at 63. */
export const MAX_TOOLSET_NAME = 63;

/**
 * Rules beyond the schema. Also run on documents the schema rejected, so one pass reports everything:
 * a tool too malformed to check is left to the schema's issues.
 */
export function semanticIssues(toolset: ToolSet): Issue[] {
  const issues: Issue[] = [];
  const name: unknown = toolset.metadata?.name;
  if (typeof name === 'string' && name.length > MAX_TOOLSET_NAME) {
    issues.push({
      path: 'metadata.name',
      message: `is ${name.length} characters long; at most ${MAX_TOOLSET_NAME} are allowed, as it becomes the value of the label earpiece.dev/toolset`,
    });
  }
  const spec = toolset.spec;
  if (!spec || !Array.isArray(spec.tools)) return issues;
  try {
    checkValue(spec.upstream?.apiKey, 'spec.upstream.apiKey', issues);
    checkValue(spec.sharedState?.redis?.url, 'spec.sharedState.redis.url', issues);
    checkRedisUrl(spec.sharedState?.redis?.url?.value, issues);
    checkDurations(toolset, issues);
    checkVoice(toolset, issues);
  } catch {}
  const upstreamUrl = spec.upstream?.url;
  // Another scheme is the schema's issue.
  if (typeof upstreamUrl === 'string' && /^https?:\/\//.test(upstreamUrl)) {
    const problem = upstreamUrlProblem(upstreamUrl);
    if (problem) issues.push({ path: 'spec.upstream.url', message: problem });
  }
  const seen = new Map<string, number>();
  // One ajv for this document's parameter schemas, dropped with it.
  let ajv: Ajv | undefined;
  const compiler = () => {
    ajv ??= createAjv();
    return ajv;
  };
  spec.tools.forEach((tool, i) => {
    const path = `spec.tools[${i}]`;
    if (tool === null || typeof tool !== 'object') return;
    try {
      checkTool(tool, path, issues, compiler);
    } catch {
      // Malformed beyond what these rules can read; the schema has named the problem.
    }
    // Names an mcp entry is known to produce (include + prefix) take part in the uniqueness check too.
    const names = tool.mcp
      ? (tool.mcp.include ?? []).map((n) => `${tool.mcp?.prefix ?? ''}${n}`)
      : [tool.name];
    for (const name of names) {
      if (name === undefined) continue;
      const first = seen.get(name);
      if (first !== undefined) {
        issues.push({
          path: `${path}.name`,
          message: `"${name}" is already the name of spec.tools[${first}]`,
        });
      } else {
        seen.set(name, i);
      }
    }
  });
  return issues;
}

/** Validates an already-parsed document. */
export function validateToolSet(doc: unknown): ParseResult {
  if (!validateSchema(doc)) {
    const issues = (validateSchema.errors ?? []).map(schemaIssue).filter((x): x is Issue => x !== undefined);
    return { ok: false, issues: dedupe([...issues, ...semanticIssues(doc as ToolSet)]) };
  }
  const issues = semanticIssues(doc);
  if (issues.length === 0) issues.push(...sizeIssues(doc));
  return issues.length ? { ok: false, issues } : { ok: true, toolset: doc, issues: [] };
}

/** The longest namespace name (a DNS label): a ToolSet without one is rendered into its pods' namespace. */
const LONGEST_NAMESPACE = 'n'.repeat(63);

/**
 * A ToolSet must fit its ConfigMap (the API server refuses data over 1 MiB, and the write would be
 * retried forever) and the proxy's file limit: the rendered configuration is measured as the
 * controller, the webhook and `earpiece inject` write it, in the longest namespace when it names none.
 */
function sizeIssues(toolset: ToolSet): Issue[] {
  const bytes = Buffer.byteLength(renderSidecarText(toolset, LONGEST_NAMESPACE).text);
  if (bytes <= MAX_TOOLSET_BYTES) return [];
  return [
    {
      path: 'spec',
      message: `renders to ${bytes} bytes of configuration, more than the ${MAX_TOOLSET_BYTES} (${MAX_TOOLSET_BYTES / 1024} KiB) a ToolSet may have, as its ConfigMap holds at most 1 MiB; shorten tool descriptions, parameter schemas or instructions, or move tools to an MCP server`,
    },
  ];
}

/**
 * A YAML syntax error as an issue on the line where the problem starts (`line`, when the caller knows
 * it better than the parser's position), without the parser's trailing position and excerpt.
 */
export function yamlIssue(error: YAMLError, line?: number): Issue {
  const at = line ?? error.linePos?.[0].line;
  const message = (error.message.split('\n')[0] ?? error.message).replace(/ at line \d+, column \d+:?$/, '');
  return { path: at === undefined ? '(yaml)' : `line ${at}`, message };
}

/** Parses YAML (or JSON) text and validates it. YAML syntax errors are issues with a line number. */
export function parseToolSet(text: string): ParseResult {
  const document = parseDocument(text, { prettyErrors: true });
  if (document.errors.length) {
    return {
      ok: false,
      issues: document.errors.map((e) => yamlIssue(e)),
    };
  }
  let doc: unknown;
  try {
    doc = document.toJS();
  } catch (err) {
    // yaml refuses aliases that would expand past its limit (a "billion laughs" document).
    return { ok: false, issues: [{ path: '(yaml)', message: `cannot be read: ${(err as Error).message}` }] };
  }
  if (doc === null || typeof doc !== 'object') {
    return { ok: false, issues: [{ path: '(document)', message: 'is not a ToolSet object' }] };
  }
  return validateToolSet(doc);
}

function dedupe(issues: Issue[]): Issue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const key = `${i.path}\0${i.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

export function formatIssues(issues: Issue[]): string {
  return issues.map((i) => `${i.path}: ${i.message}`).join('\n');
}
