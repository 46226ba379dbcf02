/**
 * AdmissionReviews as the API server sends them to the operator's webhook: the review of one object, and
 * its delivery over TLS trusting only the webhook's CA, addressed to the Service's name.
 */
import { request as httpsRequest } from 'node:https';

export const WEBHOOK_SERVER_NAME = 'earpiece-webhook.earpiece-system.svc';

/** A v1 AdmissionReview of a pod CREATE; `overrides` replace request fields (kind, resource, userInfo…). */
export function admissionReview(
  object: unknown,
  options: { uid?: string; namespace?: string; overrides?: Record<string, unknown> } = {},
): Record<string, unknown> {
  return {
    apiVersion: 'admission.k8s.io/v1',
    kind: 'AdmissionReview',
    request: {
      uid: options.uid ?? 'a1b2',
      kind: { group: '', version: 'v1', kind: 'Pod' },
      resource: { group: '', version: 'v1', resource: 'pods' },
      namespace: options.namespace ?? 'voice',
      operation: 'CREATE',
      object,
      ...options.overrides,
    },
  };
}

/**
 * Posts a review to the webhook on 127.0.0.1:`port`: its status and body. A refusal may close the
 * connection before the body is read; the status is known by then.
 */
export function sendReview(
  port: number,
  ca: string,
  review: unknown,
  path = '/mutate',
): Promise<{ status: number; text: string }> {
  const body = JSON.stringify(review);
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        method: 'POST',
        ca,
        servername: WEBHOOK_SERVER_NAME,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        const done = () => resolve({ status: res.statusCode ?? 0, text });
        res.on('data', (c) => {
          text += c;
        });
        res.on('end', done);
        res.on('error', done);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
