import { type Socket, connect as tcpConnect } from 'node:net';
import { Writable } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import type { V1PodSpec } from '@kubernetes/client-node';
import fastJsonPatch from 'fast-json-patch';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { KeyPairPem } from '../../src/operator/certs.js';
import { buildInjection, type PodTemplate } from '../../src/operator/patch.js';
import { toolsetLookup } from '../../src/operator/select.js';
import { DEFAULT_SIDECAR } from '../../src/operator/sidecar.js';
import {
  CertificateHolder,
  type InjectionOutcome,
  startWebhookServer,
  type WebhookServer,
  type WebhookServerOptions,
} from '../../src/operator/webhook.js';
import { createLogger } from '../../src/telemetry/log.js';
import type { ToolSet } from '../../src/toolset/index.js';
import { admissionReview } from '../support/admission.js';
import { webhookCertificates } from '../support/certs.js';
import { workloadIssues } from '../support/pod-rules.js';

const SERVICE = 'earpiece-webhook';
/** pino's number for warn. */
const WARN = 40;
const SERVER_NAME = `${SERVICE}.earpiece.svc`;

const toolset = (name: string, labels: Record<string, string>): ToolSet => ({
  apiVersion: 'earpiece.dev/v1alpha1',
  kind: 'ToolSet',
  metadata: { name, namespace: 'voice' },
  spec: { selector: { matchLabels: labels }, tools: [{ name: 'now', builtin: 'time' }] },
});
const toolsets = [
  toolset('assistant', { app: 'unmute-backend' }),
  toolset('lab-a', { team: 'lab' }),
  toolset('lab-b', { team: 'lab' }),
];

const first = webhookCertificates({ service: SERVICE, namespace: 'earpiece', now: new Date() });
const holder = new CertificateHolder(first.serving);

/** A second webhook server that knows no ToolSets, with `options` on top. */
function bareWebhook(options: Partial<WebhookServerOptions>): Promise<WebhookServer> {
  return startWebhookServer({
    port: 0,
    host: '127.0.0.1',
    certificate: holder,
    lookups: { toolsetByName: () => undefined, toolsetsInNamespace: () => [], config: () => undefined },
    sidecar: DEFAULT_SIDECAR,
    logger: createLogger('webhook-test', 'silent'),
    ...options,
  });
}
const outcomes: InjectionOutcome[] = [];
let ready = new Set(['assistant', 'lab-a', 'lab-b']);
let optedInNamespaces = new Set<string>();
let server: WebhookServer;

beforeAll(async () => {
  server = await startWebhookServer({
    port: 0,
    host: '127.0.0.1',
    certificate: holder,
    lookups: {
      toolsetByName: (ns, name) => toolsetLookup(toolsets, ns).byName(name),
      toolsetsInNamespace: (ns) => toolsetLookup(toolsets, ns).all(),
      config: (ns, name) => (ready.has(name) ? toolsetLookup(toolsets, ns).config(name) : undefined),
      namespaceOptedIn: (ns) => optedInNamespaces.has(ns),
    },
    sidecar: DEFAULT_SIDECAR,
    logger: createLogger('webhook-test', 'silent'),
    onInjection: (o) => outcomes.push(o),
  });
});
afterAll(() => server?.close());
beforeEach(() => {
  outcomes.length = 0;
  ready = new Set(['assistant', 'lab-a', 'lab-b']);
  optedInNamespaces = new Set();
});

/** One request on a fresh TLS connection that trusts only `caPem`. */
async function post(body: string | object, caPem = first.ca.certPem, path = '/mutate', port = server.port) {
  const agent = new Agent({ connect: { ca: caPem, servername: SERVER_NAME } });
  try {
    const res = await request(`https://127.0.0.1:${port}${path}`, {
      method: 'POST',
      dispatcher: agent,
      headers: { 'content-type': 'application/json' },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  } finally {
    await agent.close();
  }
}

function pod(
  labels: Record<string, string>,
  extra: { annotations?: Record<string, string>; env?: object[] } = {},
) {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      generateName: 'unmute-backend-7d9c-',
      namespace: 'voice',
      labels,
      ...(extra.annotations ? { annotations: extra.annotations } : {}),
      ownerReferences: [
        {
          apiVersion: 'apps/v1',
          kind: 'ReplicaSet',
          name: 'unmute-backend-7d9c',
          uid: 'u1',
          controller: true,
        },
      ],
    },
    spec: {
      containers: [
        {
          name: 'backend',
          image: 'unmute',
          env: extra.env ?? [{ name: 'KYUTAI_LLM_URL', value: 'http://llm:8000' }],
        },
      ],
    },
  };
}

