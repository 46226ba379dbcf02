/**
 * Webhook certificates against the API fake, checked the way the API server would check them: a TLS
 * connection to the real webhook server that trusts only the caBundle and asks for the Service's name.
 */

import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from 'node:tls';
import { AdmissionregistrationV1Api, CoreV1Api } from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { certificateCovers, serviceDnsNames } from '../../src/operator/certs.js';
import type { Clock } from '../../src/operator/clock.js';
import { DEFAULT_SIDECAR } from '../../src/operator/sidecar.js';
import { startWebhookServer, type WebhookServer } from '../../src/operator/webhook.js';
import {
  SECRET_KEYS,
  WebhookCertificates,
  type WebhookCertsOptions,
} from '../../src/operator/webhook-certs.js';
import { createLogger } from '../../src/telemetry/log.js';
import { webhookCertificates } from '../support/certs.js';
import { type FakeApiServer, type KObject, startFakeApiServer } from '../support/fake-apiserver.js';

const NS = 'earpiece-system';
const SERVICE = 'earpiece-webhook';
const HOST = `${SERVICE}.${NS}.svc`;
const DAY = 86_400_000;
const logger = createLogger('test', 'silent');

class ManualClock implements Clock {
  private t = Date.now();
  now(): Date {
    return new Date(this.t);
  }
  advance(ms: number): void {
    this.t += ms;
  }
}

let api: FakeApiServer;
let clock: ManualClock;
const stops: (() => unknown)[] = [];

beforeEach(async () => {
  api = await startFakeApiServer();
  clock = new ManualClock();
  api.create('mutatingwebhookconfigurations', {
    apiVersion: 'admissionregistration.k8s.io/v1',
    kind: 'MutatingWebhookConfiguration',
    metadata: { name: 'earpiece-webhook' },
    webhooks: [
      {
        name: 'pods.earpiece.dev',
        clientConfig: { service: { name: SERVICE, namespace: NS, path: '/mutate' } },
      },
      {
        name: 'namespaces.earpiece.dev',
        clientConfig: { service: { name: SERVICE, namespace: NS, path: '/mutate' } },
      },
    ],
  });
});
afterEach(async () => {
  for (const stop of stops.splice(0).reverse()) await stop();
  await api.close();
});

function manager(user = 'replica-1', extra: Partial<WebhookCertsOptions> = {}): WebhookCertificates {
  const kc = api.kubeConfig(user);
  const certs = new WebhookCertificates({
    mode: 'operator',
    core: kc.makeApiClient(CoreV1Api),
    admission: kc.makeApiClient(AdmissionregistrationV1Api),
    namespace: NS,
    secretName: 'earpiece-webhook-tls',
    serviceName: SERVICE,
    webhookConfigName: 'earpiece-webhook',
    certDir: '/nonexistent',
    clock,
    logger,
    checkIntervalMs: 3_600_000,
    retryBaseMs: 20,
    ...extra,
  });
  stops.push(() => certs.stop());
  return certs;
}

const secretData = () =>
  Object.fromEntries(
    Object.entries(
      (api.get('secrets', NS, 'earpiece-webhook-tls')?.data ?? {}) as Record<string, string>,
    ).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]),
  );
/** The caBundles of the webhook configuration (the other tests run without a validating one). */
const caBundles = (plural = 'mutatingwebhookconfigurations') =>
  (
    (api.get(plural, undefined, 'earpiece-webhook')?.webhooks ?? []) as {
      clientConfig: { caBundle?: string };
    }[]
  ).map((w) =>
    w.clientConfig.caBundle ? Buffer.from(w.clientConfig.caBundle, 'base64').toString() : undefined,
  );

async function serve(certs: WebhookCertificates): Promise<WebhookServer> {
  const server = await startWebhookServer({
    port: 0,
    host: '127.0.0.1',
    certificate: certs.certificate,
    lookups: { toolsetByName: () => undefined, toolsetsInNamespace: () => [], config: () => undefined },
    sidecar: DEFAULT_SIDECAR,
    logger,
  });
  stops.push(() => server.close());
  return server;
}

