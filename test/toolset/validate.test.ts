import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { CONFIG_KEY, renderConfigMap } from '../../src/operator/configmap.js';
import { MAX_DURATION, parseDuration } from '../../src/toolset/duration.js';
import {
  checkToolSetText,
  loadToolSetFile,
  MAX_TOOLSET_BYTES,
  parseToolSet,
  resolveToolSet,
  toolSetDocument,
  validateToolSet,
  writeToolSetFile,
} from '../../src/toolset/index.js';
import { renderForSidecar, secretEnvName, secretRefs, unresolvableValues } from '../../src/toolset/values.js';
import { toolSetOfSize } from '../support/large-toolset.js';

const base = {
  apiVersion: 'earpiece.dev/v1alpha1',
  kind: 'ToolSet',
  metadata: { name: 'a' },
  spec: { tools: [{ name: 'now', builtin: 'time' }] as Record<string, unknown>[] },
};
const withTools = (...tools: Record<string, unknown>[]) => ({ ...base, spec: { tools } });

describe('ToolSet validation', () => {
  it('accepts the example ToolSet and applies the settled defaults', async () => {
    const result = parseToolSet(await readFile('examples/toolset.yaml', 'utf8'));
    expect(result.issues).toEqual([]);
    if (!result.ok) return;
    const resolved = resolveToolSet(result.toolset);
    expect(resolved.limits).toEqual({
      maxIterations: 3,
      turnTimeoutMs: 20_000,
      toolTimeoutMs: 5000,
      maxParallelCalls: 4,
      maxResultBytes: 2048,
    });
    expect(resolved.cacheMaxEntries).toBe(1000);
    expect(resolved.memory).toEqual({ turns: 2, ttlMs: 900_000, maxBytes: 4096, maxEntries: 1000 });
    expect(resolved.tools.map((t) => [t.spec.name, t.kind, t.timeoutMs, t.cacheTtlMs])).toEqual([
      ['get_weather', 'http', 3000, 600_000],
      ['current_time', 'builtin', 5000, undefined],
      ['calculate', 'builtin', 5000, undefined],
    ]);
  });

  it('refuses a name longer than the 63 characters of a label value', () => {
    expect(validateToolSet({ ...base, metadata: { name: 'a'.repeat(63) } }).issues).toEqual([]);
    expect(validateToolSet({ ...base, metadata: { name: 'a'.repeat(64) } }).issues).toEqual([
      {
        path: 'metadata.name',
        message:
          'is 64 characters long; at most 63 are allowed, as it becomes the value of the label earpiece.dev/toolset',
      },
    ]);
  });

  it('refuses an mcp URL that is not http(s) without echoing it', () => {
    const issues = validateToolSet(withTools({ mcp: { url: 'ftp://me:s3cret@ha/mcp' } })).issues;
    expect(issues).toEqual([{ path: 'spec.tools[0].mcp.url', message: 'is not an http:// or https:// URL' }]);
    expect(JSON.stringify(issues)).not.toContain('s3cret');
  });

  it('refuses an upstream URL the proxy could not connect to, without echoing it', () => {
    const upstream = (url: string) => validateToolSet({ ...base, spec: { ...base.spec, upstream: { url } } });
    const invalid = 'is not a valid URL: check its host, its port and that it has no spaces';
    for (const [url, message] of [
      ['http://vllm:80000', 'has port 80000; a port is a number from 1 to 65535'],
      ['http://me:s3cret@vllm:80000/', 'has port 80000; a port is a number from 1 to 65535'],
      ['http://vllm:0', 'has port 0; a port is a number from 1 to 65535'],
      ['http://', invalid],
      ['http://a b', invalid],
      ['http://[::1', invalid],
      ['https://me:s3cret@vllm host:8000', invalid],
    ]) {
      const issues = upstream(url as string).issues;
      expect(issues, url).toEqual([{ path: 'spec.upstream.url', message }]);
      expect(JSON.stringify(issues)).not.toContain('s3cret');
    }
    for (const url of ['http://vllm:8000', 'https://me:s3cret@[::1]:65535/base', 'http://vllm'])
      expect(upstream(url).issues, url).toEqual([]);
    // The scheme is the schema's issue, reported once.
    expect(upstream('ftp://vllm:80000').issues.map((i) => i.path)).toEqual(['spec.upstream.url']);
  });

  it('names the field of a bad duration', () => {
    const doc = withTools(
      { name: 'a', builtin: 'time' },
      { name: 'b', builtin: 'time' },
      { name: 'c', builtin: 'time', timeout: 'soon' },
    );
    expect(validateToolSet(doc).issues).toEqual([
      { path: 'spec.tools[2].timeout', message: '"soon" is not a duration (use 500ms, 5s, 10m)' },
    ]);
  });

  it('reports every problem, not only the first', () => {
    const doc = {
      ...base,
      spec: {
        limits: { turnTimeout: 'later', maxIterations: 0 },
        tools: [
          { name: 'x', builtin: 'clock' },
          { name: 'y', htp: {} },
        ],
      },
    };
    const issues = validateToolSet(doc).issues.map((i) => `${i.path}: ${i.message}`);
    expect(issues).toEqual(
      expect.arrayContaining([
        'spec.limits.turnTimeout: "later" is not a duration (use 500ms, 5s, 10m)',
        'spec.limits.maxIterations: must be >= 1',
        'spec.tools[0].builtin: "clock" is not one of time, calculator',
        'spec.tools[1].htp: is not a known field',
        'spec.tools[1]: needs exactly one of http, mcp, sql or builtin',
      ]),
    );
    expect(issues.length).toBe(5);
  });

  it('checks the rules a schema cannot say', () => {
    const issues = validateToolSet(
      withTools(
        { name: 'dup', builtin: 'time' },
        { name: 'dup', builtin: 'calculator' },
        { name: 'both', builtin: 'time', http: { url: 'https://x.test/' } },
        { name: 'host', http: { url: 'https://{host}/x' } },
        {
          name: 'reserved',
          parameters: { type: 'object', properties: { p: { type: 'string' } } },
          http: { url: 'https://x.test/{+p}' },
        },
        {
          name: 'undeclared',
          parameters: { type: 'object', properties: {} },
          http: { url: 'https://x.test/{?q}' },
        },
        {
          name: 'sqlargs',
          parameters: { type: 'object', properties: { id: { type: 'string' } } },
          sql: { connection: { value: 'postgres://x' }, query: 'SELECT $1, $2', args: ['id'] },
        },
        {
          name: 'badschema',
          parameters: { type: 'object', properties: { a: { type: 'nope' } } },
          http: { url: 'https://x.test/' },
        },
        { name: 'creds', http: { url: 'https://user:secret@x.test/' } },
        {
          name: 'twovalues',
          http: { url: 'https://x.test/', headers: [{ name: 'A', value: 'x', valueFrom: { env: 'Y' } }] },
        },
        { mcp: { url: 'http://m.test/mcp', include: ['dup'] } },
      ),
    ).issues;
    const byPath = Object.fromEntries(issues.map((i) => [i.path, i.message]));
    expect(byPath['spec.tools[1].name']).toBe('"dup" is already the name of spec.tools[0]');
    expect(byPath['spec.tools[2]']).toMatch(/exactly one of http, mcp, sql or builtin \(has http, builtin\)/);
    expect(byPath['spec.tools[3].http.url']).toMatch(/literal host/);
    expect(issues.find((i) => i.path === 'spec.tools[4].http.url')?.message).toMatch(/unencoded/);
    expect(byPath['spec.tools[5].http.url']).toMatch(/\{q\}/);
    expect(byPath['spec.tools[6].sql.args']).toMatch(/\$1\.\.\$2/);
    expect(byPath['spec.tools[7].parameters']).toMatch(/not a valid JSON Schema/);
    expect(byPath['spec.tools[8].http.url']).toMatch(/credentials in the URL/);
    expect(byPath['spec.tools[9].http.headers[0]']).toMatch(/exactly one of value or valueFrom/);
    expect(byPath['spec.tools[10].name']).toBe('"dup" is already the name of spec.tools[0]');
  });

  it('gives YAML syntax errors a line', () => {
    const result = parseToolSet('apiVersion: earpiece.dev/v1alpha1\nkind: [\n');
    expect(result.ok).toBe(false);
    expect(result.issues[0]?.path).toMatch(/^line \d+/);
    // The parser's own position and excerpt are left out: the path has the line.
    expect(result.issues[0]?.message).not.toMatch(/(column \d+|:)$/);
  });

  it("points a multi-document file's YAML error at the line where the unclosed quote or bracket starts", () => {
    // The parser notices the missing quote at the end of the text, lines after line 5.
    const text = 'kind: ToolSet\n---\nkind: ToolSet\nmetadata:\n  name: "x\nspec:\n  tools: []\n';
    const [first, second] = checkToolSetText(text);
    expect(first).toMatchObject({ document: 1, line: 1, kind: 'ToolSet' });
    expect(second?.line).toBe(3);
    expect(second?.result?.issues[0]).toEqual({
      path: 'line 5',
      message: expect.stringMatching(/^Missing closing "quote$/),
    });
  });

  it('parses Go durations', () => {
    expect(parseDuration('1m30s')).toBe(90_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1.5h')).toBe(5_400_000);
    expect(parseDuration('5')).toBeUndefined();
    expect(parseDuration('')).toBeUndefined();
  });
});

describe('values and secrets', () => {
  const doc = withTools({
    name: 'w',
    http: {
      url: 'https://x.test/',
      headers: [{ name: 'K', valueFrom: { secretKeyRef: { name: 'weather', key: 'key' } } }],
    },
  });

  it('refuses a secretKeyRef only where it must be resolved outside Kubernetes', () => {
    const result = validateToolSet(doc);
    expect(result.ok).toBe(true);
    if (!result.ok) return;
    const issues = unresolvableValues(result.toolset, {});
    expect(issues).toEqual([
      { path: 'spec.tools[0].http.headers[0]', message: expect.stringMatching(/use valueFrom.env/) },
    ]);
  });

  it('renders secretKeyRefs as env vars with one stable, unique name per (secret, key)', () => {
    const result = validateToolSet(doc);
    if (!result.ok) throw new Error('invalid');
    const { toolset, env } = renderForSidecar(result.toolset);
    const name = secretEnvName('weather', 'key');
    expect(env).toEqual([{ name, secretKeyRef: { name: 'weather', key: 'key' } }]);
    expect(toolset.spec.tools[0]?.http?.headers?.[0]).toEqual({ name: 'K', valueFrom: { env: name } });
    expect(JSON.stringify(toolset)).not.toContain('secretKeyRef');
    expect(name).toMatch(/^[A-Z_][A-Z0-9_]*$/);
    expect(secretEnvName('a-b', 'c')).not.toBe(secretEnvName('a', 'b-c'));
    expect(secretEnvName('a.b', 'c')).not.toBe(secretEnvName('a-b', 'c'));
  });

  it('finds every secretKeyRef with the path of its field, the ones the sidecar gets and no others', () => {
    const ref = (name: string, key: string) => ({ valueFrom: { secretKeyRef: { name, key } } });
    const result = validateToolSet({
      ...base,
      spec: {
        upstream: { apiKey: ref('vllm', 'api-key') },
        sharedState: { redis: { url: ref('redis', 'url') } },
        tools: [
          {
            name: 'w',
            // A parameter literally named valueFrom is part of a JSON Schema, not a reference.
            parameters: {
              type: 'object',
              properties: { valueFrom: { type: 'object', secretKeyRef: { name: 'no', key: 'no' } } },
            },
            http: {
              url: 'https://w.example/',
              headers: [
                { name: 'A', value: 'plain' },
                { name: 'B', ...ref('weather', 'key') },
              ],
            },
          },
          {
            mcp: {
              url: 'https://ha.example/mcp',
              headers: [{ name: 'Authorization', ...ref('ha', 'token') }],
            },
          },
          {
            name: 'q',
            parameters: { type: 'object' },
            sql: { connection: ref('orders-db', 'url'), query: 'SELECT 1' },
          },
        ],
      },
    });
    expect(result.issues).toEqual([]);
    if (!result.ok) return;
    const refs = secretRefs(result.toolset.spec);
    expect(refs).toEqual([
      { path: 'spec.upstream.apiKey.valueFrom.secretKeyRef', name: 'vllm', key: 'api-key' },
      { path: 'spec.sharedState.redis.url.valueFrom.secretKeyRef', name: 'redis', key: 'url' },
      { path: 'spec.tools[0].http.headers[1].valueFrom.secretKeyRef', name: 'weather', key: 'key' },
      { path: 'spec.tools[1].mcp.headers[0].valueFrom.secretKeyRef', name: 'ha', key: 'token' },
      { path: 'spec.tools[2].sql.connection.valueFrom.secretKeyRef', name: 'orders-db', key: 'url' },
    ]);
    // One walk for both: the sidecar's environment names exactly these Secret keys.
    expect(
      renderForSidecar(result.toolset)
        .env.map((e) => e.secretKeyRef)
        .sort((a, b) => a.name.localeCompare(b.name)),
    ).toEqual(refs.map(({ name, key }) => ({ name, key })).sort((a, b) => a.name.localeCompare(b.name)));
    // A spec admitted unchecked is read as far as it goes.
    expect(
      secretRefs({ tools: 'none', upstream: { apiKey: { valueFrom: { secretKeyRef: { name: 7 } } } } }),
    ).toEqual([]);
    expect(secretRefs(undefined)).toEqual([]);
  });
});

describe('durations that must be positive', () => {
  it('refuses zero timeouts and ttls, naming the field', () => {
    const doc = {
      ...base,
      spec: {
        limits: { turnTimeout: '0s' },
        memory: { ttl: '0ms' },
        tools: [{ name: 't', builtin: 'time', cache: { ttl: '0m' } }],
      },
    };
    expect(validateToolSet(doc).issues).toEqual([
      { path: 'spec.limits.turnTimeout', message: '"0s" must be longer than zero' },
      { path: 'spec.memory.ttl', message: '"0ms" must be longer than zero' },
      { path: 'spec.tools[0].cache.ttl', message: '"0m" must be longer than zero' },
    ]);
  });
});

describe('durations a Node.js timer cannot hold', () => {
  // A delay of 2^31 ms or more fires after 1 ms, so `turnTimeout: 720h` used to time out every turn.
  it('refuses 2^31 ms and more, naming the largest allowed value', () => {
    expect(parseDuration(MAX_DURATION)).toBe(2 ** 31 - 1);
    const doc = {
      ...base,
      spec: {
        limits: { turnTimeout: '720h', toolTimeout: MAX_DURATION },
        tools: [{ name: 't', builtin: 'time', timeout: '2147483648ms', cache: { ttl: '596h31m23.648s' } }],
      },
    };
    expect(validateToolSet(doc).issues).toEqual([
      {
        path: 'spec.limits.turnTimeout',
        message: '"720h" is longer than the largest allowed duration, 596h31m23.647s',
      },
      {
        path: 'spec.tools[0].timeout',
        message: '"2147483648ms" is longer than the largest allowed duration, 596h31m23.647s',
      },
      {
        path: 'spec.tools[0].cache.ttl',
        message: '"596h31m23.648s" is longer than the largest allowed duration, 596h31m23.647s',
      },
    ]);
  });
});

describe('hostile documents', () => {
  it('refuses a YAML alias bomb with a clear issue instead of expanding it', () => {
    const levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
    for (const [i, name] of [...'bcdefghi'].entries()) {
      const prev = 'abcdefghi'[i];
      levels.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(',')}]`);
    }
    const result = parseToolSet(levels.join('\n'));
    expect(result).toEqual({
      ok: false,
      issues: [
        {
          path: '(yaml)',
          message: 'cannot be read: Excessive alias count indicates a resource exhaustion attack',
        },
      ],
    });
  });

  it('compiles parameter patterns with a linear-time engine, refusing what it cannot express', () => {
    const withPattern = (pattern: string) =>
      withTools({
        name: 'p',
        parameters: { type: 'object', properties: { q: { type: 'string', pattern } } },
        http: { url: 'https://x.test/' },
      });
    expect(validateToolSet(withPattern('^(a+)+$')).issues).toEqual([]);
    expect(validateToolSet(withPattern('^(?=a)a$')).issues).toEqual([
      {
        path: 'spec.tools[0].parameters',
        message: expect.stringMatching(/^is not a valid JSON Schema: .*unsupported Perl syntax/),
      },
    ]);
  });

  it('refuses uniqueItems on items without a primitive type, which ajv checks in quadratic time', () => {
    const withIds = (ids: Record<string, unknown>) =>
      withTools({
        name: 'p',
        parameters: { type: 'object', properties: { ids: { type: 'array', uniqueItems: true, ...ids } } },
        http: { url: 'https://x.test/' },
      });
    for (const items of [{ type: 'integer' }, { type: ['string', 'null'] }]) {
      expect(validateToolSet(withIds({ items })).issues).toEqual([]);
    }
    for (const ids of [
      {},
      { items: {} },
      { items: { type: 'object' } },
      { items: { type: ['string', 'array'] } },
    ]) {
      expect(validateToolSet(withIds(ids)).issues).toEqual([
        {
          path: 'spec.tools[0].parameters.properties.ids',
          message: expect.stringMatching(/^uses uniqueItems on items without a primitive type .*quadratic/),
        },
      ]);
    }
  });

  it('lets go of the parameter schemas it compiled', () => {
    // --expose-gc for this process only, to measure what survives a collection.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const doc = () =>
      withTools(
        ...Array.from({ length: 5 }, (_, i) => ({
          name: `t${i}`,
          parameters: {
            type: 'object',
            properties: { city: { type: 'string', pattern: `^[a-z]{${i + 1}}$` }, n: { type: 'integer' } },
            required: ['city'],
          },
          http: { url: 'https://x.test/' },
        })),
      );
    for (let i = 0; i < 20; i++) validateToolSet(doc());
    gc();
    const before = process.memoryUsage().heapUsed;
    let valid = 0;
    for (let i = 0; i < 400; i++) valid += Number(validateToolSet(doc()).ok);
    gc();
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    expect(valid).toBe(400);
    // Kept schemas cost about 4 KB each: these 2,000 would hold 8 MB.
    expect(grown).toBeLessThan(2 * 1024 * 1024);
  });
});

describe('sql without query', () => {
  const sqlTool = (parameters?: Record<string, unknown>) =>
    withTools({
      name: 'q',
      sql: { connection: { value: 'postgres://x' } },
      ...(parameters ? { parameters } : {}),
    });

  it('accepts parameters that describe the "sql" argument', () => {
    const parameters = {
      type: 'object',
      properties: { sql: { type: 'string', description: 'SELECT from orders(id, total) only.' } },
      required: ['sql'],
    };
    expect(validateToolSet(sqlTool(parameters)).issues).toEqual([]);
  });

  it('refuses parameters the tool cannot take', () => {
    const issues = validateToolSet(
      sqlTool({ type: 'object', properties: { sql: { type: 'integer' }, table: { type: 'string' } } }),
    ).issues;
    expect(issues).toEqual([
      {
        path: 'spec.tools[0].parameters.properties.sql',
        message: expect.stringMatching(/^must be declared with type "string"/),
      },
      {
        path: 'spec.tools[0].parameters.properties.table',
        message: 'is not an argument of sql without query, which takes only "sql"',
      },
    ]);
  });
});

describe('rate limits and shared state', () => {
  it('resolves a rate limit, burst defaulting to requests, on tools and mcp entries', () => {
    const result = validateToolSet(
      withTools(
        { name: 'w', builtin: 'time', rateLimit: { requests: 60, per: '1m' } },
        { mcp: { url: 'http://ha.test/mcp' }, rateLimit: { requests: 10, per: '1s', burst: 2 } },
      ),
    );
    expect(result.issues).toEqual([]);
    if (!result.ok) return;
    expect(resolveToolSet(result.toolset).tools.map((t) => t.rateLimit)).toEqual([
      { requests: 60, perMs: 60_000, burst: 60 },
      { requests: 10, perMs: 1000, burst: 2 },
    ]);
  });

  it('refuses a burst above requests, a zero window and a malformed limit, naming the field', () => {
    const issues = validateToolSet(
      withTools(
        { name: 'a', builtin: 'time', rateLimit: { requests: 5, per: '1m', burst: 6 } },
        { name: 'b', builtin: 'time', rateLimit: { requests: 5, per: '0s' } },
        { name: 'c', builtin: 'time', rateLimit: { requests: 0, per: 'soon' } },
      ),
    ).issues;
    expect(issues).toEqual(
      expect.arrayContaining([
        {
          path: 'spec.tools[0].rateLimit.burst',
          message: '6 is more than requests (5); a burst can only spread a quota, not add to it',
        },
        { path: 'spec.tools[1].rateLimit.per', message: '"0s" must be longer than zero' },
        { path: 'spec.tools[2].rateLimit.requests', message: expect.stringMatching(/>= 1/) },
        { path: 'spec.tools[2].rateLimit.per', message: '"soon" is not a duration (use 500ms, 5s, 10m)' },
      ]),
    );
  });

  it('takes the Redis URL as a value, checks a literal one without echoing it, and resolves it', () => {
    const shared = (url: Record<string, unknown>) => ({
      ...base,
      spec: { ...base.spec, sharedState: { redis: { url } } },
    });
    expect(validateToolSet(shared({ valueFrom: { env: 'REDIS_URL' } })).issues).toEqual([]);
    const bad = validateToolSet(shared({ value: 'http://:hunter2@redis:6379' })).issues;
    expect(bad).toEqual([
      { path: 'spec.sharedState.redis.url.value', message: 'is not a redis:// or rediss:// URL with a host' },
    ]);
    expect(JSON.stringify(bad)).not.toContain('hunter2');
    expect(validateToolSet(shared({ value: 'redis://r', valueFrom: { env: 'X' } })).issues).toEqual([
      { path: 'spec.sharedState.redis.url', message: 'needs exactly one of value or valueFrom' },
    ]);
    const ok = validateToolSet(shared({ valueFrom: { env: 'REDIS_URL' } }));
    if (!ok.ok) throw new Error('invalid');
    expect(resolveToolSet(ok.toolset).sharedState).toEqual({ redisUrl: { valueFrom: { env: 'REDIS_URL' } } });
    expect(unresolvableValues(ok.toolset, {})).toEqual([
      { path: 'spec.sharedState.redis.url', message: 'environment variable REDIS_URL is not set' },
    ]);
  });

  it('renders a Redis URL from a Secret as a sidecar env var, like every secretKeyRef', () => {
    const result = validateToolSet({
      ...base,
      spec: {
        ...base.spec,
        sharedState: { redis: { url: { valueFrom: { secretKeyRef: { name: 'redis', key: 'url' } } } } },
      },
    });
    if (!result.ok) throw new Error('invalid');
    const { toolset, env } = renderForSidecar(result.toolset);
    const name = secretEnvName('redis', 'url');
    expect(env).toEqual([{ name, secretKeyRef: { name: 'redis', key: 'url' } }]);
    expect(toolset.spec.sharedState).toEqual({ redis: { url: { valueFrom: { env: name } } } });
  });
});

describe('voice lines and deferred calls', () => {
  it('takes a string or a map by language, and applies the voice defaults', () => {
    const doc = {
      ...base,
      spec: {
        voice: { filler: { en: 'One moment. ', fr: 'Un instant. ' }, stillWorkingAfter: '2s' },
        tools: [
          { name: 't', builtin: 'time', timeout: '10s', deferAfter: '4s', filler: { fr: 'Je regarde. ' } },
        ],
      },
    };
    const result = validateToolSet(doc);
    expect(result.issues).toEqual([]);
    if (!result.ok) return;
    const resolved = resolveToolSet(result.toolset);
    expect(resolved.voice).toEqual({
      filler: { en: 'One moment. ', fr: 'Un instant. ' },
      errorMessage: "Sorry, I couldn't do that right now. ",
      stillWorking: 'Still working on it. ',
      stillWorkingAfterMs: 2000,
      speakable: true,
    });
    expect(resolved.tools[0]).toMatchObject({
      deferAfterMs: 4000,
      timeoutMs: 10000,
      filler: { fr: 'Je regarde. ' },
    });
  });

  it('names each malformed voice line', () => {
    const doc = {
      ...base,
      spec: {
        voice: { filler: 3, errorMessage: { English: 'Sorry. ' }, stillWorking: { en: 1 } },
        tools: [{ name: 't', builtin: 'time', filler: {} }],
      },
    };
    expect(validateToolSet(doc).issues).toEqual([
      {
        path: 'spec.voice.filler',
        message: 'must be a string, or a map from a language tag such as en or fr to a string',
      },
      {
        path: 'spec.voice.errorMessage.English',
        message: 'is not a primary language tag (two or three lower-case letters, such as en or fr)',
      },
      { path: 'spec.voice.stillWorking.en', message: 'must be a string' },
      {
        path: 'spec.tools[0].filler',
        message:
          'must be a string, or a map from a language tag such as en or fr to a string (the map is empty)',
      },
    ]);
  });

  it('wants deferAfter below the timeout, and tool memory to deliver the late result through', () => {
    const doc = {
      ...base,
      spec: {
        limits: { toolTimeout: '3s' },
        memory: { turns: 0 },
        tools: [
          { name: 'a', builtin: 'time', deferAfter: '3s' },
          { name: 'b', builtin: 'time', timeout: '10s', deferAfter: '0s' },
          { name: 'c', builtin: 'time', timeout: '10s', deferAfter: '2s', memory: false },
        ],
      },
    };
    const messages = validateToolSet(doc).issues.map((i) => `${i.path}: ${i.message}`);
    expect(messages).toEqual([
      'spec.tools[1].deferAfter: "0s" must be longer than zero',
      `spec.tools[0].deferAfter: "3s" must be shorter than the tool's timeout (3s): the call runs on after it`,
      'spec.tools[0].deferAfter: needs spec.memory.turns above 0: a late result reaches the next turn through tool memory',
      'spec.tools[1].deferAfter: needs spec.memory.turns above 0: a late result reaches the next turn through tool memory',
      'spec.tools[2].deferAfter: needs spec.memory.turns above 0: a late result reaches the next turn through tool memory',
      'spec.tools[2].deferAfter: needs memory: true on the tool: a late result reaches the next turn through tool memory',
    ]);
  });
});

