/**
 * Recorded upstream streams: test/fixtures/streams/NAME.sse, with NAME.md (where it comes from) and
 * NAME.expected.json (what it decodes to). Found by glob; a missing twin or an orphan fails the run.
 * `UPDATE_FIXTURES=1` rewrites the expected files from the current code: review the diff before committing.
 */
import { existsSync, globSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { StreamAccumulator } from '../../src/proxy/accumulator.js';
import type { ChatChunk, Usage } from '../../src/proxy/chunks.js';
import { ChunkDecoder, type DecoderOptions, UpstreamStreamError } from '../../src/proxy/sse.js';

export const STREAM_FIXTURES_DIR = fileURLToPath(new URL('../fixtures/streams/', import.meta.url));
const UPDATE = process.env.UPDATE_FIXTURES === '1';

/** The tools the recorded requests offered. */
export const FIXTURE_TOOLS = new Set(['get_weather', 'GetWeatherArgs', 'get_stock_price']);

export interface StreamFixture {
  name: string;
  bytes: Uint8Array;
  notes: string;
  expectedPath: string;
  expected: Decoded | undefined;
}

/** Everything a stream decodes to, as stored in NAME.expected.json. */
export interface Decoded {
  chunks: number;
  /** Whether the stream said [DONE]; null when decoding threw. */
  done: boolean | null;
  error: { kind: string; message: string; detail: unknown } | null;
  id: string | null;
  model: string | null;
  content: string;
  reasoning: string;
  refusal: string;
  toolCalls: { index: number; id: string; name: string; arguments: string; parsedArguments: unknown }[];
  finishReason: string | null;
  usage: Usage | null;
  /** The content after the raw tool-call filter, as it would be spoken. */
  spoken: string;
  /** Calls to FIXTURE_TOOLS the filter found in raw markup, arguments parsed. */
  rawCalls: { name: string; parsedArguments: unknown }[];
}

export function loadStreamFixtures(): StreamFixture[] {
  const list = (pattern: string) => globSync(pattern, { cwd: STREAM_FIXTURES_DIR }).sort();
  const streams = list('*.sse').map((file) => file.slice(0, -'.sse'.length));
  const names = new Set(streams);
  const problems: string[] = [];
  for (const name of streams) {
    if (!existsSync(join(STREAM_FIXTURES_DIR, `${name}.md`))) problems.push(`${name}.sse has no ${name}.md`);
    if (!UPDATE && !existsSync(join(STREAM_FIXTURES_DIR, `${name}.expected.json`)))
      problems.push(`${name}.sse has no ${name}.expected.json (UPDATE_FIXTURES=1 writes it)`);
  }
  // A response body that is no stream (an HTTP error) is NAME.json beside its NAME.md.
  const bodies = new Set(list('*.json').filter((file) => !file.endsWith('.expected.json')));
  for (const file of list('*.md')) {
    const name = file.slice(0, -'.md'.length);
    if (!names.has(name) && !bodies.has(`${name}.json`)) problems.push(`${file} describes no .sse or .json`);
  }
  for (const file of list('*.expected.json')) {
    if (!names.has(file.slice(0, -'.expected.json'.length))) problems.push(`${file} belongs to no .sse`);
  }
  if (problems.length > 0)
    throw new Error(`stream fixtures in ${STREAM_FIXTURES_DIR}:\n${problems.join('\n')}`);

  return streams.map((name) => {
    const expectedPath = join(STREAM_FIXTURES_DIR, `${name}.expected.json`);
    return {
      name,
      bytes: new Uint8Array(readFileSync(join(STREAM_FIXTURES_DIR, `${name}.sse`))),
      notes: readFileSync(join(STREAM_FIXTURES_DIR, `${name}.md`), 'utf8'),
      expectedPath,
      expected: existsSync(expectedPath)
        ? (JSON.parse(readFileSync(expectedPath, 'utf8')) as Decoded)
        : undefined,
    };
  });
}

/** A recorded response body (NAME.json, described by NAME.md): an error the upstream sends instead of a stream. */
export function loadResponseFixture(name: string): string {
  return readFileSync(join(STREAM_FIXTURES_DIR, `${name}.json`), 'utf8');
}

export function loadStreamFixture(name: string): StreamFixture {
  const fixture = loadStreamFixtures().find((f) => f.name === name);
  if (!fixture) throw new Error(`no stream fixture named ${name}`);
  return fixture;
}

/** Compares with NAME.expected.json, or rewrites it under UPDATE_FIXTURES=1. */
export function expectDecoded(fixture: StreamFixture, actual: Decoded): void {
  if (UPDATE) {
    writeFileSync(fixture.expectedPath, `${JSON.stringify(actual, null, 2)}\n`);
    return;
  }
  expect(actual).toEqual(fixture.expected);
}

/** The bytes cut at the given offsets (any order, duplicates and out-of-range ones ignored). */
export function cut(bytes: Uint8Array, offsets: number[]): Uint8Array[] {
  const points = [...new Set(offsets.filter((o) => o > 0 && o < bytes.length))].sort((a, b) => a - b);
  const parts: Uint8Array[] = [];
  let start = 0;
  for (const point of [...points, bytes.length]) {
    parts.push(bytes.slice(start, point));
    start = point;
  }
  return parts;
}

/** A response body that delivers the parts as separate reads. */
export interface Read {
  chunks: ChatChunk[];
  done: boolean | null;
  error: UpstreamStreamError | null;
}

/** Decodes the given reads to the end; an UpstreamStreamError is captured, others thrown. */
export function readAll(parts: Uint8Array[], options?: { maxEventBytes?: number }): Read {
  const chunks: ChatChunk[] = [];
  return { chunks, ...feedAll(parts, (chunk) => chunks.push(chunk), options) };
}

/** Feeds the reads to a ChunkDecoder until [DONE] or their end; `done` is null when decoding threw. */
export function feedAll(
  parts: Uint8Array[],
  onChunk: (chunk: ChatChunk) => void,
  options?: DecoderOptions,
): Omit<Read, 'chunks'> {
  const decoder = new ChunkDecoder(onChunk, options);
  try {
    for (const part of parts) if (decoder.feed(part)) return { done: true, error: null };
    return { done: decoder.end(), error: null };
  } catch (error) {
    if (error instanceof UpstreamStreamError) return { done: null, error };
    throw error;
  }
}

/**
 * The production pipeline below the tool loop: bytes → ChunkDecoder (with its fast lane for text-only
 * chunks, as turns read them) → StreamAccumulator (with the raw tool-call filter) → finish().
 */
export async function decode(parts: Uint8Array[], options: { fastLane?: boolean } = {}): Promise<Decoded> {
  return (await decodeCounting(parts, options)).decoded;
}

/** decode(), and how many chunks came through the decoder's fast lane. */
export async function decodeCounting(
  parts: Uint8Array[],
  { fastLane = true }: { fastLane?: boolean } = {},
): Promise<{ decoded: Decoded; fastLane: number }> {
  const accumulator = new StreamAccumulator({ isToolName: (name) => FIXTURE_TOOLS.has(name) });
  let spoken = '';
  let chunks = 0;
  let laned = 0;
  const { done, error } = feedAll(
    parts,
    (chunk) => {
      chunks++;
      for (const event of accumulator.push(chunk)) if (event.type === 'content') spoken += event.text;
    },
    {
      onContent: fastLane
        ? (text) => {
            chunks++;
            laned++;
            spoken += accumulator.pushContent(text);
          }
        : undefined,
    },
  );
  const finished = accumulator.finish(done === true);
  spoken += finished.tail;
  const snapshot = accumulator.snapshot();
  const rawCalls = finished.ok && finished.message.callsFromText ? finished.message.calls : [];
  const decoded: Decoded = {
    chunks,
    done,
    error: error && { kind: error.kind, message: error.message, detail: error.detail },
    id: snapshot.id ?? null,
    model: snapshot.model ?? null,
    content: snapshot.content,
    reasoning: snapshot.reasoning,
    refusal: snapshot.refusal,
    toolCalls: snapshot.toolCalls.map((call) => ({ ...call, parsedArguments: parseOrMark(call.arguments) })),
    finishReason: snapshot.finishReason,
    usage: snapshot.usage ?? null,
    spoken,
    rawCalls: rawCalls.map((call) => ({ name: call.name, parsedArguments: parseOrMark(call.arguments) })),
  };
  return { decoded, fastLane: laned };
}

function parseOrMark(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return { invalidJson: text };
  }
}
