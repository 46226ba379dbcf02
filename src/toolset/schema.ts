/**
 * The one ToolSet schema. Runtime validation (ajv), the TypeScript types (TypeBox `Static`) and the
 * CustomResourceDefinition (crd.ts) are all derived from it, so the three can never disagree. The proxy
 * validates with standalone code generated from it (validator-gen.ts), so TypeBox, some 20 MB of
 * modules, is never loaded at run time: everything else imports this file for its types only.
 *
 * The schema is kept structural (every property declared, no `oneOf` between shapes) because the
 * Kubernetes API server requires that of a CRD. Rules that span fields ("exactly one of http, mcp,
 * sql, builtin") live in validate.ts and, for the CRD, as CEL rules in crd.ts.
 */
import { type Static, type TSchema, Type } from '@sinclair/typebox';
import { API_GROUP, API_VERSION, KIND } from './api.js';

export { API_GROUP, API_VERSION, KIND };

/** A string enum as plain `enum` (not anyOf of consts): one clear error, and what a CRD expects. */
function StringEnum<const T extends readonly string[]>(values: T, options: Record<string, unknown> = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/** Go-style duration, as Kubernetes writes them: `500ms`, `5s`, `1m30s`. Checked by the `duration` format. */
export const Duration = Type.String({
  format: 'duration',
  description: 'Go-style duration such as 500ms, 5s or 10m.',
});

export const SecretKeyRef = Type.Object(
  { name: Type.String({ minLength: 1 }), key: Type.String({ minLength: 1 }) },
  {
    additionalProperties: false,
    description: 'A key of a Secret in the ToolSet namespace (in-cluster only).',
  },
);

export const ValueFrom = Type.Object(
  {
    env: Type.Optional(
      Type.String({ minLength: 1, description: 'Name of an environment variable of the proxy.' }),
    ),
    secretKeyRef: Type.Optional(SecretKeyRef),
  },
  { additionalProperties: false },
);

/** `{ value }` or `{ valueFrom: { env } }` or `{ valueFrom: { secretKeyRef } }`; exactly one (validate.ts). */
export const Value = Type.Object(
  { value: Type.Optional(Type.String()), valueFrom: Type.Optional(ValueFrom) },
  { additionalProperties: false },
);

export const Header = Type.Object(
  {
    name: Type.String({ minLength: 1, pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$" }),
    value: Type.Optional(Type.String()),
    valueFrom: Type.Optional(ValueFrom),
  },
  { additionalProperties: false },
);

export const LabelSelector = Type.Object(
  {
    matchLabels: Type.Optional(Type.Record(Type.String(), Type.String())),
    matchExpressions: Type.Optional(
      Type.Array(
        Type.Object(
          {
            key: Type.String(),
            operator: StringEnum(['In', 'NotIn', 'Exists', 'DoesNotExist']),
            values: Type.Optional(Type.Array(Type.String())),
          },
          { additionalProperties: false },
        ),
      ),
    ),
  },
  { additionalProperties: false },
);

export const HttpTool = Type.Object(
  {
    method: Type.Optional(StringEnum(['GET', 'POST', 'PUT', 'PATCH', 'DELETE'])),
    url: Type.String({
      minLength: 1,
      description:
        'RFC 6570 URL template; arguments are percent-encoded and never change the scheme or host.',
    }),
    headers: Type.Optional(Type.Array(Header)),
    select: Type.Optional(Type.String({ description: 'JSON Pointer into the JSON response.' })),
  },
  { additionalProperties: false },
);

export const McpTool = Type.Object(
  {
    url: Type.String({ minLength: 1, description: 'Streamable HTTP endpoint (falls back to HTTP+SSE).' }),
    headers: Type.Optional(Type.Array(Header)),
    include: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    prefix: Type.Optional(Type.String({ pattern: '^[a-zA-Z0-9_-]*$' })),
  },
  { additionalProperties: false },
);

export const SqlTool = Type.Object(
  {
    connection: Value,
    query: Type.Optional(Type.String({ minLength: 1 })),
    args: Type.Optional(Type.Array(Type.String({ minLength: 1 }))),
    maxRows: Type.Optional(Type.Integer({ minimum: 1, maximum: 10000 })),
  },
  { additionalProperties: false },
);

export const RateLimit = Type.Object(
  {
    requests: Type.Integer({
      minimum: 1,
      maximum: 100000,
      description:
        'Most calls that may start in any window of length `per` (60 with per: 1m holds a 60-a-minute quota).',
    }),
    per: Type.String({
      format: 'duration',
      description: 'Length of the sliding window, a Go-style duration such as 1s, 1m or 1h.',
    }),
    burst: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 100000,
        description:
          'Most calls that may start back to back: at most `burst` in any stretch of burst × per / requests, so a quota is spread over its window. At most `requests`; defaults to `requests`.',
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      'A quota checked before each run of the tool (cache hits and shared in-flight calls do not count). A call over it becomes a short "busy" result the model answers from. Per sidecar, or across every sidecar of the ToolSet with spec.sharedState. On an mcp entry, each of its tools gets this quota of its own.',
  },
);

export const SharedState = Type.Object(
  {
    redis: Type.Object(
      {
        url: Type.Object(Value.properties, {
          additionalProperties: false,
          description:
            'redis:// or rediss:// URL of a Redis or Valkey server, with its password if any: usually valueFrom a secretKeyRef (in a pod) or an env variable.',
        }),
      },
      {
        additionalProperties: false,
        description:
          'A Redis (or Valkey) every sidecar of this ToolSet reaches. When it is down or slower than 50 ms, each sidecar falls back to its own cache and limits and reconnects with backoff.',
      },
    ),
  },
  {
    additionalProperties: false,
    description:
      'State shared by every sidecar of this ToolSet: rate limits hold across the fleet, cached results are shared, and identical calls in flight run once. Without it, each sidecar keeps its own.',
  },
);

export const BUILTINS = ['time', 'calculator'] as const;
export const Builtin = StringEnum(BUILTINS);

export const TOOL_NAME_PATTERN = '^[a-zA-Z0-9_-]{1,64}$';

/** JSON Schema for a tool's arguments; kept free-form (x-kubernetes-preserve-unknown-fields in the CRD). */
export const Parameters = Type.Object(
  {},
  { additionalProperties: true, 'x-kubernetes-preserve-unknown-fields': true },
);

export const Tool = Type.Object(
  {
    name: Type.Optional(Type.String({ pattern: TOOL_NAME_PATTERN })),
    description: Type.Optional(Type.String()),
    parameters: Type.Optional(Parameters),
    timeout: Type.Optional(Duration),
    cache: Type.Optional(Type.Object({ ttl: Duration }, { additionalProperties: false })),
    rateLimit: Type.Optional(RateLimit),
    filler: Type.Optional(Type.String()),
    when: Type.Optional(
      Type.Object(
        { keywords: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }) },
        { additionalProperties: false },
      ),
    ),
    onInterrupt: Type.Optional(StringEnum(['cancel', 'finish'])),
    memory: Type.Optional(
      Type.Boolean({ description: 'false: results are never remembered past the turn.' }),
    ),
    http: Type.Optional(HttpTool),
    mcp: Type.Optional(McpTool),
    sql: Type.Optional(SqlTool),
    builtin: Type.Optional(Builtin),
  },
  { additionalProperties: false },
);

export const Spec = Type.Object(
  {
    selector: Type.Optional(LabelSelector),
    upstream: Type.Optional(
      Type.Object(
        {
          url: Type.Optional(Type.String({ pattern: '^https?://', description: 'Base URL without /v1.' })),
          apiKey: Type.Optional(Value),
          disableThinking: Type.Optional(Type.Boolean()),
        },
        { additionalProperties: false },
      ),
    ),
    limits: Type.Optional(
      Type.Object(
        {
          maxIterations: Type.Optional(Type.Integer({ minimum: 1, maximum: 20 })),
          turnTimeout: Type.Optional(Duration),
          toolTimeout: Type.Optional(Duration),
          maxParallelCalls: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
          maxResultBytes: Type.Optional(Type.Integer({ minimum: 64, maximum: 1048576 })),
        },
        { additionalProperties: false },
      ),
    ),
    voice: Type.Optional(
      Type.Object(
        { filler: Type.Optional(Type.String()), errorMessage: Type.Optional(Type.String()) },
        { additionalProperties: false },
      ),
    ),
    instructions: Type.Optional(Type.String()),
    cache: Type.Optional(
      Type.Object(
        { maxEntries: Type.Optional(Type.Integer({ minimum: 0 })) },
        { additionalProperties: false },
      ),
    ),
    memory: Type.Optional(
      Type.Object(
        {
          turns: Type.Optional(Type.Integer({ minimum: 0, maximum: 32 })),
          ttl: Type.Optional(Duration),
          maxBytes: Type.Optional(Type.Integer({ minimum: 0 })),
        },
        { additionalProperties: false },
      ),
    ),
    sharedState: Type.Optional(SharedState),
    tools: Type.Array(Tool, { maxItems: 128 }),
  },
  { additionalProperties: false },
);

export const Condition = Type.Object({
  type: Type.String(),
  status: StringEnum(['True', 'False', 'Unknown']),
  reason: Type.String(),
  message: Type.String(),
  lastTransitionTime: Type.String({ format: 'date-time' }),
  observedGeneration: Type.Optional(Type.Integer()),
});

export const Status = Type.Object({
  observedGeneration: Type.Optional(Type.Integer()),
  tools: Type.Optional(Type.Integer()),
  conditions: Type.Optional(Type.Array(Condition)),
});

export const ToolSetSchema = Type.Object(
  {
    apiVersion: StringEnum([`${API_GROUP}/${API_VERSION}`] as const),
    kind: StringEnum([KIND] as const),
    metadata: Type.Object(
      {
        name: Type.String({ minLength: 1 }),
        namespace: Type.Optional(Type.String()),
        labels: Type.Optional(Type.Record(Type.String(), Type.String())),
        annotations: Type.Optional(Type.Record(Type.String(), Type.String())),
        generation: Type.Optional(Type.Integer()),
        uid: Type.Optional(Type.String()),
        resourceVersion: Type.Optional(Type.String()),
      },
      { additionalProperties: true },
    ),
    spec: Spec,
    status: Type.Optional(Status),
  },
  { additionalProperties: false },
);

export type ValueRef = Static<typeof Value>;
export type HeaderSpec = Static<typeof Header>;
export type HttpToolSpec = Static<typeof HttpTool>;
export type McpToolSpec = Static<typeof McpTool>;
export type SqlToolSpec = Static<typeof SqlTool>;
export type RateLimitSpec = Static<typeof RateLimit>;
export type SharedStateSpec = Static<typeof SharedState>;
export type BuiltinName = (typeof BUILTINS)[number];
export type ToolSpec = Static<typeof Tool>;
export type ToolSetSpec = Static<typeof Spec>;
export type ToolSetStatus = Static<typeof Status>;
export type StatusCondition = Static<typeof Condition>;
export type LabelSelectorSpec = Static<typeof LabelSelector>;
export type ToolSet = Static<typeof ToolSetSchema>;
export type JsonSchema = TSchema | Record<string, unknown>;
