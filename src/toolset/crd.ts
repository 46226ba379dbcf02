/**
 * The ToolSet CustomResourceDefinition, built from the one schema in schema.ts. `npm run gen:crd` writes
 * it to crds/; a test regenerates it and fails when the file is stale, and the chart's copy is checked
 * against toolSetCrd() too.
 *
 * The API server wants a structural schema: every field typed, no `patternProperties`, no
 * `additionalProperties: false` beside `properties` (unknown fields are pruned, and rejected by
 * `kubectl apply`'s strict field validation). The walk below turns the TypeBox schema into that form and
 * refuses any keyword it does not know, so a schema change that a CRD cannot express fails the
 * generator instead of producing a CRD that the API server rejects. Rules across fields that
 * validate.ts checks and that are cheap in CEL are added as `x-kubernetes-validations`.
 */
import { stringify } from 'yaml';
import { DURATION_PATTERN, MAX_DURATION } from './duration.js';
import type { ToolSetErrorCode } from './errors.js';
import { API_GROUP, API_VERSION, KIND, Spec, Status, VOICE_TEXT_KEYWORD } from './schema.js';
import { MAX_TOOLSET_NAME } from './validate.js';

export const CRD_NAME = `toolsets.${API_GROUP}`;
export const CRD_FILE = `crds/${CRD_NAME}.yaml`;

/**
 * CEL's cost estimate grows with list length and string size, and the API server refuses rules whose
 * worst case exceeds its budget. Unique tool names compare every name with every other, so the CRD
 * bounds the list (a voice model copes with a handful of tools, never hundreds); schema.ts bounds
 * every string.
 */
export const MAX_TOOLS = 128;

type Schema = Record<string, unknown>;
/**
 * A CEL rule as the API server takes it: `messageExpression` names the offending value in the error
 * (`message` stays as the fallback when it cannot be evaluated), `fieldPath` points the error at the
 * field the rule is about (it cannot index a list, so list-wide rules report the list).
 */
type Rule = {
  rule: string;
  message: string;
  messageExpression?: string;
  fieldPath?: string;
  reason?: string;
};

const EXECUTOR_RULES: Rule[] = [
  {
    rule: '[has(self.http), has(self.mcp), has(self.sql), has(self.builtin)].filter(x, x).size() == 1',
    message: 'needs exactly one of http, mcp, sql or builtin',
    messageExpression:
      "(has(self.name) ? 'tool ' + self.name + ' ' : '') + 'needs exactly one of http, mcp, sql or builtin'",
  },
  {
    rule: 'has(self.mcp) || has(self.name)',
    message: 'name is required (only an mcp entry has none)',
    fieldPath: '.name',
    reason: 'FieldValueRequired',
  },
  {
    rule: '!has(self.mcp) || !(has(self.name) || has(self.description) || has(self.parameters))',
    message: 'an mcp entry takes its names, descriptions and parameters from the server; use mcp.prefix',
    // Not the URL: it may carry credentials (user:pass@) or a key, and the API server's message goes to the
    // client and its logs.
    messageExpression:
      "'an mcp entry takes its names, descriptions and parameters from the server; remove ' + (has(self.name) ? 'name' : has(self.description) ? 'description' : 'parameters') + ' (use mcp.prefix to rename)'",
    fieldPath: '.mcp',
    reason: 'FieldValueForbidden',
  },
];

const UNIQUE_NAMES: Rule = {
  rule: 'self.all(t, !has(t.name) || self.exists_one(u, has(u.name) && u.name == t.name))',
  message: 'tool names must be unique',
  messageExpression:
    "'tool name \"' + self.filter(t, has(t.name) && !self.exists_one(u, has(u.name) && u.name == t.name))[0].name + '\" is used more than once; tool names must be unique'",
  reason: 'FieldValueDuplicate',
};

/**
 * The URL template's origin must be literal, as checkUrlTemplate (url-template.ts) requires: a scheme,
 * a host without expressions, then nothing, a path, a query, or a `{/x}` `{?x}` `{&x}` expression.
 */
const LITERAL_ORIGIN: Rule = {
  rule: "self.matches('^https?://[^/?#{}\\\\s]+($|[/?#]|\\\\{[/?&])')",
  // Not the template itself: a key written into its query string would go to the client and its logs.
  message:
    'could let an argument change the host: start with http:// or https:// and a literal host, then add arguments to the path or query ({/x}, {?x})',
};

