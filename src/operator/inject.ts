/**
 * `earpiece inject` without the command line: multi-document YAML in, the same YAML out with the sidecar
 * added to every opted-in pod template, and one report per workload. Pods, Deployments, StatefulSets,
 * DaemonSets, ReplicaSets, ReplicationControllers, Jobs and CronJobs are unwrapped here, and `List`
 * documents are walked. The patch builder's result is diffed into JSON Patch operations (as the webhook
 * does) and those are applied to the YAML document itself, so comments and formatting outside the
 * changed fields survive; documents without a change are printed byte for byte as they came.
 */
import type { V1ConfigMap } from '@kubernetes/client-node';
import fastJsonPatch, { type Operation } from 'fast-json-patch';
import {
  type Document,
  isCollection,
  isMap,
  isScalar,
  isSeq,
  parseAllDocuments,
  stringify,
  visit,
} from 'yaml';
import type { ToolSet } from '../toolset/schema.js';
import { renderConfigMap } from './configmap.js';
import type { OperatorErrorCode } from './errors.js';
import { buildInjection, type InjectResult, type PodTemplate } from './patch.js';
import { toolsetLookup } from './select.js';
import { LABEL_INJECT, type SidecarConfig } from './sidecar.js';

const { compare } = fastJsonPatch;

export class ManifestError extends Error {
  readonly code: OperatorErrorCode = 'ERP_MANIFEST';
}

type Path = (string | number)[];

/** Where each workload kind keeps its pod template; the API group guards against look-alike custom kinds. */
const TEMPLATES: Record<string, { group: string; path: Path }> = {
  Pod: { group: '', path: [] },
  ReplicationController: { group: '', path: ['spec', 'template'] },
  Deployment: { group: 'apps', path: ['spec', 'template'] },
  StatefulSet: { group: 'apps', path: ['spec', 'template'] },
  DaemonSet: { group: 'apps', path: ['spec', 'template'] },
  ReplicaSet: { group: 'apps', path: ['spec', 'template'] },
  Job: { group: 'batch', path: ['spec', 'template'] },
  CronJob: { group: 'batch', path: ['spec', 'jobTemplate', 'spec', 'template'] },
};

