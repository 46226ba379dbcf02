/**
 * ioredis is loaded only for a ToolSet with shared state, so an idle proxy without one stays small
 * (DESIGN: idle RSS). Checked in a fresh Node process on the built code, where nothing else loaded it.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const SCRIPT = `
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const { createToolRegistry } = await import('./dist/src/tools/registry.js');
const { validateToolSet } = await import('./dist/src/toolset/validate.js');
const { resolveToolSet } = await import('./dist/src/toolset/defaults.js');
const toolset = (extra) => resolveToolSet(validateToolSet({
  apiVersion: 'earpiece.dev/v1alpha1', kind: 'ToolSet', metadata: { name: 'a' },
  spec: { tools: [{ name: 't', builtin: 'time', rateLimit: { requests: 1, per: '1s' } }], ...extra },
}).toolset);
const loaded = () => Object.keys(require.cache).some((k) => k.includes('/ioredis/'));
const local = await createToolRegistry(toolset({}), { env: {} });
const before = loaded();
const shared = await createToolRegistry(
  toolset({ sharedState: { redis: { url: { value: 'redis://127.0.0.1:1' } } } }),
  { env: {}, logger: (await import('pino')).pino({ level: 'silent' }) },
);
console.log(JSON.stringify({ before, after: loaded() }));
await local.close();
await shared.close();
`;

describe('the Redis client', () => {
  it('is not loaded for a ToolSet without shared state, and is for one with it', () => {
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', SCRIPT], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(JSON.parse(out.trim().split('\n').at(-1) as string)).toEqual({ before: false, after: true });
  });
});
