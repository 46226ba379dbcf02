/**
 * Chaos: a hostile LLM server and hostile clients against a real `earpiece proxy` process (the built CLI),
 * replaying the attacks that once broke it. After each: a normal Unmute turn still keeps the stream
 * contract (one id, the role first, content, one finish_reason, [DONE], never an `error` event) and the
 * user hears the answer; the process's resident memory stays bounded; every client connection is closed.
 */
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, fetch } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { chatBody, requestFlood, slowBodies } from '../../bench/floods.js';
import { drainOrClose } from '../../src/proxy/sinks.js';
import { toolsetDoc } from '../support/proxy.js';
import { startProxyProcess } from '../support/proxy-process.js';

/** Generous: idle is under 100 MB; the attacks reached 866 MB and more. */
const RSS_LIMIT_MB = 512;
const SECRET_KEY = 'sk-server-side-chaos-key';
/** No kept-alive connections: after each attack, every client connection the proxy holds is a leak. */
const dispatcher = new Agent({ pipelining: 0 });

// ---- the hostile LLM server: what it does depends on the last user message ("scenario:NAME") ----

const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-up', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;

function sseHead(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
}

/** How much of a flood the hostile server wrote before the proxy hung up, and whether it got to the end. */
interface Sent {
  bytes: number;
  complete: boolean;
}

/** The last flood's tally: a capped read shows as a response cut off far short of its end. */
let sent: Sent = { bytes: 0, complete: false };

function tally(res: ServerResponse): Sent {
  const tallied: Sent = { bytes: 0, complete: false };
  res.once('finish', () => {
    tallied.complete = true;
  });
  sent = tallied;
  return tallied;
}

/** Writes `text` unless the proxy has hung up; waits while its socket is full. False once it has gone. */
async function send(res: ServerResponse, text: string, tallied: Sent): Promise<boolean> {
  if (res.destroyed) return false;
  tallied.bytes += text.length;
  if (!res.write(text)) await drainOrClose(res);
  return !res.destroyed;
}

/** Writes `events` with back-pressure, then the finish and [DONE]. */
async function streamEvents(res: ServerResponse, events: Iterable<string>): Promise<void> {
  const tallied = tally(res);
  sseHead(res);
  let batch = '';
  for (const event of events) {
    batch += event;
    if (batch.length < 256 * 1024) continue;
    if (!(await send(res, batch, tallied))) return;
    batch = '';
  }
  res.end(`${batch}${chunk({}, 'stop')}data: [DONE]\n\n`);
}

/** A server that ignores `stream: true` and sends one JSON completion of 300 MB, 1 MiB at a time. */
async function hugeCompletion(res: ServerResponse): Promise<void> {
  const tallied = tally(res);
  res.writeHead(200, { 'content-type': 'application/json' });
  const head =
    '{"id":"chatcmpl-up","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"';
  if (!(await send(res, head, tallied))) return;
  const piece = 'y'.repeat(1024 * 1024);
  for (let i = 0; i < 300; i++) if (!(await send(res, piece, tallied))) return;
  res.end('"}}]}');
}

function* repeat(event: string, times: number): Iterable<string> {
  for (let i = 0; i < times; i++) yield event;
}

const upstreamPaths: string[] = [];