/** The certificate the server presents; with `ca`, verified as the API server would (chain and name). */
function handshake(port: number, ca?: string): Promise<X509Certificate> {
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host: '127.0.0.1', port, servername: HOST, ...(ca ? { ca } : { rejectUnauthorized: false }) },
      () => {
        const cert = socket.getPeerX509Certificate();
        socket.end();
        if (cert) resolve(cert);
        else reject(new Error('no peer certificate'));
      },
    );
    socket.on('error', reject);
  });
}

const splitPem = (bundle: string) =>
  bundle.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];

describe('webhook certificates (operator mode)', () => {
  it('creates a CA and serving certificate, puts the CA into every webhook, and the webhook is trusted', async () => {
    const certs = manager();
    const holder = await certs.start();
    const data = secretData();
    expect(Object.keys(data).sort()).toEqual(['ca.crt', 'ca.key', 'tls.crt', 'tls.key']);
    expect(api.get('secrets', NS, 'earpiece-webhook-tls')?.type).toBe('kubernetes.io/tls');
    expect(holder.current).toEqual({ certPem: data[SECRET_KEYS.cert], keyPem: data[SECRET_KEYS.key] });
    expect(certificateCovers(data['tls.crt']!, serviceDnsNames(SERVICE, NS), data['ca.crt'])).toBe(true);
    expect(caBundles()).toEqual([data['ca.crt'], data['ca.crt']]);

    const server = await serve(certs);
    const presented = await handshake(server.port, caBundles()[0]);
    expect(presented.fingerprint256).toBe(new X509Certificate(data['tls.crt']!).fingerprint256);
  });

  it('puts the CA into the ToolSet validating webhook too, which then trusts the serving certificate', async () => {
    api.create('validatingwebhookconfigurations', {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'ValidatingWebhookConfiguration',
      metadata: { name: 'earpiece-webhook' },
      webhooks: [
        {
          name: 'toolsets.validate.earpiece.dev',
          clientConfig: { service: { name: SERVICE, namespace: NS, path: '/validate' } },
        },
      ],
    });
    const certs = manager();
    await certs.start();
    const ca = secretData()['ca.crt'];
    expect(caBundles()).toEqual([ca, ca]);
    expect(caBundles('validatingwebhookconfigurations')).toEqual([ca]);
    const server = await serve(certs);
    await handshake(server.port, caBundles('validatingwebhookconfigurations')[0]);
  });

  it('reuses the Secret on restart and on other replicas, writing nothing', async () => {
    await manager('replica-1').start();
    const first = secretData();
    const writes = api.writes.length;
    const again = await manager('replica-2').start();
    expect(again.current.certPem).toBe(first['tls.crt']);
    expect(api.writes.slice(writes)).toEqual([]);
  });

  it('lets replicas racing at start agree on one certificate', async () => {
    const [a, b, c] = await Promise.all([manager('a').start(), manager('b').start(), manager('c').start()]);
    expect(new Set([a.current.certPem, b.current.certPem, c.current.certPem]).size).toBe(1);
    expect(api.changes('secrets').filter((w) => w.verb === 'create')).toHaveLength(1);
  });

  it('renews the serving certificate before it expires, and serves the new one without a restart', async () => {
    const certs = manager();
    await certs.start();
    const server = await serve(certs);
    const before = secretData();
    clock.advance(300 * DAY);
    await certs.check();
    const after = secretData();
    expect(after['ca.crt']).toBe(before['ca.crt']);
    expect(after['tls.crt']).toBe(before['tls.crt']);

    clock.advance(40 * DAY);
    await certs.check();
    const renewed = secretData();
    expect(renewed['ca.crt']).toBe(before['ca.crt']);
    expect(renewed['tls.crt']).not.toBe(before['tls.crt']);
    expect(certificateCovers(renewed['tls.crt']!, serviceDnsNames(SERVICE, NS), renewed['ca.crt'])).toBe(
      true,
    );
    expect(new X509Certificate(renewed['tls.crt']!).validToDate.getTime()).toBeGreaterThan(
      clock.now().getTime() + 300 * DAY,
    );
    expect(certs.certificate.current.certPem).toBe(renewed['tls.crt']);
    // Dated by the test clock, so checked by fingerprint rather than validity.
    const presented = await handshake(server.port);
    expect(presented.fingerprint256).toBe(new X509Certificate(renewed['tls.crt']!).fingerprint256);
    expect(caBundles()).toEqual([before['ca.crt'], before['ca.crt']]);
  });

  it('rotates the CA with an overlap: the next CA is trusted before it signs, the old one until it expires', async () => {
    const timing = {
      caValidityDays: 60,
      servingValidityDays: 30,
      rotateBeforeMs: 10 * DAY,
      caOverlapMs: DAY,
    };
    const certs = manager('replica-1', timing);
    await certs.start();
    // Another replica serves whatever it last loaded, a check behind.
    const other = manager('replica-2', timing);
    await other.start();
    const before = secretData();
    /** Every replica's certificate verifies against the caBundle the API server has right now. */
    const allTrusted = () => {
      for (const bundle of caBundles())
        for (const replica of [certs, other])
          expect(
            splitPem(bundle!).some((ca) =>
              certificateCovers(replica.certificate.current.certPem, [HOST], ca),
            ),
          ).toBe(true);
    };

    clock.advance(55 * DAY);
    await certs.check();
    const overlapping = secretData();
    expect(overlapping['ca-next.crt']).toBeDefined();
    expect(overlapping['ca.crt']).toBe(before['ca.crt']);
    // The serving certificate keeps the old CA while the new one reaches the API servers.
    expect(certificateCovers(overlapping['tls.crt']!, [HOST], before['ca.crt'])).toBe(true);
    expect(certificateCovers(overlapping['tls.crt']!, [HOST], overlapping['ca-next.crt'])).toBe(false);
    expect(caBundles()).toEqual([
      `${before['ca.crt']}${overlapping['ca-next.crt']}`,
      `${before['ca.crt']}${overlapping['ca-next.crt']}`,
    ]);
    allTrusted();
    await other.check();
    allTrusted();

    // Half the overlap: nothing changes yet.
    clock.advance(DAY / 2);
    await certs.check();
    expect(secretData()).toEqual(overlapping);

    clock.advance(DAY / 2);
    await certs.check();
    const after = secretData();
    expect(after['ca.crt']).toBe(overlapping['ca-next.crt']);
    expect(after['ca-previous.crt']).toBe(before['ca.crt']);
    expect(after['ca-next.crt']).toBeUndefined();
    expect(certificateCovers(after['tls.crt']!, serviceDnsNames(SERVICE, NS), after['ca.crt'])).toBe(true);
    expect(caBundles()).toEqual([
      `${after['ca.crt']}${before['ca.crt']}`,
      `${after['ca.crt']}${before['ca.crt']}`,
    ]);
    allTrusted(); // replica-2 still serves the certificate of the old CA
    await other.check();
    expect(other.certificate.current.certPem).toBe(after['tls.crt']);
    allTrusted();

    // Once the old CA has expired it leaves the bundle.
    clock.advance(10 * DAY);
    await certs.check();
    expect(secretData()['ca-previous.crt']).toBeUndefined();
    expect(caBundles()).toEqual([after['ca.crt'], after['ca.crt']]);
  });

  it('starts afresh, without an overlap, when the CA has already expired', async () => {
    const timing = { caValidityDays: 60, servingValidityDays: 30, rotateBeforeMs: 10 * DAY };
    const certs = manager('replica-1', timing);
    await certs.start();
    const before = secretData();
    clock.advance(70 * DAY);
    await certs.check();
    const after = secretData();
    expect(after['ca.crt']).not.toBe(before['ca.crt']);
    expect(after['ca-previous.crt']).toBeUndefined();
    expect(after['ca-next.crt']).toBeUndefined();
    expect(certificateCovers(after['tls.crt']!, serviceDnsNames(SERVICE, NS), after['ca.crt'])).toBe(true);
    expect(caBundles()).toEqual([after['ca.crt'], after['ca.crt']]);
  });

  it('puts the caBundle back when something resets it, and replaces a certificate for another Service', async () => {
    const certs = manager();
    await certs.start();
    const mwc = api.get('mutatingwebhookconfigurations', undefined, 'earpiece-webhook')!;
    for (const w of mwc.webhooks as { clientConfig: Record<string, unknown> }[])
      delete w.clientConfig.caBundle;
    api.update('mutatingwebhookconfigurations', mwc);
    expect(caBundles()).toEqual([undefined, undefined]);
    await certs.check();
    const ca = secretData()['ca.crt'];
    expect(caBundles()).toEqual([ca, ca]);

    // A Secret made for some other Service name is not good for this one.
    const foreign = webhookCertificates({ service: 'other', namespace: NS, now: clock.now() });
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    const secret = api.get('secrets', NS, 'earpiece-webhook-tls')!;
    api.update('secrets', {
      ...secret,
      data: {
        'ca.crt': b64(foreign.ca.certPem),
        'ca.key': b64(foreign.ca.keyPem),
        'tls.crt': b64(foreign.serving.certPem),
        'tls.key': b64(foreign.serving.keyPem),
      },
    } as KObject);
    await certs.check();
    const fixed = secretData();
    expect(fixed['ca.crt']).toBe(foreign.ca.certPem);
    expect(certificateCovers(fixed['tls.crt']!, serviceDnsNames(SERVICE, NS), fixed['ca.crt'])).toBe(true);
  });

  it('waits for the API server at start, retrying', async () => {
    api.block('replica-1');
    const certs = manager();
    const started = certs.start();
    await new Promise((r) => setTimeout(r, 100));
    expect(api.get('secrets', NS, 'earpiece-webhook-tls')).toBeUndefined();
    api.unblock('replica-1');
    const holder = await started;
    expect(holder.current.certPem).toBe(secretData()['tls.crt']);
  });
});

