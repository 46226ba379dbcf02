/** examples/mcp-toolset.yaml and examples/sql-toolset.yaml are valid ToolSets and say what they show. */
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { resolveToolSet } from '../../src/toolset/defaults.js';
import { parseToolSet } from '../../src/toolset/validate.js';
import { unresolvableValues } from '../../src/toolset/values.js';

async function load(path: string) {
  const result = parseToolSet(await readFile(path, 'utf8'));
  expect(result.issues).toEqual([]);
  if (!result.ok) throw new Error(`${path} is not valid`);
  return result.toolset;
}

describe('examples', () => {
  it('mcp-toolset.yaml: two MCP servers, secrets from env', async () => {
    const toolset = await load('examples/mcp-toolset.yaml');
    const resolved = resolveToolSet(toolset);
    expect(resolved.tools.map((t) => [t.kind, t.spec.mcp?.prefix, t.onInterrupt])).toEqual([
      ['mcp', 'home_', 'finish'],
      ['mcp', 'demo_', 'cancel'],
    ]);
    expect(unresolvableValues(toolset, {})).toEqual([
      { path: 'spec.tools[0].mcp.headers[0]', message: 'environment variable HA_AUTHORIZATION is not set' },
    ]);
    expect(unresolvableValues(toolset, { HA_AUTHORIZATION: 'Bearer x' })).toEqual([]);
  });

  it('sql-toolset.yaml: a bound query and a model-written SELECT, connection from env', async () => {
    const toolset = await load('examples/sql-toolset.yaml');
    const resolved = resolveToolSet(toolset);
    expect(resolved.tools.map((t) => [t.spec.name, t.kind, t.spec.sql?.query === undefined])).toEqual([
      ['order_status', 'sql', false],
      ['shop_reports', 'sql', true],
    ]);
    expect(unresolvableValues(toolset, { ORDERS_DB: 'postgres://localhost/shop' })).toEqual([]);
  });
});
