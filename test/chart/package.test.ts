/**
 * The chart as users get it: `helm package`, then installed from the .tgz alone (as from an OCI
 * registry), with no file of the repository beside it; its metadata, and the release workflow that
 * builds, pushes and signs it.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse, parseAllDocuments } from 'yaml';
import { type K8sObject, kubernetesIssues } from '../support/k8s-schema.js';
import { k8sTools } from '../support/k8s-tools.js';
import { CHART, NAMESPACE, RELEASE } from './render.js';

const home = path.resolve('node_modules/.cache/earpiece-k8s-tools');
function helmIn(cwd: string, args: string[]) {
  const result = spawnSync(k8sTools().helm, args, {
    cwd,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    env: { PATH: process.env.PATH, HOME: home },
  });
  if (result.status !== 0) throw new Error(`helm ${args[0]} failed: ${result.stderr}`);
  return result.stdout;
}

const chartYaml = parse(readFileSync(path.join(CHART, 'Chart.yaml'), 'utf8'));
const built = mkdtempSync(path.join(tmpdir(), 'earpiece-package-'));
const alone = mkdtempSync(path.join(tmpdir(), 'earpiece-install-'));
afterAll(() => {
  rmSync(built, { recursive: true, force: true });
  rmSync(alone, { recursive: true, force: true });
});
helmIn(built, ['package', CHART, '--destination', built]);
const tgz = `earpiece-${chartYaml.version}.tgz`;
copyFileSync(path.join(built, tgz), path.join(alone, tgz));
/** Paths in the package, relative to the chart's folder. */
const packaged = new Set(
  spawnSync('tar', ['-tzf', path.join(alone, tgz)], { encoding: 'utf8' })
    .stdout.split('\n')
    .filter(Boolean)
    .map((p) => p.replace(/^earpiece\//, '')),
);

/** File names a text asks the reader to use: `-f FILE`, `--values FILE`, Markdown links, paths with a folder. */
function namedFiles(text: string): string[] {
  const names = new Set<string>();
  for (const m of text.matchAll(/(?:-f|--filename|--values)[ =]([\w./:@-]+)/g)) names.add(m[1]!);
  for (const m of text.matchAll(/\]\(([^)\s]+)\)|<(https?:[^>\s]+)>/g)) names.add((m[1] ?? m[2])!);
  for (const m of text.matchAll(
    /(?<![\w/.:-])((?:[\w.-]+\/)+[\w.-]+\.(?:ya?ml|json|md|txt|tgz|sh|jinja))\b/g,
  ))
    names.add(m[1]!);
  // A heredoc (`-f -`) is the text itself.
  names.delete('-');
  return [...names];
}
/** A URL; one into this repository's main branch must name a file that exists. */
const isUrl = (name: string) => {
  const repoFile =
    /^https:\/\/(?:github\.com\/earpiece-dev\/earpiece\/blob|raw\.githubusercontent\.com\/earpiece-dev\/earpiece)\/main\/([^#]+)/.exec(
      name,
    )?.[1];
  return /^(https?|oci):\/\//.test(name) && (repoFile === undefined || existsSync(repoFile));
};

describe('the packaged chart', () => {
  it('holds only what the chart needs, next to nothing from the repository', () => {
    expect(readdirSync(alone)).toEqual([tgz]);
    for (const file of [
      'Chart.yaml',
      'values.yaml',
      'values.schema.json',
      'README.md',
      'templates/NOTES.txt',
    ])
      expect(packaged).toContain(file);
    expect([...packaged].filter((p) => p.startsWith('..') || p.startsWith('/'))).toEqual([]);
  });

  it('renders from a folder that holds only the .tgz, and what it renders is valid', async () => {
    for (const values of [
      [],
      [
        '--set',
        'vllm.enabled=true',
        '--set',
        'exampleToolSet.enabled=true',
        '--set',
        'exampleToolSet.namespace=voice',
      ],
    ]) {
      const out = helmIn(alone, ['template', RELEASE, `./${tgz}`, '--namespace', NAMESPACE, ...values]);
      const objects = parseAllDocuments(out)
        .map((d) => d.toJS() as K8sObject | null)
        .filter((o): o is K8sObject => o !== null);
      expect(objects.map((o) => o.kind)).toContain('CustomResourceDefinition');
      for (const obj of objects)
        expect(await kubernetesIssues(obj), `${obj.kind} ${obj.metadata.name}`).toEqual([]);
    }
    expect(helmIn(alone, ['lint', '--strict', `./${tgz}`])).toContain('0 chart(s) failed');
  });

  it('prints notes that name no file outside the package', () => {
    const combinations = [
      [],
      ['--set', 'vllm.enabled=true'],
      ['--set', 'exampleToolSet.enabled=true', '--set', 'exampleToolSet.namespace=voice'],
      ['--set', 'certManager.enabled=true', '--set', 'metrics.podMonitor.enabled=true'],
    ];
    for (const set of combinations) {
      const out = helmIn(alone, [
        'install',
        RELEASE,
        `./${tgz}`,
        '--dry-run=client',
        '--namespace',
        NAMESPACE,
        ...set,
      ]);
      const notes = out.slice(out.indexOf('NOTES:'));
      expect(notes.length).toBeGreaterThan(100);
      for (const name of namedFiles(notes)) expect(isUrl(name) || packaged.has(name), name).toBe(true);
    }
  });

  it("names, in its README and the repository README's install section, only URLs and files in the package", () => {
    const readme = readFileSync('README.md', 'utf8');
    const start = readme.indexOf('### Install from the packaged chart');
    expect(start, 'README.md: the install section').toBeGreaterThan(0);
    const section = readme.slice(start, readme.indexOf('\n#', start + 5));
    const chartReadme = readFileSync(path.join(CHART, 'README.md'), 'utf8');
    for (const text of [section, chartReadme]) {
      const names = namedFiles(text);
      expect(names.length).toBeGreaterThan(0);
      for (const name of names) expect(isUrl(name) || packaged.has(name), name).toBe(true);
      // The install command is the packaged chart's, at this version.
      expect(text).toContain(`oci://ghcr.io/earpiece-dev/charts/earpiece --version ${chartYaml.version}`);
    }
  });

  it('finds a named file that is missing, so the checks above can fail', () => {
    const names = namedFiles(
      'kubectl apply -f examples/weather-toolset.yaml; see [guide](docs/kubernetes.md)',
    );
    expect(names).toEqual(['examples/weather-toolset.yaml', 'docs/kubernetes.md']);
    expect(names.filter((n) => !isUrl(n) && !packaged.has(n))).toEqual(names);
  });
});

describe('Chart.yaml', () => {
  const values = parse(readFileSync(path.join(CHART, 'values.yaml'), 'utf8'));
  const pkg = JSON.parse(readFileSync('package.json', 'utf8'));

  it('says where the chart comes from and who keeps it', () => {
    expect(chartYaml.home).toMatch(/^https:\/\//);
    expect(chartYaml.sources).toEqual([expect.stringMatching(/^https:\/\/github\.com\//)]);
    expect(chartYaml.maintainers).toEqual([expect.objectContaining({ name: expect.any(String) })]);
    // The icon is a file of the repository, served from its main branch.
    const icon = /^https:\/\/raw\.githubusercontent\.com\/earpiece-dev\/earpiece\/main\/(.+)$/.exec(
      chartYaml.icon,
    );
    expect(icon && existsSync(icon[1]!)).toBe(true);
  });

  it('runs the image tag of its appVersion, which is the version the repository builds', () => {
    expect(chartYaml.appVersion).toBe(pkg.version);
    expect(values.image.tag).toBe('');
    const images = parse(chartYaml.annotations['artifacthub.io/images']) as { image: string }[];
    expect(images.map((i) => i.image)).toEqual([
      `${values.image.repository}:${chartYaml.appVersion}`,
      `${values.vllm.image.repository}:${values.vllm.image.tag}`,
    ]);
  });

  it('describes its CRD and links for Artifact Hub', () => {
    const crd = parse(readFileSync(path.join(CHART, 'files/toolsets.earpiece.dev.yaml'), 'utf8'));
    const crds = parse(chartYaml.annotations['artifacthub.io/crds']) as {
      kind: string;
      version: string;
      name: string;
    }[];
    expect(crds).toEqual([
      expect.objectContaining({
        kind: crd.spec.names.kind,
        version: crd.spec.versions[0].name,
        name: crd.metadata.name,
      }),
    ]);
    expect(chartYaml.annotations['artifacthub.io/license']).toBe(pkg.license);
    for (const link of parse(chartYaml.annotations['artifacthub.io/links']) as { url: string }[]) {
      const file = /\/blob\/main\/(.+)$/.exec(link.url)?.[1];
      expect(file && existsSync(file), link.url).toBe(true);
    }
  });
});

describe('the release workflow', () => {
  const workflow = parse(readFileSync('.github/workflows/release.yaml', 'utf8'));
  const steps = (job: string) =>
    workflow.jobs[job].steps as { uses?: string; run?: string; with?: Record<string, unknown> }[];
  const runs = (job: string) =>
    steps(job)
      .map((s) => s.run ?? '')
      .join('\n');

  it('refuses a tag that differs from the chart version, its appVersion or package.json', () => {
    const check = runs('version');
    for (const source of ['package.json', 'charts/earpiece/Chart.yaml', '.appVersion', 'GITHUB_REF_NAME'])
      expect(check).toContain(source);
    expect(workflow.on.push.tags).toEqual(['v*']);
  });

  it('builds the image for amd64 and arm64, tagged with the version, pushes and signs it', () => {
    const build = steps('image').find((s) => s.uses?.startsWith('docker/build-push-action'))!;
    expect(String(build.with!.platforms).split(',')).toEqual(['linux/amd64', 'linux/arm64']);
    expect(build.with!.push).toBe(true);
    expect(build.with!.tags).toMatch(/^\$\{\{ env\.IMAGE \}\}:\$\{\{ needs\.version\.outputs\.version \}\}$/);
    expect(steps('image').some((s) => s.uses?.startsWith('docker/setup-qemu-action'))).toBe(true);
    expect(runs('image')).toMatch(/cosign sign --yes .*@\$\{\{ steps\.build\.outputs\.digest \}\}/);
    expect(workflow.jobs.image.permissions['id-token']).toBe('write');
  });

  it('packages the chart, pushes it to the OCI registry and signs it by digest', () => {
    const chart = runs('chart');
    expect(chart).toContain('helm package charts/earpiece');
    expect(chart).toMatch(/helm push .*"\$CHART_REPOSITORY"/);
    expect(workflow.env.CHART_REPOSITORY).toMatch(/^oci:\/\//);
    expect(chart).toMatch(/cosign sign --yes .*@\$\{\{ steps\.push\.outputs\.digest \}\}/);
    expect(workflow.jobs.chart.needs).toContain('image');
    expect(workflow.jobs.chart.permissions['id-token']).toBe('write');
  });
});
