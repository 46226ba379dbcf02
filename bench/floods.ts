/**
 * Hostile clients at the chat port, for the benchmark (the proxy's resident-memory peak under each) and the
 * chaos tests (the proxy answers each with a bounded cost and stays well). Each flood resolves with how its
 * requests were answered: an HTTP status, `closed` when the proxy ended the connection without one, or
 * `unanswered` when the client gave up first.
 */
import { connect, type Socket } from 'node:net';

export type Answers = Record<string, number>;

/** Connections open 50 at a time, 20 ms apart: the flood measures the proxy, not the kernel's accept queue. */
const staggerMs = (i: number) => Math.floor(i / 50) * 20;

function count(answers: Answers, key: string): void {
  answers[key] = (answers[key] ?? 0) + 1;
}

function statusOf(text: string): string {
  return /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 'closed';
}

function open(url: string): Socket {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  socket.setNoDelay(true);
  return socket;
}

function chatHead(bytes: number, stream = false): string {
  return (
    'POST /v1/chat/completions HTTP/1.1\r\nhost: earpiece\r\ncontent-type: application/json\r\n' +
    `content-length: ${bytes}\r\nconnection: close\r\n${stream ? 'accept: text/event-stream\r\n' : ''}\r\n`
  );
}

/** A chat request whose one user message is padded to make the body `bytes` long. */
export function chatBody(bytes: number, options: { stream?: boolean; text?: string } = {}): string {
  const request = (content: string) =>
    JSON.stringify({
      model: 'flood',
      stream: options.stream ?? false,
      messages: [{ role: 'user', content }],
    });
  const text = options.text ?? '';
  return request(text + ' '.repeat(Math.max(0, bytes - request(text).length)));
}

/**
 * `clients` connections each declare a body of `bytes`, send all but its last KB at once, then one byte a
 * second: bodies that never arrive. Ends when every connection has been answered or closed, or after `forMs`.
 */
export async function slowBodies(
  url: string,
  options: { clients: number; bytes: number; forMs: number },
): Promise<Answers> {
  const answers: Answers = {};
  const body = chatBody(options.bytes);
  const sent = body.slice(0, body.length - 1024);
  await Promise.all(
    Array.from({ length: options.clients }, (_, i) =>
      new Promise<void>((resolve) => {
        setTimeout(resolve, staggerMs(i));
      }).then(
        () =>
          new Promise<void>((resolve) => {
            const socket = open(url);
            let text = '';
            let at = sent.length;
            const drip = setInterval(() => {
              if (at < body.length - 1) socket.write(body[at++] as string);
            }, 1000);
            let gaveUp = false;
            const giveUp = setTimeout(() => {
              gaveUp = true;
              socket.destroy();
            }, options.forMs);
            socket.setEncoding('latin1');
            socket.on('data', (d: string) => {
              text += d;
            });
            socket.on('error', () => {});
            socket.on('close', () => {
              clearInterval(drip);
              clearTimeout(giveUp);
              count(answers, gaveUp ? 'unanswered' : statusOf(text));
              resolve();
            });
            socket.write(chatHead(Buffer.byteLength(body)) + sent);
          }),
      ),
    ),
  );
  return answers;
}

/** `total` whole chat requests of `bytes` each, `concurrency` at a time; answers read and dropped. */
export async function requestFlood(
  url: string,
  options: { total: number; concurrency: number; bytes: number; stream?: boolean; text?: string },
): Promise<Answers> {
  const answers: Answers = {};
  const body = chatBody(options.bytes, options);
  const head = chatHead(Buffer.byteLength(body), options.stream);
  let started = 0;
  const one = () =>
    new Promise<void>((resolve) => {
      const socket = open(url);
      let first = '';
      socket.on('data', (d: Buffer) => {
        if (first.length < 16) first += d.toString('latin1', 0, 16);
      });
      socket.on('error', () => {});
      socket.on('close', () => {
        count(answers, statusOf(first));
        resolve();
      });
      socket.write(head);
      socket.write(body);
    });
  await Promise.all(
    Array.from({ length: options.concurrency }, async () => {
      while (started < options.total) {
        started++;
        await one();
      }
    }),
  );
  return answers;
}

export interface FloodPeak {
  name: string;
  answers: Answers;
  /** The proxy's resident-memory peak (VmHWM) during this flood alone, MB. */
  peakMb: number;
  seconds: number;
}

/** The floods the benchmark reports on: the red team's slow bodies, large bodies, many non-streaming turns. */
export const FLOODS: { name: string; run: (url: string) => Promise<Answers> }[] = [
  {
    name: '1,500 slow bodies of 512 KB (never finished)',
    run: (url) => slowBodies(url, { clients: 1500, bytes: 512 * 1024, forMs: 60_000 }),
  },
  {
    name: '60 bodies of 8 MB, 30 at a time',
    run: (url) => requestFlood(url, { total: 60, concurrency: 30, bytes: 8 * 1024 * 1024 }),
  },
  {
    name: '1,000 non-streaming turns, 100 at a time',
    run: (url) => requestFlood(url, { total: 1000, concurrency: 100, bytes: 2048 }),
  },
];
