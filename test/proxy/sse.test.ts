import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { type BodyReader, type PushedBody, streamChunks, UpstreamStreamError } from '../../src/proxy/sse.js';
import { Upstream } from '../../src/proxy/upstream.js';
import { cut, loadStreamFixture, loadStreamFixtures, type Read, readAll } from './fixtures.js';

const encode = (text: string) => new TextEncoder().encode(text);
const read = (text: string, options?: { maxEventBytes?: number }) => readAll([encode(text)], options);
const one = { choices: [{ index: 0, delta: { content: 'Hi' } }] };
const two = { choices: [{ index: 0, delta: { content: ' there' } }] };

/** What must not depend on read boundaries: the chunks, the end, and the error. */
const outcome = (r: Read) => ({
  chunks: r.chunks,
  done: r.done,
  error: r.error && { kind: r.error.kind, message: r.error.message, detail: r.error.detail },
});

describe('ChunkDecoder framing', () => {
  it.each([
    ['LF', '\n'],
    ['CRLF', '\r\n'],
    ['CR', '\r'],
  ])('reads events ended by %s', async (_, eol) => {
    const text = `data: ${JSON.stringify(one)}${eol}${eol}data: ${JSON.stringify(two)}${eol}${eol}data: [DONE]${eol}${eol}`;
    expect(read(text)).toEqual({ chunks: [one, two], done: true, error: null });
    expect(outcome(readAll(cut(encode(text), [...encode(text).keys()])))).toEqual(outcome(read(text)));
  });

  it('joins multi-line data with a newline and takes data: without a space', async () => {
    const r = read('data:{"choices":\ndata: [{"index":0,"delta":{"content":"a"}}]}\n\ndata:[DONE]\n\n');
    expect(r).toEqual({
      chunks: [{ choices: [{ index: 0, delta: { content: 'a' } }] }],
      done: true,
      error: null,
    });
  });

  it('ignores comments, keep-alives, event, id and retry fields, and empty data', async () => {
    const text = [
      ': keep-alive',
      '',
      ':',
      'event: message',
      'id: 7',
      'retry: 3000',
      'retry: soon',
      `data: ${JSON.stringify(one)}`,
      '',
      ': OPENROUTER PROCESSING',
      '',
      'data:',
      '',
      'data: [DONE]',
      '',
      '',
    ].join('\n');
    expect(read(text)).toEqual({ chunks: [one], done: true, error: null });
  });

  it('skips a leading byte order mark, also when it is split across reads', async () => {
    const bytes = new Uint8Array([
      0xef,
      0xbb,
      0xbf,
      ...encode(`data: ${JSON.stringify(one)}\n\ndata: [DONE]\n\n`),
    ]);
    const expected = { chunks: [one], done: true, error: null };
    expect(readAll([bytes])).toEqual(expected);
    expect(readAll(cut(bytes, [1, 2, 3, 4]))).toEqual(expected);
  });

  it.each([
    ['no newline', 'data: [DONE]'],
    ['one LF', 'data: [DONE]\n'],
    ['one CR', 'data: [DONE]\r'],
    ['spaces', 'data:  [DONE] '],
  ])('ends on an unterminated [DONE] at EOF (%s)', async (_, last) => {
    expect(read(`data: ${JSON.stringify(one)}\n\n${last}`)).toEqual({
      chunks: [one],
      done: true,
      error: null,
    });
  });

  it('delivers a complete last event that lacks its blank line', async () => {
    expect(read(`data: ${JSON.stringify(one)}\n`)).toEqual({ chunks: [one], done: false, error: null });
  });

  it('reports EOF without [DONE] as done:false, dropping a cut-off last event', async () => {
    const text = `data: ${JSON.stringify(one)}\n\ndata: {"choices":[{"index":0,"delta":{"cont`;
    expect(read(text)).toEqual({ chunks: [one], done: false, error: null });
    expect(read('')).toEqual({ chunks: [], done: false, error: null });
  });
});

/** A body whose reads the test pushes by hand, as undici's dispatch handler pushes them. */
function handBody() {
  let reader: BodyReader | undefined;
  const state = { closed: undefined as Error | undefined | null };
  const body: PushedBody = {
    read: (r) => {
      reader = r;
    },
    close: (reason) => {
      state.closed = reason ?? null;
    },
  };
  const push = (text: string) => reader?.data(encode(text));
  return { body, push, end: () => reader?.end(), fail: (err: Error) => reader?.error(err), state };
}

