/**
 * Calls that outlast their tool's `deferAfter`. The model gets a short pending result at once (so it tells
 * the user the answer will follow) and the turn ends; the call runs on to its timeout under the usual
 * barge-in rule. When it finishes, its real exchange goes into tool memory for that conversation, marked
 * late, and the conversation's next request (the user's next words, or Unmute's `...` silence marker)
 * carries it with a note that it has just arrived. A failed or expired late result is dropped, counted
 * and logged, as is one tool memory has no room for (off since a reload, or larger than memory.maxBytes).
 * A deferred call never runs twice: the same call (tool, its definition and arguments) asked for again
 * while it runs joins it.
 */
import type { Logger } from '../telemetry/log.js';
import type { DeferredOutcome } from '../telemetry/types.js';
import { parseArguments } from '../tools/arguments.js';
import { cutToBytes } from '../tools/call.js';
import { callId } from '../tools/tool-state.js';
import type { ToolCall, ToolOutcome } from '../tools/types.js';
import type { LateResults } from './memory.js';
import type { ChatMessage } from './messages.js';

/** What the model reads for a call that is still running. */
export function pendingContent(tool: string): string {
  return `pending: ${tool} is still running; its result will arrive later. Tell the user you will let them know as soon as it is ready. Do not call ${tool} again for this.`;
}

/** A call that outlasted its deferAfter, still running. */
export interface Deferral {
  call: ToolCall;
  outcome: Promise<ToolOutcome>;
  /** Set when a later turn joined the run and got its result as an ordinary one. */
  claimed: boolean;
}

export interface DeferOptions {
  deferAfterMs: number;
  /** The tool's definition hash: a call joins a run only if its tool is defined the same (a reload may change it). */
  definition: string;
  /** The tools the call runs on: a retired set closes them once its own calls have settled. */
  runner: object;
  /** The client's hang-up: a call still running then is deferred at once (the turn is over). */
  clientSignal: AbortSignal;
  /** limits.maxResultBytes: the pending result is cut to it, as every result is. */
  maxResultBytes: number;
}

/**
 * The same call: the id its cached result goes by, short however large its arguments; none when they are
 * not arguments the call would run with (parsing them is bounded as the call's own parse is).
 */
function sameCallKey(call: ToolCall, definition: string): string | undefined {
  const parsed = parseArguments(call.arguments);
  return parsed.ok ? callId(call.name, definition, parsed.args) : undefined;
}

function dropReason(outcome: ToolOutcome): DeferredOutcome | undefined {
  if (outcome.outcome === 'ok' || outcome.outcome === 'cache_hit') return undefined;
  if (outcome.outcome === 'timeout') return 'expired';
  if (outcome.outcome === 'cancelled') return 'cancelled';
  return 'failed';
}

/**
 * The proxy's deferred calls, kept across ToolSet reloads: a call outlives the turn, and so may outlive the
 * set it started on. Its late result goes into the memory of the set current when it lands, and the same
 * call asked for after a reload still joins it.
 */
export class DeferredCalls {
  readonly #inFlight = new Map<string, Deferral>();
  /** Calls started and not yet settled, joinable or not, by the tools they run on. */
  readonly #running = new Map<object, Set<Promise<ToolOutcome>>>();
  /** Late results on their way into memory (settle() to #land). */
  readonly #landing = new Set<Promise<void>>();
  readonly #memory: () => LateResults | undefined;
  readonly #report: (outcome: DeferredOutcome) => void;
  readonly #logger: Logger;

  /** `memory`: the current set's tool memory, read when a late result lands. */
  constructor(
    memory: () => LateResults | undefined,
    report: (outcome: DeferredOutcome) => void,
    logger: Logger,
  ) {
    this.#memory = memory;
    this.#report = report;
    this.#logger = logger;
  }

  /** Calls in flight after their turn (for tests and shutdown logs). */
  get running(): number {
    return this.#inFlight.size;
  }

  /** Whether any call runs on, or a late result is still landing: work with no turn open. */
  get busy(): boolean {
    return this.#running.size > 0 || this.#landing.size > 0;
  }

