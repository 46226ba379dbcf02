/**
 * Wire types of OpenAI `chat.completion.chunk` as upstream servers really send them. Every field is optional
 * and nullable because vLLM, Ollama, llama.cpp and gateways each leave out or null different ones
 * (docs: upstream-streams research §0, §5); unknown keys are allowed and ignored. The guards below are how
 * the decoder, the accumulator and the raw-call filter read such values.
 */

export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
  [k: string]: unknown;
}

export interface ToolCallDelta {
  index?: number;
  id?: string | null;
  type?: string | null;
  function?: { name?: string | null; arguments?: string | null } | null;
  /** Google's OpenAI-compatible API: the call's thought signature (`{google: {thought_signature}}`). */
  extra_content?: unknown;
}

export interface ChunkDelta {
  role?: string | null;
  content?: string | null;
  reasoning_content?: string | null;
  reasoning?: string | null;
  refusal?: string | null;
  /** OpenRouter's structured reasoning, streamed as fragments keyed by type and index. */
  reasoning_details?: unknown;
  tool_calls?: ToolCallDelta[] | null;
}

export interface ChunkChoice {
  index?: number;
  delta?: ChunkDelta | null;
  finish_reason?: string | null;
}

export interface ChatChunk {
  id?: string;
  object?: string;
  created?: number;
  model?: string;
  choices?: ChunkChoice[] | null;
  usage?: Usage | null;
  [k: string]: unknown;
}

/** A JSON object (not an array, not null), as the fields of a chunk must be before they are read. */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A string with something in it: servers send `""` and `null` for fields they leave empty. */
export function nonEmpty(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0;
}

/** Text that parses as JSON: a tool call's arguments, whole (not still streaming, not broken). */
export function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}
