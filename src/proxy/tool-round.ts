/**
 * One round of the model's calls to ToolSet tools. A call starts as soon as its arguments are complete
 * (`ready`, while the model still streams the next call), or when the message ends (`finish`); at most
 * `maxParallelCalls` run at once in the turn, and the results come back in index order. A deferred call holds
 * its slot until it really ends, after its round or the turn if need be; its deferAfter clock starts when the
 * turn asks for it, so one still queued for a slot then is answered as pending too. The filler is the first call's by index
 * whose tool has one (else voice.filler). It is spoken as soon as that is known, which is often
 * when the first call's name arrives (`named`), long before its arguments end, and always before the first
 * tool request leaves. When none can be spoken (the turn has said something, or no filler is configured),
 * there is nothing to decide, and each call starts as soon as it is ready.
 */
import { startToolSpan, toolResultAttributes } from '../telemetry/genai.js';
import type { Logger } from '../telemetry/log.js';
import type { SpanHandle, Telemetry } from '../telemetry/types.js';
import type { Deferrable, ToolCall, ToolOutcome, ToolRunner } from '../tools/types.js';
import type { VoiceText } from '../toolset/defaults.js';
import type { AccumulatedToolCall } from './accumulator.js';
import type { Deferral, DeferredCalls } from './deferral.js';

export interface ToolRoundParts {
  tools: ToolRunner;
  toolset: string;
  /** The turn's maxParallelCalls slots, shared by its rounds: a deferred call holds one past its round. */
  slots: ToolSlots;
  /** voice.filler, for calls whose tool names none of its own. */
  filler: VoiceText;
  /** A voice line in the turn's language. */
  line: (text: VoiceText) => string;
  /** Where calls of tools with deferAfter run; without it every call is awaited to its end. */
  deferred?: DeferredCalls | undefined;
  /** limits.maxResultBytes, which bounds a deferred call's pending result too. */
  maxResultBytes: number;
  /** The turn's signal: the client's hang-up and the deadline. */
  signal: AbortSignal;
  /** The client's own signal, to log tools that finish after it left (onInterrupt: finish). */
  clientSignal: AbortSignal;
  span: SpanHandle;
  telemetry: Telemetry;
  logger: Logger;
  /**
   * Whether a filler could be spoken before this round's tools: false once the turn has said something,
   * or when no filler is configured. Then the filler is decided as none at once, and no call waits for it.
   */
  fillerDue(): boolean;
  /** Called once, as soon as the filler is decided and before the first tool request leaves ('' for none). */
  speakFiller(filler: string): void;
  /** Called once, when the first call starts. */
  toolsStarted(): void;
}

interface Entry {
  call: AccumulatedToolCall;
  outcome?: Promise<ToolOutcome>;
}

/** A turn's limit on tool calls running at once (maxParallelCalls). */
export class ToolSlots {
  readonly #size: number;
  #running = 0;
  readonly #waiting: Array<() => void> = [];

  constructor(size: number) {
    this.#size = size;
  }

  /** Runs `work` in a slot, waiting for one to free. */
  async run<T>(work: () => Promise<T>): Promise<T> {
    // A freed slot passes straight to the next waiter, so a call that arrives meanwhile cannot take it too.
    if (this.#running >= this.#size) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    else this.#running++;
    try {
      return await work();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#running--;
    }
  }
}

export class ToolRound {
  readonly #parts: ToolRoundParts;
  /** Made when the first call starts (most turns run no tools), or by abandon. */
  #abort: AbortController | undefined;
  /** By index; `#order` keeps the indexes sorted. */
  readonly #entries = new Map<number, Entry>();
  #order: number[] = [];
  /** Tool names by call index, as soon as they stream: they may decide the filler before any call is ready. */
  readonly #names: string[] = [];
  #filler: string | undefined;
  #started = false;
  /** First outcomes (a result, or a pending one) of calls that may be deferred. */
  readonly #deferrable: Promise<ToolOutcome>[] = [];
  /** Calls that outlasted their deferAfter: they run on after the turn. */
  readonly deferrals: Deferral[] = [];

  constructor(parts: ToolRoundParts) {
    this.#parts = parts;
  }

  /** A call's name has streamed; its arguments have not yet. */
  named(index: number, name: string): void {
    this.#names[index] = name;
    this.#decideFiller(false);
  }

  /**
   * A call whose arguments are complete, while the message goes on; `messageFinished`: the message has said
   * it is done with its calls, so every call's name is known.
   */
  ready(call: AccumulatedToolCall, messageFinished = false): void {
    this.#add(call);
    this.#decideFiller(messageFinished);
    this.#startReady();
  }

