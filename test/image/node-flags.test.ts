import { readFileSync } from 'node:fs';
import { expect, it } from 'vitest';
import { EARPIECE_NODE_FLAGS } from '../../bench/procs.js';

it('the benchmark starts the proxy with the Node flags of the image', () => {
  const line = readFileSync('Dockerfile', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('ENTRYPOINT '));
  const entrypoint = JSON.parse(line?.slice('ENTRYPOINT '.length) ?? '[]') as string[];
  const flags = entrypoint.slice(1, entrypoint.indexOf('dist/cmd/earpiece.js'));
  expect(flags).toEqual(['--max-semi-space-size=2']);
  expect(EARPIECE_NODE_FLAGS).toEqual(flags);
});
