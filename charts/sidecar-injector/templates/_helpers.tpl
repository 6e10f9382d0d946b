{{/*
Name of the chart, overridable.
*/}}
{{- define "sidecar-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every object. A revision is appended so that two releases serving different
revisions can share a namespace (and never share a cluster-scoped webhook configuration).
*/}}
{{- define "sidecar-injector.fullname" -}}
{{- $base := "" }}
{{- if .Values.fullnameOverride }}
{{- $base = .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $base = .Release.Name }}
{{- else }}
{{- $base = printf "%s-%s" .Release.Name $name }}
{{- end }}
{{- end }}
{{- if .Values.revision }}
{{- $base = printf "%s-%s" $base .Values.revision }}
{{- end }}
{{- $base | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidecar-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sidecar-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecar-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sidecar-injector.labels" -}}
helm.sh/chart: {{ include "sidecar-injector.chart" . }}
{{ include "sidecar-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: admission-webhook
{{- if .Values.revision }}
istio.io/rev: {{ .Values.revision | quote }}
{{- end }}
{{- end }}

{{- define "sidecar-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sidecar-injector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sidecar-injector.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "sidecar-injector.fullname" .)) .Values.certificates.secretName }}
{{- end }}

{{/* DNS names the API server uses to reach the Service; the serving certificate covers them all. */}}
{{- define "sidecar-injector.dnsNames" -}}
{{- $svc := include "sidecar-injector.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* The certificate mode, validated once so every template agrees on it. */}}
{{- define "sidecar-injector.certMode" -}}
{{- $mode := .Values.certificates.mode }}
{{- if not (has $mode (list "selfManaged" "certManager" "helm")) }}
{{- fail (printf "certificates.mode must be one of selfManaged, certManager, helm; got %q" $mode) }}
{{- end }}
{{- $mode }}
{{- end }}

{{- define "sidecar-injector.nativeSidecars" -}}
{{- $mode := toString .Values.nativeSidecars }}
{{- if not (has $mode (list "true" "false" "auto")) }}
{{- fail (printf "nativeSidecars must be one of true, false, auto; got %q" $mode) }}
{{- end }}
{{- $mode }}
{{- end }}

{{/* Whether the server talks to the kube API at all; without it no token is mounted. */}}
{{- define "sidecar-injector.needsApi" -}}
{{- if or (eq (include "sidecar-injector.certMode" .) "selfManaged") (eq (include "sidecar-injector.nativeSidecars" .) "auto") }}true{{- end }}
{{- end }}

{{/* Reads a file shipped in files/, failing loudly when it is missing: an empty injection config would silently inject nothing. */}}
{{- define "sidecar-injector.requiredFile" -}}
{{- $content := .root.Files.Get .path }}
{{- if not $content }}
{{- fail (printf "chart file %s is missing or empty" .path) }}
{{- end }}
{{- $content }}
{{- end }}
