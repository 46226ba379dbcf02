/**
 * Slow tools as the user hears them: the still-working line, deferred calls whose late results reach the
 * next request, and voice lines in the user's language. A real HTTP tool that answers after a delay, the
 * scripted model, the real proxy and the official client. Delays are far apart so ordering, not timing,
 * is what the tests pin.
 */
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import {
  lastUserText,
  type RecordedRequest,
  type ScriptedReply,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { startMcpServer } from '../support/mcp-server.js';
import { type ProxyHarness, toolsetDoc, unmuteTurn, useScriptedProxy } from '../support/proxy.js';

/**
 * A tool server: GET /work?ms=N&id=X answers {"done": X} after N ms; it records runs, aborted requests, and
 * the requests open when each arrived (itself included), so a test can tell how many ran at once.
 */
let server: Server;
let toolUrl: string;
const runs: string[] = [];
const aborted: string[] = [];
const finished: string[] = [];
const open = new Set<string>();
const openOnArrival = new Map<string, string[]>();
beforeAll(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const id = url.searchParams.get('id') ?? '?';
    runs.push(id);
    open.add(id);
    openOnArrival.set(id, [...open]);
    const timer = setTimeout(
      () => {
        finished.push(id);
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ done: id }));
      },
      Number(url.searchParams.get('ms') ?? 0),
    );
    res.on('close', () => {
      open.delete(id);
      if (!res.writableFinished) {
        clearTimeout(timer);
        aborted.push(id);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  toolUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

const SYSTEM = { role: 'system' as const, content: 'You are a helpful voice assistant.' };
type Msg = { role: 'system' | 'user' | 'assistant'; content: string };

function workTool(name: string, extra: Record<string, unknown> = {}) {
  return {
    name,
    description: 'Does some work that takes a while.',
    parameters: {
      type: 'object',
      properties: { ms: { type: 'integer' }, id: { type: 'string' } },
      required: ['ms', 'id'],
    },
    http: { url: `${toolUrl}/work{?ms,id}` },
    ...extra,
  };
}

/**
 * The model: a user message naming a tool ("work 1500 a") calls it with those arguments; a pending result
 * gets a promise; a late-result note gets the result said; a tool result gets an answer.
 */
function model(req: RecordedRequest): ScriptedReply {
  const messages = req.body.messages ?? [];
  const last = messages.at(-1);
  if (last?.role === 'system' && /has just arrived/.test(String(last.content))) {
    const results = toolResults(req).filter((r) => !r.startsWith('pending'));
    return { sse: textReply(`It just arrived: ${results.at(-1)}.`) };
  }
  if (last?.role === 'tool') {
    const content = String(last.content);
    if (content.startsWith('pending')) return { sse: textReply("I'll tell you as soon as it is ready.") };
    return { sse: textReply(`Done: ${content}.`) };
  }
  const ask = lastUserText(req).match(/(\w+) (\d+) (\w+)/);
  if (ask && req.body.tools?.length) {
    return {
      sse: toolCallReply([{ name: ask[1] as string, arguments: { ms: Number(ask[2]), id: ask[3] } }]),
    };
  }
  return { sse: textReply('Okay.') };
}

/** The conversation after `question` was answered with `answer`, and the user's `next` words if any. */
function nextTurn(question: Msg, answer: string, next?: string): Msg[] {
  const history: Msg[] = [SYSTEM, question, { role: 'assistant', content: answer }];
  return next === undefined ? history : [...history, { role: 'user', content: next }];
}

async function metric(metricsUrl: string, line: RegExp): Promise<number> {
  const text = await (await fetch(`${metricsUrl}/metrics`)).text();
  const found = text.split('\n').find((l) => line.test(l));
  return found ? Number(found.split(' ').at(-1)) : 0;
}

/** The metric once it reaches `atLeast`, or as it stands after a 5 s guard (a late result lands after its turn). */
async function metricReaching(metricsUrl: string, line: RegExp, atLeast: number): Promise<number> {
  const started = Date.now();
  let value = await metric(metricsUrl, line);
  while (value < atLeast && Date.now() - started < 5000) {
    await new Promise((r) => setTimeout(r, 20));
    value = await metric(metricsUrl, line);
  }
  return value;
}

async function until(check: () => boolean, what: string): Promise<void> {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > 15_000)
      throw new Error(`gave up waiting for ${what} (runs ${runs}, finished ${finished}, aborted ${aborted})`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Unmute's barge-in: streams a turn and hangs up at the first words (the filler); resolves once it has. */
async function hangUpAtFirstWords(harness: ProxyHarness, messages: Msg[]): Promise<AbortSignal> {
  const abort = new AbortController();
  const stream = await harness.client.chat.completions.create(
    { model: 'scripted-model', messages, stream: true },
    { signal: abort.signal },
  );
  try {
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content) abort.abort();
  } catch {
    // The SDK may end the iteration with an abort error, or quietly.
  }
  return abort.signal;
}

const { setup, defer } = useScriptedProxy();

describe('still working', () => {
  it('is spoken once, after the filler, while a slow tool runs', async () => {
    const { harness } = await setup(model, {
      voice: { stillWorkingAfter: '200ms' },
      tools: [workTool('work')],
    });
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'work 1200 s1' }]);
    expect(text).toBe('One moment. Still working on it. Done: {"done":"s1"}.');
  });

  it('is not spoken when the tool is done before the threshold', async () => {
    const { harness } = await setup(model, { tools: [workTool('work')] });
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'work 10 s2' }]);
    expect(text).toBe('One moment. Done: {"done":"s2"}.');
  });

  it('is never spoken once the answer has begun', async () => {
    // The model answers part of the question after the first tool, then calls a slow second one.
    const { harness } = await setup(
      (req, i) =>
        i === 0
          ? { sse: toolCallReply([{ name: 'work', arguments: { ms: 10, id: 'a1' } }]) }
          : i === 1
            ? {
                sse: toolCallReply([{ name: 'work', arguments: { ms: 1200, id: 'a2' } }], 'vllm-hermes', {
                  content: 'The first part is done. ',
                }),
              }
            : model(req),
      { voice: { stillWorkingAfter: '200ms' }, tools: [workTool('work')] },
    );
    const { text } = await unmuteTurn(harness.client, [
      SYSTEM,
      { role: 'user', content: 'two parts please' },
    ]);
    expect(text).toBe('One moment. The first part is done. Done: {"done":"a2"}.');
  });

  it('is off with ""', async () => {
    const { harness } = await setup(model, {
      voice: { stillWorking: '', stillWorkingAfter: '200ms' },
      tools: [workTool('work')],
    });
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'work 800 s3' }]);
    expect(text).toBe('One moment. Done: {"done":"s3"}.');
  });
});

