{{/* The operator image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "kubenova-operator.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Labels of the chart-only objects (the generated ones carry the bootstrap's labels). */}}
{{- define "kubenova-operator.labels" -}}
app.kubernetes.io/name: kubenova-operator
app.kubernetes.io/part-of: kubenova
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end }}

{{/* Restricted Pod Security Standard: container security context. */}}
{{- define "kubenova-operator.restrictedContainer" -}}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Refuses settings that cannot work, with what to do instead. */}}
{{- define "kubenova-operator.checks" -}}
{{- if and .Values.agent.create (not .Values.agent.token) -}}
{{- fail "agent.create=true needs agent.token (the cluster's agent credential from the manager); or set agent.create=false and provide the Secret agent.secretName yourself" -}}
{{- end -}}
{{- if and .Values.agent.create (not .Values.agent.managerUrl) -}}
{{- fail "agent.create=true needs agent.managerUrl (the URL under which the operator reaches the manager, https://...)" -}}
{{- end -}}
{{- end }}
