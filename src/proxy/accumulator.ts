/**
 * Chunks → one assistant message, plus the events the turn acts on while it streams.
 * This is where the upstream dialects meet (vLLM per tool parser, Ollama, llama.cpp, OpenAI): calls are
 * keyed by their `index`, never by id; ids and names are assigned, arguments concatenated. Only
 * choice 0 is read (Unmute never asks for n>1). Given the ToolSet's tool names, content goes through the
 * raw tool-call filter, so `content` events are what may be spoken and calls written as text come back
 * from `finish()` like any other. One message is capped at MAX_MESSAGE_CHARS. No I/O, no timers.
 */
import { randomInt } from 'node:crypto';
import { jsonShape } from '../http/json-shape.js';
import {
  type ChatChunk,
  type ChunkDelta,
  isJson,
  isObject,
  nonEmpty,
  type ToolCallDelta,
  type Usage,
} from './chunks.js';
import { ProxyError } from './errors.js';
import { RawCallFilter } from './raw-calls.js';

export type StreamEvent =
  /** Model text that may be spoken, in order, as it arrives (never reasoning, refusal or raw-call markup). */
  | { type: 'content'; text: string }
  /** reasoning_content / reasoning deltas (the proxy never forwards them). */
  | { type: 'reasoning'; text: string }
  /** First time a call's name is known. */
  | { type: 'tool_call_start'; index: number; name: string }
  /**
   * A call's arguments are complete: the next call has begun, or the message finished with its calls
   * (finish_reason `tool_calls` or `stop`), before the stream's end. (`finish()` has every call.)
   */
  | {
      type: 'tool_call_ready';
      call: AccumulatedToolCall;
      /** Set when the message's finish made it ready: every call of the message is named by now. */
      messageFinished?: true;
    }
  | { type: 'usage'; usage: Usage };

export interface AccumulatedToolCall {
  index: number;
  id: string;
  name: string;
  /** The concatenated argument text, byte for byte; parsing it is the caller's job. */
  arguments: string;
  /** Google's `extra_content` (Gemini's thought signature), sent back with the call as it came. */
  extraContent?: Record<string, unknown>;
}

export interface AssistantSnapshot {
  id: string | undefined;
  model: string | undefined;
  content: string;
  reasoning: string;
  /**
   * OpenRouter's `reasoning_details`, fragments merged: sent back with the message's calls, unchanged, as
   * reasoning models behind it require (Gemini 3 refuses a tool result whose call lost its signature).
   */
  reasoningDetails: Record<string, unknown>[];
  refusal: string;
  /** Sorted by index; only calls that got a name. Non-empty means a tool turn, whatever finishReason says. */
  toolCalls: AccumulatedToolCall[];
  /** As sent, not trusted (Ollama < 0.5.12 says `stop` after a call; vLLM says `tool_calls` on `length`). */
  finishReason: string | null;
  usage: Usage | undefined;
}

/** The message as the turn uses it: the snapshot, with the calls to run (structured, else recovered from text). */
export interface AssistantMessage extends AssistantSnapshot {
  calls: AccumulatedToolCall[];
  /** The calls were recovered from raw text in `content` (which then is markup, not an answer). */
  callsFromText: boolean;
}

export type FinishedMessage =
  /** `tail`: held-back text that turned out speakable, to be spoken before anything else. */
  { ok: true; tail: string; message: AssistantMessage } | { ok: false; tail: string; error: ProxyError };

/** Bounds untrusted indexes, as openai-node does (MAX_STREAM_TOOL_CALLS). */
export const MAX_TOOL_CALL_INDEX = 128;

/**
 * What one message may make the proxy hold, in characters: reasoning, refusal and tool calls together, those
 * written as text and held back by the raw-call filter included (past this the model is running away, and
 * the proxy stops reading), and, separately, the content kept for the history. Content beyond its cap is
 * still spoken as it streams (the turn deadline bounds it) but not kept.
 */
export const MAX_MESSAGE_CHARS = 1024 * 1024;

/**
 * The longest tool call name or id taken (OpenAI's function names are at most 64 characters, ids a few
 * dozen). Both go back upstream, into results, span names and logs: a longer one is a runaway generation.
 */
export const MAX_TOOL_CALL_NAME = 256;

interface CallState {
  index: number;
  id: string | undefined;
  name: string | undefined;
  arguments: string;
  extraContent?: Record<string, unknown>;
  /** Handed on as ready, or found unfinished when a later call began: it waits for the message's end. */
  decided: boolean;
}

