/**
 * Real MCP servers for tests. startMcpServer: written with @modelcontextprotocol/sdk and served on
 * 127.0.0.1 over Streamable HTTP (`/mcp`) or the older HTTP+SSE transport (`/sse` + `/messages`); it
 * records what it sees (calls, cancellations, Authorization headers, sessions made and DELETEs) and can add
 * tools, forget its sessions, cut a request's connection, stop and start again on the same port.
 * startEverythingServer: the published reference server.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

/** A 1x1 PNG. */
const PIXEL =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';

export interface McpTestServer {
  url: string;
  port: number;
  /** Tool calls in arrival order. */
  calls: { name: string; args: Record<string, unknown> }[];
  /** `slow` calls (by their `id`) that started, those the client cancelled, and those that ran to their end. */
  started: string[];
  cancelled: string[];
  finished: string[];
  /** Authorization header of every HTTP request (undefined when absent). */
  authorizations: (string | undefined)[];
  /** Ids of the Streamable HTTP sessions made, in order. */
  sessionIds: string[];
  /** The Mcp-Session-Id header of every DELETE, in order, whether the session was known or not. */
  deletes: (string | undefined)[];
  /**
   * Cuts the connection of the next Streamable HTTP request for `method` before it is handled, as a
   * network fault would: the client gets no answer, and the session lives on.
   */
  breakNext(method: 'tools/list' | 'tools/call'): void;
  /** Registers a tool that answers `text` on every session, now and later (sends list_changed). */
  addTool(name: string, text: string): void;
  /**
   * Forgets every session (404 to their ids from now on). By default it also ends their streams, as a
   * server restarting would; `quietly` leaves the streams open, so only the next request finds out.
   */
  forgetSessions(quietly?: boolean): Promise<void>;
  /** Stops listening and drops every connection. */
  stop(): Promise<void>;
  /** Listens again on the same port, with no sessions. */
  start(): Promise<void>;
  sessionCount(): number;
}

type Transport = StreamableHTTPServerTransport | SSEServerTransport;

