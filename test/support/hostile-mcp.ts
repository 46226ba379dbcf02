/**
 * A hostile MCP server for tests: Streamable HTTP written by hand (JSON answers, one session), or the older
 * HTTP+SSE transport (every answer on the one event stream, after a 202 to the POST), so it can do what the
 * SDK's server never would: list thousands of tools, flood the client with tools/list_changed, answer a
 * call with 5 MiB, with structured content its own output schema would take seconds to check, with another
 * request's id, late or never, hold its answer to initialize or tools/list, or send one
 * event without end on the client's event stream. It counts what it sees and the TCP connections it holds open.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/**
 * How tools/call is answered ('late': after LATE_MS; 'stray': another id at once, then its own after
 * LATE_MS; 'string-id': its id as a string, as some servers echo it; 'refused': HTTP 500 and a body of up to
 * 64 MiB, written as fast as the client reads it; 'rpc-error': a JSON-RPC error with rpcErrorCode and the
 * message "City not found", as a server's tool that fails answers; 'deep': structured content nested 1,000
 * levels deep).
 */
export type CallMode =
  | 'ok'
  | 'hang'
  | 'oversized'
  | 'wrong-id'
  | 'late'
  | 'stray'
  | 'string-id'
  | 'refused'
  | 'rpc-error'
  | 'deep';

export const LATE_MS = 400;

export interface HostileMcpServer {
  url: string;
  /** How many tools tools/list returns, all on one page. */
  tools: number;
  mode: CallMode;
  /** The code of mode 'rpc-error' (-32000 by default, the usual one for a server's own failure). */
  rpcErrorCode: number;
  /** tools/list is answered with a JSON-RPC error of this code, "Listing is broken". */
  listErrorCode: number | undefined;
  /** A `pattern` for every tool's `q` argument. */
  pattern: string | undefined;
  /** tool_0 listed with a 100,000-character description, tool_1 with a 100 KB input schema. */
  oversizedListing: boolean;
  /**
   * Tools per tools/list answer, with a nextCursor while more follow (undefined: all on one page). With
   * `endless`, the last page points back to the first, so paging never ends.
   */
  pageSize: number | undefined;
  endless: boolean;
  /** Each tools/list answer is sent this late. */
  pageDelayMs: number;
  /** Every tool's description padded to this many characters (oversizedListing aside). */
  descriptionChars: number;
  /** Extra string properties (`p0`, `p1`, …) in every tool's input schema, to make it large. */
  inputProperties: number;
  /** Every tool's description ends with this, so a listing can change nothing but descriptions. */
  descriptionSuffix: string;
  /** Listed as every tool's outputSchema. */
  outputSchema: Record<string, unknown> | undefined;
  /** Sent with every 'ok' answer to tools/call. */
  structuredContent: Record<string, unknown> | undefined;
  /** Every tool named with 100,000 characters, tool_2 the same as tool_0 (so they clash). */
  longNames: boolean;
  /** tools/list requests (pages) seen, and tools/call requests seen. */
  listings: number;
  calls: number;
  /**
   * initialize requests seen. Each makes a session, `hostile-N` for the Nth, whose id goes in the answer's
   * Mcp-Session-Id header (Streamable HTTP).
   */
  initializations: number;
  /** Answers to this method wait until release(), as a server slow to set a session up makes them. */
  holding: 'initialize' | 'tools/list' | undefined;
  /** Sends the answers held so far. */
  release(): void;
  /** The Mcp-Session-Id header of every DELETE seen, in order. */
  deletes: (string | undefined)[];
  /** TCP connections open now. */
  openSockets(): number;
  /** Sends tools/list_changed notifications on the client's event stream for `ms`, every millisecond or so. */
  storm(ms: number): Promise<void>;
  /**
   * Starts one event on the client's event stream and writes up to `bytes` of its data line, never ending
   * it. Resolves with what was written once the client closed the stream, or all of it was written.
   */
  endlessEvent(bytes: number): Promise<{ written: number; closedByClient: boolean }>;
  /** Event streams (GETs) opened so far. */
  eventStreams: number;
  /** What mode 'refused' wrote of its body, and whether the client let go of it first. */
  refusal: { written: number; closedByClient: boolean };
  close(): Promise<void>;
}

interface Request {
  id?: number | string;
  method?: string;
  params?: Record<string, unknown>;
}

