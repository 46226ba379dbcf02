/**
 * The `http` executor: an RFC 6570 template expanded with the arguments only, sent with undici through
 * one long-lived dispatcher whose interceptors cap the response size and turn non-2xx into errors.
 * Arguments are percent-encoded by the template library, and the expanded URL must keep the template's
 * origin: no argument can change the scheme, host or port, or climb out of the template's path.
 */
import { Writable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import { type PrimitiveValue, parseTemplate } from 'url-template';
import { jsonShapeProblem } from '../http/json-shape.js';
import type { HttpToolSpec } from '../toolset/schema.js';
import { templateOrigin } from '../toolset/url-template.js';
import { resolveValue } from '../toolset/values.js';
import { ByteCollector } from './byte-collector.js';
import { responseSizeLimit, statusAsError, TOOL_ANSWER_JSON_BOUNDS } from './http-limits.js';
import { type ToolContext, ToolError, type ToolExecutor } from './types.js';

export const DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024;

/** One per registry: keep-alive connections are shared by every http tool; close() drains them. */
export function createHttpDispatcher(options: { maxResponseBytes?: number } = {}): Dispatcher {
  // The first interceptor sees the response first: error statuses never count against the size cap.
  return new Agent().compose(
    statusAsError(),
    responseSizeLimit({ maxBytes: options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES }),
  );
}

export interface HttpExecutorOptions {
  dispatcher: Dispatcher;
  env?: NodeJS.ProcessEnv;
  /** Field path of the tool's `http` block, for messages about unresolvable header values. */
  path?: string;
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH']);

type TemplateValue = PrimitiveValue | PrimitiveValue[];

/**
 * Primitives and lists go to url-template as they are; an object goes as its JSON text. A map would let
 * the model name query parameters (`{?x*}` explodes its keys into `key=value` pairs).
 */
function templateValue(value: unknown): TemplateValue {
  const primitive = (v: unknown): PrimitiveValue =>
    v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean'
      ? v
      : JSON.stringify(v);
  return Array.isArray(value) ? value.map(primitive) : primitive(value);
}

/** RFC 6901 over own properties only (no prototype walking, `-` never matches). Undefined when absent. */
export function selectPointer(document: unknown, pointer: string): unknown {
  if (pointer === '') return document;
  let node = document;
  for (const raw of pointer.slice(1).split('/')) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(node)) {
      if (!/^(0|[1-9]\d*)$/.test(key) || Number(key) >= node.length) return undefined;
      node = node[Number(key)];
    } else if (node !== null && typeof node === 'object' && Object.hasOwn(node, key)) {
      node = (node as Record<string, unknown>)[key];
    } else {
      return undefined;
    }
  }
  return node;
}