export async function startMcpServer(
  options: {
    transport?: 'streamable' | 'sse';
    port?: number;
    /** What a request for a session the server does not know gets: 404 (the spec) or 400 (some servers). */
    unknownSessionStatus?: 404 | 400;
    /** DELETEs are recorded but never answered, as by a server slow to end a session. */
    holdDeletes?: boolean;
  } = {},
): Promise<McpTestServer> {
  const kind = options.transport ?? 'streamable';
  const extraTools = new Map<string, string>();
  const sessions = new Map<string, { transport: Transport; server: McpServer }>();
  const calls: McpTestServer['calls'] = [];
  const started: string[] = [];
  const cancelled: string[] = [];
  const finished: string[] = [];
  const authorizations: (string | undefined)[] = [];
  const sessionIds: string[] = [];
  const deletes: (string | undefined)[] = [];
  const breaking = new Set<string>();

  const buildServer = (): McpServer => {
    const server = new McpServer({ name: 'earpiece-test', version: '1.0.0' });
    const record = (name: string, args: Record<string, unknown>) => calls.push({ name, args });
    server.registerTool(
      'echo',
      { description: 'Echoes the text back.', inputSchema: { text: z.string().describe('What to echo') } },
      async (args) => {
        record('echo', args);
        return { content: [{ type: 'text', text: `echo: ${args.text}` }] };
      },
    );
    server.registerTool(
      'weather',
      {
        description: 'Current weather in a city.',
        inputSchema: { city: z.string() },
        outputSchema: { city: z.string(), temperature: z.number() },
      },
      async (args) => {
        record('weather', args);
        const structuredContent = { city: args.city, temperature: 21 };
        return { content: [{ type: 'text', text: JSON.stringify(structuredContent) }], structuredContent };
      },
    );
    server.registerTool(
      'slow',
      {
        description: 'Takes its time.',
        inputSchema: { id: z.string(), seconds: z.number() },
      },
      async (args, extra) => {
        record('slow', args);
        started.push(args.id);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            finished.push(args.id);
            resolve();
          }, args.seconds * 1000);
          extra.signal.addEventListener('abort', () => {
            clearTimeout(timer);
            cancelled.push(args.id);
            resolve();
          });
        });
        return { content: [{ type: 'text', text: `slept ${args.seconds}s` }] };
      },
    );
    server.registerTool('broken', { description: 'Always fails.' }, async () => {
      record('broken', {});
      return { isError: true, content: [{ type: 'text', text: 'the light is unreachable' }] };
    });
    server.registerTool('huge', { description: 'Answers 5 MiB of text.' }, async () => {
      record('huge', {});
      return { content: [{ type: 'text', text: 'x'.repeat(5 * 1024 * 1024) }] };
    });
    server.registerTool('snapshot', { description: 'A camera picture.' }, async () => {
      record('snapshot', {});
      return {
        content: [
          { type: 'text', text: 'Front door camera:' },
          { type: 'image', data: PIXEL, mimeType: 'image/png' },
          { type: 'text', text: 'Nobody is there.' },
        ],
      };
    });
    for (const [name, text] of extraTools) addTo(server, name, text);
    return server;
  };

  const addTo = (server: McpServer, name: string, text: string) => {
    server.registerTool(name, { description: `Says ${text}.` }, async () => {
      calls.push({ name, args: {} });
      return { content: [{ type: 'text', text }] };
    });
  };

  const readBody = async (req: IncomingMessage): Promise<unknown> => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    return text ? JSON.parse(text) : undefined;
  };

  const notFound = (res: ServerResponse, status = 404) =>
    res
      .writeHead(status, { 'content-type': 'application/json' })
      .end(
        JSON.stringify({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null }),
      );

  const streamable = async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    if (url.pathname !== '/mcp') return notFound(res);
    const sessionId = req.headers['mcp-session-id'];
    if (req.method === 'DELETE') {
      deletes.push(typeof sessionId === 'string' ? sessionId : undefined);
      if (options.holdDeletes) return;
    }
    const body = req.method === 'POST' ? await readBody(req) : undefined;
    if (breaking.delete((body as { method?: string } | undefined)?.method ?? '')) {
      req.socket.destroy();
      return;
    }
    if (typeof sessionId === 'string') {
      const known = sessions.get(sessionId);
      if (!known) return notFound(res, options.unknownSessionStatus);
      return (known.transport as StreamableHTTPServerTransport).handleRequest(req, res, body);
    }
    if (req.method !== 'POST' || !isInitializeRequest(body)) return notFound(res, 400);
    const server = buildServer();
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => {
        sessionIds.push(id);
        sessions.set(id, { transport, server });
      },
      onsessionclosed: (id) => {
        sessions.delete(id);
      },
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
  };

  const legacy = async (req: IncomingMessage, res: ServerResponse, url: URL) => {
    if (url.pathname === '/sse' && req.method === 'GET') {
      const transport = new SSEServerTransport('/messages', res);
      const server = buildServer();
      sessions.set(transport.sessionId, { transport, server });
      res.on('close', () => sessions.delete(transport.sessionId));
      await server.connect(transport);
      return;
    }
    if (url.pathname === '/messages' && req.method === 'POST') {
      const known = sessions.get(url.searchParams.get('sessionId') ?? '');
      if (!known) return notFound(res);
      return (known.transport as SSEServerTransport).handlePostMessage(req, res, await readBody(req));
    }
    // What an old server says to a Streamable HTTP POST: the client then tries the SSE stream.
    res.writeHead(405, { allow: 'GET' }).end();
  };

  let http: Server | undefined;
  let port = options.port ?? 0;

  const listen = async () => {
    const server = createServer((req, res) => {
      authorizations.push(req.headers.authorization);
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      const handle = kind === 'streamable' ? streamable : legacy;
      handle(req, res, url).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500).end(String(err));
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    port = (server.address() as AddressInfo).port;
    http = server;
  };

  const dropSessions = async (quietly = false) => {
    const all = [...sessions.values()];
    sessions.clear();
    if (quietly) return;
    await Promise.all(all.map((s) => s.server.close().catch(() => undefined)));
  };

  await listen();
  const path = kind === 'streamable' ? '/mcp' : '/sse';
  return {
    url: `http://127.0.0.1:${port}${path}`,
    port,
    calls,
    started,
    cancelled,
    finished,
    authorizations,
    sessionIds,
    deletes,
    breakNext(method) {
      breaking.add(method);
    },
    addTool(name, text) {
      extraTools.set(name, text);
      for (const { server } of sessions.values()) addTo(server, name, text);
    },
    forgetSessions: (quietly) => dropSessions(quietly),
    async stop() {
      const server = http;
      http = undefined;
      if (!server) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await dropSessions();
      await closed;
    },
    start: listen,
    sessionCount: () => sessions.size,
  };
}

export interface EverythingServer {
  url: string;
  stop(): Promise<void>;
}

/**
 * The published reference server `@modelcontextprotocol/server-everything`, as a child process in its
 * Streamable HTTP mode. It takes its port from PORT (there is no host option), so a free loopback port
 * is picked first.
 */
export async function startEverythingServer(): Promise<EverythingServer> {
  const entry = createRequire(import.meta.url).resolve(
    '@modelcontextprotocol/server-everything/dist/index.js',
  );
  const probe = createNetServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  const child = spawn(process.execPath, [entry, 'streamableHttp'], {
    env: { ...process.env, PORT: String(port) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
      if (stderr.includes('listening on port')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`server-everything exited (${code}): ${stderr}`)));
  });
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    },
  };
}
