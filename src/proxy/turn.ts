/**
 * One turn: the client's request in, one answer out, with as many tool rounds as the ToolSet allows.
 *
 *   RequestPolicy.open ─▶ readMessage ─▶ no calls: finish (stop) ─ client's calls: finish (tool_calls)
 *        ▲                  │ text ─▶ Speaker (spacing, filler, first content) ─▶ sink
 *        │                  │ calls' names (the filler), complete calls ─▶ ToolRound (starts them at once)
 *        └─ policy.addRound ◀ ToolRound.finish (results in index order)
 *   after maxIterations: one call without tools. Any failure ─▶ voice.errorMessage, stop.
 *
 * The parts: request-policy.ts (what goes upstream, the deliberate re-sends), upstream.ts (one chunk
 * source for SSE and JSON), read-message.ts with accumulator.ts (one model message), tool-round.ts (the
 * calls), speaker.ts over sinks.ts (what the user hears). The client's hang-up and the turn deadline abort
 * the upstream call and the tools (except tools with onInterrupt: finish, which the registry lets complete).
 */
import { turnAttributes } from '../telemetry/genai.js';
import type { Logger } from '../telemetry/log.js';
import type { SpanHandle, Telemetry, TurnOutcome } from '../telemetry/types.js';
import { untilAborted } from '../tools/abort.js';
import type { ToolRunner } from '../tools/types.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import type { Usage } from './chunks.js';
import type { Deferral, DeferredCalls } from './deferral.js';
import { ProxyError } from './errors.js';
import type { ChatMessage } from './messages.js';
import { readMessage } from './read-message.js';
import { RequestPolicy, type TurnMemory } from './request-policy.js';
import type { TurnSink } from './sinks.js';
import { Speaker } from './speaker.js';
import { StillWorking } from './still-working.js';
import { ToolRound, ToolSlots } from './tool-round.js';
import type { Upstream, UpstreamState } from './upstream.js';
import { anyFiller, type LanguagePicker, TurnVoice } from './voice.js';

export type { TurnMemory };

export interface TurnDeps {
  toolset: ResolvedToolSet;
  tools: ToolRunner;
  upstream: Upstream;
  upstreamState: UpstreamState;
  telemetry: Telemetry;
  logger: Logger;
  /** Reshapes the outgoing history (memory splices) and hears about finished exchanges. */
  memory?: TurnMemory | undefined;
  /** Picks the language of the proxy's own lines; without it, a map speaks en or its first entry. */
  language?: LanguagePicker | undefined;
  /** Runs calls of tools with deferAfter and delivers their late results; without it none is deferred. */
  deferred?: DeferredCalls | undefined;
}

export interface TurnRequest {
  body: Record<string, unknown> & { messages: ChatMessage[]; model?: string };
  authorization: string | undefined;
  traceparent: string | undefined;
  /** The client's HTTP-Referer and X-Title, passed on to the model server. */
  attribution?: Record<string, string> | undefined;
  /** Aborts when the client hangs up (the user barged in). */
  clientSignal: AbortSignal;
  /** performance.now() when the request arrived. */
  receivedAt: number;
}

