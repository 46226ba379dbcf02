/**
 * Chunks → one assistant message snapshot, plus the events the tool loop acts on while it streams.
 * This is where the upstream dialects meet (vLLM per tool parser, Ollama, llama.cpp, OpenAI): calls are
 * keyed by their `index`, never by id; ids and names are assigned, arguments concatenated. Only
 * choice 0 is read (Unmute never asks for n>1). No I/O, no timers.
 */
import { randomInt } from 'node:crypto';
import type { ChatChunk, ChunkDelta, ToolCallDelta, Usage } from './chunks.js';

export type StreamEvent =
  /** Speakable model text, in order, as it arrives (never reasoning, never refusal). */
  | { type: 'content'; text: string }
  /** reasoning_content / reasoning deltas (the proxy never forwards them). */
  | { type: 'reasoning'; text: string }
  /** First time a call's name is known. */
  | { type: 'tool_call_start'; index: number; name: string }
  | { type: 'usage'; usage: Usage };

export interface AccumulatedToolCall {
  index: number;
  id: string;
  name: string;
  /** The concatenated argument text, byte for byte; parsing it is the caller's job. */
  arguments: string;
}

export interface AssistantSnapshot {
  id: string | undefined;
  model: string | undefined;
  content: string;
  reasoning: string;
  refusal: string;
  /** Sorted by index; only calls that got a name. Non-empty means a tool turn, whatever finishReason says. */
  toolCalls: AccumulatedToolCall[];
  /** As sent, not trusted (Ollama < 0.5.12 says `stop` after a call; vLLM says `tool_calls` on `length`). */
  finishReason: string | null;
  usage: Usage | undefined;
}

/** Bounds untrusted indexes, as openai-node does (MAX_STREAM_TOOL_CALLS). */
export const MAX_TOOL_CALL_INDEX = 128;

interface CallState {
  index: number;
  id: string | undefined;
  name: string | undefined;
  arguments: string;
}

export class StreamAccumulator {
  #id: string | undefined;
  #model: string | undefined;
  #content = '';
  #reasoning = '';
  #refusal = '';
  #finishReason: string | null = null;
  #usage: Usage | undefined;
  readonly #calls = new Map<number, CallState>();
  /** The call the last index-less fragment belongs to. */
  #lastIndex: number | undefined;

