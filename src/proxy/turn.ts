/**
 * One turn: the client's request in, one answer out, with as many tool rounds as the ToolSet allows.
 *
 *   request ─▶ prepare messages (instructions, memory) ─▶ ┌─ upstream call (tools offered) ─┐
 *                                                          │  stream content to the sink      │
 *                                                          │  calls? ─ no ─▶ finish (stop)    │
 *                                                          │   │ client tool ─▶ finish (tool_calls)
 *                                                          │   ▼ filler once, run calls (≤ maxParallelCalls)
 *                                                          └── append results, next iteration ┘
 *   after maxIterations: one call without tools ─▶ finish.  Any failure ─▶ voice.errorMessage, stop.
 *
 * Signals: the client's hang-up and the turn deadline abort the upstream call and the tools (except
 * tools with onInterrupt: finish, which the registry lets complete).
 */
import {
  chatResponseAttributes,
  startChatSpan,
  startToolSpan,
  toolResultAttributes,
  turnAttributes,
} from '../telemetry/genai.js';
import type { Logger } from '../telemetry/log.js';
import type { SpanHandle, Telemetry, TurnOutcome } from '../telemetry/types.js';
import type { ToolCall, ToolDefinition, ToolOutcome, ToolRunner } from '../tools/types.js';
import type { ResolvedToolSet, VoiceText } from '../toolset/defaults.js';
import {
  type AccumulatedToolCall,
  type AssistantSnapshot,
  generateCallId,
  StreamAccumulator,
} from './accumulator.js';
import type { ChatChunk, Usage } from './chunks.js';
import { ProxyError } from './errors.js';
import {
  type ChatMessage,
  dropOldestTurns,
  needsNoTools,
  recentUserText,
  withInstructions,
} from './messages.js';
import { RawCallFilter } from './raw-calls.js';
import type { TurnSink } from './sinks.js';
import { streamChunks } from './sse.js';
import { type ChatResponse, type Upstream, UpstreamHttpError } from './upstream.js';
import { type LanguagePicker, TurnVoice } from './voice.js';

/** What the proxy learned about its upstream, shared by all turns. */
export class UpstreamState {
  #toolsUnsupportedUntil = 0;
  kwargsRejected = false;
  constructor(private readonly now: () => number = Date.now) {}

  #warned = false;

  /** True only the first time: the refusal is logged once, with the flags to add. */
  firstToolsRefusal(): boolean {
    const first = !this.#warned;
    this.#warned = true;
    return first;
  }

  /** vLLM without --enable-auto-tool-choice refuses any request with tools: send none for 60 s. */
  markToolsUnsupported(): void {
    this.#toolsUnsupportedUntil = this.now() + 60_000;
  }

  get toolsAccepted(): boolean {
    return this.now() >= this.#toolsUnsupportedUntil;
  }
}

export interface TurnDeps {
  toolset: ResolvedToolSet;
  tools: ToolRunner;
  upstream: Upstream;
  upstreamState: UpstreamState;
  telemetry: Telemetry;
  logger: Logger;
  /** Reshapes the outgoing history (memory splices) and hears about finished exchanges. */
  memory?: TurnMemory;
  /** Picks the language of the proxy's own lines; without it, maps speak en or their first entry. */
  language?: LanguagePicker;
}

export interface TurnMemory {
  /** Messages to send upstream for the client's messages (with remembered exchanges spliced back in). */
  prepare(clientMessages: ChatMessage[]): {
    messages: ChatMessage[];
    spliced: number;
    withoutMemory: ChatMessage[];
  };
  /** Called once after a turn that ran ToolSet tools, with the exchange it added. */
  remember(clientMessages: ChatMessage[], exchange: ChatMessage[]): void;
}

export interface TurnRequest {
  body: Record<string, unknown> & { messages: ChatMessage[]; model?: string };
  authorization: string | undefined;
  traceparent: string | undefined;
  /** Aborts when the client hangs up (the user barged in). */
  clientSignal: AbortSignal;
  /** performance.now() when the request arrived. */
  receivedAt: number;
}

const CONTROLLED_FIELDS = new Set([
  'stream',
  'stream_options',
  'tools',
  'tool_choice',
  'parallel_tool_calls',
]);

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

