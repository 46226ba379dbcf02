import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  type RecordedRequest,
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { createMemory, ToolMemory } from '../../src/proxy/memory.js';
import type { ChatMessage } from '../../src/proxy/messages.js';
import { noopTelemetry } from '../../src/telemetry/index.js';
import { type ProxyHarness, startTestProxy, unmuteTurn } from '../support/proxy.js';
import { toolset } from '../tools/helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()?.();
});

type Msg = { role: 'system' | 'user' | 'assistant'; content: string };

/**
 * A model that calls `lookup` whenever the last user message asks a question with "weather" in it
 * and answers from the tool result; anything else it answers directly.
 */
async function setup(spec: Record<string, unknown> = {}) {
  const upstream: ScriptedUpstream = await startScriptedUpstream({
    respond: (req) => {
      const messages = req.body.messages ?? [];
      const last = messages.at(-1);
      if (last?.role === 'tool') return { sse: textReply(`Answer from ${last.content}.`) };
      const text = String(last?.content ?? '');
      if (/weather|secret/.test(text)) {
        const tool = /secret/.test(text) ? 'vault' : 'lookup';
        return { sse: toolCallReply([{ name: tool, arguments: {} }]) };
      }
      return { sse: textReply('Plain answer.') };
    },
  });
  const harness: ProxyHarness = await startTestProxy(
    {
      tools: [
        { name: 'lookup', builtin: 'time' },
        { name: 'vault', builtin: 'time', memory: false },
      ],
      ...spec,
    },
    upstream.url,
  );
  cleanups.push(
    () => upstream.close(),
    () => harness.close(),
  );
  return { upstream, harness };
}

/** Plays a conversation the way Unmute does: each request carries only what was spoken. */
async function converse(harness: ProxyHarness, system: string, questions: string[]): Promise<Msg[]> {
  const history: Msg[] = [{ role: 'system', content: system }];
  for (const q of questions) {
    history.push({ role: 'user', content: q });
    const { text } = await unmuteTurn(harness.client, history);
    history.push({ role: 'assistant', content: text });
  }
  return history;
}

const roles = (req: RecordedRequest | undefined) => (req?.body.messages ?? []).map((m) => m.role);

describe('tool memory through the proxy', () => {
  it('puts the first turn’s tool exchange back, in place, into the follow-up request', async () => {
    const { upstream, harness } = await setup();
    await converse(harness, 'sys', ["What's the weather in Lisbon?", 'Is it windy?']);
    const followUp = upstream.requests.at(-1);
    expect(roles(followUp)).toEqual(['system', 'user', 'assistant', 'tool', 'assistant', 'user']);
    const messages = followUp?.body.messages ?? [];
    expect(messages[1]?.content).toBe("What's the weather in Lisbon?");
    expect((messages[2] as { tool_calls?: unknown[] }).tool_calls?.length).toBe(1);
    expect(messages[3]?.content).toBe(toolResults(upstream.requests[1] as RecordedRequest)[0]);
    expect(String(messages[4]?.content)).toMatch(/^One moment\. Answer from/);
  });

  it('keeps at most `turns` exchanges, the newest first', async () => {
    const { upstream, harness } = await setup({ memory: { turns: 2 } });
    await converse(harness, 'sys', ['weather one?', 'weather two?', 'weather three?', 'thanks']);
    const last = upstream.requests.at(-1);
    const users = (last?.body.messages ?? []).flatMap((m, i, all) =>
      m.role === 'tool' ? [all[i - 2]?.content] : [],
    );
    expect(users).toEqual(['weather two?', 'weather three?']);
  });

  it('does not splice into another conversation or an edited history', async () => {
    const { upstream, harness } = await setup();
    await converse(harness, 'character A', ['weather here?']);
    // Same words, different system message: another character or session.
    await unmuteTurn(harness.client, [
      { role: 'system', content: 'character B' },
      { role: 'user', content: 'weather here?' },
      { role: 'assistant', content: 'Something.' },
      { role: 'user', content: 'and?' },
    ]);
    const otherSystem = upstream.requests.at(-1);
    expect(roles(otherSystem)).not.toContain('tool');
    // Same system, but the earlier user message was edited.
    const edited: Msg[] = [
      { role: 'system', content: 'character A' },
      { role: 'user', content: 'weather here??' },
      { role: 'assistant', content: 'Something.' },
      { role: 'user', content: 'and?' },
    ];
    await unmuteTurn(harness.client, edited);
    expect(roles(upstream.requests.at(-1))).not.toContain('tool');
  });

  it('never remembers memory: false tools, and remembers nothing with turns: 0', async () => {
    const { upstream, harness } = await setup();
    await converse(harness, 'sys', ['tell me the secret', 'again?']);
    expect(roles(upstream.requests.at(-1))).not.toContain('tool');

    const off = await setup({ memory: { turns: 0 } });
    await converse(off.harness, 'sys', ['weather?', 'and?']);
    expect(roles(off.upstream.requests.at(-1))).not.toContain('tool');
  });

  it('never sends remembered content back to the client', async () => {
    const { harness } = await setup();
    const history = await converse(harness, 'sys', ['weather in Rome?', 'is it windy?']);
    expect(history.at(-1)?.content).toBe('Plain answer.');
  });
});

