import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { CRD_FILE, renderCrdYaml } from '../src/toolset/crd.js';
import { renderValidatorModule, VALIDATOR_FILE } from '../src/toolset/validator-gen.js';

/** The chart renders the CRD from its own files/ (Helm never upgrades a chart's crds/ folder). */
const CHART_CRD_FILE = 'charts/earpiece/files/toolsets.earpiece.dev.yaml';

const HELP = `Usage: earpiece gen-crd [--output FILE | --output -] [--check]

Writes what is generated from the ToolSet schema: the CustomResourceDefinition to ${CRD_FILE}
and the Helm chart's copy ${CHART_CRD_FILE}, and the proxy's standalone validator ${VALIDATOR_FILE}
(with --output, only the CRD, to FILE; "-" prints it).
  --check   write nothing; exit 1 when a file differs from what would be written
Exit status: 0 done (or up to date), 1 stale or not writable, 2 bad usage.`;

/** The package root: the built file sits in dist/cmd/, the source in cmd/. */
function packageRoot(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  return path.basename(path.dirname(here)) === 'dist'
    ? path.resolve(here, '..', '..')
    : path.resolve(here, '..');
}

export async function main(argv: string[]): Promise<number> {
  let values: { output?: string; check?: boolean; help?: boolean };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        output: { type: 'string', short: 'o' },
        check: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    console.error(`earpiece gen-crd: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const text = renderCrdYaml();
  if (values.output === '-') {
    process.stdout.write(text);
    return 0;
  }
  const root = packageRoot();
  const files: [string, string][] = values.output
    ? [[values.output, text]]
    : [
        [path.join(root, CRD_FILE), text],
        [path.join(root, CHART_CRD_FILE), text],
        [path.join(root, VALIDATOR_FILE), renderValidatorModule()],
      ];
  if (values.check) {
    let stale = false;
    for (const [file, text] of files) {
      if ((await readFile(file, 'utf8').catch(() => undefined)) === text) continue;
      console.error(`${file} is stale; run npm run gen:crd`);
      stale = true;
    }
    return stale ? 1 : 0;
  }
  for (const [file, text] of files) {
    try {
      await writeFile(file, text);
    } catch (err) {
      console.error(`earpiece gen-crd: cannot write ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
      return 1;
    }
    console.error(`wrote ${file}`);
  }
  return 0;
}
