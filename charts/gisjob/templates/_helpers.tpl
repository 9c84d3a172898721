{{/*
The chart name (nameOverride), truncated to 63 characters: a label value and a DNS-1123 label.
*/}}
{{- define "gisjob.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, else "<release>-<name>" (only "<release>" when it already
contains the name). Truncated to 63 characters (DNS-1123 label), no trailing "-".
*/}}
{{- define "gisjob.fullname" -}}
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

{{/*
A name with a suffix, the full name shortened so that the whole stays within 63 characters.
Usage: include "gisjob.suffixed" (list . "metrics")
*/}}
{{- define "gisjob.suffixed" -}}
{{- $ctx := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "gisjob.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/*
"chart-version" for the helm.sh/chart label.
*/}}
{{- define "gisjob.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource of the chart.
*/}}
{{- define "gisjob.labels" -}}
helm.sh/chart: {{ include "gisjob.chart" . }}
{{ include "gisjob.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gisjob
{{- end }}

{{/*
Labels selecting the operator pod (never the worker pods: those are gisjob-worker).
*/}}
{{- define "gisjob.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gisjob.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "gisjob.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gisjob.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image.
*/}}
{{- define "gisjob.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The namespace of a monitoring object: its own setting, else the release namespace.
Usage: include "gisjob.namespace" (list . .Values.metrics.serviceMonitor.namespace)
*/}}
{{- define "gisjob.namespace" -}}
{{- $ctx := index . 0 }}
{{- default $ctx.Release.Namespace (index . 1) }}
{{- end }}
