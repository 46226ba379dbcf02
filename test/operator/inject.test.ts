/**
 * The pod corpus: every test/fixtures/pods/NAME.yaml has a golden NAME.injected.yaml (UPDATE_GOLDEN=1
 * rewrites them). Each case goes through `earpiece inject` and through the webhook over HTTPS, and both
 * must give the golden manifests, which the API server would accept and a second run leaves unchanged.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import fastJsonPatch from 'fast-json-patch';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { serviceDnsNames } from '../../src/operator/certs.js';
import { findWorkloads, injectManifests, namespacesOptedIn } from '../../src/operator/inject.js';
import type { PodTemplate } from '../../src/operator/patch.js';
import { toolsetLookup } from '../../src/operator/select.js';
import { DEFAULT_SIDECAR, type SidecarConfig } from '../../src/operator/sidecar.js';
import { CertificateHolder, startWebhookServer, type WebhookServer } from '../../src/operator/webhook.js';
import { createLogger } from '../../src/telemetry/log.js';
import { MAX_TOOLSET_BYTES, secretEnvName, type ToolSet, validateToolSet } from '../../src/toolset/index.js';
import { webhookCertificates } from '../support/certs.js';
import { toolSetOfSize } from '../support/large-toolset.js';
import { workloadIssues } from '../support/pod-rules.js';

const DIR = 'test/fixtures/pods';
const UPDATE = process.env.UPDATE_GOLDEN === '1';

const toolsets: ToolSet[] = readdirSync(`${DIR}/toolsets`)
  .sort()
  .map((file) => {
    const result = validateToolSet(parse(readFileSync(`${DIR}/toolsets/${file}`, 'utf8')));
    if (!result.ok) throw new Error(`${file}: ${JSON.stringify(result.issues)}`);
    return result.toolset;
  });

const files = readdirSync(DIR);
const cases = files
  .filter((f) => f.endsWith('.yaml') && !f.endsWith('.injected.yaml'))
  .map((f) => f.slice(0, -5));
const goldens = files
  .filter((f) => f.endsWith('.injected.yaml'))
  .map((f) => f.slice(0, -'.injected.yaml'.length));

const readCase = (name: string) => readFileSync(`${DIR}/${name}.yaml`, 'utf8');
const goldenPath = (name: string) => `${DIR}/${name}.injected.yaml`;
const parseDocs = (text: string) =>
  parseAllDocuments(text, { version: '1.1' }).map((d) => d.toJS() as unknown);
/** The operator's sidecar settings for a case: the defaults, with a fixture's `# sidecar: {...}` line. */
function sidecarFor(text: string): SidecarConfig {
  const line = /^# sidecar: (.*)$/m.exec(text);
  return { ...structuredClone(DEFAULT_SIDECAR), ...(line?.[1] ? JSON.parse(line[1]) : {}) };
}
/** What the webhook serves with; each case sets it before sending its pods. */
const webhookSidecar: SidecarConfig = structuredClone(DEFAULT_SIDECAR);
const inject = (text: string, sidecar = sidecarFor(text)) => injectManifests(text, { toolsets, sidecar });

/** The `# expect:` line at the top of a fixture: one outcome per workload, in order. */
function expectedOutcomes(text: string): string[] {
  const line = /^# expect: (.*)$/m.exec(text);
  if (!line?.[1]) throw new Error('fixture has no "# expect:" line');
  return line[1].trim().split(/\s+/);
}

const certificates = webhookCertificates({
  service: 'earpiece-webhook',
  namespace: 'earpiece',
  now: new Date(),
});
let server: WebhookServer;
let optedIn = new Set<string>();
const agent = new Agent({
  connect: { ca: certificates.ca.certPem, servername: serviceDnsNames('earpiece-webhook', 'earpiece')[2] },
});

beforeAll(async () => {
  server = await startWebhookServer({
    port: 0,
    host: '127.0.0.1',
    certificate: new CertificateHolder(certificates.serving),
    lookups: {
      toolsetByName: (ns, name) => toolsetLookup(toolsets, ns).byName(name),
      toolsetsInNamespace: (ns) => toolsetLookup(toolsets, ns).all(),
      config: (ns, name) => toolsetLookup(toolsets, ns).config(name),
      namespaceOptedIn: (ns) => optedIn.has(ns),
    },
    sidecar: webhookSidecar,
    logger: createLogger('webhook-test', 'silent'),
  });
});
afterAll(async () => {
  await server?.close();
  await agent.close();
});