describe('webhook certificates (cert-manager mode)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'earpiece-certs-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /**
   * Publishes the files as the kubelet does for a Secret volume: a new timestamped directory, the
   * `..data` symlink swapped to it in one rename, and the visible names linking through `..data`.
   */
  async function publish(certPem: string, keyPem: string): Promise<void> {
    const version = `..${Date.now()}_${Math.random().toString(36).slice(2)}`;
    await mkdir(path.join(dir, version));
    await writeFile(path.join(dir, version, 'tls.crt'), certPem);
    await writeFile(path.join(dir, version, 'tls.key'), keyPem);
    await symlink(version, path.join(dir, '..data_tmp'));
    await rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
    for (const f of ['tls.crt', 'tls.key']) {
      await symlink(path.join('..data', f), path.join(dir, f)).catch(() => undefined);
    }
  }

  it('serves the mounted certificate, follows its renewal, and leaves the caBundle to cert-manager', async () => {
    const first = webhookCertificates({ service: SERVICE, namespace: NS, now: new Date() });
    await publish(first.serving.certPem, first.serving.keyPem);
    const certs = manager('replica-1', { mode: 'cert-manager', certDir: dir });
    const holder = await certs.start();
    expect(holder.current.certPem).toBe(first.serving.certPem);
    const server = await serve(certs);
    expect((await handshake(server.port, first.ca.certPem)).fingerprint256).toBe(
      new X509Certificate(first.serving.certPem).fingerprint256,
    );

    const second = webhookCertificates({ service: SERVICE, namespace: NS, now: new Date() });
    await publish(second.serving.certPem, second.serving.keyPem);
    await expect.poll(() => holder.current.certPem, { timeout: 10_000 }).toBe(second.serving.certPem);
    expect((await handshake(server.port, second.ca.certPem)).fingerprint256).toBe(
      new X509Certificate(second.serving.certPem).fingerprint256,
    );
    expect(api.writes).toEqual([]);
    expect(caBundles()).toEqual([undefined, undefined]);
  });
});
