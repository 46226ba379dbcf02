/**
 * Span names and attributes of the OpenTelemetry GenAI semantic conventions, for the proxy to start its spans
 * through the SpanHandle API without importing OpenTelemetry. Attributes that carry conversation content
 * (tool arguments and results) may be passed freely: the tracer drops them unless content capture is on.
 */
import type { Attributes, SpanHandle } from './types.js';

/** `gen_ai.provider.name`: the API flavour the upstream speaks (vLLM, Ollama and llama.cpp speak OpenAI's). */
export const DEFAULT_PROVIDER = 'openai';

/** Attributes of a turn span (`invoke_agent {toolset}`). */
export function turnAttributes(toolset: string, extra: Attributes = {}): Attributes {
  return { 'gen_ai.agent.name': toolset, ...extra };
}

export interface ChatRequestInfo {
  model: string;
  provider?: string;
  /** The upstream's host and port (`server.address`, `server.port`). */
  serverAddress?: string;
  serverPort?: number;
  stream?: boolean;
  /** Whether tools were offered in this call. */
  toolsOffered?: number;
}

/** Starts `chat {model}` (kind CLIENT) under the turn span, for one upstream call. */
export function startChatSpan(turn: SpanHandle, request: ChatRequestInfo): SpanHandle {
  return turn.child(`chat ${request.model}`, 'client', {
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': request.provider ?? DEFAULT_PROVIDER,
    'gen_ai.request.model': request.model,
    'gen_ai.request.stream': request.stream,
    'server.address': request.serverAddress,
    'server.port': request.serverPort,
    'earpiece.tools_offered': request.toolsOffered,
  });
}

export interface ChatResponseInfo {
  responseId?: string;
  responseModel?: string;
  finishReasons?: string[];
  inputTokens?: number;
  outputTokens?: number;
  timeToFirstChunkSeconds?: number;
}

/**
 * The longest id or name (model, tool) the upstream's answer may put on a span; the model name is also a
 * metric attribute, held for the life of the process.
 */
export const MAX_RESPONSE_NAME = 256;

/** Attributes to set on a chat span once its response is known (usage only when the upstream sent it). */
export function chatResponseAttributes(response: ChatResponseInfo): Attributes {
  return {
    'gen_ai.response.id': response.responseId?.slice(0, MAX_RESPONSE_NAME),
    'gen_ai.response.model': response.responseModel?.slice(0, MAX_RESPONSE_NAME),
    'gen_ai.response.finish_reasons': response.finishReasons,
    'gen_ai.usage.input_tokens': response.inputTokens,
    'gen_ai.usage.output_tokens': response.outputTokens,
    'gen_ai.response.time_to_first_chunk': response.timeToFirstChunkSeconds,
  };
}

export interface ToolCallInfo {
  name: string;
  callId?: string;
  /** `extension`: run by the proxy against an external API (the default); `datastore`: an SQL tool. */
  type?: 'extension' | 'datastore' | 'function';
  description?: string;
  /** The arguments as the model sent them; recorded only with content capture on. */
  arguments?: string;
}

/** Starts `execute_tool {tool}` (kind INTERNAL) under the turn span, for one tool call. */
export function startToolSpan(turn: SpanHandle, call: ToolCallInfo): SpanHandle {
  // The model names the tool: one it made up is cut like any other name from the upstream.
  const name = call.name.slice(0, MAX_RESPONSE_NAME);
  return turn.child(`execute_tool ${name}`, 'internal', {
    'gen_ai.operation.name': 'execute_tool',
    'gen_ai.tool.name': name,
    'gen_ai.tool.call.id': call.callId?.slice(0, MAX_RESPONSE_NAME),
    'gen_ai.tool.type': call.type ?? 'extension',
    'gen_ai.tool.description': call.description,
    'gen_ai.tool.call.arguments': call.arguments,
  });
}

/** The result the model sees, recorded only with content capture on. */
export function toolResultAttributes(result: string): Attributes {
  return { 'gen_ai.tool.call.result': result };
}
