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
import { API_GROUP, API_VERSION, KIND, MAX_CONDITION_MESSAGE } from './api.js';

export { API_GROUP, API_VERSION, KIND };

/** A string enum as plain `enum` (not anyOf of consts): one clear error, and what a CRD expects. */
function StringEnum<const T extends readonly string[]>(values: T, options: Record<string, unknown> = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/**
 * Bounds on strings and lists. They keep a ToolSet (and the ConfigMap rendered from it) far below
 * etcd's 1.5 MB, and the API server's CEL cost estimates small; the runtime validator holds the same
 * bounds, so a document the proxy accepts from a file is one the API server would accept too.
 */
export const LIMIT = {
  /** Names of tools, env vars, label values and the like. */
  name: 64,
  /** Kubernetes object names (Secrets) and keys. */
  objectName: 253,
  /** A label key: an optional DNS prefix (253), a slash and a name (63). */
  labelKey: 317,
  url: 2048,
  duration: 32,
  /** Short sentences the assistant speaks. */
  spoken: 512,
  /** A tool description the model reads, header and connection values. */
  text: 4096,
  /** Instructions and SQL queries. */
  longText: 16384,
  /** Headers, keywords, includes, SQL args, selector terms. */
  list: 64,
} as const;

const DURATION_FORM = 'A duration such as 500ms, 5s, 1m30s or 10m.';

/** Go-style duration, as Kubernetes writes them: `500ms`, `5s`, `1m30s`. Checked by the `duration` format. */
export const Duration = Type.String({
  format: 'duration',
  maxLength: LIMIT.duration,
  description: DURATION_FORM,
});

/** A Duration that says what it bounds. */
export function DurationOf(description: string) {
  return Type.String({ ...Duration, description: `${description} ${DURATION_FORM}` });
}

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
  {
    name: Type.String({
      minLength: 1,
      maxLength: LIMIT.objectName,
      description: 'Name of the Secret, in the namespace of the ToolSet. Example: weather-api.',
    }),
    key: Type.String({
      minLength: 1,
      maxLength: LIMIT.objectName,
      description: 'Key in the Secret whose value is used. Example: token.',
    }),
  },
  {
    additionalProperties: false,
    description:
      'A key of a Secret in the ToolSet namespace. The operator passes it to the sidecar as an environment variable; a ToolSet run outside Kubernetes cannot use it.',
  },
);

export const ValueFrom = Type.Object(
  {
    env: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: LIMIT.objectName,
        description: 'Name of an environment variable of the proxy. Example: WEATHER_API_KEY.',
      }),
    ),
    secretKeyRef: Type.Optional(SecretKeyRef),
  },
  {
    additionalProperties: false,
    description: 'Where the value comes from: exactly one of env or secretKeyRef.',
  },
);

const VALUE_DESCRIPTION =
  'The value itself. Prefer valueFrom for anything secret: a value is stored in plain text.';

/** `{ value }` or `{ valueFrom: { env } }` or `{ valueFrom: { secretKeyRef } }`; exactly one (validate.ts). */
function ValueOf(description: string) {
  return Type.Object(
    {
      value: Type.Optional(Type.String({ maxLength: LIMIT.text, description: VALUE_DESCRIPTION })),
      valueFrom: Type.Optional(ValueFrom),
    },
    { additionalProperties: false, description: `${description} Exactly one of value or valueFrom.` },
  );
}

export const Value = ValueOf('A value given inline or taken from an environment variable or a Secret.');

export const Header = Type.Object(
  {
    name: Type.String({
      minLength: 1,
      maxLength: 256,
      pattern: "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$",
      description: 'HTTP header name. Example: Authorization.',
    }),
    value: Type.Optional(
      Type.String({ maxLength: LIMIT.text, description: `${VALUE_DESCRIPTION} Example: application/json.` }),
    ),
    valueFrom: Type.Optional(ValueFrom),
  },
  {
    additionalProperties: false,
    description: 'An HTTP header sent with every request: a name and exactly one of value or valueFrom.',
  },
);

