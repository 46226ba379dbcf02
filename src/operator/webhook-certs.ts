/**
 * The webhook's serving certificate, on every replica, in one of two modes:
 * - operator: a CA and a serving certificate live in a Secret in the operator's namespace. At start
 *   and then periodically, each replica reads it, creates it if missing, renews the serving certificate
 *   (same CA) or the CA itself before expiry, and writes it back with optimistic concurrency, so
 *   replicas racing each other end up with the one that was written first. The CA bundle goes into
 *   every webhook of the Mutating- and ValidatingWebhookConfiguration (again periodically, as a `helm upgrade` may reset
 *   it). A CA rotation overlaps: the next CA joins the bundle first, and only after `caOverlapMs` does
 *   it sign the serving certificate, by when every API server trusts it; the old CA then stays in the
 *   bundle until it expires, so replicas still serving a certificate it signed stay trusted.
 * - cert-manager: tls.crt and tls.key are read from a mounted directory and watched; cert-manager's CA
 *   injector keeps the caBundle.
 * Either way the webhook gets new certificates through its CertificateHolder, without a restart.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { type FSWatcher, watch as watchDir } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type AdmissionregistrationV1Api,
  type CoreV1Api,
  PatchStrategy,
  setHeaderOptions,
  type V1MutatingWebhookConfiguration,
  type V1Secret,
  type V1ValidatingWebhookConfiguration,
} from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import { statusOf } from './api-errors.js';
import {
  certificateCovers,
  createCertificateAuthority,
  createServingCertificate,
  DEFAULT_ROTATE_BEFORE_MS,
  type KeyPairPem,
  needsRotation,
  serviceDnsNames,
} from './certs.js';
import { type Clock, systemClock } from './clock.js';
import type { CertMode } from './config.js';
import type { OperatorErrorCode } from './errors.js';
import { CertificateHolder } from './webhook.js';

export const SECRET_KEYS = {
  caCert: 'ca.crt',
  caKey: 'ca.key',
  /** The CA before the last CA rotation, kept in the bundle until it expires. */
  previousCaCert: 'ca-previous.crt',
  /** The CA that will sign once the overlap is over; in the bundle already. */
  nextCaCert: 'ca-next.crt',
  nextCaKey: 'ca-next.key',
  cert: 'tls.crt',
  key: 'tls.key',
} as const;

export interface WebhookCertsOptions {
  mode: CertMode;
  core: CoreV1Api;
  admission: AdmissionregistrationV1Api;
  /** The operator's namespace: the Secret's, and the Service's. */
  namespace: string;
  secretName: string;
  serviceName: string;
  webhookConfigName: string;
  /** cert-manager mode: the mounted kubernetes.io/tls Secret. */
  certDir: string;
  clock?: Clock;
  logger: Logger;
  /** How often the Secret, the caBundle (or the mounted files) are checked. */
  checkIntervalMs?: number;
  /** Renew this long before a certificate expires. */
  rotateBeforeMs?: number;
  caValidityDays?: number;
  servingValidityDays?: number;
  /** How long the next CA is in the caBundle before it signs the serving certificate. */
  caOverlapMs?: number;
  /** First wait after a failed check at start (doubles up to 30 s). */
  retryBaseMs?: number;
}

/** On the Secret: when the next CA joined the bundle (ISO 8601). */
export const NEXT_CA_SINCE = 'earpiece.dev/next-ca-since';
export const DEFAULT_CA_OVERLAP_MS = 86_400_000;

export class CertError extends Error {
  readonly code: OperatorErrorCode = 'ERP_CERT';
}

const jsonPatch = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);

interface Material {
  ca: KeyPairPem;
  previousCa: string | undefined;
  nextCa?: { ca: KeyPairPem; since: Date } | undefined;
  serving: KeyPairPem;
}

export class WebhookCertificates {
  private holder: CertificateHolder | undefined;
  private timer: NodeJS.Timeout | undefined;
  private watcher: FSWatcher | undefined;
  private readonly abort = new AbortController();
  private readonly clock: Clock;
  private checking: Promise<void> = Promise.resolve();

  constructor(private readonly o: WebhookCertsOptions) {
    this.clock = o.clock ?? systemClock;
  }

  /** The current serving certificate, once start() has resolved. */
  get certificate(): CertificateHolder {
    if (!this.holder) throw new CertError('the webhook certificates are not loaded yet');
    return this.holder;
  }

