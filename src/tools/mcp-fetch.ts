/**
 * The fetch one MCP session uses: it stands between the SDK and the server for what the SDK leaves to
 * the tool timeout or never closes.
 *
 * - An answer to one of our requests larger than MAX_MCP_RESPONSE_BYTES, counted while reading, or one
 *   that carries another request's id, is not JSON, or ends without a result, becomes a JSON-RPC error
 *   for that request at once. The SDK would otherwise wait for a response that never comes.
 * - A request the SDK gives up on (it sends `notifications/cancelled` on abort and on its own timeout)
 *   has its answer stream ended and its connection let go; the SDK itself leaves it open.
 *
 * - The long-lived event stream a GET opens (the server's notifications) passes through unchanged, but one
 *   event larger than MAX_MCP_RESPONSE_BYTES ends it with an error: the SDK would buffer an event without
 *   end. The SDK then opens a new one, or the session reconnects.
 * - On the older HTTP+SSE transport every answer comes on that stream too, matched by its id alone. An
 *   answer to a request the SDK has given up on (a barge-in) is dropped; one with an id no request has
 *   fails the calls still waiting at once. The SDK would take either for a broken session and reconnect,
 *   and the waiting calls would hear nothing until their timeout.
 */
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { jsonShapeProblem } from '../http/json-shape.js';
import { ByteCollector } from './byte-collector.js';
import { TOOL_ANSWER_JSON_BOUNDS } from './http-limits.js';

/** The most one answer may carry. */
export const MAX_MCP_RESPONSE_BYTES = 4 * 1024 * 1024;

type RequestId = string | number;

interface OutgoingMessage {
  id?: RequestId;
  method?: string;
  params?: { requestId?: RequestId };
}

/** JSON-RPC "internal error": the answer could not be used. */
const BAD_ANSWER = -32603;

const EVENT_STREAM = /text\/event-stream/i;

/** Requests given up on whose answers may still come, kept per session; past this the oldest is forgotten. */
const MAX_CANCELLED = 256;

/** `transport`: 'sse' for the older HTTP+SSE transport, whose answers all come on the GET's event stream. */
export function createSessionFetch(transport: 'streamable' | 'sse'): typeof fetch {
  /** Requests whose answers are still open, and how to end each. */
  const open = new Map<RequestId, AbortController>();
  const streamed = transport === 'sse' ? new StreamedAnswers() : undefined;

  return async (input, init) => {
    const method = (init?.method ?? 'GET').toUpperCase();
    if (method === 'GET') return capEvents(await fetch(input, init), streamed);
    if (method !== 'POST') return fetch(input, init);
    const message = outgoing(init?.body);
    if (message?.method === 'notifications/cancelled' && message.params?.requestId !== undefined) {
      open.get(message.params.requestId)?.abort();
      streamed?.cancelled(message.params.requestId);
    }
    const id = message?.method !== undefined ? message.id : undefined;
    /** A response with no answer of ours to check in it: its body is only capped. */
    const capped = async () => guardAnswer(await fetch(input, init), undefined, undefined, () => {});
    if (id === undefined) return capped();
    // The answer comes on the event stream; the POST's own body is only read when it refuses.
    if (streamed) return streamed.post(id, capped);

    const stop = new AbortController();
    open.set(id, stop);
    const done = () => {
      if (open.get(id) === stop) open.delete(id);
    };
    const signal = init?.signal ? AbortSignal.any([init.signal, stop.signal]) : stop.signal;
    let response: Response;
    try {
      response = await fetch(input, { ...init, signal });
    } catch (err) {
      done();
      throw err;
    }
    return guardAnswer(response, id, stop.signal, done);
  };
}

function outgoing(body: RequestInit['body']): OutgoingMessage | undefined {
  if (typeof body !== 'string') return undefined;
  try {
    const parsed: unknown = JSON.parse(body);
    return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)
      ? (parsed as OutgoingMessage)
      : undefined;
  } catch {
    return undefined;
  }
}

const TOO_LARGE = `the MCP server's answer is larger than ${MAX_MCP_RESPONSE_BYTES / 1024 / 1024} MiB`;

/**
 * The answer to a POST, read through the checks above. `id` is the request's (undefined for
 * notifications, whose answers are only capped); `stopped` ends the answer quietly, as cancelled.
 */
