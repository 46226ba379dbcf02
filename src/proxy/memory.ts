/**
 * Tool context that survives Unmute's history. Unmute keeps only what it spoke, so a follow-up question
 * ("Is it windy?") reaches the model without the weather result the last answer came from. After a turn
 * that ran ToolSet tools, the exchange it added (assistant tool_calls + tool messages) is remembered under
 * a hash of the messages as the client sent them; later requests whose history starts the same way get
 * it spliced back, in place, between that user message and the spoken answer.
 *
 * Prefix hashes are computed in one pass over the messages (each extends the previous), with a fast
 * non-cryptographic hash (53 bits of key). A hit is also checked against the stored message count and the
 * length and a second hash of the user text, which makes splicing another conversation's results
 * vanishingly unlikely without the cost of a cryptographic hash on every request; an entry keeps no copy
 * of the text, so memory.maxBytes bounds what a conversation holds, however long its question.
 */
import { LRUCache } from 'lru-cache';
import type { Telemetry } from '../telemetry/types.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import { type ChatMessage, messageText } from './messages.js';
import type { TurnMemory } from './request-policy.js';

interface Entry {
  /** Number of client messages in the prefix, and the length and textHash of its last (user) message. */
  count: number;
  textLength: number;
  textHash: number;
  exchange: ChatMessage[];
  bytes: number;
  /** Tools whose result arrived after the turn had ended, not yet spliced into a request. */
  late?: string[];
}

/** Where a late result goes: into the exchange of the turn that made the call. */
export interface LateResults {
  /**
   * A deferred call's finished exchange (its assistant tool_calls message and its tool message), for the
   * conversation whose request was `clientMessages`. It replaces the pending result in place, and the
   * next request of that conversation carries it with a note that it has just arrived. Says whether it
   * was kept, or why not: the exchange, with the turn's other results, is larger than memory.maxBytes
   * (`too_large`), or the request did not end with a user message, so there is no turn to put it under
   * (`no_turn`).
   */
  late(clientMessages: ChatMessage[], exchange: ChatMessage[]): 'kept' | 'too_large' | 'no_turn';
}

/** The one-line note that tells the model a result has just arrived, and what to do with it. */
export function lateNote(tools: readonly string[]): ChatMessage {
  const names = tools.map((t) => JSON.stringify(t)).join(' and ');
  return {
    role: 'system',
    content: `The result of ${names}, which was still pending when you last answered, has just arrived (above, in place of the pending note): tell the user now, briefly.`,
  };
}

/**
 * A running hash of a message prefix (two 32-bit lanes, cyrb53-style): each message extends it. Two UTF-16
 * code units go into each step (they fit 32 bits exactly), which halves the multiplications; each string's
 * length goes in too, so "ab" and "ab\0" differ. No allocation per message: this runs on every request.
 */
class PrefixHash {
  h1 = 0xdeadbeef;
  h2 = 0x41c6ce57;

  add(role: string, text: string): void {
    this.#feed(role);
    this.#feed(text);
    const h1 = this.h1;
    const h2 = this.h2;
    this.h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    this.h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(this.h1 ^ (this.h1 >>> 13), 3266489909);
  }

  #feed(s: string): void {
    let h1 = this.h1;
    let h2 = this.h2;
    const n = s.length;
    let i = 0;
    for (; i + 1 < n; i += 2) {
      const v = s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16);
      h1 = Math.imul(h1 ^ v, 2654435761);
      h2 = Math.imul(h2 ^ v, 1597334677);
    }
    const last = i < n ? s.charCodeAt(i) : 0;
    this.h1 = Math.imul(h1 ^ last ^ (n << 16), 2654435761);
    this.h2 = Math.imul(h2 ^ last ^ n, 1597334677);
  }

  /** 53 bits (21 of one lane, 32 of the other): a number, which keys a Map faster than a string. */
  key(): number {
    return 4294967296 * ((this.h2 >>> 0) & 2097151) + (this.h1 >>> 0);
  }
}

