/** Kubernetes RBAC evaluated over the chart's rendered Roles and bindings, as the API server decides. */
import type { K8sObject } from '../support/k8s-schema.js';

export interface Request {
  verb: string;
  apiGroup: string;
  /** Plural, with `/subresource` when there is one. */
  resource: string;
  namespace: string | undefined;
  name: string | undefined;
}

interface PolicyRule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
  resourceNames?: string[];
}

interface Binding extends K8sObject {
  roleRef: { kind: string; name: string };
  subjects: { kind: string; name: string; namespace?: string }[];
}

const matches = (rule: PolicyRule, r: Request) =>
  rule.apiGroups.includes(r.apiGroup) &&
  rule.resources.includes(r.resource) &&
  rule.verbs.includes(r.verb) &&
  (!rule.resourceNames?.length || (r.name !== undefined && rule.resourceNames.includes(r.name)));

/** Whether the ServiceAccount may make the request under the rendered RBAC objects. */
export function allowed(
  objects: K8sObject[],
  account: { name: string; namespace: string },
  r: Request,
): boolean {
  const rulesOf = (kind: string, name: string, namespace?: string) =>
    (objects.find(
      (o) =>
        o.kind === kind &&
        o.metadata.name === name &&
        (namespace === undefined || o.metadata.namespace === namespace),
    )?.rules ?? []) as PolicyRule[];
  for (const binding of objects.filter(
    (o): o is Binding => o.kind === 'ClusterRoleBinding' || o.kind === 'RoleBinding',
  )) {
    if (
      !binding.subjects.some(
        (s) => s.kind === 'ServiceAccount' && s.name === account.name && s.namespace === account.namespace,
      )
    )
      continue;
    // A RoleBinding grants only in its own namespace, whether it names a Role or a ClusterRole.
    if (binding.kind === 'RoleBinding' && r.namespace !== binding.metadata.namespace) continue;
    const rules =
      binding.roleRef.kind === 'ClusterRole'
        ? rulesOf('ClusterRole', binding.roleRef.name)
        : rulesOf('Role', binding.roleRef.name, binding.metadata.namespace);
    if (rules.some((rule) => matches(rule, r))) return true;
  }
  return false;
}