export async function runTurn(request: TurnRequest, sink: TurnSink, deps: TurnDeps): Promise<TurnOutcome> {
  const { toolset, tools, telemetry } = deps;
  const guard = new TurnGuard(request.clientSignal, toolset.limits.turnTimeoutMs);
  const span = telemetry.startTurn(
    request.traceparent,
    turnAttributes(toolset.name, { 'gen_ai.request.model': request.body.model ?? 'unknown' }),
  );
  const speaker = new Speaker(sink);
  const voice = new TurnVoice(deps.language, request.body.messages);
  const policy = new RequestPolicy({ ...request, ...deps, span, onRequestSent: () => speaker.begin() });
  const isToolName = (name: string) => tools.has(name);
  let iterations = 0;
  let usage: Usage | undefined;
  let outcome: TurnOutcome = 'ok';
  // Once the model speaks after a tool round, the answer has begun: no still-working line after that.
  let answerBegan = false;
  const stillWorking = new StillWorking({
    afterMs: toolset.voice.stillWorkingAfterMs,
    text: () => voice.line(toolset.voice.stillWorking),
    silentSince: () => speaker.lastContentAt ?? request.receivedAt,
    speak: (text) => {
      if (!answerBegan && !(iterations > 0 && speaker.answered)) speaker.line(text);
    },
  });
  const deferrals: Deferral[] = [];
  const slots = new ToolSlots(toolset.limits.maxParallelCalls);
  /** A round cut short (its message failed, or the turn ended while its calls ran): the calls it deferred. */
  let abandoned: Promise<Deferral[]> | undefined;
  try {
    for (;;) {
      const final = iterations >= toolset.limits.maxIterations;
      const round = final
        ? undefined
        : newRound(request, deps, span, guard.signal, speaker, voice, slots, () =>
            stillWorking.toolsStarted(),
          );
      let message: Awaited<ReturnType<typeof readMessage>>;
      try {
        const opened = await policy.open(final, guard.signal);
        // A call may be one of the client's own tools: then none of ours starts before the message ends.
        const early = policy.clientHasTools ? undefined : round;
        message = await readMessage(opened, {
          ...deps,
          speaker,
          round: early,
          isToolName,
          toolset: toolset.name,
          signal: guard.signal,
          speakable: toolset.voice.speakable,
        });
      } catch (err) {
        abandoned = round?.abandon(err);
        throw err;
      }
      if (iterations > 0 && speaker.answered) answerBegan = true;
      iterations++;
      usage = addUsage(usage, message.usage);
      // The stream may have been read to its end after the client left or the deadline passed; calls it
      // started meanwhile may have been deferred.
      if (guard.signal.aborted) {
        abandoned = round?.abandon(guard.signal.reason);
        throw guard.signal.reason;
      }
      const calls = round ? message.calls : [];
      if (!round || calls.length === 0) {
        if (final) outcome = 'max_iterations';
        stillWorking.stop();
        // Nothing to speak after a tool round, from calls that will not run, from a refusal, from a model
        // that ran out of tokens before its answer, or from one whose answer a content filter held back
        // (OpenAI, Azure, OpenRouter for Gemini's safety stop): the user must still hear one, and the turn counts
        // as failed. A first answer with nothing to say (reasoning or not) is the model's choice, to
        // Unmute's silence marker say, and stays silent.
        const triedToAnswer =
          iterations > 1 ||
          message.calls.length > 0 ||
          message.refusal !== '' ||
          message.finishReason === 'length' ||
          message.finishReason === 'content_filter';
        if (!speaker.answered && triedToAnswer) {
          if (outcome === 'ok') outcome = 'error';
          deps.logger.warn(
            { finishReason: message.finishReason, iterations, calls: message.calls.length },
            'The model said nothing to speak; spoke the error message.',
          );
          speaker.line(voice.line(toolset.voice.errorMessage));
        }
        speaker.end(message.finishReason === 'length' ? 'length' : 'stop', usage);
        break;
      }
      const forClient = policy.clientCalls(calls);
      if (forClient.length > 0) {
        // The client's tools go back to it; the model can call ours again on the client's next request.
        speaker.toolCalls(forClient);
        speaker.end('tool_calls', usage);
        break;
      }
      stillWorking.toolsStarted();
      let results: Awaited<ReturnType<ToolRound['finish']>>;
      try {
        // The deadline holds even for tools that finish after a hang-up (onInterrupt: finish): they run
        // on, and are counted when they end, but the turn speaks its error line now.
        results = await untilAborted(round.finish(calls), guard.signal);
      } catch (err) {
        // Calls the hang-up or the deadline deferred (onInterrupt: finish tools, which run on) still
        // deliver their results; the others are stopped and counted cancelled.
        abandoned = round.abandon(err);
        throw err;
      } finally {
        stillWorking.toolsFinished();
      }
      deferrals.push(...round.deferrals);
      policy.addRound(message, round.calls, results);
      if (guard.signal.aborted) throw guard.signal.reason;
    }
  } catch (err) {
    outcome = guard.outcome();
    if (outcome !== 'cancelled') fail(err, outcome, speaker, deps, voice);
  }
  stillWorking.stop();
  guard.dispose();
  const remember = () => {
    if (outcome !== 'cancelled') policy.remember();
    // After the exchange (with its pending results) is remembered: late results replace them when they land.
    if (deferrals.length > 0) deps.deferred?.settle(request.body.messages, deferrals);
  };
  // A round cut short settles its deferrals within their deferAfter; the turn is over for the client now.
  if (abandoned)
    void abandoned
      .then((late) => {
        deferrals.push(...late);
        remember();
      })
      .catch((err: unknown) => deps.logger.error({ err }, 'Could not remember a turn cut short.'));
  else remember();
  telemetry.turn({
    toolset: toolset.name,
    outcome,
    iterations,
    seconds: (performance.now() - request.receivedAt) / 1000,
    timeToFirstContentSeconds:
      speaker.firstContentAt === undefined ? undefined : (speaker.firstContentAt - request.receivedAt) / 1000,
  });
  span.setAttributes({ 'earpiece.turn.outcome': outcome, 'earpiece.turn.iterations': iterations });
  span.end(outcome === 'ok' || outcome === 'max_iterations' ? undefined : outcome);
  return outcome;
}

