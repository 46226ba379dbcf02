import { parseArgs } from 'node:util';
import type { V1EnvVar } from '@kubernetes/client-node';
import { SidecarConfigError, sidecarConfigFromEnv } from '../src/operator/sidecar.js';
import { clusterEnvCheck } from '../src/operator/sidecar-env.js';
import {
  checkToolSetText,
  type DocumentCheck,
  type Issue,
  readToolSetFile,
  resolveToolSet,
} from '../src/toolset/index.js';

const HELP = `Usage: earpiece validate [--local] [--output text|json] FILE...

Checks the ToolSets in YAML or JSON files, as the operator's admission webhook does, and prints every
problem as "FILE: path: message". A file may hold several documents of any kind (as GitOps repositories
keep them): each ToolSet is checked, other kinds are passed over, and FILE#N names the Nth document.

Warnings (exit status 0): a ToolSet without spec.selector, and with --local a secretKeyRef, which only
the operator can resolve.

In a cluster a valueFrom.env may name only a variable the chart's injection.env gives the sidecar, never
an EARPIECE_ one. Set EARPIECE_SIDECAR_ENV to the chart's list (JSON, as the operator gets it) to check
the names; without it each name is a warning. --local skips this rule.

Options:
  --local          check for \`earpiece proxy\` run outside Kubernetes
  --output json    one JSON report on stdout, for CI
Exit status: 0 when every ToolSet is valid, 1 otherwise, 2 for bad usage.`;

interface FileReport {
  file: string;
  /** Set when the file cannot be read at all. */
  error?: string;
  documents: DocumentReport[];
}

interface DocumentReport {
  document: number;
  line: number;
  kind: string | undefined;
  name: string | undefined;
  /** null: a document of another kind, passed over. */
  valid: boolean | null;
  tools?: number;
  hash?: string;
  errors: Issue[];
  warnings: Issue[];
}

/** `local`, or the chart's injection.env (undefined: not known) for the cluster's valueFrom.env rule. */
type Target = { local: true } | { local: false; chartEnv: V1EnvVar[] | undefined };

function report(check: DocumentCheck, target: Target): DocumentReport {
  const { result, ...where } = check;
  if (!result) return { ...where, valid: null, errors: [], warnings: [] };
  if (!result.ok) return { ...where, valid: false, errors: result.issues, warnings: result.warnings };
  const cluster = target.local
    ? { issues: [], warnings: [] }
    : clusterEnvCheck(result.toolset.spec, target.chartEnv);
  const warnings = [...result.warnings, ...cluster.warnings];
  if (cluster.issues.length > 0) return { ...where, valid: false, errors: cluster.issues, warnings };
  const resolved = resolveToolSet(result.toolset);
  return { ...where, valid: true, tools: resolved.tools.length, hash: resolved.hash, errors: [], warnings };
}

async function checkFile(file: string, target: Target): Promise<FileReport> {
  const read = await readToolSetFile(file);
  if (!read.ok) return { file, error: read.issue.message, documents: [] };
  const documents = checkToolSetText(read.text, { local: target.local }).map((d) => report(d, target));
  if (documents.length === 0) return { file, error: 'has no document', documents };
  return { file, documents };
}

/** Text output: problems and warnings on stderr, verdicts on stdout. */
function printText(reports: FileReport[]): void {
  for (const { file, error, documents } of reports) {
    if (error) console.error(`${file}: ${error}`);
    const several = documents.length > 1;
    for (const d of documents) {
      const where = several ? `${file}#${d.document}` : file;
      const what = `${d.kind ?? 'ToolSet'}${d.name ? ` ${d.name}` : ''}`;
      if (d.valid === null) console.log(`${where}: ${what} is not a ToolSet; passed over`);
      for (const e of d.errors) console.error(`${where}: ${e.path}: ${e.message}`);
      for (const w of d.warnings) console.error(`${where}: warning: ${w.path}: ${w.message}`);
      if (d.valid) console.log(`${where}: ${what} is valid (${d.tools} tool entries, hash ${d.hash})`);
    }
  }
}

export async function main(argv: string[]): Promise<number> {
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(argv);
  } catch (err) {
    console.error(`earpiece validate: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { positionals, values } = parsed;
  if (values.help || positionals.length === 0) {
    console.log(HELP);
    return values.help ? 0 : 2;
  }
  if (values.output !== 'text' && values.output !== 'json') {
    console.error(`earpiece validate: --output must be text or json, not "${values.output}"`);
    return 2;
  }
  let target: Target;
  try {
    target =
      values.local === true
        ? { local: true }
        : {
            local: false,
            chartEnv:
              process.env.EARPIECE_SIDECAR_ENV === undefined
                ? undefined
                : sidecarConfigFromEnv(process.env).extraEnv,
          };
  } catch (err) {
    if (!(err instanceof SidecarConfigError)) throw err;
    console.error(`earpiece validate: ${err.message}`);
    return 2;
  }
  const reports: FileReport[] = [];
  for (const file of positionals) reports.push(await checkFile(file, target));
  const valid = reports.every((r) => !r.error && r.documents.every((d) => d.valid !== false));
  if (values.output === 'json') console.log(JSON.stringify({ valid, files: reports }, null, 2));
  else printText(reports);
  return valid ? 0 : 1;
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      help: { type: 'boolean', short: 'h' },
      local: { type: 'boolean' },
      output: { type: 'string', short: 'o', default: 'text' },
    },
  });
}