describe('ToolSet files written by the demo and the benchmark', () => {
  it('writeToolSetFile writes a document that loads back as the same spec', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-toolset-file-'));
    try {
      const spec = { instructions: 'Be brief.', tools: [{ name: 'now', builtin: 'time' }] };
      const path = await writeToolSetFile(dir, 'written', spec);
      expect(path).toBe(join(dir, 'toolset.yaml'));
      const loaded = await loadToolSetFile(path, {});
      expect(loaded.ok).toBe(true);
      if (loaded.ok) {
        expect(loaded.toolset.name).toBe('written');
        expect(loaded.toolset.instructions).toBe('Be brief.');
      }
      expect(toolSetDocument('written', spec)).toEqual({
        apiVersion: 'earpiece.dev/v1alpha1',
        kind: 'ToolSet',
        metadata: { name: 'written' },
        spec,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('ToolSet size', () => {
  it('takes a ToolSet whose ConfigMap configuration is exactly the limit, which the proxy then loads', async () => {
    const toolset = toolSetOfSize(MAX_TOOLSET_BYTES);
    expect(validateToolSet(toolset).issues).toEqual([]);
    const text = renderConfigMap(toolset).data?.[CONFIG_KEY] ?? '';
    expect(Buffer.byteLength(text)).toBe(MAX_TOOLSET_BYTES);
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-size-'));
    try {
      await writeFile(join(dir, 'toolset.yaml'), text);
      expect((await loadToolSetFile(join(dir, 'toolset.yaml'), {})).ok).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses one byte more, naming the size and the limit', () => {
    const result = validateToolSet(toolSetOfSize(MAX_TOOLSET_BYTES + 1));
    expect(result.issues).toEqual([
      {
        path: 'spec',
        message: `renders to ${MAX_TOOLSET_BYTES + 1} bytes of configuration, more than the ${MAX_TOOLSET_BYTES} (1008 KiB) a ToolSet may have, as its ConfigMap holds at most 1 MiB; shorten tool descriptions, parameter schemas or instructions, or move tools to an MCP server`,
      },
    ]);
  });

  it("counts the longest namespace for a ToolSet that names none, as it is rendered into its pods'", () => {
    const toolset = toolSetOfSize(MAX_TOOLSET_BYTES - 40);
    delete toolset.metadata.namespace;
    // Without a namespace it renders shorter, but injection may put it into one of 63 characters.
    expect(validateToolSet(toolset).ok).toBe(false);
  });
});
