{{/* The chart's name, at most 63 characters. */}}
{{- define "corral.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: "<release>-corral" unless the release name holds "corral". */}}
{{- define "corral.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: {{ include "corral.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "corral.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "corral.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "corral.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the credentials: the user's, or the chart's own. */}}
{{- define "corral.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "corral.fullname" .)) .Values.credentials.existingSecret }}
{{- end }}

{{- define "corral.databaseSecret" -}}
{{- default (printf "%s-credentials" (include "corral.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "corral.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
database-url
{{- end }}
{{- end }}

{{/*
The plan → RuntimeClass map as the control plane reads it: "plan=class,plan=class".
*/}}
{{- define "corral.runtimeClasses" -}}
{{- $pairs := list -}}
{{- range $plan, $class := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $plan $class) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
