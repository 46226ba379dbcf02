/** What the benchmark's driver (run.ts) and its model-and-tool child (upstream.ts) share. */

/** The model's streamed answer: 64 content chunks, 20 ms apart. */
export const CONTENT_CHUNKS = 64;
export const PACE_MS = 20;
/** Sixteen words, said four times. */
const ANSWER_SENTENCE = 'It is twenty one degrees in Lisbon now, with a light breeze coming from the sea.';
export const ANSWER_TEXT = Array.from({ length: 4 }, () => ANSWER_SENTENCE).join(' ');

/** One tool turn's timestamps, ms on the child's clock (performance.timeOrigin + performance.now()). */
export interface TurnStamps {
  callSent?: number;
  toolAsked?: number;
  toolAnswered?: number;
  nextAsked?: number;
}

export type ChildMessage =
  | { type: 'ready'; upstreamUrl: string; toolUrl: string }
  | { type: 'stamps'; turns: Record<string, TurnStamps> };

export type ParentMessage = { type: 'stamps' } | { type: 'reset' };
