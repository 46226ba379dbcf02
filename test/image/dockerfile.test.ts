/**
 * The container image, built without Docker (none runs here): builder.ts performs the Dockerfile's
 * steps — the real `npm ci` and `npm run build` — in a clean folder, and the proxy is then started from
 * the final stage alone and answers a spoken turn that runs a tool.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import {
  type ScriptedUpstream,
  startScriptedUpstream,
  textReply,
  toolCallReply,
  toolResults,
} from '../../src/demo/scripted-upstream.js';
import { SIDECAR_NAME, SIDECAR_UID } from '../../src/operator/sidecar.js';
import { allowed } from '../chart/rbac.js';
import { find, NAMESPACE, render } from '../chart/render.js';
import { type FakeApiServer, type KObject, startFakeApiServer } from '../support/fake-apiserver.js';
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
  let operator: ChildProcess | undefined;
  let api: FakeApiServer | undefined;

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
    for (const child of [proxy, operator])
      if (child && child.exitCode === null) {
        child.kill('SIGKILL');
        await once(child, 'exit');
      }
    await upstream?.close();
    await api?.close();
    rmSync(out, { recursive: true, force: true });
    // The unpacked image holds node_modules and a Node binary: deleting it is slow on a busy disk.
  }, 180_000);

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

  it('runs the operator as the chart configures it: certificates, a ToolSet reconciled, a pod injected', async () => {
    api = await startFakeApiServer({ bookmarkIntervalMs: 200 });
    const chart = render();
    const deployment = find(chart, 'Deployment', 'earpiece');
    const container = (deployment.spec as { template: { spec: { containers: Container[] } } }).template.spec
      .containers[0]!;
    const webhookConfig = find(chart, 'MutatingWebhookConfiguration');
    for (const ns of [NAMESPACE, 'voice'])
      api.create('namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns } });
    api.create('mutatingwebhookconfigurations', webhookConfig as unknown as KObject);
    const validatingConfig = find(chart, 'ValidatingWebhookConfiguration');
    api.create('validatingwebhookconfigurations', validatingConfig as unknown as KObject);

    const kubeconfig = path.join(out, 'kubeconfig');
    writeFileSync(kubeconfig, api.kubeConfig('operator').exportConfig());
    const [webhookPort, probePort, metricsPort] = await Promise.all([freePort(), freePort(), freePort()]);
    const env = Object.fromEntries(
      (container.env ?? []).filter((e) => e.value !== undefined).map((e) => [e.name, e.value!]),
    );
    const [command, ...args] = image.entrypoint;
    operator = spawn(
      command!,
      [
        ...args,
        ...container.args!,
        ...[
          '--webhook-port',
          `${webhookPort}`,
          '--probe-port',
          `${probePort}`,
          '--metrics-port',
          `${metricsPort}`,
        ],
      ],
      {
        cwd: path.join(image.root, image.workdir),
        // What the kubelet adds: the downward API values; KUBECONFIG stands in for the service account.
        env: {
          ...image.env,
          ...env,
          PATH: image.path,
          KUBECONFIG: kubeconfig,
          EARPIECE_NAMESPACE: NAMESPACE,
          EARPIECE_POD_NAME: 'earpiece-0',
        },
        stdio: ['ignore', 'ignore', 'inherit'],
      },
    );
    await eventually(async () => (await fetch(`http://127.0.0.1:${probePort}/readyz`)).status === 200);

    // The webhook's certificate: kept in the Secret the chart's RBAC names, its CA in both webhook entries.
    expect(api.get('secrets', NAMESPACE, env.EARPIECE_CERT_SECRET_NAME!)).toBeDefined();
    const patched = api.get(
      'mutatingwebhookconfigurations',
      undefined,
      webhookConfig.metadata.name,
    ) as unknown as {
      webhooks: { clientConfig: { caBundle?: string } }[];
    };
    const caBundle = patched.webhooks[0]!.clientConfig.caBundle!;
    expect(patched.webhooks.map((w) => w.clientConfig.caBundle)).toEqual([caBundle, caBundle]);
    const validating = api.get(
      'validatingwebhookconfigurations',
      undefined,
      validatingConfig.metadata.name,
    ) as unknown as { webhooks: { clientConfig: { caBundle?: string } }[] };
    expect(validating.webhooks.map((w) => w.clientConfig.caBundle)).toEqual([caBundle]);

    // The walk-through: the weather ToolSet becomes Ready, with its ConfigMap.
    const weather = parse(readFileSync('examples/weather-toolset.yaml', 'utf8')) as KObject;
    api.create('toolsets', { ...weather, metadata: { ...weather.metadata, namespace: 'voice' } });
    await eventually(() => {
      const status = api!.get('toolsets', 'voice', 'weather')?.status as
        | { conditions?: { type: string; status: string }[] }
        | undefined;
      return status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
    });
    expect(api.get('configmaps', 'voice', 'earpiece-toolset-weather')).toBeDefined();

    // The API server's call for the Unmute backend's pod, over TLS checked against the caBundle.
    const backend = parseAllDocuments(readFileSync('examples/unmute-backend.yaml', 'utf8'))[0]!.toJS();
    const pod = {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { ...backend.spec.template.metadata, namespace: 'voice' },
      spec: backend.spec.template.spec,
    };
    const review = await admissionReview(
      webhookPort!,
      caBundle,
      `${env.EARPIECE_WEBHOOK_SERVICE_NAME}.${NAMESPACE}.svc`,
      {
        apiVersion: 'admission.k8s.io/v1',
        kind: 'AdmissionReview',
        request: {
          uid: 'e911857d-c318-11e8-bbad-025000000001',
          kind: { group: '', version: 'v1', kind: 'Pod' },
          resource: { group: '', version: 'v1', resource: 'pods' },
          namespace: 'voice',
          operation: 'CREATE',
          userInfo: { username: 'system:serviceaccount:kube-system:replicaset-controller' },
          object: pod,
          dryRun: false,
        },
      },
    );
    expect(review.response).toMatchObject({
      uid: 'e911857d-c318-11e8-bbad-025000000001',
      allowed: true,
      patchType: 'JSONPatch',
    });
    expect(Buffer.from(review.response.patch, 'base64').toString()).toContain(SIDECAR_NAME);

    // Everything the operator asked of the API server, its ServiceAccount may do under the chart's RBAC.
    const account = { name: env.EARPIECE_WEBHOOK_SERVICE_NAME!, namespace: NAMESPACE };
    const requests = api.requests
      .filter((r) => r.user === 'operator')
      .map((r) => ({
        verb: verbOf(r.method, r.name, r.watch),
        apiGroup: API_GROUPS[r.resource] ?? '',
        resource: r.subresource ? `${r.resource}/${r.subresource}` : r.resource,
        namespace: r.namespace,
        name: r.name,
      }));
    // Among them, what each part of the operator needs (renewals and Events depend on timing).
    expect([...new Set(requests.map((r) => `${r.verb} ${r.resource}`))]).toEqual(
      expect.arrayContaining([
        'list toolsets',
        'watch toolsets',
        'patch toolsets/status',
        'list configmaps',
        'watch configmaps',
        'patch configmaps',
        'list pods',
        'watch pods',
        'list namespaces',
        'watch namespaces',
        'get leases',
        'create leases',
        'get secrets',
        'create secrets',
        'get mutatingwebhookconfigurations',
        'patch mutatingwebhookconfigurations',
        'get validatingwebhookconfigurations',
        'patch validatingwebhookconfigurations',
      ]),
    );
    expect(requests.filter((r) => !allowed(chart, account, r))).toEqual([]);

    operator.kill('SIGTERM');
    const [code] = await once(operator, 'exit');
    expect(code).toBe(0);
  }, 90_000);
});

type Container = { args?: string[]; env?: { name: string; value?: string }[] };

const API_GROUPS: Record<string, string> = {
  leases: 'coordination.k8s.io',
  mutatingwebhookconfigurations: 'admissionregistration.k8s.io',
  validatingwebhookconfigurations: 'admissionregistration.k8s.io',
  toolsets: 'earpiece.dev',
  replicasets: 'apps',
};

function verbOf(method: string, name: string | undefined, watch: boolean): string {
  if (method === 'GET') return name !== undefined ? 'get' : watch ? 'watch' : 'list';
  return { POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' }[method] ?? method;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Polls until the check holds; the deadline only guards against a hang. */
async function eventually(check: () => boolean | Promise<boolean>, seconds = 30): Promise<void> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`not reached within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** POST /mutate as the API server does: HTTPS, the server name of the Service, trusting only the caBundle. */
function admissionReview(
  port: number,
  caBundle: string,
  servername: string,
  body: unknown,
): Promise<{ response: { patch: string } & Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path: '/mutate',
        method: 'POST',
        servername,
        ca: Buffer.from(caBundle, 'base64'),
        headers: { 'content-type': 'application/json' },
      },
      async (res) => {
        let text = '';
        for await (const chunk of res) text += chunk;
        resolve(JSON.parse(text));
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}
