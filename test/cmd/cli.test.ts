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
  return earpieceWith({}, ...args);
}

async function earpieceWith(
  env: Record<string, string>,
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args], {
      timeout: 60_000,
      env: { ...process.env, ...env },
    });
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

describe('earpiece validate: the cluster rule for valueFrom.env', () => {
  const toolset = (env: string) => `apiVersion: earpiece.dev/v1alpha1
kind: ToolSet
metadata: { name: shop }
spec:
  tools:
    - name: orders
      description: Looks up orders.
      http: { url: 'https://orders.example/o', headers: [{ name: X-Key, valueFrom: { env: ${env} } }] }
`;
  const field = 'spec.tools[0].http.headers[0].valueFrom.env';

  it("refuses the operator's own variables, and checks other names against EARPIECE_SIDECAR_ENV when it is set", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-validate-'));
    const reserved = join(dir, 'reserved.yaml');
    const named = join(dir, 'named.yaml');
    await writeFile(reserved, toolset('EARPIECE_SECRET_OTHER'));
    await writeFile(named, toolset('ORDERS_KEY'));

    // The webhook refuses EARPIECE_ names in any cluster: so does validate.
    const refused = await earpiece('validate', reserved);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`${reserved}: ${field}: EARPIECE_SECRET_OTHER is reserved`);
    // Without the chart's list, another name is a warning only.
    const unknown = await earpiece('validate', named);
    expect(unknown.code).toBe(0);
    expect(unknown.stderr).toContain(
      `${named}: warning: ${field}: in a cluster the injected sidecar has ORDERS_KEY only if the chart's injection.env gives it`,
    );
    // With it, the name is checked as the webhook checks it.
    const chart = (names: string[]) => ({
      EARPIECE_SIDECAR_ENV: JSON.stringify(names.map((name) => ({ name, value: 'x' }))),
    });
    const missing = await earpieceWith(chart(['OTEL_EXPORTER_OTLP_ENDPOINT']), 'validate', named);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`${field}: the injected sidecar has no environment variable ORDERS_KEY`);
    const given = await earpieceWith(chart(['ORDERS_KEY']), 'validate', named);
    expect(given.code).toBe(0);
    expect(given.stderr).not.toContain('ORDERS_KEY');
    // Outside a cluster (--local) the proxy reads its own environment: no such rule.
    expect(await earpiece('validate', '--local', reserved)).toMatchObject({ code: 0 });
    const broken = await earpieceWith({ EARPIECE_SIDECAR_ENV: '{"a":1}' }, 'validate', named);
    expect(broken.code).toBe(2);
    expect(broken.stderr).toContain('EARPIECE_SIDECAR_ENV: is not a JSON list of env vars');
    await rm(dir, { recursive: true, force: true });
  });
});

describe('earpiece proxy and demo', () => {
  it('say what is wrong with their arguments or settings in a line, not a stack trace', async () => {
    for (const args of [
      ['proxy', '--metric-port', '9000'],
      ['proxy', '--toolset'],
      ['demo', '--fast'],
    ]) {
      const result = await earpiece(...args);
      expect(result.code, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toMatch(
        new RegExp(`^earpiece ${args[0]}: .*\\n\\nUsage: earpiece ${args[0]}`),
      );
      expect(result.stderr, args.join(' ')).not.toMatch(/\n\s+at /);
    }
    // A shared-state URL that is no Redis URL stops the proxy with the variable named, and never echoes it.
    const redis = await earpieceWith(
      { EARPIECE_SHARED_STATE_REDIS_URL: 'hunter2-not-a-url' },
      'proxy',
      '--toolset',
      'examples/toolset.yaml',
      '--port',
      '0',
      '--metrics-port',
      '0',
    );
    expect(redis.code).toBe(1);
    expect(redis.stderr).toMatch(/^earpiece proxy: EARPIECE_SHARED_STATE_REDIS_URL: /);
    expect(redis.stderr).not.toMatch(/\n\s+at /);
    expect(redis.stderr + redis.stdout).not.toContain('hunter2');
    const idle = await earpiece(
      'proxy',
      '--toolset',
      'examples/toolset.yaml',
      '--idle-collection-after',
      'soon',
    );
    expect(idle.code).toBe(2);
    expect(idle.stderr).toBe(
      'earpiece proxy: --idle-collection-after must be a duration such as 30s, or 0 for never, not "soon"\n',
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