describe('context-length retry with memory', () => {
  it('drops remembered exchanges before any of the client turns', async () => {
    const upstream = await startScriptedUpstream({
      respond: (req) => {
        const messages = req.body.messages ?? [];
        const last = messages.at(-1);
        if (last?.role === 'tool') return { sse: textReply('Sunny.') };
        if (last?.role === 'user' && messages.some((m) => m.role === 'tool')) {
          return {
            status: 400,
            json: { error: { message: "This model's maximum context length is 1536 tokens." } },
          };
        }
        return String(last?.content).includes('weather')
          ? { sse: toolCallReply([{ name: 'lookup', arguments: {} }]) }
          : { sse: textReply('Plain.') };
      },
    });
    const harness = await startTestProxy({ tools: [{ name: 'lookup', builtin: 'time' }] }, upstream.url);
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    const history = await converse(harness, 'sys', ['weather?', 'windy?']);
    expect(history.at(-1)?.content).toBe('Plain.');
    const [refused, retried] = upstream.requests.slice(-2);
    expect(roles(refused)).toEqual(['system', 'user', 'assistant', 'tool', 'assistant', 'user']);
    expect(roles(retried)).toEqual(['system', 'user', 'assistant', 'user']);
  });
});

describe('ToolMemory', () => {
  const exchange = (id: string): ChatMessage[] => [
    {
      role: 'assistant',
      content: null,
      tool_calls: [{ id, type: 'function', function: { name: 't', arguments: '{}' } }],
    },
    { role: 'tool', tool_call_id: id, content: `result ${id}` },
  ];

  it('expires entries after ttl (fake clock)', () => {
    let now = 1_000;
    const memory = new ToolMemory({
      turns: 2,
      ttlMs: 60_000,
      maxBytes: 4096,
      maxEntries: 10,
      now: () => now,
    });
    const first: ChatMessage[] = [
      { role: 'system', content: 's' },
      { role: 'user', content: 'q1' },
    ];
    memory.remember(first, exchange('a'));
    const next = [...first, { role: 'assistant', content: 'a1' }, { role: 'user', content: 'q2' }];
    expect(memory.prepare(next).spliced).toBe(1);
    now += 60_001;
    expect(memory.prepare(next).spliced).toBe(0);
  });

  it('respects maxBytes', () => {
    const memory = new ToolMemory({ turns: 5, ttlMs: 60_000, maxBytes: 10, maxEntries: 10 });
    const first: ChatMessage[] = [{ role: 'user', content: 'q1' }];
    memory.remember(first, exchange('a'));
    expect(
      memory.prepare([...first, { role: 'assistant', content: 'x' }, { role: 'user', content: 'q2' }])
        .spliced,
    ).toBe(0);
  });

  it('does not keep an exchange bigger than maxBytes', () => {
    const memory = new ToolMemory({ turns: 5, ttlMs: 60_000, maxBytes: 1000, maxEntries: 10 });
    memory.remember([{ role: 'user', content: 'q1' }], exchange('x'.repeat(5000)));
    expect(memory.size).toBe(0);
    memory.remember([{ role: 'user', content: 'q2' }], exchange('small'));
    expect(memory.size).toBe(1);
  });

  it('keeps no copy of the user text it matches on: what it holds does not grow with the question', () => {
    // --expose-gc for this process only, to measure what survives a collection.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const memory = new ToolMemory({ turns: 2, ttlMs: 60_000, maxBytes: 4096, maxEntries: 100 });
    gc();
    const before = process.memoryUsage().heapUsed;
    // 100 conversations whose question is 300 KB each: 30 MB held if an entry kept the text.
    for (let c = 0; c < 100; c++) {
      memory.remember([{ role: 'user', content: `${c} ${'x'.repeat(300_000)}` }], exchange(`c${c}`));
    }
    gc();
    expect(memory.size).toBe(100);
    expect(process.memoryUsage().heapUsed - before).toBeLessThan(5_000_000);
    // It still tells the question apart from another of the same length.
    const question = `7 ${'x'.repeat(300_000)}`;
    const follow = (q: string) => [
      { role: 'user', content: q },
      { role: 'assistant', content: 'a' },
      { role: 'user', content: 'and?' },
    ];
    expect(memory.prepare(follow(question)).spliced).toBe(1);
    expect(memory.prepare(follow(`7 ${'x'.repeat(299_999)}y`)).spliced).toBe(0);
  });

  it('is bounded by memory.maxEntries alone: a result cache turned off leaves it whole', () => {
    const remembered = (spec: Record<string, unknown>) => {
      const memory = createMemory(toolset([{ name: 't', builtin: 'time' }], spec), noopTelemetry)!;
      const question = (c: number) => [{ role: 'user', content: `question ${c}` }];
      for (let c = 0; c < 3; c++) memory.remember(question(c), exchange(`c${c}`));
      return [0, 1, 2].filter(
        (c) =>
          memory.prepare([
            ...question(c),
            { role: 'assistant', content: 'a' },
            { role: 'user', content: 'b' },
          ]).spliced === 1,
      );
    };
    expect(remembered({ cache: { maxEntries: 0 } })).toEqual([0, 1, 2]);
    expect(remembered({ cache: { maxEntries: 1 }, memory: { maxEntries: 2 } })).toEqual([1, 2]);
  });

  it('never reorders, drops or changes a client message (property)', () => {
    const message = fc.record({
      role: fc.constantFrom('system', 'user', 'assistant'),
      content: fc.constantFrom('a', 'b', 'weather?', '', 'hello', '...'),
    });
    fc.assert(
      fc.property(
        fc.array(message, { maxLength: 30 }),
        fc.array(fc.nat(30), { maxLength: 10 }),
        (history, rememberAt) => {
          const memory = new ToolMemory({ turns: 3, ttlMs: 60_000, maxBytes: 100_000, maxEntries: 100 });
          for (const at of rememberAt) {
            const prefix = history.slice(0, at + 1);
            if (prefix.at(-1)?.role === 'user') memory.remember(prefix, exchange(`c${at}`));
          }
          const before = structuredClone(history);
          const { messages, spliced } = memory.prepare(history);
          const clientOnly = messages.filter(
            (m) => m.role !== 'tool' && !(m.role === 'assistant' && m.tool_calls),
          );
          expect(clientOnly).toEqual(before);
          expect(history).toEqual(before);
          expect(spliced).toBeLessThanOrEqual(3);
          // Every spliced exchange sits right after a user message that an assistant message follows.
          messages.forEach((m, i) => {
            if (m.role === 'assistant' && m.tool_calls) {
              expect(messages[i - 1]?.role).toBe('user');
              expect(messages[i + 1]?.role).toBe('tool');
            }
          });
        },
      ),
    );
  });
});

