import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';
import { expect, it } from 'vitest';
import { EARPIECE_NODE_FLAGS } from '../../bench/procs.js';
import { imageNodeFlags } from '../support/image-flags.js';

it('the benchmark starts the proxy with the Node flags of the image', () => {
  const flags = imageNodeFlags();
  expect(flags).toEqual(['--max-semi-space-size=16', '--expose-gc', '--liftoff-only']);
  expect(EARPIECE_NODE_FLAGS).toEqual(flags);
});

it("keeps the SQL parser's first use within the sidecar's memory limit under the image's flags", () => {
  // Optimizing libpg-query's WebAssembly on its first parse took about 550 MB for a moment without
  // --liftoff-only: the injected sidecar (limit 256Mi) would be killed on its first free-form SQL call.
  const script = `
    const { loadSqlParser } = await import(${JSON.stringify(resolve('dist/src/tools/sql-guard.js'))});
    let peak = 0;
    const sample = () => { peak = Math.max(peak, process.memoryUsage().rss); };
    const timer = setInterval(sample, 2);
    const { parse } = await loadSqlParser();
    for (let i = 0; i < 200; i++) await parse("SELECT o.id FROM orders o WHERE o.status = 'shipped' LIMIT " + i);
    await new Promise((r) => setTimeout(r, 1500));
    sample();
    clearInterval(timer);
    console.log(peak);
  `;
  const flags = EARPIECE_NODE_FLAGS;
  const out = execFileSync(process.execPath, [...flags, '--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  const peakMiB = Number(out.trim()) / 2 ** 20;
  expect(peakMiB).toBeGreaterThan(20);
  expect(peakMiB).toBeLessThan(160);
});