/** Node's timers cap a delay at MAX_DURATION; a longer one fires at once, failing every turn. */
const DURATION_CAP: Rule = {
  // The pattern is checked first, as CEL's duration() fails on what is not one.
  rule: `!self.matches('${DURATION_PATTERN.replaceAll('\\', '\\\\')}') || duration(self) <= duration('${MAX_DURATION}')`,
  message: `is longer than the largest allowed duration, ${MAX_DURATION}`,
  messageExpression: `'"' + self + '" is longer than the largest allowed duration, ${MAX_DURATION}'`,
};

/** Extra CRD-only keywords, by the path the walk gives each schema (`[]` stands for list items). */
const AT_PATH: Record<string, Schema> = {
  'spec.tools': { maxItems: MAX_TOOLS, 'x-kubernetes-validations': [UNIQUE_NAMES] },
  'spec.tools[]': { 'x-kubernetes-validations': EXECUTOR_RULES },
  'spec.tools[].http.url': { 'x-kubernetes-validations': [LITERAL_ORIGIN] },
  'spec.tools[].rateLimit': {
    'x-kubernetes-validations': [
      {
        rule: '!has(self.burst) || self.burst <= self.requests',
        message: 'burst cannot be more than requests',
      },
    ],
  },
  // Server-side apply merges conditions by type, as every Kubernetes status does.
  'status.conditions': { 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['type'] },
};

/** Rules by shape, wherever a value or header appears: exactly one source, as validate.ts requires. */
function rulesForShape(properties: Record<string, unknown>): Rule[] {
  const has = (k: string) => k in properties;
  if (has('value') && has('valueFrom')) {
    return [
      { rule: 'has(self.value) != has(self.valueFrom)', message: 'needs exactly one of value or valueFrom' },
    ];
  }
  if (has('env') && has('secretKeyRef')) {
    return [
      {
        rule: 'has(self.env) != has(self.secretKeyRef)',
        message: 'needs exactly one of env or secretKeyRef',
      },
    ];
  }
  return [];
}

/** A voice line is free-form JSON in the CRD (a string-or-map union has no structural type); this rule gives it its shape. */
const VOICE_TEXT_RULE: Rule = {
  rule: "type(self) == string || (type(self) == map && size(self) > 0 && self.all(k, k.matches('^[a-z]{2,3}$') && type(self[k]) == string))",
  message: 'must be a string, or a map from a language tag such as en or fr to a string',
};

const COPIED = [
  'type',
  'description',
  'enum',
  'pattern',
  'minLength',
  'maxLength',
  'minimum',
  'maximum',
  'minItems',
  'maxItems',
  'required',
  'default',
];
const FORMATS_KEPT = new Set(['date-time']);

export class CrdSchemaError extends Error {
  readonly code: ToolSetErrorCode = 'ERP_CRD_SCHEMA';
}

function structural(schema: Schema, path: string): Schema {
  const out: Schema = {};
  for (const [key, value] of Object.entries(schema)) {
    if (COPIED.includes(key)) {
      out[key] = value;
    } else if (key === 'format') {
      if (value === 'duration') {
        out.pattern = DURATION_PATTERN;
        out['x-kubernetes-validations'] = [DURATION_CAP];
      } else if (typeof value === 'string' && FORMATS_KEPT.has(value)) out.format = value;
      else throw new CrdSchemaError(`${path}: format ${String(value)} has no CRD equivalent`);
    } else if (key === 'properties') {
      const props = value as Record<string, Schema>;
      if (Object.keys(props).length === 0) continue;
      out.properties = Object.fromEntries(
        Object.entries(props).map(([name, s]) => [name, structural(s, path ? `${path}.${name}` : name)]),
      );
      const rules = rulesForShape(props);
      if (rules.length) out['x-kubernetes-validations'] = rules;
    } else if (key === 'items') {
      out.items = structural(value as Schema, `${path}[]`);
    } else if (key === 'patternProperties') {
      // TypeBox writes Record<string, T> as one catch-all pattern: a map, which a CRD spells additionalProperties.
      const entries = Object.entries(value as Record<string, Schema>);
      if (entries.length !== 1 || entries[0]?.[0] !== '^(.*)$') {
        throw new CrdSchemaError(`${path}: patternProperties other than a plain map have no CRD equivalent`);
      }
      out.additionalProperties = structural(entries[0][1], `${path}{}`);
    } else if (key === 'additionalProperties') {
      if (value === true && schema['x-kubernetes-preserve-unknown-fields'] !== true) {
        throw new CrdSchemaError(`${path}: free-form objects need x-kubernetes-preserve-unknown-fields`);
      }
      // false: pruning and strict field validation already refuse unknown fields.
    } else if (key === 'x-kubernetes-preserve-unknown-fields') {
      out[key] = value;
    } else if (key === VOICE_TEXT_KEYWORD) {
      out['x-kubernetes-validations'] = [{ ...VOICE_TEXT_RULE }];
    } else {
      throw new CrdSchemaError(`${path}: keyword ${key} has no structural CRD equivalent`);
    }
  }
  const extra = AT_PATH[path];
  if (extra) {
    const rules = [
      ...((out['x-kubernetes-validations'] as Rule[]) ?? []),
      ...((extra['x-kubernetes-validations'] as Rule[]) ?? []),
    ];
    Object.assign(out, extra);
    if (rules.length) out['x-kubernetes-validations'] = rules;
  }
  return ordered(out);
}

