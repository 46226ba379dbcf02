import { mkdir, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { type ScriptedUpstream, startScriptedUpstream, textReply } from '../../src/demo/scripted-upstream.js';
import { type ProxyHarness, startTestProxy, toolsetDoc } from '../support/proxy.js';

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
});