export const LabelSelector = Type.Object(
  {
    matchLabels: Type.Optional(
      Type.Record(Type.String(), Type.String({ maxLength: 63 }), {
        description: 'Labels the pod must all carry. Example: {app: unmute-backend}.',
      }),
    ),
    matchExpressions: Type.Optional(
      Type.Array(
        Type.Object(
          {
            key: Type.String({
              maxLength: LIMIT.labelKey,
              description: 'The label key the term is about. Example: app.kubernetes.io/name.',
            }),
            operator: StringEnum(['In', 'NotIn', 'Exists', 'DoesNotExist'], {
              description: 'How the label relates to values: In, NotIn, Exists or DoesNotExist.',
            }),
            values: Type.Optional(
              Type.Array(Type.String({ maxLength: 63 }), {
                maxItems: LIMIT.list,
                description: 'Label values for In and NotIn; empty for Exists and DoesNotExist.',
              }),
            ),
          },
          { additionalProperties: false, description: 'One term of the selector; all terms must match.' },
        ),
        {
          maxItems: LIMIT.list,
          description: 'Label terms the pod must all match, as in a Deployment selector.',
        },
      ),
    ),
  },
  {
    additionalProperties: false,
    description:
      'The pods of this namespace whose earpiece sidecar uses this ToolSet, when a pod does not name one with the annotation earpiece.dev/toolset. Without a selector the ToolSet is only used by pods that name it.',
  },
);

export const HttpTool = Type.Object(
  {
    method: Type.Optional(
      StringEnum(['GET', 'POST', 'PUT', 'PATCH', 'DELETE'], {
        description:
          'HTTP method; default GET. With POST, PUT and PATCH the arguments are also sent as a JSON body.',
      }),
    ),
    url: Type.String({
      minLength: 1,
      maxLength: LIMIT.url,
      description:
        'RFC 6570 URL template filled with the tool arguments. Arguments are percent-encoded and may only add to the path or the query: the scheme and host are literal. Example: https://api.open-meteo.com/v1/forecast{?latitude,longitude}',
    }),
    headers: Type.Optional(
      Type.Array(Header, { maxItems: LIMIT.list, description: 'Headers sent with every request.' }),
    ),
    select: Type.Optional(
      Type.String({
        maxLength: 256,
        description:
          'JSON Pointer (RFC 6901) into the JSON response; only that part goes to the model. Example: /current.',
      }),
    ),
  },
  { additionalProperties: false, description: 'Calls an HTTP API with the arguments in its URL or body.' },
);

export const McpTool = Type.Object(
  {
    url: Type.String({
      minLength: 1,
      maxLength: LIMIT.url,
      description:
        'Streamable HTTP endpoint of the MCP server (earpiece falls back to HTTP+SSE). Example: http://home-assistant:8123/api/mcp',
    }),
    headers: Type.Optional(
      Type.Array(Header, {
        maxItems: LIMIT.list,
        description: 'Headers sent with every request to the server, such as Authorization.',
      }),
    ),
    include: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: LIMIT.name }), {
        maxItems: LIMIT.list,
        description:
          'The server tools offered to the model, by name; default all. Example: [HassTurnOn, HassTurnOff].',
      }),
    ),
    prefix: Type.Optional(
      Type.String({
        maxLength: 32,
        pattern: '^[a-zA-Z0-9_-]*$',
        description: 'Put before each server tool name, to keep names unique. Example: home_.',
      }),
    ),
  },
  {
    additionalProperties: false,
    description:
      'Offers the tools of an MCP server; their names, descriptions and parameters come from the server.',
  },
);

export const SqlTool = Type.Object(
  {
    connection: ValueOf(
      'Postgres connection URL, for a read-only role. Example: valueFrom: {secretKeyRef: {name: orders-db, key: url}}.',
    ),
    query: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: LIMIT.longText,
        description:
          'A fixed SELECT with $1, $2 ... placeholders filled from args. Without a query the model writes the SELECT itself (argument "sql"), checked to be a single read-only statement. Example: SELECT status FROM orders WHERE id = $1',
      }),
    ),
    args: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: LIMIT.name }), {
        maxItems: LIMIT.list,
        description: 'The arguments that fill $1, $2 ... in order, by parameter name. Example: [order_id].',
      }),
    ),
    maxRows: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 10000, description: 'Rows returned at most; default 100.' }),
    ),
  },
  {
    additionalProperties: false,
    description: 'Runs a read-only query against Postgres, in a read-only transaction.',
  },
);

