/**
 * A stand-in LLM server for the demo, the benchmark and the tests (no GPU runs here). It is a real HTTP
 * server speaking OpenAI chat completions, and its streams reproduce, field for field, the recorded
 * formats of vLLM's tool parsers, Ollama, llama.cpp and OpenAI (test/fixtures/streams/ holds the
 * recordings these builders follow). A responder decides, per request, what to answer.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { drainOrClose } from '../proxy/sinks.js';

export type Dialect = 'vllm-llama3json' | 'vllm-hermes' | 'vllm-pythonic' | 'ollama' | 'llamacpp' | 'openai';
export const DIALECTS: readonly Dialect[] = [
  'vllm-llama3json',
  'vllm-hermes',
  'vllm-pythonic',
  'ollama',
  'llamacpp',
  'openai',
];

/** A raw SSE text written as is, a JSON object written as one `data:` event, or a pause. */
export type ScriptStep = string | Record<string, unknown> | { delayMs: number };

export interface ScriptedReply {
  status?: number;
  headers?: Record<string, string>;
  /** A JSON body (errors, or a non-streaming completion). */
  json?: unknown;
  /** An SSE stream; `data: [DONE]` is not added for you. */
  sse?: ScriptStep[];
  /** Never answer (a hung upstream); the socket stays open until the client leaves. */
  hang?: boolean;
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: Record<string, unknown> & { messages?: { role: string; content?: unknown }[]; tools?: unknown[] };
}

export type Responder = (request: RecordedRequest, index: number) => ScriptedReply | Promise<ScriptedReply>;

export interface ScriptedUpstream {
  /** Base URL without /v1. */
  url: string;
  /** Every chat request, in order. */
  requests: RecordedRequest[];
  /** Sockets currently open from clients (the proxy's pool). */
  openSockets(): number;
  /** Resolves when the n-th chat request's response stream was closed by the client or finished. */
  closed(n: number): Promise<'finished' | 'aborted'>;
  close(): Promise<void>;
}

const isDelay = (s: ScriptStep): s is { delayMs: number } =>
  typeof s === 'object' && 'delayMs' in s && Object.keys(s).length === 1;

/** The SSE text of a step that is not a pause: raw text as is, an object as one `data:` event. */
export function eventText(step: string | Record<string, unknown>): string {
  return typeof step === 'string' ? step : `data: ${JSON.stringify(step)}\n\n`;
}

/** A reply as the writes it is made of: text written after a pause (consecutive steps are one write). */
export interface TimedWrite {
  delayMs: number;
  text: string;
}

export function timedWrites(steps: ScriptStep[]): TimedWrite[] {
  const out: TimedWrite[] = [];
  let delayMs = 0;
  for (const step of steps) {
    if (isDelay(step)) {
      delayMs += step.delayMs;
      continue;
    }
    const last = out.at(-1);
    if (last && delayMs === 0) last.text += eventText(step);
    else out.push({ delayMs, text: eventText(step) });
    delayMs = 0;
  }
  return out;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });
}

export async function startScriptedUpstream(options: {
  respond: Responder;
  models?: string[];
  /** Text served at GET /metrics (vLLM's own metrics, for the observability tests). */
  metrics?: string | (() => string);
  host?: string;
}): Promise<ScriptedUpstream> {
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  const outcomes: Array<{
    promise: Promise<'finished' | 'aborted'>;
    resolve: (v: 'finished' | 'aborted') => void;
  }> = [];
  const outcomeFor = (n: number) => {
    while (outcomes.length <= n) {
      let resolve!: (v: 'finished' | 'aborted') => void;
      const promise = new Promise<'finished' | 'aborted'>((r) => {
        resolve = r;
      });
      outcomes.push({ promise, resolve });
    }
    return outcomes[n] as (typeof outcomes)[number];
  };

  const write = async (res: ServerResponse, steps: ScriptStep[], signal: AbortSignal) => {
    for (const step of steps) {
      if (signal.aborted) return;
      if (isDelay(step)) {
        await sleep(step.delayMs, signal);
        continue;
      }
      if (!res.write(eventText(step))) await drainOrClose(res);
    }
  };

  const server: Server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const path = req.url ?? '/';
    if (req.method === 'GET' && path.endsWith('/v1/models')) {
      const data = (options.models ?? ['scripted-model']).map((id) => ({
        id,
        object: 'model',
        created: 0,
        owned_by: 'earpiece',
      }));
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ object: 'list', data }));
      return;
    }
    if (req.method === 'GET' && path === '/metrics' && options.metrics) {
      const text = typeof options.metrics === 'function' ? options.metrics() : options.metrics;
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text);
      return;
    }
    if (req.method !== 'POST' || !path.endsWith('/v1/chat/completions')) {
      res
        .writeHead(404, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: { message: `no route ${path}` } }));
      return;
    }
    const recorded: RecordedRequest = {
      method: req.method,
      path,
      headers: req.headers,
      body: JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}'),
    };
    const index = requests.push(recorded) - 1;
    const outcome = outcomeFor(index);
    const abort = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) abort.abort();
      outcome.resolve(res.writableFinished ? 'finished' : 'aborted');
    });
    const reply = await options.respond(recorded, index);
    if (reply.hang) return;
    if (reply.sse) {
      res.writeHead(reply.status ?? 200, {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        ...reply.headers,
      });
      res.flushHeaders();
      await write(res, reply.sse, abort.signal);
      if (!abort.signal.aborted) res.end();
      return;
    }
    res.writeHead(reply.status ?? 200, { 'content-type': 'application/json', ...reply.headers });
    res.end(JSON.stringify(reply.json ?? {}));
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, options.host ?? '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    openSockets: () => sockets.size,
    closed: (n) => outcomeFor(n).promise,
    close: async () => {
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close');
    },
  };
}

