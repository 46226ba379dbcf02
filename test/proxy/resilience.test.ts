import { once } from 'node:events';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  errorReply,
  type RecordedRequest,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { startTestProxy, unmuteTurn, useScriptedProxy } from '../support/proxy.js';

const SYSTEM = { role: 'system' as const, content: 'Be brief.' };
const { setup, defer } = useScriptedProxy();

/** An HTTP tool server that never answers, recording when each request's socket closes. */
async function hangingToolServer() {
  const closed: Promise<void>[] = [];
  let arrived!: () => void;
  const first = new Promise<void>((r) => {
    arrived = r;
  });
  const server: Server = createServer((req) => {
    closed.push(once(req.socket, 'close').then(() => undefined));
    arrived();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  defer(async () => {
    server.closeAllConnections();
    server.close();
  });
  return { url, first, closed };
}

const slowTool = (url: string, extra: Record<string, unknown> = {}) => ({
  name: 'slow_lookup',
  description: 'Looks something up slowly',
  parameters: { type: 'object', properties: {} },
  timeout: '30s',
  http: { url: `${url}/slow` },
  ...extra,
});

/** The proxy, with no tools, in front of a hand-written model server; both closed after the test. */
async function proxyInFrontOf(model: Server) {
  model.listen(0, '127.0.0.1');
  await once(model, 'listening');
  defer(async () => {
    model.closeAllConnections();
    model.close();
  });
  const harness = await startTestProxy(
    { tools: [] },
    `http://127.0.0.1:${(model.address() as AddressInfo).port}`,
  );
  defer(() => harness.close());
  return harness;
}

describe('back-pressure', () => {
  it('slows the model server to the pace of a client that stops reading, and loses nothing when it reads again', async () => {
    // 64 MiB of answer in 64 KiB content chunks: far more than the loopback buffers between the three hold.
    const piece = `${'x'.repeat(64 * 1024 - 1)} `;
    const pieces = 1024;
    const progress = { written: 0, finished: false };
    const model = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const frame = `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: piece } }] })}\n\n`;
      const write = () => {
        while (progress.written < pieces) {
          progress.written++;
          if (!res.write(frame)) return void res.once('drain', write);
        }
        res.end(
          `data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`,
        );
        progress.finished = true;
      };
      write();
    });
    const harness = await proxyInFrontOf(model);

    const { stalled, received } = await new Promise<{ stalled: typeof progress; received: number }>(
      (resolve, reject) => {
        const req = request(`${harness.proxy.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
        });
        req.on('error', reject);
        req.on('response', (res) => {
          res.pause();
          setTimeout(() => {
            const stalled = { ...progress };
            let bytes = 0;
            res.on('data', (data: Buffer) => {
              bytes += data.length;
            });
            res.on('end', () => resolve({ stalled, received: bytes }));
            res.resume();
          }, 1000);
        });
        req.end(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Talk' }], stream: true }));
      },
    );
    // Stalled: the model server's writes waited on the proxy, which waited on this client.
    expect(stalled.finished).toBe(false);
    expect(stalled.written).toBeLessThan(pieces / 2);
    expect(progress.finished).toBe(true);
    expect(received).toBeGreaterThan(pieces * piece.length);
  });
});

describe('response head', () => {
  it('goes to the client once the model has the request, while the model is still silent', async () => {
    let answer: () => void = () => {};
    let heard: () => void = () => {};
    const asked = new Promise<void>((resolve) => {
      heard = resolve;
    });
    const model = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        // A long prefill: nothing comes back until the test says so.
        answer = () =>
          res.end(
            `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'Hi. ' } }] })}\n\n` +
              `data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`,
          );
        heard();
      });
    });
    const harness = await proxyInFrontOf(model);

    const body = await new Promise<string>((resolve, reject) => {
      const req = request(`${harness.proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
      });
      req.on('error', reject);
      req.on('response', (res) => {
        expect([res.statusCode, res.headers['content-type']]).toEqual([
          200,
          'text/event-stream; charset=utf-8',
        ]);
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (data: string) => {
          text += data;
        });
        res.on('end', () => resolve(text));
        // The head came before any answer; now the model speaks.
        void asked.then(() => answer());
      });
      req.end(JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }], stream: true }));
    });
    expect(body).toContain('"content":"Hi. "');
    expect(body.trimEnd().endsWith('data: [DONE]')).toBe(true);
  });
});

