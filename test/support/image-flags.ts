/** The Node flags the image's ENTRYPOINT starts node with (read from the Dockerfile). */
import { readFileSync } from 'node:fs';

export function imageNodeFlags(): string[] {
  const line = readFileSync('Dockerfile', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('ENTRYPOINT '));
  const entrypoint = JSON.parse(line?.slice('ENTRYPOINT '.length) ?? '[]') as string[];
  return entrypoint.slice(1, entrypoint.indexOf('dist/cmd/earpiece.js'));
}