  /**
   * Loads (or makes) the certificate, retrying until it succeeds or stop() is called, then keeps it
   * current in the background.
   */
  async start(): Promise<CertificateHolder> {
    let wait = this.o.retryBaseMs ?? 1000;
    for (;;) {
      try {
        const pair = await this.load();
        this.holder = new CertificateHolder(pair);
        break;
      } catch (err) {
        if (this.abort.signal.aborted) throw err;
        this.o.logger.warn({ err: String(err), retryInMs: wait }, 'Failed to load webhook certificate');
        await sleep(wait, undefined, { signal: this.abort.signal }).catch(() => undefined);
        if (this.abort.signal.aborted) throw new CertError('stopped before the webhook certificate loaded');
        wait = Math.min(wait * 2, 30_000);
      }
    }
    const interval = this.o.checkIntervalMs ?? 60_000;
    this.timer = setInterval(() => void this.check(), interval);
    this.timer.unref();
    if (this.o.mode === 'cert-manager') this.watchFiles();
    return this.holder;
  }

  stop(): void {
    this.abort.abort();
    clearInterval(this.timer);
    this.watcher?.close();
  }

  /** One check now (the timer and the file watcher call this). */
  check(): Promise<void> {
    this.checking = this.checking.then(async () => {
      try {
        const pair = await this.load();
        const holder = this.holder;
        if (holder && (holder.current.certPem !== pair.certPem || holder.current.keyPem !== pair.keyPem)) {
          holder.set(pair);
          this.o.logger.info({ mode: this.o.mode }, 'Loaded new webhook certificate');
        }
      } catch (err) {
        this.o.logger.warn({ err: String(err) }, 'Failed to check webhook certificate');
      }
    });
    return this.checking;
  }

  private async load(): Promise<KeyPairPem> {
    if (this.o.mode === 'cert-manager') return this.readFiles();
    const material = await this.ensureSecret();
    await this.ensureCaBundle(bundleOf(material, this.clock.now()));
    return material.serving;
  }

  // ---- cert-manager mode ----

  private async readFiles(): Promise<KeyPairPem> {
    const [certPem, keyPem] = await Promise.all([
      readFile(path.join(this.o.certDir, SECRET_KEYS.cert), 'utf8'),
      readFile(path.join(this.o.certDir, SECRET_KEYS.key), 'utf8'),
    ]);
    // A pair read halfway through a renewal would break the TLS server; the next check reads it whole.
    if (!matches(certPem, keyPem)) {
      throw new CertError(`${this.o.certDir}: tls.crt and tls.key are not PEM of one key pair`);
    }
    return { certPem, keyPem };
  }

  private watchFiles(): void {
    try {
      // The kubelet swaps a `..data` symlink in this directory when cert-manager renews the Secret.
      this.watcher = watchDir(this.o.certDir, () => void this.check());
      this.watcher.on('error', () => undefined);
    } catch (err) {
      this.o.logger.warn({ dir: this.o.certDir, err: String(err) }, 'Failed to watch certificate directory');
    }
  }

  // ---- operator mode ----

  /** The Secret's certificates, renewed or created as needed; written back when they changed. */
  private async ensureSecret(): Promise<Material> {
    const { core, namespace, secretName, logger } = this.o;
    for (let attempt = 0; ; attempt++) {
      let secret: V1Secret | undefined;
      try {
        secret = await core.readNamespacedSecret({ name: secretName, namespace });
      } catch (err) {
        if (statusOf(err) !== 404) throw err;
      }
      const now = this.clock.now();
      const current = materialOf(secret);
      const next = this.renew(current, now);
      if (next === current && current) return current;
      const data = dataOf(next!);
      const annotations = { ...secret?.metadata?.annotations };
      delete annotations[NEXT_CA_SINCE];
      if (next!.nextCa) annotations[NEXT_CA_SINCE] = next!.nextCa.since.toISOString();
      try {
        if (secret) {
          await core.replaceNamespacedSecret({
            name: secretName,
            namespace,
            body: {
              ...secret,
              metadata: { ...secret.metadata, annotations },
              type: secret.type ?? 'kubernetes.io/tls',
              data,
            },
          });
        } else {
          await core.createNamespacedSecret({
            namespace,
            body: {
              apiVersion: 'v1',
              kind: 'Secret',
              metadata: {
                name: secretName,
                namespace,
                labels: { 'app.kubernetes.io/name': 'earpiece', 'app.kubernetes.io/component': 'webhook' },
                annotations,
              },
              type: 'kubernetes.io/tls',
              data,
            },
          });
        }
      } catch (err) {
        // Another replica wrote first: read what it wrote and use that.
        if ((statusOf(err) === 409 || statusOf(err) === 422) && attempt < 3) continue;
        throw err;
      }
      const what = !current
        ? 'Created'
        : next!.ca.certPem !== current.ca.certPem
          ? 'Rotated CA of'
          : next!.nextCa && !current.nextCa
            ? 'Added next CA to'
            : 'Renewed';
      logger.info({ secret: secretName, namespace }, `${what} webhook certificate Secret`);
      return next!;
    }
  }

