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
{{- concat .Values.webhook.excludeNamespaces (list .Release.Namespace) | uniq | toJson }}
{{- end }}

{{/* Selector labels of the operator's pods. */}}
{{- define "earpiece.selectorLabels" -}}
app.kubernetes.io/name: {{ include "earpiece.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "earpiece.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "earpiece.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The earpiece image; a digest wins over the tag. */}}
{{- define "earpiece.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The sidecar's image: the operator's own unless injection.image names another. */}}
{{- define "earpiece.sidecarImage" -}}
{{- if .Values.injection.image.repository }}
{{- printf "%s:%s" .Values.injection.image.repository (default .Chart.AppVersion .Values.injection.image.tag) }}
{{- else }}
{{- include "earpiece.image" . }}
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

{{- define "earpiece.vllm.fullname" -}}
{{- printf "%s-vllm" (include "earpiece.fullname" .) | trunc 63 | trimSuffix "-" }}
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