  push(chunk: ChatChunk): StreamEvent[] {
    const events: StreamEvent[] = [];
    if (!isObject(chunk)) return events;
    if (this.#id === undefined && nonEmpty(chunk.id)) this.#id = chunk.id;
    if (this.#model === undefined && nonEmpty(chunk.model)) this.#model = chunk.model;

    if (Array.isArray(chunk.choices)) {
      for (const choice of chunk.choices) {
        if (!isObject(choice) || (choice.index ?? 0) !== 0) continue;
        if (isObject(choice.delta)) this.#applyDelta(choice.delta, events);
        // After the delta: legacy vLLM puts the last argument fragment in the finish chunk.
        if (nonEmpty(choice.finish_reason)) this.#finishReason = choice.finish_reason;
      }
    }
    // OpenAI sends `usage: null` on every chunk but the last when include_usage is on.
    if (isObject(chunk.usage)) {
      this.#usage = chunk.usage;
      events.push({ type: 'usage', usage: chunk.usage });
    }
    return events;
  }

  snapshot(): AssistantSnapshot {
    const toolCalls: AccumulatedToolCall[] = [];
    for (const call of [...this.#calls.values()].sort((a, b) => a.index - b.index)) {
      if (call.name === undefined) continue;
      call.id ??= generateCallId();
      toolCalls.push({ index: call.index, id: call.id, name: call.name, arguments: call.arguments });
    }
    return {
      id: this.#id,
      model: this.#model,
      content: this.#content,
      reasoning: this.#reasoning,
      refusal: this.#refusal,
      toolCalls,
      finishReason: this.#finishReason,
      usage: this.#usage,
    };
  }

  #applyDelta(delta: ChunkDelta, events: StreamEvent[]): void {
    // Some servers send both fields with the same text (one is the other's deprecated alias).
    const reasoning = nonEmpty(delta.reasoning_content) ? delta.reasoning_content : delta.reasoning;
    if (nonEmpty(reasoning)) {
      this.#reasoning += reasoning;
      events.push({ type: 'reasoning', text: reasoning });
    }
    if (nonEmpty(delta.content)) {
      this.#content += delta.content;
      events.push({ type: 'content', text: delta.content });
    }
    if (nonEmpty(delta.refusal)) this.#refusal += delta.refusal;
    if (Array.isArray(delta.tool_calls)) {
      for (const entry of delta.tool_calls) if (isObject(entry)) this.#applyToolCall(entry, events);
    }
  }

  #applyToolCall(entry: ToolCallDelta, events: StreamEvent[]): void {
    const fn = isObject(entry.function) ? entry.function : undefined;
    const index = this.#indexOf(entry, fn);
    if (index === undefined) return;
    let call = this.#calls.get(index);
    if (!call) {
      call = { index, id: undefined, name: undefined, arguments: '' };
      this.#calls.set(index, call);
    }
    this.#lastIndex = index;
    if (nonEmpty(entry.id)) call.id = entry.id;
    const name = fn?.name;
    if (nonEmpty(name)) {
      if (call.name === undefined) events.push({ type: 'tool_call_start', index, name });
      call.name = name;
    }
    const args: unknown = fn?.arguments;
    if (typeof args === 'string') call.arguments = appendArguments(call.arguments, args);
    // A server that sends the arguments as an object means the whole of them.
    else if (isObject(args)) call.arguments = JSON.stringify(args);
  }

  /**
   * The call an entry belongs to. Without an `index` (some gateways leave it out), an id seen before names
   * its call, a new id or a name on top of a named call starts the next one, and anything else continues
   * the last call touched (index 0 for the first).
   */
  #indexOf(entry: ToolCallDelta, fn: { name?: string | null } | undefined): number | undefined {
    if (entry.index !== undefined && entry.index !== null) {
      const { index } = entry;
      return Number.isInteger(index) && index >= 0 && index < MAX_TOOL_CALL_INDEX ? index : undefined;
    }
    if (nonEmpty(entry.id)) {
      for (const call of this.#calls.values()) if (call.id === entry.id) return call.index;
    }
    const last = this.#lastIndex === undefined ? undefined : this.#calls.get(this.#lastIndex);
    if (!last) return this.#calls.size === 0 ? 0 : this.#nextIndex();
    const startsCall = nonEmpty(entry.id)
      ? last.id !== undefined
      : nonEmpty(fn?.name) && last.name !== undefined;
    return startsCall ? this.#nextIndex() : last.index;
  }

  #nextIndex(): number | undefined {
    const next = Math.max(-1, ...this.#calls.keys()) + 1;
    return next < MAX_TOOL_CALL_INDEX ? next : undefined;
  }
}

/**
 * Appends an argument fragment, unless it is a cumulative re-send (the minimax parser before vLLM PR #22015
 * sent the whole text so far each step; a rebuilt finish chunk may repeat the whole call): a fragment that
 * starts with the whole of an object begun so far replaces it. A real continuation would have to repeat
 * the object's opening inside itself (`{{`, `{"{"`), which argument objects do not do.
 */
function appendArguments(current: string, fragment: string): string {
  if (
    current.length > 0 &&
    fragment.length >= current.length &&
    fragment.startsWith(current) &&
    /^\s*\{/.test(current)
  )
    return fragment;
  return current + fragment;
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

/**
 * An id for a call that arrived without one. Nine alphanumerics: Mistral's chat templates accept nothing
 * else, and every other template takes any string.
 */
export function generateCallId(): string {
  let id = '';
  for (let i = 0; i < 9; i++) id += ALNUM[randomInt(ALNUM.length)];
  return id;
}

function nonEmpty(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
