{{/* The release's base name, cut to the 63 characters a label value allows. */}}
{{- define "earpiece.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "earpiece.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "earpiece.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "earpiece.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: earpiece
{{- end }}

{{/* Namespaces the webhook is never called for: webhook.excludeNamespaces and the release's own, as JSON. */}}
{{- define "earpiece.excludedNamespaces" -}}
{{- concat (default list .Values.webhook.excludeNamespaces) (list .Release.Namespace) | uniq | toJson }}
{{- end }}

{{/* Selector labels of the operator's pods. */}}
{{- define "earpiece.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earpiece.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* With create=false the schema requires a name: the namespace's default ServiceAccount never gets the roles. */}}
{{- define "earpiece.serviceAccountName" -}}
{{- default (include "earpiece.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* The earpiece image; a digest wins over the tag. */}}
{{- define "earpiece.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The sidecar's image: the operator's own unless injection.image names another; a tag alone is of image.repository. */}}
{{- define "earpiece.sidecarImage" -}}
{{- with .Values.injection.image }}
{{- if or .repository .tag }}
{{- printf "%s:%s" (default $.Values.image.repository .repository) (default $.Chart.AppVersion .tag) }}
{{- else }}
{{- include "earpiece.image" $ }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A resource quantity the schema accepted (a string, or a number) as a float, as the operator reads it
(src/operator/sidecar.ts, parseQuantity): a binary one is its amount times a power of two, a decimal one
is read as one decimal number (`700m` as `700e-3`). One beyond a float's range is refused.
*/}}
{{- define "earpiece.quantity" -}}
{{- if kindIs "string" . }}
{{- $amount := regexFind "^\\+?([0-9]+(\\.[0-9]*)?|\\.[0-9]+)" . }}
{{- $suffix := trimPrefix $amount . }}
{{- $binary := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- $decimal := dict "" 0 "n" -9 "u" -6 "m" -3 "k" 3 "M" 6 "G" 9 "T" 12 "P" 15 "E" 18 }}
{{- $value := 0.0 }}
{{- if hasKey $binary $suffix }}
{{- $value = mulf $amount (index $binary $suffix) }}
{{- else if hasKey $decimal $suffix }}
{{- $value = float64 (printf "%se%d" $amount (index $decimal $suffix)) }}
{{- else }}
{{- /* An exponent: the text is one decimal number already. */}}
{{- $value = float64 . }}
{{- end }}
{{- /* strconv's range error reaches the template as 0. */}}
{{- if and (eq $value 0.0) (regexMatch "[1-9]" $amount) }}
{{- fail (printf "injection.resources: %s is out of range" .) }}
{{- end }}
{{- $value }}
{{- else }}
{{- float64 . }}
{{- end }}
{{- end }}

{{/*
Refuses what the operator refuses at start (EARPIECE_SIDECAR_RESOURCES, resourcesProblem in
src/operator/sidecar.ts), which would crash-loop it: a request above its limit. Names every such resource.
*/}}
{{- define "earpiece.checkSidecarResources" -}}
{{- $limits := default dict .Values.injection.resources.limits }}
{{- $problems := list }}
{{- range $name, $request := default dict .Values.injection.resources.requests }}
{{- if hasKey $limits $name }}
{{- $limit := index $limits $name }}
{{- if gt (include "earpiece.quantity" $request | float64) (include "earpiece.quantity" $limit | float64) }}
{{- $problems = append $problems (printf "requests.%s %v is above limits.%s %v" $name $request $name $limit) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $problems }}
{{- fail (printf "injection.resources: %s" (join "; " .)) }}
{{- end }}
{{- end }}

{{/*
Native sidecars: the value given, else false before Kubernetes 1.29 (which has none), else auto: the
operator asks the API server at start, which also covers a `helm template` rendered for another cluster.
*/}}
{{- define "earpiece.nativeSidecar" -}}
{{- if kindIs "bool" .Values.injection.nativeSidecar }}
{{- .Values.injection.nativeSidecar }}
{{- else if semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version }}
{{- "auto" }}
{{- else }}
{{- "false" }}
{{- end }}
{{- end }}

{{/*
The env of every injected sidecar: injection.env, and the shared state's Redis URL when sharedState.redis
names one (a Secret wins over a plain URL).
*/}}
{{- define "earpiece.sidecarEnv" -}}
{{- $env := list }}
{{- range .Values.injection.env }}{{ $env = append $env . }}{{ end }}
{{- with .Values.sharedState.redis }}
{{- if and .url .existingSecret.name }}
{{- fail "sharedState.redis: give url or existingSecret.name, not both" }}
{{- end }}
{{- if .existingSecret.name }}
{{- $env = append $env (dict "name" "EARPIECE_SHARED_STATE_REDIS_URL" "valueFrom" (dict "secretKeyRef" (dict "name" .existingSecret.name "key" .existingSecret.key))) }}
{{- else if .url }}
{{- $env = append $env (dict "name" "EARPIECE_SHARED_STATE_REDIS_URL" "value" .url) }}
{{- end }}
{{- end }}
{{- toJson $env }}
{{- end }}

{{/*
Cluster-scoped objects, and those the release puts into namespaces other than its own, are named after the
release and its namespace, so two releases never clash, not even two of the same name.
*/}}
{{- define "earpiece.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "earpiece.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "earpiece.certSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "earpiece.fullname" .)) .Values.certs.secretName }}
{{- end }}

{{- define "earpiece.leaseName" -}}
{{- printf "%s-controller" (include "earpiece.fullname" .) }}
{{- end }}

{{/* "true" when ToolSets are checked for who may name their Secrets: the env var and the RBAC rule agree. */}}
{{- define "earpiece.checkSecretAccess" -}}
{{- and .Values.toolsetValidation.enabled .Values.toolsetValidation.checkSecretAccess | toString }}
{{- end }}

{{- define "earpiece.certDir" -}}
/var/run/earpiece/webhook-certs
{{- end }}

{{/* True when the cluster (or `helm template --api-versions`) serves the prometheus-operator API. */}}
{{- define "earpiece.hasMonitoringApi" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/* The base is cut, not the whole: cut after the suffix, a long full name lost it, and vLLM took the operator's names. */}}
{{- define "earpiece.vllm.fullname" -}}
{{- printf "%s-vllm" (include "earpiece.fullname" . | trunc 58 | trimSuffix "-") }}
{{- end }}

{{- define "earpiece.vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earpiece.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: vllm
{{- end }}

{{/* The Secret holding vLLM's API key: an existing one, or the one the chart creates. */}}
{{- define "earpiece.vllm.apiKeySecret" -}}
{{- default (printf "%s-api-key" (include "earpiece.vllm.fullname" .)) .Values.vllm.apiKey.existingSecret }}
{{- end }}

{{/*
Its name in the namespaces of the ToolSets that send it: an existing Secret keeps its name there, the chart's
copy is named after the release and its namespace, as it shares the namespace with other releases' objects.
*/}}
{{- define "earpiece.vllm.apiKeyCopy" -}}
{{- default (printf "%s-vllm-api-key" (include "earpiece.clusterName" .)) .Values.vllm.apiKey.existingSecret }}
{{- end }}

{{/* The dashboard's ConfigMap: in dashboards.namespace, which other releases may share, named as clusterName. */}}
{{- define "earpiece.dashboardName" -}}
{{- $own := or (not .Values.dashboards.namespace) (eq .Values.dashboards.namespace .Release.Namespace) }}
{{- printf "%s-dashboard" (ternary (include "earpiece.fullname" .) (include "earpiece.clusterName" .) $own) }}
{{- end }}

{{/*
What both ToolSet validation entries share: the operator's /validate, the resource, and how it is called.
*/}}
{{- define "earpiece.toolsetReview" -}}
clientConfig:
  service:
    name: {{ include "earpiece.fullname" . }}
    namespace: {{ .Release.Namespace }}
    path: /validate
    port: 443
rules:
  # Status writes (toolsets/status) are the operator's own and are not sent.
  - operations: [CREATE, UPDATE]
    apiGroups: [earpiece.dev]
    apiVersions: [v1alpha1]
    resources: [toolsets]
    scope: Namespaced
# A later served version is converted to v1alpha1 before it is sent, so one check covers all.
matchPolicy: Equivalent
sideEffects: None
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
admissionReviewVersions: [v1]
{{- end }}