describe('barge-in', () => {
  it('aborts the upstream request when the client leaves mid-stream', async () => {
    const steps = textReply('one two three four five six seven eight nine ten', 'vllm-llama3json', {
      delayMs: 200,
    });
    const { upstream, harness } = await setup(() => ({ sse: steps }), {
      tools: [{ name: 'now', builtin: 'time' }],
    });
    const stream = await harness.client.chat.completions.create({
      model: 'm',
      messages: [SYSTEM, { role: 'user', content: 'Count' }],
      stream: true,
    });
    for await (const chunk of stream) {
      if (chunk.choices[0]?.delta.content) break; // the user starts talking: Unmute cancels the task
    }
    expect(await upstream.closed(0)).toBe('aborted');
  });

  it('aborts a running tool request when the client leaves', async () => {
    const tool = await hangingToolServer();
    const { harness } = await setup(
      () => ({ sse: toolCallReply([{ name: 'slow_lookup', arguments: {} }]) }),
      {
        tools: [slowTool(tool.url)],
      },
    );
    const stream = await harness.client.chat.completions.create({
      model: 'm',
      messages: [SYSTEM, { role: 'user', content: 'Look it up' }],
      stream: true,
    });
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next(); // role chunk
    const filler = await iterator.next();
    expect(filler.value?.choices[0]?.delta.content).toBe('One moment. ');
    await tool.first;
    stream.controller.abort();
    await tool.closed[0]; // the tool's socket closes: the request was aborted
  });

  it('keeps onInterrupt: finish tools running after a hang-up', async () => {
    let finished = false;
    const server = createServer((_req, res) => {
      setTimeout(() => {
        // Only an answer the proxy is still waiting for counts: an aborted request's socket is gone.
        if (res.destroyed) return;
        finished = true;
        res.end('{"switched":true}');
      }, 300);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    defer(async () => void server.close());
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const { upstream, harness } = await setup(
      () => ({ sse: toolCallReply([{ name: 'light_on', arguments: {} }]) }),
      {
        tools: [
          {
            name: 'light_on',
            parameters: { type: 'object', properties: {} },
            onInterrupt: 'finish',
            http: { method: 'POST', url: `${url}/on` },
          },
        ],
      },
    );
    const stream = await harness.client.chat.completions.create({
      model: 'm',
      messages: [SYSTEM, { role: 'user', content: 'Light on' }],
      stream: true,
    });
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content) break;
    await expect.poll(() => finished, { timeout: 5000 }).toBe(true);
    expect(upstream.requests.length).toBe(1); // the turn ended: no second model call for a gone client
  });
});

describe('limits', () => {
  it('turns a tool timeout into an error result the model answers from', async () => {
    const tool = await hangingToolServer();
    const { upstream, harness } = await setup(
      (_req, i) =>
        i === 0
          ? { sse: toolCallReply([{ name: 'slow_lookup', arguments: {} }]) }
          : { sse: textReply('That took too long.') },
      { tools: [slowTool(tool.url, { timeout: '200ms' })] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Look it up' }]);
    expect(text).toBe('One moment. That took too long.');
    expect(toolResults(upstream.requests[1] as RecordedRequest)[0]).toMatch(/timed out/);
  });

  it('speaks the error message when the whole turn runs past turnTimeout', async () => {
    const { harness } = await setup(() => ({ hang: true }), { limits: { turnTimeout: '300ms' }, tools: [] });
    const { text, chunks } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }]);
    expect(text).toBe("Sorry, I couldn't do that right now. ");
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
  });
});