async function hostile(req: IncomingMessage, res: ServerResponse): Promise<void> {
  upstreamPaths.push(req.url ?? '');
  const parts: Buffer[] = [];
  for await (const part of req) parts.push(part as Buffer);
  if (!req.url?.endsWith('/chat/completions')) {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"object":"list","data":[]}');
    return;
  }
  const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as {
    messages: { role: string; content?: unknown }[];
  };
  const last = body.messages.filter((m) => m.role === 'user').at(-1);
  const scenario = /scenario:([\w-]+)/.exec(String(last?.content ?? ''))?.[1] ?? 'hello';
  const afterTools = body.messages.some((m) => m.role === 'tool');
  switch (scenario) {
    case 'whitespace':
      // 150,000 whitespace deltas before the first word.
      return streamEvents(res, [
        chunk({ role: 'assistant', content: '' }),
        ...repeat(chunk({ content: ' ' }), 75_000),
        ...repeat(chunk({ content: '\n' }), 75_000),
        chunk({ content: 'Hello after the space.' }),
      ]);
    case 'markup':
      if (afterTools) return streamEvents(res, [chunk({ content: 'Counted them.' })]);
      // 500 leaked calls in one message.
      return streamEvents(res, [
        chunk({
          content: '<tool_call>{"name": "count_me", "arguments": {}}</tool_call>\n'.repeat(500),
        }),
      ]);
    case 'echo':
      res.writeHead(401, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          error: { message: `bad key; got header authorization: ${req.headers.authorization}` },
        }),
      );
      return;
    case 'big-message':
      // 64 MB of words in 64 KB deltas.
      return streamEvents(res, repeat(chunk({ content: 'word '.repeat(13_107) }), 1024));
    case 'huge-completion':
      return hugeCompletion(res);
    case 'huge-arguments':
      // 128 MB of arguments to one call, in 64 KB deltas.
      return streamEvents(res, [
        chunk({
          role: 'assistant',
          tool_calls: [
            {
              index: 0,
              id: 'call-1',
              type: 'function',
              function: { name: 'count_me', arguments: '{"a": "' },
            },
          ],
        }),
        ...repeat(
          chunk({ tool_calls: [{ index: 0, function: { arguments: 'x'.repeat(64 * 1024) } }] }),
          2048,
        ),
      ]);
    default:
      return streamEvents(res, [
        chunk({ role: 'assistant', content: '' }),
        chunk({ content: 'Hello there.' }),
      ]);
  }
}

// ---- the proxy process ----

let upstream: Server;
let tools: Server;
let toolHits = 0;
let proxy: ChildProcess;
let proxyUrl: string;
let dir: string;
let logs = '';

async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  upstream = createServer((req, res) => {
    hostile(req, res).catch(() => res.destroy());
  });
  const upstreamUrl = await listen(upstream);
  tools = createServer((_req, res) => {
    toolHits++;
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
  });
  const toolsUrl = await listen(tools);
  dir = await mkdtemp(join(tmpdir(), 'earpiece-chaos-'));
  const toolset = join(dir, 'toolset.yaml');
  await writeFile(
    toolset,
    stringify(
      toolsetDoc(
        {
          upstream: { apiKey: { valueFrom: { env: 'CHAOS_UPSTREAM_KEY' } } },
          limits: { turnTimeout: '60s', maxParallelCalls: 8 },
          tools: [{ name: 'count_me', description: 'Counts.', http: { url: `${toolsUrl}/count` } }],
        },
        'chaos',
      ),
    ),
  );
  const started = await startProxyProcess(
    toolset,
    upstreamUrl,
    { EARPIECE_REQUEST_TIMEOUT: '3s', CHAOS_UPSTREAM_KEY: SECRET_KEY },
    (text) => {
      logs += text;
    },
  );
  proxy = started.child;
  proxyUrl = started.url;
});

afterAll(async () => {
  if (proxy && proxy.exitCode === null) {
    proxy.kill('SIGKILL');
    await once(proxy, 'exit');
  }
  await Promise.all([upstream, tools].map((s) => s && new Promise((r) => s.close(r))));
  if (dir) await rm(dir, { recursive: true, force: true });
});

// ---- what is checked after each attack ----

