import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { text as readStream } from 'node:stream/consumers';
import { parseArgs } from 'node:util';
import { parseAllDocuments } from 'yaml';
import type { OperatorErrorCode } from '../src/operator/errors.js';
import {
  checkYaml,
  formatReport,
  injectManifests,
  ManifestError,
  type WorkloadReport,
} from '../src/operator/inject.js';
import { type SidecarConfig, SidecarConfigError, sidecarConfigFromEnv } from '../src/operator/sidecar.js';
import { validateForCluster } from '../src/operator/sidecar-env.js';
import { formatIssues, type ToolSet } from '../src/toolset/index.js';

const HELP = `Usage: earpiece inject --toolset FILE [--toolset FILE ...] -f MANIFEST [-f MANIFEST ...]

Adds the earpiece-proxy sidecar to the pod templates of Kubernetes manifests, offline, as the operator's
webhook would: Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs
and CronJobs, also inside List documents. Only pod templates labelled earpiece.dev/inject: "true" (or in
a Namespace so labelled in the same manifests) that one ToolSet selects are changed; every other
document is printed as it came. The result goes to stdout, one line per workload to stderr.

Options:
  -t, --toolset FILE       a ToolSet file (may hold several documents); repeat for more
  -f, --filename PATH      a manifest file, a directory of *.yaml/*.yml/*.json, or - for stdin; repeat for more
      --with-configmap     also print the ConfigMap earpiece-toolset-<name> of each ToolSet injected
      --image IMAGE        the sidecar image (default: $EARPIECE_SIDECAR_IMAGE or the release image);
                           also replaces the image of a sidecar injected before (without it, only
                           an image earpiece set itself is replaced)
      --image-pull-secret NAME
                           a Secret for pulling the sidecar image, added to each injected pod's
                           imagePullSecrets (it must exist in the pod's namespace); repeat for more
      --no-native-sidecar  add the sidecar as a plain container (clusters before Kubernetes 1.29)
      --allow-skip         print the manifests even when an opted-in workload was skipped
  -h, --help               this text
The EARPIECE_SIDECAR_* variables the operator reads set the other sidecar defaults here too.
As in the cluster, a ToolSet's valueFrom.env may name only a variable EARPIECE_SIDECAR_ENV gives the
sidecar, never one starting EARPIECE_ (the operator's own; name a Secret with valueFrom.secretKeyRef).

Exit status: 0 manifests printed; 1 a file cannot be read, a manifest is not Kubernetes YAML (or is an
unrendered template), or a ToolSet is invalid; 2 bad usage; 3 an opted-in workload was skipped (it
would run without the sidecar) and --allow-skip was not given. Nothing is printed unless the status is 0.`;

/** A file that cannot be used: reported on stderr with status 1. */
class InputError extends Error {
  readonly code: OperatorErrorCode = 'ERP_INJECT_INPUT';
}

