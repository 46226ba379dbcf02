import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { text as readStream } from 'node:stream/consumers';
import { parseArgs } from 'node:util';
import { parseAllDocuments } from 'yaml';
import type { OperatorErrorCode } from '../src/operator/errors.js';
import { formatReport, injectManifests, ManifestError } from '../src/operator/inject.js';
import { type SidecarConfig, SidecarConfigError, sidecarConfigFromEnv } from '../src/operator/sidecar.js';
import { formatIssues, type ToolSet, validateToolSet } from '../src/toolset/index.js';

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
      --image IMAGE        the sidecar image (default: $EARPIECE_SIDECAR_IMAGE or the release image)
      --no-native-sidecar  add the sidecar as a plain container (clusters before Kubernetes 1.29)
  -h, --help               this text
The EARPIECE_SIDECAR_* variables the operator reads set the other sidecar defaults here too.

Exit status: 0 manifests printed (skipped workloads are reported, not errors); 1 a file cannot be
read, a manifest is not YAML, or a ToolSet is invalid (nothing is printed); 2 bad usage.`;

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

/** Every ToolSet of a file, validated; an invalid one is an error naming the field. */
function parseToolSets(name: string, text: string): ToolSet[] {
  const docs = parseAllDocuments(text, { prettyErrors: true });
  if (!Array.isArray(docs)) return [];
  const toolsets: ToolSet[] = [];
  for (const doc of docs) {
    const [error] = doc.errors;
    if (error)
      throw new InputError(
        `${name}: line ${error.linePos?.[0].line ?? '?'}: ${error.message.split('\n')[0]}`,
      );
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    const result = validateToolSet(value);
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
    'native-sidecar'?: boolean;
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
        'native-sidecar': { type: 'boolean' },
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

  const outputs: string[] = [];
  const reports: string[] = [];
  try {
    const toolsets: ToolSet[] = [];
    for (const file of values.toolset)
      for (const input of await readInput(file)) toolsets.push(...parseToolSets(input.name, input.text));
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
          });
          outputs.push(result.text);
          reports.push(...result.reports.map(formatReport));
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
  // Several inputs become one stream: each ends in a newline and the next starts a new document.
  const text = outputs
    .filter((t) => t.trim() !== '')
    .map((t, i) => `${i > 0 && !/^---/.test(t) ? '---\n' : ''}${t.endsWith('\n') ? t : `${t}\n`}`)
    .join('');
  process.stdout.write(text);
  for (const line of reports) console.error(line);
  return 0;
}