export async function startHostileMcpServer(
  options: { transport?: 'streamable' | 'sse' } = {},
): Promise<HostileMcpServer> {
  const legacy = options.transport === 'sse';
  const sockets = new Set<Socket>();
  const streams = new Set<ServerResponse>();
  const hanging = new Set<ServerResponse>();
  const held = new Set<() => void>();

  /** Sends now, or once release() is called if `method` is the one held. */
  const sendOrHold = (method: string, res: ServerResponse, send: () => void) => {
    if (state.holding !== method) return send();
    const release = () => {
      held.delete(release);
      hanging.delete(res);
      send();
    };
    held.add(release);
    hanging.add(res);
  };

  /**
   * Streamable HTTP answers in the POST's response (initialize's with the session id); HTTP+SSE on the event
   * stream, after a 202 to the POST.
   */
  const answer = (
    res: ServerResponse,
    id: Request['id'],
    result: unknown,
    session?: string,
    error?: { code: number; message: string },
  ) => {
    const message = JSON.stringify(error ? { jsonrpc: '2.0', id, error } : { jsonrpc: '2.0', id, result });
    if (legacy) {
      if (!res.headersSent) res.writeHead(202).end('Accepted');
      for (const stream of streams) stream.write(`event: message\ndata: ${message}\n\n`);
      return;
    }
    res.writeHead(200, {
      'content-type': 'application/json',
      ...(session === undefined ? {} : { 'mcp-session-id': session }),
    });
    res.end(message);
  };

  const initialize = (req: Request, res: ServerResponse) => {
    const session = `hostile-${++state.initializations}`;
    sendOrHold('initialize', res, () =>
      answer(
        res,
        req.id,
        {
          protocolVersion: req.params?.protocolVersion,
          capabilities: { tools: { listChanged: true } },
          serverInfo: { name: 'hostile', version: '1.0.0' },
        },
        session,
      ),
    );
  };

  const toolName = (i: number) => (state.longNames ? `tool_${i % 2}${'n'.repeat(100_000)}` : `tool_${i}`);
  const describe = (i: number) =>
    state.oversizedListing && i === 0
      ? 'd'.repeat(100_000)
      : `Tool number ${i}.${state.descriptionSuffix}`.padEnd(state.descriptionChars, 'd');

  /** One page of the listing: the tools from `cursor` (an index) on, and where the next page starts. */
  const toolPage = (cursor: unknown) => {
    const size = state.pageSize ?? state.tools;
    const start = typeof cursor === 'string' ? Number(cursor) : 0;
    const end = Math.min(start + size, state.tools);
    const next = end < state.tools ? String(end) : state.endless ? '0' : undefined;
    return { tools: toolList(start, end), ...(next === undefined ? {} : { nextCursor: next }) };
  };

  const toolList = (start = 0, end = state.tools) =>
    Array.from({ length: end - start }, (_, n) => n + start).map((i) => ({
      name: toolName(i),
      description: describe(i),
      inputSchema: {
        type: 'object',
        properties: {
          q: { type: 'string', ...(state.pattern ? { pattern: state.pattern } : {}) },
          ...(state.oversizedListing && i === 1
            ? { mode: { type: 'string', enum: Array.from({ length: 10_000 }, (_, n) => `mode_${n}`) } }
            : {}),
          ...Object.fromEntries(
            Array.from({ length: state.inputProperties }, (_, n) => [`p${n}`, { type: 'string' }]),
          ),
        },
      },
      ...(state.outputSchema ? { outputSchema: state.outputSchema } : {}),
    }));

  const call = (req: Request, res: ServerResponse) => {
    state.calls++;
    const ok = {
      content: [{ type: 'text', text: 'ok' }],
      ...(state.structuredContent ? { structuredContent: state.structuredContent } : {}),
    };
    switch (state.mode) {
      case 'ok':
        return answer(res, req.id, ok);
      case 'wrong-id':
        return answer(res, typeof req.id === 'number' ? req.id + 1000 : `${req.id}-other`, ok);
      case 'oversized':
        return answer(res, req.id, { content: [{ type: 'text', text: 'x'.repeat(5 * 1024 * 1024) }] });
      case 'late':
        if (legacy) res.writeHead(202).end('Accepted');
        setTimeout(() => answer(res, req.id, ok), LATE_MS);
        return;
      case 'string-id':
        return answer(res, String(req.id), ok);
      case 'deep': {
        let nested: unknown = 'ok';
        for (let i = 0; i < 1000; i++) nested = [nested];
        return answer(res, req.id, { ...ok, structuredContent: { nested } });
      }
      case 'rpc-error':
        return answer(res, req.id, undefined, undefined, {
          code: state.rpcErrorCode,
          message: 'City not found',
        });
      case 'refused':
        void refuse(res);
        return;
      case 'stray':
        // Only the older transport can answer twice: its answers share the event stream.
        answer(res, typeof req.id === 'number' ? req.id + 1000 : `${req.id}-other`, ok);
        setTimeout(() => answer(res, req.id, ok), LATE_MS);
        return;
      case 'hang':
        if (legacy) return void res.writeHead(202).end('Accepted');
        // Headers of an event stream, then nothing: the answer never comes and the stream stays open.
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.flushHeaders();
        hanging.add(res);
        res.on('close', () => hanging.delete(res));
        return;
    }
  };

  const refuse = async (res: ServerResponse) => {
    res.writeHead(500, { 'content-type': 'text/plain' });
    const piece = 'x'.repeat(64 * 1024);
    res.once('close', () => {
      if (!res.writableFinished) state.refusal.closedByClient = true;
    });
    while (state.refusal.written < 64 * 1024 * 1024 && !res.destroyed) {
      if (!res.write(piece)) {
        await new Promise((resolve) => {
          res.once('drain', resolve);
          res.once('close', resolve);
        });
      }
      state.refusal.written += piece.length;
    }
    res.end();
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (req.method === 'GET') {
      state.eventStreams++;
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
      if (legacy) res.write('event: endpoint\ndata: /messages\n\n');
      streams.add(res);
      res.on('close', () => streams.delete(res));
      return;
    }
    // The older transport has no POST at its URL: the client falls back to it after this 4xx.
    if (legacy && req.method === 'POST' && req.url !== '/messages') return void res.writeHead(405).end();
    if (req.method === 'DELETE') {
      const session = req.headers['mcp-session-id'];
      state.deletes.push(Array.isArray(session) ? session.join(',') : session);
      return void res.writeHead(200).end();
    }
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const message = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Request;
    if (message.id === undefined) return void res.writeHead(202).end();
    switch (message.method) {
      case 'initialize':
        return initialize(message, res);
      case 'tools/list':
        state.listings++;
        if (state.pageDelayMs) await new Promise((resolve) => setTimeout(resolve, state.pageDelayMs));
        if (res.destroyed) return;
        if (state.listErrorCode !== undefined)
          return answer(res, message.id, undefined, undefined, {
            code: state.listErrorCode,
            message: 'Listing is broken',
          });
        return sendOrHold('tools/list', res, () => answer(res, message.id, toolPage(message.params?.cursor)));
      case 'tools/call':
        return call(message, res);
      default:
        return answer(res, message.id, {});
    }
  };

  const http = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  http.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  const { port } = http.address() as AddressInfo;

  const state: HostileMcpServer = {
    url: `http://127.0.0.1:${port}/${legacy ? 'sse' : 'mcp'}`,
    tools: 3,
    mode: 'ok',
    rpcErrorCode: -32000,
    listErrorCode: undefined,
    pattern: undefined,
    oversizedListing: false,
    pageSize: undefined,
    endless: false,
    pageDelayMs: 0,
    descriptionChars: 0,
    inputProperties: 0,
    descriptionSuffix: '',
    outputSchema: undefined,
    structuredContent: undefined,
    longNames: false,
    listings: 0,
    calls: 0,
    initializations: 0,
    holding: undefined,
    release() {
      for (const release of [...held]) release();
    },
    deletes: [],
    openSockets: () => sockets.size,
    async storm(ms) {
      const event = `event: message\ndata: ${JSON.stringify({ jsonrpc: '2.0', method: 'notifications/tools/list_changed' })}\n\n`;
      const until = Date.now() + ms;
      while (Date.now() < until) {
        for (const stream of streams) {
          if (!stream.write(event)) await new Promise((resolve) => stream.once('drain', resolve));
        }
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    },
    eventStreams: 0,
    refusal: { written: 0, closedByClient: false },
    async endlessEvent(bytes) {
      const [stream] = streams;
      if (!stream) throw new Error('no event stream is open');
      const piece = 'x'.repeat(64 * 1024);
      let written = 0;
      let closedByClient = false;
      stream.once('close', () => {
        closedByClient = true;
      });
      stream.write('event: message\ndata: ');
      while (written < bytes && !closedByClient) {
        if (!stream.write(piece)) {
          await new Promise((resolve) => {
            stream.once('drain', resolve);
            stream.once('close', resolve);
          });
        }
        written += piece.length;
      }
      return { written, closedByClient };
    },
    async close() {
      for (const res of [...streams, ...hanging]) res.destroy();
      const closed = new Promise<void>((resolve) => http.close(() => resolve()));
      http.closeAllConnections();
      await closed;
    },
  };
  return state;
}
