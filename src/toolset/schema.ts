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

/** Marks a voice line: crd.ts gives it the CEL rule below, validate.ts checks its shape with a clear message. */
export const VOICE_TEXT_KEYWORD = 'x-earpiece-voice-text';

/**
 * A line the proxy speaks: one string, or a map from a BCP 47 primary language tag to the line in that
 * language. A union a CRD cannot type, so the node is free-form JSON there and its shape is a CEL rule.
 */
export function VoiceTextSchema(description: string) {
  return Type.Unsafe<string | Record<string, string>>({
    description: `${description} A string, or a map from a language tag to a string ({ en: "One moment. ", fr: "Un instant. " }): the proxy picks the language of the user's last messages, else en, else the first entry.`,
    'x-kubernetes-preserve-unknown-fields': true,
    [VOICE_TEXT_KEYWORD]: true,
  });
}

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
    filler: Type.Optional(
      VoiceTextSchema(
        'Spoken when the model calls this tool without saying anything first; overrides voice.filler; "" means none for this tool.',
      ),
    ),
    deferAfter: Type.Optional(
      Type.String({
        format: 'duration',
        description:
          'When a call is still running after this long, the model is told the result will follow and the turn ends; the call runs on to its timeout and its result is spoken on the next turn (through tool memory, so memory.turns must be above 0). Must be shorter than the timeout.',
      }),
    ),
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
        {
          filler: Type.Optional(
            VoiceTextSchema(
              'Spoken when the model calls a tool without saying anything first, so the user hears at once that something is happening. "" turns it off. Default "One moment. ".',
            ),
          ),
          errorMessage: Type.Optional(
            VoiceTextSchema(
              'Spoken when the model cannot answer (the LLM server failed or the turn timed out): the voice session goes on instead of ending on an error.',
            ),
          ),
          stillWorking: Type.Optional(
            VoiceTextSchema(
              'Spoken once when tools have run for stillWorkingAfter with nothing new said, and never once the answer has begun. "" turns it off. Default "Still working on it. ".',
            ),
          ),
          stillWorkingAfter: Type.Optional(
            Type.String({
              format: 'duration',
              description: 'How long a tool turn may stay silent before stillWorking is spoken. Default 3s.',
            }),
          ),
          speakable: Type.Optional(
            Type.Boolean({
              description:
                "Remove what a TTS would read literally from the model's text: markdown emphasis, headings, list bullets, code fences and emojis; a bare URL becomes its host name. Default true.",
            }),
          ),
        },
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
export type BuiltinName = (typeof BUILTINS)[number];
export type ToolSpec = Static<typeof Tool>;
export type ToolSetSpec = Static<typeof Spec>;
export type ToolSetStatus = Static<typeof Status>;
export type StatusCondition = Static<typeof Condition>;
export type LabelSelectorSpec = Static<typeof LabelSelector>;
export type ToolSet = Static<typeof ToolSetSchema>;
export type JsonSchema = TSchema | Record<string, unknown>;
