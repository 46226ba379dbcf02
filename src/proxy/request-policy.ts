/**
 * What goes upstream, and the deliberate re-sends. It owns the outgoing history (the client's messages,
 * remembered exchanges spliced in, instructions, then this turn's tool rounds) and the body built from
 * it, and turns the upstream's refusals into a second try: without tools (no tool parser), without
 * `chat_template_kwargs` (refused field), with a shorter history (context length: remembered exchanges
 * first, then once the oldest half of the client's turns). Anything else is the caller's failure.
 */
import { startChatSpan } from '../telemetry/genai.js';
import type { Logger } from '../telemetry/log.js';
import type { SpanHandle, Telemetry } from '../telemetry/types.js';
import type { ToolDefinition, ToolOutcome, ToolRunner } from '../tools/types.js';
import type { ResolvedToolSet } from '../toolset/defaults.js';
import type { AccumulatedToolCall } from './accumulator.js';
import { isJson } from './chunks.js';
import {
  type ChatMessage,
  dropOldestTurns,
  needsNoTools,
  recentUserText,
  withInstructions,
} from './messages.js';
import { type ChunkSource, type Upstream, UpstreamHttpError, type UpstreamState } from './upstream.js';

/** Reshapes the outgoing history (memory splices) and hears about finished exchanges. */
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

export interface PolicyParts {
  body: Record<string, unknown> & { messages: ChatMessage[]; model?: string };
  authorization: string | undefined;
  traceparent: string | undefined;
  /** The client's HTTP-Referer and X-Title (OpenRouter's app attribution), passed on. */
  attribution?: Record<string, string> | undefined;
  toolset: ResolvedToolSet;
  tools: ToolRunner;
  upstream: Upstream;
  upstreamState: UpstreamState;
  memory?: TurnMemory | undefined;
  telemetry: Telemetry;
  logger: Logger;
  /** The turn span: each upstream call is a `chat` span under it. */
  span: SpanHandle;
  /** The model request is on the wire (the client's response head may follow it). */
  onRequestSent(): void;
}

/** An upstream call that was accepted: its chunks, its span, and when it was sent. */
export interface OpenedCall {
  source: ChunkSource;
  chat: SpanHandle;
  sentAt: number;
}

/** Fields the proxy sets itself; the client's other fields go upstream as they are. */
const CONTROLLED_FIELDS = new Set([
  'messages',
  'stream',
  'stream_options',
  'tools',
  'tool_choice',
  'parallel_tool_calls',
]);

export class RequestPolicy {
  readonly #parts: PolicyParts;
  readonly #prepared: ReturnType<TurnMemory['prepare']> | undefined;
  readonly #passthrough: Record<string, unknown> = {};
  readonly #clientTools: ToolDefinition[];
  readonly #clientToolNames: Set<string | undefined>;
  readonly #ownTools: ToolDefinition[];
  /** The client's messages (memory spliced in), then this turn's rounds; the instructions go in per body. */
  #history: ChatMessage[];
  /** Messages before this turn's own tool rounds. */
  #baseLength: number;
  #memoryDropped: boolean;
  #turnsTrimmed = false;
  /** This turn's tool rounds, as memory keeps them (tools with `memory: false` left out). */
  readonly #exchange: ChatMessage[] = [];