describe('voice lines in the user language', () => {
  const voice = {
    filler: { en: 'One moment. ', fr: 'Un instant. ' },
    stillWorking: { en: 'Still working on it. ', fr: 'Je cherche encore. ' },
    stillWorkingAfter: '200ms',
  };

  it.each([
    ['English', 'Could you please run the work 900 en1 for me now?', 'One moment. Still working on it. '],
    [
      'French',
      "Pourriez-vous lancer le travail work 900 fr1 pour moi s'il vous plaît ?",
      'Un instant. Je cherche encore. ',
    ],
    [
      'an unknown language (falls back to en)',
      'このタスクを work 900 ja1 お願いします',
      'One moment. Still working on it. ',
    ],
  ])('%s', async (_name, question, heard) => {
    const { harness } = await setup(model, { voice, tools: [workTool('work')] });
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: question }]);
    expect(text.startsWith(heard), text).toBe(true);
  });
});

describe('late results', () => {
  it('a 6 s tool with deferAfter 2s: the turn ends on a promise, and the next request (...) carries the result in place', async () => {
    const { harness, upstream } = await setup(model, {
      tools: [workTool('report', { timeout: '10s', deferAfter: '2s' })],
    });
    const question: Msg = { role: 'user', content: 'report 6000 r1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    expect(finished).not.toContain('r1');
    await until(() => finished.includes('r1'), 'the report');
    await harness.proxy.current().deferred.idle();

    // Unmute's silence marker, some seconds later.
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, '...'));
    expect(second.text).toBe('It just arrived: {"done":"r1"}.');
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    expect(sent.map((m) => m.role)).toEqual([
      'system',
      'user',
      'assistant',
      'tool',
      'assistant',
      'user',
      'system',
    ]);
    expect(sent[3]?.content).toBe('{"done":"r1"}');
    expect(runs.filter((r) => r === 'r1')).toHaveLength(1);
    expect(
      await metric(harness.proxy.metricsUrl, /^earpiece_deferred_calls_total\{.*outcome="delivered"/),
    ).toBe(1);
  }, 30_000);

  it('a real user message carries it too, once; later requests have it as ordinary memory', async () => {
    const { harness, upstream } = await setup(model, {
      tools: [workTool('report', { timeout: '5s', deferAfter: '300ms' })],
    });
    const question: Msg = { role: 'user', content: 'report 900 r2' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await until(() => finished.includes('r2'), 'the report');
    await harness.proxy.current().deferred.idle();
    const history = nextTurn(question, first.text);
    const second = await unmuteTurn(harness.client, [
      ...history,
      { role: 'user', content: 'Thanks, anything else?' },
    ]);
    expect(second.text).toBe('It just arrived: {"done":"r2"}.');
    const third = await unmuteTurn(harness.client, [
      ...history,
      { role: 'user', content: 'Thanks, anything else?' },
      { role: 'assistant', content: second.text },
      { role: 'user', content: 'No, bye.' },
    ]);
    expect(third.text).toBe('Okay.');
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    expect(sent.filter((m) => m.role === 'tool').map((m) => m.content)).toEqual(['{"done":"r2"}']);
    expect(sent.at(-1)).toEqual({ role: 'user', content: 'No, bye.' });
  });

  it.each([
    ['cancel', 'drops it', false],
    ['finish', 'keeps it', true],
  ] as const)('a client that hangs up mid-tool: %s %s', async (onInterrupt, _what, kept) => {
    const id = `hangup${onInterrupt}`;
    const { harness, upstream } = await setup(model, {
      tools: [workTool('report', { timeout: '5s', deferAfter: '3s', onInterrupt })],
    });
    const question: Msg = { role: 'user', content: `report 800 ${id}` };
    // The user talks over the filler: Unmute cancels the request.
    const signal = await hangUpAtFirstWords(harness, [SYSTEM, question]);
    expect(signal.aborted).toBe(true);
    if (kept) await until(() => finished.includes(id), 'the tool to finish');
    else await until(() => aborted.includes(id), 'the tool to be stopped');
    await harness.proxy.current().deferred.idle();
    const next = await unmuteTurn(harness.client, [
      SYSTEM,
      question,
      { role: 'assistant', content: 'One moment.' },
      { role: 'user', content: 'Hello?' },
    ]);
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    if (kept) {
      expect(next.text).toBe(`It just arrived: {"done":"${id}"}.`);
      expect(sent.filter((m) => m.role === 'tool').map((m) => m.content)).toEqual([`{"done":"${id}"}`]);
    } else {
      expect(next.text).toBe('Okay.');
      expect(sent.some((m) => m.role === 'tool')).toBe(false);
      expect(
        await metric(harness.proxy.metricsUrl, /^earpiece_deferred_calls_total\{.*outcome="cancelled"/),
      ).toBe(1);
    }
  });

  it('an expired late result is dropped and counted', async () => {
    const { harness, upstream } = await setup(model, {
      tools: [workTool('report', { timeout: '700ms', deferAfter: '200ms' })],
    });
    const question: Msg = { role: 'user', content: 'report 3000 x1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await until(() => aborted.includes('x1'), 'the tool timeout');
    await harness.proxy.current().deferred.idle();
    await unmuteTurn(harness.client, nextTurn(question, first.text, '...'));
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    // The pending exchange is ordinary memory; no result and no note.
    expect(sent.filter((m) => m.role === 'tool').map((m) => String(m.content).slice(0, 7))).toEqual([
      'pending',
    ]);
    expect(sent.at(-1)).toEqual({ role: 'user', content: '...' });
    expect(
      await metric(harness.proxy.metricsUrl, /^earpiece_deferred_calls_total\{.*outcome="expired"/),
    ).toBe(1);
  });

  it('a late result larger than memory.maxBytes is discarded and counted', async () => {
    const { harness, upstream } = await setup(model, {
      memory: { maxBytes: 200 },
      tools: [workTool('report', { timeout: '5s', deferAfter: '200ms' })],
    });
    const question: Msg = { role: 'user', content: 'report 600 big1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await until(() => finished.includes('big1'), 'the report');
    const discarded = /^earpiece_deferred_calls_total\{.*outcome="discarded"/;
    expect(await metricReaching(harness.proxy.metricsUrl, discarded, 1)).toBe(1);
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, '...'));
    expect(second.text).toBe('Okay.');
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    expect(sent.some((m) => m.role === 'tool')).toBe(false);
    const delivered = /^earpiece_deferred_calls_total\{.*outcome="delivered"/;
    expect(await metric(harness.proxy.metricsUrl, delivered)).toBe(0);
  });

  it('deferred calls hold their maxParallelCalls slot to the end; queued ones are pending too', async () => {
    const ids = ['par1', 'par2', 'par3', 'par4', 'par5', 'par6'];
    const { harness } = await setup(
      (req) =>
        req.body.messages?.at(-1)?.role === 'tool'
          ? model(req)
          : { sse: toolCallReply(ids.map((id) => ({ name: 'report', arguments: { ms: 1500, id } }))) },
      {
        limits: { maxParallelCalls: 2 },
        tools: [workTool('report', { timeout: '5s', deferAfter: '150ms' })],
      },
    );
    const first = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'six reports' }]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    // The turn ended long before the first two finished: the other four got their pending result queued.
    expect(runs.filter((r) => ids.includes(r))).toHaveLength(2);
    await until(() => ids.every((id) => finished.includes(id)), 'all six reports');
    const atOnce = ids.map((id) => (openOnArrival.get(id) ?? []).filter((o) => ids.includes(o)).length);
    expect(Math.max(...atOnce)).toBe(2);
  }, 20_000);

  it('a hang-up cancels deferred calls still queued for a slot as well as the running ones', async () => {
    const ids = ['hq1', 'hq2', 'hq3', 'hq4'];
    const { harness } = await setup(
      () => ({ sse: toolCallReply(ids.map((id) => ({ name: 'report', arguments: { ms: 3000, id } }))) }),
      {
        limits: { maxParallelCalls: 2 },
        tools: [workTool('report', { timeout: '5s', deferAfter: '2s' })],
      },
    );
    await hangUpAtFirstWords(harness, [SYSTEM, { role: 'user', content: 'four reports' }]);
    await until(() => ['hq1', 'hq2'].every((id) => aborted.includes(id)), 'the running calls to be stopped');
    const cancelled = /^earpiece_deferred_calls_total\{.*outcome="cancelled"/;
    expect(await metricReaching(harness.proxy.metricsUrl, cancelled, 4)).toBe(4);
    // The queued two were cancelled before they took a slot: no request of theirs ever left.
    expect(runs.filter((r) => ids.includes(r))).toEqual(['hq1', 'hq2']);
  });

  it('a hang-up lets running onInterrupt: finish calls complete, but starts none still queued for a slot', async () => {
    const ids = ['fq1', 'fq2', 'fq3', 'fq4'];
    const { harness } = await setup(
      () => ({ sse: toolCallReply(ids.map((id) => ({ name: 'switch', arguments: { ms: 400, id } }))) }),
      {
        limits: { maxParallelCalls: 2 },
        tools: [workTool('switch', { timeout: '5s', onInterrupt: 'finish' })],
      },
    );
    await hangUpAtFirstWords(harness, [SYSTEM, { role: 'user', content: 'four switches' }]);
    await until(() => ['fq1', 'fq2'].every((id) => finished.includes(id)), 'the running calls to complete');
    // Past the time the queued two would have taken their slots and finished.
    await new Promise((r) => setTimeout(r, 600));
    expect(runs.filter((r) => ids.includes(r))).toEqual(['fq1', 'fq2']);
    expect(finished.filter((r) => ids.includes(r))).toEqual(['fq1', 'fq2']);
  });

  it("a deferred call keeps its slot in the turn's next round too", async () => {
    const { harness } = await setup(
      (req) => {
        const last = req.body.messages?.at(-1);
        if (last?.role === 'tool' && String(last.content).startsWith('pending'))
          return { sse: toolCallReply([{ name: 'quick', arguments: { ms: 0, id: 'rq2' } }]) };
        if (last?.role === 'tool') return model(req);
        return { sse: toolCallReply([{ name: 'report', arguments: { ms: 1000, id: 'rq1' } }]) };
      },
      {
        limits: { maxParallelCalls: 1 },
        tools: [workTool('report', { timeout: '5s', deferAfter: '150ms' }), workTool('quick')],
      },
    );
    const first = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'a report' }]);
    expect(first.text).toBe('One moment. Done: {"done":"rq2"}.');
    // The second round's call waited for the first round's deferred one to end.
    expect(openOnArrival.get('rq2')).not.toContain('rq1');
    expect(finished.indexOf('rq1')).toBeLessThan(finished.indexOf('rq2'));
  });

  it('a call started while the model still streams keeps its late result when the user hangs up then', async () => {
    const question: Msg = { role: 'user', content: 'two reports' };
    const { harness, upstream } = await setup(
      (req) =>
        lastUserText(req) === 'two reports' && req.body.messages?.at(-1)?.role === 'user'
          ? {
              sse: toolCallReply(
                [
                  { name: 'report', arguments: { ms: 600, id: 'early1' } },
                  { name: 'report', arguments: { ms: 600, id: 'early2', pad: 'x'.repeat(200) } },
                ],
                'vllm-llama3json',
                { delayMs: 60 },
              ),
            }
          : model(req),
      { tools: [workTool('report', { timeout: '5s', deferAfter: '3s', onInterrupt: 'finish' })] },
    );
    const abort = new AbortController();
    const stream = await harness.client.chat.completions.create(
      { model: 'scripted-model', messages: [SYSTEM, question], stream: true },
      { signal: abort.signal },
    );
    // The user talks over the filler once the first report has started, while the second call still streams.
    const hangUp = until(() => runs.includes('early1'), 'the first report to start').then(() =>
      abort.abort(),
    );
    try {
      for await (const _ of stream);
    } catch {
      // The SDK may end the iteration with an abort error, or quietly.
    }
    await hangUp;
    expect(runs).not.toContain('early2');
    await until(() => finished.includes('early1'), 'the first report to finish');
    await harness.proxy.current().deferred.idle();
    const next = await unmuteTurn(harness.client, nextTurn(question, 'One moment.', '...'));
    expect(next.text).toBe('It just arrived: {"done":"early1"}.');
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    expect(sent.filter((m) => m.role === 'tool').map((m) => m.content)).toEqual(['{"done":"early1"}']);
  }, 20_000);

  it('never runs a deferred call twice: the same call asked again joins the running one', async () => {
    const { harness } = await setup(model, {
      tools: [workTool('report', { timeout: '5s', deferAfter: '1s' })],
    });
    const question: Msg = { role: 'user', content: 'report 1600 d1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    // The user asks again at once; the model calls the same tool with the same arguments.
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, 'report 1600 d1'));
    expect(second.text).toBe('One moment. Done: {"done":"d1"}.');
    expect(runs.filter((r) => r === 'd1')).toHaveLength(1);
  });
});

