import { once } from 'node:events';
import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import type { Logger } from '../../src/telemetry/log.js';
import { type ResolvedToolSet, resolveToolSet } from '../../src/toolset/defaults.js';
import { formatIssues, validateToolSet } from '../../src/toolset/validate.js';

/** A validated, resolved ToolSet with these tools and spec fields. */
export function toolset(
  tools: Record<string, unknown>[],
  spec: Record<string, unknown> = {},
): ResolvedToolSet {
  const result = validateToolSet({
    apiVersion: 'earpiece.dev/v1alpha1',
    kind: 'ToolSet',
    metadata: { name: 'test' },
    spec: { ...spec, tools },
  });
  if (!result.ok) throw new Error(formatIssues(result.issues));
  return resolveToolSet(result.toolset);
}

export interface TestServer {
  origin: string;
  /** Every request as the server saw it, in arrival order. */
  requests: {
    method: string;
    url: string;
    headers: IncomingMessage['headers'];
    body: string;
    /** The client's port: equal ports mean a reused connection. */
    remotePort: number | undefined;
  }[];
  close(): Promise<void>;
}

/** A real HTTP server on 127.0.0.1, port 0. The handler gets the request with its body already read. */
export async function startServer(
  handler: (req: IncomingMessage & { body: string }, res: ServerResponse) => void,
): Promise<TestServer> {
  const requests: TestServer['requests'] = [];
  const listener: RequestListener = async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    requests.push({
      method: req.method ?? '',
      url: req.url ?? '',
      headers: req.headers,
      body,
      remotePort: req.socket.remotePort,
    });
    handler(Object.assign(req, { body }), res);
  };
  const server = createServer(listener);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    requests,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

/** Resolves when the response is closed: `finished` tells a complete response from a dropped client. */
export function responseClosed(res: ServerResponse): Promise<{ finished: boolean }> {
  return new Promise((resolve) => res.once('close', () => resolve({ finished: res.writableFinished })));
}

/** Writes 16 KiB chunks until the client goes away, honouring back-pressure. */
export function sendForever(res: ServerResponse): void {
  const chunk = Buffer.alloc(16 * 1024, 'x');
  const pump = () => {
    while (!res.destroyed && res.write(chunk));
    if (!res.destroyed) res.once('drain', pump);
  };
  pump();
}

/** A promise with its resolve function, for holding a server response until a test lets it go. */
export function gate<T = void>(): { promise: Promise<T>; open: (value: T) => void } {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

export const silentLogger: Logger = pino({ level: 'silent' });

/** A logger whose JSON lines are kept for assertions. */
export function capturingLogger(level = 'info'): {
  logger: Logger;
  lines: () => { level: number; msg: string }[];
} {
  const out: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      out.push(String(chunk));
      callback();
    },
  });
  const logger = pino({ level }, stream);
  return { logger, lines: () => out.flatMap((l) => l.split('\n').filter(Boolean)).map((l) => JSON.parse(l)) };
}