function rssMb(): number {
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${proxy.pid}/status`, 'utf8'))?.[1];
  return Number(kb) / 1024;
}

/** The proxy's TCP connections to its chat port (accepted clients), from /proc. */
function clientSockets(): number {
  const port = Number(new URL(proxyUrl).port);
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${proxy.pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${proxy.pid}/fd/${fd}`);
      const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
      if (inode) inodes.add(inode);
    } catch {}
  }
  let open = 0;
  for (const table of ['tcp', 'tcp6']) {
    const lines = readFileSync(`/proc/${proxy.pid}/net/${table}`, 'utf8').split('\n').slice(1);
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || !inodes.has(f[9] as string)) continue;
      const local = Number.parseInt((f[1] as string).split(':')[1] as string, 16);
      // 0A is LISTEN: the listening socket itself is not a client.
      if (local === port && f[3] !== '0A') open++;
    }
  }
  return open;
}

/** Runs `attack` while sampling the proxy's resident memory: the peak, not only what is left after. */
async function peakRssDuring<T>(attack: () => Promise<T>): Promise<{ result: T; peakMb: number }> {
  let peakMb = rssMb();
  const timer = setInterval(() => {
    peakMb = Math.max(peakMb, rssMb());
  }, 20);
  try {
    const result = await attack();
    return { result, peakMb: Math.max(peakMb, rssMb()) };
  } finally {
    clearInterval(timer);
  }
}

/** One non-streaming request, as an SDK other than Unmute's would send it. */
async function completion(content: string): Promise<{ status: number; retry: string | null; body: unknown }> {
  const res = await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content }] }),
    signal: AbortSignal.timeout(90_000),
    dispatcher,
  });
  return { status: res.status, retry: res.headers.get('x-should-retry'), body: await res.json() };
}

interface Turn {
  status: number;
  text: string;
  events: string[];
}

/** One turn as Unmute sends it, the SSE read raw so every line can be checked. */
async function turn(content: string, headers: Record<string, string> = {}): Promise<Turn> {
  const res = await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({
      model: 'm',
      stream: true,
      temperature: 0.3,
      messages: [{ role: 'user', content }],
    }),
    signal: AbortSignal.timeout(90_000),
    dispatcher,
  });
  const raw = await res.text();
  const events = raw.split('\n\n').filter((e) => e.trim() !== '');
  let text = '';
  for (const e of events) {
    if (e.startsWith('data: {'))
      text +=
        (JSON.parse(e.slice(6)) as { choices: { delta: { content?: string } }[] }).choices[0]?.delta
          .content ?? '';
  }
  return { status: res.status, text, events };
}

/** The stream contract Unmute relies on. */
function expectWellFormed(t: Turn): void {
  expect(t.status).toBe(200);
  expect(t.events.at(-1)).toBe('data: [DONE]');
  const chunks = t.events.slice(0, -1).map((e) => {
    expect(e.startsWith('data: {'), e.slice(0, 80)).toBe(true);
    return JSON.parse(e.slice(6)) as {
      id: string;
      object: string;
      error?: unknown;
      choices: { delta: { role?: string }; finish_reason: string | null }[];
    };
  });
  expect(chunks.every((c) => c.error === undefined && c.object === 'chat.completion.chunk')).toBe(true);
  expect(new Set(chunks.map((c) => c.id)).size).toBe(1);
  expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
  expect(chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0]?.finish_reason)).toEqual([
    'stop',
  ]);
  expect(t.text.trim()).not.toBe('');
}

