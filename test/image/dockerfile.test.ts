/**
 * The container image, built without Docker (none runs here): builder.ts performs the Dockerfile's
 * steps — the real `npm ci` and `npm run build` — in a clean folder, and the proxy is then started from
 * the final stage alone and answers a spoken turn that runs a tool.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { SIDECAR_UID } from '../../src/operator/sidecar.js';
import {
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/proxy/scripted-upstream.js';
import { type BuiltImage, buildImage, dockerignore, parseDockerfile } from './builder.js';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
};

describe('Dockerfile, read', () => {
  const stages = parseDockerfile(readFileSync('Dockerfile', 'utf8'));

  it('builds on the Node.js that development and the tests pin', () => {
    for (const stage of stages) expect(stage.from).toBe(`node:${pkg.devDependencies.node}-slim`);
  });

  it('runs as the non-root uid the chart and the injected sidecar expect', () => {
    const runtime = stages.at(-1)!;
    expect(runtime.instructions.find((i) => i.op === 'USER')?.args).toBe(`${SIDECAR_UID}:${SIDECAR_UID}`);
    const values = parse(readFileSync('charts/earpiece/values.yaml', 'utf8'));
    expect(values.podSecurityContext.runAsUser).toBe(SIDECAR_UID);
  });

  it('sends Docker only what it copies', () => {
    const ignored = dockerignore(readFileSync('.dockerignore', 'utf8'));
    for (const kept of [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'src/proxy/start.ts',
      'cmd/earpiece.ts',
    ])
      expect(ignored(kept), kept).toBe(false);
    for (const left of [
      'node_modules/fastify/package.json',
      'dist/cmd/earpiece.js',
      'test/chart/chart.test.ts',
      '.git/HEAD',
    ])
      expect(ignored(left), left).toBe(true);
  });
});

describe('Dockerfile, built', () => {
  let out: string;
  let image: BuiltImage;
  let upstream: ScriptedUpstream;
  let proxy: ChildProcess | undefined;

  beforeAll(() => {
    out = mkdtempSync(path.join(tmpdir(), 'earpiece-image-'));
    // npm finds its global config beside the node that runs it; the stand-in base image's node is the
    // pinned one, so point npm at this machine's global config (registry, CA) as the system npm sees it.
    const globalconfig = spawnSync('npm', ['config', 'get', 'globalconfig'], {
      encoding: 'utf8',
      env: { HOME: process.env.HOME, PATH: '/usr/local/bin:/usr/bin:/bin' },
    }).stdout.trim();
    image = buildImage({
      dockerfile: 'Dockerfile',
      context: process.cwd(),
      out,
      // The registry is reached only for what the local npm cache lacks.
      runEnv: {
        npm_config_prefer_offline: 'true',
        npm_config_update_notifier: 'false',
        ...(globalconfig ? { npm_config_globalconfig: globalconfig } : {}),
      },
    });
  }, 600_000);

  afterAll(async () => {
    if (proxy && proxy.exitCode === null) {
      proxy.kill('SIGKILL');
      await once(proxy, 'exit');
    }
    await upstream?.close();
    rmSync(out, { recursive: true, force: true });
  });

  const run = (args: string[]) =>
    spawnSync(image.entrypoint[0]!, [...image.entrypoint.slice(1), ...args], {
      cwd: path.join(image.root, image.workdir),
      encoding: 'utf8',
      env: { ...image.env, PATH: image.path },
    });

  it('holds only dist/, production modules and package.json', () => {
    const app = path.join(image.root, image.workdir);
    expect(readdirSync(app).sort()).toEqual(['dist', 'node_modules', 'package.json']);
    expect(existsSync(path.join(app, 'dist/cmd/earpiece.js'))).toBe(true);
    for (const dep of Object.keys(pkg.dependencies))
      expect(existsSync(path.join(app, 'node_modules', dep)), dep).toBe(true);
    // Whatever only development needs stays out, the `node` runtime package first among them.
    const lock = JSON.parse(readFileSync('package-lock.json', 'utf8')) as {
      packages: Record<string, { dev?: boolean }>;
    };
    const devOnly = Object.entries(lock.packages)
      .filter(([, p]) => p.dev)
      .map(([where]) => where);
    expect(devOnly).toContain('node_modules/node');
    expect(devOnly.filter((where) => existsSync(path.join(app, where)))).toEqual([]);
  });

  it('lists its commands by default', () => {
    const result = run(image.cmd);
    expect(result.stderr).toBe('');
    expect(result.status).toBe(0);
    for (const command of ['proxy', 'operator', 'inject', 'validate'])
      expect(result.stdout).toContain(command);
  });

  it('validates a ToolSet', () => {
    const result = run(['validate', path.resolve('examples/toolset.yaml')]);
    expect(result.stdout).toContain('is valid');
    expect(result.status).toBe(0);
  });

  it('runs the proxy: healthy, ready, and a spoken turn that runs a tool', async () => {
    upstream = await startScriptedUpstream({
      host: '127.0.0.1',
      respond: (request, index) =>
        index === 0
          ? { sse: toolCallReply([{ name: 'calculate', arguments: { expression: '6 * 7' } }], 'vllm-hermes') }
          : { sse: textReply(`Six times seven is ${toolResults(request)[0]}.`, 'vllm-hermes') },
    });
    const toolset = path.join(out, 'toolset.yaml');
    writeFileSync(
      toolset,
      readFileSync('examples/toolset.yaml', 'utf8').replace('name: assistant', 'name: image-test'),
    );
    const [command, ...args] = image.entrypoint;
    proxy = spawn(
      command!,
      [
        ...args,
        'proxy',
        '--toolset',
        toolset,
        '--upstream',
        upstream.url,
        '--host',
        '127.0.0.1',
        '--port',
        '0',
        '--metrics-port',
        '0',
      ],
      {
        cwd: path.join(image.root, image.workdir),
        env: { ...image.env, PATH: image.path, EARPIECE_METRICS_HOST: '127.0.0.1' },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    let listening: { url: string; metrics: string } | undefined;
    for await (const line of createInterface({ input: proxy.stdout! })) {
      const entry = JSON.parse(line) as { msg: string; url: string; metrics: string };
      if (entry.msg === 'Proxy listening.') {
        listening = entry;
        break;
      }
    }
    expect(listening).toBeDefined();
    const { url, metrics } = listening!;

    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${metrics}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'ready', toolset: { name: 'image-test' } });

    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'EMPTY', maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: 'scripted-model',
      messages: [{ role: 'user', content: 'What is six times seven?' }],
      stream: true,
      temperature: 0.3,
    });
    let spoken = '';
    for await (const chunk of stream) spoken += chunk.choices[0]?.delta.content ?? '';
    expect(spoken).toContain('Six times seven is 42.');
    expect(toolResults(upstream.requests[1]!)).toEqual(['42']);

    expect((await fetch(`${metrics}/metrics`)).status).toBe(200);
    proxy.kill('SIGTERM');
    const [code] = await once(proxy, 'exit');
    expect(code).toBe(0);
  }, 60_000);
});
