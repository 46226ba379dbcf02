/** Certificates for tests of the webhook, made by the operator's own functions as its Secret upkeep does. */
import {
  createCertificateAuthority,
  createServingCertificate,
  type KeyPairPem,
  serviceDnsNames,
} from '../../src/operator/certs.js';

/** A new CA and a serving certificate for `<service>.<namespace>.svc` and the Service's other names. */
export function webhookCertificates(options: { service: string; namespace: string; now: Date }): {
  ca: KeyPairPem;
  serving: KeyPairPem;
} {
  const ca = createCertificateAuthority({ now: options.now });
  const serving = createServingCertificate({
    ca,
    dnsNames: serviceDnsNames(options.service, options.namespace),
    now: options.now,
  });
  return { ca, serving };
}