function guardAnswer(
  response: Response,
  id: RequestId | undefined,
  stopped: AbortSignal | undefined,
  done: () => void,
): Response {
  if (!response.body) {
    done();
    return response;
  }
  const type = response.headers.get('content-type') ?? '';
  const mode = id === undefined || !response.ok ? 'raw' : EVENT_STREAM.test(type) ? 'sse' : 'json';
  const reader = response.body.getReader();
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();
  let seen = 0;
  // Decoded once at the end: a string grown chunk by chunk holds an object per chunk.
  const json = new ByteCollector(MAX_MCP_RESPONSE_BYTES);
  let answered = false;
  let resumable = false;
  let pending = '';
  const parser = createParser({
    onEvent: (event) => {
      pending += serialize(checkEvent(event));
    },
    onRetry: (ms) => {
      pending += `retry: ${ms}\n\n`;
    },
  });

  const checkEvent = (event: EventSourceMessage): EventSourceMessage => {
    if (event.id) resumable = true;
    if (event.event && event.event !== 'message') return event;
    const problem = refusedAnswer(event.data) ?? wrongAnswer(answerOf(event.data), id as RequestId);
    if (problem === 'not-an-answer') return event;
    answered = true;
    return problem ? { ...event, data: errorText(id as RequestId, problem) } : event;
  };

  let finished = false;
  const finish = (controller: ReadableStreamDefaultController<Uint8Array>, tail = '') => {
    if (finished) return;
    finished = true;
    if (tail) controller.enqueue(encoder.encode(tail));
    controller.close();
    void reader.cancel().catch(() => undefined);
    done();
  };

  const body = new ReadableStream<Uint8Array>({
    // Reads until something can be passed on: a pull that enqueues nothing is not called again.
    async pull(controller) {
      while (!finished) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (stopped?.aborted) return finish(controller);
          finished = true;
          done();
          controller.error(err);
          return;
        }
        if (chunk.done) {
          if (mode === 'json')
            return finish(controller, checkJson(decoder.decode(json.bytes()), id as RequestId));
          if (mode === 'sse' && !answered && !resumable && !stopped?.aborted) {
            // Nothing more will come for this request: say so rather than let the call wait for its timeout.
            return finish(
              controller,
              errorEvent(id as RequestId, 'the MCP server ended its answer without a result'),
            );
          }
          return finish(controller);
        }
        seen += chunk.value.byteLength;
        if (seen > MAX_MCP_RESPONSE_BYTES) {
          if (mode === 'raw') {
            finished = true;
            done();
            void reader.cancel().catch(() => undefined);
            controller.error(new Error(TOO_LARGE));
            return;
          }
          return finish(
            controller,
            mode === 'json' ? errorText(id as RequestId, TOO_LARGE) : errorEvent(id as RequestId, TOO_LARGE),
          );
        }
        if (mode === 'raw') {
          controller.enqueue(chunk.value);
          return;
        }
        if (mode === 'json') {
          json.add(chunk.value);
          continue;
        }
        parser.feed(decoder.decode(chunk.value, { stream: true }));
        if (pending) {
          controller.enqueue(encoder.encode(pending));
          pending = '';
          return;
        }
      }
    },
    cancel() {
      finished = true;
      done();
      return reader.cancel();
    },
  });
  // A cancelled request's answer ends now, whether or not the server is still sending.
  stopped?.addEventListener('abort', () => void reader.cancel().catch(() => undefined), { once: true });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

const EVENT_TOO_LARGE = `the MCP server sent an event larger than ${MAX_MCP_RESPONSE_BYTES / 1024 / 1024} MiB`;

/**
 * The older transport's answers, which all come on the one event stream: which requests still wait for
 * one, and which the SDK has given up on.
 */
class StreamedAnswers {
  /** By request id: true while the SDK waits for the answer, false once it has given up on it. */
  readonly #requests = new Map<RequestId, boolean>();
  /** How many of those are false. */
  #givenUp = 0;

  /** Sends a request whose answer will come on the event stream (the POST itself gets a 202). */
  async post(id: RequestId, send: () => Promise<Response>): Promise<Response> {
    this.#requests.set(answerKey(id), true);
    try {
      const response = await send();
      // A refused POST fails the request in the SDK; no answer follows.
      if (!response.ok) this.#requests.delete(answerKey(id));
      return response;
    } catch (err) {
      this.#requests.delete(answerKey(id));
      throw err;
    }
  }

