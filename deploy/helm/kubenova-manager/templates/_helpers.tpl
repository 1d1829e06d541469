{{/* Full name of the release's objects: <release>-kubenova-manager (or the release name when it already contains the chart name). */}}
{{- define "kubenova-manager.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end }}

{{- define "kubenova-manager.selectorLabels" -}}
app.kubernetes.io/name: kubenova-manager
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubenova-manager.labels" -}}
{{ include "kubenova-manager.selectorLabels" . }}
app.kubernetes.io/part-of: kubenova
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end }}

{{/* The manager image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "kubenova-manager.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{- define "kubenova-manager.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "kubenova-manager.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end }}

{{/* The Secret of the generated keys (KEK and HS256 secret). */}}
{{- define "kubenova-manager.keysSecret" -}}
{{ include "kubenova-manager.fullname" . }}-keys
{{- end }}

{{/* Whether the chart generates a key: the KEK or the HS256 secret without an existing Secret. */}}
{{- define "kubenova-manager.generatesKeys" -}}
{{- if or (not .Values.keys.kekSecret) (and (eq .Values.keys.jwt.algorithm "hs256") (not .Values.keys.jwt.secret)) -}}
true
{{- end -}}
{{- end }}

{{/* Whether the chart renders its ConfigMap: a catalog overlay, a JWKS or the identity providers. */}}
{{- define "kubenova-manager.hasConfig" -}}
{{- if or .Values.catalog .Values.oidc.jwks .Values.oidc.config -}}
true
{{- end -}}
{{- end }}

{{- define "kubenova-manager.tlsSecret" -}}
{{ .Values.tls.secretName | default (printf "%s-tls" (include "kubenova-manager.fullname" .)) }}
{{- end }}

{{/* Whether the Ingress has TLS: a Secret named, or cert-manager issuing one. */}}
{{- define "kubenova-manager.ingressTls" -}}
{{- if and .Values.ingress.enabled (or .Values.tls.secretName .Values.tls.certManager.enabled) -}}
true
{{- end -}}
{{- end }}

{{/* The public URL: externalUrl, else https://<ingress host> when the Ingress has TLS. */}}
{{- define "kubenova-manager.externalUrl" -}}
{{- if .Values.externalUrl -}}
{{ .Values.externalUrl }}
{{- else if include "kubenova-manager.ingressTls" . -}}
https://{{ .Values.ingress.host }}
{{- end -}}
{{- end }}

{{- define "kubenova-manager.operatorImage" -}}
{{ .Values.operator.image | default (printf "ghcr.io/kubenova/kubenova-operator:%s" .Chart.AppVersion) }}
{{- end }}

{{/* Restricted Pod Security Standard: container security context. */}}
{{- define "kubenova-manager.restrictedContainer" -}}
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

{{/* Refuses settings that cannot work, saying what to do instead. */}}
{{- define "kubenova-manager.checks" -}}
{{- $sqlite := eq .Values.database.type "sqlite" -}}
{{- if and $sqlite (gt (int .Values.replicaCount) 1) -}}
{{- fail (printf "database.type=sqlite supports exactly one replica (replicaCount is %d): the SQLite file lives on one ReadWriteOnce volume and only one manager process may open it. Set replicaCount=1, or use database.type=postgres with database.postgres.existingSecret for several replicas" (int .Values.replicaCount)) -}}
{{- end -}}
{{- if and $sqlite .Values.autoscaling.enabled -}}
{{- fail "database.type=sqlite supports exactly one replica, so autoscaling.enabled=true cannot work: use database.type=postgres with database.postgres.existingSecret, or turn autoscaling off" -}}
{{- end -}}
{{- if and (eq .Values.database.type "postgres") (not .Values.database.postgres.existingSecret) -}}
{{- fail "database.type=postgres needs database.postgres.existingSecret: the name of a Secret holding the Postgres URL under database.postgres.secretKey (kubectl create secret generic kubenova-db --from-literal=url=postgres://user:password@host:5432/kubenova)" -}}
{{- end -}}
{{- if and (eq .Values.keys.jwt.algorithm "es256") (not .Values.keys.jwt.es256Secret) -}}
{{- fail "keys.jwt.algorithm=es256 needs keys.jwt.es256Secret: a Secret with public.pem and private.pem (PKCS#8) of an EC P-256 key" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.host) -}}
{{- fail "ingress.enabled=true needs ingress.host (the manager's public host name)" -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) -}}
{{- fail "httpRoute.enabled=true needs httpRoute.parentRefs (the Gateway(s) to attach to, e.g. [{name: public, namespace: gateways}])" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.ingress.enabled) -}}
{{- fail "tls.certManager.enabled=true issues the Ingress certificate: enable the Ingress (ingress.enabled=true, ingress.host), or terminate TLS on your Gateway" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled=true needs tls.certManager.issuerRef.name (a cert-manager Issuer or ClusterIssuer)" -}}
{{- end -}}
{{- if and .Values.oidc.jwks (not .Values.oidc.issuer) -}}
{{- fail "oidc.jwks needs oidc.issuer (the issuer whose keys it holds)" -}}
{{- end -}}
{{- if and .Values.oidc.config (or .Values.oidc.issuer .Values.oidc.jwks) -}}
{{- fail "oidc.config lists every issuer: leave oidc.issuer and oidc.jwks empty (an issuer with KubeNova's own claims is roleClaims: true in oidc.config)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not be above autoscaling.maxReplicas" -}}
{{- end -}}
{{- end }}
