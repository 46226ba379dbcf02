/**
 * The benchmark's floor for any Node.js tool-calling proxy: the least such a proxy must do, and nothing
 * more. It reads the client's JSON body, adds tool definitions, forwards it with undici (earpiece's
 * client), and copies the response bytes to the client as they come: no SSE decoding, no tool loop, no
 * framework. Run by bench/run.ts as its own process, with earpiece's Node flags; it prints its URL.
 *
 * With `--decode` it is the decoding hop: the floor for a proxy that must read the model's text (to keep
 * calls and markup from the voice) before it can pass it on. Each response goes through earpiece's own
 * decoder (src/proxy/sse.ts, with its fast lane for text-only chunks) and its text is written by
 * earpiece's own SSE sink (src/proxy/sinks.ts) in the proxy's envelope; no tool loop, speakable filter,
 * deadline, metrics or framework.
 *
 * Usage: node dist/bench/node-hop.js UPSTREAM_URL [--decode]
 */
import { once } from 'node:events';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type Dispatcher, Pool } from 'undici';
import type { ChatChunk } from '../src/proxy/chunks.js';
import { completionId, type FinishReason, SseSink } from '../src/proxy/sinks.js';
import { ChunkDecoder } from '../src/proxy/sse.js';

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

/** The client's request, tools added, as the model server's POST. */
function modelRequest(request: Record<string, unknown>): Dispatcher.DispatchOptions {
  return {
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify(request),
  };
}

function forward(pool: Pool, body: string, res: ServerResponse, decode: boolean): void {
  const request = JSON.parse(body) as Record<string, unknown>;
  request.tools = TOOLS;
  request.stream_options = { include_usage: true };
  if (decode) {
    forwardDecoded(pool, request, res);
    return;
  }
  let begun = false;
  const begin = (status = 200) => {
    if (begun) return;
    begun = true;
    res.writeHead(status, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
    });
  };
  pool.dispatch(modelRequest(request), {
    onRequestStart() {},
    onRequestSent: () => begin(),
    onResponseStart: (_c, status) => begin(status),
    onResponseData: (_c, chunk) => void res.write(chunk),
    onResponseEnd: () => res.end(),
    onResponseError: (_c, err) => res.destroy(err),
  });
}

/** The decoding hop's answer: the model's text, decoded and written again in the proxy's own chunks. */
function forwardDecoded(pool: Pool, request: Record<string, unknown>, res: ServerResponse): void {
  const model = typeof request.model === 'string' ? request.model : 'unknown';
  const sink = new SseSink(
    res,
    { id: completionId(), model, created: Math.floor(Date.now() / 1000) },
    { includeUsage: false },
  );
  let finish: FinishReason = 'stop';
  const content = (text: string) => void sink.content(text);
  const decoder = new ChunkDecoder(
    (chunk: ChatChunk) => {
      const choice = chunk.choices?.[0];
      if (typeof choice?.delta?.content === 'string') content(choice.delta.content);
      if (choice?.finish_reason === 'length') finish = 'length';
    },
    { onContent: content },
  );
  pool.dispatch(modelRequest(request), {
    onRequestStart() {},
    onRequestSent: () => sink.begin(),
    onResponseStart: (controller, status) => {
      // A refusal carries no stream to decode: the client sees the hop fail, as with a broken stream.
      if (status >= 400) controller.abort(new Error(`upstream answered ${status}`));
    },
    onResponseData: (controller, chunk) => {
      try {
        if (decoder.feed(chunk)) sink.end(finish);
      } catch (err) {
        controller.abort(err as Error);
      }
    },
    onResponseEnd: () => {
      if (decoder.end()) sink.end(finish);
      else res.destroy(new Error('upstream ended the stream without [DONE]'));
    },
    onResponseError: (_c, err) => res.destroy(err),
  });
}

async function main(upstreamUrl: string | undefined, decode: boolean): Promise<void> {
  if (!upstreamUrl) throw new Error('usage: node-hop.js UPSTREAM_URL [--decode]');
  const pool = new Pool(upstreamUrl, { connections: 2048, keepAliveTimeout: 30_000 });
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (text: string) => {
      body += text;
    });
    req.on('end', () => {
      try {
        forward(pool, body, res, decode);
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

await main(process.argv[2], process.argv.includes('--decode'));
