/**
 * `earpiece validate` output, byte for byte, against golden files in test/fixtures/validate (the built
 * CLI, as a user runs it). After a deliberate change of wording, rewrite them with
 * `UPDATE_GOLDEN=1 npx vitest run test/cmd/validate-golden.test.ts` and review the diff.
 */
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const DIR = 'test/fixtures/validate';

async function validate(args: string[]): Promise<string> {
  let code = 0;
  let stdout: string;
  let stderr: string;
  try {
    ({ stdout, stderr } = await run(process.execPath, ['dist/cmd/earpiece.js', 'validate', ...args], {
      timeout: 60_000,
    }));
  } catch (err) {
    ({ code, stdout, stderr } = err as { code: number; stdout: string; stderr: string });
  }
  return `$ earpiece validate ${args.join(' ')}\nexit ${code}\n--- stdout\n${stdout}--- stderr\n${stderr}`;
}

const cases: [golden: string, args: string[], what: string][] = [
  ['gitops', [`${DIR}/gitops.yaml`], 'a multi-document file: other kinds passed over, each ToolSet reported'],
  ['gitops-json', ['--output', 'json', `${DIR}/gitops.yaml`], 'the same file as JSON, for CI'],
  ['broken', [`${DIR}/broken.yaml`], 'every problem of one ToolSet, schema and rules together'],
  ['syntax', [`${DIR}/syntax.yaml`], 'a YAML syntax error on the line where the unclosed [ starts'],
  ['local', [`${DIR}/local.yaml`], 'valid, with a warning for the missing selector (exit 0)'],
  ['local-local', ['--local', `${DIR}/local.yaml`], '--local: a secretKeyRef is a warning too (exit 0)'],
  ['misspelt', [`${DIR}/misspelt.yaml`], 'a misspelt kind is checked, not passed over'],
  ['missing', [`${DIR}/no-such-file.yaml`], 'a file that cannot be read'],
];

describe('earpiece validate golden outputs', () => {
  it.each(cases)('%s: %s', async (golden, args) => {
    const file = `${DIR}/${golden}.golden`;
    const actual = await validate(args);
    if (process.env.UPDATE_GOLDEN) await writeFile(file, actual);
    expect(actual).toBe(await readFile(file, 'utf8'));
  });
});