async function readInput(file: string): Promise<{ name: string; text: string }[]> {
  try {
    if (file === '-') return [{ name: '(stdin)', text: await readStream(process.stdin) }];
    if ((await stat(file)).isDirectory()) {
      const names = (await readdir(file)).filter((n) => /\.(ya?ml|json)$/.test(n)).sort();
      return Promise.all(
        names.map(async (n) => ({
          name: path.join(file, n),
          text: await readFile(path.join(file, n), 'utf8'),
        })),
      );
    }
    return [{ name: file, text: await readFile(file, 'utf8') }];
  } catch (err) {
    throw new InputError(`${file}: cannot be read: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

/**
 * Every ToolSet of a file, validated as the operator does (a `valueFrom.env` may name only what the
 * sidecar's EARPIECE_SIDECAR_ENV gives it); an invalid one is an error naming the field.
 */
function parseToolSets(name: string, text: string, sidecar: SidecarConfig): ToolSet[] {
  const docs = parseAllDocuments(text, { prettyErrors: true });
  if (!Array.isArray(docs)) return [];
  const toolsets: ToolSet[] = [];
  for (const doc of docs) {
    try {
      checkYaml(doc, text);
    } catch (err) {
      if (err instanceof ManifestError) throw new InputError(`${name}: ${err.message}`);
      throw err;
    }
    let value: unknown;
    try {
      value = doc.toJS();
    } catch (err) {
      // yaml refuses aliases that would expand past its limit (a "billion laughs" document).
      throw new InputError(`${name}: cannot be read: ${(err as Error).message}`);
    }
    if (value === null || value === undefined) continue;
    const result = validateForCluster(value, sidecar.extraEnv);
    if (!result.ok) {
      const label = (value as { metadata?: { name?: string } }).metadata?.name;
      const issues = formatIssues(result.issues).replace(
        /^/gm,
        `${name}: ${label ? `ToolSet ${label}: ` : ''}`,
      );
      throw new InputError(issues);
    }
    toolsets.push(result.toolset);
  }
  return toolsets;
}

export async function main(argv: string[]): Promise<number> {
  let values: {
    toolset?: string[];
    filename?: string[];
    'with-configmap'?: boolean;
    image?: string;
    'image-pull-secret'?: string[];
    'native-sidecar'?: boolean;
    'allow-skip'?: boolean;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      args: argv,
      allowNegative: true,
      options: {
        toolset: { type: 'string', short: 't', multiple: true },
        filename: { type: 'string', short: 'f', multiple: true },
        'with-configmap': { type: 'boolean' },
        image: { type: 'string' },
        'image-pull-secret': { type: 'string', multiple: true },
        'native-sidecar': { type: 'boolean' },
        'allow-skip': { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    console.error(`earpiece inject: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (!values.toolset?.length || !values.filename?.length) {
    console.error(`earpiece inject: needs --toolset and -f\n\n${HELP}`);
    return 2;
  }

  let sidecar: SidecarConfig;
  try {
    sidecar = sidecarConfigFromEnv(process.env);
  } catch (err) {
    if (!(err instanceof SidecarConfigError)) throw err;
    console.error(`earpiece inject: ${err.message}`);
    return 2;
  }
  if (values.image) sidecar.image = values.image;
  if (values['native-sidecar'] !== undefined) sidecar.nativeSidecar = values['native-sidecar'];
  if (values['image-pull-secret'])
    sidecar.imagePullSecrets = [...new Set([...sidecar.imagePullSecrets, ...values['image-pull-secret']])];

  const outputs: string[] = [];
  const reports: WorkloadReport[] = [];
  try {
    const toolsets: ToolSet[] = [];
    for (const file of values.toolset)
      for (const input of await readInput(file))
        toolsets.push(...parseToolSets(input.name, input.text, sidecar));
    if (toolsets.length === 0) throw new InputError(`${values.toolset.join(', ')}: no ToolSet found`);
    const seen = new Set<string>();
    for (const t of toolsets) {
      const key = `${t.metadata.namespace ?? ''}/${t.metadata.name}`;
      if (seen.has(key)) throw new InputError(`ToolSet ${t.metadata.name} is given twice`);
      seen.add(key);
    }
    for (const file of values.filename) {
      for (const input of await readInput(file)) {
        try {
          const result = injectManifests(input.text, {
            toolsets,
            sidecar,
            withConfigMaps: values['with-configmap'] ?? false,
            replaceImage: values.image !== undefined,
          });
          outputs.push(result.text);
          reports.push(...result.reports);
        } catch (err) {
          if (err instanceof ManifestError) throw new InputError(`${input.name}: ${err.message}`);
          throw err;
        }
      }
    }
  } catch (err) {
    if (!(err instanceof InputError)) throw err;
    console.error(err.message);
    return 1;
  }
  for (const report of reports) console.error(formatReport(report));
  // An opted-in workload without the sidecar would run without tools, silently: not a success.
  const skipped = reports.filter((r) => !r.result.ok && r.result.warn);
  if (skipped.length > 0 && !values['allow-skip']) {
    const names = skipped.map((r) => `${r.kind.toLowerCase()} "${r.name}"`).join(', ');
    console.error(
      `earpiece inject: ${skipped.length} opted-in workload${skipped.length === 1 ? ' was' : 's were'} skipped (${names}); fix them, or pass --allow-skip to print the manifests anyway`,
    );
    return 3;
  }
  // Several inputs become one stream: each ends in a newline and the next starts a new document.
  const text = outputs
    .filter((t) => t.trim() !== '')
    .map((t, i) => `${i > 0 && !/^---/.test(t) ? '---\n' : ''}${t.endsWith('\n') ? t : `${t}\n`}`)
    .join('');
  process.stdout.write(text);
  return 0;
}
