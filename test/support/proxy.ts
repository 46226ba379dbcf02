/** Test helpers: a ToolSet file in a temp dir, the real proxy on port 0, and the official OpenAI client. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterEach } from 'vitest';
import { stringify } from 'yaml';
import {
  type RecordedRequest,
  type ScriptedReply,
  type ScriptedUpstream,
  startScriptedUpstream,
} from '../../src/demo/scripted-upstream.js';
import { type ProxyOptions, type RunningProxy, startProxy } from '../../src/proxy/start.js';
import { createLogger } from '../../src/telemetry/log.js';
import { toolSetDocument } from '../../src/toolset/api.js';

export interface ProxyHarness {
  proxy: RunningProxy;
  dir: string;
  toolsetPath: string;
  /** The official client, configured as Unmute configures it. */
  client: OpenAI;
  close(): Promise<void>;
}

export function toolsetDoc(spec: Record<string, unknown>, name = 'test'): Record<string, unknown> {
  return toolSetDocument(name, spec);
}

export async function startTestProxy(
  spec: Record<string, unknown>,
  upstreamUrl: string,
  options: Partial<ProxyOptions> = {},
): Promise<ProxyHarness> {
  const dir = await mkdtemp(join(tmpdir(), 'earpiece-test-'));
  const toolsetPath = join(dir, 'toolset.yaml');
  await writeFile(toolsetPath, stringify(toolsetDoc(spec)));
  const proxy = await startProxy({
    toolsetPath,
    upstreamUrl,
    host: '127.0.0.1',
    port: 0,
    metricsHost: '127.0.0.1',
    metricsPort: 0,
    logger: createLogger('test', process.env.EARPIECE_TEST_LOG_LEVEL ?? 'silent'),
    ...options,
  }).catch(async (err: unknown) => {
    await rm(dir, { recursive: true, force: true });
    throw err;
  });
  // Unmute: AsyncOpenAI(api_key="EMPTY", base_url=KYUTAI_LLM_URL + "/v1").
  const client = new OpenAI({ apiKey: 'EMPTY', baseURL: `${proxy.url}/v1`, maxRetries: 0 });
  return {
    proxy,
    dir,
    toolsetPath,
    client,
    close: async () => {
      await proxy.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** Unmute's exact request: model, messages, stream, temperature; the text it would speak. */
export async function unmuteTurn(
  client: OpenAI,
  messages: { role: 'system' | 'user' | 'assistant'; content: string }[],
  model = 'scripted-model',
): Promise<{ text: string; chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] }> {
  const stream = await client.chat.completions.create({ model, messages, stream: true, temperature: 0.3 });
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  let text = '';
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (chunk.choices.length === 0) continue;
    const content = chunk.choices[0]?.delta.content;
    if (content) text += content;
  }
  return { text, chunks };
}

/**
 * A scripted upstream with the real proxy in front of it, both closed after each test. `defer` registers
 * further clean-ups (servers a test starts), run in reverse order.
 */
export function useScriptedProxy() {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()?.();
  });
  const defer = (cleanup: () => Promise<void>) => {
    cleanups.push(cleanup);
  };
  const setup = async (
    respond: (req: RecordedRequest, i: number) => ScriptedReply | Promise<ScriptedReply>,
    spec: Record<string, unknown>,
    options: Partial<ProxyOptions> = {},
  ): Promise<{ upstream: ScriptedUpstream; harness: ProxyHarness }> => {
    const upstream = await startScriptedUpstream({ respond });
    defer(() => upstream.close());
    const harness = await startTestProxy(spec, upstream.url, options);
    defer(() => harness.close());
    return { upstream, harness };
  };
  return { setup, defer };
}
