/** History edits, all pure: instructions, the turns that never need tools, keyword windows, trimming. */

export interface ChatMessage {
  role: string;
  content?: unknown;
  tool_calls?: unknown[];
  tool_call_id?: string;
  name?: string;
  [key: string]: unknown;
}

/** Text of a message's content, whether a string or an array of content parts. */
export function messageText(message: ChatMessage): string {
  const c = message.content;
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) {
    return c
      .map((part) =>
        part && typeof part === 'object' && 'text' in part ? String((part as { text: unknown }).text) : '',
      )
      .join(' ');
  }
  return '';
}

/** `instructions` appended to the system message (a system message is added when there is none). */
export function withInstructions(messages: ChatMessage[], instructions: string | undefined): ChatMessage[] {
  if (!instructions) return messages;
  const [first, ...rest] = messages;
  if (first?.role === 'system' && typeof first.content === 'string') {
    return [{ ...first, content: `${first.content}\n\n${instructions}` }, ...rest];
  }
  return [{ role: 'system', content: instructions }, ...messages];
}

/**
 * Unmute's opening request (its only user message is `Hello!`) and its silence marker (the last user
 * message is `...`) never need a tool; offering none saves context and time.
 */
export function needsNoTools(messages: ChatMessage[]): boolean {
  const users = messages.filter((m) => m.role === 'user');
  const last = users.at(-1);
  if (!last) return true;
  const text = messageText(last).trim();
  if (text === '...') return true;
  return users.length === 1 && text === 'Hello!';
}

/**
 * What `recentUserText` keeps of each message: its end. Spoken turns are far shorter; the bound keeps the
 * synchronous work on it (keyword matching, language detection) small whatever a client sends.
 */
export const RECENT_TEXT_CHARS = 1000;

/**
 * The last RECENT_TEXT_CHARS characters of each of the last `count` user messages, newest last: the window
 * `when.keywords` and language detection look at.
 */
export function recentUserText(messages: ChatMessage[], count = 2): string[] {
  const out: string[] = [];
  for (let i = messages.length - 1; i >= 0 && out.length < count; i--) {
    const m = messages[i] as ChatMessage;
    if (m.role === 'user') out.unshift(messageText(m).slice(-RECENT_TEXT_CHARS));
  }
  return out;
}

/**
 * For the one context-length retry: drops the oldest half of the conversation turns, keeping every
 * system message and everything from the last user message on. A turn is a user message with what
 * follows it up to the next user message, so tool exchanges go with their turn.
 */
export function dropOldestTurns(messages: ChatMessage[]): ChatMessage[] {
  const lastUser = messages.findLastIndex((m) => m.role === 'user');
  if (lastUser <= 0) return messages;
  const head = messages.slice(0, lastUser);
  const starts: number[] = [];
  for (const [i, m] of head.entries()) {
    if (m.role !== 'system' && (m.role === 'user' || starts.length === 0)) starts.push(i);
  }
  if (starts.length === 0) return messages;
  const cut = starts[Math.ceil(starts.length / 2)] ?? lastUser;
  const kept = head.filter((m, i) => m.role === 'system' || i >= cut);
  return [...kept, ...messages.slice(lastUser)];
}
