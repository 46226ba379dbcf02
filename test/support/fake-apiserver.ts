/**
 * A stand-in for the Kubernetes API server, in process, over real HTTP on 127.0.0.1.
 *
 * No kube-apiserver (nor etcd with envtest, nor kind) can run on these machines, so the operator's tests
 * talk to this instead, through the real @kubernetes/client-node. It is faithful where the operator's
 * correctness depends on it, and deliberately small elsewhere:
 * - one global resourceVersion, bumped on every real write; a write that changes nothing is a no-op
 *   (no new resourceVersion, no watch event), as in the real storage layer;
 * - list with resourceVersion; watch streams (ADDED/MODIFIED/DELETED, BOOKMARK with
 *   allowWatchBookmarks) replayed from a history window; a too-old resourceVersion gets an `ERROR`
 *   event with code 410 (tests force this with compact() or expireWatches());
 * - label selectors on list and watch, with objects entering or leaving the selector seen as
 *   ADDED/DELETED;
 * - metadata.generation bumped on spec changes only (types that have one); the status subresource keeps
 *   spec and status writes apart; status is dropped on create;
 * - server-side apply (PATCH application/apply-patch+yaml, fieldManager required, create-or-update,
 *   fields a manager stops applying are removed, conflicts between appliers unless force); JSON merge
 *   patch and JSON patch (with `test`, 422 when it fails); optimistic concurrency (409 when
 *   metadata.resourceVersion is stale; custom resources require it on update);
 * - Lease times must be MicroTime (six fraction digits), as the real API server demands;
 * - ownerReference garbage collection (background: dependents go once all their owners are gone);
 * - SubjectAccessReviews (create only, nothing stored, 201), answered from a table of rules tests add
 *   with allow(), and recorded; a review without a user or group, or without exactly one of resource
 *   and non-resource attributes, is refused with 422 as the real validation does.
 * Not modelled: strategic merge patch semantics (treated as merge patch), field ownership of non-apply
 * writers, pagination, admission, RBAC of the callers themselves, defaulting and schema validation.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { KubeConfig } from '@kubernetes/client-node';
import fastJsonPatch, { type Operation } from 'fast-json-patch';
import { parse as parseYaml } from 'yaml';

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean }[];
  managedFields?: unknown[];
  [key: string]: unknown;
}

export interface KObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

interface ResourceType {
  group: string;
  version: string;
  plural: string;
  kind: string;
  namespaced: boolean;
  /** Has a status subresource: spec and status are written apart. */
  status: boolean;
  /** metadata.generation is kept and bumped on spec changes. */
  generation: boolean;
  /** PUT without metadata.resourceVersion is allowed (true for most built-ins, false for custom resources). */
  unconditionalUpdate: boolean;
  custom: boolean;
}

const RESOURCES: ResourceType[] = [
  core('configmaps', 'ConfigMap'),
  core('secrets', 'Secret'),
  { ...core('pods', 'Pod'), status: true },
  core('events', 'Event'),
  { ...core('namespaces', 'Namespace'), namespaced: false, status: true },
  {
    group: 'coordination.k8s.io',
    version: 'v1',
    plural: 'leases',
    kind: 'Lease',
    namespaced: true,
    status: false,
    generation: false,
    unconditionalUpdate: true,
    custom: false,
  },
  {
    group: 'admissionregistration.k8s.io',
    version: 'v1',
    plural: 'mutatingwebhookconfigurations',
    kind: 'MutatingWebhookConfiguration',
    namespaced: false,
    status: false,
    generation: true,
    unconditionalUpdate: true,
    custom: false,
  },
  {
    group: 'admissionregistration.k8s.io',
    version: 'v1',
    plural: 'validatingwebhookconfigurations',
    kind: 'ValidatingWebhookConfiguration',
    namespaced: false,
    status: false,
    generation: true,
    unconditionalUpdate: true,
    custom: false,
  },
  {
    group: 'apps',
    version: 'v1',
    plural: 'replicasets',
    kind: 'ReplicaSet',
    namespaced: true,
    status: true,
    generation: true,
    unconditionalUpdate: true,
    custom: false,
  },
  {
    group: 'authorization.k8s.io',
    version: 'v1',
    plural: 'subjectaccessreviews',
    kind: 'SubjectAccessReview',
    namespaced: false,
    status: false,
    generation: false,
    unconditionalUpdate: false,
    custom: false,
  },
  {
    group: 'earpiece.dev',
    version: 'v1alpha1',
    plural: 'toolsets',
    kind: 'ToolSet',
    namespaced: true,
    status: true,
    generation: true,
    unconditionalUpdate: false,
    custom: true,
  },
];

function core(plural: string, kind: string): ResourceType {
  return {
    group: '',
    version: 'v1',
    plural,
    kind,
    namespaced: true,
    status: false,
    generation: false,
    unconditionalUpdate: true,
    custom: false,
  };
}

function apiVersionOf(rt: ResourceType): string {
  return rt.group ? `${rt.group}/${rt.version}` : rt.version;
}

/** An error answered as a Kubernetes Status object. */
class StatusError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
}

