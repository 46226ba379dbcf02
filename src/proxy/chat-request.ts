/**
 * The shape of a chat completion request, checked by fastify before the route runs. Every field the proxy
 * reads is typed here, so a client's mistake (a `model` that is an object, a message without a role, a
 * content part whose text is a number) is a 400 naming the field, never a crash inside a turn. Fields the
 * proxy only passes on to the model are left to the model server.
 */
import { type Static, Type } from '@sinclair/typebox';

const Nullable = <T extends ReturnType<typeof Type.String>>(schema: T) => Type.Union([schema, Type.Null()]);

const ContentPart = Type.Object({ type: Type.Optional(Type.String()), text: Type.Optional(Type.String()) });

const Message = Type.Object({
  role: Type.String({ minLength: 1 }),
  content: Type.Optional(Type.Union([Type.String(), Type.Null(), Type.Array(ContentPart)])),
  name: Type.Optional(Type.String()),
  tool_call_id: Type.Optional(Type.String()),
  tool_calls: Type.Optional(Type.Union([Type.Array(Type.Object({})), Type.Null()])),
});

const ClientTool = Type.Object({
  type: Type.Optional(Type.String()),
  function: Type.Optional(Type.Object({ name: Type.Optional(Type.String()) })),
});

export const ChatRequestSchema = Type.Object({
  model: Type.Optional(Nullable(Type.String())),
  messages: Type.Array(Message, { minItems: 1 }),
  stream: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  stream_options: Type.Optional(
    Type.Union([
      Type.Object({ include_usage: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])) }),
      Type.Null(),
    ]),
  ),
  tools: Type.Optional(Type.Union([Type.Array(ClientTool), Type.Null()])),
  tool_choice: Type.Optional(Type.Union([Type.String(), Type.Object({}), Type.Null()])),
  parallel_tool_calls: Type.Optional(Type.Union([Type.Boolean(), Type.Null()])),
  chat_template_kwargs: Type.Optional(Type.Union([Type.Object({}), Type.Null()])),
});

export type ChatRequestBody = Static<typeof ChatRequestSchema>;