/** What the API server does with the webhook: send the pod, apply the JSON Patch it answers with. */
async function throughWebhook(docs: unknown[]): Promise<unknown[]> {
  optedIn = namespacesOptedIn(docs);
  const out = structuredClone(docs);
  for (const [i, doc] of out.entries()) {
    for (const w of findWorkloads(doc)) {
      const namespace = w.namespace ?? 'default';
      const pod = {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: w.template.metadata ?? {},
        spec: w.template.spec,
      };
      const res = await request(`https://127.0.0.1:${server.port}/mutate`, {
        method: 'POST',
        dispatcher: agent,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          apiVersion: 'admission.k8s.io/v1',
          kind: 'AdmissionReview',
          request: {
            uid: `uid-${i}`,
            kind: { group: '', version: 'v1', kind: 'Pod' },
            resource: { group: '', version: 'v1', resource: 'pods' },
            namespace,
            operation: 'CREATE',
            object: pod,
          },
        }),
      });
      expect(res.statusCode).toBe(200);
      const { response } = (await res.body.json()) as {
        response: { uid: string; allowed: boolean; patch?: string };
      };
      expect(response).toMatchObject({ uid: `uid-${i}`, allowed: true });
      if (!response.patch) continue;
      const ops = JSON.parse(Buffer.from(response.patch, 'base64').toString());
      const patched = fastJsonPatch.applyPatch(structuredClone(pod), ops, true, false).newDocument;
      const template: PodTemplate = { metadata: patched.metadata, spec: patched.spec };
      if (w.path.length === 0) Object.assign(doc as object, template);
      else {
        const parent = w.path
          .slice(0, -1)
          .reduce((node: Record<string | number, unknown>, key) => node[key] as never, doc as never);
        parent[w.path.at(-1) as string] = template;
      }
    }
  }
  return out;
}

