import { execFileSync } from 'node:child_process';
import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { type ScriptedUpstream, startScriptedUpstream, textReply } from '../../src/demo/scripted-upstream.js';
import { createTelemetry } from '../../src/telemetry/index.js';
import { startMcpServer } from '../support/mcp-server.js';
import { type ProxyHarness, startTestProxy, toolsetDoc, unmuteTurn } from '../support/proxy.js';
import { capturingLogger } from '../tools/helpers.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()?.();
});

const spec = (toolName: string) => ({ tools: [{ name: toolName, builtin: 'time' }] });

async function offeredTools(harness: ProxyHarness, upstream: ScriptedUpstream): Promise<string[]> {
  await harness.client.chat.completions.create({
    model: 'm',
    messages: [{ role: 'user', content: 'What time is it?' }],
  });
  const tools = (upstream.requests.at(-1)?.body.tools ?? []) as { function: { name: string } }[];
  return tools.map((t) => t.function.name);
}

/** Waits, as a hang guard in seconds, until the proxy's tools are `names`. */
async function eventually(check: () => Promise<boolean>): Promise<void> {
  const until = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met within 10 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Readiness {
  lastReloadFailure?: { message: string; at: string };
}

async function readiness(harness: ProxyHarness): Promise<Readiness> {
  const res = await fetch(`${harness.proxy.url}/readyz`);
  expect(res.status).toBe(200);
  return (await res.json()) as Readiness;
}

async function reloadFailures(harness: ProxyHarness): Promise<number> {
  const text = await (await fetch(`${harness.proxy.metricsUrl}/metrics`)).text();
  const value = /^earpiece_toolset_reload_failures_total\{toolset="test"\} (\S+)$/m.exec(text)?.[1];
  return Number(value);
}

describe('ToolSet reload', () => {
  it('follows an atomic rename, and keeps the last good ToolSet on a bad edit', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Ok.') }) });
    const harness = await startTestProxy(spec('first_tool'), upstream.url);
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    expect(await offeredTools(harness, upstream)).toEqual(['first_tool']);

    const tmp = join(harness.dir, '.toolset.yaml.tmp');
    await writeFile(tmp, stringify(toolsetDoc(spec('second_tool'))));
    await rename(tmp, harness.toolsetPath);
    await eventually(async () => (await offeredTools(harness, upstream))[0] === 'second_tool');

    await writeFile(
      tmp,
      'apiVersion: earpiece.dev/v1alpha1\nkind: ToolSet\nmetadata: {name: test}\nspec: {tools: [{name: broken, builtin: clock}]}\n',
    );
    await rename(tmp, harness.toolsetPath);
    await harness.proxy.reload();
    expect(await offeredTools(harness, upstream)).toEqual(['second_tool']);
    const ready = await fetch(`${harness.proxy.url}/readyz`);
    expect(ready.status).toBe(200);
  });

  it('counts an edit it cannot load and names it on /readyz until an edit loads', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Ok.') }) });
    const harness = await startTestProxy(spec('first_tool'), upstream.url, { env: {}, watch: false });
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    expect(await reloadFailures(harness)).toBe(0);
    expect((await readiness(harness)).lastReloadFailure).toBeUndefined();

    // What a sidecar sees when an edit needs an environment variable it was not started with.
    const needsEnv = { ...spec('second_tool'), upstream: { apiKey: { valueFrom: { env: 'NOT_SET_VAR' } } } };
    await writeFile(harness.toolsetPath, stringify(toolsetDoc(needsEnv)));
    const before = Date.now();
    await harness.proxy.reload();
    expect(await offeredTools(harness, upstream)).toEqual(['first_tool']);
    expect(await reloadFailures(harness)).toBe(1);
    const failure = (await readiness(harness)).lastReloadFailure;
    expect(failure?.message).toBe('spec.upstream.apiKey: environment variable NOT_SET_VAR is not set');
    expect(Date.parse(failure?.at ?? '')).toBeGreaterThanOrEqual(before);

    await writeFile(harness.toolsetPath, stringify(toolsetDoc(spec('second_tool'))));
    await harness.proxy.reload();
    expect(await offeredTools(harness, upstream)).toEqual(['second_tool']);
    expect((await readiness(harness)).lastReloadFailure).toBeUndefined();
    expect(await reloadFailures(harness)).toBe(1);
  });

  it('closes the tools of an edit that could not start, and keeps serving the last good set', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Ok.') }) });
    // The old transport's session ends with its stream, so a session the proxy closes leaves the count.
    const mcp = await startMcpServer({ transport: 'sse' });
    cleanups.push(() => mcp.stop());
    const telemetry = await createTelemetry();
    const harness = await startTestProxy(spec('first_tool'), upstream.url, {
      watch: false,
      // Stands in for any step after the tools opened that throws (an unusable upstream URL once did).
      telemetry: {
        ...telemetry,
        toolsetLoaded: (record) => {
          if (record.toolset === 'unstartable') throw new Error('the set could not start');
          telemetry.toolsetLoaded(record);
        },
      },
    });
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );

    const withMcp = { tools: [{ mcp: { url: mcp.url } }] };
    await writeFile(harness.toolsetPath, stringify(toolsetDoc(withMcp, 'unstartable')));
    await harness.proxy.reload();
    // Far longer than a local MCP connection takes: a session left open would be counted by now.
    await new Promise((r) => setTimeout(r, 1000));
    expect(mcp.sessionCount()).toBe(0);
    expect(await offeredTools(harness, upstream)).toEqual(['first_tool']);
    expect((await readiness(harness)).lastReloadFailure?.message).toBe('the set could not start');
    expect(await reloadFailures(harness)).toBe(1);

    // The same server keeps a session for a set that starts.
    await writeFile(harness.toolsetPath, stringify(toolsetDoc(withMcp)));
    await harness.proxy.reload();
    await eventually(async () => mcp.sessionCount() === 1);
  });

  it('keeps the upstream in use when an edit drops spec.upstream.url and nothing else names one', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Still here.') }) });
    const { logger, lines } = capturingLogger('warn');
    // A sidecar injected for a ToolSet that named its upstream: no --upstream / EARPIECE_UPSTREAM_URL.
    const named = { ...spec('first_tool'), upstream: { url: upstream.url } };
    const harness = await startTestProxy(named, upstream.url, {
      upstreamUrl: undefined,
      watch: false,
      logger,
    });
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    expect((await unmuteTurn(harness.client, [{ role: 'user', content: 'Hi there.' }])).text).toBe(
      'Still here.',
    );

    await writeFile(harness.toolsetPath, stringify(toolsetDoc(spec('second_tool'))));
    await harness.proxy.reload();
    expect(harness.proxy.current().toolset.tools[0]?.spec.name).toBe('second_tool');
    const before = upstream.requests.length;
    // Not the built-in default (http://127.0.0.1:8000), where nothing listens in such a pod.
    expect((await unmuteTurn(harness.client, [{ role: 'user', content: 'Hi again.' }])).text).toBe(
      'Still here.',
    );
    expect(upstream.requests.length).toBeGreaterThan(before);
    expect(harness.proxy.current().upstream.origin).toBe(new URL(upstream.url).origin);
    expect(
      lines()
        .filter((l) => l.level === 40)
        .map((l) => l.msg),
    ).toEqual([expect.stringContaining('names no spec.upstream.url')]);
  });

  it('says so when EARPIECE_UPSTREAM_URL overrides a spec.upstream.url an edit adds, once per URL', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Old server.') }) });
    const { logger, lines } = capturingLogger('warn');
    // A sidecar injected while the ToolSet named no upstream: handed the app's KYUTAI_LLM_URL.
    const harness = await startTestProxy(spec('first_tool'), upstream.url, { watch: false, logger });
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    // Credentials in it stay out of the log.
    const added = { ...spec('first_tool'), upstream: { url: 'http://bench:s3cret@new-vllm.invalid:8000' } };
    await writeFile(harness.toolsetPath, stringify(toolsetDoc(added)));
    await harness.proxy.reload();
    // The override holds: the turn still goes to the server the pod was handed.
    expect((await unmuteTurn(harness.client, [{ role: 'user', content: 'Hi.' }])).text).toBe('Old server.');
    await writeFile(
      harness.toolsetPath,
      stringify(toolsetDoc({ ...added, tools: spec('second_tool').tools })),
    );
    await harness.proxy.reload();
    const warnings = lines().filter((l) => l.level === 40);
    expect(JSON.stringify(warnings)).not.toContain('s3cret');
    expect(warnings).toEqual([
      expect.objectContaining({
        upstream: new URL(upstream.url).origin,
        ignored: 'http://new-vllm.invalid:8000',
        msg: expect.stringContaining('--upstream (EARPIECE_UPSTREAM_URL) overrides it'),
      }),
    ]);
  });

  it('follows a ConfigMap-style ..data symlink swap', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Ok.') }) });
    // The kubelet's layout: toolset.yaml -> ..data/toolset.yaml, ..data -> ..<timestamp>/
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const dir = await mkdtemp(join(tmpdir(), 'earpiece-cm-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const version = async (name: string, toolName: string) => {
      await mkdir(join(dir, name));
      await writeFile(join(dir, name, 'toolset.yaml'), stringify(toolsetDoc(spec(toolName))));
    };
    await version('..2026_01_01_v1', 'from_v1');
    await symlink('..2026_01_01_v1', join(dir, '..data'));
    await symlink('..data/toolset.yaml', join(dir, 'toolset.yaml'));

    const harness = await startTestProxy(spec('unused'), upstream.url, {
      toolsetPath: join(dir, 'toolset.yaml'),
    });
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    expect(await offeredTools(harness, upstream)).toEqual(['from_v1']);

    await version('..2026_01_01_v2', 'from_v2');
    await symlink('..2026_01_01_v2', join(dir, '..data_tmp'));
    await rename(join(dir, '..data_tmp'), join(dir, '..data'));
    await rm(join(dir, '..2026_01_01_v1'), { recursive: true });
    await eventually(async () => (await offeredTools(harness, upstream))[0] === 'from_v2');
  });

  it('refuses to start on an invalid ToolSet, naming every problem', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Ok.') }) });
    cleanups.push(() => upstream.close());
    await expect(
      startTestProxy(
        { limits: { turnTimeout: 'soon' }, tools: [{ name: 'x', builtin: 'clock' }] },
        upstream.url,
      ),
    ).rejects.toThrow(/spec\.limits\.turnTimeout: "soon" is not a duration[\s\S]*spec\.tools\[0\]\.builtin/);
    await expect(
      startTestProxy(
        {
          tools: [
            {
              name: 'x',
              http: {
                url: 'https://x.test/',
                headers: [{ name: 'K', valueFrom: { secretKeyRef: { name: 's', key: 'k' } } }],
              },
            },
          ],
        },
        upstream.url,
      ),
    ).rejects.toThrow(/use valueFrom\.env/);
  });

  it('keeps the last good ToolSet when an edit is an alias bomb, a FIFO or too large, and reloads after', async () => {
    const upstream = await startScriptedUpstream({ respond: () => ({ sse: textReply('Ok.') }) });
    const { logger, lines } = capturingLogger();
    const harness = await startTestProxy(spec('first_tool'), upstream.url, { logger, watch: false });
    cleanups.push(
      () => upstream.close(),
      () => harness.close(),
    );
    const rejections = () =>
      lines()
        .filter((l) => l.msg === 'Kept the last good ToolSet: the edited file is invalid.')
        .map((l) => (l as unknown as { issues: string[] }).issues.join('; '));
    const replaceWith = async (write: (tmp: string) => Promise<void>) => {
      const tmp = join(harness.dir, '.toolset.yaml.tmp');
      await write(tmp);
      await rename(tmp, harness.toolsetPath);
      // A hang guard: a reload that blocks on the file never returns.
      await Promise.race([
        harness.proxy.reload(),
        new Promise((_, reject) => setTimeout(() => reject(new Error('reload hung')), 10_000)),
      ]);
      expect(await offeredTools(harness, upstream)).toEqual(['first_tool']);
    };

    const bomb = ['a: &a [x, x, x, x, x, x, x, x, x]'];
    for (const [i, name] of [...'bcdefgh'].entries()) {
      bomb.push(`${name}: &${name} [${Array(9).fill(`*${'abcdefgh'[i]}`).join(', ')}]`);
    }
    await replaceWith((tmp) => writeFile(tmp, bomb.join('\n')));
    expect(rejections().at(-1)).toBe(
      '(yaml): cannot be read: Excessive alias count indicates a resource exhaustion attack',
    );

    await replaceWith(async (tmp) => {
      execFileSync('mkfifo', [tmp]);
    });
    expect(rejections().at(-1)).toBe(`${harness.toolsetPath}: is not a regular file`);

    const large = stringify(toolsetDoc(spec('large_tool')));
    await replaceWith((tmp) => writeFile(tmp, `${large}#${'x'.repeat(1024 * 1024)}\n`));
    expect(rejections().at(-1)).toBe(`${harness.toolsetPath}: is larger than 1008 KiB`);

    const tmp = join(harness.dir, '.toolset.yaml.tmp');
    await writeFile(tmp, stringify(toolsetDoc(spec('second_tool'))));
    await rename(tmp, harness.toolsetPath);
    await harness.proxy.reload();
    expect(await offeredTools(harness, upstream)).toEqual(['second_tool']);
    expect((await fetch(`${harness.proxy.url}/readyz`)).status).toBe(200);
  });
});
