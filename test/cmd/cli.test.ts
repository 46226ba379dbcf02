/** The built CLI, as a user runs it (npm test builds first). */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const CLI = 'dist/cmd/earpiece.js';

async function earpiece(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('earpiece validate', () => {
  it('accepts the examples', async () => {
    const result = await earpiece('validate', 'examples/toolset.yaml');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/ToolSet assistant is valid/);
  });

  it('reports every problem with its path and exits non-zero; a secretKeyRef is valid here', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-validate-'));
    const file = join(dir, 'bad.yaml');
    await writeFile(
      file,
      `apiVersion: earpiece.dev/v1alpha1
kind: ToolSet
metadata: { name: bad }
spec:
  upstream: { apiKey: { valueFrom: { secretKeyRef: { name: vllm, key: token } } } }
  tools:
    - { name: a, builtin: time }
    - { name: b, builtin: time }
    - { name: c, builtin: time, timeout: soon }
    - { name: a, builtin: calculator }
`,
    );
    const result = await earpiece('validate', file);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `${file}: spec.tools[2].timeout: "soon" is not a duration (use 500ms, 5s, 10m)`,
    );
    expect(result.stderr).toContain(`${file}: spec.tools[3].name: "a" is already the name of spec.tools[0]`);
    expect(result.stderr.trim().split('\n')).toHaveLength(2);
    await writeFile(file, 'spec: [');
    const broken = await earpiece('validate', file);
    expect(broken.code).toBe(1);
    await rm(dir, { recursive: true, force: true });
  });

  it('reports an alias bomb, a FIFO and an oversized file as problems, without a stack trace', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-validate-'));
    const bomb = join(dir, 'bomb.yaml');
    const levels = ['a: &a [x, x, x, x, x, x, x, x, x]'];
    for (const [i, name] of [...'bcdefgh'].entries()) {
      levels.push(`${name}: &${name} [${Array(9).fill(`*${'abcdefgh'[i]}`).join(', ')}]`);
    }
    await writeFile(bomb, levels.join('\n'));
    const fifo = join(dir, 'fifo.yaml');
    execFileSync('mkfifo', [fifo]);
    const large = join(dir, 'large.yaml');
    await writeFile(large, `#${'x'.repeat(1024 * 1024)}\n`);
    const result = await earpiece('validate', bomb, fifo, large);
    expect(result.code).toBe(1);
    expect(result.stderr.trim().split('\n')).toEqual([
      `${bomb}: (yaml): cannot be read: Excessive alias count indicates a resource exhaustion attack`,
      `${fifo}: is not a regular file`,
      `${large}: is larger than 1008 KiB`,
    ]);
    await rm(dir, { recursive: true, force: true });
  });
});

describe('earpiece demo', () => {
  it('runs a spoken conversation with tools and no network', async () => {
    const result = await earpiece('demo');
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/Let me check the weather\. \n\s+↳ tool get_weather: ok/);
    expect(result.stdout).toContain("It's 24 degrees and mostly sunny.");
    expect(result.stdout).toContain('The wind is at 12 kilometres per hour');
    expect(result.stdout).toMatch(/↳ tool calculate: ok[\s\S]*That makes 50\./);
    expect(result.stdout).toMatch(
      /Sure\. \n\s+↳ tool home_TurnOn: ok[\s\S]*The kitchen light is on, switched through MCP/,
    );
    // A slow tool: the still-working line after the filler, before the answer.
    expect(result.stdout).toMatch(
      /Let me look at the week\. Still working on it\. \n\s+↳ tool get_outlook: ok[\s\S]*The week looks dry/,
    );
    // A deferred tool: the turn ends on a promise; the result is spoken on the next turn (the silence marker).
    expect(result.stdout).toMatch(
      /One moment\. It's taking a while; I'll tell you[\s\S]*↳ tool plan_route: ok[\s\S]*you: {7}\.\.\.\nassistant: By the way, your route is ready: 47 minutes/,
    );
  });
});

describe('earpiece', () => {
  it('lists its commands and refuses unknown ones', async () => {
    expect((await earpiece('--help')).stdout).toMatch(
      /proxy[\s\S]*operator[\s\S]*inject[\s\S]*validate[\s\S]*demo/,
    );
    expect((await earpiece('frobnicate')).code).toBe(2);
  });
});