describe('streamChunks', () => {
  it('resolves at [DONE] without waiting for the end of the body, and ignores what follows', async () => {
    const hand = handBody();
    const chunks: unknown[] = [];
    const result = streamChunks(hand.body, (chunk) => chunks.push(chunk));
    hand.push(`data: ${JSON.stringify(one)}\n\ndata: [DONE]\n\ndata: {"x":1}\n\n`);
    expect(await result).toBe(true);
    hand.push('data: never\n\n');
    hand.end();
    // The body is left to end by itself, so its kept-alive socket can go back to the pool.
    expect([chunks, hand.state.closed]).toEqual([[one], undefined]);
  });

  it('delivers each event once its bytes are in, without waiting for the next read or the end', async () => {
    const hand = handBody();
    const chunks: unknown[] = [];
    const result = streamChunks(hand.body, (chunk) => chunks.push(chunk));
    const settle = () => new Promise((resolve) => setImmediate(resolve));
    hand.push(`data: ${JSON.stringify(one)}\n\nda`);
    await settle();
    expect(chunks).toEqual([one]);
    hand.push(`ta: ${JSON.stringify(two)}\n\n`);
    await settle();
    expect(chunks).toEqual([one, two]);
    hand.end();
    expect(await result).toBe(false);
  });

  it('closes the body and rejects on a decoding error or when the consumer throws', async () => {
    const broken = handBody();
    const decoding = streamChunks(broken.body, () => {});
    broken.push('data: {"choices": [\n\n');
    await expect(decoding).rejects.toMatchObject({ kind: 'malformed' });
    expect(broken.state.closed).toBeInstanceOf(UpstreamStreamError);

    const refusing = handBody();
    const consuming = streamChunks(refusing.body, () => {
      throw new Error('sink gone');
    });
    refusing.push(`data: ${JSON.stringify(one)}\n\n`);
    await expect(consuming).rejects.toThrow('sink gone');
    expect(refusing.state.closed).toMatchObject({ message: 'sink gone' });
  });

  it('rejects with the read error of a failed body', async () => {
    const hand = handBody();
    const result = streamChunks(hand.body, () => {});
    hand.fail(new Error('socket hang up'));
    await expect(result).rejects.toThrow('socket hang up');
  });
});

describe('ChunkDecoder errors', () => {
  const expectError = async (text: string, kind: string, options?: { maxEventBytes?: number }) => {
    const r = read(text, options);
    expect(r.error).toBeInstanceOf(UpstreamStreamError);
    expect(r.error).toMatchObject({ code: 'ERP_UPSTREAM_STREAM', kind, name: 'UpstreamStreamError' });
    return r;
  };

  it('throws on a data payload with a top-level error, after the chunks before it', async () => {
    const r = await expectError(
      `data: ${JSON.stringify(one)}\n\ndata: {"error": {"message": "boom", "type": "BadRequestError", "code": 400}}\n\ndata: [DONE]\n\n`,
      'error_event',
    );
    expect(r.chunks).toEqual([one]);
    expect(r.error?.detail).toEqual({ message: 'boom', type: 'BadRequestError', code: 400 });
    expect(r.error?.message).toBe('upstream reported an error mid-stream: boom');
  });

  it('takes a chunk with "error": null as a chunk', async () => {
    expect(read(`data: ${JSON.stringify({ ...one, error: null })}\n\n`).chunks).toHaveLength(1);
  });

  it('throws on an error event, with a JSON, text or empty payload', async () => {
    const json = await expectError(
      'event: error\ndata: {"error":{"message":"overloaded"}}\n\n',
      'error_event',
    );
    expect(json.error?.detail).toEqual({ message: 'overloaded' });
    const text = await expectError('event: error\ndata: upstream went away\n\n', 'error_event');
    expect(text.error?.detail).toBe('upstream went away');
    const empty = await expectError('event: error\ndata:\n\n', 'error_event');
    expect(empty.error?.detail).toBe('');
  });

  it("throws on llama.cpp's legacy error field, however the line is split", async () => {
    const { bytes } = loadStreamFixture('llamacpp-legacy-error-field');
    const whole = readAll([bytes]);
    expect(whole.error?.kind).toBe('error_event');
    expect(whole.error?.detail).toMatchObject({ code: 400, type: 'invalid_request_error' });
    for (let at = 1; at < 40; at++) expect(outcome(readAll(cut(bytes, [at])))).toEqual(outcome(whole));
  });

  it.each([
    ['broken JSON', 'data: {"choices": [\n\n'],
    ['a number', 'data: 42\n\n'],
    ['an array', 'data: [1, 2]\n\n'],
    ['a string', 'data: "text"\n\n'],
    ['null', 'data: null\n\n'],
    ['plain text', 'data: Internal Server Error\n\n'],
  ])('throws on a payload that is %s', async (_, text) => {
    const r = await expectError(`data: ${JSON.stringify(one)}\n\n${text}data: [DONE]\n\n`, 'malformed');
    expect(r.chunks).toEqual([one]);
    expect(r.error?.message).toMatch(/^upstream sent an event that is not a JSON object: /);
  });

  it('throws on an event bigger than maxEventBytes, counted in UTF-8 bytes', async () => {
    const event = (content: string) =>
      `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content } }] })}\n\n`;
    const frame = Buffer.byteLength(event('')) - 'data: \n\n'.length;
    // exactly at the cap is fine; one byte more is not
    expect(read(event('a'.repeat(100 - frame)), { maxEventBytes: 100 }).chunks).toHaveLength(1);
    const r = await expectError(event('a'.repeat(101 - frame)), 'too_large', { maxEventBytes: 100 });
    expect(r.error?.detail).toEqual({ maxEventBytes: 100 });
    // 'é' is one UTF-16 unit but two bytes
    await expectError(event('é'.repeat(60)), 'too_large', { maxEventBytes: 100 });
    // over the cap across several data lines, and on one line that never ends
    await expectError(`${'data: xxxxxxxxxx\n'.repeat(20)}\n`, 'too_large', { maxEventBytes: 100 });
    const endless = readAll(cut(encode(`data: ${'x'.repeat(500)}`), [50, 100, 150, 200, 250]), {
      maxEventBytes: 100,
    });
    expect(endless.error?.kind).toBe('too_large');
  });

  it('has a 1 MiB default cap', async () => {
    const big = `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'a'.repeat(1024 * 1024) } }] })}\n\n`;
    expect(read(big).error?.kind).toBe('too_large');
    const fits = `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: 'a'.repeat(1000 * 1024) } }] })}\n\n`;
    expect(read(fits).chunks).toHaveLength(1);
  });

  it('refuses an event whose JSON nests past 128 levels or holds past 100,000 objects, before parsing it', async () => {
    // Within 1 MiB each, these would parse into half a million objects or arrays.
    const deep = `data: {"choices":${'['.repeat(200_000)}${']'.repeat(200_000)}}\n\n`;
    const many = `data: {"choices":[${'{},'.repeat(300_000)}{}]}\n\n`;
    for (const [text, bound] of [
      [deep, 'nests JSON more than 128 levels deep'],
      [many, 'holds more than 100000 JSON objects and arrays'],
    ] as const) {
      const r = await expectError(`data: ${JSON.stringify(one)}\n\n${text}`, 'too_large');
      expect(r.chunks).toEqual([one]);
      expect(r.error?.message).toContain(bound);
    }
    // Brackets inside text are text.
    const bracketed = { choices: [{ index: 0, delta: { content: '['.repeat(10_000) } }] };
    expect(read(`data: ${JSON.stringify(bracketed)}\n\n`).chunks).toEqual([bracketed]);
    // An error event's payload that deep is kept as its text, not parsed.
    const error = await expectError(`event: error\ndata: ${'['.repeat(200_000)}\n\n`, 'error_event');
    expect(error.error?.detail).toBe('['.repeat(200_000));
  });
});

