/**
 * The webhook's serving certificate, on every replica, in one of two modes:
 * - operator: a CA and a serving certificate live in a Secret in the operator's namespace. At start
 *   and then periodically, each replica reads it, creates it if missing, renews the serving certificate
 *   (same CA) or the CA itself before expiry, and writes it back with optimistic concurrency, so
 *   replicas racing each other end up with the one that was written first. The CA bundle goes into
 *   every webhook of the MutatingWebhookConfiguration (again periodically, as a `helm upgrade` may reset
 *   it); while a new CA settles, the bundle also carries the previous one, so replicas still serving a
 *   certificate of the old CA stay trusted.
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
  /** First wait after a failed check at start (doubles up to 30 s). */
  retryBaseMs?: number;
}

export class CertError extends Error {
  readonly code: OperatorErrorCode = 'ERP_CERT';
}

const jsonPatch = setHeaderOptions('Content-Type', PatchStrategy.JsonPatch);

interface Material {
  ca: KeyPairPem;
  previousCa: string | undefined;
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
      try {
        if (secret) {
          await core.replaceNamespacedSecret({
            name: secretName,
            namespace,
            body: { ...secret, type: secret.type ?? 'kubernetes.io/tls', data },
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
          : 'Renewed';
      logger.info({ secret: secretName, namespace }, `${what} webhook certificate Secret`);
      return next!;
    }
  }

  /** The same material when nothing needs doing, else new material. */
  private renew(current: Material | undefined, now: Date): Material {
    const rotateBefore = this.o.rotateBeforeMs ?? DEFAULT_ROTATE_BEFORE_MS;
    const dnsNames = serviceDnsNames(this.o.serviceName, this.o.namespace);
    const serving = (ca: KeyPairPem) =>
      createServingCertificate({
        ca,
        dnsNames,
        now,
        ...(this.o.servingValidityDays !== undefined ? { validityDays: this.o.servingValidityDays } : {}),
      });
    if (!current || needsRotation(current.ca.certPem, now, rotateBefore)) {
      const ca = createCertificateAuthority({
        now,
        ...(this.o.caValidityDays !== undefined ? { validityDays: this.o.caValidityDays } : {}),
      });
      const previous = current && !expired(current.ca.certPem, now) ? current.ca.certPem : undefined;
      return { ca, previousCa: previous, serving: serving(ca) };
    }
    const previousCa =
      current.previousCa && !expired(current.previousCa, now) ? current.previousCa : undefined;
    if (
      needsRotation(current.serving.certPem, now, rotateBefore) ||
      !certificateCovers(current.serving.certPem, dnsNames, current.ca.certPem)
    ) {
      return { ...current, previousCa, serving: serving(current.ca) };
    }
    if (previousCa !== current.previousCa) return { ...current, previousCa };
    return current;
  }

  /** Puts the bundle into every webhook of the configuration that does not have it yet. */
  private async ensureCaBundle(bundle: string): Promise<void> {
    const { admission, webhookConfigName: name, logger } = this.o;
    const encoded = Buffer.from(bundle).toString('base64');
    for (let attempt = 0; ; attempt++) {
      let config: V1MutatingWebhookConfiguration;
      try {
        config = await admission.readMutatingWebhookConfiguration({ name });
      } catch (err) {
        if (statusOf(err) !== 404) throw err;
        logger.warn(
          { webhookConfiguration: name },
          'Found no MutatingWebhookConfiguration to put the CA into',
        );
        return;
      }
      const ops = (config.webhooks ?? []).flatMap((w, i) =>
        w.clientConfig?.caBundle === encoded
          ? []
          : [{ op: 'add', path: `/webhooks/${i}/clientConfig/caBundle`, value: encoded }],
      );
      if (ops.length === 0) return;
      try {
        // The test pins the webhook list we computed the indexes from.
        await admission.patchMutatingWebhookConfiguration(
          {
            name,
            body: [
              { op: 'test', path: '/metadata/resourceVersion', value: config.metadata?.resourceVersion },
              ...ops,
            ],
          },
          jsonPatch,
        );
        logger.info({ webhookConfiguration: name, webhooks: ops.length }, 'Patched caBundle');
        return;
      } catch (err) {
        if ((statusOf(err) === 409 || statusOf(err) === 422) && attempt < 3) continue;
        throw err;
      }
    }
  }
}

function decode(data: Record<string, string> | undefined, key: string): string | undefined {
  const value = data?.[key];
  return value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8');
}

function materialOf(secret: V1Secret | undefined): Material | undefined {
  const data = secret?.data;
  const caCert = decode(data, SECRET_KEYS.caCert);
  const caKey = decode(data, SECRET_KEYS.caKey);
  const cert = decode(data, SECRET_KEYS.cert);
  const key = decode(data, SECRET_KEYS.key);
  if (!caCert || !caKey || !cert || !key) return undefined;
  return {
    ca: { certPem: caCert, keyPem: caKey },
    previousCa: decode(data, SECRET_KEYS.previousCaCert),
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

/** The PEM bundle for caBundle: the CA, then the previous one while it is still valid. */
export function bundleOf(m: Material, now: Date): string {
  const pems = [m.ca.certPem, ...(m.previousCa && !expired(m.previousCa, now) ? [m.previousCa] : [])];
  return pems.map((p) => (p.endsWith('\n') ? p : `${p}\n`)).join('');
}