function newRound(
  request: TurnRequest,
  deps: TurnDeps,
  span: SpanHandle,
  signal: AbortSignal,
  speaker: Speaker,
  voice: TurnVoice,
  slots: ToolSlots,
  toolsStarted: () => void,
): ToolRound {
  return new ToolRound({
    tools: deps.tools,
    toolset: deps.toolset.name,
    slots,
    filler: deps.toolset.voice.filler,
    line: (text) => voice.line(text),
    deferred: deps.deferred,
    maxResultBytes: deps.toolset.limits.maxResultBytes,
    signal,
    clientSignal: request.clientSignal,
    span,
    telemetry: deps.telemetry,
    logger: deps.logger,
    fillerDue: () => speaker.fillerDue && anyFiller(deps.toolset, voice),
    speakFiller: (filler) => speaker.beforeTools(filler),
    toolsStarted,
  });
}

/** A failed turn: logged, and the error message spoken (or, for a non-streaming client, an HTTP error). */
function fail(err: unknown, outcome: TurnOutcome, speaker: Speaker, deps: TurnDeps, voice: TurnVoice): void {
  const { toolset } = deps;
  const error =
    err instanceof ProxyError
      ? err
      : outcome === 'timeout'
        ? new ProxyError('ERP_TURN_TIMEOUT', `turn exceeded ${toolset.limits.turnTimeoutMs} ms`)
        : new ProxyError('ERP_UPSTREAM_STREAM', (err as Error).message ?? String(err), { cause: err });
  deps.logger.error(
    { code: error.code, err: error.message, outcome },
    'Turn failed; spoke the error message.',
  );
  speaker.fail(error, voice.line(toolset.voice.errorMessage));
}

/** The turn's one signal: the client's hang-up and the deadline both abort it. */
class TurnGuard {
  readonly #controller = new AbortController();
  readonly #client: AbortSignal;
  readonly #deadline: NodeJS.Timeout;
  readonly #clientGone = () => this.#controller.abort(this.#client.reason);
  #timedOut = false;

  constructor(client: AbortSignal, timeoutMs: number) {
    this.#client = client;
    if (client.aborted) this.#clientGone();
    else client.addEventListener('abort', this.#clientGone, { once: true });
    this.#deadline = setTimeout(() => {
      this.#timedOut = true;
      this.#controller.abort(new ProxyError('ERP_TURN_TIMEOUT', `turn exceeded ${timeoutMs} ms`));
    }, timeoutMs);
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  /** The outcome of a turn that threw. */
  outcome(): TurnOutcome {
    return this.#client.aborted ? 'cancelled' : this.#timedOut ? 'timeout' : 'error';
  }

  dispose(): void {
    clearTimeout(this.#deadline);
    this.#client.removeEventListener('abort', this.#clientGone);
  }
}

function addUsage(total: Usage | undefined, more: Usage | undefined): Usage | undefined {
  if (!more) return total;
  if (!total) return { ...more };
  return {
    prompt_tokens: (total.prompt_tokens ?? 0) + (more.prompt_tokens ?? 0),
    completion_tokens: (total.completion_tokens ?? 0) + (more.completion_tokens ?? 0),
    total_tokens: (total.total_tokens ?? 0) + (more.total_tokens ?? 0),
  };
}