export const RateLimit = Type.Object(
  {
    requests: Type.Integer({
      minimum: 1,
      maximum: 100000,
      description:
        'Most calls that may start in any window of length `per` (60 with per: 1m holds a 60-a-minute quota).',
    }),
    per: DurationOf('Length of the sliding window, such as 1s, 1m or 1h.'),
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
export const Builtin = StringEnum(BUILTINS, {
  description:
    'A tool built into earpiece: time (the current date and time, in an optional IANA time zone) or calculator (arithmetic).',
});

export const TOOL_NAME_PATTERN = '^[a-zA-Z0-9_-]{1,64}$';

/** JSON Schema for a tool's arguments; kept free-form (x-kubernetes-preserve-unknown-fields in the CRD). */
export const Parameters = Type.Object(
  {},
  {
    additionalProperties: true,
    'x-kubernetes-preserve-unknown-fields': true,
    description:
      'JSON Schema of the arguments the model passes, of type object. Example: {type: object, properties: {city: {type: string}}, required: [city]}.',
  },
);

export const Tool = Type.Object(
  {
    name: Type.Optional(
      Type.String({
        pattern: TOOL_NAME_PATTERN,
        maxLength: LIMIT.name,
        description:
          'The name the model calls the tool by, unique in the ToolSet: letters, digits, _ and -. Example: get_weather. An mcp entry has none.',
      }),
    ),
    description: Type.Optional(
      Type.String({
        maxLength: LIMIT.text,
        description:
          'What the tool does and when to use it, for the model. Example: Current temperature and wind for a place.',
      }),
    ),
    parameters: Type.Optional(Parameters),
    timeout: Type.Optional(DurationOf('How long one call may take; default limits.toolTimeout.')),
    cache: Type.Optional(
      Type.Object(
        { ttl: DurationOf('How long a result is reused for the same arguments.') },
        {
          additionalProperties: false,
          description: 'Reuses results for equal arguments; for tools without side effects.',
        },
      ),
    ),
    rateLimit: Type.Optional(RateLimit),
    filler: Type.Optional(
      VoiceTextSchema(
        'Spoken while this tool runs, instead of voice.filler; "" for none. Example: "Let me check the weather. "',
      ),
    ),
    deferAfter: Type.Optional(
      DurationOf(
        'When a call is still running after this long, the model is told the result will follow and the turn ends; the call runs on to its timeout and its result is spoken on the next turn (through tool memory, so memory.turns must be above 0). Must be shorter than the timeout.',
      ),
    ),
    when: Type.Optional(
      Type.Object(
        {
          keywords: Type.Array(Type.String({ minLength: 1, maxLength: LIMIT.name }), {
            minItems: 1,
            maxItems: LIMIT.list,
            description:
              'Words that start a word of the last two user messages, case-insensitively. Example: [weather, rain].',
          }),
        },
        {
          additionalProperties: false,
          description: 'Offers the tool only when the user said one of the keywords; default always.',
        },
      ),
    ),
    onInterrupt: Type.Optional(
      StringEnum(['cancel', 'finish'], {
        description:
          'When the user barges in: cancel (default) aborts the call; finish lets a call with side effects, such as switching a light, complete.',
      }),
    ),
    memory: Type.Optional(
      Type.Boolean({
        description: 'false: results are never remembered past the turn (for private data); default true.',
      }),
    ),
    http: Type.Optional(HttpTool),
    mcp: Type.Optional(McpTool),
    sql: Type.Optional(SqlTool),
    builtin: Type.Optional(Builtin),
  },
  {
    additionalProperties: false,
    description: 'A tool, or an MCP server of tools: exactly one of http, mcp, sql or builtin.',
  },
);

export const Spec = Type.Object(
  {
    selector: Type.Optional(LabelSelector),
    upstream: Type.Optional(
      Type.Object(
        {
          url: Type.Optional(
            Type.String({
              pattern: '^https?://',
              maxLength: LIMIT.url,
              description:
                "Base URL of the OpenAI-compatible LLM server, without /v1; default the pod's KYUTAI_LLM_URL. Example: http://vllm:8000",
            }),
          ),
          apiKey: Type.Optional(
            ValueOf(
              'Bearer token for the LLM server. Example: valueFrom: {secretKeyRef: {name: vllm, key: api-key}}.',
            ),
          ),
          disableThinking: Type.Optional(
            Type.Boolean({
              description:
                'true: asks reasoning models (Qwen3 and others) not to think aloud, through chat_template_kwargs.',
            }),
          ),
        },
        { additionalProperties: false, description: 'The LLM server the proxy forwards turns to.' },
      ),
    ),
    limits: Type.Optional(
      Type.Object(
        {
          maxIterations: Type.Optional(
            Type.Integer({
              minimum: 1,
              maximum: 20,
              description: 'Model requests with tools in one turn, before a last one without; default 3.',
            }),
          ),
          turnTimeout: Type.Optional(DurationOf('The longest a turn may take, tools included; default 20s.')),
          toolTimeout: Type.Optional(DurationOf('The longest a tool call may take; default 5s.')),
          maxParallelCalls: Type.Optional(
            Type.Integer({
              minimum: 1,
              maximum: 64,
              description: 'Tool calls run at once in one turn; default 4.',
            }),
          ),
          maxResultBytes: Type.Optional(
            Type.Integer({
              minimum: 64,
              maximum: 1048576,
              description: 'A tool result is cut to this many bytes before the model reads it; default 2048.',
            }),
          ),
        },
        { additionalProperties: false, description: 'Bounds on each turn, so a voice reply never stalls.' },
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
            DurationOf('How long a tool turn may stay silent before stillWorking is spoken. Default 3s.'),
          ),
          speakable: Type.Optional(
            Type.Boolean({
              description:
                "Remove what a TTS would read literally from the model's text: markdown emphasis, headings, list bullets, code fences and emojis; a bare URL becomes its host name. Default true.",
            }),
          ),
        },
        {
          additionalProperties: false,
          description: "What the proxy itself says, and how the model's text is made speakable.",
        },
      ),
    ),
    instructions: Type.Optional(
      Type.String({
        maxLength: LIMIT.longText,
        description:
          'Added to the system message when tools are offered. Example: Answer in one or two short spoken sentences.',
      }),
    ),
    cache: Type.Optional(
      Type.Object(
        {
          maxEntries: Type.Optional(
            Type.Integer({
              minimum: 0,
              description: 'Cached tool results kept at most, least recently used first out; default 1000.',
            }),
          ),
        },
        { additionalProperties: false, description: 'The cache of tools that set cache.ttl.' },
      ),
    ),
    memory: Type.Optional(
      Type.Object(
        {
          turns: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: 32,
              description:
                'Past turns whose tool calls and results go back to the model (Unmute drops them); 0 turns memory off; default 2.',
            }),
          ),
          ttl: Type.Optional(DurationOf('How long an idle conversation is remembered; default 15m.')),
          maxBytes: Type.Optional(
            Type.Integer({
              minimum: 0,
              description: 'Bytes of remembered results per conversation at most; default 4096.',
            }),
          ),
          maxEntries: Type.Optional(
            Type.Integer({
              minimum: 1,
              description:
                'Conversations whose tool exchanges are remembered at most, least recently used first out; default 1000 (cache.maxEntries bounds tool results only).',
            }),
          ),
        },
        {
          additionalProperties: false,
          description: 'Tool memory: earlier tool results, so a follow-up question needs no new call.',
        },
      ),
    ),
    sharedState: Type.Optional(SharedState),
    tools: Type.Array(Tool, {
      maxItems: 128,
      description: 'The tools offered to the model, at most 128 (a voice model copes with a handful).',
    }),
  },
  {
    additionalProperties: false,
    description: 'The tools, the LLM server, and the limits and words of each turn.',
  },
);