  /** The message has ended with these calls: starts the rest; resolves with every outcome, in index order. */
  finish(calls: readonly AccumulatedToolCall[]): Promise<ToolOutcome[]> {
    for (const call of calls) this.#add(call);
    this.#decideFiller(true);
    this.#startReady();
    return Promise.all(this.#order.map((i) => this.#entries.get(i)?.outcome as Promise<ToolOutcome>));
  }

  /** The calls as they ran, in index order (for the assistant message sent back upstream). */
  get calls(): AccumulatedToolCall[] {
    return this.#order.map((i) => (this.#entries.get(i) as Entry).call);
  }

  /**
   * The round is cut short (its message failed, or the turn ended while its calls ran): calls already
   * started are stopped (onInterrupt: finish tools run on). Resolves with the calls deferred meanwhile (a
   * hang-up defers at once), so their late results are not lost.
   */
  async abandon(reason: unknown): Promise<Deferral[]> {
    // Made here if no call has started yet: those still queued for a slot then start cancelled.
    this.#abort ??= new AbortController();
    this.#abort.abort(reason);
    await Promise.allSettled(this.#deferrable);
    return this.deferrals;
  }

  #add(call: AccumulatedToolCall): void {
    const started = this.#entries.get(call.index);
    if (started) {
      // Started early: it ran with the arguments it had, but a signature that came later goes back with it.
      if (call.extraContent && !started.call.extraContent)
        started.call = { ...started.call, extraContent: call.extraContent };
      return;
    }
    this.#entries.set(call.index, { call });
    this.#names[call.index] = call.name;
    this.#order.push(call.index);
    this.#order.sort((a, b) => a - b);
  }

  /**
   * The first call by index whose tool has a filler decides. While calls may still come, calls 0, 1, …
   * without a gap must all be known up to that one, since a call not yet seen may come before it; once
   * every call is named (`allNamed`), a gap is an index no call took.
   */
  #decideFiller(allNamed: boolean): void {
    if (this.#filler !== undefined) return;
    if (!this.#parts.fillerDue()) {
      this.#filler = '';
      this.#parts.speakFiller('');
      return;
    }
    const names = this.#names;
    for (const index of names.keys()) {
      const name = names[index];
      if (name === undefined) {
        if (allNamed) continue;
        break;
      }
      const text = this.#fillerOf(name);
      if (text !== '') {
        this.#filler = /\s$/.test(text) ? text : `${text} `;
        break;
      }
    }
    if (this.#filler === undefined && allNamed) this.#filler = '';
    if (this.#filler !== undefined) this.#parts.speakFiller(this.#filler);
  }

  #fillerOf(name: string): string {
    const { tools, filler, line } = this.#parts;
    return line((tools.has(name) ? tools.filler(name) : undefined) ?? filler);
  }

  #startReady(): void {
    if (this.#filler === undefined) return;
    const { tools, deferred } = this.#parts;
    for (const index of this.#order) {
      const entry = this.#entries.get(index) as Entry;
      if (entry.outcome) continue;
      if (!this.#started) {
        this.#started = true;
        this.#parts.toolsStarted();
      }
      const name = entry.call.name;
      const deferrable = deferred && tools.has(name) ? tools.deferral(name) : undefined;
      // A deferrable call takes a slot only to run the tool: its pending result must not wait for one.
      if (deferrable) {
        entry.outcome = this.#run(entry.call, deferrable);
        this.#deferrable.push(entry.outcome);
      } else {
        entry.outcome = this.#parts.slots.run(() => this.#run(entry.call, undefined));
      }
    }
  }

  /** `deferrable`, read when the call was asked for, decided whether it waits for a slot first. */
  async #run(c: AccumulatedToolCall, deferrable: Deferrable | undefined): Promise<ToolOutcome> {
    const { tools, telemetry, logger } = this.#parts;
    const call: ToolCall = { id: c.id, name: c.name, arguments: c.arguments };
    const span = startToolSpan(this.#parts.span, {
      name: c.name,
      callId: c.id,
      // Run by the proxy: an extension, or a datastore for SQL (GenAI conventions).
      type: tools.kind(c.name) === 'sql' ? 'datastore' : 'extension',
      arguments: c.arguments,
    });
    // The turn's signal, or a failed message (abandon): one controller, lighter than AbortSignal.any.
    if (!this.#abort) {
      const abort = new AbortController();
      const turn = this.#parts.signal;
      if (turn.aborted) abort.abort(turn.reason);
      else turn.addEventListener('abort', () => abort.abort(turn.reason), { once: true });
      this.#abort = abort;
    }
    const record = (outcome: ToolOutcome, late: boolean) => {
      telemetry.toolCall({
        toolset: this.#parts.toolset,
        tool: c.name,
        outcome: outcome.outcome,
        seconds: outcome.seconds,
      });
      if (!late && this.#parts.clientSignal.aborted && outcome.outcome !== 'cancelled') {
        logger.info(
          { tool: c.name, outcome: outcome.outcome },
          'Tool finished after the client left (onInterrupt: finish).',
        );
      }
      span.setAttributes({
        'earpiece.tool.outcome': outcome.outcome,
        'earpiece.tool.deferred': late,
        ...toolResultAttributes(outcome.content),
      });
      span.end(outcome.outcome === 'ok' || outcome.outcome === 'cache_hit' ? undefined : outcome.outcome);
    };
    const signal = this.#abort.signal;
    const deferred = this.#parts.deferred;
    if (deferrable === undefined || !deferred) {
      const outcome = await tools.call(call, signal);
      record(outcome, false);
      return outcome;
    }
    // Only a run this turn starts takes a slot (a joined one never calls start), and holds it to the end.
    const start = () => this.#parts.slots.run(() => tools.call(call, signal));
    const { outcome, deferral, pending } = await deferred.run(call, start, {
      deferAfterMs: deferrable.afterMs,
      definition: deferrable.definition,
      clientSignal: this.#parts.clientSignal,
      runner: tools,
      maxResultBytes: this.#parts.maxResultBytes,
    });
    if (!pending) {
      record(outcome, false);
      return outcome;
    }
    // Joined a run an earlier turn deferred: that turn records it and delivers its result.
    if (!deferral) return outcome;
    // The real outcome is recorded when it lands; the model reads the pending one now.
    this.deferrals.push(deferral);
    void deferral.outcome.then((late) => record(late, true));
    return outcome;
  }
}