describe('the turn deadline', () => {
  it('holds while a tool that finishes after a hang-up (onInterrupt: finish) runs on', async () => {
    const { harness } = await setup(model, {
      limits: { turnTimeout: '1s' },
      tools: [workTool('report', { timeout: '10s', onInterrupt: 'finish' })],
    });
    const started = Date.now();
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'report 6000 dl1' }]);
    expect(text).toBe("One moment. Sorry, I couldn't do that right now. ");
    // A guard, far from both the 1 s deadline and the 6 s tool.
    expect(Date.now() - started).toBeLessThan(4000);
    // The tool was not stopped: it runs on to its end.
    expect(runs).toContain('dl1');
    expect(aborted).not.toContain('dl1');
  });
});

describe('a message that fails', () => {
  it('never starts a call still queued for a slot (maxParallelCalls) once the turn has failed', async () => {
    const call = (index: number, name: string, args: Record<string, unknown>) => ({
      choices: [
        {
          index: 0,
          delta: {
            tool_calls: [
              {
                index,
                id: `c${index}`,
                type: 'function',
                function: { name, arguments: JSON.stringify(args) },
              },
            ],
          },
          finish_reason: null,
        },
      ],
    });
    const { harness } = await setup(
      (_req, i) =>
        i === 0
          ? { sse: toolCallReply([{ name: 'report', arguments: { ms: 1500, id: 'q-slow' } }]) }
          : // `quick` is complete once the next call begins, then the stream stops short of a finish.
            { sse: [call(0, 'quick', { ms: 0, id: 'q-after' }), call(1, 'quick', {})] },
      {
        limits: { maxParallelCalls: 1 },
        // The deferred report holds the only slot after its round, so `quick` waits for it.
        tools: [workTool('report', { timeout: '5s', deferAfter: '200ms' }), workTool('quick')],
      },
    );
    const { text } = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'Go' }]);
    expect(text).toBe("One moment. Sorry, I couldn't do that right now. ");
    expect(finished).not.toContain('q-slow');
    await until(() => finished.includes('q-slow'), 'the report to free its slot');
    await new Promise((r) => setTimeout(r, 200));
    expect(runs).not.toContain('q-after');
  });
});