  /** The same material when nothing needs doing, else new material. */
  private renew(current: Material | undefined, now: Date): Material {
    const rotateBefore = this.o.rotateBeforeMs ?? DEFAULT_ROTATE_BEFORE_MS;
    const overlap = this.o.caOverlapMs ?? DEFAULT_CA_OVERLAP_MS;
    const dnsNames = serviceDnsNames(this.o.serviceName, this.o.namespace);
    const serving = (ca: KeyPairPem) =>
      createServingCertificate({
        ca,
        dnsNames,
        now,
        ...(this.o.servingValidityDays !== undefined ? { validityDays: this.o.servingValidityDays } : {}),
      });
    const newCa = () =>
      createCertificateAuthority({
        now,
        ...(this.o.caValidityDays !== undefined ? { validityDays: this.o.caValidityDays } : {}),
      });
    // Nothing to overlap with: no CA yet, or one no client accepts any more.
    if (!current || (expired(current.ca.certPem, now) && !current.nextCa)) {
      const ca = newCa();
      return { ca, previousCa: undefined, serving: serving(ca) };
    }
    const previousCa =
      current.previousCa && !expired(current.previousCa, now) ? current.previousCa : undefined;
    const caExpired = expired(current.ca.certPem, now);
    if (current.nextCa && (now.getTime() - current.nextCa.since.getTime() >= overlap || caExpired)) {
      // Trusted for the whole overlap: the next CA signs from now on, the old one stays in the bundle.
      const ca = current.nextCa.ca;
      return { ca, previousCa: caExpired ? undefined : current.ca.certPem, serving: serving(ca) };
    }
    let renewed: Material = { ...current, previousCa };
    if (!current.nextCa && needsRotation(current.ca.certPem, now, rotateBefore)) {
      // Into the bundle first; the serving certificate keeps the current CA until the overlap is over.
      renewed = { ...renewed, nextCa: { ca: newCa(), since: now } };
    }
    if (
      needsRotation(current.serving.certPem, now, rotateBefore) ||
      !certificateCovers(current.serving.certPem, dnsNames, current.ca.certPem)
    ) {
      renewed = { ...renewed, serving: serving(current.ca) };
    }
    const changed =
      renewed.nextCa !== current.nextCa ||
      renewed.serving !== current.serving ||
      previousCa !== current.previousCa;
    return changed ? renewed : current;
  }

  /** Puts the bundle into every webhook of both configurations: pods' injection, ToolSets' validation. */
  private async ensureCaBundle(bundle: string): Promise<void> {
    const { admission } = this.o;
    await this.patchCaBundle(bundle, {
      kind: 'MutatingWebhookConfiguration',
      read: (name) => admission.readMutatingWebhookConfiguration({ name }),
      patch: (name, body) => admission.patchMutatingWebhookConfiguration({ name, body }, jsonPatch),
    });
    await this.patchCaBundle(bundle, {
      kind: 'ValidatingWebhookConfiguration',
      // The chart leaves it out when ToolSet validation is turned off.
      optional: true,
      read: (name) => admission.readValidatingWebhookConfiguration({ name }),
      patch: (name, body) => admission.patchValidatingWebhookConfiguration({ name, body }, jsonPatch),
    });
  }