/** A second hash of one message's text, for checking a hit (its role is left out, so it differs from a prefix's). */
function textHash(text: string): number {
  const hash = new PrefixHash();
  hash.add('', text);
  return hash.key();
}

/** What an entry keeps of the last message of its prefix. */
function lastText(last: ChatMessage): { textLength: number; textHash: number } {
  const text = messageText(last);
  return { textLength: text.length, textHash: textHash(text) };
}

/** The key an exchange is remembered under: the hash of the client's messages up to the turn's question. */
function prefixKey(clientMessages: readonly ChatMessage[]): number {
  const hash = new PrefixHash();
  for (const m of clientMessages) hash.add(m.role, messageText(m));
  return hash.key();
}

export interface MemoryOptions {
  turns: number;
  ttlMs: number;
  maxBytes: number;
  /** Conversations remembered at most (memory.maxEntries), least recently used first out. */
  maxEntries: number;
  /** Clock for expiry (tests pass a fake one). */
  now?: () => number;
}

export class ToolMemory implements TurnMemory, LateResults {
  readonly #cache: LRUCache<number, Entry>;
  readonly #options: MemoryOptions;
  readonly #onSplice: (exchanges: number) => void;
  readonly #onSize: (entries: number) => void;
  readonly #onLate: (tools: string[]) => void;

