/**
 * The in-process API server stand-in, driven through the real @kubernetes/client-node: the behaviour the
 * controller tests rely on must hold here first.
 */
import {
  AdmissionregistrationV1Api,
  type ApiException,
  AuthorizationV1Api,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  V1MicroTime,
  Watch,
} from '@kubernetes/client-node';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type FakeApiServer, type KObject, startFakeApiServer } from '../support/fake-apiserver.js';

const TS = { group: 'earpiece.dev', version: 'v1alpha1', plural: 'toolsets' };
const toolset = (name: string, tools: unknown[] = [{ name: 'now', builtin: 'time' }]): KObject => ({
  apiVersion: 'earpiece.dev/v1alpha1',
  kind: 'ToolSet',
  metadata: { name, namespace: 'voice' },
  spec: { tools },
});

let api: FakeApiServer;
let kc: KubeConfig;
beforeEach(async () => {
  api = await startFakeApiServer();
  kc = api.kubeConfig();
});
afterEach(async () => {
  await api.close();
});

async function status(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 200;
  } catch (err) {
    return (err as ApiException<unknown>).code;
  }
}

interface Seen {
  type: string;
  rv: string;
  name?: string;
  code?: number;
}

/** Opens a raw watch and records its events until `until` says stop. */
async function watchEvents(
  path: string,
  params: Record<string, string | boolean>,
  until: (seen: Seen[]) => boolean,
): Promise<Seen[]> {
  const seen: Seen[] = [];
  const watch = new Watch(kc);
  let controller: AbortController | undefined;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`watch saw only ${JSON.stringify(seen)}`)), 10_000);
    const check = () => {
      if (until(seen)) {
        clearTimeout(timer);
        resolve();
      }
    };
    watch
      .watch(
        path,
        params,
        (type, obj: KObject & { code?: number }) => {
          seen.push({
            type,
            rv: obj.metadata?.resourceVersion ?? '',
            name: obj.metadata?.name,
            code: obj.code,
          });
          check();
        },
        () => check(),
      )
      .then((c) => {
        controller = c;
        check();
      }, reject);
  });
  controller?.abort();
  return seen;
}