  constructor(parts: PolicyParts) {
    this.#parts = parts;
    const { body, memory, tools } = parts;
    this.#prepared = memory?.prepare(body.messages);
    this.#history = this.#prepared?.messages ?? body.messages;
    this.#baseLength = this.#history.length;
    this.#memoryDropped = !this.#prepared?.spliced;
    if (this.#prepared?.spliced)
      parts.span.setAttributes({ 'earpiece.memory.spliced_exchanges': this.#prepared.spliced });
    for (const k in body) if (!CONTROLLED_FIELDS.has(k)) this.#passthrough[k] = body[k];
    this.#clientTools = Array.isArray(body.tools) ? (body.tools as ToolDefinition[]) : [];
    this.#clientToolNames = new Set(this.#clientTools.map((t) => t.function?.name));
    this.#ownTools = needsNoTools(body.messages) ? [] : tools.offered(recentUserText(body.messages));
  }

  /** The client offered tools of its own: a call may be for the client, so none starts before the message ends. */
  get clientHasTools(): boolean {
    return this.#clientTools.length > 0;
  }

  /** Calls the client must run itself (its tools, not the ToolSet's). */
  clientCalls(calls: readonly AccumulatedToolCall[]): AccumulatedToolCall[] {
    return calls.filter((c) => this.#clientToolNames.has(c.name) && !this.#parts.tools.has(c.name));
  }

  /**
   * Sends the turn upstream (with tools unless `final`), re-sending as the refusals allow. Rejects with
   * the upstream's error when no re-send is left, or with the signal's reason.
   */
  async open(final: boolean, signal: AbortSignal): Promise<OpenedCall> {
    const { upstream, upstreamState, telemetry, logger, toolset } = this.#parts;
    // Only the ToolSet's tools (the usual case): the registry's own array, whose JSON is cached.
    const offer = final
      ? []
      : this.#clientTools.length === 0
        ? this.#ownTools
        : [...this.#clientTools, ...this.#ownTools];
    let offerNow = offer.length > 0 && upstreamState.toolsAccepted;
    for (;;) {
      const sentKwargs = this.#sendsKwargs || this.#passthrough.chat_template_kwargs !== undefined;
      const sentStreamOptions = !upstreamState.streamOptionsRejected;
      const body = this.#body(offerNow ? offer : undefined);
      const chat = startChatSpan(this.#parts.span, {
        model: this.#model,
        serverAddress: upstream.host,
        serverPort: upstream.port,
        stream: true,
        toolsOffered: offerNow ? offer.length : 0,
      });
      const sentAt = performance.now();
      const call = upstream.chat(
        body,
        // With tracing on, the LLM server's spans go under this chat span.
        {
          authorization: this.#parts.authorization,
          traceparent: chat.traceparent?.() ?? this.#parts.traceparent,
          attribution: this.#parts.attribution,
        },
        signal,
      );
      void call.sent.then(this.#parts.onRequestSent);
      try {
        return { source: await call.response, chat, sentAt };
      } catch (err) {
        if (!(err instanceof UpstreamHttpError)) {
          chat.end(signal.aborted ? 'cancelled' : 'upstream_unreachable');
          throw err;
        }
        chat.end(`http_${err.upstreamStatus}`);
        if (err.upstreamStatus === 429) {
          // A hosted model's rate limit: waiting out retry-after would be silence; the user hears the error line now.
          telemetry.upstreamCall({ toolset: toolset.name, refusal: 'rate_limited' });
          logger.warn(
            { upstream: upstream.origin, retryAfterSeconds: err.retryAfter },
            'Upstream rate limit (429): spoke the error message; not retried mid-turn.',
          );
          throw err;
        }
        if (err.refusal === 'tools_unsupported' && offerNow) {
          if (upstreamState.firstToolsRefusal()) {
            logger.warn(
              { upstream: upstream.origin, status: err.upstreamStatus },
              'Upstream refused tools; answering without them. To use tools: start vLLM with --enable-auto-tool-choice --tool-call-parser <parser>, or, on a hosted API (OpenRouter, OpenAI), choose a model that supports tools.',
            );
          }
          upstreamState.markToolsUnsupported();
          telemetry.upstreamCall({ toolset: toolset.name, refusal: 'tools_unsupported' });
          offerNow = false;
          continue;
        }
        if (err.refusal === 'kwargs_rejected' && sentKwargs) {
          logger.warn(
            { upstream: upstream.origin },
            'Upstream refused chat_template_kwargs; no longer sending them.',
          );
          upstreamState.kwargsRejected = true;
          // The client's own kwargs go too: the upstream takes none.
          delete this.#passthrough.chat_template_kwargs;
          continue;
        }
        if (err.refusal === 'stream_options_rejected' && sentStreamOptions) {
          logger.warn(
            { upstream: upstream.origin },
            'Upstream refused stream_options; no longer sending them (token usage goes unreported).',
          );
          upstreamState.streamOptionsRejected = true;
          continue;
        }
        if (err.refusal === 'context_length' && this.#shorten()) continue;
        throw err;
      }
    }
  }

  /** After a round: the assistant message with the calls as they ran, and one tool message per result. */
  addRound(
    message: { content: string; callsFromText: boolean; reasoningDetails?: Record<string, unknown>[] },
    calls: AccumulatedToolCall[],
    results: ToolOutcome[],
  ): void {
    const sent = calls.map(toolCallMessage);
    const assistant: ChatMessage = {
      role: 'assistant',
      // Calls recovered from raw text carry their markup in content; the model sees them once, as calls.
      content: message.content === '' || message.callsFromText ? null : message.content,
      // Gemini's thought signature (Google's API) goes back on its call.
      tool_calls: calls.map((c, i) =>
        c.extraContent ? { ...sent[i], extra_content: c.extraContent } : sent[i],
      ),
    };
    // Reasoning models behind OpenRouter want their reasoning back with the calls it led to, unchanged.
    if (message.reasoningDetails?.length) assistant.reasoning_details = message.reasoningDetails;
    const toolMessages: ChatMessage[] = results.map((r) => ({
      role: 'tool',
      tool_call_id: r.call.id,
      content: r.content,
    }));
    this.#history = [...this.#history, assistant, ...toolMessages];
    const kept = toolMessages.filter((_, i) => results[i]?.remember);
    if (kept.length === 0) return;
    // Remembered exchanges go back into later turns, where no model checks reasoning signatures (Gemini
    // checks the current turn's only): without them an exchange stays within memory.maxBytes.
    this.#exchange.push(
      {
        role: 'assistant',
        content: assistant.content,
        tool_calls: sent.filter((_, i) => results[i]?.remember),
      },
      ...kept,
    );
  }

  /** Hands this turn's remembered exchange to memory (a turn the client left is not remembered). */
  remember(): void {
    if (this.#exchange.length > 0) this.#parts.memory?.remember(this.#parts.body.messages, this.#exchange);
  }

  get #model(): string {
    return this.#parts.body.model ?? 'unknown';
  }

  /**
   * The request body's JSON: the small head serialized per call, the tools' JSON as cached, and the history
   * last (the one part that changes between calls).
   */
  #body(tools: ToolDefinition[] | undefined): string {
    const request = this.#parts.body;
    const head: Record<string, unknown> = { ...this.#passthrough, stream: true };
    if (!this.#parts.upstreamState.streamOptionsRejected) head.stream_options = { include_usage: true };
    if (tools) {
      if (request.tool_choice !== undefined) head.tool_choice = request.tool_choice;
      if (request.parallel_tool_calls !== undefined) head.parallel_tool_calls = request.parallel_tool_calls;
    }
    if (this.#sendsKwargs) {
      const own = (this.#passthrough.chat_template_kwargs as Record<string, unknown> | undefined) ?? {};
      head.chat_template_kwargs = { ...own, enable_thinking: false };
    }
    // `head` always holds `stream`, so its JSON ends in `}` after at least one member.
    const opening = JSON.stringify(head).slice(0, -1);
    const toolsMember = tools ? `,"tools":${toolsJson(tools)}` : '';
    // The system message with the instructions is made for each body and dropped with it: kept in the
    // history, a copy of the client's system prompt would live as long as the turn.
    const messages = withInstructions(this.#history, this.#parts.toolset.instructions);
    return `${opening}${toolsMember},"messages":${JSON.stringify(messages)}}`;
  }

  get #sendsKwargs(): boolean {
    return this.#parts.toolset.upstream.disableThinking && !this.#parts.upstreamState.kwargsRejected;
  }

  /** Remembered exchanges go first, then (once) the oldest half of the client's turns. False: nothing left to drop. */
  #shorten(): boolean {
    const before = this.#history.length;
    const rounds = this.#history.slice(this.#baseLength);
    let base: ChatMessage[];
    if (!this.#memoryDropped && this.#prepared) {
      this.#memoryDropped = true;
      base = this.#prepared.withoutMemory;
    } else if (!this.#turnsTrimmed) {
      this.#turnsTrimmed = true;
      base = dropOldestTurns(this.#history.slice(0, this.#baseLength));
      // Nothing to drop (only the system message and the question): a resend would fail the same way.
      if (base.length === this.#baseLength) return false;
    } else {
      return false;
    }
    this.#history = [...base, ...rounds];
    this.#baseLength = base.length;
    this.#parts.logger.info(
      { before, after: this.#history.length },
      'Retried with a shorter history after a context-length error.',
    );
    return true;
  }
}

/**
 * The JSON of a tool list, cached per list: the registry hands out one array per ToolSet load (while no
 * keyword leaves a tool out), so its definitions are serialized once, not on every turn.
 */
const TOOLS_JSON = new WeakMap<readonly ToolDefinition[], string>();

function toolsJson(tools: readonly ToolDefinition[]): string {
  let json = TOOLS_JSON.get(tools);
  if (json === undefined) {
    json = JSON.stringify(tools);
    TOOLS_JSON.set(tools, json);
  }
  return json;
}

/** A call as the assistant message carries it: templates parse arguments, so broken JSON goes back as {} (the tool result says what was wrong). */
function toolCallMessage(c: AccumulatedToolCall): Record<string, unknown> {
  return {
    id: c.id,
    type: 'function',
    function: { name: c.name, arguments: isJson(c.arguments) ? c.arguments : '{}' },
  };
}