  constructor(
    options: MemoryOptions,
    hooks: {
      onSplice?: (n: number) => void;
      onSize?: (n: number) => void;
      /** Late results spliced into a request (each is delivered once). */
      onLate?: (tools: string[]) => void;
      /** Late results that expired or were evicted before any request carried them. */
      onLateLost?: (tools: string[]) => void;
    } = {},
  ) {
    this.#options = options;
    this.#onSplice = hooks.onSplice ?? (() => {});
    this.#onSize = hooks.onSize ?? (() => {});
    this.#onLate = hooks.onLate ?? (() => {});
    const now = options.now;
    this.#cache = new LRUCache<number, Entry>({
      max: options.maxEntries,
      ttl: options.ttlMs,
      ttlAutopurge: false,
      dispose: (entry, _key, reason) => {
        if (entry.late && (reason === 'expire' || reason === 'evict')) hooks.onLateLost?.(entry.late);
      },
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
    const hash = new PrefixHash();
    const hits: { at: number; entry: Entry }[] = [];
    for (let i = 0; i < clientMessages.length; i++) {
      const m = clientMessages[i] as ChatMessage;
      const text = messageText(m);
      hash.add(m.role, text);
      if (m.role !== 'user' || clientMessages[i + 1]?.role !== 'assistant') continue;
      const entry = this.#cache.get(hash.key());
      if (
        entry &&
        entry.count === i + 1 &&
        entry.textLength === text.length &&
        entry.textHash === textHash(text)
      ) {
        hits.push({ at: i, entry });
      }
    }
    if (hits.length === 0) return none;
    const chosen = new Map<number, ChatMessage[]>();
    let bytes = 0;
    // Late results first: they are what the model has promised to tell the user.
    const ranked = [...hits.filter((h) => h.entry.late), ...hits.filter((h) => !h.entry.late).reverse()];
    const arrived: string[] = [];
    let ordinary = 0;
    for (const { at, entry } of ranked) {
      // A late result goes back on top of the newest memory.turns exchanges, within maxBytes like them; one
      // that does not fit stays late for a later request, where it ranks first.
      if (!entry.late && ordinary >= this.#options.turns) break;
      if (bytes + entry.bytes > this.#options.maxBytes) continue;
      if (!entry.late) ordinary++;
      bytes += entry.bytes;
      chosen.set(at, entry.exchange);
      if (entry.late) {
        arrived.push(...entry.late);
        // Spliced once as late; from now on it is ordinary memory.
        entry.late = undefined;
      }
    }
    if (chosen.size === 0) return none;
    const messages: ChatMessage[] = [];
    for (let i = 0; i < clientMessages.length; i++) {
      messages.push(clientMessages[i] as ChatMessage);
      const exchange = chosen.get(i);
      if (exchange) messages.push(...exchange);
    }
    if (arrived.length > 0) {
      messages.push(lateNote(arrived));
      this.#onLate(arrived);
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

  late(clientMessages: ChatMessage[], exchange: ChatMessage[]): 'kept' | 'too_large' | 'no_turn' {
    const last = clientMessages.at(-1);
    if (this.#options.turns === 0 || last?.role !== 'user') return 'no_turn';
    const key = prefixKey(clientMessages);
    const entry = this.#cache.get(key);
    const calls = exchange.flatMap(
      (m) => (m.tool_calls ?? []) as { id: string; function: { name: string } }[],
    );
    const results = exchange.filter((m) => m.role === 'tool');
    let stored: ChatMessage[];
    if (entry && entry.count === clientMessages.length) {
      // In place: the real result replaces the pending one the model saw.
      const ids = new Set(results.map((m) => m.tool_call_id));
      const known = new Set(
        entry.exchange.flatMap((m) => ((m.tool_calls ?? []) as { id: string }[]).map((c) => c.id)),
      );
      stored = entry.exchange.map((m) =>
        m.role === 'tool' && ids.has(m.tool_call_id)
          ? (results.find((r) => r.tool_call_id === m.tool_call_id) as ChatMessage)
          : m,
      );
      const missing = exchange.filter(
        (m) =>
          (m.role === 'tool' && !known.has(m.tool_call_id as string)) ||
          (m.role === 'assistant' &&
            ((m.tool_calls ?? []) as { id: string }[]).some((c) => !known.has(c.id))),
      );
      stored = [...stored, ...missing.map((m) => (m.role === 'assistant' ? { ...m, content: null } : m))];
    } else {
      stored = exchange.map((m) => (m.role === 'assistant' ? { ...m, content: null } : m));
    }
    const bytes = Buffer.byteLength(JSON.stringify(stored));
    // The bound remember() holds: an entry larger than maxBytes is never kept (the pending one stays).
    if (bytes > this.#options.maxBytes) return 'too_large';
    const late = [...new Set([...(entry?.late ?? []), ...calls.map((c) => c.function.name)])];
    this.#cache.set(key, {
      count: clientMessages.length,
      ...lastText(last),
      exchange: stored,
      bytes,
      late,
    });
    this.#onSize(this.#cache.size);
    return 'kept';
  }

  remember(clientMessages: ChatMessage[], exchange: ChatMessage[]): void {
    if (this.#options.turns === 0 || exchange.length === 0) return;
    const last = clientMessages.at(-1);
    if (last?.role !== 'user') return;
    const hash = new PrefixHash();
    for (const m of clientMessages) hash.add(m.role, messageText(m));
    // The spoken answer follows in the client's history; the remembered assistant message holds only the calls.
    const stored = exchange.map((m) => (m.role === 'assistant' ? { ...m, content: null } : m));
    const bytes = Buffer.byteLength(JSON.stringify(stored));
    // Too big to ever be spliced back: not kept (a runaway call's arguments must not sit in memory).
    if (bytes > this.#options.maxBytes) return;
    this.#cache.set(hash.key(), {
      count: clientMessages.length,
      ...lastText(last),
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
    maxEntries: toolset.memory.maxEntries,
  };
  if (previous instanceof ToolMemory && previous.sameOptions(options)) return previous;
  return new ToolMemory(options, {
    onSplice: (n) => telemetry.memory({ toolset: toolset.name, spliced: n }),
    onSize: (n) => telemetry.memory({ toolset: toolset.name, entries: n }),
    onLate: (tools) => {
      for (const _ of tools) telemetry.deferredCall({ toolset: toolset.name, outcome: 'delivered' });
    },
    onLateLost: (tools) => {
      for (const _ of tools) telemetry.deferredCall({ toolset: toolset.name, outcome: 'expired' });
    },
  });
}
