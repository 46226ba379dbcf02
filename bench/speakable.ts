/**
 * The speakable-text filter's cost, in process: a model answer with the markdown, emojis and a URL a
 * voice prompt discourages but models still write, cut into token-sized deltas (1 to 6 characters, as
 * vLLM and OpenRouter stream them), pushed one at a time. Reported: the cost of one push (p50, p99 over
 * every delta of every run), and the first-word delay the filter adds: the time from the first delta's
 * arrival to the first speakable text, counted in deltas held back (0 when the first word passes at
 * once) and in CPU time. Run alone: `node dist/bench/speakable.js`.
 */
import { fileURLToPath } from 'node:url';
import { SpeakableFilter } from '../src/proxy/speakable.js';

const ANSWERS = [
  "**Sure!** Here's the forecast for *Paris* 🌤️:\n\n- Today: 21 °C, light wind\n- Tomorrow: ~~rain~~ sun\n\nDetails at https://www.meteo.example.com/paris?days=2. Enjoy! 😊",
  '# Your order\nIt shipped on `Monday` and arrives __Thursday__. Track it at https://track.example.net/a1b2c3.',
  'It is twenty one degrees in Lisbon now, with a light breeze coming from the sea.',
  "```\nerror: not found\n```\nSorry, I couldn't find that flight. 🙁 Try again later?",
];
const RUNS = 2_000;

export interface SpeakableCost {
  deltas: number;
  pushP50Us: number;
  pushP99Us: number;
  /** Deltas pushed before the first speakable text, over the answers (max). */
  firstWordDeltasHeldMax: number;
  /** CPU time from the first push to the first speakable text, µs (p50). */
  firstWordP50Us: number;
}

/** Token-sized pieces, 1 to 6 characters, from a fixed pseudo-random sequence (the same every run). */
function deltas(text: string, seed: number): string[] {
  const out: string[] = [];
  let s = seed;
  const chars = [...text];
  for (let i = 0; i < chars.length; ) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const n = 1 + (s % 6);
    out.push(chars.slice(i, i + n).join(''));
    i += n;
  }
  return out;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

export function measureSpeakable(): SpeakableCost {
  const streams = ANSWERS.flatMap((a, i) => [deltas(a, i + 1), deltas(a, i + 101)]);
  const pushes: number[] = [];
  const firstWord: number[] = [];
  let heldMax = 0;
  let sink = 0;
  for (let run = 0; run < RUNS; run++) {
    for (const stream of streams) {
      const filter = new SpeakableFilter();
      let first: number | undefined;
      const started = performance.now();
      for (const [i, delta] of stream.entries()) {
        const t = performance.now();
        const out = filter.push(delta);
        const now = performance.now();
        // The first runs warm the code up; only later ones count.
        if (run >= RUNS / 4) pushes.push((now - t) * 1000);
        sink += out.length;
        if (first === undefined && out.trim() !== '') {
          first = (now - started) * 1000;
          heldMax = Math.max(heldMax, i);
        }
      }
      sink += filter.finish().length;
      if (run >= RUNS / 4 && first !== undefined) firstWord.push(first);
    }
  }
  if (sink === 0) throw new Error('the filter spoke nothing');
  return {
    deltas: streams.reduce((n, s) => n + s.length, 0),
    pushP50Us: percentile(pushes, 50),
    pushP99Us: percentile(pushes, 99),
    firstWordDeltasHeldMax: heldMax,
    firstWordP50Us: percentile(firstWord, 50),
  };
}

export function renderSpeakable(c: SpeakableCost): string {
  return (
    `Speakable-text filter (in process, ${c.deltas} deltas of 1 to 6 characters per run, ${RUNS} runs): ` +
    `${c.pushP50Us.toFixed(2)} µs per delta p50 (target ≤ 50 µs, ${c.pushP50Us <= 50 ? 'pass' : '**FAIL**'}), ` +
    `${c.pushP99Us.toFixed(2)} µs p99; first word after ${c.firstWordP50Us.toFixed(2)} µs of filtering p50, ` +
    `at most ${c.firstWordDeltasHeldMax} delta(s) held back before it (a leading marker such as "**" or "# ").\n`
  );
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(renderSpeakable(measureSpeakable()));
}
