/**
 * POST /v1/chat/completions: the client's turn, streamed (SSE sink) or not (JSON sink).
 *
 * Two ways in, one turn. The fast lane takes the common request (a JSON body of declared length within the
 * body limit) straight from Node's server: fastify's request pipeline costs about a tenth of a brief turn
 * (docs/benchmark.md). The lane makes fastify's checks with the same parts, in the same order (the body
 * budget, the JSON bounds, the schema) and answers a failure as errorHandler does, but keeps the connection
 * after a body it has read whole and could not parse, where fastify closes it. Any other request
 * (chunked, of another content type, too large, or while the server closes) takes fastify's route, and
 * hears fastify's answers.
 */
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { BodyBudget } from '../../http/body-budget.js';
import type { JsonBodyParser } from '../../http/json-shape.js';
import {
  type ChatRequestBody,
  ChatRequestSchema,
  chatRequestProblem,
  validateChatRequest,
} from '../chat-request.js';
import { ProxyError } from '../errors.js';
import { asProxyError, writeError } from '../http-errors.js';
import type { ChatMessage } from '../messages.js';
import type { ServerDeps } from '../server.js';
import { closeIfUnread, completionId, JsonSink, SseSink } from '../sinks.js';
import { runTurn } from '../turn.js';
import { ATTRIBUTION_HEADERS } from '../upstream.js';
import { voiceText } from '../voice.js';

const CHAT_PATH = '/v1/chat/completions';
const CHAT_PATH_WITH_QUERY = `${CHAT_PATH}?`;
/** What clients send (the OpenAI SDKs, Unmute's httpx); fastify decides on any other spelling. */
const JSON_CONTENT_TYPE = /^application\/json(?:; ?charset=utf-8)?$/i;

export interface ChatParts {
  deps: ServerDeps;
  /** How long a client has to read the answer once the turn is over (closeIfUnread). */
  unreadAnswerMs: number;
}

/** What the fast lane checks a request with: the server's own parts, which fastify's route uses too. */
export interface LaneParts extends ChatParts {
  budget: BodyBudget;
  /** The server's JSON body parser (the JSON bounds, then a secure parse). */
  parseJson: JsonBodyParser;
  bodyLimit: number;
}

/** The route for requests the fast lane leaves to fastify. */
export async function chatRoutes(app: FastifyInstance, parts: ChatParts): Promise<void> {
  // The body is JSON or nothing: fastify's own text/plain parser would let a text body through to the
  // schema check, which calls it "not an object" where the fault is its content type (415).
  app.removeContentTypeParser('text/plain');
  // The schema check answers a malformed request with a 400 naming the field (http-errors.ts), before any
  // of it is read here: nothing below may throw on a client's input once the reply is hijacked.
  app.post(
    CHAT_PATH,
    { schema: { body: ChatRequestSchema }, validatorCompiler: () => validateChatRequest },
    async (request, reply) => {
      reply.hijack();
      await serveTurn(request.body as ChatRequestBody, request.headers, reply.raw, parts);
    },
  );
}

/**
 * The fast lane, for the server's request listener: true when it has taken the request (and will answer
 * it), false to leave it to fastify.
 */
export function chatFastLane(
  parts: LaneParts,
  isClosing: () => boolean,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const { budget, parseJson, bodyLimit } = parts;
  return (req, res) => {
    const { headers } = req;
    const declared = Number(headers['content-length']);
    if (
      req.method !== 'POST' ||
      (req.url !== CHAT_PATH && !req.url?.startsWith(CHAT_PATH_WITH_QUERY)) ||
      headers['transfer-encoding'] !== undefined ||
      !(declared > 0 && declared <= bodyLimit) ||
      !JSON_CONTENT_TYPE.test(headers['content-type'] ?? '') ||
      isClosing()
    )
      return false;
    if (!budget.holdDeclared(res, declared)) {
      writeError(res, asProxyError(budget.exceeded()));
      return true;
    }
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => {
      text += chunk;
    });
    // A client gone mid-body: no one to answer, and its response's 'close' gives back the budget.
    req.on('error', () => {});
    req.on('end', () =>
      parseJson(text, (err, body) => {
        const problem = err ? asProxyError(err) : badRequest(chatRequestProblem(body));
        if (problem) writeError(res, problem);
        else
          serveTurn(body as ChatRequestBody, headers, res, parts).catch((err: unknown) => {
            // fastify's route would have caught this; here nothing else would, and the process would exit.
            parts.deps.logger.error({ err }, 'Chat request failed inside the proxy.');
            res.destroy();
          });
      }),
    );
    return true;
  };
}

function badRequest(problem: string | undefined): ProxyError | undefined {
  return problem === undefined ? undefined : new ProxyError('ERP_BAD_REQUEST', problem);
}

/** The client's OpenRouter attribution headers, when it sent any. */
function attributionHeaders(headers: IncomingHttpHeaders): Record<string, string> | undefined {
  const entries = ATTRIBUTION_HEADERS.flatMap((name) => {
    const value = headers[name];
    return typeof value === 'string' ? [[name, value] as const] : [];
  });
  return entries.length > 0 ? Object.fromEntries(entries) : undefined;
}

/** One checked request's turn, answered on `res`. */
async function serveTurn(
  body: ChatRequestBody,
  headers: IncomingHttpHeaders,
  res: ServerResponse,
  { deps, unreadAnswerMs }: ChatParts,
): Promise<void> {
  const receivedAt = performance.now();
  const active = deps.current();
  const envelope = {
    id: completionId(),
    model: body.model ?? 'unknown',
    created: Math.floor(Date.now() / 1000),
  };
  const streaming = body.stream === true;
  const sink = streaming
    ? new SseSink(res, envelope, { includeUsage: body.stream_options?.include_usage === true })
    : new JsonSink(res, envelope, [headers.authorization, active.upstream.options.apiKey]);
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
        authorization: headers.authorization,
        traceparent: typeof headers.traceparent === 'string' ? headers.traceparent : undefined,
        attribution: attributionHeaders(headers),
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
}
