/**
 * The benchmark's model server and HTTP tool, run as a child process of bench/run.ts (forked, so it has
 * an IPC channel). Both live here so the tool hand-off timestamps come from one clock.
 *
 * The model streams in vLLM's format (the scripted upstream's builders): a role chunk, then 64 content
 * chunks 20 ms apart, the finish chunk, usage and [DONE]. A request whose user asks for "the weather at
 * bench-N" gets a tool call instead (fragments 2 ms apart, then finish + usage + [DONE] in one write);
 * the request that carries the tool's result gets a short unpaced answer.
 *
 * Requests that say "cancel-stream-N" get the long answer and "cancel-tool-N" a call to the tool that never
 * answers: the driver hangs up on them, and the close of the model response or tool request is stamped.
 *
 * Tool-turn timestamps, per turn N (ms, performance.timeOrigin + performance.now()):
 *   callSent     the last byte of the tool-call message was written
 *   toolAsked    the HTTP tool received the request (headers parsed)
 *   toolAnswered the HTTP tool finished writing its answer
 *   nextAsked    the model server received the request that carries the result (headers parsed)
 */
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  type ScriptStep,
  type TimedWrite,
  textReply,
  timedWrites,
  toolCallReply,
  words,
} from '../src/demo/scripted-upstream.js';
import {
  ANSWER_TEXT,
  BRIEF_PACE_MS,
  BRIEF_TEXT,
  type ChildMessage,
  CONTENT_CHUNKS,
  PACE_MS,
  type ParentMessage,
  type TurnStamps,
} from './protocol.js';

const TOOL_PACE_MS = 2;
/** The second call's arguments, in tokens (a two-call message at a realistic pace). */
const SECOND_CALL_TOKENS = 40;

const now = () => performance.timeOrigin + performance.now();

/** Writes the segments with their pauses; `onWrite` runs right after each write (its index; the last ends the response). */
function play(
  res: ServerResponse,
  parts: TimedWrite[],
  onWrite?: (index: number, last: boolean) => void,
): void {
  let i = 0;
  const next = () => {
    if (res.destroyed) return;
    const index = i++;
    const part = parts[index] as TimedWrite;
    if (i === parts.length) {
      res.end(part.text);
      onWrite?.(index, true);
      return;
    }
    res.write(part.text);
    onWrite?.(index, false);
    setTimeout(next, (parts[i] as TimedWrite).delayMs);
  };
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  const first = parts[0] as TimedWrite;
  if (first.delayMs > 0) setTimeout(next, first.delayMs);
  else next();
}

/**
 * Two calls in one message at a model's pace (vLLM's chunk shape): call 0 whole, then, a token later,
 * call 1's name (which completes call 0), then call 1's arguments in SECOND_CALL_TOKENS tokens.
 * Returns the writes and the index of the write that begins call 1.
 */
function twoCallMessage(key: string): { writes: TimedWrite[]; secondBegins: number } {
  const envelope = {
    id: `chatcmpl-two-${key}`,
    object: 'chat.completion.chunk',
    created: 0,
    model: 'bench-model',
  };
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) => ({
    ...envelope,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
  });
  const call = (index: number, fn: Record<string, unknown>, id?: string) =>
    chunk({ tool_calls: [{ index, ...(id ? { id, type: 'function' } : {}), function: fn }] });
  const second = JSON.stringify({ place: `two-${key}-b`.padEnd(SECOND_CALL_TOKENS * 2, '.') });
  const tokens = Array.from({ length: SECOND_CALL_TOKENS }, (_, i) =>
    second.slice(
      Math.floor((i * second.length) / SECOND_CALL_TOKENS),
      Math.floor(((i + 1) * second.length) / SECOND_CALL_TOKENS),
    ),
  );
  const steps: ScriptStep[] = [
    chunk({ role: 'assistant', content: '' }),
    call(0, { name: 'get_weather', arguments: JSON.stringify({ place: `two-${key}` }) }, `call0${key}`),
    { delayMs: PACE_MS },
    call(1, { name: 'get_weather', arguments: '' }, `call1${key}`),
    ...tokens.flatMap((t) => [{ delayMs: PACE_MS }, call(1, { arguments: t })]),
    chunk({}, 'tool_calls'),
    'data: [DONE]\n\n',
  ];
  return { writes: timedWrites(steps), secondBegins: 1 };
}

