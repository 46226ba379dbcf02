/**
 * The shape of a chat completion request, checked before the route runs. Every field the proxy
 * reads is typed here, so a client's mistake (a `model` that is an object, a message without a role, a
 * content part whose text is a number) is a 400 naming the field, never a crash inside a turn. Fields the
 * proxy only passes on to the model are left to the model server.
 *
 * Plain JSON Schema, not TypeBox: the proxy never loads TypeBox (some 9 MB of idle memory in a sidecar).
 */
import { Ajv } from 'ajv';

/** Model ids run to some tens of characters (`meta-llama/Llama-3.3-70B-Instruct`); this leaves room. */
export const MAX_MODEL_CHARS = 256;

const string = { type: 'string' } as const;
const boolean = { type: 'boolean' } as const;
const nullable = (schema: object) => ({ anyOf: [schema, { type: 'null' }] });
const object = (properties: Record<string, object> = {}, required: string[] = []) => ({
  type: 'object',
  properties,
  ...(required.length ? { required } : {}),
});

const contentPart = object({ type: string, text: string });

const message = object(
  {
    role: { type: 'string', minLength: 1 },
    content: { anyOf: [string, { type: 'null' }, { type: 'array', items: contentPart }] },
    name: string,
    tool_call_id: string,
    tool_calls: nullable({ type: 'array', items: object() }),
  },
  ['role'],
);

const clientTool = object({ type: string, function: object({ name: string }) });

export const ChatRequestSchema = object(
  {
    // Copied into every chunk of the answer and into telemetry (span names, a metric attribute).
    model: nullable({ type: 'string', maxLength: MAX_MODEL_CHARS }),
    messages: { type: 'array', items: message, minItems: 1 },
    stream: nullable(boolean),
    stream_options: nullable(object({ include_usage: nullable(boolean) })),
    tools: nullable({ type: 'array', items: clientTool }),
    tool_choice: { anyOf: [string, object(), { type: 'null' }] },
    parallel_tool_calls: nullable(boolean),
    chat_template_kwargs: nullable(object()),
  },
  ['messages'],
);

interface ChatRequestMessage {
  role: string;
  content?: string | null | { type?: string; text?: string }[];
  name?: string;
  tool_call_id?: string;
  tool_calls?: Record<string, unknown>[] | null;
}

/** What ChatRequestSchema admits. */
export interface ChatRequestBody {
  model?: string | null;
  messages: ChatRequestMessage[];
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean | null } | null;
  tools?: { type?: string; function?: { name?: string } }[] | null;
  tool_choice?: string | Record<string, unknown> | null;
  parallel_tool_calls?: boolean | null;
  chat_template_kwargs?: Record<string, unknown> | null;
}

/**
 * The one check of ChatRequestSchema, for fastify's route and the fast lane alike: compiled with the options
 * of fastify's Ajv that bear on this schema (and its types never coerced), one error at a time.
 */
export const validateChatRequest = new Ajv({
  coerceTypes: false,
  useDefaults: true,
  removeAdditional: true,
  allErrors: false,
}).compile<ChatRequestBody>(ChatRequestSchema);

/** Why a body is not a chat request, in fastify's words ("body/messages must …"), or undefined. */
export function chatRequestProblem(body: unknown): string | undefined {
  if (validateChatRequest(body)) return undefined;
  return (validateChatRequest.errors ?? []).map((e) => `body${e.instancePath} ${e.message}`).join(', ');
}