describe('late results in tool memory', () => {
  const sys = { role: 'system', content: 'You are a voice assistant.' };
  const question = { role: 'user', content: 'How long is my commute today?' };
  const call = (id: string) => ({
    role: 'assistant',
    content: null,
    tool_calls: [{ id, type: 'function', function: { name: 'commute', arguments: '{}' } }],
  });
  const result = (id: string, content: string) => ({ role: 'tool', tool_call_id: id, content });
  const options = { turns: 2, ttlMs: 60_000, maxBytes: 4096, maxEntries: 100 };

  it('replaces the pending result in place, notes it once, then keeps it as ordinary memory', () => {
    const delivered: string[][] = [];
    const memory = new ToolMemory(options, { onLate: (tools) => delivered.push(tools) });
    const first: ChatMessage[] = [sys, question];
    memory.remember(first, [call('c1'), result('c1', 'pending: commute is still running')]);
    memory.late(first, [call('c1'), result('c1', '{"minutes":42}')]);

    const next: ChatMessage[] = [
      ...first,
      { role: 'assistant', content: 'I will tell you soon.' },
      { role: 'user', content: '...' },
    ];
    const prepared = memory.prepare(next).messages;
    expect(prepared.map((m) => m.role)).toEqual([
      'system',
      'user',
      'assistant',
      'tool',
      'assistant',
      'user',
      'system',
    ]);
    expect(prepared[3]).toEqual(result('c1', '{"minutes":42}'));
    expect(String(prepared.at(-1)?.content)).toMatch(/result of "commute".*has just arrived/);
    expect(delivered).toEqual([['commute']]);

    // Spliced once as late: the next request has the result in place, without the note.
    const again = memory.prepare([
      ...next,
      { role: 'assistant', content: 'It is 42 minutes.' },
      { role: 'user', content: 'Thanks.' },
    ]);
    expect(again.messages.filter((m) => m.role === 'tool')).toEqual([result('c1', '{"minutes":42}')]);
    expect(again.messages.at(-1)).toEqual({ role: 'user', content: 'Thanks.' });
    expect(delivered).toHaveLength(1);
  });

  it('keeps a late result of a turn the user interrupted (nothing was remembered for it)', () => {
    const memory = new ToolMemory(options);
    const first: ChatMessage[] = [sys, question];
    memory.late(first, [call('c2'), result('c2', '{"minutes":17}')]);
    const prepared = memory.prepare([
      ...first,
      { role: 'assistant', content: 'One moment.' },
      { role: 'user', content: 'Hello?' },
    ]);
    expect(prepared.messages.map((m) => m.role)).toEqual([
      'system',
      'user',
      'assistant',
      'tool',
      'assistant',
      'user',
      'system',
    ]);
    expect(prepared.messages[2]).toEqual(call('c2'));
  });

  it('counts a late result that expires before any request carries it', () => {
    // lru-cache takes a start time of 0 for "no ttl": the clock starts later.
    let now = 5_000;
    const lost: string[][] = [];
    const memory = new ToolMemory(
      { ...options, now: () => now },
      { onLateLost: (tools) => lost.push(tools) },
    );
    const first: ChatMessage[] = [sys, question];
    memory.late(first, [call('c3'), result('c3', '{"minutes":5}')]);
    now += options.ttlMs + 1;
    memory.prepare([...first, { role: 'assistant', content: 'Soon.' }, { role: 'user', content: '...' }]);
    expect(lost).toEqual([['commute']]);
  });

  it('keeps no late result larger than maxBytes, as remember() keeps no such exchange, and says so', () => {
    const delivered: string[][] = [];
    const memory = new ToolMemory(options, { onLate: (tools) => delivered.push(tools) });
    const first: ChatMessage[] = [sys, question];
    const big = JSON.stringify({ route: 'x'.repeat(10_000) });
    const next: ChatMessage[] = [
      ...first,
      { role: 'assistant', content: 'I will tell you soon.' },
      { role: 'user', content: '...' },
    ];
    memory.remember(first, [call('c1'), result('c1', big)]);
    expect(memory.size).toBe(0);
    // A turn the user interrupted: nothing was remembered for it.
    expect(memory.late(first, [call('c1'), result('c1', big)])).toBe('too_large');
    // A request that did not end with the user's words has no turn to keep a result under.
    expect(
      memory.late([...first, { role: 'assistant', content: 'Hi' }], [call('c1'), result('c1', '{}')]),
    ).toBe('no_turn');
    expect(memory.size).toBe(0);
    expect(memory.prepare(next).spliced).toBe(0);
    // A turn that ended on the pending result: that stays, without the result or a note.
    memory.remember(first, [call('c1'), result('c1', 'pending: commute is still running')]);
    expect(memory.late(first, [call('c1'), result('c1', big)])).toBe('too_large');
    const prepared = memory.prepare(next).messages;
    expect(prepared.filter((m) => m.role === 'tool').map((m) => m.content)).toEqual([
      'pending: commute is still running',
    ]);
    expect(prepared.at(-1)).toEqual({ role: 'user', content: '...' });
    expect(delivered).toEqual([]);
  });

  it('holds maxBytes across late results: one that does not fit goes to the next request', () => {
    const delivered: string[][] = [];
    const memory = new ToolMemory(options, { onLate: (tools) => delivered.push(tools) });
    const report = (n: number) => JSON.stringify({ report: String(n).repeat(2500) });
    const first: ChatMessage[] = [sys, question];
    const second: ChatMessage[] = [
      ...first,
      { role: 'assistant', content: 'Soon.' },
      { role: 'user', content: 'And tomorrow?' },
    ];
    expect(memory.late(first, [call('c1'), result('c1', report(1))])).toBe('kept');
    expect(memory.late(second, [call('c2'), result('c2', report(2))])).toBe('kept');
    const third: ChatMessage[] = [
      ...second,
      { role: 'assistant', content: 'Soon too.' },
      { role: 'user', content: '...' },
    ];
    const tools = (messages: ChatMessage[]) =>
      messages.filter((m) => m.role === 'tool').map((m) => m.content);
    expect(tools(memory.prepare(third).messages)).toEqual([report(1)]);
    const fourth = memory.prepare([
      ...third,
      { role: 'assistant', content: 'One is in.' },
      { role: 'user', content: '...' },
    ]);
    expect(tools(fourth.messages)).toEqual([report(2)]);
    expect(delivered).toEqual([['commute'], ['commute']]);
  });

  it('puts a late result back even past the newest memory.turns exchanges', () => {
    const memory = new ToolMemory({ ...options, turns: 1 });
    const first: ChatMessage[] = [sys, question];
    memory.remember(first, [call('c1'), result('c1', 'pending')]);
    memory.late(first, [call('c1'), result('c1', '{"minutes":42}')]);
    const second: ChatMessage[] = [
      ...first,
      { role: 'assistant', content: 'Soon.' },
      { role: 'user', content: 'And the weather?' },
    ];
    memory.remember(second, [call('w1'), result('w1', '{"sunny":true}')]);
    const prepared = memory.prepare([
      ...second,
      { role: 'assistant', content: 'Sunny.' },
      { role: 'user', content: '...' },
    ]);
    expect(prepared.messages.filter((m) => m.role === 'tool').map((m) => m.content)).toEqual([
      '{"minutes":42}',
      '{"sunny":true}',
    ]);
  });
});