export const Condition = Type.Object(
  {
    type: Type.String({ maxLength: 316, description: 'Ready or RestartRequired.' }),
    status: StringEnum(['True', 'False', 'Unknown'], { description: 'True, False or Unknown.' }),
    reason: Type.String({ maxLength: 1024, description: 'One word, CamelCase, for programs.' }),
    message: Type.String({ maxLength: MAX_CONDITION_MESSAGE, description: 'The explanation, for people.' }),
    lastTransitionTime: Type.String({
      format: 'date-time',
      description: 'When the status last changed.',
    }),
    observedGeneration: Type.Optional(
      Type.Integer({ description: 'The metadata.generation this condition was computed from.' }),
    ),
  },
  { description: 'One observation of the operator.' },
);

export const Status = Type.Object(
  {
    observedGeneration: Type.Optional(
      Type.Integer({ description: 'The metadata.generation the operator last reconciled.' }),
    ),
    tools: Type.Optional(Type.Integer({ description: 'Tool entries in the last valid configuration.' })),
    pods: Type.Optional(
      Type.Integer({
        description:
          'Running pods whose earpiece-proxy sidecar was injected for this ToolSet. 0: no pod uses it (SidecarsReady says why).',
      }),
    ),
    conditions: Type.Optional(
      Type.Array(Condition, {
        maxItems: 16,
        description:
          'Ready is True when the spec is valid and its ConfigMap is written; when False, its message names every problem.',
      }),
    ),
  },
  { description: 'What the operator made of the spec; written by the operator only.' },
);

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
