/**
 * The tool memory's per-request cost: ToolMemory.prepare on a 40-message Unmute history (a ~3 KB system
 * prompt, as Unmute's are, then 39 spoken turns), in process, with the ToolSet defaults (2 turns, 4 KiB,
 * 1,000 entries). Two cases: a hit (two earlier tool exchanges of this conversation are spliced back)
 * and a miss (the cache is full of other conversations). Reported: the median of several runs.
 */
import { ToolMemory } from '../src/proxy/memory.js';
import type { ChatMessage } from '../src/proxy/messages.js';
import { DEFAULTS } from '../src/toolset/defaults.js';
import { SYSTEM_PROMPT } from './protocol.js';

const RUNS = 9;
const ITERATIONS = 20_000;

export interface LookupCost {
  hitUs: number;
  missUs: number;
  /** Per-run figures for the hit case, µs. */
  hitRuns: number[];
  historyChars: number;
}

/** system + 19 user/assistant pairs + the new user message = 40 messages. */
function history(tag: string): ChatMessage[] {
  const messages: ChatMessage[] = [{ role: 'system', content: SYSTEM_PROMPT }];
  for (let i = 0; i < 19; i++) {
    messages.push({
      role: 'user',
      content: `Question ${i} from ${tag}: what is the weather like in Lisbon today?`,
    });
    messages.push({
      role: 'assistant',
      content: `It is ${15 + (i % 10)} degrees in Lisbon with a light breeze, a good day for a walk by the river.`,
    });
  }
  messages.push({ role: 'user', content: `And ${tag}, is it windy there now?` });
  return messages;
}

function exchange(turn: number): ChatMessage[] {
  const id = `chatcmpl-tool-${turn.toString(16).padStart(32, '0')}`;
  return [
    {
      role: 'assistant',
      content: null,
      tool_calls: [
        { id, type: 'function', function: { name: 'get_weather', arguments: '{"place": "Lisbon"}' } },
      ],
    },
    { role: 'tool', tool_call_id: id, content: '{"temperature_2m":21,"wind_speed_10m":12}' },
  ];
}

function timeRun(memory: ToolMemory, messages: ChatMessage[], iterations: number): number {
  let sink = 0;
  const start = performance.now();
  for (let i = 0; i < iterations; i++) sink += memory.prepare(messages).messages.length;
  const us = ((performance.now() - start) * 1000) / iterations;
  if (sink === 0) throw new Error('prepare returned nothing');
  return us;
}

const median = (values: number[]) =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] as number;

export function measureLookup(): LookupCost {
  const memory = new ToolMemory({
    turns: DEFAULTS.memoryTurns,
    ttlMs: 15 * 60_000,
    maxBytes: DEFAULTS.memoryMaxBytes,
    maxEntries: DEFAULTS.memoryMaxEntries,
  });
  // Other conversations fill the cache up to its limit.
  for (let c = 0; c < DEFAULTS.memoryMaxEntries - 3; c++) {
    const other = history(`caller ${c}`);
    memory.remember(other.slice(0, 2 + 2 * (c % 19)), exchange(c));
  }
  // Three earlier turns of this conversation ran tools; the newest two fit the default turns.
  const mine = history('me');
  for (const turn of [5, 11, 17]) memory.remember(mine.slice(0, 2 + 2 * turn), exchange(turn));
  const hitCheck = memory.prepare(mine);
  if (hitCheck.spliced !== DEFAULTS.memoryTurns)
    throw new Error(`expected 2 splices, got ${hitCheck.spliced}`);
  const stranger = history('stranger');
  if (memory.prepare(stranger).spliced !== 0) throw new Error('a stranger got a splice');

  timeRun(memory, mine, ITERATIONS);
  timeRun(memory, stranger, ITERATIONS);
  const hitRuns: number[] = [];
  const missRuns: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    hitRuns.push(timeRun(memory, mine, ITERATIONS));
    missRuns.push(timeRun(memory, stranger, ITERATIONS));
  }
  const historyChars = mine.reduce((n, m) => n + String(m.content ?? '').length, 0);
  return { hitUs: median(hitRuns), missUs: median(missRuns), hitRuns, historyChars };
}