export function createHttpExecutor(spec: HttpToolSpec, options: HttpExecutorOptions): ToolExecutor {
  const origin = templateOrigin(spec.url);
  if (!origin) throw new ToolError(`${options.path ?? 'http.url'} has no literal origin`, 'ERP_TOOL_CONFIG');
  const host = new URL(origin).host;
  const template = parseTemplate(spec.url);
  const method = spec.method ?? 'GET';
  const sendsBody = BODY_METHODS.has(method);
  const headers: Record<string, string> = {
    accept: 'application/json, text/*;q=0.9, */*;q=0.5',
    'user-agent': 'earpiece',
    ...(sendsBody ? { 'content-type': 'application/json' } : {}),
  };
  // Resolved once: a missing env var fails when the ToolSet loads, not in the middle of a turn.
  for (const [i, header] of (spec.headers ?? []).entries()) {
    headers[header.name.toLowerCase()] = resolveValue(
      header,
      `${options.path ?? 'http'}.headers[${i}]`,
      options.env,
    );
  }

  const expand = (args: Record<string, unknown>): URL => {
    // No prototype: an argument named "__proto__" must not supply template variables the schema never checked.
    const context: Record<string, TemplateValue> = Object.create(null);
    for (const [name, value] of Object.entries(args)) context[name] = templateValue(value);
    let text: string;
    let url: URL;
    try {
      // Percent-encoding throws on text that is not Unicode (a lone surrogate).
      text = template.expand(context);
      url = new URL(text);
    } catch {
      throw new ToolError('the arguments do not make a valid URL', 'ERP_TOOL_URL');
    }
    // A path segment of "." or ".." (also as %2e, which URL parsing reads as a dot) would be resolved away.
    const rawPath = text.replace(/^[^:]*:\/\/[^/?#]*/, '').split(/[?#]/, 1)[0] ?? '';
    if (url.origin !== origin || rawPath.split('/').some((s) => /^(?:\.|%2e){1,2}$/i.test(s))) {
      throw new ToolError(`the arguments would take the request outside its URL on ${host}`, 'ERP_TOOL_URL');
    }
    return url;
  };

  const failed = (err: unknown, ctx: ToolContext): unknown => {
    if (ctx.signal.aborted) return ctx.signal.reason;
    if (err instanceof ToolError) return err;
    const code = (err as { code?: unknown }).code;
    return new ToolError(
      `the request to ${host} failed${typeof code === 'string' ? ` (${code})` : ''}`,
      'ERP_TOOL_HTTP',
    );
  };

  return {
    async run(args, ctx) {
      const url = expand(args);
      let response: HttpResponse;
      try {
        response = await send(options.dispatcher, {
          origin,
          path: url.pathname + url.search,
          method,
          headers,
          body: sendsBody ? JSON.stringify(args) : undefined,
          signal: ctx.signal,
        });
      } catch (err) {
        throw failed(err, ctx);
      }
      return interpret(response.text, response.contentType, response.statusCode, spec.select, host);
    },
  };
}

interface HttpResponse {
  statusCode: number;
  contentType: string;
  text: string;
}

/**
 * One request, its body copied into one buffer as it comes (the size interceptor bounds it): kept as its
 * chunks, a body of one-byte reads would hold a read buffer per byte. undici's stream() rather than a bare
 * dispatch: it takes the signal, and with it a request that still waits for its connection (a TLS
 * handshake that never ends) leaves the queue when the call is aborted, instead of holding it, and the
 * dispatcher's close(), until its connection attempt gives up.
 */
async function send(
  dispatcher: Dispatcher,
  options: Dispatcher.DispatchOptions & { signal: AbortSignal },
): Promise<HttpResponse> {
  const body = new ByteCollector();
  let statusCode = 0;
  let contentType = '';
  await dispatcher.stream(options, (response) => {
    statusCode = response.statusCode;
    contentType = String(response.headers['content-type'] ?? '');
    return new Writable({
      write(chunk: Buffer, _encoding, done) {
        body.add(chunk);
        done();
      },
    });
  });
  return { statusCode, contentType, text: body.bytes().toString('utf8') };
}

function interpret(
  text: string,
  contentType: string,
  statusCode: number,
  select: string | undefined,
  host: string,
): unknown {
  if (text === '' && select === undefined) return `(empty response, HTTP ${statusCode})`;
  if (select === undefined && !/[/+]json\b/i.test(contentType)) return text;
  // A response within the size cap can still be half a million nested or empty objects to parse.
  const shape = jsonShapeProblem(text, TOOL_ANSWER_JSON_BOUNDS);
  if (shape)
    throw new ToolError(`the JSON response from ${host} was refused: ${shape}`, 'ERP_TOOL_HTTP_JSON');
  let document: unknown;
  try {
    document = JSON.parse(text);
  } catch {
    throw new ToolError(
      select === undefined
        ? `${host} sent a response that is not valid JSON`
        : `the response from ${host} is not JSON, so select ${select} does not apply`,
      'ERP_TOOL_HTTP_JSON',
    );
  }
  if (select === undefined) return document;
  const selected = selectPointer(document, select);
  if (selected === undefined) {
    throw new ToolError(
      `select ${select} found nothing in the response from ${host}`,
      'ERP_TOOL_HTTP_SELECT',
    );
  }
  return selected;
}