  /** The SDK no longer waits for this answer (a cancel, or a failure this class gave it). */
  cancelled(id: RequestId): void {
    const key = answerKey(id);
    if (!this.#requests.get(key)) return;
    this.#requests.set(key, false);
    if (++this.#givenUp <= MAX_CANCELLED) return;
    // The oldest one given up on is forgotten: its answer, should it still come, counts as a stray.
    for (const [other, waiting] of this.#requests) {
      if (waiting) continue;
      this.#requests.delete(other);
      this.#givenUp--;
      break;
    }
  }

  /** What to pass on to the SDK for one event of the stream. */
  pass(event: EventSourceMessage): string {
    const answer = event.event && event.event !== 'message' ? undefined : answerOf(event.data);
    if (!answer) return serialize(event);
    const key = answerKey(answer.id as RequestId);
    const waiting = this.#requests.get(key);
    if (waiting !== undefined) {
      this.#requests.delete(key);
      if (!waiting) this.#givenUp--;
      return waiting ? serialize(event) : '';
    }
    // An id no request has: which call it was meant for cannot be known, so every waiting one fails now.
    // Each is then given up, not forgotten: its real answer, should it still come, goes by quietly.
    let errors = '';
    for (const [id, stillWaiting] of [...this.#requests]) {
      if (!stillWaiting) continue;
      errors += errorEvent(id, wrongId(answer.id, id));
      this.cancelled(id);
    }
    return errors;
  }
}

/**
 * An event stream passed on, ended with an error at the first event over the cap: byte for byte, or, with
 * `answers` (the older transport), event by event through its checks.
 */
function capEvents(response: Response, answers?: StreamedAnswers): Response {
  if (!response.body || !EVENT_STREAM.test(response.headers.get('content-type') ?? '')) return response;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  let tooLarge = false;
  /** Why an event was refused before anything parsed it. */
  let refused: string | undefined;
  let pending = '';
  // The parser's buffer is what one event holds, in UTF-16 units (never more than its bytes).
  const parser = createParser({
    maxBufferSize: MAX_MCP_RESPONSE_BYTES,
    onEvent: (event) => {
      refused ??= jsonShapeProblem(event.data, TOOL_ANSWER_JSON_BOUNDS);
      if (answers && refused === undefined) pending += answers.pass(event);
    },
    onRetry: (ms) => {
      if (answers) pending += `retry: ${ms}\n\n`;
    },
    onError: (error) => {
      if (error.type === 'max-buffer-size-exceeded') tooLarge = true;
    },
  });
  const body = new ReadableStream<Uint8Array>({
    // Reads until something can be passed on: a pull that enqueues nothing is not called again.
    async pull(controller) {
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch (err) {
          controller.error(err);
          return;
        }
        if (chunk.done) return controller.close();
        try {
          parser.feed(decoder.decode(chunk.value, { stream: true }));
        } catch {
          // A tripped parser throws on every later feed.
          tooLarge = true;
        }
        if (tooLarge || refused !== undefined) {
          controller.error(
            new Error(
              tooLarge
                ? EVENT_TOO_LARGE
                : `an event of the MCP server was refused before parsing: ${refused}`,
            ),
          );
          void reader.cancel().catch(() => undefined);
          return;
        }
        if (!answers) return controller.enqueue(chunk.value);
        if (pending) {
          controller.enqueue(encoder.encode(pending));
          pending = '';
          return;
        }
      }
    },
    cancel: (reason) => reader.cancel(reason),
  });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

/** An answer's id as the SDK matches it (Number(id)): a server may echo 3 as "3". */
function answerKey(id: RequestId): RequestId {
  const n = Number(id);
  return Number.isFinite(n) ? n : id;
}

/** The JSON-RPC answer (result or error) in `data`, or undefined for other messages and what is not JSON. */
function answerOf(data: string): { id: unknown } | undefined {
  try {
    return answerIn(JSON.parse(data));
  } catch {
    return undefined;
  }
}

/** The id of a JSON-RPC answer (a result or an error); undefined for any other message. */
function answerIn(message: unknown): { id: unknown } | undefined {
  if (message === null || typeof message !== 'object' || Array.isArray(message)) return undefined;
  const m = message as Record<string, unknown>;
  return 'result' in m || 'error' in m ? { id: m.id } : undefined;
}

function wrongId(answered: unknown, asked: RequestId): string {
  return `the MCP server answered with the id ${JSON.stringify(answered)}, not ${JSON.stringify(asked)}`;
}

/** Why `answer` is no good as the answer to request `id`; undefined if it is; 'not-an-answer' for other messages. */
function wrongAnswer(
  answer: { id: unknown } | undefined,
  id: RequestId,
): string | undefined | 'not-an-answer' {
  if (!answer) return 'not-an-answer';
  return answerKey(answer.id as RequestId) === answerKey(id) ? undefined : wrongId(answer.id, id);
}

/** Why an answer's text is refused before anything parses it, or undefined. */
function refusedAnswer(text: string): string | undefined {
  const shape = jsonShapeProblem(text, TOOL_ANSWER_JSON_BOUNDS);
  return shape === undefined ? undefined : `the MCP server's answer was refused before parsing: ${shape}`;
}

function checkJson(text: string, id: RequestId): string {
  const refused = refusedAnswer(text);
  if (refused) return errorText(id, refused);
  let message: unknown;
  try {
    message = JSON.parse(text);
  } catch {
    return errorText(id, 'the MCP server answered with something that is not JSON');
  }
  const answers = Array.isArray(message) ? message : [message];
  for (const answer of answers) {
    const problem = wrongAnswer(answerIn(answer), id);
    if (problem !== undefined && problem !== 'not-an-answer') return errorText(id, problem);
  }
  return text;
}

function errorText(id: RequestId, message: string): string {
  return JSON.stringify({ jsonrpc: '2.0', id, error: { code: BAD_ANSWER, message } });
}

function errorEvent(id: RequestId, message: string): string {
  return serialize({ data: errorText(id, message), event: undefined, id: undefined });
}

function serialize(event: EventSourceMessage): string {
  const lines = [
    ...(event.id ? [`id: ${event.id}`] : []),
    ...(event.event ? [`event: ${event.event}`] : []),
    ...event.data.split('\n').map((line) => `data: ${line}`),
  ];
  return `${lines.join('\n')}\n\n`;
}