function statusBody(code: number, reason: string, message: string, details?: Record<string, unknown>) {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason,
    details,
    code,
  };
}

/** One write request as the fake saw it; `changed` is false for a no-op (nothing stored, no event). */
export interface WriteRecord {
  verb: 'create' | 'update' | 'patch' | 'apply' | 'delete';
  resource: string;
  namespace: string | undefined;
  name: string;
  subresource: string | undefined;
  user: string;
  fieldManager: string | undefined;
  changed: boolean;
  status: number;
  /** The object as stored after the write (before, for a delete). */
  object: KObject;
}

/**
 * What the fake's authorizer allows, as an RBAC rule bound to one user or group would: a field left out
 * matches anything (no namespace: every namespace; no names: every name).
 */
export interface AccessRule {
  user?: string;
  group?: string;
  verb: string;
  /** The API group of the resource; '' (core) when left out. */
  apiGroup?: string;
  resource: string;
  namespace?: string;
  names?: string[];
}

/** The spec of a SubjectAccessReview, as sent. */
export interface AccessReviewSpec {
  user?: string;
  uid?: string;
  groups?: string[];
  extra?: Record<string, string[]>;
  resourceAttributes?: {
    namespace?: string;
    verb?: string;
    group?: string;
    version?: string;
    resource?: string;
    subresource?: string;
    name?: string;
  };
  nonResourceAttributes?: { path?: string; verb?: string };
}

/** One SubjectAccessReview the fake answered, with who asked. */
export interface AccessReviewRecord {
  /** The caller (the bearer token's user), not the subject of the review. */
  caller: string;
  spec: AccessReviewSpec;
  allowed: boolean;
}

/** What a request is about, for fault injection. */
export interface RequestInfo {
  method: string;
  resource: string;
  namespace: string | undefined;
  name: string | undefined;
  subresource: string | undefined;
  user: string;
  watch: boolean;
  /** The resourceVersion query parameter, for lists and watches. */
  resourceVersion: string | undefined;
}

interface Fault {
  match: (r: RequestInfo) => boolean;
  code: number;
  remaining: number;
}

interface HistoryEntry {
  rv: number;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  rt: ResourceType;
  object: KObject;
  previous: KObject | undefined;
}

interface Watcher {
  rt: ResourceType;
  namespace: string | undefined;
  selector: Selector;
  bookmarks: boolean;
  user: string;
  res: ServerResponse;
}

interface Stored {
  object: KObject;
  /** The last configuration each manager applied (server-side apply). */
  applied: Map<string, Record<string, unknown>>;
}

type Requirement =
  | { key: string; op: 'in' | 'notin'; values: string[] }
  | { key: string; op: 'exists' | 'notexists' };
type Selector = Requirement[];