const ORDER = ['type', 'description', 'format', 'pattern', 'enum', 'required', 'properties', 'items'];

/** Keys in a reading order (type and description first), so the generated YAML reads like a hand-written CRD. */
function ordered(schema: Schema): Schema {
  const rank = (k: string) => (ORDER.includes(k) ? ORDER.indexOf(k) : ORDER.length);
  return Object.fromEntries(Object.entries(schema).sort(([a], [b]) => rank(a) - rank(b)));
}

/** The openAPIV3Schema of the ToolSet. `metadata` stays `type: object`: the API server owns its schema. */
export function toolSetOpenApiSchema(): Schema {
  // A JSON round trip drops TypeBox's symbol-keyed bookkeeping and copies, so the walk never shares objects.
  const plain = (s: unknown) => JSON.parse(JSON.stringify(s)) as Schema;
  return {
    type: 'object',
    description:
      'Tools for a voice assistant, and the pods in this namespace whose earpiece sidecar uses them.',
    required: ['spec'],
    properties: {
      apiVersion: { type: 'string' },
      kind: { type: 'string' },
      metadata: { type: 'object' },
      spec: structural(plain(Spec), 'spec'),
      status: structural(plain(Status), 'status'),
    },
    // The only metadata a CRD's rules may read is the name; it becomes the ConfigMap's label value.
    'x-kubernetes-validations': [
      {
        rule: `self.metadata.name.size() <= ${MAX_TOOLSET_NAME}`,
        message: `metadata.name must be at most ${MAX_TOOLSET_NAME} characters: it becomes the value of the label earpiece.dev/toolset`,
      },
    ],
  };
}

/** The CustomResourceDefinition object, fresh on each call (the chart test adds its own annotations). */
export function toolSetCrd(): Schema {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: CRD_NAME, labels: { 'app.kubernetes.io/name': 'earpiece' } },
    spec: {
      group: API_GROUP,
      scope: 'Namespaced',
      names: {
        kind: KIND,
        listKind: `${KIND}List`,
        plural: 'toolsets',
        singular: 'toolset',
        shortNames: ['ts'],
        categories: ['earpiece'],
      },
      versions: [
        {
          name: API_VERSION,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="Ready")].status' },
            { name: 'Tools', type: 'integer', jsonPath: '.status.tools' },
            { name: 'Pods', type: 'integer', jsonPath: '.status.pods' },
            {
              name: 'Reason',
              type: 'string',
              priority: 1,
              jsonPath: '.status.conditions[?(@.type=="Ready")].reason',
            },
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          schema: { openAPIV3Schema: toolSetOpenApiSchema() },
        },
      ],
    },
  };
}

/** The text of crds/toolsets.earpiece.dev.yaml. */
export function renderCrdYaml(): string {
  const header =
    '# Generated from src/toolset/schema.ts by `npm run gen:crd`; do not edit.\n' +
    '# Apply with: kubectl apply --server-side -f crds/\n';
  return header + stringify(toolSetCrd(), { lineWidth: 0 });
}
