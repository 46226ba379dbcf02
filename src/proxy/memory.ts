/**
 * Tool context that survives Unmute's history. Unmute keeps only what it spoke, so a follow-up question
 * ("Is it windy?") reaches the model without the weather result the last answer came from. After a turn
 * that ran ToolSet tools, the exchange it added (assistant tool_calls + tool messages) is remembered under
 * a hash of the messages as the client sent them; later requests whose history starts the same way get
 * it spliced back, in place, between that user message and the spoken answer.
 *
 * Prefix hashes are computed in one pass over the messages (each extends the previous), with a fast
 * non-cryptographic hash of two 32-bit lanes (64 bits of key). A hit is also checked against the stored
 * message count and user text, which makes splicing another conversation's results vanishingly unlikely
 * without the cost of a cryptographic hash on every request.
 */
import { LRUCache } from 'lru-cache';
import type { Telemetry } from '../telemetry/types.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import { type ChatMessage, messageText } from './messages.js';
import type { TurnMemory } from './turn.js';

interface Entry {
  /** Number of client messages in the prefix, and the text of its last (user) message. */
  count: number;
  userText: string;
  exchange: ChatMessage[];
  bytes: number;
}

const SEED_A = 0xdeadbeef;
const SEED_B = 0x41c6ce57;

/** Extends a running hash (two 32-bit lanes, cyrb53-style) with one message's role and text. */
function extend(state: [number, number], role: string, text: string): [number, number] {
  let [h1, h2] = state;
  const feed = (s: string) => {
    for (let i = 0; i < s.length; i++) {
      const ch = s.charCodeAt(i);
      h1 = Math.imul(h1 ^ ch, 2654435761);
      h2 = Math.imul(h2 ^ ch, 1597334677);
    }
  };
  feed(role);
  h1 = Math.imul(h1 ^ 0x1f, 2654435761);
  feed(text);
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return [h1 >>> 0, h2 >>> 0];
}

function key(state: [number, number]): string {
  return `${state[0].toString(36)}:${state[1].toString(36)}`;
}

export interface MemoryOptions {
  turns: number;
  ttlMs: number;
  maxBytes: number;
  maxEntries: number;
  /** Clock for expiry (tests pass a fake one). */
  now?: () => number;
}

export class ToolMemory implements TurnMemory {
  readonly #cache: LRUCache<string, Entry>;
  readonly #options: MemoryOptions;
  readonly #onSplice: (exchanges: number) => void;
  readonly #onSize: (entries: number) => void;

  constructor(
    options: MemoryOptions,
    hooks: { onSplice?: (n: number) => void; onSize?: (n: number) => void } = {},
  ) {
    this.#options = options;
    this.#onSplice = hooks.onSplice ?? (() => {});
    this.#onSize = hooks.onSize ?? (() => {});
    const now = options.now;
    this.#cache = new LRUCache<string, Entry>({
      max: Math.max(1, options.maxEntries),
      ttl: options.ttlMs,
      ttlAutopurge: false,
      // A fake clock must be read every time; lru-cache otherwise caches `now` for a millisecond.
      ...(now ? { perf: { now }, ttlResolution: 0 } : {}),
    });
  }

  sameOptions(o: MemoryOptions): boolean {
    const m = this.#options;
    return (
      m.turns === o.turns && m.ttlMs === o.ttlMs && m.maxBytes === o.maxBytes && m.maxEntries === o.maxEntries
    );
  }

  get size(): number {
    return this.#cache.size;
  }

  prepare(clientMessages: ChatMessage[]): {
    messages: ChatMessage[];
    spliced: number;
    withoutMemory: ChatMessage[];
  } {
    const none = { messages: clientMessages, spliced: 0, withoutMemory: clientMessages };
    if (this.#options.turns === 0 || this.#cache.size === 0) return none;
    this.#purgeNowAndThen();
    // One pass: the hash of each prefix extends the previous one. Candidates are user messages followed
    // by an assistant message (an answered turn), newest first.
    let state: [number, number] = [SEED_A, SEED_B];
    const hits: { at: number; entry: Entry }[] = [];
    for (let i = 0; i < clientMessages.length; i++) {
      const m = clientMessages[i] as ChatMessage;
      const text = messageText(m);
      state = extend(state, m.role, text);
      if (m.role !== 'user' || clientMessages[i + 1]?.role !== 'assistant') continue;
      const entry = this.#cache.get(key(state));
      if (entry && entry.count === i + 1 && entry.userText === text) hits.push({ at: i, entry });
    }
    if (hits.length === 0) return none;
    const chosen = new Map<number, ChatMessage[]>();
    let bytes = 0;
    for (let h = hits.length - 1; h >= 0 && chosen.size < this.#options.turns; h--) {
      const { at, entry } = hits[h] as (typeof hits)[number];
      if (bytes + entry.bytes > this.#options.maxBytes) continue;
      bytes += entry.bytes;
      chosen.set(at, entry.exchange);
    }
    if (chosen.size === 0) return none;
    const messages: ChatMessage[] = [];
    for (let i = 0; i < clientMessages.length; i++) {
      messages.push(clientMessages[i] as ChatMessage);
      const exchange = chosen.get(i);
      if (exchange) messages.push(...exchange);
    }
    this.#onSplice(chosen.size);
    return { messages, spliced: chosen.size, withoutMemory: clientMessages };
  }

  #lastPurge = 0;

  /** Expired entries leave the count (earpiece_memory_entries) at most a second late. */
  #purgeNowAndThen(): void {
    const now = (this.#options.now ?? performance.now.bind(performance))();
    if (now - this.#lastPurge < 1000) return;
    this.#lastPurge = now;
    if (this.#cache.purgeStale()) this.#onSize(this.#cache.size);
  }

  remember(clientMessages: ChatMessage[], exchange: ChatMessage[]): void {
    if (this.#options.turns === 0 || exchange.length === 0) return;
    const last = clientMessages.at(-1);
    if (last?.role !== 'user') return;
    let state: [number, number] = [SEED_A, SEED_B];
    for (const m of clientMessages) state = extend(state, m.role, messageText(m));
    // The spoken answer follows in the client's history; the remembered assistant message holds only the calls.
    const stored = exchange.map((m) => (m.role === 'assistant' ? { ...m, content: null } : m));
    const bytes = Buffer.byteLength(JSON.stringify(stored));
    this.#cache.set(key(state), {
      count: clientMessages.length,
      userText: messageText(last),
      exchange: stored,
      bytes,
    });
    this.#onSize(this.#cache.size);
  }
}

/** The memory for a ToolSet; a reload keeps what was remembered when the settings allow. */
export function createMemory(
  toolset: ResolvedToolSet,
  telemetry: Telemetry,
  previous?: TurnMemory,
): ToolMemory | undefined {
  if (toolset.memory.turns === 0) return undefined;
  const options: MemoryOptions = {
    turns: toolset.memory.turns,
    ttlMs: toolset.memory.ttlMs,
    maxBytes: toolset.memory.maxBytes,
    maxEntries: toolset.cacheMaxEntries,
  };
  if (previous instanceof ToolMemory && previous.sameOptions(options)) return previous;
  return new ToolMemory(options, {
    onSplice: (n) => telemetry.memorySpliced(toolset.name, n),
    onSize: (n) => telemetry.memoryEntries(toolset.name, n),
  });
}