export interface Workload {
  kind: string;
  name: string;
  namespace: string | undefined;
  /** From the document root to the pod template (for a Pod, the Pod itself). */
  path: Path;
  template: PodTemplate;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function groupOf(apiVersion: unknown): string | undefined {
  if (typeof apiVersion !== 'string') return undefined;
  return apiVersion.includes('/') ? apiVersion.slice(0, apiVersion.indexOf('/')) : '';
}

function getIn(obj: unknown, path: Path): unknown {
  let node = obj;
  for (const key of path) node = isObj(node) || Array.isArray(node) ? (node as Obj)[key] : undefined;
  return node;
}

/** Every workload in a parsed document, `List` items included. */
export function findWorkloads(doc: unknown, base: Path = []): Workload[] {
  if (!isObj(doc)) return [];
  const kind = doc.kind;
  if (typeof kind === 'string' && kind.endsWith('List') && Array.isArray(doc.items))
    return doc.items.flatMap((item, i) => findWorkloads(item, [...base, 'items', i]));
  const at = typeof kind === 'string' ? TEMPLATES[kind] : undefined;
  if (!at || groupOf(doc.apiVersion) !== at.group) return [];
  const meta = isObj(doc.metadata) ? doc.metadata : {};
  const template = kind === 'Pod' ? { metadata: doc.metadata, spec: doc.spec } : getIn(doc, at.path);
  return [
    {
      kind: kind as string,
      name: String(meta.name ?? meta.generateName ?? '(unnamed)'),
      namespace: typeof meta.namespace === 'string' ? meta.namespace : undefined,
      path: [...base, ...at.path],
      template: (isObj(template) ? template : {}) as PodTemplate,
    },
  ];
}

/** Namespaces the manifests themselves opt in: `Namespace` documents labelled earpiece.dev/inject=true. */
export function namespacesOptedIn(docs: unknown[]): Set<string> {
  const names = new Set<string>();
  const visit = (doc: unknown) => {
    if (!isObj(doc)) return;
    if (Array.isArray(doc.items)) for (const item of doc.items) visit(item);
    const meta = isObj(doc.metadata) ? doc.metadata : {};
    const labels = isObj(meta.labels) ? meta.labels : {};
    if (doc.kind === 'Namespace' && labels[LABEL_INJECT] === 'true' && typeof meta.name === 'string')
      names.add(meta.name);
  };
  for (const doc of docs) visit(doc);
  return names;
}

export interface WorkloadReport {
  kind: string;
  name: string;
  namespace: string | undefined;
  result: InjectResult;
}

export interface InjectManifestsOptions {
  toolsets: readonly ToolSet[];
  sidecar: SidecarConfig;
  /** Also return the ConfigMap of each ToolSet that was injected (for clusters without the operator). */
  withConfigMaps?: boolean;
  /** The sidecar image was given explicitly (`--image`): it replaces any image a sidecar injected before has. */
  replaceImage?: boolean;
}

export interface InjectManifestsResult {
  text: string;
  reports: WorkloadReport[];
  configMaps: V1ConfigMap[];
}

const UNRENDERED =
  'it looks like an unrendered template ({{ ... }}); render it first (helm template, kustomize build) and inject the result';

/**
 * The documents of a YAML stream, or a ManifestError saying what is wrong: YAML that does not parse, a
 * template not rendered yet (`{{ .Values.x }}` parses as a map used as a key), or a document that is
 * not a Kubernetes object (a Markdown file may parse as a string). Checked before toJS(), which would
 * turn a map key into "[object Object]" with a Node warning.
 */
export function parseManifests(text: string): Document.Parsed[] {
  // YAML 1.1, as kubectl reads manifests: `yes` and `on` are booleans there.
  const docs = parseAllDocuments(text, { version: '1.1', prettyErrors: true });
  if (!Array.isArray(docs)) return [];
  for (const [i, doc] of docs.entries()) {
    checkYaml(doc, text);
    if (doc.contents === null) continue;
    const root = doc.contents;
    const field = (key: string) => (isMap(root) ? root.get(key) : undefined);
    if (typeof field('apiVersion') !== 'string' || typeof field('kind') !== 'string') {
      throw new ManifestError(
        `document ${i + 1} (line ${lineOf(text, root.range?.[0] ?? 0)}) is not a Kubernetes object: it needs apiVersion and kind`,
      );
    }
  }
  return docs;
}

const lineOf = (text: string, offset: number) => text.slice(0, offset).split('\n').length;

/**
 * A ManifestError for a document of `text` that does not parse or uses a map as a key (what an
 * unrendered `{{ ... }}` parses as); toJS() would make such a key "[object Object]" with a Node warning.
 */
export function checkYaml(doc: Document.Parsed, text: string): void {
  const templated = /\{\{.*\}\}/.test(text);
  const [error] = doc.errors;
  if (error) {
    const where = error.linePos ? `line ${error.linePos[0].line}: ` : '';
    throw new ManifestError(templated ? `${where}${UNRENDERED}` : `${where}${error.message.split('\n')[0]}`);
  }
  let mapKey: number | undefined;
  visit(doc, {
    Pair(_, pair) {
      if (!isCollection(pair.key)) return undefined;
      mapKey = pair.key.range?.[0] ?? 0;
      return visit.BREAK;
    },
  });
  if (mapKey !== undefined)
    throw new ManifestError(
      `line ${lineOf(text, mapKey)}: ${templated ? UNRENDERED : 'a map or list is used as a key'}`,
    );
}

/**
 * Injects every opted-in workload of a YAML stream. Throws ManifestError for input that is not
 * Kubernetes YAML (see parseManifests).
 */
export function injectManifests(text: string, options: InjectManifestsOptions): InjectManifestsResult {
  const docs = parseManifests(text);
  if (docs.length === 0) return { text, reports: [], configMaps: [] };
  const objects = docs.map((d) => d.toJS() as unknown);
  const optedIn = namespacesOptedIn(objects);
  const reports: WorkloadReport[] = [];
  const configMaps = new Map<string, V1ConfigMap>();

  const out = docs.map((doc, i) => {
    const start = i === 0 ? 0 : (doc.range[0] as number);
    const end = i === docs.length - 1 ? text.length : (docs[i + 1]?.range[0] as number);
    const source = text.slice(start, end);
    let changed = false;
    for (const w of findWorkloads(objects[i])) {
      const toolsets = toolsetLookup(options.toolsets, w.namespace);
      const result = buildInjection(w.template, {
        namespace: w.namespace,
        namespaceOptedIn: w.namespace !== undefined && optedIn.has(w.namespace),
        toolsets,
        sidecar: options.sidecar,
        replaceImage: options.replaceImage,
      });
      reports.push({ kind: w.kind, name: w.name, namespace: w.namespace, result });
      if (!result.ok) continue;
      applyToDocument(doc, w.path, compare(w.template, result.template));
      changed = true;
      if (options.withConfigMaps) {
        const cm = renderConfigMap(toolsets.byName(result.toolset) as ToolSet, w.namespace);
        configMaps.set(`${cm.metadata?.namespace ?? ''}/${cm.metadata?.name}`, cm);
      }
    }
    if (!changed) return source;
    // Keep the manifest's own list style: `- ` level with its key (kubectl's) or indented.
    const indentSeq = !/^( *)[^\s#-][^\n]*:[ \t]*(?:#[^\n]*)?\n\1- /m.test(source);
    return doc.toString({ lineWidth: 0, indentSeq });
  });

  let result = out.join('');
  const extra = [...configMaps.values()];
  for (const cm of extra) {
    if (!result.endsWith('\n')) result += '\n';
    result += `---\n${stringify(cm, { lineWidth: 0 })}`;
  }
  return { text: result, reports, configMaps: extra };
}

function decodePointer(pointer: string): string[] {
  return pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/** JSON Patch operations (as fast-json-patch `compare` makes them) applied to a YAML document in place. */
function applyToDocument(doc: Document, base: Path, ops: Operation[]): void {
  for (const op of ops) {
    const path = [...base, ...decodePointer(op.path)];
    const key = path.at(-1) as string | number;
    const parentPath = path.slice(0, -1);
    if (op.op === 'add') {
      const parent = parentPath.length ? doc.getIn(parentPath, true) : doc.contents;
      const node = doc.createNode(op.value);
      if (isSeq(parent)) parent.items.splice(key === '-' ? parent.items.length : Number(key), 0, node);
      else if (isMap(parent)) parent.set(key, node);
      else throw new ManifestError(`cannot add ${op.path}: its parent is not a map or list`);
    } else if (op.op === 'replace') {
      // A replaced scalar keeps its quoting and comment, so `value: "…"` stays quoted.
      const old = doc.getIn(path, true);
      const node = doc.createNode(op.value);
      if (isScalar(old) && isScalar(node)) {
        node.type = old.type;
        node.comment = old.comment;
      }
      doc.setIn(path, node);
    } else if (op.op === 'remove') {
      doc.deleteIn(path);
    } else {
      throw new ManifestError(`unexpected JSON Patch operation ${op.op}`);
    }
  }
}

/** One line per workload for stderr, as `linkerd inject` reports: what happened and why. */
export function formatReport(r: WorkloadReport): string {
  const what = `${r.kind.toLowerCase()} "${r.name}"${r.namespace ? ` in namespace ${r.namespace}` : ''}`;
  if (r.result.ok) {
    const { replaced, updated } = r.result;
    const again = replaced
      ? ` (replacing its injection for ToolSet ${replaced.toolset}, hash ${replaced.hash ?? 'none'})`
      : '';
    const lines = updated
      ? [`${what} updated (ToolSet ${r.result.toolset}): ${updated.join('; ')}`]
      : [`${what} injected with ToolSet ${r.result.toolset}${again}`];
    for (const w of r.result.warnings) lines.push(`  warning: ${w}`);
    return lines.join('\n');
  }
  return `${what} skipped (${r.result.reason}): ${r.result.message}`;
}
