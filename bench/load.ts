/**
 * The load generator: streaming chat requests in Unmute's exact shape, over node:http with kept-alive
 * sockets, timing each content chunk as it arrives. The same code drives every mode, so whatever the
 * driver itself costs on a busy machine is in the direct baseline too.
 */
import { Agent, request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { CONTENT_CHUNKS, PACE_MS } from './protocol.js';

/** Milliseconds a stream takes at the upstream's pace (role chunk, 64 content chunks, finish). */
export const STREAM_MS = (CONTENT_CHUNKS + 1) * PACE_MS;
const STREAM_GUARD_MS = 60_000;

export interface Target {
  url: URL;
  agent: Agent;
}

export function target(url: string): Target {
  return {
    url: new URL('/v1/chat/completions', url),
    agent: new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY, maxFreeSockets: 4096 }),
  };
}

export interface StreamOutcome {
  ok: boolean;
  /** Why it failed (status, socket error, missing chunks or [DONE]). */
  error?: string;
  /** Request sent → first content chunk (not the role chunk), ms. */
  ttftMs: number;
  /** Arrival times of the content chunks, ms. */
  arrivals: number[];
  /** Every content chunk's text joined, for checks. */
  text: string;
}

/** Where the content of a chunk starts in vLLM's and earpiece's `delta` (a role chunk has `"role"` first). */
const CONTENT_AT = '"delta":{"content":"';

/** One streamed request; resolves when the stream ends, fails or hits the guard. */
export function stream(to: Target, body: string): Promise<StreamOutcome> {
  return new Promise((resolve) => {
    const sent = performance.now();
    const arrivals: number[] = [];
    let text = '';
    let done = false;
    let buffer = '';
    let settled = false;
    const finish = (error?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      const first = arrivals[0];
      resolve({
        ok: error === undefined,
        ...(error === undefined ? {} : { error }),
        ttftMs: first === undefined ? Number.NaN : first - sent,
        arrivals,
        text,
      });
    };
    const req = request(
      to.url,
      {
        method: 'POST',
        agent: to.agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          authorization: 'Bearer EMPTY',
        },
      },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          finish(`HTTP ${res.statusCode}`);
          return;
        }
        res.setEncoding('utf8');
        res.on('data', (data: string) => {
          const at = performance.now();
          buffer += data;
          let end = buffer.indexOf('\n\n');
          while (end !== -1) {
            const event = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            end = buffer.indexOf('\n\n');
            if (event === 'data: [DONE]') {
              done = true;
              continue;
            }
            const i = event.indexOf(CONTENT_AT);
            // An empty content ("") is vLLM's finish chunk, not a token.
            if (i === -1 || event.charCodeAt(i + CONTENT_AT.length) === 34) continue;
            arrivals.push(at);
            const start = i + CONTENT_AT.length;
            text += JSON.parse(`"${event.slice(start, event.indexOf('"}', start))}"`) as string;
          }
        });
        res.on('end', () => finish(done ? undefined : 'stream ended without [DONE]'));
        res.on('error', (err) => finish(err.message));
        res.on('aborted', () => finish('response aborted'));
      },
    );
    const guard = setTimeout(() => {
      req.destroy();
      finish(`no end within ${STREAM_GUARD_MS / 1000} s`);
    }, STREAM_GUARD_MS);
    req.on('error', (err) => finish(err.message));
    req.end(body);
  });
}

export interface PhaseResult {
  /** Recorded streams' time to first token, ms. */
  ttft: number[];
  /** Recorded streams' gaps between consecutive content chunks, ms. */
  gaps: number[];
  /** All streams in the phase (warm-up and tail included). */
  streams: number;
  /** Content chunks received in the phase, all streams. */
  chunks: number;
  errors: Map<string, number>;
  wallSeconds: number;
}

/** What a stream must carry to count: the model's text, in this many content chunks. */
export interface Expected {
  text: string;
  chunks: number;
}

function emptyResult(): PhaseResult {
  return { ttft: [], gaps: [], streams: 0, chunks: 0, errors: new Map(), wallSeconds: 0 };
}

/** Adds one stream's outcome to a result: an error, or (when recorded) its TTFT and gaps. */
function tally(result: PhaseResult, outcome: StreamOutcome, expected: Expected, record: boolean): void {
  result.streams++;
  result.chunks += outcome.arrivals.length;
  let error = outcome.error;
  if (!error && outcome.arrivals.length !== expected.chunks)
    error = `${outcome.arrivals.length} content chunks, not ${expected.chunks}`;
  if (!error && outcome.text !== expected.text) error = 'content differs from what the model sent';
  if (error) {
    result.errors.set(error, (result.errors.get(error) ?? 0) + 1);
    return;
  }
  if (!record) return;
  result.ttft.push(outcome.ttftMs);
  const a = outcome.arrivals;
  for (let i = 1; i < a.length; i++) result.gaps.push((a[i] as number) - (a[i - 1] as number));
}

/**
 * N workers, each streaming back to back: one warm-up stream (new sockets, a cold path), then
 * `recorded` measured streams, then more unmeasured ones until every worker is done, so the measured
 * streams all run at full concurrency. Starts are spread over one stream's length so requests do not
 * arrive in lockstep.
 */
export async function phase(
  to: Target,
  body: string,
  concurrency: number,
  recorded: number,
  expected: Expected,
): Promise<PhaseResult> {
  const result = emptyResult();
  const started = performance.now();
  let measuring = concurrency;
  const one = async (record: boolean) => tally(result, await stream(to, body), expected, record);
  const worker = async (index: number) => {
    if (concurrency > 1) await sleep((index * STREAM_MS) / concurrency);
    await one(false);
    for (let i = 0; i < recorded; i++) await one(true);
    measuring--;
    while (measuring > 0) await one(false);
  };
  await Promise.all(Array.from({ length: concurrency }, (_, i) => worker(i)));
  result.wallSeconds = (performance.now() - started) / 1000;
  return result;
}

/** `count` streams one after another, every one recorded (the one-stream TTFT samples). */
export async function sequence(
  to: Target,
  body: string,
  count: number,
  expected: Expected,
): Promise<PhaseResult> {
  const result = emptyResult();
  const started = performance.now();
  for (let i = 0; i < count; i++) tally(result, await stream(to, body), expected, true);
  result.wallSeconds = (performance.now() - started) / 1000;
  return result;
}

/** `count` requests sent at once, as a crowd of users who all stop talking in the same instant. */
export async function burst(
  to: Target,
  body: string,
  count: number,
  expected: Expected,
): Promise<PhaseResult> {
  const result = emptyResult();
  const started = performance.now();
  const outcomes = await Promise.all(Array.from({ length: count }, () => stream(to, body)));
  for (const outcome of outcomes) tally(result, outcome, expected, true);
  result.wallSeconds = (performance.now() - started) / 1000;
  return result;
}
