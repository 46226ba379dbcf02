import { parseArgs } from 'node:util';
import { parseToolSet, readToolSetFile, resolveToolSet } from '../src/toolset/index.js';

const HELP = `Usage: earpiece validate FILE...

Checks ToolSet files and prints every problem, one per line, as "FILE: path: message".
A secretKeyRef is valid here: only the proxy, run outside Kubernetes, refuses it.
Exit status: 0 when every file is valid, 1 otherwise.`;

export async function main(argv: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { help: { type: 'boolean', short: 'h' } },
  });
  if (values.help || positionals.length === 0) {
    console.log(HELP);
    return values.help ? 0 : 2;
  }
  let failed = false;
  for (const file of positionals) {
    const read = await readToolSetFile(file);
    if (!read.ok) {
      console.error(`${file}: ${read.issue.message}`);
      failed = true;
      continue;
    }
    const result = parseToolSet(read.text);
    if (result.ok) {
      const resolved = resolveToolSet(result.toolset);
      console.log(
        `${file}: ToolSet ${resolved.name} is valid (${resolved.tools.length} tool entries, hash ${resolved.hash})`,
      );
    } else {
      failed = true;
      for (const issue of result.issues) console.error(`${file}: ${issue.path}: ${issue.message}`);
    }
  }
  return failed ? 1 : 0;
}