function review(object: unknown, overrides: Record<string, unknown> = {}) {
  return admissionReview(object, { uid: '705ab4f5-6393-11e8-b7cc-42010a800002', overrides });
}

type Response = { uid: string; allowed: boolean; patchType?: string; patch?: string; warnings?: string[] };
async function admit(object: unknown, overrides: Record<string, unknown> = {}): Promise<Response> {
  const { status, body } = await post(review(object, overrides));
  expect(status).toBe(200);
  expect(body).toMatchObject({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview' });
  const response = (body as unknown as { response: Response }).response;
  expect(response.uid).toBe('705ab4f5-6393-11e8-b7cc-42010a800002');
  expect(response.allowed).toBe(true);
  return response;
}

describe('the webhook over HTTPS', () => {
  it('patches an opted-in pod: the JSON Patch gives a valid pod with the sidecar', async () => {
    const original = pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' });
    const response = await admit(original);
    expect(response.patchType).toBe('JSONPatch');
    expect(response.warnings).toBeUndefined();
    const ops = JSON.parse(Buffer.from(response.patch as string, 'base64').toString());
    const patched = fastJsonPatch.applyPatch(
      structuredClone(original) as unknown as Record<string, never>,
      ops,
      true,
      false,
    ).newDocument as unknown as typeof original & { spec: { initContainers?: { name: string }[] } };
    expect(patched.spec.initContainers?.map((c) => c.name)).toEqual(['earpiece-proxy']);
    expect(patched.spec.containers[0]?.env).toEqual([
      { name: 'KYUTAI_LLM_URL', value: 'http://127.0.0.1:8095' },
    ]);
    expect(await workloadIssues({ ...patched, metadata: { ...patched.metadata, name: 'p' } })).toEqual([]);
    expect(outcomes).toEqual([
      expect.objectContaining({
        outcome: 'injected',
        namespace: 'voice',
        pod: 'unmute-backend-7d9c-',
        owner: expect.objectContaining({ kind: 'ReplicaSet', name: 'unmute-backend-7d9c' }),
        toolset: 'assistant',
        warn: false,
        dryRun: false,
      }),
    ]);
  });

  it('leaves a pod that did not opt in untouched, without a warning', async () => {
    const response = await admit(pod({ app: 'unmute-backend' }));
    expect(response).toEqual({ uid: response.uid, allowed: true });
    expect(outcomes.map((o) => [o.outcome, o.warn])).toEqual([['not_opted_in', false]]);
  });

  it('injects an unlabelled pod of an opted-in namespace, and passes a dry run on', async () => {
    optedInNamespaces.add('voice');
    const response = await admit(pod({ app: 'unmute-backend' }), { dryRun: true });
    expect(response.patch).toBeDefined();
    expect(outcomes.map((o) => [o.outcome, o.dryRun])).toEqual([['injected', true]]);
  });

  it('patches a pod that both the pod and the namespace opt in once; a reinvocation changes nothing', async () => {
    optedInNamespaces.add('voice');
    const original = pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' });
    const injected = await admit(original);
    const ops = JSON.parse(Buffer.from(injected.patch as string, 'base64').toString());
    const patched = fastJsonPatch.applyPatch(structuredClone(original), ops, true, false).newDocument;
    const again = await admit(patched);
    expect(again).toEqual({ uid: again.uid, allowed: true });
    expect(outcomes.map((o) => o.outcome)).toEqual(['injected', 'already_injected']);
  });

  it('a reinvocation after another webhook rewrote the sidecar image keeps the rewrite: no patch, no second Injected', async () => {
    const original = pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' });
    const injected = await admit(original);
    const ops = JSON.parse(Buffer.from(injected.patch as string, 'base64').toString());
    const patched = fastJsonPatch.applyPatch(structuredClone(original), ops, true, false)
      .newDocument as unknown as { spec: { initContainers: { name: string; image: string }[] } };
    // A digest-pinning webhook (Kyverno mutateDigest) ran after this one.
    const digest = `ghcr.io/earpiece-dev/earpiece@sha256:${'b'.repeat(64)}`;
    patched.spec.initContainers[0]!.image = digest;
    const again = await admit(patched);
    expect(again).toEqual({ uid: again.uid, allowed: true });
    expect(outcomes.map((o) => o.outcome)).toEqual(['injected', 'already_injected']);
  });

  it('injects again a pod created injected for another configuration, as an earpiece inject manifest may be', async () => {
    const original = pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' });
    const older = toolset('assistant', { app: 'unmute-backend' });
    older.spec.tools.push({ name: 'calc', builtin: 'calculator' });
    const offline = buildInjection(original as PodTemplate, {
      namespace: 'voice',
      namespaceOptedIn: false,
      toolsets: toolsetLookup([older], 'voice'),
      sidecar: DEFAULT_SIDECAR,
    });
    if (!offline.ok) throw new Error(offline.message);
    const created = {
      ...original,
      metadata: { ...original.metadata, ...offline.template.metadata },
      spec: offline.template.spec as V1PodSpec,
    };

    const response = await admit(created);
    const ops = JSON.parse(Buffer.from(response.patch as string, 'base64').toString());
    const patched = fastJsonPatch.applyPatch(structuredClone(created), ops, true, false).newDocument;
    const current = toolsetLookup(toolsets, 'voice').config('assistant')!;
    expect(patched.metadata.annotations?.['earpiece.dev/toolset-hash']).toBe(current.hash);
    expect(patched.metadata.annotations?.['earpiece.dev/toolset-hash']).not.toBe(
      created.metadata.annotations?.['earpiece.dev/toolset-hash'],
    );
    expect(patched.spec.initContainers?.map((c) => c.name)).toEqual(['earpiece-proxy']);
    expect(patched.spec.containers[0]?.env).toEqual([
      { name: 'KYUTAI_LLM_URL', value: 'http://127.0.0.1:8095' },
    ]);
    expect(outcomes.map((o) => o.outcome)).toEqual(['injected']);
    expect(outcomes[0]?.message).toMatch(/again .* replacing the one for ToolSet assistant/);

    // A reinvocation sees the pod as just injected: no change.
    const again = await admit(patched);
    expect(again).toEqual({ uid: again.uid, allowed: true });
  });

  it('warns and leaves the pod when no ToolSet, several, or one whose ConfigMap is not written yet applies', async () => {
    const none = await admit(pod({ app: 'other', 'earpiece.dev/inject': 'true' }));
    expect(none.patch).toBeUndefined();
    expect(none.warnings).toEqual([
      expect.stringMatching(/^earpiece: no sidecar: no ToolSet in namespace voice selects this pod/),
    ]);

    const several = await admit(pod({ team: 'lab', 'earpiece.dev/inject': 'true' }));
    expect(several.patch).toBeUndefined();
    expect(several.warnings).toEqual([
      'earpiece: no sidecar: ToolSets lab-a, lab-b all select this pod; name one with annotation earpiece.dev/toolset',
    ]);

    // A valid ToolSet (no status yet) applied together with its Deployment, before the operator wrote its ConfigMap.
    ready.delete('assistant');
    const notReady = await admit(pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' }));
    expect(notReady.patch).toBeUndefined();
    const notWritten =
      'ConfigMap earpiece-toolset-assistant of ToolSet assistant is not written yet (see kubectl describe toolset assistant -n voice); recreate the pod once the ToolSet is Ready';
    expect(notReady.warnings).toEqual([`earpiece: no sidecar: ${notWritten}`]);
    // The same words go into the InjectionSkipped Event.
    expect(outcomes.at(-1)?.message).toBe(notWritten);

    expect(outcomes.map((o) => [o.outcome, o.warn])).toEqual([
      ['no_toolset', true],
      ['several_toolsets', true],
      ['toolset_not_ready', true],
    ]);
  });

  it('two releases: each webhook injects only the pods whose ToolSet is labelled for its own operator', async () => {
    const claimed = [
      {
        ...toolset('assistant', { app: 'unmute-backend' }),
        metadata: { name: 'assistant', namespace: 'voice', labels: { 'earpiece.dev/operator': 'canary' } },
      },
      toolset('unclaimed', { app: 'fresh' }),
    ];
    const decided: Record<string, InjectionOutcome[]> = { stable: [], canary: [] };
    const start = (instance: string) =>
      startWebhookServer({
        port: 0,
        host: '127.0.0.1',
        certificate: holder,
        lookups: {
          toolsetByName: (ns, name) => toolsetLookup(claimed, ns).byName(name),
          toolsetsInNamespace: (ns) => toolsetLookup(claimed, ns).all(),
          config: (ns, name) => toolsetLookup(claimed, ns).config(name),
        },
        sidecar: DEFAULT_SIDECAR,
        instance,
        logger: createLogger('webhook-test', 'silent'),
        onInjection: (o) => decided[instance]?.push(o),
      });
    const [stable, canary] = await Promise.all([start('stable'), start('canary')]);
    try {
      const admitAt = async (port: number, object: unknown) =>
        (
          (await post(review(object), first.ca.certPem, '/mutate', port)).body as unknown as {
            response: Response;
          }
        ).response;
      // Both webhooks match the pod, in either order: only the canary's injects it, and the stable one is quiet.
      const original = pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' });
      const byStable = await admitAt(stable.port, original);
      expect(byStable).toEqual({ uid: byStable.uid, allowed: true });
      const byCanary = await admitAt(canary.port, original);
      expect(byCanary.patch).toBeDefined();
      const injected = fastJsonPatch.applyPatch(
        structuredClone(original),
        JSON.parse(Buffer.from(byCanary.patch as string, 'base64').toString()),
      ).newDocument;
      const afterCanary = await admitAt(stable.port, injected);
      expect(afterCanary).toEqual({ uid: afterCanary.uid, allowed: true });
      expect(decided.stable?.map((o) => [o.outcome, o.warn])).toEqual([
        ['other_operator', false],
        ['already_injected', false],
      ]);
      expect(decided.stable?.[0]?.message).toBe(
        "ToolSet assistant is reconciled by operator canary (label earpiece.dev/operator), not stable: that release's webhook injects the pod",
      );
      expect(decided.canary?.map((o) => o.outcome)).toEqual(['injected']);
      // A ToolSet no operator has claimed yet is either's, as its reconcile will be.
      const fresh = pod({ app: 'fresh', 'earpiece.dev/inject': 'true' });
      expect((await admitAt(stable.port, fresh)).patch).toBeDefined();
      expect((await admitAt(canary.port, fresh)).patch).toBeDefined();
    } finally {
      await Promise.all([stable.close(), canary.close()]);
    }
  });

  it("returns the builder's warnings beside the patch", async () => {
    const response = await admit(
      pod(
        { app: 'unmute-backend', 'earpiece.dev/inject': 'true' },
        { env: [{ name: 'KYUTAI_LLM_URL', valueFrom: { secretKeyRef: { name: 'llm', key: 'url' } } }] },
      ),
    );
    expect(response.patch).toBeDefined();
    expect(response.warnings).toEqual([
      expect.stringMatching(/^earpiece: KYUTAI_LLM_URL of container backend comes from a secretKeyRef/),
    ]);
  });

  describe('never blocks a pod on bad input', () => {
    it('answers 400 to a body that is not JSON or not an AdmissionReview', async () => {
      expect((await post('{"apiVersion": ')).status).toBe(400);
      expect((await post({ hello: 'world' })).status).toBe(400);
      expect(
        (
          await post({
            apiVersion: 'admission.k8s.io/v1beta1',
            kind: 'AdmissionReview',
            request: { uid: 'x' },
          })
        ).status,
      ).toBe(400);
    });

    it('allows a review without a pod, with a warning', async () => {
      const response = await admit(undefined);
      expect(response.patch).toBeUndefined();
      expect(response.warnings).toEqual(['earpiece: the review has no pod object; the pod is left as it is']);
      expect(outcomes.map((o) => o.outcome)).toEqual(['error']);
    });

    it('allows a pod the builder trips over, with a warning', async () => {
      const broken = {
        metadata: {
          labels: { app: 'unmute-backend', 'earpiece.dev/inject': 'true' },
          ownerReferences: [null],
        },
        spec: { containers: [null] },
      };
      const response = await admit(broken);
      expect(response.patch).toBeUndefined();
      expect(response.warnings).toEqual([
        expect.stringMatching(/^earpiece: injection failed: .*; the pod is left as it is$/),
      ]);
      expect(outcomes.map((o) => [o.outcome, o.warn])).toEqual([['error', true]]);
    });

    it('allows other resources and operations without touching them', async () => {
      const deployment = await admit(
        { kind: 'Deployment' },
        { kind: { group: 'apps', version: 'v1', kind: 'Deployment' }, resource: { resource: 'deployments' } },
      );
      expect(deployment.warnings).toEqual(["earpiece: only pods are injected; check the webhook's rules"]);
      const update = await admit(pod({ app: 'unmute-backend', 'earpiece.dev/inject': 'true' }), {
        operation: 'UPDATE',
      });
      expect(update).toEqual({ uid: update.uid, allowed: true });
      expect(outcomes).toEqual([]);
    });

    it('still answers when the outcome callback throws', async () => {
      const noisy = await bareWebhook({
        onInjection: () => {
          throw new Error('metrics are down');
        },
        bodyLimit: 4096,
      });
      try {
        const { status, body } = await post(
          review(pod({ 'earpiece.dev/inject': 'true' })),
          first.ca.certPem,
          '/mutate',
          noisy.port,
        );
        expect(status).toBe(200);
        expect((body as unknown as { response: Response }).response.allowed).toBe(true);
        const big = await post(
          review(pod({ 'earpiece.dev/inject': 'true' }, { annotations: { big: 'x'.repeat(8192) } })),
          first.ca.certPem,
          '/mutate',
          noisy.port,
        );
        expect(big.status).toBe(413);
      } finally {
        await noisy.close();
      }
    });
  });

  it('drops a request that does not arrive whole within the request timeout, and a stalled handshake', async () => {
    const slow = await bareWebhook({ requestTimeoutMs: 500 });
    /** Everything the server wrote once it closed the connection; a generous guard, not a timing check. */
    const answer = (socket: Socket) =>
      new Promise<string>((resolve, reject) => {
        let text = '';
        socket.setEncoding('utf8');
        socket.on('data', (d: string) => {
          text += d;
        });
        socket.on('error', () => {});
        const guard = setTimeout(() => {
          socket.destroy();
          reject(new Error(`the connection is still open; got ${JSON.stringify(text)}`));
        }, 5_000);
        socket.on('close', () => {
          clearTimeout(guard);
          resolve(text);
        });
      });
    const secure = () =>
      tlsConnect({ host: '127.0.0.1', port: slow.port, ca: first.ca.certPem, servername: SERVER_NAME });
    try {
      // A body that declares 1000 bytes and sends 10.
      const trickle = secure();
      trickle.write(
        'POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"kind":"A',
      );
      // Headers that never end.
      const silent = secure();
      silent.write('POST /validate HTTP/1.1\r\nhost: x\r\n');
      // A TLS handshake that never starts.
      const mute = tcpConnect(slow.port, '127.0.0.1');
      const [trickled, silenced] = await Promise.all([answer(trickle), answer(silent), answer(mute)]);
      expect(trickled).toMatch(/^HTTP\/1\.1 408 /);
      expect(silenced).toMatch(/^HTTP\/1\.1 408 /);
      // A whole review still gets its answer.
      const { status } = await post(review(pod({})), first.ca.certPem, '/mutate', slow.port);
      expect(status).toBe(200);
    } finally {
      await slow.close();
    }
  });

  it('refuses a body past the budget of bodies in flight at once with 503, and still answers a small review', async () => {
    const busy = await bareWebhook({ requestTimeoutMs: 60_000 });
    const sockets: Socket[] = [];
    /** A request that declares a body of `bytes` and sends only its first few; resolves once the server closes it. */
    const slowBody = (bytes: number) => {
      const socket = tlsConnect({
        host: '127.0.0.1',
        port: busy.port,
        ca: first.ca.certPem,
        servername: SERVER_NAME,
      });
      sockets.push(socket);
      let text = '';
      socket.setEncoding('utf8');
      socket.on('data', (d: string) => {
        text += d;
      });
      socket.on('error', () => {});
      socket.write(
        `POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${bytes}\r\n\r\n{"kind":"A`,
      );
      return new Promise<string>((resolve) => socket.on('close', () => resolve(text)));
    };
    try {
      // Four large reviews (5 MiB each) hold 20 MiB of the default budget of 24 MiB.
      const large = 5 * 1024 * 1024;
      for (let i = 0; i < 4; i++) void slowBody(large);
      await expect.poll(() => busy.bodyBytesInFlight(), { timeout: 10_000 }).toBe(4 * large);
      // A fifth would pass it: answered and closed without its body, long before the request timeout.
      const refused = await slowBody(large);
      expect(refused).toMatch(/^HTTP\/1\.1 503 /);
      expect(refused.toLowerCase()).toContain('connection: close');
      // A small review still fits in what is left.
      const { status } = await post(review(pod({})), first.ca.certPem, '/mutate', busy.port);
      expect(status).toBe(200);
    } finally {
      for (const socket of sockets) socket.destroy();
      await busy.close();
    }
  });

  it("logs each refused body once, at warn level: a body too large or over the budget is the client's problem", async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk, _encoding, done) {
        lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
        done();
      },
    });
    const logger = createLogger('webhook-test', 'debug', sink);
    // One server refuses bodies past 4 KiB with 413; the other holds at most 1 KiB of bodies in flight.
    const small = await bareWebhook({ logger, bodyLimit: 4096 });
    const tight = await bareWebhook({ logger, bodyLimit: 4096, maxBodyBytesInFlight: 1024 });
    /** Sends a whole request over its own connection; the server's answer once it closes. */
    const send = (port: number, body: string, chunked: boolean) =>
      new Promise<string>((resolve) => {
        const socket = tlsConnect({ host: '127.0.0.1', port, ca: first.ca.certPem, servername: SERVER_NAME });
        let text = '';
        socket.setEncoding('utf8');
        socket.on('data', (d: string) => {
          text += d;
        });
        socket.on('error', () => {});
        socket.on('close', () => resolve(text));
        const length = chunked ? 'transfer-encoding: chunked' : `content-length: ${Buffer.byteLength(body)}`;
        socket.write(
          `POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n${length}\r\n\r\n`,
        );
        socket.end(chunked ? `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n` : body);
      });
    const body = (bytes: number) => JSON.stringify({ kind: 'x'.repeat(bytes) });
    try {
      const answers = [
        await send(small.port, body(8192), false),
        await send(small.port, body(8192), true),
        await send(tight.port, body(2048), false),
        await send(tight.port, body(2048), true),
      ];
      expect(answers.map((a) => a.split('\r\n')[0])).toEqual([
        'HTTP/1.1 413 Payload Too Large',
        'HTTP/1.1 413 Payload Too Large',
        'HTTP/1.1 503 Service Unavailable',
        'HTTP/1.1 503 Service Unavailable',
      ]);
      await expect
        .poll(() => lines.filter((l) => (l.level as number) >= WARN).length, { timeout: 5_000 })
        .toBe(4);
      expect(lines.filter((l) => (l.level as number) > WARN)).toEqual([]);
      expect(lines.filter((l) => l.level === WARN).map((l) => l.statusCode)).toEqual([413, 413, 503, 503]);
      for (const line of lines.filter((l) => l.level === WARN)) {
        expect(line.msg).toMatch(/^Refused a request body: /);
      }
    } finally {
      await small.close();
      await tight.close();
    }
  });

  it('serves a rotated certificate to new connections without a restart', async () => {
    const agent = new Agent({ connect: { ca: first.ca.certPem, servername: SERVER_NAME } });
    const health = await request(`https://127.0.0.1:${server.port}/healthz`, { dispatcher: agent });
    expect(await health.body.text()).toBe('ok');
    await agent.close();

    const second = webhookCertificates({ service: SERVICE, namespace: 'earpiece', now: new Date() });
    const rotate = (pair: KeyPairPem) => holder.set(pair);
    rotate(second.serving);
    try {
      expect((await post(review(pod({})), second.ca.certPem)).status).toBe(200);
      await expect(post(review(pod({})), first.ca.certPem)).rejects.toThrow();
    } finally {
      rotate(first.serving);
    }
    expect((await post(review(pod({})), first.ca.certPem)).status).toBe(200);
  });
});
