/** docs/errors.md lists, section by section, exactly the codes of the source's error tables. */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { OPERATOR_ERRORS } from '../src/operator/errors.js';
import { ERRORS } from '../src/proxy/errors.js';
import { TOOL_ERRORS } from '../src/tools/errors.js';
import { TOOLSET_ERRORS } from '../src/toolset/errors.js';

/** The codes in the table under a `## heading` of docs/errors.md, up to the next heading. */
function documented(doc: string, heading: string): string[] {
  const start = doc.indexOf(`\n## ${heading}`);
  if (start === -1) throw new Error(`docs/errors.md has no section "## ${heading}"`);
  const end = doc.indexOf('\n## ', start + 1);
  const section = doc.slice(start, end === -1 ? undefined : end);
  return [...section.matchAll(/^\| `(ERP_[A-Z_]+)` \|/gm)].map((m) => m[1] as string).sort();
}

describe('error codes', () => {
  it.each([
    ['Proxy', ERRORS],
    ['ToolSets', TOOLSET_ERRORS],
    ['Tools', TOOL_ERRORS],
    ['Operator', OPERATOR_ERRORS],
  ])('docs/errors.md section %s lists exactly its table', async (heading, table) => {
    const doc = await readFile('docs/errors.md', 'utf8');
    expect(documented(doc, heading)).toEqual(Object.keys(table).sort());
  });

  it('names each code in one table only', () => {
    const all = [ERRORS, TOOLSET_ERRORS, TOOL_ERRORS, OPERATOR_ERRORS].flatMap((t) => Object.keys(t));
    expect(all.length).toBe(new Set(all).size);
  });
});
