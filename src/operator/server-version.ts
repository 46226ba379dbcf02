/**
 * What the API server supports, asked once at start: native sidecars (init containers with
 * restartPolicy Always) are on by default from Kubernetes 1.29. Before that the field is dropped or
 * refused, and an init container that never exits would hold every injected pod back.
 */
import { type KubeConfig, VersionApi, type VersionInfo } from '@kubernetes/client-node';
import type { Logger } from '../telemetry/log.js';
import type { SidecarConfig } from './sidecar.js';

export const NATIVE_SIDECAR_MIN_MINOR = 29;

/** Major and minor of a version.Info; managed clusters write the minor as `28+`. */
export function serverVersion(info: Pick<VersionInfo, 'major' | 'minor'>): { major: number; minor: number } {
  return { major: Number.parseInt(info.major, 10), minor: Number.parseInt(info.minor, 10) };
}

export function supportsNativeSidecars(info: Pick<VersionInfo, 'major' | 'minor'>): boolean {
  const { major, minor } = serverVersion(info);
  return major > 1 || (major === 1 && minor >= NATIVE_SIDECAR_MIN_MINOR);
}

/**
 * The sidecar settings for this API server, when the native-sidecar choice was left to it (`auto`):
 * a plain container on servers before 1.29, logged. A server that does not answer keeps native
 * sidecars (the chart renders `auto` only for 1.29+) with a warning.
 */
export async function sidecarForServer(
  kc: KubeConfig,
  sidecar: SidecarConfig,
  logger: Logger,
): Promise<SidecarConfig> {
  let info: VersionInfo;
  try {
    info = await kc.makeApiClient(VersionApi).getCode();
  } catch (err) {
    logger.warn(
      { err: (err as Error).message },
      'Could not read the API server version; injecting native sidecars',
    );
    return sidecar;
  }
  if (supportsNativeSidecars(info)) return sidecar;
  logger.warn(
    { serverVersion: info.gitVersion },
    `Kubernetes ${info.gitVersion} has no native sidecars (1.${NATIVE_SIDECAR_MIN_MINOR}+): injecting earpiece-proxy as a plain container`,
  );
  return { ...sidecar, nativeSidecar: false };
}