/** The fields of a reasoning_details entry that stream in pieces; the others are replaced by the latest. */
const STREAMED_DETAIL_FIELDS = new Set(['text', 'summary', 'data']);

/**
 * What each object or array in a kept JSON value counts against MAX_MESSAGE_CHARS besides its text: about
 * what it holds on the heap, so a stream of `{}` cannot hold thirty times the cap.
 */
const STRUCTURE_CHARS = 32;

/** Finish reasons after which the message's calls are whole (Ollama before 0.5.12 says `stop` after a call). */
const CALLS_COMPLETE = new Set(['tool_calls', 'stop']);

/** An upstream index whose calls are past MAX_TOOL_CALL_INDEX: its fragments are dropped. */
const DROPPED = -1;

/** Deltas kept apart before the message's text is joined into one string (StreamAccumulator). */
const CONTENT_PIECES = 32;

export class StreamAccumulator {
  #id: string | undefined;
  #model: string | undefined;
  /**
   * The message's text so far, in pieces joined every CONTENT_PIECES: `+=` per delta would keep every
   * delta's string, and a rope node for each, alive while the message streams (one open turn's largest
   * set of objects at a thousand streams).
   */
  #content: string[] = [];
  #contentLength = 0;
  #reasoning = '';
  readonly #details: Record<string, unknown>[] = [];
  /** The entries of #details by `type:index`, which the fragments of one entry share. */
  readonly #detailAt = new Map<string, Record<string, unknown>>();
  #refusal = '';
  #finishReason: string | null = null;
  #usage: Usage | undefined;
  readonly #calls = new Map<number, CallState>();
  /** Upstream indexes that now name a later call (see #indexOf). */
  readonly #movedIndex = new Map<number, number>();
  /** The call the last index-less fragment belongs to. */
  #lastIndex: number | undefined;
  #highestIndex = -1;
  #chars = 0;
  /** The content passed its cap: what follows is spoken, not kept. */
  #contentCut = false;
  readonly #maxChars: number;
  readonly #raw: RawCallFilter | undefined;

  /**
   * `isToolName`: the ToolSet's tool names, which turns on the raw tool-call filter (without it, content
   * events are the content as sent).
   */
  constructor(options: { isToolName?: (name: string) => boolean; maxChars?: number } = {}) {
    this.#raw = options.isToolName ? new RawCallFilter(options.isToolName) : undefined;
    this.#maxChars = options.maxChars ?? MAX_MESSAGE_CHARS;
  }

  /** One array for every push: most chunks carry one event or none, and a turn reads them at once. */
  readonly #events: StreamEvent[] = [];

