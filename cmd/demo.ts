/**
 * `earpiece demo`: a short spoken conversation with tools, with no GPU and no network. A stand-in model
 * that streams in vLLM's tool-call format, a local weather service, and the real proxy between them;
 * the client is Unmute's exact request shape, and what it would speak is printed as it streams.
 */
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import {
  type RecordedRequest,
  type ScriptedReply,
  startScriptedUpstream,
  textReply,
  toolCallReply,
} from '../src/proxy/scripted-upstream.js';
import { startProxy } from '../src/proxy/start.js';
import { createTelemetry } from '../src/telemetry/index.js';
import { createLogger } from '../src/telemetry/log.js';

const CITIES: Record<string, { latitude: number; longitude: number; temperature: number; wind: number }> = {
  lisbon: { latitude: 38.72, longitude: -9.14, temperature: 24, wind: 12 },
  oslo: { latitude: 59.91, longitude: 10.75, temperature: 7, wind: 31 },
};

const CONVERSATION = [
  "What's the weather in Lisbon?",
  'Is it windy there?',
  'What time is it in Tokyo?',
  "And what's 12.5 times 4?",
  'Please turn on the kitchen light.',
];

/** A smart-home MCP server (Streamable HTTP, stateless), like Home Assistant's /api/mcp. */
async function startHomeServer(): Promise<{ url: string; lights: Map<string, boolean>; close(): void }> {
  const { McpServer } = await import('@modelcontextprotocol/sdk/server/mcp.js');
  const { StreamableHTTPServerTransport } = await import(
    '@modelcontextprotocol/sdk/server/streamableHttp.js'
  );
  const { z } = await import('zod');
  const lights = new Map([['kitchen', false]]);
  const http = createServer(async (req, res) => {
    const server = new McpServer({ name: 'demo-home', version: '1.0.0' });
    server.registerTool(
      'TurnOn',
      { description: 'Turns on a light by room name.', inputSchema: { room: z.string() } },
      async ({ room }) => {
        lights.set(room, true);
        return { content: [{ type: 'text', text: `The ${room} light is on.` }] };
      },
    );
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => void transport.close());
    await server.connect(transport);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    await transport.handleRequest(req, res, text ? JSON.parse(text) : undefined);
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  return {
    url: `http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`,
    lights,
    close: () => http.close(),
  };
}

/** The stand-in model: decides from the last message what a tool-calling model would do. */
function model(request: RecordedRequest): ScriptedReply {
  const messages = request.body.messages ?? [];
  const last = messages.at(-1);
  const dialect = 'vllm-hermes';
  if (last?.role === 'tool') {
    let parsed: unknown;
    try {
      parsed = JSON.parse(String(last.content));
    } catch {
      parsed = String(last.content);
    }
    const result = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
    if ('temperature_2m' in result) {
      return {
        sse: textReply(`It's ${result.temperature_2m} degrees and mostly sunny.`, dialect, { delayMs: 30 }),
      };
    }
    if (typeof parsed === 'string' && parsed.includes('light')) {
      return { sse: textReply(`Done. ${parsed}`, dialect, { delayMs: 30 }) };
    }
    if ('weekday' in result) {
      const time = String(result.datetime).slice(11, 16);
      return { sse: textReply(`It's ${time} on ${result.weekday} in Tokyo.`, dialect, { delayMs: 30 }) };
    }
    return { sse: textReply(`That makes ${String(last.content)}.`, dialect, { delayMs: 30 }) };
  }
  const text = String(last?.content ?? '').toLowerCase();
  const city = Object.keys(CITIES).find((c) => text.includes(c));
  if (text.includes('weather') && city) {
    const { latitude, longitude } = CITIES[city] as (typeof CITIES)[string];
    return { sse: toolCallReply([{ name: 'get_weather', arguments: { latitude, longitude } }], dialect) };
  }
  if (text.includes('windy')) {
    // The earlier weather result is in the history again (tool memory), so the model can answer from it.
    const remembered = messages.find(
      (m) => m.role === 'tool' && String(m.content).includes('wind_speed_10m'),
    );
    const wind = remembered ? JSON.parse(String(remembered.content)).wind_speed_10m : undefined;
    const answer =
      wind === undefined
        ? "I'd have to check again."
        : `The wind is at ${wind} kilometres per hour, so just a breeze.`;
    return { sse: textReply(answer, dialect, { delayMs: 30 }) };
  }
  if (text.includes('light')) {
    return { sse: toolCallReply([{ name: 'home_TurnOn', arguments: { room: 'kitchen' } }], dialect) };
  }
  if (text.includes('times'))
    return { sse: toolCallReply([{ name: 'calculate', arguments: { expression: '12.5 * 4' } }], dialect) };
  if (text.includes('time'))
    return { sse: toolCallReply([{ name: 'current_time', arguments: { timezone: 'Asia/Tokyo' } }], dialect) };
  return { sse: textReply('Hi! Ask me about the weather or the time.', dialect, { delayMs: 30 }) };
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log(
      'Usage: earpiece demo\n\nA spoken conversation with tools through the real proxy, with no GPU and no network.',
    );
    return 0;
  }
  const out = process.stdout;

  // A local weather service shaped like Open-Meteo's /v1/forecast.
  const weather = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const lat = Number(url.searchParams.get('latitude'));
    const found = Object.values(CITIES).find((c) => Math.abs(c.latitude - lat) < 0.01);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(
      JSON.stringify({
        latitude: lat,
        current: {
          time: new Date().toISOString(),
          temperature_2m: found?.temperature ?? 15,
          wind_speed_10m: found?.wind ?? 5,
        },
      }),
    );
  });
  weather.listen(0, '127.0.0.1');
  await once(weather, 'listening');
  const weatherUrl = `http://127.0.0.1:${(weather.address() as AddressInfo).port}`;
  const upstream = await startScriptedUpstream({ respond: model, models: ['Qwen/Qwen2.5-7B-Instruct'] });
  const home = await startHomeServer();

  const dir = await mkdtemp(join(tmpdir(), 'earpiece-demo-'));
  const toolsetPath = join(dir, 'toolset.yaml');
  await writeFile(
    toolsetPath,
    stringify({
      apiVersion: 'earpiece.dev/v1alpha1',
      kind: 'ToolSet',
      metadata: { name: 'demo' },
      spec: {
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
          // Every tool the smart-home MCP server lists, prefixed; a light switch completes even on barge-in.
          { mcp: { url: home.url, prefix: 'home_' }, filler: 'Sure. ', onInterrupt: 'finish' },
        ],
      },
    }),
  );

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
  } finally {
    await proxy.close();
    await upstream.close();
    weather.close();
    home.close();
    await rm(dir, { recursive: true, force: true });
  }
  return 0;
}
