/**
 * What the user hears, over the turn's sink: the model's words, the filler, the error message. It owns
 * the spacing between them (Unmute holds a word until whitespace follows), the at-most-once filler, and
 * the time of the first content. It knows nothing of tools or upstreams.
 */
import type { Usage } from './chunks.js';
import type { ProxyError } from './errors.js';
import type { FinishReason, TurnSink } from './sinks.js';

const NON_SPACE = /\S/;
const SPACE = /\s/;
/** Whitespace kept while no word follows: more says nothing more to a TTS, and a stuck model may send it without end. */
const MAX_PENDING_SPACE = 64;

export class Speaker {
  readonly #sink: TurnSink;
  /** performance.now() of the first content written, filler included. */
  firstContentAt: number | undefined;
  /** performance.now() of the last content written: where a silence starts. */
  lastContentAt: number | undefined;
  #spoke = false;
  #fillerSpoken = false;
  #endsInSpace = true;
  /** Whitespace alone (vLLM's hermes parser streams "\n" between calls) is not speech: it waits for words. */
  #pendingSpace = '';
  /** Whether the model has said anything in its current message. */
  #answered = false;

  constructor(sink: TurnSink) {
    this.#sink = sink;
  }

  /** The model has been asked: the client's response head may go. */
  begin(): void {
    this.#sink.begin();
  }

  /**
   * A new model message begins (a new upstream call). Its first words go apart from the last ones spoken:
   * words the previous message said after its calls' names came after beforeTools' space.
   */
  startMessage(): void {
    this.#pendingSpace = this.#spoke && !this.#endsInSpace ? ' ' : '';
    this.#answered = false;
  }

  /** The model's text. False while the client's socket is full: wait for `drained()`. */
  model(text: string): boolean {
    if (text === '') return true;
    if (!NON_SPACE.test(text)) {
      if (this.#pendingSpace.length < MAX_PENDING_SPACE)
        this.#pendingSpace += text.slice(0, MAX_PENDING_SPACE - this.#pendingSpace.length);
      return true;
    }
    const out = this.#pendingSpace + text;
    this.#pendingSpace = '';
    this.#answered = true;
    return this.#write(out);
  }

  drained(): Promise<void> {
    return this.#sink.drained();
  }

  /**
   * Before tools run: the filler if nothing has been said yet this turn (at most once), else a space that
   * releases the model's last word and keeps it apart from the answer to come.
   */
  beforeTools(filler: string): void {
    if (!this.#spoke && !this.#fillerSpoken) {
      this.#fillerSpoken = true;
      this.#write(filler);
    } else if (!this.#endsInSpace) {
      this.#write(' ');
    }
  }

  /** Whether beforeTools would speak a filler now: nothing has been said this turn, no filler yet. */
  get fillerDue(): boolean {
    return !this.#spoke && !this.#fillerSpoken;
  }

  /** The model said nothing in its current message: an answer after tool rounds must still be heard. */
  get answered(): boolean {
    return this.#answered;
  }

  /** One of the proxy's own lines (the error message), apart from what came before. */
  line(text: string): void {
    this.#write(this.#spoke && !this.#endsInSpace ? ` ${text}` : text);
  }

  toolCalls(calls: Parameters<TurnSink['toolCalls']>[0]): void {
    this.#sink.toolCalls(calls);
  }

  end(reason: FinishReason, usage: Usage | undefined): void {
    this.#sink.end(reason, usage);
  }

  /** Ends the turn after a failure: the error message, apart from the words before it. */
  fail(error: ProxyError, errorMessage: string): void {
    this.#sink.fail(error, this.#spoke && !this.#endsInSpace ? ` ${errorMessage}` : errorMessage);
  }

  #write(text: string): boolean {
    if (text === '') return true;
    this.lastContentAt = performance.now();
    this.firstContentAt ??= this.lastContentAt;
    this.#spoke = true;
    this.#endsInSpace = SPACE.test(text.charAt(text.length - 1));
    return this.#sink.content(text);
  }
}
