/** docs/errors.md lists exactly the codes the source raises (as fastify keeps its error reference honest). */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

async function sourceFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true, recursive: true });
  return entries.filter((e) => e.isFile() && e.name.endsWith('.ts')).map((e) => join(e.parentPath, e.name));
}

describe('error codes', () => {
  it('are all documented, and the documentation names no code that does not exist', async () => {
    const raised = new Set<string>();
    for (const file of [...(await sourceFiles('src')), ...(await sourceFiles('cmd'))]) {
      for (const [, code] of (await readFile(file, 'utf8')).matchAll(/['"](ERP_[A-Z_]+)['"]/g))
        raised.add(code as string);
      // Keys of the proxy's error table are codes too.
      for (const [, code] of (await readFile(file, 'utf8')).matchAll(/^\s+(ERP_[A-Z_]+):/gm))
        raised.add(code as string);
    }
    const documented = new Set(
      [...(await readFile('docs/errors.md', 'utf8')).matchAll(/`(ERP_[A-Z_]+)`/g)].map((m) => m[1] as string),
    );
    expect([...raised].filter((c) => !documented.has(c)).sort()).toEqual([]);
    expect([...documented].filter((c) => !raised.has(c)).sort()).toEqual([]);
  });
});
