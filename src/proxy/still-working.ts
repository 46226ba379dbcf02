/**
 * No long silence on a tool turn: when tools are running and nothing new has been spoken for
 * `voice.stillWorkingAfter`, the proxy says `voice.stillWorking` once. The silence is counted from the
 * last words spoken (the filler, or the model's own lead-in), or from the request's arrival when nothing
 * has been said. Never once the answer has begun, never twice in a turn; "" turns it off.
 */
export interface StillWorkingParts {
  afterMs: number;
  /** The line in the turn's language; "" means off. */
  text: () => string;
  /** performance.now() of the last words spoken, or of the request's arrival. */
  silentSince: () => number;
  /** Speaks the line (the speaker keeps it apart from what came before). */
  speak: (text: string) => void;
}

export class StillWorking {
  readonly #parts: StillWorkingParts;
  #timer: NodeJS.Timeout | undefined;
  #done = false;

  constructor(parts: StillWorkingParts) {
    this.#parts = parts;
  }

  /** Tools have started: arms the timer for the rest of the silence. */
  toolsStarted(): void {
    if (this.#done || this.#timer || this.#parts.afterMs <= 0) return;
    this.#arm();
  }

  /** The tools of this round are done: the model speaks next. */
  toolsFinished(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** The answer has begun (or the turn is over): never again in this turn. */
  stop(): void {
    this.#done = true;
    this.toolsFinished();
  }

  #arm(): void {
    const wait = Math.max(0, this.#parts.silentSince() + this.#parts.afterMs - performance.now());
    this.#timer = setTimeout(() => this.#fire(), wait);
  }

  #fire(): void {
    this.#timer = undefined;
    if (this.#done) return;
    // Something was said meanwhile (a preamble streamed while a call ran): wait out the new silence.
    if (performance.now() - this.#parts.silentSince() < this.#parts.afterMs - 1) {
      this.#arm();
      return;
    }
    this.#done = true;
    const text = this.#parts.text();
    if (text !== '') this.#parts.speak(/\s$/.test(text) ? text : `${text} `);
  }
}