describe('the pod fixture corpus', () => {
  it('has a golden twin for every fixture and no orphaned golden file', () => {
    expect(cases.length).toBeGreaterThanOrEqual(15);
    if (!UPDATE)
      expect(
        cases.filter((c) => !goldens.includes(c)),
        'fixtures without NAME.injected.yaml (UPDATE_GOLDEN=1 writes them)',
      ).toEqual([]);
    expect(
      goldens.filter((g) => !cases.includes(g)),
      'golden files without a fixture',
    ).toEqual([]);
  });

  describe.each(cases)('%s', (name) => {
    const input = readCase(name);

    it('earpiece inject gives the golden manifests, with the expected outcome per workload', () => {
      const result = inject(input);
      if (UPDATE) writeFileSync(goldenPath(name), result.text);
      expect(result.text).toBe(readFileSync(goldenPath(name), 'utf8'));
      expect(result.reports.map((r) => (r.result.ok ? 'injected' : r.result.reason))).toEqual(
        expectedOutcomes(input),
      );
    });

    it('the webhook gives the same pods', async () => {
      Object.assign(webhookSidecar, sidecarFor(input));
      const viaWebhook = await throughWebhook(parseDocs(input));
      expect(viaWebhook).toEqual(parseDocs(readFileSync(goldenPath(name), 'utf8')));
    });

    it('the API server would accept every document', async () => {
      for (const doc of parseDocs(readFileSync(goldenPath(name), 'utf8'))) {
        if (doc === null) continue;
        expect(await workloadIssues(doc)).toEqual([]);
      }
    });

    it('a second run changes nothing', () => {
      const golden = readFileSync(goldenPath(name), 'utf8');
      const again = inject(golden, sidecarFor(input));
      expect(again.text).toBe(golden);
      expect(again.reports.every((r) => !r.result.ok)).toBe(true);
    });

    it('keeps the comments of the input', () => {
      const comments = input.match(/#.*$/gm) ?? [];
      const golden = readFileSync(goldenPath(name), 'utf8');
      for (const c of comments) expect(golden).toContain(c.trim());
    });
  });
});

describe('earpiece inject, the command', () => {
  const run = promisify(execFile);
  const cli = 'dist/cmd/earpiece.js';
  const exec = async (args: string[], stdin?: string) => {
    const child = run(process.execPath, [cli, 'inject', ...args], { encoding: 'utf8' });
    if (stdin !== undefined) {
      child.child.stdin?.end(stdin);
    }
    try {
      const { stdout, stderr } = await child;
      return { code: 0, stdout, stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };

  beforeAll(() => {
    if (!existsSync(cli)) throw new Error(`${cli} is missing: run npm run build first (npm test does)`);
  });

  it('turns the Unmute backend Deployment into valid manifests that a second run leaves unchanged', async () => {
    const first = await exec([
      '--toolset',
      `${DIR}/toolsets/assistant.yaml`,
      '-f',
      `${DIR}/unmute-backend.yaml`,
    ]);
    expect(first.code).toBe(0);
    expect(first.stderr).toBe(
      'deployment "unmute-backend" in namespace voice injected with ToolSet assistant\n',
    );
    const docs = parseDocs(first.stdout) as { kind: string }[];
    expect(docs.map((d) => d.kind)).toEqual(['Service', 'Deployment']);
    for (const doc of docs) expect(await workloadIssues(doc)).toEqual([]);
    const deployment = docs[1] as unknown as {
      spec: { template: { spec: { initContainers: { name: string }[] } } };
    };
    expect(deployment.spec.template.spec.initContainers.map((c) => c.name)).toEqual(['earpiece-proxy']);

    const second = await exec(['-t', `${DIR}/toolsets/assistant.yaml`, '-f', '-'], first.stdout);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe(first.stdout);
    expect(second.stderr).toContain('skipped (already_injected)');
  });

  it('injects again when the ToolSet changed since the manifest was injected', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-inject-'));
    try {
      const first = await exec(['-t', `${DIR}/toolsets/assistant.yaml`, '-f', `${DIR}/unmute-backend.yaml`]);
      // The ToolSet gains a tool with another Secret, as a GitOps repository would change it.
      const changed = path.join(dir, 'assistant.yaml');
      writeFileSync(
        changed,
        `${readFileSync(`${DIR}/toolsets/assistant.yaml`, 'utf8')}    - name: home
      description: Home.
      http:
        url: https://home.example/state
        headers:
          - name: Authorization
            valueFrom: { secretKeyRef: { name: home, key: token } }
`,
      );
      const rerun = await exec(['-t', changed, '-f', '-'], first.stdout);
      expect(rerun.code).toBe(0);
      expect(rerun.stderr).toMatch(
        /^deployment "unmute-backend" in namespace voice injected with ToolSet assistant \(replacing its injection for ToolSet assistant, hash [0-9a-f]{16}\)\n$/,
      );
      // What injecting the original manifest with the changed ToolSet gives.
      const fresh = await exec(['-t', changed, '-f', `${DIR}/unmute-backend.yaml`]);
      expect(parseDocs(rerun.stdout)).toEqual(parseDocs(fresh.stdout));
      const template = (parseDocs(rerun.stdout)[1] as { spec: { template: PodTemplate } }).spec.template;
      expect(template.spec?.initContainers?.filter((c) => c.name === 'earpiece-proxy')).toHaveLength(1);
      expect(
        template.spec?.initContainers?.[0]?.env?.some((e) => e.valueFrom?.secretKeyRef?.name === 'home'),
      ).toBe(true);
      expect(template.metadata?.annotations?.['earpiece.dev/toolset-hash']).not.toBe(
        (parseDocs(first.stdout)[1] as { spec: { template: PodTemplate } }).spec.template.metadata
          ?.annotations?.['earpiece.dev/toolset-hash'],
      );
      // And the same ToolSet again changes nothing.
      const again = await exec(['-t', changed, '-f', '-'], rerun.stdout);
      expect(again.stdout).toBe(rerun.stdout);
      expect(again.stderr).toContain('skipped (already_injected)');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('prints the ConfigMap with --with-configmap, secrets only as env var names', async () => {
    const { code, stdout } = await exec([
      '--toolset',
      `${DIR}/toolsets/assistant.yaml`,
      '-f',
      `${DIR}/unmute-backend.yaml`,
      '--with-configmap',
    ]);
    expect(code).toBe(0);
    const configMap = (
      parseDocs(stdout) as { kind: string; metadata: { name: string }; data: Record<string, string> }[]
    ).find((d) => d.kind === 'ConfigMap');
    expect(configMap?.metadata).toMatchObject({ name: 'earpiece-toolset-assistant', namespace: 'voice' });
    const rendered = configMap?.data['toolset.yaml'] ?? '';
    expect(rendered).not.toContain('secretKeyRef');
    expect(validateToolSet(parse(rendered)).ok).toBe(true);
    expect(await workloadIssues(configMap)).toEqual([]);
  });

  it('refuses an invalid ToolSet, naming the field, and prints nothing', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-inject-'));
    const file = path.join(dir, 'bad.yaml');
    writeFileSync(
      file,
      readFileSync(`${DIR}/toolsets/reports.yaml`, 'utf8').replace(
        'builtin: calculator',
        'builtin: calculator\n      timeout: soon',
      ),
    );
    try {
      const { code, stdout, stderr } = await exec(['--toolset', file, '-f', `${DIR}/job.yaml`]);
      expect(code).toBe(1);
      expect(stdout).toBe('');
      expect(stderr).toBe(
        `${file}: ToolSet reports: spec.tools[0].timeout: "soon" is not a duration (use 500ms, 5s, 10m)\n`,
      );
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('refuses a ToolSet whose ConfigMap could never be written, naming its size and the limit', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-inject-'));
    const file = path.join(dir, 'big.yaml');
    // No namespace: it is rendered into the workload's, so the longest one is counted.
    const big = toolSetOfSize(MAX_TOOLSET_BYTES - 40, 'big');
    delete big.metadata.namespace;
    writeFileSync(file, stringify(big));
    try {
      const { code, stdout, stderr } = await exec(['--toolset', file, '-f', `${DIR}/job.yaml`]);
      expect(code).toBe(1);
      expect(stdout).toBe('');
      expect(stderr).toMatch(
        new RegExp(
          `^${file}: ToolSet big: spec: renders to \\d+ bytes of configuration, more than the ${MAX_TOOLSET_BYTES} \\(1008 KiB\\) a ToolSet may have`,
        ),
      );
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it("holds a ToolSet's valueFrom.env to what EARPIECE_SIDECAR_ENV gives the sidecar, as the operator does", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-inject-'));
    const file = path.join(dir, 'env.yaml');
    const withEnv = (name: string) =>
      readFileSync(`${DIR}/toolsets/reports.yaml`, 'utf8').replace(
        'apiKey: { valueFrom: { secretKeyRef: { name: vllm, key: token } } }',
        `apiKey: { valueFrom: { env: ${name} } }`,
      );
    const field = `${file}: ToolSet reports: spec.upstream.apiKey.valueFrom.env`;
    const sidecarEnv = JSON.stringify([
      { name: 'VLLM_TOKEN', valueFrom: { secretKeyRef: { name: 'vllm', key: 'token' } } },
    ]);
    const execEnv = async (env: NodeJS.ProcessEnv) => {
      try {
        const { stdout, stderr } = await run(
          process.execPath,
          [cli, 'inject', '-t', file, '-f', `${DIR}/job.yaml`],
          {
            encoding: 'utf8',
            env: { ...process.env, ...env },
          },
        );
        return { code: 0, stdout, stderr };
      } catch (err) {
        const e = err as { code: number; stdout: string; stderr: string };
        return { code: e.code, stdout: e.stdout, stderr: e.stderr };
      }
    };
    try {
      writeFileSync(file, withEnv('VLLM_TOKEN'));
      expect(await execEnv({ EARPIECE_SIDECAR_ENV: '' })).toEqual({
        code: 1,
        stdout: '',
        stderr: `${field}: the injected sidecar has no environment variable VLLM_TOKEN: the chart gives it none (injection.env is empty); name a Secret with valueFrom.secretKeyRef, or add the variable to injection.env\n`,
      });
      const given = await execEnv({ EARPIECE_SIDECAR_ENV: sidecarEnv });
      expect(given.code).toBe(0);
      expect(given.stdout).toContain('name: VLLM_TOKEN');

      writeFileSync(file, withEnv(secretEnvName('vllm', 'token')));
      const reserved = await execEnv({ EARPIECE_SIDECAR_ENV: sidecarEnv });
      expect(reserved.code).toBe(1);
      expect(reserved.stderr).toContain(`${field}: ${secretEnvName('vllm', 'token')} is reserved`);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  it('fails with status 3 and a summary when an opted-in workload was skipped, unless --allow-skip', async () => {
    // several-toolsets.yaml: one pod that two ToolSets select, one that names a missing ToolSet, ...
    const args = ['-t', `${DIR}/toolsets/research-a.yaml`, '-t', `${DIR}/toolsets/research-b.yaml`];
    const failed = await exec([...args, '-f', `${DIR}/several-toolsets.yaml`]);
    expect(failed.code).toBe(3);
    expect(failed.stdout).toBe('');
    expect(failed.stderr).toContain('skipped (several_toolsets)');
    expect(failed.stderr).toMatch(
      /earpiece inject: \d+ opted-in workloads? (was|were) skipped \(.*\); fix them, or pass --allow-skip/,
    );
    const allowed = await exec([...args, '-f', `${DIR}/several-toolsets.yaml`, '--allow-skip']);
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toBe(readFileSync(goldenPath('several-toolsets'), 'utf8'));
    // Workloads that never asked for the sidecar are no failure.
    const quiet = await exec(['-t', `${DIR}/toolsets/assistant.yaml`, '-f', `${DIR}/not-opted-in.yaml`]);
    expect(quiet.code).toBe(0);
  });

  it('refuses input that is not Kubernetes YAML with status 1, naming what is wrong, without Node warnings', async () => {
    const t = ['-t', `${DIR}/toolsets/assistant.yaml`, '-f', '-'];
    const markdown = await exec(t, '# Unmute on Kubernetes\n\nLabel the backend and watch Grafana.\n');
    expect(markdown).toMatchObject({ code: 1, stdout: '' });
    expect(markdown.stderr).toBe(
      '(stdin): document 1 (line 3) is not a Kubernetes object: it needs apiVersion and kind\n',
    );
    const template = [
      'apiVersion: apps/v1',
      'kind: Deployment',
      'metadata:',
      '  name: {{ include "unmute.fullname" . }}',
      'spec:',
      '  template:',
      '    metadata:',
      '      labels:',
      '        earpiece.dev/inject: "true"',
      '',
    ].join('\n');
    const unrendered = await exec(t, template);
    expect(unrendered).toMatchObject({ code: 1, stdout: '' });
    expect(unrendered.stderr).toBe(
      '(stdin): line 4: it looks like an unrendered template ({{ ... }}); render it first (helm template, kustomize build) and inject the result\n',
    );
    const helmFile = await exec([
      '-t',
      `${DIR}/toolsets/assistant.yaml`,
      '-f',
      'charts/earpiece/templates/vllm.yaml',
    ]);
    expect(helmFile.code).toBe(1);
    expect(helmFile.stderr).toMatch(
      /^charts\/earpiece\/templates\/vllm\.yaml: line \d+: it looks like an unrendered template/,
    );
    expect(helmFile.stderr.split('\n')).toHaveLength(2);
  });

  it('replaces the image of a sidecar injected before, and merges image pull secrets once', async () => {
    const t = ['-t', `${DIR}/toolsets/assistant.yaml`];
    const first = await exec([
      ...t,
      '-f',
      `${DIR}/pull-secrets.yaml`,
      '--image-pull-secret',
      'earpiece-registry',
    ]);
    expect(first.code).toBe(0);
    const templateOf = (text: string) =>
      (parseDocs(text)[0] as { spec: { template: PodTemplate } }).spec.template.spec!;
    expect(templateOf(first.stdout).imagePullSecrets).toEqual([
      { name: 'app-registry' },
      { name: 'shared-registry' },
      { name: 'earpiece-registry' },
    ]);
    const image = 'registry.example/earpiece:0.2.0';
    const second = await exec(
      [
        ...t,
        '-f',
        '-',
        '--image',
        image,
        '--image-pull-secret',
        'earpiece-registry',
        '--image-pull-secret',
        'mirror',
      ],
      first.stdout,
    );
    expect(second.code).toBe(0);
    expect(second.stderr).toBe(
      `deployment "unmute-backend" in namespace voice updated (ToolSet assistant): image ghcr.io/earpiece-dev/earpiece:0.1.0 replaced by ${image}; image pull secret mirror added\n`,
    );
    const spec = templateOf(second.stdout);
    expect(spec.initContainers?.map((c) => [c.name, c.image])).toEqual([['earpiece-proxy', image]]);
    expect(spec.imagePullSecrets?.map((s) => s.name)).toEqual([
      'app-registry',
      'shared-registry',
      'earpiece-registry',
      'mirror',
    ]);
    // The same flags again: nothing left to change.
    const third = await exec(
      [...t, '-f', '-', '--image', image, '--image-pull-secret', 'mirror'],
      second.stdout,
    );
    expect(third).toMatchObject({ code: 0, stdout: second.stdout });
    expect(third.stderr).toContain('skipped (already_injected)');
  });

  it('answers bad usage with status 2 and the help text', async () => {
    const { code, stderr } = await exec(['-f', `${DIR}/job.yaml`]);
    expect(code).toBe(2);
    expect(stderr).toContain('Usage: earpiece inject');
  });

  it('reports YAML that does not parse with its line, status 1', async () => {
    const { code, stderr } = await exec(
      ['-t', `${DIR}/toolsets/assistant.yaml`, '-f', '-'],
      'kind: Pod\n  bad: [\n',
    );
    expect(code).toBe(1);
    expect(stderr).toMatch(/^\(stdin\): line \d+: /);
  });

  it('reports a ToolSet that is a YAML alias bomb, status 1, without a stack trace', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'earpiece-inject-'));
    try {
      const bomb = path.join(dir, 'bomb.yaml');
      const levels = ['a: &a [x, x, x, x, x, x, x, x, x]'];
      for (const [i, name] of [...'bcdefgh'].entries()) {
        levels.push(`${name}: &${name} [${Array(9).fill(`*${'abcdefgh'[i]}`).join(', ')}]`);
      }
      writeFileSync(bomb, levels.join('\n'));
      const { code, stdout, stderr } = await exec(['-t', bomb, '-f', `${DIR}/unmute-backend.yaml`]);
      expect(code).toBe(1);
      expect(stdout).toBe('');
      expect(stderr).toBe(
        `${bomb}: cannot be read: Excessive alias count indicates a resource exhaustion attack\n`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the checks the corpus relies on', () => {
  const podWith = (spec: Record<string, unknown>) => ({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: 'p' },
    spec,
  });
  const app = { name: 'app', image: 'a' };

  it('know native sidecars: restartPolicy Always on an init container, with probes', async () => {
    const sidecar = {
      name: 's',
      image: 's',
      restartPolicy: 'Always',
      startupProbe: { httpGet: { path: '/', port: 1 } },
    };
    expect(await workloadIssues(podWith({ initContainers: [sidecar], containers: [app] }))).toEqual([]);
  });

  it('refuse what the API server refuses', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ containers: [{ ...app, restartPolicyy: 'Always' }] }, /restartPolicyy: unknown field/],
      [{ containers: [{ ...app, ports: [{ containerPort: 'http' }] }] }, /containerPort must be integer/],
      [
        { initContainers: [{ name: 'i', image: 'i', startupProbe: {} }], containers: [app] },
        /startupProbe: not allowed/,
      ],
      [
        { initContainers: [{ name: 'i', image: 'i', restartPolicy: 'Never' }], containers: [app] },
        /only Always/,
      ],
      [
        { containers: [{ ...app, volumeMounts: [{ name: 'v', mountPath: '/v' }] }] },
        /volume v is not declared/,
      ],
      [{ containers: [app, app] }, /duplicate container name app/],
      [
        { containers: [{ ...app, ports: [{ name: 'earpiece-metrics', containerPort: 1 }] }] },
        /bad name earpiece-metrics/,
      ],
      [
        { containers: [{ ...app, resources: { requests: { memory: '2Gi' }, limits: { memory: '1Gi' } } }] },
        /requests.memory above/,
      ],
    ];
    for (const [spec, issue] of cases)
      expect((await workloadIssues(podWith(spec))).join('\n')).toMatch(issue);
  });
});
