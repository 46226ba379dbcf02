import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { stringify } from 'yaml';
import {
  lastUserText,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { startProxy } from '../../src/proxy/start.js';
import { createLogger } from '../../src/telemetry/log.js';
import { OtlpReceiver, SPAN_KIND } from '../support/otlp-receiver.js';
import { toolsetDoc } from '../support/proxy.js';

const CLIENT_TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const CLIENT_SPAN_ID = 'b7ad6b7169203331';

let receiver: OtlpReceiver;
beforeAll(async () => {
  receiver = await OtlpReceiver.start();
});
afterAll(async () => {
  await receiver.close();
});

test('a two-tool turn through the real proxy exports its spans under the client trace', async () => {
  const weather = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }).end('{"temperature":21}');
  }).listen(0, '127.0.0.1');
  await once(weather, 'listening');
  const upstream = await startScriptedUpstream({
    respond: (request) =>
      toolResults(request).length === 0
        ? {
            sse: toolCallReply([
              {
                name: 'get_weather',
                arguments: { city: lastUserText(request).includes('Paris') ? 'Paris' : '' },
              },
              { name: 'current_time', arguments: { timezone: 'Europe/Paris' } },
            ]),
          }
        : { sse: textReply('It is 21 degrees in Paris, and noon.') },
  });
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-tracing-'));
  const toolsetPath = join(dir, 'toolset.yaml');
  await writeFile(
    toolsetPath,
    stringify(
      toolsetDoc(
        {
          tools: [
            {
              name: 'get_weather',
              description: 'Weather for a city',
              parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
              http: { url: `http://127.0.0.1:${(weather.address() as AddressInfo).port}/weather{?city}` },
            },
            { name: 'current_time', builtin: 'time' },
          ],
        },
        'assistant',
      ),
    ),
  );
  Object.assign(process.env, {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    OTEL_SERVICE_NAME: 'earpiece-proxy',
  });
  const proxy = await startProxy({
    toolsetPath,
    upstreamUrl: upstream.url,
    host: '127.0.0.1',
    port: 0,
    metricsHost: '127.0.0.1',
    metricsPort: 0,
    watch: false,
    logger: createLogger('test', 'silent'),
  });
  try {
    const client = new OpenAI({ apiKey: 'EMPTY', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
    const stream = await client.chat.completions.create(
      {
        model: 'scripted-model',
        stream: true,
        messages: [{ role: 'user', content: 'What is the weather in Paris, and the time?' }],
      },
      { headers: { traceparent: `00-${CLIENT_TRACE_ID}-${CLIENT_SPAN_ID}-01` } },
    );
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toContain('It is 21 degrees in Paris');
  } finally {
    // Closing the proxy flushes its telemetry.
    await proxy.close();
    await upstream.close();
    weather.close();
    await rm(dir, { recursive: true, force: true });
    for (const key of ['OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_SERVICE_NAME']) {
      delete process.env[key];
    }
  }

  await receiver.waitFor((r) => r.spans.length >= 5);
  expect(receiver.rejected).toEqual([]);
  const spans = receiver.spans;
  expect(spans.map((s) => s.name).sort()).toEqual([
    'chat scripted-model',
    'chat scripted-model',
    'execute_tool current_time',
    'execute_tool get_weather',
    'invoke_agent assistant',
  ]);
  const turn = spans.find((s) => s.name === 'invoke_agent assistant');
  expect(turn).toMatchObject({
    kind: SPAN_KIND.server,
    parentSpanId: CLIENT_SPAN_ID,
    serviceName: 'earpiece-proxy',
  });
  for (const span of spans) {
    expect(span.traceId).toBe(CLIENT_TRACE_ID);
    if (span !== turn) expect(span.parentSpanId, span.name).toBe(turn?.spanId);
  }
  for (const chat of spans.filter((s) => s.name.startsWith('chat '))) {
    expect(chat.kind).toBe(SPAN_KIND.client);
    expect(chat.attributes).toMatchObject({
      'gen_ai.operation.name': 'chat',
      'gen_ai.provider.name': 'openai',
      'gen_ai.request.model': 'scripted-model',
      'gen_ai.usage.input_tokens': 120,
      'gen_ai.usage.output_tokens': 24,
    });
  }
  for (const tool of ['get_weather', 'current_time']) {
    const span = spans.find((s) => s.name === `execute_tool ${tool}`);
    expect(span?.kind).toBe(SPAN_KIND.internal);
    expect(span?.statusCode).toBe(0);
    expect(span?.attributes).toMatchObject({
      'gen_ai.operation.name': 'execute_tool',
      'gen_ai.tool.name': tool,
    });
    expect(span?.attributes['gen_ai.tool.call.id']).toEqual(expect.any(String));
    // No arguments or results without EARPIECE_OTEL_CAPTURE_CONTENT.
    expect(span?.attributes['gen_ai.tool.call.arguments']).toBeUndefined();
  }
  // The upstream requests carry the trace on to the model server.
  for (const request of upstream.requests) {
    expect(String(request.headers.traceparent)).toMatch(
      new RegExp(`^00-${CLIENT_TRACE_ID}-[0-9a-f]{16}-01$`),
    );
  }

  await receiver.waitFor((r) => r.histogramPoints.some((p) => p.metric === 'gen_ai.execute_tool.duration'));
  const operation = receiver.histogramPoints.filter((p) => p.metric === 'gen_ai.client.operation.duration');
  expect(operation.reduce((n, p) => n + p.count, 0)).toBe(2);
  const tools = receiver.histogramPoints.filter((p) => p.metric === 'gen_ai.execute_tool.duration');
  expect(tools.map((p) => p.attributes['gen_ai.tool.name']).sort()).toEqual(['current_time', 'get_weather']);
});