// ---- Dialect builders: the chunk sequences each server sends, per the recorded fixtures. ----

export interface ToolCallSpec {
  name: string;
  arguments: Record<string, unknown>;
}

interface BuildOptions {
  model?: string;
  /** Pause between chunks. */
  delayMs?: number;
}

function hex(n: number): string {
  return randomBytes(n).toString('hex').slice(0, n);
}

function alnum(n: number): string {
  return randomBytes(n * 2)
    .toString('base64')
    .replace(/[^a-zA-Z0-9]/g, '')
    .slice(0, n);
}

/** Python json.dumps spacing (`", "`, `": "`), as vLLM's llama3_json and pythonic parsers re-serialize. */
function pythonJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(pythonJson).join(', ')}]`;
  if (value !== null && typeof value === 'object') {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}: ${pythonJson(v)}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value);
}

/** Cuts text into a few pieces, as a tokenizer would. */
function pieces(text: string, size = 6): string[] {
  const out: string[] = [];
  const chars = [...text];
  for (let i = 0; i < chars.length; i += size) out.push(chars.slice(i, i + size).join(''));
  return out.length ? out : [''];
}

/** Splits into word-sized deltas that keep their leading space, like streamed tokens. */
export function words(text: string): string[] {
  return text.match(/\s*\S+\s*?/g) ?? [text];
}

function withDelays(steps: ScriptStep[], delayMs: number | undefined): ScriptStep[] {
  if (!delayMs) return steps;
  return steps.flatMap((s, i) => (i === 0 ? [s] : [{ delayMs }, s]));
}

class Envelope {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);
  constructor(
    readonly dialect: Dialect,
    readonly model: string,
  ) {
    this.id =
      dialect === 'ollama'
        ? `chatcmpl-${Math.floor(Math.random() * 999)}`
        : dialect === 'openai'
          ? `chatcmpl-${alnum(29)}`
          : dialect === 'llamacpp'
            ? `chatcmpl-${alnum(32)}`
            : `chatcmpl-${hex(32)}`;
  }

  chunk(
    delta: Record<string, unknown>,
    finish: string | null = null,
    extra: Record<string, unknown> = {},
  ): Record<string, unknown> {
    switch (this.dialect) {
      case 'ollama':
        return {
          id: this.id,
          object: 'chat.completion.chunk',
          created: this.created,
          model: this.model,
          system_fingerprint: 'fp_ollama',
          choices: [{ index: 0, delta, finish_reason: finish }],
          ...extra,
        };
      case 'llamacpp':
        return {
          choices: [{ finish_reason: finish, index: 0, delta }],
          created: this.created,
          id: this.id,
          model: this.model,
          system_fingerprint: 'b6700-1a2b3c4d',
          object: 'chat.completion.chunk',
          ...extra,
        };
      case 'openai':
        return {
          id: this.id,
          object: 'chat.completion.chunk',
          created: this.created,
          model: this.model,
          system_fingerprint: 'fp_143bb8492c',
          choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
          ...extra,
        };
      default:
        return {
          id: this.id,
          object: 'chat.completion.chunk',
          created: this.created,
          model: this.model,
          choices: [
            {
              index: 0,
              delta,
              logprobs: null,
              finish_reason: finish,
              ...(finish ? { stop_reason: null } : {}),
              token_ids: null,
            },
          ],
          ...extra,
        };
    }
  }

  usage(prompt = 120, completion = 24): Record<string, unknown> {
    return {
      id: this.id,
      object: 'chat.completion.chunk',
      created: this.created,
      model: this.model,
      choices: [],
      usage: { prompt_tokens: prompt, total_tokens: prompt + completion, completion_tokens: completion },
    };
  }
}

function roleChunk(env: Envelope): Record<string, unknown> {
  switch (env.dialect) {
    case 'ollama':
      return env.chunk({ role: 'assistant', content: '' });
    case 'llamacpp':
    case 'openai':
      return env.chunk({ role: 'assistant', content: env.dialect === 'openai' ? '' : null });
    default:
      return { ...env.chunk({ role: 'assistant', content: '' }), prompt_token_ids: null };
  }
}

/** A plain spoken answer, content streamed word by word, then the finish chunk, usage and [DONE]. */
export function textReply(
  text: string,
  dialect: Dialect = 'vllm-llama3json',
  options: BuildOptions = {},
): ScriptStep[] {
  const env = new Envelope(dialect, options.model ?? 'scripted-model');
  const content = words(text).map((w) =>
    env.chunk(dialect === 'ollama' ? { role: 'assistant', content: w } : { content: w }),
  );
  const finish =
    dialect === 'ollama'
      ? env.chunk({ role: 'assistant', content: '' }, 'stop')
      : env.chunk(dialect.startsWith('vllm') ? { content: '' } : {}, 'stop');
  return [
    ...withDelays([roleChunk(env), ...content, finish], options.delayMs),
    env.usage(),
    'data: [DONE]\n\n',
  ];
}

/**
 * A message that calls tools, in the dialect's exact shape: vLLM's parsers stream the name first and the
 * arguments in fragments (hermes with "\n" content between calls), Ollama sends each call whole,
 * llama.cpp and OpenAI send the name with empty arguments and then fragments.
 */
export function toolCallReply(
  calls: ToolCallSpec[],
  dialect: Dialect = 'vllm-llama3json',
  options: BuildOptions & { content?: string } = {},
): ScriptStep[] {
  const env = new Envelope(dialect, options.model ?? 'scripted-model');
  const steps: ScriptStep[] = [roleChunk(env)];
  if (options.content) {
    for (const w of words(options.content))
      steps.push(env.chunk(dialect === 'ollama' ? { role: 'assistant', content: w } : { content: w }));
  }
  calls.forEach((call, index) => {
    const compact = JSON.stringify(call.arguments);
    switch (dialect) {
      case 'ollama':
        steps.push(
          env.chunk({
            role: 'assistant',
            content: '',
            tool_calls: [
              {
                id: `call_${alnum(8).toLowerCase()}`,
                index,
                type: 'function',
                function: { name: call.name, arguments: compact },
              },
            ],
          }),
        );
        break;
      case 'llamacpp':
      case 'openai': {
        const id = dialect === 'openai' ? `call_${alnum(24)}` : alnum(32);
        steps.push(
          env.chunk({
            tool_calls: [{ index, id, type: 'function', function: { name: call.name, arguments: '' } }],
          }),
        );
        for (const p of pieces(compact))
          steps.push(env.chunk({ tool_calls: [{ index, function: { arguments: p } }] }));
        break;
      }
      case 'vllm-pythonic': {
        const args = pythonJson(call.arguments);
        const [first = '', ...rest] = pieces(args, 10);
        steps.push(
          env.chunk({
            tool_calls: [
              {
                id: `chatcmpl-tool-${hex(32)}`,
                type: 'function',
                index,
                function: { name: call.name, arguments: first },
              },
            ],
          }),
        );
        for (const p of rest)
          steps.push(env.chunk({ tool_calls: [{ id: null, index, function: { arguments: p } }] }));
        break;
      }
      default: {
        // llama3_json and hermes: the name alone, then json.dumps fragments.
        if (dialect === 'vllm-hermes' && index > 0) steps.push(env.chunk({ content: '\n' }));
        steps.push(
          env.chunk({
            tool_calls: [
              { id: `chatcmpl-tool-${hex(32)}`, type: 'function', index, function: { name: call.name } },
            ],
          }),
        );
        for (const p of pieces(pythonJson(call.arguments)))
          steps.push(env.chunk({ tool_calls: [{ index, function: { arguments: p } }] }));
      }
    }
  });
  const finish =
    dialect === 'ollama'
      ? env.chunk({ role: 'assistant', content: '' }, 'tool_calls')
      : dialect === 'vllm-llama3json'
        ? env.chunk({ tool_calls: [{ index: calls.length - 1, function: { arguments: '' } }] }, 'tool_calls')
        : dialect.startsWith('vllm')
          ? env.chunk({ content: '' }, 'tool_calls')
          : env.chunk({}, 'tool_calls');
  steps.push(finish);
  return [...withDelays(steps, options.delayMs), env.usage(), 'data: [DONE]\n\n'];
}

/** vLLM's in-band error: HTTP 200, then `data: {"error": …}` and [DONE]. */
export function midStreamError(message = 'The engine died', afterText = ''): ScriptStep[] {
  const env = new Envelope('vllm-llama3json', 'scripted-model');
  return [
    roleChunk(env),
    ...words(afterText)
      .filter(Boolean)
      .map((w) => env.chunk({ content: w })),
    `data: ${JSON.stringify({ error: { object: 'error', message, type: 'InternalServerError', param: null, code: 500 } }, null, 1)}\n\n`,
    'data: [DONE]\n\n',
  ];
}

/** The JSON error body vLLM (≥ 0.10.1) sends before a stream. */
export function errorReply(status: number, message: string): ScriptedReply {
  return { status, json: { error: { message, type: 'BadRequestError', param: null, code: status } } };
}

/** The last user message's text, for responders that answer by content. */
export function lastUserText(request: RecordedRequest): string {
  const user = [...(request.body.messages ?? [])].reverse().find((m) => m.role === 'user');
  return typeof user?.content === 'string' ? user.content : '';
}

/** Tool messages in the request (results the proxy fed back). */
export function toolResults(request: RecordedRequest): string[] {
  return (request.body.messages ?? []).filter((m) => m.role === 'tool').map((m) => String(m.content));
}
