/**
 * The idle sidecar stays small (DESIGN: idle RSS): a proxy serving HTTP and builtin tools never loads the
 * packages only other ToolSets or tools need (checked with a module hook that reports every package it
 * resolves), and the proxy and the operator, started as the image starts them, give back the young
 * generation their start-up grew. Each on the built command in a fresh process.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LOOPBACK_PROXY_ARGS,
  LOOPBACK_PROXY_ENV,
  newSpaceBytes,
  proxyListening,
  type StartedCommand,
  startBuiltCommand,
  stopStartedCommands,
} from '../support/built-command.js';
import { type FakeApiServer, startFakeApiServer } from '../support/fake-apiserver.js';
import { imageNodeFlags } from '../support/image-flags.js';

const HOOK = `
import { registerHooks } from 'node:module';
const seen = new Set();
registerHooks({
  resolve(specifier, context, next) {
    const result = next(specifier, context);
    const name = result.url.match(/node_modules\\/((?:@[^/]+\\/)?[^/]+)/)?.[1];
    if (name && !seen.has(name)) {
      seen.add(name);
      process.stderr.write('loaded ' + name + '\\n');
    }
    return result;
  },
});
`;

/** Each is loaded only when a ToolSet or the environment asks for it, or never by the proxy. */
const NOT_AT_IDLE = [
  '@sinclair/typebox',
  'tinyld',
  'ioredis',
  'pg',
  '@modelcontextprotocol/sdk',
  '@opentelemetry/sdk-node',
];

afterAll(stopStartedCommands);

/** The proxy with the weather example; resolves with its metrics URL. */
function startIdleProxy(nodeFlags: readonly string[]) {
  return startBuiltCommand(
    nodeFlags,
    [
      'proxy',
      '--toolset',
      'examples/weather-toolset.yaml',
      '--upstream',
      'http://127.0.0.1:9',
      ...LOOPBACK_PROXY_ARGS,
    ],
    LOOPBACK_PROXY_ENV,
    (stdout) => proxyListening(stdout)?.metrics,
  );
}

/**
 * A port nothing listens on now, for the operator, which takes no port 0. Drawn below Linux's ephemeral range
 * (32768 and up), which the system hands out for port 0 and for outgoing connections: other tests running
 * beside this one cannot take it before the operator binds it.
 */
async function freePort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const server = createServer();
    const bound = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, '0.0.0.0', () => resolve(true));
    });
    if (!bound) continue;
    await new Promise((resolve) => server.close(resolve));
    return port;
  }
}

/** The young generation's size of a command once started; the command is stopped after. */
async function startedNewSpaceBytes(starting: Promise<StartedCommand<string>>): Promise<number> {
  const command = await starting;
  try {
    return await newSpaceBytes(command.found);
  } finally {
    await command.stop();
  }
}

/** The image's flags, and the same without --expose-gc (the collection cannot run). */
const IMAGE_FLAGS = imageNodeFlags();
const WITHOUT_GC = IMAGE_FLAGS.filter((flag) => flag !== '--expose-gc');
const MiB = 2 ** 20;

describe('an idle proxy with HTTP and builtin tools', () => {
  it('loads none of the packages it does not need', async () => {
    const proxy = await startIdleProxy(['--import', `data:text/javascript,${encodeURIComponent(HOOK)}`]);
    await proxy.stop();
    const loaded = [...proxy.stderr().matchAll(/^loaded (.+)$/gm)].map((m) => m[1]);
    expect(loaded).toContain('fastify');
    expect(loaded.filter((name) => NOT_AT_IDLE.includes(name as string))).toEqual([]);
  });

  it("gives back, under the image's Node flags, the young generation start-up grew", async () => {
    const released = await startedNewSpaceBytes(startIdleProxy(IMAGE_FLAGS));
    const kept = await startedNewSpaceBytes(startIdleProxy(WITHOUT_GC));
    expect(kept).toBeGreaterThan(8 * MiB);
    expect(released).toBeLessThanOrEqual(kept / 2);
  }, 60_000);
});

describe('an idle operator', () => {
  let api: FakeApiServer;
  let dir: string;
  beforeAll(async () => {
    // No Kubernetes API server runs here: the operator talks to the API fake, as in the operator tests.
    api = await startFakeApiServer({ bookmarkIntervalMs: 200 });
    api.create('mutatingwebhookconfigurations', {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: 'earpiece-webhook' },
      webhooks: [{ name: 'pods.earpiece.dev', clientConfig: {} }],
    });
    dir = await mkdtemp(join(tmpdir(), 'earpiece-operator-'));
    await writeFile(join(dir, 'kubeconfig'), api.kubeConfig('operator').exportConfig());
  });
  afterAll(async () => {
    await api.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** The operator with its ports on free ones (it takes no port 0), on the API fake. */
  const startIdleOperator = async (nodeFlags: readonly string[]) =>
    startBuiltCommand(
      nodeFlags,
      [
        'operator',
        '--leader-election',
        'false',
        '--native-sidecar',
        'false',
        '--webhook-port',
        String(await freePort()),
        '--probe-port',
        String(await freePort()),
        '--metrics-port',
        String(await freePort()),
      ],
      { KUBECONFIG: join(dir, 'kubeconfig'), KUBERNETES_SERVICE_HOST: '', EARPIECE_POD_NAME: 'operator-0' },
      (stdout) => {
        const port = stdout.match(/"metricsPort":(\d+)[^\n]*Started operator/)?.[1];
        return port && `http://127.0.0.1:${port}`;
      },
    );

  it("gives back, under the image's Node flags, the young generation start-up grew", async () => {
    const released = await startedNewSpaceBytes(startIdleOperator(IMAGE_FLAGS));
    const kept = await startedNewSpaceBytes(startIdleOperator(WITHOUT_GC));
    expect(kept).toBeGreaterThan(4 * MiB);
    expect(released).toBeLessThanOrEqual(kept / 2);
  }, 60_000);
});