  /**
   * Resolves once no deferred call is running and every late result has landed (kept for the next request,
   * or dropped): what a caller waits for before the next request should carry it.
   */
  async idle(): Promise<void> {
    for (;;) {
      const pending = [...[...this.#running.values()].flatMap((calls) => [...calls]), ...this.#landing];
      if (pending.length === 0) return;
      await Promise.allSettled(pending);
    }
  }

  /** Resolves when every call running now on `runner` has settled (a retired set closes its tools after that). */
  async settled(runner: object): Promise<void> {
    await Promise.allSettled([...(this.#running.get(runner) ?? [])]);
  }

  /**
   * Runs a call whose tool has deferAfter, or joins the same call already running from an earlier turn.
   * Resolves with the real outcome when it comes in time, else with a pending one and the running call.
   */
  async run(
    call: ToolCall,
    start: () => Promise<ToolOutcome>,
    options: DeferOptions,
  ): Promise<{ outcome: ToolOutcome; deferral?: Deferral; pending: boolean }> {
    const key = sameCallKey(call, options.definition);
    const joined = key === undefined ? undefined : this.#inFlight.get(key);
    let outcome: Promise<ToolOutcome>;
    /** The run this turn started (none when it joined one). */
    let started: Deferral | undefined;
    if (joined) {
      this.#logger.info(
        { tool: call.name },
        'Joined a deferred call still running instead of running it again.',
      );
      outcome = joined.outcome.then((o) => ({ ...o, call }));
    } else {
      const entry: Deferral = { call, outcome: start(), claimed: false };
      outcome = entry.outcome;
      started = entry;
      const running = this.#running.get(options.runner) ?? new Set();
      this.#running.set(options.runner, running.add(entry.outcome));
      if (key !== undefined) this.#inFlight.set(key, entry);
      const settle = () => {
        running.delete(entry.outcome);
        if (running.size === 0 && this.#running.get(options.runner) === running)
          this.#running.delete(options.runner);
        if (key !== undefined && this.#inFlight.get(key) === entry) this.#inFlight.delete(key);
      };
      entry.outcome.then(settle, settle);
    }
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const deferred = new Promise<'deferred'>((resolve) => {
      timer = setTimeout(() => resolve('deferred'), options.deferAfterMs);
      onAbort = () => resolve('deferred');
      if (options.clientSignal.aborted) onAbort();
      else options.clientSignal.addEventListener('abort', onAbort, { once: true });
    });
    try {
      const first = await Promise.race([outcome, deferred]);
      if (first !== 'deferred') {
        // A later turn asked for the same call and got its result in time: no late delivery for it.
        if (joined) joined.claimed = true;
        return { outcome: first, pending: false };
      }
      return {
        outcome: {
          call,
          content: cutToBytes(pendingContent(call.name), options.maxResultBytes),
          outcome: 'ok',
          seconds: options.deferAfterMs / 1000,
          remember: true,
        },
        // A joined run is delivered late by the turn that started it, not again by this one.
        deferral: started,
        pending: true,
      };
    } finally {
      clearTimeout(timer);
      if (onAbort) options.clientSignal.removeEventListener('abort', onAbort);
    }
  }

  /**
   * The turn has ended (its exchange, with the pending results, is remembered): each deferred call's result,
   * when it lands, goes into memory under the client's messages of that turn.
   */
  settle(clientMessages: ChatMessage[], deferrals: readonly Deferral[]): void {
    for (const deferral of deferrals) {
      const landed = deferral.outcome.then(
        (outcome) =>
          new Promise<void>((resolve) =>
            setImmediate(() => {
              try {
                this.#land(clientMessages, deferral, outcome);
              } finally {
                resolve();
              }
            }),
          ),
      );
      this.#landing.add(landed);
      const gone = () => this.#landing.delete(landed);
      landed.then(gone, gone);
    }
  }

  /** Runs a macrotask after the result: a later turn that joined the call has claimed it by then. */
  #land(clientMessages: ChatMessage[], deferral: Deferral, outcome: ToolOutcome): void {
    const tool = deferral.call.name;
    if (deferral.claimed) {
      this.#report('delivered');
      return;
    }
    const dropped = dropReason(outcome);
    const memory = this.#memory();
    if (dropped !== undefined || !memory) {
      this.#report(dropped ?? 'discarded');
      this.#logger.info(
        { tool, outcome: outcome.outcome, seconds: outcome.seconds },
        dropped
          ? 'Dropped the late result of a deferred call.'
          : 'Dropped the late result of a deferred call: tool memory is off since a reload.',
      );
      return;
    }
    const kept = memory.late(clientMessages, [
      {
        role: 'assistant',
        content: null,
        tool_calls: [
          {
            id: deferral.call.id,
            type: 'function',
            function: { name: tool, arguments: deferral.call.arguments },
          },
        ],
      },
      { role: 'tool', tool_call_id: deferral.call.id, content: outcome.content },
    ]);
    if (kept !== 'kept') {
      this.#report('discarded');
      this.#logger.info(
        { tool, seconds: outcome.seconds, bytes: Buffer.byteLength(outcome.content) },
        kept === 'too_large'
          ? 'Dropped the late result of a deferred call: it does not fit in tool memory (memory.maxBytes).'
          : 'Dropped the late result of a deferred call: its request ended with no user message to keep it under.',
      );
      return;
    }
    this.#logger.info(
      { tool, seconds: outcome.seconds },
      'A deferred call finished; its result goes to the next request.',
    );
  }
}