/** Parses a label selector: `a=b`, `a==b`, `a!=b`, `a`, `!a`, `a in (x,y)`, `a notin (x)`. */
export function parseSelector(text: string | null | undefined): Selector {
  if (!text) return [];
  const parts = text.match(/[^,(]+(\([^)]*\))?/g) ?? [];
  return parts.map((raw): Requirement => {
    const part = raw.trim();
    let m = /^(\S+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(part);
    if (m) return { key: m[1]!, op: m[2] as 'in' | 'notin', values: m[3]!.split(',').map((v) => v.trim()) };
    m = /^([^=!\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(part);
    if (m) return { key: m[1]!, op: m[2] === '!=' ? 'notin' : 'in', values: [m[3]!] };
    if (part.startsWith('!')) return { key: part.slice(1), op: 'notexists' };
    if (/^\S+$/.test(part)) return { key: part, op: 'exists' };
    throw new StatusError(400, 'BadRequest', `unable to parse requirement: ${part}`);
  });
}

function matches(selector: Selector, obj: KObject | undefined): boolean {
  if (!obj) return false;
  const labels = obj.metadata.labels ?? {};
  return selector.every((r) => {
    const has = Object.hasOwn(labels, r.key);
    switch (r.op) {
      case 'exists':
        return has;
      case 'notexists':
        return !has;
      case 'in':
        return has && r.values.includes(labels[r.key]!);
      case 'notin':
        return !has || !r.values.includes(labels[r.key]!);
    }
    return false;
  });
}

/** RFC 7386. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> =
    target !== null && typeof target === 'object' && !Array.isArray(target)
      ? { ...(target as Record<string, unknown>) }
      : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

const isMap = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === 'object' && !Array.isArray(v);

/** Leaf paths of an applied configuration (lists are atomic, as for most fields). */
function leaves(
  value: unknown,
  prefix: string[] = [],
  out = new Map<string, unknown>(),
): Map<string, unknown> {
  if (isMap(value) && Object.keys(value).length > 0) {
    for (const [k, v] of Object.entries(value)) leaves(v, [...prefix, k], out);
  } else if (prefix.length > 0) {
    out.set(JSON.stringify(prefix), value);
  }
  return out;
}

function removePath(obj: Record<string, unknown>, path: string[]): void {
  const [head, ...rest] = path;
  if (head === undefined) return;
  if (rest.length === 0) {
    delete obj[head];
    return;
  }
  const child = obj[head];
  if (isMap(child)) {
    removePath(child, rest);
    if (Object.keys(child).length === 0) delete obj[head];
  }
}

function deepMerge(base: unknown, overlay: unknown): unknown {
  if (!isMap(overlay) || !isMap(base)) return structuredClone(overlay);
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(overlay)) out[k] = deepMerge(base[k], v);
  return out;
}

const MICRO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$/;

/** The fields of an object that make up its "spec" for generation purposes. */
function specOf(obj: KObject): unknown {
  const { metadata: _m, status: _s, apiVersion: _a, kind: _k, ...rest } = obj;
  return rest;
}

function comparable(obj: KObject): unknown {
  const { resourceVersion: _rv, managedFields: _mf, ...meta } = obj.metadata;
  return { ...obj, metadata: meta };
}

export interface FakeApiServerOptions {
  /** How often open watches that asked for bookmarks get one. */
  bookmarkIntervalMs?: number;
  /** What GET /version reports, as `v1.33.0`; managed clusters add suffixes (`v1.28.9-eks-036c24b`). */
  version?: string;
}

export class FakeApiServer {
  private readonly server: Server;
  private readonly objects = new Map<string, Stored>();
  private readonly history: HistoryEntry[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly faults: Fault[] = [];
  private readonly blocked = new Set<string>();
  private readonly bookmarkTimer: NodeJS.Timeout;
  private rv = 100;
  /** Watches from a resourceVersion below this get 410 Gone. */
  private oldestRv = 0;
  /** Every write request that succeeded, in order, no-ops included. */
  readonly writes: WriteRecord[] = [];
  /** Every request, in order. */
  readonly requests: RequestInfo[] = [];
  /** Every SubjectAccessReview answered, in order. */
  readonly accessReviews: AccessReviewRecord[] = [];
  private readonly accessRules: AccessRule[] = [];
  url = '';

  /** GET /version answers with this (settable, as an upgrade of the control plane would change it). */
  version: string;

  constructor(options: FakeApiServerOptions = {}) {
    this.version = options.version ?? 'v1.33.0';
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        const e =
          err instanceof StatusError ? err : new StatusError(500, 'InternalError', String(err as Error));
        if (!res.headersSent) this.send(res, e.code, statusBody(e.code, e.reason, e.message, e.details));
        else res.destroy();
      });
    });
    this.bookmarkTimer = setInterval(() => this.bookmark(), options.bookmarkIntervalMs ?? 1000);
    this.bookmarkTimer.unref();
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async close(): Promise<void> {
    clearInterval(this.bookmarkTimer);
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** A KubeConfig for this server; the user name is the bearer token, so tests can block one client. */
  kubeConfig(user = 'test'): KubeConfig {
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: this.url, skipTLSVerify: true }],
      users: [{ name: user, token: user }],
      contexts: [{ name: 'fake', cluster: 'fake', user }],
      currentContext: 'fake',
    });
    return kc;
  }

  // ---- test controls ----

  /** The current resourceVersion. */
  get resourceVersion(): string {
    return String(this.rv);
  }

  /** Forgets the watch history: a watch from any earlier resourceVersion now gets 410 Gone. */
  compact(): void {
    this.history.length = 0;
    this.oldestRv = this.rv;
  }

  /** Compacts and ends every open watch with an ERROR event of code 410, as a real server does. */
  expireWatches(): void {
    this.compact();
    for (const w of [...this.watchers]) {
      this.writeEvent(w, { type: 'ERROR', object: statusBody(410, 'Expired', 'too old resource version') });
      this.endWatch(w);
    }
  }

  /** Ends every open watch normally; clients reconnect from their last resourceVersion. */
  closeWatches(): void {
    for (const w of [...this.watchers]) this.endWatch(w);
  }

  /** Sends a BOOKMARK now to every watch that asked for them. */
  bookmark(): void {
    for (const w of this.watchers) {
      if (!w.bookmarks) continue;
      this.writeEvent(w, {
        type: 'BOOKMARK',
        object: {
          kind: w.rt.kind,
          apiVersion: apiVersionOf(w.rt),
          metadata: { resourceVersion: String(this.rv) },
        },
      });
    }
  }

  /** Open watches, by resource. */
  watchCount(resource?: string): number {
    return [...this.watchers].filter((w) => !resource || w.rt.plural === resource).length;
  }

  /** Requests from this user fail with 503 and its watches are cut, as in a network partition. */
  block(user: string): void {
    this.blocked.add(user);
    for (const w of [...this.watchers]) if (w.user === user) this.cutWatch(w);
  }

  unblock(user: string): void {
    this.blocked.delete(user);
  }

  /** The next `times` requests that match fail with `code`. */
  fail(match: (r: RequestInfo) => boolean, code = 500, times = 1): void {
    this.faults.push({ match, code, remaining: times });
  }

  /** SubjectAccessReviews that match the rule are allowed from now on. */
  allow(rule: AccessRule): void {
    this.accessRules.push(rule);
  }

  /** Writes of a resource that changed something (no-ops left out). */
  changes(resource?: string): WriteRecord[] {
    return this.writes.filter((w) => w.changed && (!resource || w.resource === resource));
  }

  // ---- direct access for tests (same rules as over HTTP, no request recorded) ----

  get(resource: string, namespace: string | undefined, name: string): KObject | undefined {
    const rt = this.type(resource);
    const stored = this.objects.get(this.key(rt, namespace, name));
    return stored ? structuredClone(stored.object) : undefined;
  }

  list(resource: string, namespace?: string): KObject[] {
    const rt = this.type(resource);
    return this.listObjects(rt, namespace, []).map((o) => structuredClone(o));
  }

  create(resource: string, body: KObject): KObject {
    const rt = this.type(resource);
    return structuredClone(this.doCreate(rt, body.metadata.namespace, structuredClone(body)));
  }

  /** Replaces an object (optimistic concurrency only when body carries a resourceVersion). */
  update(resource: string, body: KObject, subresource?: 'status'): KObject {
    const rt = this.type(resource);
    const { namespace, name } = body.metadata;
    const current = this.mustGet(rt, namespace, name ?? '');
    const next = structuredClone(body);
    next.metadata.resourceVersion ??= current.object.metadata.resourceVersion;
    return structuredClone(this.doUpdate(rt, current, next, subresource).object);
  }

  delete(resource: string, namespace: string | undefined, name: string): void {
    const rt = this.type(resource);
    this.doDelete(rt, this.mustGet(rt, namespace, name));
  }

  // ---- HTTP ----

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://fake');
    const user = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? 'anonymous';
    if (url.pathname === '/version' && req.method === 'GET') return this.sendVersion(res);
    const route = this.route(url.pathname);
    const method = req.method ?? 'GET';
    const watch = url.searchParams.get('watch') === 'true' || url.searchParams.get('watch') === '1';
    const info: RequestInfo = {
      method,
      resource: route.rt.plural,
      namespace: route.namespace,
      name: route.name,
      subresource: route.subresource,
      user,
      watch,
      resourceVersion: url.searchParams.get('resourceVersion') ?? undefined,
    };
    this.requests.push(info);
    if (this.blocked.has(user)) throw new StatusError(503, 'ServiceUnavailable', 'the server is unreachable');
    const fault = this.faults.find((f) => f.remaining > 0 && f.match(info));
    if (fault) {
      fault.remaining--;
      throw new StatusError(fault.code, 'InternalError', `injected failure for ${method} ${url.pathname}`);
    }
    const body = await readBody(req);
    const { rt, namespace, name, subresource } = route;
    if (subresource !== undefined && !(subresource === 'status' && rt.status)) {
      throw new StatusError(404, 'NotFound', `the server could not find the requested resource`);
    }
    if (rt.plural === 'subjectaccessreviews') {
      if (method !== 'POST' || name !== undefined) {
        throw new StatusError(405, 'MethodNotAllowed', `${method} is not supported on subjectaccessreviews`);
      }
      return this.send(res, 201, this.review(parseJson(body) as KObject, user));
    }

    if (method === 'GET' && name === undefined) {
      const selector = parseSelector(url.searchParams.get('labelSelector'));
      if (watch) return this.startWatch(res, rt, namespace, selector, url, user);
      const items = this.listObjects(rt, namespace, selector).map((o) => this.forList(rt, o));
      return this.send(res, 200, {
        kind: `${rt.kind}List`,
        apiVersion: apiVersionOf(rt),
        metadata: { resourceVersion: String(this.rv) },
        items,
      });
    }
    if (method === 'GET') return this.send(res, 200, this.mustGet(rt, namespace, name!).object);

    const record = (
      verb: WriteRecord['verb'],
      n: string,
      changed: boolean,
      status: number,
      object: KObject,
    ) =>
      this.writes.push({
        object: structuredClone(object),
        verb,
        resource: rt.plural,
        namespace,
        name: n,
        subresource,
        user,
        fieldManager: url.searchParams.get('fieldManager') ?? undefined,
        changed,
        status,
      });

    if (method === 'POST' && name === undefined) {
      const obj = parseJson(body) as KObject;
      const created = this.doCreate(rt, namespace, obj);
      record('create', created.metadata.name!, true, 201, created);
      return this.send(res, 201, created);
    }
    if (name === undefined) throw new StatusError(405, 'MethodNotAllowed', `${method} on a collection`);

    if (method === 'PUT') {
      const current = this.mustGet(rt, namespace, name);
      const obj = parseJson(body) as KObject;
      if (obj.metadata?.name !== undefined && obj.metadata.name !== name) {
        throw new StatusError(400, 'BadRequest', 'the name of the object does not match the name on the URL');
      }
      const out = this.doUpdate(rt, current, obj, subresource);
      record('update', name, out.changed, 200, out.object);
      return this.send(res, 200, out.object);
    }
    if (method === 'PATCH') {
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim();
      if (type === 'application/apply-patch+yaml') {
        const manager = url.searchParams.get('fieldManager');
        if (!manager) {
          throw new StatusError(422, 'Invalid', 'PatchOptions.meta.k8s.io "": fieldManager: Required value');
        }
        const force = url.searchParams.get('force') === 'true';
        const applied = parseYaml(body) as KObject;
        const out = this.doApply(rt, namespace, name, applied, manager, force, subresource);
        record('apply', name, out.changed, out.created ? 201 : 200, out.object);
        return this.send(res, out.created ? 201 : 200, out.object);
      }
      const current = this.mustGet(rt, namespace, name);
      let patched: KObject;
      if (type === 'application/merge-patch+json' || (type.includes('strategic') && !rt.custom)) {
        patched = mergePatch(structuredClone(current.object), parseJson(body)) as KObject;
      } else if (type === 'application/json-patch+json') {
        try {
          patched = fastJsonPatch.applyPatch(
            structuredClone(current.object),
            parseJson(body) as Operation[],
            true,
            false,
          ).newDocument;
        } catch (err) {
          throw new StatusError(422, 'Invalid', (err as Error).message);
        }
      } else {
        throw new StatusError(
          415,
          'UnsupportedMediaType',
          `the body of the request was in an unknown format`,
        );
      }
      const out = this.doUpdate(rt, current, patched, subresource);
      record('patch', name, out.changed, 200, out.object);
      return this.send(res, 200, out.object);
    }
    if (method === 'DELETE') {
      const current = this.mustGet(rt, namespace, name);
      const options = body ? (parseJson(body) as { preconditions?: { resourceVersion?: string } }) : {};
      const wanted = options.preconditions?.resourceVersion;
      if (wanted !== undefined && wanted !== current.object.metadata.resourceVersion) {
        throw this.conflict(rt, name);
      }
      this.doDelete(rt, current);
      record('delete', name, true, 200, current.object);
      return this.send(res, 200, {
        kind: 'Status',
        apiVersion: 'v1',
        metadata: {},
        status: 'Success',
        details: { name, kind: rt.plural, uid: current.object.metadata.uid },
      });
    }
    throw new StatusError(405, 'MethodNotAllowed', `${method} is not supported`);
  }

  /** Answers a SubjectAccessReview from the rules; nothing is stored, no watch event. */
  private review(body: KObject, caller: string): KObject {
    const spec = (isMap(body.spec) ? body.spec : {}) as AccessReviewSpec;
    const invalid = (field: string, message: string) =>
      new StatusError(
        422,
        'Invalid',
        `SubjectAccessReview.authorization.k8s.io "" is invalid: ${field}: ${message}`,
      );
    if ((spec.resourceAttributes === undefined) === (spec.nonResourceAttributes === undefined)) {
      throw invalid(
        'spec.resourceAttributes',
        'Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified',
      );
    }
    if (!spec.user && !spec.groups?.length) {
      throw invalid(
        'spec.user,spec.groups',
        'Invalid value: "": at least one of user or group must be specified',
      );
    }
    const attributes = spec.resourceAttributes;
    const allowed =
      attributes !== undefined &&
      this.accessRules.some(
        (r) =>
          (r.user === undefined || r.user === spec.user) &&
          (r.group === undefined || (spec.groups ?? []).includes(r.group)) &&
          r.verb === attributes.verb &&
          (r.apiGroup ?? '') === (attributes.group ?? '') &&
          r.resource === attributes.resource &&
          (r.namespace === undefined || r.namespace === attributes.namespace) &&
          (r.names === undefined || (attributes.name !== undefined && r.names.includes(attributes.name))),
      );
    this.accessReviews.push({ caller, spec: structuredClone(spec), allowed });
    return {
      apiVersion: 'authorization.k8s.io/v1',
      kind: 'SubjectAccessReview',
      metadata: {},
      spec,
      status: { allowed },
    };
  }

  /** version.Info as the API server gives it; a managed cluster's minor may carry a `+`. */
  private sendVersion(res: ServerResponse): void {
    const [, major = '1', minor = '0'] = /^v(\d+)\.(\d+)/.exec(this.version) ?? [];
    this.send(res, 200, {
      major,
      minor: this.version.includes('-') ? `${minor}+` : minor,
      gitVersion: this.version,
      platform: 'linux/amd64',
    });
  }

  private route(pathname: string): {
    rt: ResourceType;
    namespace: string | undefined;
    name: string | undefined;
    subresource: string | undefined;
  } {
    const seg = pathname.split('/').filter(Boolean).map(decodeURIComponent);
    let group: string;
    let version: string;
    let rest: string[];
    if (seg[0] === 'api' && seg[1]) [group, version, rest] = ['', seg[1], seg.slice(2)];
    else if (seg[0] === 'apis' && seg[1] && seg[2]) [group, version, rest] = [seg[1], seg[2], seg.slice(3)];
    else throw new StatusError(404, 'NotFound', `the server could not find the requested resource`);
    let namespace: string | undefined;
    if (rest[0] === 'namespaces' && rest.length >= 3) {
      namespace = rest[1];
      rest = rest.slice(2);
    }
    const [plural, name, subresource] = rest;
    const rt = RESOURCES.find((r) => r.group === group && r.version === version && r.plural === plural);
    if (!rt || (namespace !== undefined && !rt.namespaced)) {
      throw new StatusError(404, 'NotFound', `the server could not find the requested resource`);
    }
    if (rt.namespaced && namespace === undefined && name !== undefined) {
      throw new StatusError(404, 'NotFound', `the server could not find the requested resource`);
    }
    return { rt, namespace, name, subresource };
  }

  private send(res: ServerResponse, code: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  // ---- storage ----

  private type(resource: string): ResourceType {
    const rt = RESOURCES.find((r) => r.plural === resource);
    if (!rt) throw new Error(`the fake API server does not serve ${resource}`);
    return rt;
  }

  private key(rt: ResourceType, namespace: string | undefined, name: string): string {
    return `${rt.plural}.${rt.group}/${rt.namespaced ? (namespace ?? '') : ''}/${name}`;
  }

  private mustGet(rt: ResourceType, namespace: string | undefined, name: string): Stored {
    const stored = this.objects.get(this.key(rt, namespace, name));
    if (!stored) {
      const group = rt.group ? `${rt.plural}.${rt.group}` : rt.plural;
      throw new StatusError(404, 'NotFound', `${group} "${name}" not found`, { name, kind: rt.plural });
    }
    return stored;
  }

  private conflict(rt: ResourceType, name: string): StatusError {
    const group = rt.group ? `${rt.plural}.${rt.group}` : rt.plural;
    return new StatusError(
      409,
      'Conflict',
      `Operation cannot be fulfilled on ${group} "${name}": the object has been modified; please apply your changes to the latest version and try again`,
      { name, kind: rt.plural },
    );
  }

  private listObjects(rt: ResourceType, namespace: string | undefined, selector: Selector): KObject[] {
    const out: KObject[] = [];
    for (const { object } of this.objects.values()) {
      if (object.kind !== rt.kind || apiVersionOf(rt) !== object.apiVersion) continue;
      if (namespace !== undefined && object.metadata.namespace !== namespace) continue;
      if (matches(selector, object)) out.push(object);
    }
    return out.sort((a, b) => Number(a.metadata.resourceVersion) - Number(b.metadata.resourceVersion));
  }

  /** Built-in list items carry no kind/apiVersion; custom resources (unstructured) keep theirs. */
  private forList(rt: ResourceType, obj: KObject): KObject {
    if (rt.custom) return obj;
    const { kind: _k, apiVersion: _a, ...rest } = obj;
    return rest as KObject;
  }

  private validate(rt: ResourceType, obj: KObject): void {
    if (rt.plural === 'leases') {
      const spec = (obj.spec ?? {}) as Record<string, unknown>;
      for (const field of ['acquireTime', 'renewTime']) {
        const v = spec[field];
        if (v !== undefined && v !== null && !(typeof v === 'string' && MICRO_TIME.test(v))) {
          throw new StatusError(
            400,
            'BadRequest',
            `Lease in version "v1" cannot be handled as a Lease: parsing time ${JSON.stringify(v)} as "2006-01-02T15:04:05.000000Z07:00": cannot parse as ".000000"`,
          );
        }
      }
    }
    const name = obj.metadata.name ?? '';
    if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253) {
      throw new StatusError(422, 'Invalid', `${rt.kind} "${name}" is invalid: metadata.name: Invalid value`);
    }
  }

  private doCreate(rt: ResourceType, namespace: string | undefined, obj: KObject): KObject {
    obj.metadata ??= {};
    if (obj.metadata.name === undefined && obj.metadata.generateName) {
      obj.metadata.name = `${obj.metadata.generateName}${randomUUID().slice(0, 5)}`;
    }
    const ns = rt.namespaced ? (namespace ?? obj.metadata.namespace) : undefined;
    if (rt.namespaced && !ns) throw new StatusError(400, 'BadRequest', 'a namespace is required');
    if (
      namespace !== undefined &&
      obj.metadata.namespace !== undefined &&
      obj.metadata.namespace !== namespace
    ) {
      throw new StatusError(
        400,
        'BadRequest',
        'the namespace of the provided object does not match the namespace sent on the request',
      );
    }
    const name = obj.metadata.name ?? '';
    if (this.objects.has(this.key(rt, ns, name))) {
      throw new StatusError(409, 'AlreadyExists', `${rt.plural} "${name}" already exists`, {
        name,
        kind: rt.plural,
      });
    }
    this.validate(rt, obj);
    if (rt.status && rt.custom) delete obj.status;
    const { resourceVersion: _rv, uid: _uid, generation: _g, creationTimestamp: _c, ...meta } = obj.metadata;
    const stored: KObject = {
      ...obj,
      apiVersion: apiVersionOf(rt),
      kind: rt.kind,
      metadata: {
        ...meta,
        name,
        ...(ns !== undefined ? { namespace: ns } : {}),
        uid: randomUUID(),
        resourceVersion: String(++this.rv),
        creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
        ...(rt.generation ? { generation: 1 } : {}),
      },
    };
    this.objects.set(this.key(rt, ns, name), { object: stored, applied: new Map() });
    this.emit('ADDED', rt, stored, undefined);
    // A dependent created after its owner is gone is collected too, as the real collector does.
    if (meta.ownerReferences?.length) setImmediate(() => this.collectGarbage());
    return stored;
  }

  /** Stores `next` in place of `current` under the rules of the main resource or the status subresource. */
  private doUpdate(
    rt: ResourceType,
    current: Stored,
    next: KObject,
    subresource: string | undefined,
    managedFields?: unknown[],
  ): { object: KObject; changed: boolean } {
    const old = current.object;
    const wanted = next.metadata?.resourceVersion;
    if (wanted !== undefined && wanted !== '' && wanted !== old.metadata.resourceVersion) {
      throw this.conflict(rt, old.metadata.name!);
    }
    if ((wanted === undefined || wanted === '') && !rt.unconditionalUpdate) {
      throw new StatusError(
        422,
        'Invalid',
        `${rt.kind}.${rt.group} "${old.metadata.name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update`,
      );
    }
    let candidate: KObject;
    if (subresource === 'status') {
      candidate = { ...structuredClone(old), status: structuredClone(next.status) };
      if (next.status === undefined) delete candidate.status;
    } else {
      candidate = structuredClone(next);
      candidate.metadata ??= {};
      if (rt.status) {
        if (old.status === undefined) delete candidate.status;
        else candidate.status = structuredClone(old.status);
      }
    }
    candidate.apiVersion = old.apiVersion;
    candidate.kind = old.kind;
    for (const field of ['name', 'namespace', 'uid', 'creationTimestamp', 'generation'] as const) {
      if (old.metadata[field] === undefined) delete candidate.metadata[field];
      else candidate.metadata[field] = old.metadata[field] as never;
    }
    candidate.metadata.resourceVersion = old.metadata.resourceVersion;
    candidate.metadata.managedFields = old.metadata.managedFields;
    if (candidate.metadata.managedFields === undefined) delete candidate.metadata.managedFields;
    this.validate(rt, candidate);
    if (isDeepStrictEqual(comparable(candidate), comparable(old))) return { object: old, changed: false };
    if (rt.generation && !isDeepStrictEqual(specOf(candidate), specOf(old))) {
      candidate.metadata.generation = (old.metadata.generation ?? 0) + 1;
    }
    if (managedFields) candidate.metadata.managedFields = managedFields;
    candidate.metadata.resourceVersion = String(++this.rv);
    current.object = candidate;
    this.emit('MODIFIED', rt, candidate, old);
    return { object: candidate, changed: true };
  }

  private doApply(
    rt: ResourceType,
    namespace: string | undefined,
    name: string,
    applied: KObject,
    manager: string,
    force: boolean,
    subresource: string | undefined,
  ): { object: KObject; changed: boolean; created: boolean } {
    if (!isMap(applied) || !isMap(applied.metadata)) {
      throw new StatusError(400, 'BadRequest', 'an apply configuration needs metadata');
    }
    if (applied.metadata.name !== name) {
      throw new StatusError(400, 'BadRequest', 'the name of the object does not match the name on the URL');
    }
    if (applied.apiVersion !== apiVersionOf(rt) || applied.kind !== rt.kind) {
      throw new StatusError(
        400,
        'BadRequest',
        `apply needs apiVersion ${apiVersionOf(rt)} and kind ${rt.kind}`,
      );
    }
    const config = structuredClone(applied) as Record<string, unknown>;
    const existing = this.objects.get(this.key(rt, namespace, name));
    if (!existing) {
      if (subresource === 'status') this.mustGet(rt, namespace, name);
      const fresh = structuredClone(applied);
      fresh.metadata.managedFields = [managedEntry(manager, rt)];
      const created = this.doCreate(rt, namespace, fresh);
      this.mustGet(rt, namespace, name).applied.set(manager, config);
      return { object: created, changed: true, created: true };
    }
    const mine = leaves(stripIdentity(config));
    const conflicts: string[] = [];
    for (const [other, theirs] of existing.applied) {
      if (other === manager) continue;
      for (const [path, value] of leaves(stripIdentity(theirs))) {
        if (mine.has(path) && !isDeepStrictEqual(mine.get(path), value)) {
          conflicts.push(`conflict with "${other}": .${JSON.parse(path).join('.')}`);
        }
      }
    }
    if (conflicts.length > 0 && !force) {
      throw new StatusError(
        409,
        'Conflict',
        `Apply failed with ${conflicts.length} conflicts: ${conflicts.join('; ')}`,
      );
    }
    if (force) {
      // Forced fields change owner: the other appliers give them up.
      for (const [other, theirs] of existing.applied) {
        if (other === manager) continue;
        for (const path of mine.keys()) removePath(theirs, JSON.parse(path));
      }
    }
    const base = structuredClone(existing.object) as Record<string, unknown>;
    const previous = existing.applied.get(manager);
    if (previous) {
      const keptByOthers = new Set<string>();
      for (const [other, theirs] of existing.applied) {
        if (other !== manager)
          for (const path of leaves(stripIdentity(theirs)).keys()) keptByOthers.add(path);
      }
      for (const path of leaves(stripIdentity(previous)).keys()) {
        if (!mine.has(path) && !keptByOthers.has(path)) removePath(base, JSON.parse(path));
      }
    }
    const merged = deepMerge(base, config) as KObject;
    merged.metadata.resourceVersion = existing.object.metadata.resourceVersion;
    const entries = (existing.object.metadata.managedFields ?? []) as { manager: string }[];
    const managedFields = [...entries.filter((e) => e.manager !== manager), managedEntry(manager, rt)];
    const out = this.doUpdate(rt, existing, merged, subresource, managedFields);
    existing.applied.set(manager, config);
    return { object: out.object, changed: out.changed, created: false };
  }

  private doDelete(rt: ResourceType, stored: Stored): void {
    const obj = stored.object;
    this.objects.delete(this.key(rt, obj.metadata.namespace, obj.metadata.name!));
    const gone = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.rv) } };
    this.emit('DELETED', rt, gone, obj);
    // The garbage collector works in the background, as the real one does.
    setImmediate(() => this.collectGarbage());
  }

  private collectGarbage(): void {
    const uids = new Set([...this.objects.values()].map((s) => s.object.metadata.uid));
    for (const stored of [...this.objects.values()]) {
      const owners = stored.object.metadata.ownerReferences ?? [];
      if (owners.length > 0 && owners.every((o) => !uids.has(o.uid))) {
        const rt = RESOURCES.find(
          (r) => r.kind === stored.object.kind && apiVersionOf(r) === stored.object.apiVersion,
        );
        if (
          rt &&
          this.objects.has(this.key(rt, stored.object.metadata.namespace, stored.object.metadata.name!))
        ) {
          this.doDelete(rt, stored);
        }
      }
    }
  }

  // ---- watch ----

  private emit(
    type: HistoryEntry['type'],
    rt: ResourceType,
    object: KObject,
    previous: KObject | undefined,
  ): void {
    const entry: HistoryEntry = { rv: this.rv, type, rt, object: structuredClone(object), previous };
    this.history.push(entry);
    for (const w of this.watchers) this.deliver(w, entry);
  }

  private deliver(w: Watcher, e: HistoryEntry): void {
    if (w.rt !== e.rt) return;
    if (w.namespace !== undefined && e.object.metadata.namespace !== w.namespace) return;
    const now = e.type !== 'DELETED' && matches(w.selector, e.object);
    const before = e.type !== 'ADDED' && matches(w.selector, e.previous);
    let type: string | undefined;
    if (e.type === 'DELETED') type = before ? 'DELETED' : undefined;
    else if (now) type = before ? 'MODIFIED' : 'ADDED';
    else if (before) type = 'DELETED';
    if (type) this.writeEvent(w, { type, object: e.object });
  }

  private startWatch(
    res: ServerResponse,
    rt: ResourceType,
    namespace: string | undefined,
    selector: Selector,
    url: URL,
    user: string,
  ): void {
    const w: Watcher = {
      rt,
      namespace,
      selector,
      bookmarks: url.searchParams.get('allowWatchBookmarks') === 'true',
      user,
      res,
    };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.flushHeaders();
    const from = url.searchParams.get('resourceVersion');
    if (from && from !== '0') {
      const rv = Number(from);
      if (!Number.isInteger(rv) || rv < this.oldestRv) {
        this.writeEvent(w, {
          type: 'ERROR',
          object: statusBody(410, 'Expired', `too old resource version: ${from} (${this.oldestRv})`),
        });
        res.end();
        return;
      }
      for (const e of this.history) if (e.rv > rv) this.deliver(w, e);
    } else {
      for (const obj of this.listObjects(rt, namespace, selector))
        this.writeEvent(w, { type: 'ADDED', object: obj });
    }
    this.watchers.add(w);
    const timeout = Number(url.searchParams.get('timeoutSeconds') ?? 0);
    const timer = timeout > 0 ? setTimeout(() => this.endWatch(w), timeout * 1000) : undefined;
    res.on('close', () => {
      clearTimeout(timer);
      this.watchers.delete(w);
    });
  }

  private writeEvent(w: Watcher, event: { type: string; object: unknown }): void {
    if (!w.res.writableEnded) w.res.write(`${JSON.stringify(event)}\n`);
  }

  private endWatch(w: Watcher): void {
    this.watchers.delete(w);
    w.res.end();
  }

  private cutWatch(w: Watcher): void {
    this.watchers.delete(w);
    w.res.destroy();
  }
}

function stripIdentity(config: Record<string, unknown>): Record<string, unknown> {
  const { apiVersion: _a, kind: _k, ...rest } = config;
  const meta = { ...(rest.metadata as Record<string, unknown>) };
  delete meta.name;
  delete meta.namespace;
  return { ...rest, metadata: meta };
}

function managedEntry(manager: string, rt: ResourceType) {
  return {
    manager,
    operation: 'Apply',
    apiVersion: apiVersionOf(rt),
    time: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    fieldsType: 'FieldsV1',
    fieldsV1: {},
  };
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new StatusError(400, 'BadRequest', `the body is not JSON: ${(err as Error).message}`);
  }
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export async function startFakeApiServer(options?: FakeApiServerOptions): Promise<FakeApiServer> {
  return new FakeApiServer(options).start();
}