  /** Puts the bundle into every webhook of one configuration that does not have it yet. */
  private async patchCaBundle(bundle: string, config: WebhookConfigurationApi): Promise<void> {
    const { webhookConfigName: name, logger } = this.o;
    const encoded = Buffer.from(bundle).toString('base64');
    for (let attempt = 0; ; attempt++) {
      let current: WebhookConfiguration;
      try {
        current = await config.read(name);
      } catch (err) {
        if (statusOf(err) !== 404) throw err;
        if (!config.optional) {
          logger.warn({ webhookConfiguration: name }, `Found no ${config.kind} to put the CA into`);
        }
        return;
      }
      const ops = (current.webhooks ?? []).flatMap((w, i) =>
        w.clientConfig?.caBundle === encoded
          ? []
          : [{ op: 'add', path: `/webhooks/${i}/clientConfig/caBundle`, value: encoded }],
      );
      if (ops.length === 0) return;
      try {
        // The test pins the webhook list we computed the indexes from.
        await config.patch(name, [
          { op: 'test', path: '/metadata/resourceVersion', value: current.metadata?.resourceVersion },
          ...ops,
        ]);
        logger.info(
          { webhookConfiguration: name, kind: config.kind, webhooks: ops.length },
          'Patched caBundle',
        );
        return;
      } catch (err) {
        if ((statusOf(err) === 409 || statusOf(err) === 422) && attempt < 3) continue;
        throw err;
      }
    }
  }
}

type WebhookConfiguration = V1MutatingWebhookConfiguration | V1ValidatingWebhookConfiguration;

/** Reading and JSON-patching one kind of webhook configuration. */
interface WebhookConfigurationApi {
  kind: 'MutatingWebhookConfiguration' | 'ValidatingWebhookConfiguration';
  /** Absent is normal: no warning. */
  optional?: boolean;
  read(name: string): Promise<WebhookConfiguration>;
  patch(name: string, body: object[]): Promise<unknown>;
}

function decode(data: Record<string, string> | undefined, key: string): string | undefined {
  const value = data?.[key];
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8');
}

function materialOf(secret: V1Secret | undefined): Material | undefined {
  const data = secret?.data;
  const nextCert = decode(data, SECRET_KEYS.nextCaCert);
  const nextKey = decode(data, SECRET_KEYS.nextCaKey);
  const since = new Date(secret?.metadata?.annotations?.[NEXT_CA_SINCE] ?? Number.NaN);
  const caCert = decode(data, SECRET_KEYS.caCert);
  const caKey = decode(data, SECRET_KEYS.caKey);
  const cert = decode(data, SECRET_KEYS.cert);
  const key = decode(data, SECRET_KEYS.key);
  if (!caCert || !caKey || !cert || !key) return undefined;
  return {
    ca: { certPem: caCert, keyPem: caKey },
    previousCa: decode(data, SECRET_KEYS.previousCaCert),
    // Without its start the overlap cannot be timed: a next CA that lost it is made again.
    nextCa:
      nextCert && nextKey && !Number.isNaN(since.getTime())
        ? { ca: { certPem: nextCert, keyPem: nextKey }, since }
        : undefined,
    serving: { certPem: cert, keyPem: key },
  };
}

function dataOf(m: Material): Record<string, string> {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  return {
    [SECRET_KEYS.caCert]: b64(m.ca.certPem),
    [SECRET_KEYS.caKey]: b64(m.ca.keyPem),
    [SECRET_KEYS.cert]: b64(m.serving.certPem),
    [SECRET_KEYS.key]: b64(m.serving.keyPem),
    ...(m.previousCa ? { [SECRET_KEYS.previousCaCert]: b64(m.previousCa) } : {}),
    ...(m.nextCa
      ? {
          [SECRET_KEYS.nextCaCert]: b64(m.nextCa.ca.certPem),
          [SECRET_KEYS.nextCaKey]: b64(m.nextCa.ca.keyPem),
        }
      : {}),
  };
}

function matches(certPem: string, keyPem: string): boolean {
  try {
    return new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem));
  } catch {
    return false;
  }
}

function expired(certPem: string, now: Date): boolean {
  return needsRotation(certPem, now, 0);
}

/** The PEM bundle for caBundle: the CA, the next one during an overlap, the previous one while valid. */
export function bundleOf(m: Material, now: Date): string {
  const pems = [
    m.ca.certPem,
    ...(m.nextCa ? [m.nextCa.ca.certPem] : []),
    ...(m.previousCa && !expired(m.previousCa, now) ? [m.previousCa] : []),
  ];
  return pems.map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join('');
}