describe('upstream refusals', () => {
  it('retries once with the oldest turns dropped after a context-length error', async () => {
    const { upstream, harness } = await setup(
      (_req, i) =>
        i === 0
          ? errorReply(
              400,
              "This model's maximum context length is 1536 tokens. However, you requested 2000 tokens.",
            )
          : { sse: textReply('Fine.') },
      { tools: [] },
    );
    const history = [
      SYSTEM,
      { role: 'user' as const, content: 'one' },
      { role: 'assistant' as const, content: 'a' },
      { role: 'user' as const, content: 'two' },
      { role: 'assistant' as const, content: 'b' },
      { role: 'user' as const, content: 'three' },
    ];
    const { text } = await unmuteTurn(harness.client, history);
    expect(text).toBe('Fine.');
    expect(upstream.requests[1]?.body.messages?.map((m) => m.content)).toEqual([
      'Be brief.',
      'two',
      'b',
      'three',
    ]);
  });

  it('answers without tools when the upstream has no tool parser, and reports it', async () => {
    const { upstream, harness } = await setup(
      (req) =>
        req.body.tools
          ? errorReply(
              400,
              '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
            )
          : { sse: textReply('I cannot check, sorry.') },
      { tools: [{ name: 'now', builtin: 'time' }] },
    );
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'What time is it?' },
    ]);
    expect(text).toBe('I cannot check, sorry.');
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'And now?' }]);
    // The second turn does not try tools again (within 60 s).
    expect(upstream.requests.map((r) => Boolean(r.body.tools))).toEqual([true, false, false]);
    const ready = (await (await fetch(`${harness.proxy.metricsUrl}/readyz`)).json()) as {
      upstream: { toolsAccepted: boolean; toolsRefusedAt: string };
    };
    expect(ready.upstream.toolsAccepted).toBe(false);
    expect(Date.now() - Date.parse(ready.upstream.toolsRefusedAt)).toBeLessThan(60_000);
  });

  it('sends enable_thinking: false, and stops when the upstream refuses the field', async () => {
    const { upstream, harness } = await setup(
      (req) =>
        req.body.chat_template_kwargs
          ? errorReply(400, 'Unexpected field chat_template_kwargs')
          : { sse: textReply('Ok.') },
      { upstream: { disableThinking: true }, tools: [] },
    );
    expect((await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }])).text).toBe('Ok.');
    await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi again' }]);
    expect(upstream.requests.map((r) => r.body.chat_template_kwargs)).toEqual([
      { enable_thinking: false },
      undefined,
      undefined,
    ]);
  });

  it('never speaks reasoning deltas', async () => {
    const { harness } = await setup(
      () => ({
        sse: [
          'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{"reasoning_content":"The user wants"}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{"reasoning":" a greeting"}}]}\n\n',
          'data: {"choices":[{"index":0,"delta":{"content":"Hello!"},"finish_reason":"stop"}]}\n\n',
          'data: [DONE]\n\n',
        ],
      }),
      { tools: [] },
    );
    expect((await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Hi' }])).text).toBe('Hello!');
  });
});

describe('tools from the client and from raw text', () => {
  it('passes a call to one of the client tools back to the client', async () => {
    const { upstream, harness } = await setup(
      () => ({ sse: toolCallReply([{ name: 'client_lookup', arguments: { q: 'x' } }], 'openai') }),
      { tools: [{ name: 'now', builtin: 'time' }] },
    );
    const completion = await harness.client.chat.completions.create({
      model: 'm',
      messages: [SYSTEM, { role: 'user', content: 'Look up x' }],
      tools: [
        {
          type: 'function',
          function: { name: 'client_lookup', parameters: { type: 'object', properties: {} } },
        },
      ],
    });
    expect(completion.choices[0]?.finish_reason).toBe('tool_calls');
    const call = completion.choices[0]?.message.tool_calls?.[0];
    expect(call?.type === 'function' && call.function.name).toBe('client_lookup');
    expect(upstream.requests[0]?.body.tools?.length).toBe(2);
  });

  it('runs a raw <tool_call> the model wrote as text, and never speaks it', async () => {
    const raw = '<tool_call>\n{"name": "now", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>';
    const { upstream, harness } = await setup(
      (_req, i) =>
        i === 0
          ? {
              sse: [
                ...raw
                  .match(/.{1,7}/gs)!
                  .map(
                    (p) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: p } }] })}\n\n`,
                  ),
                'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
                'data: [DONE]\n\n',
              ],
            }
          : { sse: textReply('It is noon in Paris.') },
      { tools: [{ name: 'now', builtin: 'time' }] },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Time in Paris?' }]);
    expect(text).toBe('One moment. It is noon in Paris.');
    expect(toolResults(upstream.requests[1] as RecordedRequest)[0]).toMatch(/Europe\/Paris/);
  });
});

describe('filler', () => {
  const spec = (fillers: (string | undefined)[]) => ({
    voice: { filler: 'Hold on.' },
    tools: fillers.map((filler, i) => ({
      name: `t${i}`,
      builtin: 'time',
      ...(filler === undefined ? {} : { filler }),
    })),
  });
  const run = async (fillers: (string | undefined)[], calls: string[], content?: string) => {
    const { harness } = await setup(
      (_req, i) =>
        i === 0
          ? {
              sse: toolCallReply(
                calls.map((name) => ({ name, arguments: {} })),
                'vllm-hermes',
                content ? { content } : {},
              ),
            }
          : { sse: textReply('Done.') },
      spec(fillers),
    );
    return (await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Go' }])).text;
  };

  it("uses the tool's filler over voice.filler, with a trailing space", async () => {
    expect(await run(['Checking the clock.'], ['t0'])).toBe('Checking the clock. Done.');
  });
  it('lets the first call by index that has a filler decide', async () => {
    expect(await run(['', 'Second tool speaking.'], ['t0', 't1'])).toBe('Second tool speaking. Done.');
  });
  it('falls back to voice.filler, and says nothing extra when the model already spoke', async () => {
    expect(await run([undefined], ['t0'])).toBe('Hold on. Done.');
    expect(await run([undefined], ['t0'], 'Let me see.')).toBe('Let me see. Done.');
  });
});
