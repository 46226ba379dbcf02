import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { run } from '@bufbuild/cel';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import { describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import {
  CRD_FILE,
  MAX_TOOLS,
  renderCrdYaml,
  toolSetCrd,
  toolSetOpenApiSchema,
} from '../../src/toolset/crd.js';
import { validateToolSet } from '../../src/toolset/index.js';

type Schema = Record<string, unknown>;
type Rule = { rule: string; message: string; messageExpression?: string; fieldPath?: string };

/** Every schema node of the CRD with its path, `[]` for list items and `{}` for map values. */
function* nodes(schema: Schema, path = ''): Generator<[string, Schema]> {
  yield [path, schema];
  for (const [name, s] of Object.entries((schema.properties ?? {}) as Record<string, Schema>))
    yield* nodes(s, path ? `${path}.${name}` : name);
  if (schema.items) yield* nodes(schema.items as Schema, `${path}[]`);
  if (typeof schema.additionalProperties === 'object')
    yield* nodes(schema.additionalProperties as Schema, `${path}{}`);
}

/**
 * What `kubectl apply` (strict field validation) and the API server check with this CRD: the OpenAPI
 * schema with unknown fields refused, then every CEL rule at the place it is declared.
 */
function crdIssues(doc: unknown): string[] {
  const strict = (schema: Schema): Schema => {
    const out: Schema = { ...schema };
    if (schema.properties && !schema['x-kubernetes-preserve-unknown-fields']) {
      out.properties = Object.fromEntries(
        Object.entries(schema.properties as Record<string, Schema>).map(([k, s]) => [k, strict(s)]),
      );
      out.additionalProperties = false;
    }
    if (schema.items) out.items = strict(schema.items as Schema);
    return out;
  };
  const ajv = new Ajv({ allErrors: true, strict: false });
  addFormats.default(ajv);
  const validate = ajv.compile(strict(toolSetOpenApiSchema()));
  if (!validate(doc)) return (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message}`);

  const issues: string[] = [];
  const visit = (schema: Schema, value: unknown, path: string) => {
    if (value === undefined || value === null) return;
    for (const { rule, message, messageExpression, fieldPath } of (schema['x-kubernetes-validations'] ??
      []) as Rule[]) {
      if (run(rule, { self: value as never }) === true) continue;
      // As the API server reports it: at fieldPath, with the messageExpression's text.
      const text = messageExpression ? String(run(messageExpression, { self: value as never })) : message;
      issues.push(`${path}${fieldPath ?? ''}: ${text}`);
    }
    if (Array.isArray(value) && schema.items)
      for (const [i, v] of value.entries()) visit(schema.items as Schema, v, `${path}[${i}]`);
    if (!Array.isArray(value) && typeof value === 'object')
      for (const [k, s] of Object.entries((schema.properties ?? {}) as Record<string, Schema>))
        visit(s, (value as Record<string, unknown>)[k], path ? `${path}.${k}` : k);
  };
  visit(toolSetOpenApiSchema(), doc, '');
  return issues;
}

const base = {
  apiVersion: 'earpiece.dev/v1alpha1',
  kind: 'ToolSet',
  metadata: { name: 'a', namespace: 'voice' },
};
const toolset = (spec: Record<string, unknown>) => ({ ...base, spec });
const secret = (name: string, key: string) => ({ valueFrom: { secretKeyRef: { name, key } } });
const weather = {
  name: 'get_weather',
  description: 'Weather.',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  timeout: '3s',
  cache: { ttl: '10m' },
  http: { url: 'https://w.example/{city}', headers: [{ name: 'X-Key', ...secret('weather', 'key') }] },
};

describe('the ToolSet CRD', () => {
  it(`is up to date in ${CRD_FILE}`, async () => {
    const onDisk = await readFile(CRD_FILE, 'utf8').catch(() => '');
    // A plain boolean keeps the failure message short and to the point.
    expect(onDisk === renderCrdYaml(), `${CRD_FILE} is stale: run npm run gen:crd`).toBe(true);
    expect(parse(onDisk)).toEqual(toolSetCrd());
  });

  it('is a structural schema: every field typed, no unions, free JSON only where declared', () => {
    const schema = toolSetOpenApiSchema();
    const all = [...nodes(schema)];
    // Voice lines are a string or a map by language: free-form JSON, as the API server allows, shaped by a CEL rule.
    const voiceLines = [
      'spec.voice.filler',
      'spec.voice.errorMessage',
      'spec.voice.stillWorking',
      'spec.tools[].filler',
    ];
    for (const [path, node] of all) {
      if (voiceLines.includes(path)) {
        expect(node).toMatchObject({ 'x-kubernetes-preserve-unknown-fields': true });
        expect(node).not.toHaveProperty('properties');
        expect((node['x-kubernetes-validations'] as unknown[]).length, `${path} has its rule`).toBe(1);
        continue;
      }
      expect(node.type, `${path || '(root)'} has a type`).toBeTypeOf('string');
      for (const keyword of ['oneOf', 'anyOf', 'allOf', 'not', '$ref', 'patternProperties', 'const'])
        expect(node, `${path} uses ${keyword}`).not.toHaveProperty(keyword);
      if (node.properties)
        expect(node, `${path}: properties beside additionalProperties`).not.toHaveProperty(
          'additionalProperties',
        );
      if (node.format) expect(node.format, `${path} format`).toBe('date-time');
    }
    const free = all.filter(([, n]) => n['x-kubernetes-preserve-unknown-fields']).map(([p]) => p);
    expect(free.sort()).toEqual(['spec.tools[].parameters', ...voiceLines].sort());
    expect(Object.fromEntries(all)['spec.tools[].parameters']).toEqual({
      type: 'object',
      description: expect.stringContaining('JSON Schema'),
      'x-kubernetes-preserve-unknown-fields': true,
    });
    expect(Object.fromEntries(all).metadata).toEqual({ type: 'object' });
    // Durations are checked by pattern, as the runtime's `duration` format does.
    expect(Object.fromEntries(all)['spec.limits.turnTimeout']?.pattern).toBe(
      '^(?:\\d+(?:\\.\\d+)?(?:ns|us|µs|ms|s|m|h))+$',
    );
  });

  it('has the status subresource, printer columns, short name and list-map conditions', () => {
    const crd = toolSetCrd() as { spec: Record<string, unknown> };
    const version = (crd.spec.versions as Record<string, unknown>[])[0] as Record<string, unknown>;
    expect(crd.spec.names).toMatchObject({ plural: 'toolsets', kind: 'ToolSet', shortNames: ['ts'] });
    expect(version.subresources).toEqual({ status: {} });
    expect((version.additionalPrinterColumns as { name: string }[]).map((c) => c.name)).toEqual([
      'Ready',
      'Tools',
      'Pods',
      'Reason',
      'Age',
    ]);
    const conditions = Object.fromEntries(nodes(toolSetOpenApiSchema()))['status.conditions'];
    expect(conditions).toMatchObject({
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['type'],
    });
    expect((conditions?.items as Schema | undefined)?.required).toContain('type');
  });

  it('accepts every example ToolSet, as the runtime validator does', async () => {
    const files = (await readdir('examples')).filter((f) => /\.ya?ml$/.test(f));
    let checked = 0;
    for (const file of files) {
      for (const document of parseAllDocuments(await readFile(`examples/${file}`, 'utf8'))) {
        const doc = document.toJS();
        if (doc?.kind !== 'ToolSet') continue;
        checked++;
        expect(validateToolSet(doc).issues, file).toEqual([]);
        expect(crdIssues(doc), file).toEqual([]);
      }
    }
    expect(checked).toBeGreaterThan(0);
  });

  // The runtime's verdict and the API server's agree on each of these.
  const agreeing: [string, unknown, boolean][] = [
    [
      'secrets, mcp, sql and builtins',
      toolset({
        selector: {
          matchLabels: { app: 'unmute-backend' },
          matchExpressions: [{ key: 'tier', operator: 'Exists' }],
        },
        upstream: { url: 'http://vllm:8000', apiKey: secret('vllm', 'token') },
        limits: { turnTimeout: '1m30s', toolTimeout: '500ms' },
        memory: { turns: 2, ttl: '15m' },
        tools: [
          weather,
          {
            mcp: {
              url: 'http://ha:8123/api/mcp',
              headers: [{ name: 'Authorization', ...secret('ha', 'bearer') }],
              include: ['HassTurnOn'],
              prefix: 'home_',
            },
            onInterrupt: 'finish',
          },
          {
            name: 'orders',
            description: 'Orders.',
            parameters: { type: 'object', properties: { id: { type: 'string' } } },
            sql: { connection: secret('db', 'url'), query: 'SELECT 1 WHERE $1 = $1', args: ['id'] },
          },
          { name: 'now', builtin: 'time' },
        ],
      }),
      true,
    ],
    [
      'two executors',
      toolset({ tools: [{ name: 'x', builtin: 'time', http: { url: 'https://x' } }] }),
      false,
    ],
    ['no executor', toolset({ tools: [{ name: 'x' }] }), false],
    [
      'a duplicate tool name',
      toolset({
        tools: [
          { name: 'x', builtin: 'time' },
          { name: 'x', builtin: 'calculator' },
        ],
      }),
      false,
    ],
    ['a bad duration', toolset({ limits: { turnTimeout: 'soon' }, tools: [] }), false],
    ['a duration without unit', toolset({ tools: [{ name: 'x', builtin: 'time', timeout: '5' }] }), false],
    [
      'value and valueFrom together',
      toolset({ upstream: { apiKey: { value: 'k', valueFrom: { env: 'K' } } }, tools: [] }),
      false,
    ],
    ['neither value nor valueFrom', toolset({ upstream: { apiKey: {} }, tools: [] }), false],
    [
      'env and secretKeyRef together',
      toolset({
        upstream: { apiKey: { valueFrom: { env: 'K', secretKeyRef: { name: 'a', key: 'b' } } } },
        tools: [],
      }),
      false,
    ],
    [
      'a header with two values',
      toolset({
        tools: [
          {
            ...weather,
            http: { url: 'https://x', headers: [{ name: 'A', value: 'a', valueFrom: { env: 'A' } }] },
          },
        ],
      }),
      false,
    ],
    ['an mcp entry with a name', toolset({ tools: [{ name: 'x', mcp: { url: 'http://m' } }] }), false],
    ['an http tool without a name', toolset({ tools: [{ http: { url: 'https://x' } }] }), false],
    ['an unknown field', toolset({ tools: [], extra: true }), false],
    ['a bad tool name', toolset({ tools: [{ name: 'no spaces', builtin: 'time' }] }), false],
    ['an unknown builtin', toolset({ tools: [{ name: 'x', builtin: 'clock' }] }), false],
    ['an upstream that is not http', toolset({ upstream: { url: 'ftp://x' }, tools: [] }), false],
    ['no spec', { ...base }, false],
    [
      'a duration of 2^31 ms, past what a timer holds',
      toolset({ limits: { turnTimeout: '720h' }, tools: [] }),
      false,
    ],
    [
      'the largest duration a timer holds',
      toolset({ limits: { turnTimeout: '596h31m23.647s' }, tools: [] }),
      true,
    ],
    [
      'a URL template whose argument sets the host',
      toolset({ tools: [{ ...weather, http: { url: 'https://{city}.example/' } }] }),
      false,
    ],
    [
      'a URL template whose argument follows the host',
      toolset({ tools: [{ ...weather, http: { url: 'https://w.example{city}' } }] }),
      false,
    ],
    [
      'a URL template with a path and query expression',
      toolset({ tools: [{ ...weather, http: { url: 'https://w.example{/city}{?city}' } }] }),
      true,
    ],
    [
      'voice lines as strings and as maps by language',
      toolset({
        voice: {
          filler: { en: 'One moment. ', fr: 'Un instant. ' },
          stillWorking: '',
          stillWorkingAfter: '2s',
          speakable: false,
        },
        tools: [{ name: 'x', builtin: 'time', filler: { fr: 'Je regarde. ' }, deferAfter: '2s' }],
      }),
      true,
    ],
    ['a voice line that is a number', toolset({ voice: { filler: 3 }, tools: [] }), false],
    [
      'a voice map keyed by a name',
      toolset({ voice: { errorMessage: { English: 'Sorry. ' } }, tools: [] }),
      false,
    ],
    ['a voice map with a non-string', toolset({ voice: { stillWorking: { en: ['a'] } }, tools: [] }), false],
    ['an empty voice map', toolset({ tools: [{ name: 'x', builtin: 'time', filler: {} }] }), false],
    [
      'a name of 63 characters',
      { ...toolset({ tools: [] }), metadata: { name: 'a'.repeat(63), namespace: 'voice' } },
      true,
    ],
    [
      'a name longer than a label value',
      { ...toolset({ tools: [] }), metadata: { name: 'a'.repeat(64), namespace: 'voice' } },
      false,
    ],
  ];
  it.each(agreeing)('agrees with the runtime validator: %s', (_name, doc, valid) => {
    expect(validateToolSet(doc).ok).toBe(valid);
    expect(crdIssues(doc).length === 0).toBe(valid);
  });

  // Checks that need code (templates, SQL placeholders, compiling parameter schemas) stay with the
  // controller, which reports them in the Ready condition; the API server accepts these documents.
  const runtimeOnly: [string, unknown][] = [
    [
      'a URL template variable not declared',
      toolset({ tools: [{ ...weather, http: { url: 'https://x/{town}' } }] }),
    ],
    [
      'SQL placeholders without args',
      toolset({
        tools: [
          {
            name: 'q',
            description: 'q',
            parameters: { type: 'object' },
            sql: { connection: { value: 'postgres://x' }, query: 'SELECT $1' },
          },
        ],
      }),
    ],
    ['an upstream URL ending in /v1', toolset({ upstream: { url: 'http://vllm:8000/v1' }, tools: [] })],
    [
      'deferAfter not below the timeout',
      toolset({ tools: [{ name: 'x', builtin: 'time', timeout: '2s', deferAfter: '2s' }] }),
    ],
    [
      'deferAfter without tool memory',
      toolset({ memory: { turns: 0 }, tools: [{ name: 'x', builtin: 'time', deferAfter: '1s' }] }),
    ],
  ];
  it.each(runtimeOnly)('leaves to the controller: %s', (_name, doc) => {
    expect(validateToolSet(doc).ok).toBe(false);
    expect(crdIssues(doc)).toEqual([]);
  });

  it(`bounds the tool list at ${MAX_TOOLS} so the uniqueness rule stays within the CEL cost budget`, () => {
    const many = Array.from({ length: MAX_TOOLS + 1 }, (_, i) => ({ name: `t${i}`, builtin: 'time' }));
    expect(crdIssues(toolset({ tools: many }))).toEqual(['/spec/tools must NOT have more than 128 items']);
    expect(crdIssues(toolset({ tools: many.slice(1) }))).toEqual([]);
  });

  it('describes every field of spec and status, for kubectl explain', () => {
    const schema = toolSetOpenApiSchema() as { properties: Record<string, Schema> };
    const undescribed = ['spec', 'status'].flatMap((root) =>
      [...nodes(schema.properties[root] as Schema, root)]
        // Properties, which kubectl explain lists; list items and map values are told by their field.
        .filter(([path]) => !/(\[\]|\{\})$/.test(path))
        .filter(([, node]) => typeof node.description !== 'string' || node.description.length < 10)
        .map(([path]) => path),
    );
    expect(undescribed).toEqual([]);
  });

  it('bounds every string and list of spec, so CEL costs and object sizes stay small', () => {
    const spec = (toolSetOpenApiSchema() as { properties: Record<string, Schema> }).properties.spec as Schema;
    const unbounded = [...nodes(spec, 'spec')]
      .filter(
        ([, n]) =>
          (n.type === 'string' && n.enum === undefined && n.maxLength === undefined) ||
          (n.type === 'array' && n.maxItems === undefined),
      )
      .map(([path]) => path);
    expect(unbounded).toEqual([]);
  });

  it('names the offending value (never a URL) and field in its CEL errors', () => {
    const duplicate = toolset({
      tools: [
        { name: 'now', builtin: 'time' },
        { name: 'calc', builtin: 'calculator' },
        { name: 'calc', builtin: 'calculator' },
      ],
    });
    expect(crdIssues(duplicate)).toEqual([
      'spec.tools: tool name "calc" is used more than once; tool names must be unique',
    ]);
    // The URL is not repeated: a key in its query string, or credentials in an mcp URL, would go to the client.
    const host = toolset({ tools: [{ ...weather, http: { url: 'https://{city}.example/?key=s3cret' } }] });
    expect(crdIssues(host)).toEqual([
      'spec.tools[0].http.url: could let an argument change the host: start with http:// or https:// and a literal host, then add arguments to the path or query ({/x}, {?x})',
    ]);
    expect(crdIssues(toolset({ tools: [{ http: { url: 'https://x' } }] }))).toEqual([
      'spec.tools[0].name: name is required (only an mcp entry has none)',
    ]);
    expect(crdIssues(toolset({ tools: [{ name: 'ha', mcp: { url: 'http://me:s3cret@ha/mcp' } }] }))).toEqual([
      'spec.tools[0].mcp: an mcp entry takes its names, descriptions and parameters from the server; remove name (use mcp.prefix to rename)',
    ]);
    expect(
      crdIssues(toolset({ tools: [{ name: 'x', builtin: 'time', sql: { connection: {} } }] })),
    ).toContain('spec.tools[0]: tool x needs exactly one of http, mcp, sql or builtin');
    expect(crdIssues(toolset({ limits: { toolTimeout: '720h' }, tools: [] }))).toEqual([
      'spec.limits.toolTimeout: "720h" is longer than the largest allowed duration, 596h31m23.647s',
    ]);
  });

  it('serves v1alpha1 and marks exactly one version as the storage version', () => {
    const versions = (
      toolSetCrd() as { spec: { versions: { name: string; served: boolean; storage: boolean }[] } }
    ).spec.versions;
    expect(versions.filter((v) => v.storage).map((v) => v.name)).toEqual(['v1alpha1']);
    expect(versions.every((v) => v.served)).toBe(true);
    // The file on disk and the chart's copy say the same.
    for (const file of [CRD_FILE, 'charts/earpiece/files/toolsets.earpiece.dev.yaml']) {
      const onDisk = parse(readFileSync(file, 'utf8')) as typeof versions extends never ? never : Schema;
      const stored = ((onDisk.spec as Schema).versions as { storage: boolean }[]).filter((v) => v.storage);
      expect(stored, file).toHaveLength(1);
    }
  });
});

describe('rate limits and shared state in the CRD', () => {
  it('accepts them as validate.ts does, and refuses a burst above requests', () => {
    const shared = { redis: { url: secret('fleet-redis', 'url') } };
    const limited = (rateLimit: Record<string, unknown>) =>
      toolset({ sharedState: shared, tools: [{ ...weather, rateLimit }] });
    expect(crdIssues(limited({ requests: 60, per: '1m', burst: 10 }))).toEqual([]);
    expect(crdIssues(limited({ requests: 5, per: '1m', burst: 6 }))).toEqual([
      'spec.tools[0].rateLimit: burst cannot be more than requests',
    ]);
    expect(crdIssues(limited({ requests: 5, per: 'soon' }))).toEqual([
      expect.stringMatching(/^\/spec\/tools\/0\/rateLimit\/per must match pattern/),
    ]);
    expect(
      crdIssues(
        toolset({
          sharedState: { redis: { url: { value: 'redis://r', ...secret('a', 'b') } } },
          tools: [weather],
        }),
      ),
    ).toEqual(['spec.sharedState.redis.url: needs exactly one of value or valueFrom']);
  });
});
