/** What the benchmark's driver (run.ts) and its model-and-tool child (upstream.ts) share. */

/** The model's streamed answer: 64 content chunks, 20 ms apart. */
export const CONTENT_CHUNKS = 64;
export const PACE_MS = 20;
/** Sixteen words, said four times. */
const ANSWER_SENTENCE = 'It is twenty one degrees in Lisbon now, with a light breeze coming from the sea.';
export const ANSWER_TEXT = Array.from({ length: 4 }, () => ANSWER_SENTENCE).join(' ');

/** A brief answer (8 chunks, 5 ms apart) for the one-stream TTFT samples: many samples in little time. */
export const BRIEF_TEXT = 'It is twenty one degrees in Lisbon now.';
export const BRIEF_CHUNKS = 8;
export const BRIEF_PACE_MS = 5;

/** A system prompt of Unmute's size (about 3 KB: persona, style, silence rules). */
export const SYSTEM_PROMPT =
  `# BASICS\n${'You are a friendly voice assistant. Your responses will be spoken out loud, so keep them short and write as a human would speak. '.repeat(24)}`.slice(
    0,
    3000,
  );

/** One tool turn's timestamps, ms on the child's clock (performance.timeOrigin + performance.now()). */
export interface TurnStamps {
  callSent?: number;
  toolAsked?: number;
  toolAnswered?: number;
  nextAsked?: number;
  /** Two calls in one message: the model wrote call 1's first delta (call 0's arguments are complete). */
  firstCallComplete?: number;
  /** Two calls in one message: the model wrote call 1's last argument token. */
  secondCallEnd?: number;
  /** Barge-in: the model's response to this turn was closed by the proxy. */
  upstreamClosed?: number;
  /** Barge-in: the running tool's request was closed by the proxy. */
  toolClosed?: number;
}

export type ChildMessage =
  | { type: 'ready'; upstreamUrl: string; toolUrl: string }
  | { type: 'stamps'; turns: Record<string, TurnStamps> };

export type ParentMessage = { type: 'stamps' } | { type: 'reset' };