  /**
   * The chunk's events, in order. The array is reused by the next push: read it before pushing again.
   * Throws ProxyError ERP_UPSTREAM_TOO_LARGE once the message passes the cap.
   */
  push(chunk: ChatChunk): StreamEvent[] {
    const events = this.#events;
    events.length = 0;
    if (!isObject(chunk)) return events;
    if (this.#id === undefined && nonEmpty(chunk.id)) this.#id = chunk.id;
    if (this.#model === undefined && nonEmpty(chunk.model)) this.#model = chunk.model;

    if (Array.isArray(chunk.choices)) {
      for (const choice of chunk.choices) {
        if (!isObject(choice) || (choice.index ?? 0) !== 0) continue;
        if (isObject(choice.delta)) this.#applyDelta(choice.delta, events);
        // After the delta: legacy vLLM puts the last argument fragment in the finish chunk.
        if (nonEmpty(choice.finish_reason)) {
          this.#finishReason = choice.finish_reason;
          // Done with its calls, the message's last ones are whole: they start now, not after the usage
          // chunk and [DONE] are read and the message is put together. Not on `length` (cut short) or
          // `error` (OpenRouter's failed provider: none of its calls runs).
          if (CALLS_COMPLETE.has(choice.finish_reason))
            this.#decideBefore(Number.POSITIVE_INFINITY, events, true);
        }
      }
    }
    // OpenAI sends `usage: null` on every chunk but the last when include_usage is on.
    if (isObject(chunk.usage)) {
      this.#usage = chunk.usage;
      events.push({ type: 'usage', usage: chunk.usage });
    }
    return events;
  }

  /**
   * A chunk that says nothing but choice 0's text (the decoder's fast lane): returns what of it may be
   * spoken now, as push() would in a `content` event.
   */
  pushContent(text: string): string {
    if (this.#contentLength + text.length > this.#maxChars) this.#contentCut = true;
    if (!this.#contentCut) {
      this.#content.push(text);
      this.#contentLength += text.length;
      if (this.#content.length === CONTENT_PIECES) this.#content = [this.#content.join('')];
    }
    if (!this.#raw) return text;
    const spoken = this.#raw.push(text);
    // Held markup is tool calls written as text: the same cap as calls streamed as such.
    if (this.#chars + this.#raw.held > this.#maxChars) this.#tooLarge();
    return spoken;
  }

  /**
   * The message is over: `done` says the stream ended as it should ([DONE] or a whole completion). A
   * stream cut off before any finish_reason is a typed error, whatever it carried.
   */
  finish(done: boolean): FinishedMessage {
    const raw = this.#raw?.finish();
    const tail = raw?.text ?? '';
    if (!done && this.#finishReason === null)
      return {
        ok: false,
        tail,
        error: new ProxyError('ERP_UPSTREAM_STREAM', 'upstream stream ended before it finished the message'),
      };
    const snapshot = this.snapshot();
    const recovered = snapshot.toolCalls.length === 0 ? (raw?.calls ?? []) : [];
    const calls =
      recovered.length > 0
        ? recovered.map((c, index) => ({ index, id: generateCallId(), name: c.name, arguments: c.arguments }))
        : snapshot.toolCalls;
    return { ok: true, tail, message: { ...snapshot, calls, callsFromText: recovered.length > 0 } };
  }

  snapshot(): AssistantSnapshot {
    const toolCalls: AccumulatedToolCall[] = [];
    for (const call of [...this.#calls.values()].sort((a, b) => a.index - b.index)) {
      if (call.name === undefined) continue;
      call.id ??= generateCallId();
      toolCalls.push(accumulated(call, call.id, call.name));
    }
    return {
      id: this.#id,
      model: this.#model,
      content: this.#content.join(''),
      reasoning: this.#reasoning,
      reasoningDetails: this.#details,
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
      this.#count(reasoning.length);
      this.#reasoning += reasoning;
      events.push({ type: 'reasoning', text: reasoning });
    }
    if (nonEmpty(delta.content)) {
      const text = this.pushContent(delta.content);
      if (text !== '') events.push({ type: 'content', text });
    }
    if (Array.isArray(delta.reasoning_details)) {
      for (const detail of delta.reasoning_details) if (isObject(detail)) this.#applyDetail(detail);
    }
    if (nonEmpty(delta.refusal)) {
      this.#count(delta.refusal.length);
      this.#refusal += delta.refusal;
    }
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
      call = { index, id: undefined, name: undefined, arguments: '', decided: false };
      this.#calls.set(index, call);
      // A new call means the ones before it are complete (servers stream one call after another), once
      // their arguments are whole JSON: a server that interleaves calls may send more of them later, and a
      // call started with half its arguments would run with them. Such a call waits for the message's end,
      // and is not parsed again at each later call (128 parses of a megabyte would block for seconds).
      if (index > this.#highestIndex) {
        this.#highestIndex = index;
        this.#decideBefore(index, events, false);
      }
    }
    this.#lastIndex = index;
    if (nonEmpty(entry.id)) call.id = this.#assign('id', entry.id, call.id);
    const name = fn?.name;
    if (nonEmpty(name)) {
      const previous = call.name;
      call.name = this.#assign('name', name, previous);
      if (previous === undefined) events.push({ type: 'tool_call_start', index, name });
    }
    const args: unknown = fn?.arguments;
    if (typeof args === 'string') {
      this.#count(args.length);
      call.arguments = appendArguments(call.arguments, args);
    }
    // A server that sends the arguments as an object means the whole of them.
    else if (isObject(args)) {
      call.arguments = stringifyKept(args);
      this.#count(call.arguments.length);
    }
    if (isObject(entry.extra_content)) {
      this.#countJson(entry.extra_content);
      call.extraContent = entry.extra_content;
    }
  }

  /** Hands on as ready each named call below `index` not decided yet whose arguments are whole JSON. */
  #decideBefore(index: number, events: StreamEvent[], messageFinished: boolean): void {
    for (const earlier of this.#calls.values()) {
      if (earlier.index >= index || earlier.decided || earlier.name === undefined) continue;
      earlier.decided = true;
      if (!isJson(earlier.arguments)) continue;
      earlier.id ??= generateCallId();
      const call = accumulated(earlier, earlier.id, earlier.name);
      events.push(
        messageFinished
          ? { type: 'tool_call_ready', call, messageFinished }
          : { type: 'tool_call_ready', call },
      );
    }
  }

  /**
   * One reasoning_details fragment: an entry whose type and index were seen before continues it (its text,
   * summary or data appended, its other fields, such as a signature, taken as they come); any other is a
   * new entry. Entries keep the order they began in, as the upstream requires them back.
   */
  #applyDetail(fragment: Record<string, unknown>): void {
    this.#countJson(fragment);
    const key =
      typeof fragment.type === 'string' && Number.isInteger(fragment.index)
        ? `${fragment.type}:${fragment.index}`
        : undefined;
    const held = key === undefined ? undefined : this.#detailAt.get(key);
    if (!held) {
      const entry = { ...fragment };
      this.#details.push(entry);
      if (key !== undefined) this.#detailAt.set(key, entry);
      return;
    }
    for (const [field, value] of Object.entries(fragment)) {
      if (value === null || value === undefined) continue;
      const before = held[field];
      held[field] =
        STREAMED_DETAIL_FIELDS.has(field) && typeof value === 'string' && typeof before === 'string'
          ? before + value
          : value;
    }
  }

  /**
   * A JSON value kept as objects (reasoning_details, extra_content): its text, and a share for each object
   * and array in it, which costs the heap far more than its two characters. Nesting past what
   * JSON.stringify can walk is a runaway too.
   */
  #countJson(value: unknown): void {
    const json = stringifyKept(value);
    this.#count(json.length + jsonShape(json).structures * STRUCTURE_CHARS);
  }

  #count(chars: number): void {
    this.#chars += chars;
    if (this.#chars > this.#maxChars) this.#tooLarge();
  }

  /**
   * A call's name or id, which replaces the one before (servers repeat them): the cap counts what is held,
   * not each repeat, so a name sent with every fragment does not use it up.
   */
  #assign(what: 'name' | 'id', value: string, previous: string | undefined): string {
    if (value.length > MAX_TOOL_CALL_NAME)
      throw new ProxyError(
        'ERP_UPSTREAM_TOO_LARGE',
        `upstream sent a tool call ${what} longer than ${MAX_TOOL_CALL_NAME} characters`,
      );
    this.#count(value.length - (previous?.length ?? 0));
    return value;
  }

  #tooLarge(): never {
    throw new ProxyError(
      'ERP_UPSTREAM_TOO_LARGE',
      `upstream sent a message with more than ${this.#maxChars} characters of reasoning, refusal and tool calls`,
    );
  }

  /**
   * The call an entry belongs to. Without an `index` (some gateways leave it out), an id seen before names
   * its call, a new id or a name on top of a named call starts the next one, and anything else continues
   * the last call touched (index 0 for the first).
   */
  #indexOf(entry: ToolCallDelta, fn: { name?: string | null } | undefined): number | undefined {
    if (entry.index !== undefined && entry.index !== null) {
      const { index } = entry;
      if (!Number.isInteger(index) || index < 0 || index >= MAX_TOOL_CALL_INDEX) return undefined;
      const own = this.#movedIndex.get(index) ?? index;
      if (own === DROPPED) return undefined;
      const held = this.#calls.get(own)?.id;
      if (!nonEmpty(entry.id) || held === undefined || entry.id === held) return own;
      // Another id at a taken index: an earlier call's id names that call; without a name it is the same
      // call under a new id (some servers give each fragment its own). With a name it is the next call:
      // Gemini's OpenAI-compatible stream (and bridges like it) sends every parallel call at index 0, and
      // that index names the new call from then on (or nothing, past MAX_TOOL_CALL_INDEX).
      for (const call of this.#calls.values()) if (call.id === entry.id) return call.index;
      if (!nonEmpty(fn?.name)) return own;
      const next = this.#nextIndex();
      this.#movedIndex.set(index, next ?? DROPPED);
      return next;
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

/** JSON.stringify of an upstream's value; nesting past what it can walk is a runaway, refused as too large. */
function stringifyKept(value: unknown): string {
  try {
    return JSON.stringify(value);
  } catch {
    throw new ProxyError('ERP_UPSTREAM_TOO_LARGE', 'upstream sent a message with JSON nested too deeply');
  }
}

function accumulated(call: CallState, id: string, name: string): AccumulatedToolCall {
  const out: AccumulatedToolCall = { index: call.index, id, name, arguments: call.arguments };
  if (call.extraContent) out.extraContent = call.extraContent;
  return out;
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