/** A spoken answer of exactly 64 words, so textReply makes 64 content chunks. */
function answerText(): string {
  const text = ANSWER_TEXT;
  const count = words(text).length;
  if (count !== CONTENT_CHUNKS) throw new Error(`the answer has ${count} words, not ${CONTENT_CHUNKS}`);
  return text;
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.on('end', () => resolve(body));
    req.on('error', reject);
  });
}

async function listen(server: Server): Promise<string> {
  // Kept-alive sockets outlive the gaps between benchmark phases (vLLM's uvicorn default, 5 s, would not).
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 121_000;
  server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 });
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function main(): Promise<void> {
  const send = (message: ChildMessage) => process.send?.(message);
  let turns: Record<string, TurnStamps> = {};
  const turn = (id: string) => {
    turns[id] ??= {};
    return turns[id] as TurnStamps;
  };

  const stream = timedWrites(textReply(answerText(), 'vllm-llama3json', { delayMs: PACE_MS }));
  const briefStream = timedWrites(textReply(BRIEF_TEXT, 'vllm-llama3json', { delayMs: BRIEF_PACE_MS }));

  const model = createServer(async (req, res) => {
    const arrived = now();
    const body = await readBody(req);
    if (req.method === 'GET' && req.url?.endsWith('/v1/models')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'bench-model', object: 'model' }] }));
      return;
    }
    const cancel = /cancel-(stream|tool)-(\d+)/.exec(body);
    if (cancel) {
      const key = `${cancel[1]}-${cancel[2]}`;
      res.on('close', () => {
        if (!res.writableFinished) turn(key).upstreamClosed = now();
      });
      if (cancel[1] === 'stream' || body.includes('"role":"tool"')) play(res, stream);
      else
        play(
          res,
          timedWrites(toolCallReply([{ name: 'slow_lookup', arguments: { id: key } }], 'vllm-llama3json')),
        );
      return;
    }
    const brief = body.includes('brief-answer');
    if (brief) {
      play(res, briefStream);
      return;
    }
    const two = /two-calls-(\d+)/.exec(body)?.[1];
    if (two !== undefined) {
      if (body.includes('"role":"tool"')) {
        play(res, timedWrites(textReply('Sunny at both.')));
        return;
      }
      const { writes, secondBegins } = twoCallMessage(two);
      play(res, writes, (index) => {
        if (index === secondBegins) turn(`two-${two}`).firstCallComplete = now();
        // The last write carries call 1's last argument token (and the finish chunk with it).
        if (index === writes.length - 1) turn(`two-${two}`).secondCallEnd = now();
      });
      return;
    }
    const id = /bench-(\d+)/.exec(body)?.[1];
    if (id === undefined) {
      play(res, stream);
    } else if (body.includes('"role":"tool"')) {
      turn(id).nextAsked = arrived;
      play(res, timedWrites(textReply(`It is sunny at bench-${id}.`)));
    } else {
      const call = toolCallReply(
        [{ name: 'get_weather', arguments: { place: `bench-${id}` } }],
        'vllm-llama3json',
        {
          delayMs: TOOL_PACE_MS,
        },
      );
      play(res, timedWrites(call), (_, last) => {
        if (last) turn(id).callSent = now();
      });
    }
  });

  const tool = createServer((req, res) => {
    const arrived = now();
    if (req.url?.startsWith('/slow')) {
      // Never answers: only the proxy hanging up ends it.
      const key = new URL(req.url, 'http://tool').searchParams.get('id') ?? '';
      turn(key).toolAsked = arrived;
      req.socket.on('close', () => {
        turn(key).toolClosed = now();
      });
      req.resume();
      return;
    }
    const place = new URL(req.url ?? '/', 'http://tool').searchParams.get('place') ?? '';
    const first = /^two-(\d+)$/.exec(place)?.[1];
    if (first !== undefined) turn(`two-${first}`).toolAsked = arrived;
    const id = /^bench-(\d+)$/.exec(place)?.[1];
    req.resume();
    const answer = JSON.stringify({ place, current: { temperature_2m: 21, wind_speed_10m: 12 } });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(answer) });
    res.end(answer);
    if (id !== undefined) {
      turn(id).toolAsked = arrived;
      turn(id).toolAnswered = now();
    }
  });

  const [upstreamUrl, toolUrl] = await Promise.all([listen(model), listen(tool)]);
  process.on('message', (message: ParentMessage) => {
    if (message.type === 'stamps') send({ type: 'stamps', turns });
    if (message.type === 'reset') turns = {};
  });
  // The parent's exit (or crash) closes the channel: nothing here may outlive it.
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready', upstreamUrl, toolUrl });
}

await main();
