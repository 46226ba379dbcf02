/** POST /v1/chat/completions: the client's turn, streamed (SSE sink) or not (JSON sink). */
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { type ChatRequestBody, ChatRequestSchema } from '../chat-request.js';
import { ProxyError } from '../errors.js';
import type { ChatMessage } from '../messages.js';
import type { ServerDeps } from '../server.js';
import { closeIfUnread, completionId, JsonSink, SseSink } from '../sinks.js';
import { runTurn } from '../turn.js';
import { ATTRIBUTION_HEADERS } from '../upstream.js';
import { voiceText } from '../voice.js';

/** The client's OpenRouter attribution headers, when it sent any. */
function attributionHeaders(headers: IncomingHttpHeaders): Record<string, string> | undefined {
  const entries = ATTRIBUTION_HEADERS.flatMap((name) => {
    const value = headers[name];
    return typeof value === 'string' ? [[name, value] as const] : [];
  });
  return entries.length > 0 ? Object.fromEntries(entries) : undefined;
}

/** `unreadAnswerMs`: how long a client has to read the answer once the turn is over (closeIfUnread). */
export async function chatRoutes(
  app: FastifyInstance,
  deps: ServerDeps,
  unreadAnswerMs: number,
): Promise<void> {
  // The body is JSON or nothing: fastify's own text/plain parser would let a text body through to the
  // schema check, which calls it "not an object" where the fault is its content type (415).
  app.removeContentTypeParser('text/plain');
  // The schema check answers a malformed request with a 400 naming the field (http-errors.ts), before any
  // of it is read here: nothing below may throw on a client's input once the reply is hijacked.
  app.post('/v1/chat/completions', { schema: { body: ChatRequestSchema } }, async (request, reply) => {
    const receivedAt = performance.now();
    const body = request.body as ChatRequestBody;
    const active = deps.current();
    const res = reply.raw;
    const envelope = {
      id: completionId(),
      model: body.model ?? 'unknown',
      created: Math.floor(Date.now() / 1000),
    };
    const streaming = body.stream === true;
    const sink = streaming
      ? new SseSink(res, envelope, { includeUsage: body.stream_options?.include_usage === true })
      : new JsonSink(res, envelope, [request.headers.authorization, active.upstream.options.apiKey]);
    reply.hijack();
    const client = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) client.abort(new Error('client closed the connection'));
    });
    // Gone while the body was read: 'close' has already fired.
    if (res.destroyed) client.abort(new Error('client closed the connection'));
    deps.turnActivity?.turnStarted();
    try {
      const turn = runTurn(
        {
          body: body as Record<string, unknown> & { messages: ChatMessage[]; model?: string },
          authorization: request.headers.authorization,
          traceparent:
            typeof request.headers.traceparent === 'string' ? request.headers.traceparent : undefined,
          attribution: attributionHeaders(request.headers),
          clientSignal: client.signal,
          receivedAt,
        },
        sink,
        { ...active, telemetry: deps.telemetry, logger: deps.logger },
      );
      // Counted after the turn has dispatched its model request (runTurn runs up to its first wait at once).
      if (streaming) deps.telemetry.stream({ change: 'opened' });
      await turn;
    } catch (err) {
      // runTurn handles its own failures; this is the last guard so a stream always ends well-formed.
      deps.logger.error({ err }, 'Turn crashed; ended it with the error message.');
      sink.fail(
        new ProxyError('ERP_INTERNAL', 'internal error'),
        voiceText(active.toolset.voice.errorMessage, active.language.pick(body.messages as ChatMessage[])),
      );
    } finally {
      if (streaming) deps.telemetry.stream({ change: 'closed' });
      deps.turnActivity?.turnEnded();
      closeIfUnread(res, unreadAnswerMs);
    }
  });
}