describe('decoding the recorded streams', () => {
  const fixtures = loadStreamFixtures();

  it('yields the same chunks, end and error whatever the byte boundaries between reads', async () => {
    for (const fixture of fixtures) {
      const whole = outcome(readAll([fixture.bytes]));
      expect(whole.chunks.length + (whole.error ? 1 : 0)).toBeGreaterThan(0);
      await fc.assert(
        fc.asyncProperty(fc.array(fc.nat(fixture.bytes.length), { maxLength: 60 }), async (offsets) => {
          expect(outcome(readAll(cut(fixture.bytes, offsets)))).toEqual(whole);
        }),
        { numRuns: 100 },
      );
    }
  });

  describe('from a real HTTP response', () => {
    let server: Server | undefined;
    afterEach(async () => {
      server?.closeAllConnections();
      await new Promise((resolve) => server?.close(resolve));
      server = undefined;
    });

    const listen = async (handler: Parameters<typeof createServer>[1]) => {
      server = createServer(handler);
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      return `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    };

    const chat = async (url: string) => {
      const upstream = new Upstream({ url, timeoutMs: 5000 });
      const source = await upstream.chat(JSON.stringify({ messages: [] }), {}, new AbortController().signal)
        .response;
      return { upstream, source };
    };

    it('decodes an undici body written in small pieces like the whole buffer', async () => {
      const { bytes } = loadStreamFixture('vllm-llama3json-unicode-args');
      const url = await listen(async (_, res) => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        for (const part of cut(
          bytes,
          Array.from({ length: bytes.length / 7 }, (_, i) => i * 7 + 3),
        )) {
          res.write(part);
          await new Promise((resolve) => setImmediate(resolve));
        }
        res.end();
      });
      const { upstream, source } = await chat(url);
      const chunks: unknown[] = [];
      const done = await source.read((chunk) => chunks.push(chunk));
      const whole = readAll([bytes]);
      expect({ chunks, done }).toEqual({ chunks: whole.chunks, done: true });
      await upstream.close();
    });

    it('closes the upstream response when the reader stops', async () => {
      let responseClosed: Promise<unknown> | undefined;
      const url = await listen((_, res) => {
        responseClosed = once(res, 'close');
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write(`data: ${JSON.stringify(one)}\n\n`);
      });
      const { upstream, source } = await chat(url);
      const seen: unknown[] = [];
      const read = source.read((chunk) => {
        seen.push(chunk);
        throw new Error('the reader stops');
      });
      await expect(read).rejects.toThrow('the reader stops');
      expect(seen).toEqual([one]);
      await responseClosed;
      await upstream.close();
    });
  });
});
