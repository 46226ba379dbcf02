/**
 * The benchmark's floor for any Node.js tool-calling proxy: the least such a proxy must do, and nothing
 * more. It reads the client's JSON body, adds tool definitions, forwards it with undici (earpiece's
 * client), and copies the response bytes to the client as they come: no SSE decoding, no tool loop, no
 * framework. Run by bench/run.ts as its own process, with earpiece's Node flags; it prints its URL.
 *
 * Usage: node dist/bench/node-hop.js UPSTREAM_URL
 */
import { once } from 'node:events';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';

const TOOLS = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'Current temperature and wind at a place.',
      parameters: { type: 'object', properties: { place: { type: 'string' } }, required: ['place'] },
    },
  },
];

function forward(pool: Pool, body: string, res: ServerResponse): void {
  const request = JSON.parse(body) as Record<string, unknown>;
  request.tools = TOOLS;
  request.stream_options = { include_usage: true };
  let begun = false;
  const begin = (status = 200) => {
    if (begun) return;
    begun = true;
    res.writeHead(status, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
    });
  };
  pool.dispatch(
    {
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
      body: JSON.stringify(request),
    },
    {
      onRequestStart() {},
      onRequestSent: () => begin(),
      onResponseStart: (_c, status) => begin(status),
      onResponseData: (_c, chunk) => void res.write(chunk),
      onResponseEnd: () => res.end(),
      onResponseError: (_c, err) => res.destroy(err),
    },
  );
}

async function main(upstreamUrl: string | undefined): Promise<void> {
  if (!upstreamUrl) throw new Error('usage: node-hop.js UPSTREAM_URL');
  const pool = new Pool(upstreamUrl, { connections: 2048, keepAliveTimeout: 30_000 });
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (text: string) => {
      body += text;
    });
    req.on('end', () => {
      try {
        forward(pool, body, res);
      } catch (err) {
        res.writeHead(400).end((err as Error).message);
      }
    });
  });
  server.keepAliveTimeout = 120_000;
  server.listen({ host: '127.0.0.1', port: 0, backlog: 4096 });
  await once(server, 'listening');
  process.stdout.write(`http://127.0.0.1:${(server.address() as AddressInfo).port}\n`);
  process.once('SIGTERM', () => {
    server.closeAllConnections();
    server.close();
    void pool.close();
  });
}

await main(process.argv[2]);
