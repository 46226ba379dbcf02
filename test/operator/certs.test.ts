import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { describe, expect, it } from 'vitest';
import {
  certificateCovers,
  createCertificateAuthority,
  createServingCertificate,
  needsRotation,
  serviceDnsNames,
} from '../../src/operator/certs.js';
import { webhookCertificates } from '../support/certs.js';

const DAY = 86_400_000;
const now = new Date('2026-03-01T12:00:00Z');
const names = serviceDnsNames('earpiece-webhook', 'earpiece');
const { ca, serving } = webhookCertificates({
  service: 'earpiece-webhook',
  namespace: 'earpiece',
  now,
});

/** A TLS handshake over loopback, verified the way the API server verifies the webhook. */
async function handshake(pair: { certPem: string; keyPem: string }, caPem: string, servername: string) {
  const server = tls.createServer({ cert: pair.certPem, key: pair.keyPem }, (socket) => socket.end('ok'));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const socket = tls.connect({
      port: (server.address() as AddressInfo).port,
      host: '127.0.0.1',
      ca: caPem,
      servername,
    });
    const [error] = await Promise.race([
      once(socket, 'secureConnect').then(() => [undefined]),
      once(socket, 'error'),
    ]);
    socket.destroy();
    return error as Error | undefined;
  } finally {
    server.close();
  }
}

describe('webhook certificates', () => {
  it('names every DNS name of the Service', () => {
    expect(names).toEqual([
      'earpiece-webhook',
      'earpiece-webhook.earpiece',
      'earpiece-webhook.earpiece.svc',
      'earpiece-webhook.earpiece.svc.cluster.local',
    ]);
    const cert = new X509Certificate(serving.certPem);
    expect(cert.subjectAltName?.split(', ')).toEqual(names.map((n) => `DNS:${n}`));
    expect(cert.ca).toBe(false);
    expect(cert.keyUsage).toContain('1.3.6.1.5.5.7.3.1'); // serverAuth
    expect(new X509Certificate(ca.certPem).ca).toBe(true);
    expect(certificateCovers(serving.certPem, names, ca.certPem)).toBe(true);
  });

  it('is valid from shortly before now for a year; the CA for ten', () => {
    const cert = new X509Certificate(serving.certPem);
    expect(cert.validFromDate.getTime()).toBeLessThan(now.getTime());
    expect(cert.validToDate.getTime()).toBe(now.getTime() + 365 * DAY);
    expect(new X509Certificate(ca.certPem).validToDate.getTime()).toBe(now.getTime() + 3650 * DAY);
  });

  it('passes a real TLS handshake for the .svc name with only the CA trusted', async () => {
    expect(await handshake(serving, ca.certPem, 'earpiece-webhook.earpiece.svc')).toBeUndefined();
    expect(await handshake(serving, ca.certPem, 'other.earpiece.svc')).toMatchObject({
      code: 'ERR_TLS_CERT_ALTNAME_INVALID',
    });
    const stranger = createCertificateAuthority({ now });
    expect(await handshake(serving, stranger.certPem, 'earpiece-webhook.earpiece.svc')).toBeInstanceOf(Error);
  });

  it('tells when to rotate: 30 days before expiry, when unreadable or not yet valid', () => {
    expect(needsRotation(serving.certPem, now)).toBe(false);
    expect(needsRotation(serving.certPem, new Date(now.getTime() + 334 * DAY))).toBe(false);
    expect(needsRotation(serving.certPem, new Date(now.getTime() + 336 * DAY))).toBe(true);
    expect(needsRotation(serving.certPem, new Date(now.getTime() + 300 * DAY), 90 * DAY)).toBe(true);
    expect(needsRotation(serving.certPem, new Date(now.getTime() - 2 * DAY))).toBe(true);
    expect(needsRotation('not a certificate', now)).toBe(true);
  });

  it('notices a certificate for other names or from another CA', () => {
    const other = createServingCertificate({ ca, dnsNames: serviceDnsNames('old-name', 'earpiece'), now });
    expect(certificateCovers(other.certPem, names, ca.certPem)).toBe(false);
    const stranger = createCertificateAuthority({ now });
    expect(certificateCovers(serving.certPem, names, stranger.certPem)).toBe(false);
    expect(certificateCovers('garbage', names)).toBe(false);
  });
});