describe('fake API server', () => {
  it('lists with a resourceVersion and replays a watch from it', async () => {
    const custom = kc.makeApiClient(CustomObjectsApi);
    await custom.createNamespacedCustomObject({ ...TS, namespace: 'voice', body: toolset('a') });
    const list = await custom.listClusterCustomObject(TS);
    expect(list.items.map((i: KObject) => i.metadata.name)).toEqual(['a']);
    const from = list.metadata.resourceVersion as string;
    await custom.createNamespacedCustomObject({ ...TS, namespace: 'voice', body: toolset('b') });
    api.delete('toolsets', 'voice', 'a');
    const seen = await watchEvents('/apis/earpiece.dev/v1alpha1/toolsets', { resourceVersion: from }, (s) =>
      s.some((e) => e.type === 'DELETED'),
    );
    expect(seen.map((e) => [e.type, e.name])).toEqual([
      ['ADDED', 'b'],
      ['DELETED', 'a'],
    ]);
    expect(Number(seen[1]!.rv)).toBeGreaterThan(Number(seen[0]!.rv));
  });

  it('answers a watch from a compacted resourceVersion with an ERROR event of code 410', async () => {
    api.create('toolsets', toolset('a'));
    const old = api.resourceVersion;
    api.create('toolsets', toolset('b'));
    api.compact();
    const seen = await watchEvents('/apis/earpiece.dev/v1alpha1/toolsets', { resourceVersion: old }, (s) =>
      s.some((e) => e.type === 'ERROR'),
    );
    expect(seen).toEqual([{ type: 'ERROR', rv: '', name: undefined, code: 410 }]);
  });

  it('sends bookmarks only to watches that asked for them', async () => {
    const seen = await watchEvents(
      '/apis/earpiece.dev/v1alpha1/toolsets',
      { resourceVersion: api.resourceVersion, allowWatchBookmarks: true },
      (s) => {
        if (s.length === 0) api.bookmark();
        return s.length > 0;
      },
    );
    expect(seen[0]).toMatchObject({ type: 'BOOKMARK', rv: api.resourceVersion });
  });

  it('turns label changes into ADDED and DELETED for a selector watch', async () => {
    api.create('pods', { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'voice' } });
    const from = api.resourceVersion;
    const pod = api.get('pods', 'voice', 'p')!;
    api.update('pods', { ...pod, metadata: { ...pod.metadata, labels: { 'earpiece.dev/inject': 'true' } } });
    const labelled = api.get('pods', 'voice', 'p')!;
    api.update('pods', { ...labelled, metadata: { ...labelled.metadata, labels: {} } });
    const seen = await watchEvents(
      '/api/v1/pods',
      { resourceVersion: from, labelSelector: 'earpiece.dev/inject=true' },
      (s) => s.length >= 2,
    );
    expect(seen.map((e) => e.type)).toEqual(['ADDED', 'DELETED']);
  });

  it('bumps generation on spec changes only, and keeps spec and status apart', async () => {
    const custom = kc.makeApiClient(CustomObjectsApi);
    const created = await custom.createNamespacedCustomObject({
      ...TS,
      namespace: 'voice',
      body: { ...toolset('a'), status: { tools: 9 } },
    });
    expect(created.metadata.generation).toBe(1);
    expect(created.status).toBeUndefined();
    const merge = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
    const withStatus = await custom.patchNamespacedCustomObjectStatus(
      { ...TS, namespace: 'voice', name: 'a', body: { status: { tools: 1 }, spec: { tools: [] } } },
      merge,
    );
    expect(withStatus.metadata.generation).toBe(1);
    expect(withStatus.status).toEqual({ tools: 1 });
    expect(withStatus.spec.tools).toHaveLength(1);
    const relabelled = await custom.patchNamespacedCustomObject(
      {
        ...TS,
        namespace: 'voice',
        name: 'a',
        body: { metadata: { labels: { x: 'y' } }, status: { tools: 5 } },
      },
      merge,
    );
    expect(relabelled.metadata.generation).toBe(1);
    expect(relabelled.status).toEqual({ tools: 1 });
    const edited = await custom.patchNamespacedCustomObject(
      { ...TS, namespace: 'voice', name: 'a', body: { spec: { instructions: 'be brief' } } },
      merge,
    );
    expect(edited.metadata.generation).toBe(2);
    expect(Number(edited.metadata.resourceVersion)).toBeGreaterThan(
      Number(relabelled.metadata.resourceVersion),
    );
  });

  it('rejects a stale resourceVersion with 409 and requires one for custom resources', async () => {
    const custom = kc.makeApiClient(CustomObjectsApi);
    const created = await custom.createNamespacedCustomObject({
      ...TS,
      namespace: 'voice',
      body: toolset('a'),
    });
    const replace = (body: KObject) =>
      custom.replaceNamespacedCustomObject({ ...TS, namespace: 'voice', name: 'a', body });
    await replace({ ...created, spec: { tools: [] } });
    expect(await status(replace({ ...created, spec: { tools: [{ name: 'x', builtin: 'time' }] } }))).toBe(
      409,
    );
    const { resourceVersion: _rv, ...noVersion } = created.metadata;
    expect(await status(replace({ ...created, metadata: noVersion }))).toBe(422);
  });

  it('server-side applies: creates, updates, skips no-ops, drops fields no longer applied, reports conflicts', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    const ssa = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);
    const cm = (data: Record<string, string>) => ({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'c', namespace: 'voice', labels: { a: '1' } },
      data,
    });
    const apply = (body: unknown, fieldManager = 'earpiece', force = true) =>
      core.patchNamespacedConfigMap({ name: 'c', namespace: 'voice', body, fieldManager, force }, ssa);
    const first = await apply(cm({ x: '1', y: '2' }));
    expect(first.data).toEqual({ x: '1', y: '2' });
    const again = await apply(cm({ x: '1', y: '2' }));
    expect(again.metadata?.resourceVersion).toBe(first.metadata?.resourceVersion);
    const dropped = await apply(cm({ x: '1' }));
    expect(dropped.data).toEqual({ x: '1' });
    expect(await status(apply(cm({ x: 'theirs' }), 'someone-else', false))).toBe(409);
    expect(
      await status(core.patchNamespacedConfigMap({ name: 'c', namespace: 'voice', body: cm({}) }, ssa)),
    ).toBe(422);
    expect(api.writes.filter((w) => w.resource === 'configmaps').map((w) => [w.verb, w.changed])).toEqual([
      ['apply', true],
      ['apply', false],
      ['apply', true],
    ]);
  });

  it('applies JSON patches with test operations, failing with 422 when a test fails', async () => {
    api.create('mutatingwebhookconfigurations', {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name: 'earpiece' },
      webhooks: [{ name: 'a.earpiece.dev', clientConfig: {} }],
    });
    const rv = api.get('mutatingwebhookconfigurations', undefined, 'earpiece')!.metadata.resourceVersion;
    const admission = kc.makeApiClient(AdmissionregistrationV1Api);
    const patch = (testRv: string | undefined) =>
      admission.patchMutatingWebhookConfiguration(
        {
          name: 'earpiece',
          body: [
            { op: 'test', path: '/metadata/resourceVersion', value: testRv },
            { op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: 'Q0E=' },
          ],
        },
        setHeaderOptions('Content-Type', PatchStrategy.JsonPatch),
      );
    expect(await status(patch('1'))).toBe(422);
    const patched = await patch(rv);
    expect(patched.webhooks?.[0]?.clientConfig.caBundle).toBe('Q0E=');
  });

  it('demands MicroTime in leases, as the real API server does', async () => {
    const leases = kc.makeApiClient(CoordinationV1Api);
    const lease = (renewTime: Date) => ({
      metadata: { name: 'l', namespace: 'ops' },
      spec: { holderIdentity: 'a', renewTime },
    });
    expect(await status(leases.createNamespacedLease({ namespace: 'ops', body: lease(new Date()) }))).toBe(
      400,
    );
    const ok = await leases.createNamespacedLease({ namespace: 'ops', body: lease(new V1MicroTime()) });
    expect(ok.spec?.holderIdentity).toBe('a');
  });

  it('collects the garbage of a deleted owner', async () => {
    const owner = api.create('toolsets', toolset('a'));
    const ref = { apiVersion: 'earpiece.dev/v1alpha1', kind: 'ToolSet', name: 'a', uid: owner.metadata.uid! };
    api.create('configmaps', {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'owned', namespace: 'voice', ownerReferences: [ref] },
    });
    api.create('configmaps', {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'free', namespace: 'voice' },
    });
    await kc
      .makeApiClient(CustomObjectsApi)
      .deleteNamespacedCustomObject({ ...TS, namespace: 'voice', name: 'a' });
    await expect.poll(() => api.list('configmaps', 'voice').map((c) => c.metadata.name)).toEqual(['free']);
  });

  it('fails requests of a blocked client and injected faults', async () => {
    const core = kc.makeApiClient(CoreV1Api);
    api.fail((r) => r.resource === 'secrets', 500);
    expect(await status(core.listNamespacedSecret({ namespace: 'ops' }))).toBe(500);
    expect(await status(core.listNamespacedSecret({ namespace: 'ops' }))).toBe(200);
    api.block('test');
    expect(await status(core.listNamespacedSecret({ namespace: 'ops' }))).toBe(503);
  });

  it('answers SubjectAccessReviews from its rules, records them, and refuses one without a subject', async () => {
    const authz = kc.makeApiClient(AuthorizationV1Api);
    api.allow({ user: 'alice', verb: 'get', resource: 'secrets', namespace: 'voice', names: ['weather'] });
    api.allow({ group: 'voice-admins', verb: 'get', resource: 'secrets', namespace: 'voice' });
    const ask = (spec: Record<string, unknown>, name = 'weather') =>
      authz.createSubjectAccessReview({
        body: {
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: {
            resourceAttributes: { namespace: 'voice', verb: 'get', resource: 'secrets', name },
            ...spec,
          },
        },
      });
    expect((await ask({ user: 'alice' })).status?.allowed).toBe(true);
    expect((await ask({ user: 'alice' }, 'vllm')).status?.allowed).toBe(false);
    expect((await ask({ user: 'bob', groups: ['voice-admins'] }, 'vllm')).status?.allowed).toBe(true);
    expect((await ask({ user: 'bob', groups: ['system:authenticated'] })).status?.allowed).toBe(false);
    expect(
      api.accessReviews.map((r) => [r.caller, r.spec.user, r.spec.resourceAttributes?.name, r.allowed]),
    ).toEqual([
      ['test', 'alice', 'weather', true],
      ['test', 'alice', 'vllm', false],
      ['test', 'bob', 'vllm', true],
      ['test', 'bob', 'weather', false],
    ]);
    // Nothing is stored: a review is a question.
    expect(api.writes).toEqual([]);
    expect(await status(ask({}))).toBe(422);
    api.fail((r) => r.resource === 'subjectaccessreviews', 500);
    expect(await status(ask({ user: 'alice' }))).toBe(500);
    expect(api.accessReviews).toHaveLength(4);
  });
});
