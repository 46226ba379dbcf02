import { CoreV1Api } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import { statusOf } from '../../src/operator/api-errors.js';
import { startFakeApiServer } from '../support/fake-apiserver.js';

describe('statusOf', () => {
  it('reads the HTTP status of a failed API call, and nothing from a failed connection', async () => {
    const api = await startFakeApiServer();
    const core = api.kubeConfig('test').makeApiClient(CoreV1Api);
    const failure = (call: Promise<unknown>) =>
      call.then(
        () => undefined,
        (err: unknown) => err,
      );
    const secret = { metadata: { name: 'tls' } };
    try {
      expect(statusOf(await failure(core.readNamespacedSecret({ name: 'tls', namespace: 'ops' })))).toBe(404);
      await core.createNamespacedSecret({ namespace: 'ops', body: secret });
      expect(statusOf(await failure(core.createNamespacedSecret({ namespace: 'ops', body: secret })))).toBe(
        409,
      );
    } finally {
      await api.close();
    }
    const refused = await failure(core.readNamespacedSecret({ name: 'tls', namespace: 'ops' }));
    expect(refused).toBeInstanceOf(Error);
    expect(statusOf(refused)).toBeUndefined();
    expect(statusOf('404')).toBeUndefined();
  });
});