describe('late results across a ToolSet reload', () => {
  /** Rewrites the ToolSet with other memory settings, so the reload gives the proxy a new tool memory. */
  async function reloadWithNewMemory(harness: ProxyHarness, spec: Record<string, unknown>): Promise<void> {
    await writeFile(harness.toolsetPath, stringify(toolsetDoc({ ...spec, memory: { turns: 3 } })));
    await harness.proxy.reload();
  }

  it('a result that lands after the reload still reaches the next request', async () => {
    const spec = { tools: [workTool('report', { timeout: '5s', deferAfter: '300ms' })] };
    const { harness } = await setup(model, spec);
    const question: Msg = { role: 'user', content: 'report 1200 z1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await reloadWithNewMemory(harness, spec);
    await until(() => finished.includes('z1'), 'the report');
    await harness.proxy.current().deferred.idle();
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, '...'));
    expect(second.text).toBe('It just arrived: {"done":"z1"}.');
  });

  it('the same call asked again after the reload joins the one still running', async () => {
    const spec = { tools: [workTool('report', { timeout: '5s', deferAfter: '1s' })] };
    const { harness } = await setup(model, spec);
    const question: Msg = { role: 'user', content: 'report 1600 j1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await reloadWithNewMemory(harness, spec);
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, 'report 1600 j1'));
    expect(second.text).toBe('One moment. Done: {"done":"j1"}.');
    expect(runs.filter((r) => r === 'j1')).toHaveLength(1);
  });

  it('a call of a tool the reload changed runs afresh instead of joining the old run', async () => {
    const before = { tools: [workTool('report', { timeout: '5s', deferAfter: '1s' })] };
    const { harness } = await setup(model, before);
    const question: Msg = { role: 'user', content: 'report 1600 c1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    const changed = workTool('report', { timeout: '5s', deferAfter: '1s' });
    await reloadWithNewMemory(harness, {
      tools: [{ ...changed, http: { url: `${toolUrl}/work{?ms,id}&v=2` } }],
    });
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, 'report 1600 c1'));
    expect(second.text).toBe("One moment. I'll tell you as soon as it is ready.");
    expect(runs.filter((r) => r === 'c1')).toHaveLength(2);
  });

  it('a result that lands after a reload turned tool memory off is discarded and counted apart', async () => {
    const { harness, upstream } = await setup(model, {
      tools: [workTool('report', { timeout: '5s', deferAfter: '300ms' })],
    });
    const question: Msg = { role: 'user', content: 'report 1200 o1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await writeFile(
      harness.toolsetPath,
      stringify(toolsetDoc({ memory: { turns: 0 }, tools: [workTool('report', { timeout: '5s' })] })),
    );
    await harness.proxy.reload();
    await until(() => finished.includes('o1'), 'the report');
    const discarded = /^earpiece_deferred_calls_total\{.*outcome="discarded"/;
    expect(await metricReaching(harness.proxy.metricsUrl, discarded, 1)).toBe(1);
    const failed = /^earpiece_deferred_calls_total\{.*outcome="failed"/;
    expect(await metric(harness.proxy.metricsUrl, failed)).toBe(0);
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, '...'));
    expect(second.text).toBe('Okay.');
    const sent = upstream.requests.at(-1)?.body.messages ?? [];
    expect(sent.some((m) => m.role === 'tool')).toBe(false);
  });

  /** The model calls slow(id, seconds) for "slow <seconds> <id>", and says what a result tells it. */
  const slowModel = (req: RecordedRequest): ScriptedReply => {
    const last = req.body.messages?.at(-1);
    if (last?.role === 'system' && /has just arrived/.test(String(last.content)))
      return { sse: textReply(`It just arrived: ${toolResults(req).at(-1)}.`) };
    if (last?.role === 'tool') return { sse: textReply("I'll tell you as soon as it is ready.") };
    const ask = lastUserText(req).match(/slow ([\d.]+) (\w+)/);
    if (ask && req.body.tools?.length)
      return { sse: toolCallReply([{ name: 'slow', arguments: { id: ask[2], seconds: Number(ask[1]) } }]) };
    return { sse: textReply('Okay.') };
  };

  /** The proxy's current set offers the MCP server's `slow` tool (its session listed it). */
  const offersSlow = (harness: ProxyHarness) =>
    harness.proxy
      .current()
      .tools.list()
      .some((t) => t.name === 'slow');

  /** A real MCP server's `slow` tool, deferred after 300 ms; a set is retired one turn timeout (1 s) after a reload. */
  async function slowMcpProxy() {
    const mcp = await startMcpServer();
    defer(() => mcp.stop());
    const spec = {
      limits: { turnTimeout: '1s' },
      tools: [{ mcp: { url: mcp.url, include: ['slow'] }, timeout: '5s', deferAfter: '300ms' }],
    };
    const { harness } = await setup(slowModel, spec);
    await until(() => offersSlow(harness), 'the MCP tools');
    return { mcp, spec, harness };
  }

  it("an MCP call deferred before the reload keeps the old set's connection until it lands", async () => {
    // The call needs 2.5 s, well past the old set's retirement.
    const { mcp, spec, harness } = await slowMcpProxy();
    const question: Msg = { role: 'user', content: 'slow 2.5 m1' };
    const first = await unmuteTurn(harness.client, [SYSTEM, question]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    await reloadWithNewMemory(harness, spec);
    await until(() => mcp.finished.includes('m1'), 'the MCP call');
    await harness.proxy.current().deferred.idle();
    const second = await unmuteTurn(harness.client, nextTurn(question, first.text, '...'));
    expect(mcp.cancelled).not.toContain('m1');
    expect(second.text).toBe('It just arrived: slept 2.5s.');
    // Once the call has landed, the old set's session is closed; the new set's stays.
    await until(() => mcp.sessionCount() === 1, "the old set's MCP session to close");
  }, 20_000);

  it("a call deferred on the new set does not hold the old set's connection open", async () => {
    const { mcp, spec, harness } = await slowMcpProxy();
    expect(mcp.sessionCount()).toBe(1);
    await reloadWithNewMemory(harness, spec);
    // The server makes the session at initialize; the new set offers the tool only once it has listed it.
    await until(() => mcp.sessionCount() === 2 && offersSlow(harness), "the new set's MCP session and tools");
    const first = await unmuteTurn(harness.client, [SYSTEM, { role: 'user', content: 'slow 4 n1' }]);
    expect(first.text).toBe("One moment. I'll tell you as soon as it is ready.");
    // The old set closes one turn timeout after the reload, while the new set's call still runs.
    await until(() => mcp.sessionCount() === 1, "the old set's MCP session to close");
    expect(mcp.finished).not.toContain('n1');
    await until(() => mcp.finished.includes('n1'), 'the new call');
    expect(mcp.cancelled).not.toContain('n1');
  }, 20_000);
});
