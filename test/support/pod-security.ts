/**
 * The restricted Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/,
 * policy version 1.30, baseline rules included), as the API server's PodSecurity admission checks it, for
 * pod templates rendered without a cluster. Returns one message per violated rule.
 */
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const objects = (v: unknown): Obj[] => (Array.isArray(v) ? v.filter(isObj) : []);

const RESTRICTED_VOLUMES = new Set([
  'configMap',
  'csi',
  'downwardAPI',
  'emptyDir',
  'ephemeral',
  'persistentVolumeClaim',
  'projected',
  'secret',
]);
const SAFE_SYSCTLS = new Set([
  'kernel.shm_rmid_forced',
  'net.ipv4.ip_local_port_range',
  'net.ipv4.ip_unprivileged_port_start',
  'net.ipv4.tcp_syncookies',
  'net.ipv4.ping_group_range',
  'net.ipv4.ip_local_reserved_ports',
  'net.ipv4.tcp_keepalive_time',
  'net.ipv4.tcp_fin_timeout',
  'net.ipv4.tcp_keepalive_intvl',
  'net.ipv4.tcp_keepalive_probes',
]);
const SELINUX_TYPES = new Set([
  '',
  'container_t',
  'container_init_t',
  'container_kvm_t',
  'container_engine_t',
]);

/** Violations of the restricted profile by a pod spec. */
export function restrictedIssues(spec: Obj): string[] {
  const issues: string[] = [];
  const pod = isObj(spec.securityContext) ? spec.securityContext : {};
  for (const field of ['hostNetwork', 'hostPID', 'hostIPC'])
    if (spec[field] === true) issues.push(`${field}: must not be true`);
  for (const v of objects(spec.volumes)) {
    const type = Object.keys(v).find((k) => k !== 'name');
    if (!type || !RESTRICTED_VOLUMES.has(type)) issues.push(`volume ${v.name}: type ${type} is not allowed`);
  }
  for (const s of objects(pod.sysctls))
    if (!SAFE_SYSCTLS.has(String(s.name))) issues.push(`sysctl ${s.name}: not allowed`);
  const podSeLinux = isObj(pod.seLinuxOptions) ? pod.seLinuxOptions : undefined;
  if (podSeLinux) issues.push(...seLinuxIssues(podSeLinux, 'pod'));
  if (pod.runAsUser === 0) issues.push('pod runAsUser: must not be 0');
  const podSeccomp = isObj(pod.seccompProfile) ? String(pod.seccompProfile.type) : undefined;
  if (podSeccomp !== undefined && !['RuntimeDefault', 'Localhost'].includes(podSeccomp))
    issues.push(`pod seccompProfile: ${podSeccomp} is not allowed`);

  const containers = [
    ...objects(spec.initContainers),
    ...objects(spec.containers),
    ...objects(spec.ephemeralContainers),
  ];
  for (const c of containers) {
    const where = `container ${c.name}`;
    const sc = isObj(c.securityContext) ? c.securityContext : {};
    if (sc.privileged === true) issues.push(`${where}: privileged`);
    if (sc.allowPrivilegeEscalation !== false)
      issues.push(`${where}: allowPrivilegeEscalation must be false`);
    const caps = isObj(sc.capabilities) ? sc.capabilities : {};
    if (!(Array.isArray(caps.drop) && caps.drop.includes('ALL')))
      issues.push(`${where}: capabilities must drop ALL`);
    for (const cap of Array.isArray(caps.add) ? caps.add : [])
      if (cap !== 'NET_BIND_SERVICE') issues.push(`${where}: capability ${cap} added`);
    for (const port of objects(c.ports))
      if (port.hostPort !== undefined && port.hostPort !== 0)
        issues.push(`${where}: hostPort ${port.hostPort}`);
    if (sc.procMount !== undefined && sc.procMount !== 'Default')
      issues.push(`${where}: procMount ${sc.procMount}`);
    if (isObj(sc.seLinuxOptions)) issues.push(...seLinuxIssues(sc.seLinuxOptions, where));
    if (
      isObj(sc.appArmorProfile) &&
      !['RuntimeDefault', 'Localhost'].includes(String(sc.appArmorProfile.type))
    )
      issues.push(`${where}: appArmorProfile ${sc.appArmorProfile.type}`);
    if (sc.runAsUser === 0) issues.push(`${where}: runAsUser must not be 0`);
    const nonRoot = sc.runAsNonRoot ?? pod.runAsNonRoot;
    if (nonRoot !== true) issues.push(`${where}: runAsNonRoot must be true (pod or container)`);
    const seccomp = isObj(sc.seccompProfile) ? String(sc.seccompProfile.type) : podSeccomp;
    if (seccomp === undefined || !['RuntimeDefault', 'Localhost'].includes(seccomp))
      issues.push(`${where}: seccompProfile must be RuntimeDefault or Localhost (pod or container)`);
  }
  return issues;
}

function seLinuxIssues(options: Obj, where: string): string[] {
  const issues: string[] = [];
  if (!SELINUX_TYPES.has(String(options.type ?? ''))) issues.push(`${where}: seLinux type ${options.type}`);
  if (options.user !== undefined || options.role !== undefined)
    issues.push(`${where}: seLinux user or role set`);
  return issues;
}

/** The pod spec of a workload or a pod, if it has one. */
export function podSpecOf(obj: Obj): Obj | undefined {
  const spec = isObj(obj.spec) ? obj.spec : undefined;
  if (!spec) return undefined;
  if (obj.kind === 'Pod') return spec;
  const template =
    obj.kind === 'CronJob' && isObj(spec.jobTemplate) && isObj(spec.jobTemplate.spec)
      ? spec.jobTemplate.spec.template
      : spec.template;
  return isObj(template) && isObj(template.spec) ? template.spec : undefined;
}