async function expectWell(): Promise<void> {
  const t = await turn('scenario:hello');
  expectWellFormed(t);
  expect(t.text).toBe('Hello there.');
  expect(rssMb()).toBeLessThan(RSS_LIMIT_MB);
  const until = Date.now() + 15_000;
  while (clientSockets() > 0) {
    if (Date.now() > until) throw new Error(`${clientSockets()} client connections still open`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// ---- the attacks ----

describe('a hostile LLM server', () => {
  it('150,000 whitespace deltas: the turn is answered, and other clients are served meanwhile', async () => {
    const slow = turn('scenario:whitespace');
    const others = await Promise.all(Array.from({ length: 5 }, () => turn('scenario:hello')));
    for (const t of others) expectWellFormed(t);
    const t = await slow;
    expectWellFormed(t);
    expect(t.text.trim()).toBe('Hello after the space.');
    await expectWell();
  });

  it('500 leaked <tool_call> blocks: at most 128 tool requests, and the answer is heard', async () => {
    toolHits = 0;
    const t = await turn('scenario:markup');
    expectWellFormed(t);
    expect(t.text).toContain('Counted them.');
    expect(toolHits).toBeGreaterThan(0);
    expect(toolHits).toBeLessThanOrEqual(128);
    await expectWell();
  });

  it('an error that echoes the Authorization header: spoken as the error message, the key nowhere', async () => {
    const t = await turn('scenario:echo', { authorization: 'Bearer client-token-chaos' });
    expectWellFormed(t);
    const res = await fetch(`${proxyUrl}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'scenario:echo' }] }),
      signal: AbortSignal.timeout(10_000),
      dispatcher,
    });
    const body = await res.text();
    expect(res.status).toBe(502);
    expect(body).not.toContain(SECRET_KEY);
    await expectWell();
    expect(logs).toContain('ERP_UPSTREAM_STATUS');
    expect(logs).not.toContain(SECRET_KEY);
    expect(logs).not.toContain('client-token-chaos');
  });

  it('a 64 MB message: streamed through, memory bounded', async () => {
    const { result: t, peakMb } = await peakRssDuring(() => turn('scenario:big-message'));
    expectWellFormed(t);
    // Every word, in the upstream's 1,024 pieces (a proxy that held the message whole would send it in one).
    expect(t.text.length).toBe(1024 * 13_107 * 5);
    expect(t.events.length).toBeGreaterThan(1024);
    expect(peakMb).toBeLessThan(RSS_LIMIT_MB);
    await expectWell();
  });

  it('a 64 MB message to a non-streaming client: a clear 502 instead of the answer held whole', async () => {
    const { result, peakMb } = await peakRssDuring(() => completion('scenario:big-message'));
    expect(result.status).toBe(502);
    expect(result.retry).toBe('false');
    expect(result.body).toMatchObject({ error: { code: 'ERP_UPSTREAM_TOO_LARGE' } });
    expect(peakMb).toBeLessThan(RSS_LIMIT_MB);
    await expectWell();
  });

  it('a 300 MB non-streamed completion: read no further than the cap, the error heard, memory bounded', async () => {
    const { result: t, peakMb } = await peakRssDuring(() => turn('scenario:huge-completion'));
    expectWellFormed(t);
    expect(t.text).toBe("Sorry, I couldn't do that right now. ");
    expect(sent.complete).toBe(false);
    expect(sent.bytes).toBeLessThan(32 * 1024 * 1024);
    const { result, peakMb: jsonPeakMb } = await peakRssDuring(() => completion('scenario:huge-completion'));
    expect(result.status).toBe(502);
    expect(result.body).toMatchObject({ error: { code: 'ERP_UPSTREAM_TOO_LARGE' } });
    expect(sent.complete).toBe(false);
    expect(Math.max(peakMb, jsonPeakMb)).toBeLessThan(RSS_LIMIT_MB);
    await expectWell();
  });

  it('128 MB of tool-call arguments over 2,048 events: read no further than the cap, no tool run', async () => {
    toolHits = 0;
    const { result: t, peakMb } = await peakRssDuring(() => turn('scenario:huge-arguments'));
    expectWellFormed(t);
    // The filler went out when the call's name arrived, before its arguments ran away.
    expect(t.text).toBe("One moment. Sorry, I couldn't do that right now. ");
    expect(sent.complete).toBe(false);
    expect(sent.bytes).toBeLessThan(32 * 1024 * 1024);
    const { result, peakMb: jsonPeakMb } = await peakRssDuring(() => completion('scenario:huge-arguments'));
    expect(result.status).toBe(502);
    expect(result.body).toMatchObject({ error: { code: 'ERP_UPSTREAM_TOO_LARGE' } });
    expect(sent.complete).toBe(false);
    expect(toolHits).toBe(0);
    expect(Math.max(peakMb, jsonPeakMb)).toBeLessThan(RSS_LIMIT_MB);
    await expectWell();
  });
});

describe('hostile clients', () => {
  it('fields that crash a naive reader (a model whose String() throws, null messages) are 400s', async () => {
    const bodies = [
      { model: { toString: 1 }, messages: [{ role: 'user', content: 'x' }], stream: true },
      { model: 'm', messages: [null], stream: true },
      { model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: { toString: 1 } }] }] },
      { model: 'm', messages: [{ role: 'user', content: 'x' }], tools: [null], stream: true },
    ];
    for (const body of bodies) {
      const res = await fetch(`${proxyUrl}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
        dispatcher,
      });
      expect(res.status).toBe(400);
      expect(await res.json()).toMatchObject({ error: { code: 'ERP_BAD_REQUEST' } });
    }
    await expectWell();
  });

  it('400 slow bodies of 512 KB: each dropped (408, or reset while it still sends) or refused (503), memory bounded', async () => {
    const answers = await slowBodies(proxyUrl, { clients: 400, bytes: 512 * 1024, forMs: 30_000 });
    // Refused ones are answered 503 and closed at once; one still sending may see the close (EPIPE) first.
    expect(answers['408'], JSON.stringify(answers)).toBeGreaterThan(0);
    expect((answers['503'] ?? 0) + (answers.closed ?? 0), JSON.stringify(answers)).toBeGreaterThan(0);
    expect(
      Object.keys(answers).every((s) => ['408', '503', 'closed'].includes(s)),
      JSON.stringify(answers),
    ).toBe(true);
    // Every one ended well before the 30 s the clients would have gone on.
    expect(Object.values(answers).reduce((a, b) => a + b, 0)).toBe(400);
    await expectWell();
  });

  it('a flood of 8 MB bodies: answered, refused or timed out, memory bounded', async () => {
    const answers = await requestFlood(proxyUrl, {
      total: 60,
      concurrency: 30,
      bytes: 8 * 1024 * 1024,
      text: 'scenario:hello',
    });
    expect(
      Object.keys(answers).every((s) => ['200', '503', '408', 'closed'].includes(s)),
      JSON.stringify(answers),
    ).toBe(true);
    expect(answers['200']).toBeGreaterThan(0);
    await expectWell();
  });

  it('a flood of non-streaming turns: every one answered', async () => {
    const answers = await requestFlood(proxyUrl, {
      total: 500,
      concurrency: 100,
      bytes: 2048,
      text: 'scenario:hello',
    });
    expect(answers).toEqual({ '200': 500 });
    await expectWell();
  });

  it('pass-through paths that leave /v1/ never reach the LLM server with its key', async () => {
    upstreamPaths.length = 0;
    for (const target of ['/v1/../admin', '/v1/%2e%2e/admin', '/v1/..%2fadmin']) {
      const { hostname, port } = new URL(proxyUrl);
      const answer = await new Promise<string>((resolve, reject) => {
        const socket = connect(Number(port), hostname);
        let text = '';
        socket.on('data', (d) => {
          text += d;
        });
        socket.on('close', () => resolve(text));
        socket.on('error', reject);
        socket.write(`GET ${target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n`);
      });
      expect(answer).toMatch(/^HTTP\/1\.1 400/);
    }
    expect(upstreamPaths).toEqual([]);
    await expectWell();
  });

  it('a client that asks to close: the stream is well-formed and the connection closed', async () => {
    const t = await turn('scenario:hello', { connection: 'close' });
    expectWellFormed(t);
    await expectWell();
  });
});

// The bench's floods build bodies this way too; a sanity check that they are what they say.
it('flood bodies are valid chat requests of the size asked', () => {
  const body = chatBody(4096, { text: 'scenario:hello' });
  expect(Buffer.byteLength(body)).toBe(4096);
  expect(JSON.parse(body)).toMatchObject({ model: 'flood', messages: [{ role: 'user' }] });
});
