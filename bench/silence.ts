/**
 * The longest stretch without new speech on a tool turn, as Unmute would hear it: the real proxy (in
 * this process) between the stand-in model and a tool that answers after 0.5, 3, 6 or 12 s, the last with
 * `deferAfter: 5s`. For each, one turn: the gaps between the request and the first content, between
 * content deltas, and from the last one to the stream's end, the longest reported against the target
 * (`voice.stillWorkingAfter` + 0.5 s, for every case up to the deferral). The deferred call's result is
 * then checked on the next request (Unmute's `...` silence marker). Run alone: `node dist/bench/silence.js`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type RecordedRequest,
  type ScriptedReply,
  startScriptedUpstream,
  textReply,
  toolCallReply,
} from '../src/demo/scripted-upstream.js';
import { startProxy } from '../src/proxy/start.js';
import { createLogger } from '../src/telemetry/log.js';
import { writeToolSetFile } from '../src/toolset/load.js';

const STILL_WORKING_AFTER_S = 3;
const CASES = [
  { tool: 'half_second', seconds: 0.5 },
  { tool: 'three_seconds', seconds: 3 },
  { tool: 'six_seconds', seconds: 6 },
  { tool: 'twelve_seconds', seconds: 12, deferAfter: '5s' },
];

export interface SilenceCase {
  tool: string;
  toolSeconds: number;
  deferred: boolean;
  /** Longest stretch without new speech in the turn, s. */
  longestGapS: number;
  turnS: number;
  spoken: string;
  /** For the deferred case: whether the next request carried the late result. */
  lateDelivered?: boolean;
}

/** The stand-in model: calls the tool the user names; answers from its result, or promises a late one. */
function model(request: RecordedRequest): ScriptedReply {
  const messages = request.body.messages ?? [];
  const last = messages.at(-1);
  const pace = { delayMs: 20 };
  if (last?.role === 'system' && /has just arrived/.test(String(last.content)))
    return { sse: textReply('Your result has just arrived, and it is ready.', 'vllm-hermes', pace) };
  if (last?.role === 'tool') {
    const pending = String(last.content).startsWith('pending');
    const text = pending
      ? "That takes longer; I'll tell you when it's ready."
      : 'Here is your result, all done.';
    return { sse: textReply(text, 'vllm-hermes', pace) };
  }
  const tool = CASES.find((c) => String(last?.content ?? '').includes(c.tool));
  if (tool && request.body.tools?.length)
    return { sse: toolCallReply([{ name: tool.tool, arguments: {} }], 'vllm-hermes') };
  return { sse: textReply('Okay.', 'vllm-hermes', pace) };
}

/** One streamed turn: what was spoken, and the longest wait for new words (request start and stream end included). */
async function turn(
  url: string,
  messages: unknown[],
): Promise<{ spoken: string; longestGapS: number; turnS: number }> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer EMPTY' },
    body: JSON.stringify({ model: 'bench', messages, stream: true, temperature: 0.3 }),
  });
  let last = started;
  let longest = 0;
  let spoken = '';
  let buffer = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(bytes, { stream: true });
    for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!event.startsWith('data: {')) continue;
      const content = JSON.parse(event.slice(6)).choices?.[0]?.delta?.content as string | undefined;
      if (!content) continue;
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
      spoken += content;
    }
  }
  const ended = performance.now();
  longest = Math.max(longest, ended - last);
  return { spoken, longestGapS: longest / 1000, turnS: (ended - started) / 1000 };
}

export async function measureSilence(log: (line: string) => void = () => {}): Promise<SilenceCase[]> {
  const finished = new Set<string>();
  const tools = createServer((req, res) => {
    const name = (req.url ?? '/').slice(1);
    const seconds = CASES.find((c) => c.tool === name)?.seconds ?? 0;
    setTimeout(() => {
      finished.add(name);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ done: name }));
    }, seconds * 1000);
  });
  await new Promise<void>((r) => tools.listen(0, '127.0.0.1', r));
  const toolUrl = `http://127.0.0.1:${(tools.address() as AddressInfo).port}`;
  const upstream = await startScriptedUpstream({ respond: model });
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-bench-silence-'));
  const toolsetPath = await writeToolSetFile(dir, 'silence', {
    limits: { turnTimeout: '30s' },
    voice: { stillWorkingAfter: `${STILL_WORKING_AFTER_S}s` },
    tools: CASES.map((c) => ({
      name: c.tool,
      description: `Takes ${c.seconds} s.`,
      timeout: '20s',
      ...(c.deferAfter ? { deferAfter: c.deferAfter } : {}),
      http: { url: `${toolUrl}/${c.tool}` },
    })),
  });
  const proxy = await startProxy({
    toolsetPath,
    upstreamUrl: upstream.url,
    host: '127.0.0.1',
    port: 0,
    metricsHost: '127.0.0.1',
    metricsPort: 0,
    logger: createLogger('bench', 'warn'),
    watch: false,
  });
  const results: SilenceCase[] = [];
  try {
    for (const c of CASES) {
      log(
        `Silence on a tool turn: a ${c.seconds} s tool${c.deferAfter ? ` (deferAfter ${c.deferAfter})` : ''}…`,
      );
      const system = { role: 'system', content: 'You are a voice assistant.' };
      const question = { role: 'user', content: `Please run ${c.tool}.` };
      const first = await turn(proxy.url, [system, question]);
      const result: SilenceCase = {
        tool: c.tool,
        toolSeconds: c.seconds,
        deferred: c.deferAfter !== undefined,
        ...first,
      };
      if (c.deferAfter) {
        while (!finished.has(c.tool)) await new Promise((r) => setTimeout(r, 50));
        await new Promise((r) => setTimeout(r, 50));
        const next = await turn(proxy.url, [
          system,
          question,
          { role: 'assistant', content: first.spoken.trim() },
          { role: 'user', content: '...' },
        ]);
        result.lateDelivered = next.spoken.includes('has just arrived');
      }
      results.push(result);
    }
  } finally {
    await proxy.close();
    await upstream.close();
    tools.close();
    await rm(dir, { recursive: true, force: true });
  }
  return results;
}

export function renderSilence(cases: SilenceCase[]): string {
  const target = STILL_WORKING_AFTER_S + 0.5;
  const rows = cases.map((c) => {
    const ok = c.longestGapS <= target;
    const late =
      c.lateDelivered === undefined
        ? ''
        : c.lateDelivered
          ? '; late result spoken on the next request'
          : '; **late result lost**';
    return `| ${c.toolSeconds} s${c.deferred ? ' (deferAfter 5s)' : ''} | ${c.longestGapS.toFixed(2)} s | ${c.turnS.toFixed(2)} s | ${ok ? 'pass' : '**FAIL**'}${late} | ${c.spoken.trim()} |`;
  });
  return [
    `Longest stretch without new speech on a tool turn (voice.stillWorkingAfter ${STILL_WORKING_AFTER_S} s; target ≤ ${target} s, up to the deferral):`,
    '',
    '| tool | longest silence | turn | target | what the user hears |',
    '| --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const cases = await measureSilence((line) => process.stderr.write(`${line}\n`));
  process.stdout.write(renderSilence(cases));
}