/** A one-shot JSON completion (a server that ignored `stream`) as the chunks it would have streamed. */
function completionAsChunks(completion: unknown): ChatChunk[] {
  const c = completion as {
    id?: string;
    model?: string;
    choices?: {
      message?: {
        content?: string | null;
        tool_calls?: { id?: string; function?: { name?: string; arguments?: string } }[];
      };
      finish_reason?: string;
    }[];
    usage?: Usage;
  };
  const choice = c.choices?.[0];
  const message = choice?.message ?? {};
  return [
    {
      id: c.id,
      model: c.model,
      choices: [
        {
          index: 0,
          delta: {
            role: 'assistant',
            content: message.content ?? null,
            tool_calls: (message.tool_calls ?? []).map((t, index) => ({
              index,
              id: t.id,
              type: 'function',
              function: t.function,
            })),
          },
          finish_reason: choice?.finish_reason ?? 'stop',
        },
      ],
      usage: c.usage,
    },
  ];
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

/** The filler for a round of calls: the first call (by index) whose tool has one decides. */
function fillerFor(
  calls: AccumulatedToolCall[],
  tools: ToolRunner,
  fallback: VoiceText,
  voice: TurnVoice,
): string {
  for (const call of calls) {
    const own = tools.has(call.name) ? tools.filler(call.name) : undefined;
    const text = voice.line(own ?? fallback);
    if (text !== '') return /\s$/.test(text) ? text : `${text} `;
  }
  return '';
}

async function runLimited<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

export async function runTurn(request: TurnRequest, sink: TurnSink, deps: TurnDeps): Promise<TurnOutcome> {
  const { toolset, tools, upstream, upstreamState, telemetry, logger } = deps;
  const toolsetName = toolset.name;
  const model = request.body.model ?? 'unknown';
  // One controller for the turn: the client's hang-up and the deadline both abort it.
  const turnAbort = new AbortController();
  const signal = turnAbort.signal;
  const clientGone = () => turnAbort.abort(request.clientSignal.reason);
  if (request.clientSignal.aborted) clientGone();
  else request.clientSignal.addEventListener('abort', clientGone, { once: true });
  let timedOut = false;
  const deadline = setTimeout(() => {
    timedOut = true;
    turnAbort.abort(new ProxyError('ERP_TURN_TIMEOUT', `turn exceeded ${toolset.limits.turnTimeoutMs} ms`));
  }, toolset.limits.turnTimeoutMs);
  const span = telemetry.startTurn(
    request.traceparent,
    turnAttributes(toolsetName, { 'gen_ai.request.model': model }),
  );

  const clientMessages = request.body.messages;
  const voice = new TurnVoice(deps.language, clientMessages);
  const prepared = deps.memory?.prepare(clientMessages);
  let history = withInstructions(prepared?.messages ?? clientMessages, toolset.instructions);
  // Messages before this turn's own tool rounds; what follows is the turn's exchange so far.
  let baseLength = history.length;
  if (prepared?.spliced) span.setAttributes({ 'earpiece.memory.spliced_exchanges': prepared.spliced });
  const clientTools = Array.isArray(request.body.tools) ? (request.body.tools as ToolDefinition[]) : [];
  const clientToolNames = new Set(clientTools.map((t) => t.function?.name));
  const ownTools = needsNoTools(clientMessages) ? [] : tools.offered(recentUserText(clientMessages));

  const passthrough: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(request.body))
    if (!CONTROLLED_FIELDS.has(k) && k !== 'messages') passthrough[k] = v;

  let iterations = 0;
  let spoke = false;
  let fillerSpoken = false;
  // Context-length retries: remembered exchanges go first, then (once) the oldest half of the client's turns.
  let memoryDropped = !prepared?.spliced;
  let turnsTrimmed = false;
  let usage: Usage | undefined;
  let firstContentAt: number | undefined;
  const exchange: ChatMessage[] = [];

  let endsInSpace = true;
  /** Returns false while the client's socket is full. */
  const speak = (text: string): boolean => {
    if (text === '') return true;
    if (firstContentAt === undefined) firstContentAt = performance.now();
    spoke = true;
    endsInSpace = /\s$/.test(text);
    return sink.content(text);
  };

  /** Opens one upstream stream, making the deliberate re-sends: no tools, no kwargs, trimmed history. */
  const open = async (
    offer: ToolDefinition[],
  ): Promise<{ response: ChatResponse; offered: boolean; chat: SpanHandle; sentAt: number }> => {
    let offerNow = offer.length > 0 && upstreamState.toolsAccepted;
    for (;;) {
      const body: Record<string, unknown> = {
        ...passthrough,
        messages: history,
        stream: true,
        stream_options: { include_usage: true },
      };
      if (offerNow) {
        body.tools = offer;
        if (request.body.tool_choice !== undefined) body.tool_choice = request.body.tool_choice;
        if (request.body.parallel_tool_calls !== undefined)
          body.parallel_tool_calls = request.body.parallel_tool_calls;
      }
      if (toolset.upstream.disableThinking && !upstreamState.kwargsRejected) {
        const own = (passthrough.chat_template_kwargs as Record<string, unknown> | undefined) ?? {};
        body.chat_template_kwargs = { ...own, enable_thinking: false };
      }
      const chat = startChatSpan(span, {
        model,
        serverAddress: upstream.host,
        serverPort: upstream.port,
        stream: true,
        toolsOffered: offerNow ? offer.length : 0,
      });
      const sentAt = performance.now();
      try {
        const response = await upstream.chat(
          body,
          // With tracing on, the LLM server's spans go under this chat span.
          { authorization: request.authorization, traceparent: chat.traceparent?.() ?? request.traceparent },
          signal,
          // The model's request goes on the wire first; the client's response head follows it.
          () => sink.begin(),
        );
        return { response, offered: offerNow, chat, sentAt };
      } catch (err) {
        if (!(err instanceof UpstreamHttpError)) {
          chat.end(signal.aborted ? 'cancelled' : 'upstream_unreachable');
          throw err;
        }
        chat.end(`http_${err.upstreamStatus}`);
        if (err.refusal === 'tools_unsupported' && offerNow) {
          if (upstreamState.firstToolsRefusal()) {
            logger.warn(
              { upstream: upstream.origin, status: err.upstreamStatus },
              'Upstream refused tools; answering without them. Start vLLM with --enable-auto-tool-choice --tool-call-parser <parser> to use tools.',
            );
          }
          upstreamState.markToolsUnsupported();
          telemetry.upstreamToolsUnsupported(toolsetName);
          offerNow = false;
          continue;
        }
        if (err.refusal === 'kwargs_rejected' && body.chat_template_kwargs !== undefined) {
          logger.warn(
            { upstream: upstream.origin },
            'Upstream refused chat_template_kwargs; no longer sending them.',
          );
          upstreamState.kwargsRejected = true;
          // The client's own kwargs go too: the upstream takes none.
          delete passthrough.chat_template_kwargs;
          continue;
        }
        if (err.refusal === 'context_length' && (!memoryDropped || !turnsTrimmed)) {
          const before = history.length;
          const rounds = history.slice(baseLength);
          let base: ChatMessage[];
          if (!memoryDropped && prepared) {
            memoryDropped = true;
            base = withInstructions(prepared.withoutMemory, toolset.instructions);
          } else {
            turnsTrimmed = true;
            base = dropOldestTurns(history.slice(0, baseLength));
            // Nothing to drop (only the system message and the question): a resend would fail the same way.
            if (base.length === baseLength) throw err;
          }
          history = [...base, ...rounds];
          baseLength = base.length;
          logger.info(
            { before, after: history.length },
            'Retried with a shorter history after a context-length error.',
          );
          continue;
        }
        throw err;
      }
    }
  };

  /** One upstream call, its content spoken as it comes. Returns the finished message. */
  const complete = async (
    offer: ToolDefinition[],
  ): Promise<{ snapshot: AssistantSnapshot; calls: AccumulatedToolCall[]; done: boolean }> => {
    const { response, chat, sentAt } = await open(offer);
    const accumulator = new StreamAccumulator();
    const raw = new RawCallFilter((name) => tools.has(name));
    // Whitespace alone (vLLM's hermes parser streams "\n" between calls) is not speech: it waits for words.
    let pendingSpace = '';
    const speakModel = (text: string): boolean => {
      if (text.trim() === '') {
        pendingSpace += text;
        return true;
      }
      const out = pendingSpace + text;
      pendingSpace = '';
      return speak(out);
    };
    let firstTokenSeconds: number | undefined;
    // A full client socket pauses the upstream read until it drains (or the client leaves).
    let paused = false;
    const onChunk = (chunk: ChatChunk) => {
      const timedAlready = firstTokenSeconds !== undefined;
      for (const event of accumulator.push(chunk)) {
        if (firstTokenSeconds === undefined && event.type !== 'usage')
          firstTokenSeconds = (performance.now() - sentAt) / 1000;
        if (event.type !== 'content') continue;
        const keptUp = speakModel(raw.push(event.text));
        if (keptUp || paused || response.kind !== 'sse') continue;
        paused = true;
        response.body.pause();
        void sink.drained().then(() => {
          paused = false;
          response.body.resume();
        });
      }
      // Recorded once the first words are on their way to the client, not before.
      if (!timedAlready && firstTokenSeconds !== undefined)
        telemetry.upstreamTimeToFirstToken(toolsetName, firstTokenSeconds);
    };
    let done: boolean;
    try {
      if (response.kind === 'json') {
        for (const chunk of completionAsChunks(response.completion)) onChunk(chunk);
        done = true;
      } else {
        done = await streamChunks(response.body, onChunk);
      }
    } catch (err) {
      chat.end(signal.aborted ? 'cancelled' : 'upstream_stream');
      throw err;
    }
    const tail = raw.finish();
    speakModel(tail.text);
    const snapshot = accumulator.snapshot();
    usage = addUsage(usage, snapshot.usage);
    chat.setAttributes(
      chatResponseAttributes({
        ...(snapshot.id ? { responseId: snapshot.id } : {}),
        ...(snapshot.model ? { responseModel: snapshot.model } : {}),
        finishReasons: [snapshot.finishReason ?? 'none'],
        ...(firstTokenSeconds !== undefined ? { timeToFirstChunkSeconds: firstTokenSeconds } : {}),
        ...(snapshot.usage?.prompt_tokens !== undefined ? { inputTokens: snapshot.usage.prompt_tokens } : {}),
        ...(snapshot.usage?.completion_tokens !== undefined
          ? { outputTokens: snapshot.usage.completion_tokens }
          : {}),
      }),
    );
    chat.end();
    const calls =
      snapshot.toolCalls.length > 0
        ? snapshot.toolCalls
        : tail.calls.map((c, index) => ({
            index,
            id: generateCallId(),
            name: c.name,
            arguments: c.arguments,
          }));
    if (!done && snapshot.finishReason === null) {
      throw new ProxyError('ERP_UPSTREAM_STREAM', 'upstream stream ended before it finished the message');
    }
    return { snapshot, calls, done };
  };

  const runCalls = async (calls: AccumulatedToolCall[]): Promise<ToolOutcome[]> =>
    runLimited(calls, toolset.limits.maxParallelCalls, async (c) => {
      const call: ToolCall = { id: c.id, name: c.name, arguments: c.arguments };
      const toolSpan = startToolSpan(span, {
        name: c.name,
        callId: c.id,
        // Run by the proxy: an extension, or a datastore for SQL (GenAI conventions).
        type: tools.kind(c.name) === 'sql' ? 'datastore' : 'extension',
        arguments: c.arguments,
      });
      const outcome = await tools.call(call, signal);
      telemetry.toolCall({
        toolset: toolsetName,
        tool: c.name,
        outcome: outcome.outcome,
        seconds: outcome.seconds,
      });
      if (request.clientSignal.aborted && outcome.outcome !== 'cancelled') {
        logger.info(
          { tool: c.name, outcome: outcome.outcome },
          'Tool finished after the client left (onInterrupt: finish).',
        );
      }
      const failed =
        outcome.outcome === 'ok' || outcome.outcome === 'cache_hit' ? undefined : outcome.outcome;
      toolSpan.setAttributes({
        'earpiece.tool.outcome': outcome.outcome,
        ...toolResultAttributes(outcome.content),
      });
      toolSpan.end(failed);
      return outcome;
    });

  let outcome: TurnOutcome = 'ok';
  try {
    for (;;) {
      const final = iterations >= toolset.limits.maxIterations;
      const offer = final ? [] : [...clientTools, ...ownTools];
      const { snapshot, calls } = await complete(offer);
      iterations++;
      // The stream may have been read to its end after the client left or the deadline passed.
      if (signal.aborted) throw signal.reason;
      const runnable = final ? [] : calls;
      if (runnable.length === 0) {
        if (final) outcome = 'max_iterations';
        // After tool rounds the user must hear something, even if the model went quiet.
        if (!spoke && iterations > 1) speak(voice.line(toolset.voice.errorMessage));
        sink.end(snapshot.finishReason === 'length' ? 'length' : 'stop', usage);
        break;
      }
      const forClient = runnable.filter((c) => clientToolNames.has(c.name) && !tools.has(c.name));
      if (forClient.length > 0) {
        // The client's tools go back to it; the model can call ours again on the client's next request.
        sink.toolCalls(forClient);
        sink.end('tool_calls', usage);
        break;
      }
      if (!spoke && !fillerSpoken) {
        fillerSpoken = true;
        speak(fillerFor(runnable, tools, toolset.voice.filler, voice));
      } else if (!endsInSpace) {
        // Unmute holds a word until whitespace follows: release it now, and keep it apart from the answer.
        speak(' ');
      }
      const results = await runCalls(runnable);
      const assistant: ChatMessage = {
        role: 'assistant',
        // Calls recovered from raw text carry their markup in content; the model sees them once, as calls.
        content: snapshot.content === '' || snapshot.toolCalls.length === 0 ? null : snapshot.content,
        tool_calls: runnable.map((c) => ({
          id: c.id,
          type: 'function',
          // Templates parse arguments; broken JSON goes back as {} and the tool result says what was wrong.
          function: { name: c.name, arguments: isJson(c.arguments) ? c.arguments : '{}' },
        })),
      };
      const toolMessages: ChatMessage[] = results.map((r) => ({
        role: 'tool',
        tool_call_id: r.call.id,
        content: r.content,
      }));
      history = [...history, assistant, ...toolMessages];
      exchange.push(
        { ...assistant, tool_calls: assistant.tool_calls?.filter((_, i) => results[i]?.remember) },
        ...toolMessages.filter((_, i) => results[i]?.remember),
      );
      if (signal.aborted) throw signal.reason;
    }
  } catch (err) {
    outcome = request.clientSignal.aborted ? 'cancelled' : timedOut ? 'timeout' : 'error';
    if (outcome === 'cancelled') {
      telemetry.clientDisconnected(toolsetName);
    } else {
      const proxyError =
        err instanceof ProxyError
          ? err
          : outcome === 'timeout'
            ? new ProxyError('ERP_TURN_TIMEOUT', `turn exceeded ${toolset.limits.turnTimeoutMs} ms`)
            : new ProxyError('ERP_UPSTREAM_STREAM', (err as Error).message ?? String(err), { cause: err });
      logger.error(
        { code: proxyError.code, err: proxyError.message, outcome },
        'Turn failed; spoke the error message.',
      );
      sink.fail(
        proxyError,
        spoke && !endsInSpace
          ? ` ${voice.line(toolset.voice.errorMessage)}`
          : voice.line(toolset.voice.errorMessage),
      );
    }
  }

  clearTimeout(deadline);
  request.clientSignal.removeEventListener('abort', clientGone);

  const remembered = exchange.filter((m) => m.role === 'tool' || (m.tool_calls?.length ?? 0) > 0);
  if (deps.memory && remembered.length > 0 && outcome !== 'cancelled')
    deps.memory.remember(clientMessages, remembered);
  telemetry.turn({
    toolset: toolsetName,
    outcome,
    iterations,
    seconds: (performance.now() - request.receivedAt) / 1000,
    timeToFirstContentSeconds:
      firstContentAt === undefined ? undefined : (firstContentAt - request.receivedAt) / 1000,
  });
  span.setAttributes({ 'earpiece.turn.outcome': outcome, 'earpiece.turn.iterations': iterations });
  span.end(outcome === 'ok' || outcome === 'max_iterations' ? undefined : outcome);
  return outcome;
}
