/**
 * One model message, read from an accepted upstream call: its speakable text goes to the speaker as it
 * arrives (the read pauses while the client's socket is full), each call's name (which may decide the
 * filler) and each call whose arguments are complete go to the tool round at once, and the finished message
 * comes back, or the failure is thrown.
 */
import { chatResponseAttributes } from '../telemetry/genai.js';
import type { Telemetry } from '../telemetry/types.js';
import { type AssistantMessage, StreamAccumulator } from './accumulator.js';
import type { ChatChunk } from './chunks.js';
import { ProxyError } from './errors.js';
import type { OpenedCall } from './request-policy.js';
import { SpeakableFilter } from './speakable.js';
import type { Speaker } from './speaker.js';
import type { ToolRound } from './tool-round.js';

export interface ReadParts {
  speaker: Speaker;
  /**
   * Receives calls' names as they stream and calls as their arguments complete; undefined when none may
   * start before the message ends.
   */
  round: ToolRound | undefined;
  /** The ToolSet's tool names: their calls written as text are recovered, never spoken. */
  isToolName: (name: string) => boolean;
  telemetry: Telemetry;
  toolset: string;
  signal: AbortSignal;
  /** voice.speakable: the model's text goes through a SpeakableFilter on its way to the speaker. */
  speakable: boolean;
}

export async function readMessage(opened: OpenedCall, parts: ReadParts): Promise<AssistantMessage> {
  const { source, chat, sentAt } = opened;
  const { speaker, round, telemetry } = parts;
  const accumulator = new StreamAccumulator({ isToolName: parts.isToolName });
  speaker.startMessage();
  const filter = parts.speakable ? new SpeakableFilter() : undefined;
  let firstTokenSeconds: number | undefined;
  let paused = false;
  const resume = () => {
    paused = false;
    source.resume();
  };
  const speak = (text: string) => {
    // A full client socket pauses the upstream read until it drains (or the client leaves).
    if (speaker.model(filter ? filter.push(text) : text) || paused) return;
    paused = true;
    source.pause();
    void speaker.drained().then(resume);
  };
  // Text-only chunks after the first come here (the decoder's fast lane): the first was timed already.
  const onContent = (text: string) => {
    const spoken = accumulator.pushContent(text);
    if (spoken !== '') speak(spoken);
  };
  const onChunk = (chunk: ChatChunk) => {
    const timedAlready = firstTokenSeconds !== undefined;
    for (const event of accumulator.push(chunk)) {
      if (firstTokenSeconds === undefined && event.type !== 'usage')
        firstTokenSeconds = (performance.now() - sentAt) / 1000;
      if (event.type === 'tool_call_start') round?.named(event.index, event.name);
      if (event.type === 'tool_call_ready') round?.ready(event.call, event.messageFinished === true);
      if (event.type === 'content') speak(event.text);
    }
    // Recorded once the first words are on their way to the client, not before.
    if (!timedAlready && firstTokenSeconds !== undefined)
      telemetry.upstreamCall({ toolset: parts.toolset, timeToFirstTokenSeconds: firstTokenSeconds });
  };
  let done: boolean;
  try {
    done = await source.read(onChunk, onContent);
  } catch (err) {
    chat.end(parts.signal.aborted ? 'cancelled' : 'upstream_stream');
    throw err;
  }
  const finished = accumulator.finish(done);
  speaker.model(filter ? filter.push(finished.tail) + filter.finish() : finished.tail);
  if (!finished.ok) {
    chat.end('upstream_stream');
    throw finished.error;
  }
  const { message } = finished;
  // OpenRouter ends a message its provider failed with finish_reason "error", at times with no error
  // object: a failure, whatever it streamed; a call in it may be cut short, and none of its calls runs.
  if (message.finishReason === 'error') {
    chat.end('upstream_stream');
    throw new ProxyError('ERP_UPSTREAM_STREAM', 'upstream ended the message with finish_reason "error"');
  }
  chat.setAttributes(
    chatResponseAttributes({
      ...(message.id ? { responseId: message.id } : {}),
      ...(message.model ? { responseModel: message.model } : {}),
      finishReasons: [message.finishReason ?? 'none'],
      ...(firstTokenSeconds !== undefined ? { timeToFirstChunkSeconds: firstTokenSeconds } : {}),
      ...(message.usage?.prompt_tokens !== undefined ? { inputTokens: message.usage.prompt_tokens } : {}),
      ...(message.usage?.completion_tokens !== undefined
        ? { outputTokens: message.usage.completion_tokens }
        : {}),
    }),
  );
  chat.end();
  return message;
}
