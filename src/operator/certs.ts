/**
 * Certificates for the webhook, pure: a CA and a serving certificate for the webhook's Service, made
 * with node-forge, and the checks that decide when to make new ones. No clock and no I/O: `now` comes
 * in, PEM text goes out; the operator keeps them in a Secret and puts the CA into the webhook
 * configuration's caBundle.
 */
import { X509Certificate } from 'node:crypto';
import forge from 'node-forge';
import type { OperatorErrorCode } from './errors.js';

export interface KeyPairPem {
  certPem: string;
  keyPem: string;
}

export class CertificateError extends Error {
  readonly code: OperatorErrorCode = 'ERP_CERT';
}

const DAY_MS = 86_400_000;
/** Certificates start an hour back, so a node whose clock is a little behind still accepts them. */
const BACKDATE_MS = 3_600_000;
export const DEFAULT_ROTATE_BEFORE_MS = 30 * DAY_MS;

/** The names the API server may use for a Service: short, namespaced, `.svc` and the cluster domain. */
export function serviceDnsNames(
  service: string,
  namespace: string,
  clusterDomain = 'cluster.local',
): string[] {
  return [
    service,
    `${service}.${namespace}`,
    `${service}.${namespace}.svc`,
    `${service}.${namespace}.svc.${clusterDomain}`,
  ];
}

function newCertificate(
  publicKey: forge.pki.PublicKey,
  now: Date,
  validityDays: number,
): forge.pki.Certificate {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  // A positive serial: 0x01 then 15 random bytes (RFC 5280 allows up to 20 octets).
  cert.serialNumber = `01${forge.util.bytesToHex(forge.random.getBytesSync(15))}`;
  cert.validity.notBefore = new Date(now.getTime() - BACKDATE_MS);
  cert.validity.notAfter = new Date(now.getTime() + validityDays * DAY_MS);
  return cert;
}

function keyPair(): forge.pki.rsa.KeyPair {
  // node-forge hands this to Node's native generateKeyPairSync.
  return forge.pki.rsa.generateKeyPair({ bits: 2048, e: 0x10001 });
}

export function createCertificateAuthority(options: {
  now: Date;
  commonName?: string;
  validityDays?: number;
}): KeyPairPem {
  const keys = keyPair();
  const cert = newCertificate(keys.publicKey, options.now, options.validityDays ?? 3650);
  const subject = [{ name: 'commonName', value: options.commonName ?? 'earpiece-webhook-ca' }];
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  cert.sign(keys.privateKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(keys.privateKey) };
}

export function createServingCertificate(options: {
  ca: KeyPairPem;
  dnsNames: string[];
  now: Date;
  validityDays?: number;
}): KeyPairPem {
  const [commonName] = options.dnsNames;
  if (!commonName) throw new CertificateError('a serving certificate needs at least one DNS name');
  const caCert = forge.pki.certificateFromPem(options.ca.certPem);
  const caKey = forge.pki.privateKeyFromPem(options.ca.keyPem);
  const keys = keyPair();
  const cert = newCertificate(keys.publicKey, options.now, options.validityDays ?? 365);
  // The most specific name as CN, for people reading it; clients check the SANs.
  cert.setSubject([{ name: 'commonName', value: options.dnsNames.at(-1) ?? commonName }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: options.dnsNames.map((value) => ({ type: 2, value })) },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
  ]);
  cert.sign(caKey, forge.md.sha256.create());
  return { certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(keys.privateKey) };
}

/** Time to make a new one: unreadable, not yet valid, or expiring within `before` milliseconds of `now`. */
export function needsRotation(certPem: string, now: Date, before = DEFAULT_ROTATE_BEFORE_MS): boolean {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(certPem);
  } catch {
    return true;
  }
  return now < cert.validFromDate || cert.validToDate.getTime() - now.getTime() < before;
}

/** The certificate names every one of `dnsNames` and, when a CA is given, was signed by it. */
export function certificateCovers(certPem: string, dnsNames: string[], caCertPem?: string): boolean {
  try {
    const cert = new X509Certificate(certPem);
    if (!dnsNames.every((name) => cert.checkHost(name, { wildcards: false }) === name)) return false;
    if (caCertPem === undefined) return true;
    const ca = new X509Certificate(caCertPem);
    return cert.checkIssued(ca) && cert.verify(ca.publicKey);
  } catch {
    return false;
  }
}
