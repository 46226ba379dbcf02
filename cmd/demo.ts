/**
 * `earpiece demo`: a short spoken conversation with tools, with no GPU and no network. A stand-in model
 * that streams in vLLM's tool-call format, a local weather service, and the real proxy between them;
 * the client is Unmute's exact request shape, and what it would speak is printed as it streams.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { startHomeServer } from '../src/demo/home-mcp.js';
import { demoModel } from '../src/demo/model.js';
import { startScriptedUpstream } from '../src/demo/scripted-upstream.js';
import { startWeatherService } from '../src/demo/weather.js';
import { startProxy } from '../src/proxy/start.js';
import { createTelemetry } from '../src/telemetry/index.js';
import { createLogger } from '../src/telemetry/log.js';
import { writeToolSetFile } from '../src/toolset/load.js';

const CONVERSATION = [
  "What's the weather in Lisbon?",
  'Is it windy there?',
  'What time is it in Tokyo?',
  "And what's 12.5 times 4?",
  'Please turn on the kitchen light.',
  // A slow tool: the still-working line fills the silence.
  "What's the week looking like?",
  // A tool slower than a turn should wait (deferAfter): the answer comes on the next turn.
  'Can you plan my cycling route to work?',
  // Unmute's silence marker, sent after the user has been quiet for a while: it carries the late result.
  '...',
];

const HELP =
  'Usage: earpiece demo\n\nA spoken conversation with tools through the real proxy, with no GPU and no network.';

export async function main(argv: string[]): Promise<number> {
  let help: boolean | undefined;
  try {
    ({ help } = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' } } }).values);
  } catch (err) {
    console.error(`earpiece demo: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (help) {
    console.log(HELP);
    return 0;
  }
  const out = process.stdout;

  const weather = await startWeatherService();
  const weatherUrl = weather.url;
  const upstream = await startScriptedUpstream({ respond: demoModel, models: ['Qwen/Qwen2.5-7B-Instruct'] });
  const home = await startHomeServer();

  const dir = await mkdtemp(join(tmpdir(), 'earpiece-demo-'));
  const toolsetPath = await writeToolSetFile(dir, 'demo', {
    instructions: 'You can look things up with tools. Answer in one short spoken sentence.',
    tools: [
      {
        name: 'get_weather',
        description: 'Current temperature and wind for a place.',
        parameters: {
          type: 'object',
          properties: { latitude: { type: 'number' }, longitude: { type: 'number' } },
          required: ['latitude', 'longitude'],
        },
        filler: 'Let me check the weather. ',
        cache: { ttl: '10m' },
        http: {
          url: `${weatherUrl}/v1/forecast{?latitude,longitude}&current=temperature_2m,wind_speed_10m`,
          select: '/current',
        },
      },
      { name: 'current_time', description: 'The current time in a time zone.', builtin: 'time' },
      { name: 'calculate', description: 'Arithmetic.', builtin: 'calculator' },
      {
        name: 'get_outlook',
        description: "The week's weather outlook.",
        filler: 'Let me look at the week. ',
        http: { url: `${weatherUrl}/v1/outlook` },
      },
      {
        name: 'plan_route',
        description: 'Plans a cycling route to work (slow).',
        timeout: '10s',
        deferAfter: '2s',
        http: { url: `${weatherUrl}/v1/route` },
      },
      // Every tool the smart-home MCP server lists, prefixed; a light switch completes even on barge-in.
      { mcp: { url: home.url, prefix: 'home_' }, filler: 'Sure. ', onInterrupt: 'finish' },
    ],
  });

  // Tool lines are shown where they happened in the stream: after the filler, before the answer.
  const pendingToolLines: string[] = [];
  const flushToolLines = () => {
    for (const line of pendingToolLines.splice(0)) out.write(line);
  };
  const real = await createTelemetry();
  const telemetry: typeof real = {
    ...real,
    metrics: () => real.metrics(),
    get contentType() {
      return real.contentType;
    },
    toolCall(record) {
      real.toolCall(record);
      pendingToolLines.push(
        `\n    ↳ tool ${record.tool}: ${record.outcome} in ${(record.seconds * 1000).toFixed(1)} ms\n           `,
      );
    },
  };
  const proxy = await startProxy({
    toolsetPath,
    upstreamUrl: upstream.url,
    host: '127.0.0.1',
    port: 0,
    metricsHost: '127.0.0.1',
    metricsPort: 0,
    logger: createLogger('demo', 'warn'),
    telemetry,
    watch: false,
  });

  out.write(
    `earpiece demo: Unmute → earpiece (${proxy.url}) → a stand-in model speaking vLLM's hermes tool-call format\n`,
  );
  out.write('Tools: get_weather (HTTP), current_time and calculate (builtin), home_* (an MCP server)\n\n');
  const history: { role: string; content: string }[] = [
    { role: 'system', content: 'You are a friendly voice assistant.' },
  ];
  try {
    for (const question of CONVERSATION) {
      // Unmute sends its silence marker after the user has been quiet for some seconds.
      if (question === '...') await new Promise((r) => setTimeout(r, 5000));
      // A deferred call that finished after its turn.
      for (const line of pendingToolLines.splice(0)) out.write(`${line.trim()} (after its turn ended)\n\n`);
      history.push({ role: 'user', content: question });
      out.write(`you:       ${question}\nassistant: `);
      const started = performance.now();
      let first: number | undefined;
      // Unmute's request: model, messages, stream, temperature; Authorization: Bearer EMPTY.
      const res = await fetch(`${proxy.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer EMPTY' },
        body: JSON.stringify({
          model: 'Qwen/Qwen2.5-7B-Instruct',
          messages: history,
          stream: true,
          temperature: 0.3,
        }),
      });
      let spoken = '';
      const decoder = new TextDecoder();
      let buffer = '';
      for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true });
        let end = buffer.indexOf('\n\n');
        while (end >= 0) {
          const event = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          end = buffer.indexOf('\n\n');
          if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
          const content = JSON.parse(event.slice(6)).choices?.[0]?.delta?.content as string | undefined;
          if (!content) continue;
          first ??= performance.now();
          if (spoken !== '') flushToolLines();
          spoken += content;
          out.write(content);
          flushToolLines();
        }
      }
      flushToolLines();
      out.write(
        `\n           (first words after ${((first ?? performance.now()) - started).toFixed(0)} ms)\n\n`,
      );
      history.push({ role: 'assistant', content: spoken.trim() });
    }
    out.write(
      'The follow-up "Is it windy there?" was answered from the first turn\'s weather result, which the proxy\n',
    );
    out.write('put back into the history (Unmute itself keeps only what was spoken).\n');
    out.write(`The kitchen light is ${home.lights.get('kitchen') ? 'on' : 'off'}, switched through MCP.\n`);
    out.write(
      'The week\'s outlook took longer than voice.stillWorkingAfter (3 s): "Still working on it." filled the silence.\n',
    );
    out.write(
      'The route took longer than its deferAfter (2 s): the turn ended on a promise, and the late result was put\n' +
        "into the next request (Unmute's silence marker) with a note that it had just arrived.\n",
    );
  } finally {
    await proxy.close();
    await upstream.close();
    weather.close();
    home.close();
    await rm(dir, { recursive: true, force: true });
  }
  return 0;
}
