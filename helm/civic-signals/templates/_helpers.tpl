{{/*
Helpers shared by every template. A service's values are the `serviceDefaults` block with the
service's own block merged over it (maps key by key, everything else replaced), see "civic.svc".
*/}}

{{- define "civic.serviceNames" -}}
intake classifier routing notifier insights
{{- end -}}

{{- define "civic.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "civic.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "civic.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "civic.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "civic.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object of this chart (not on NATS' or CloudNativePG's pods). */}}
{{- define "civic.labels" -}}
helm.sh/chart: {{ include "civic.chart" . }}
app.kubernetes.io/name: {{ include "civic.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: civic-signals
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "name" "intake") */}}
{{- define "civic.selectorLabels" -}}
app.kubernetes.io/name: {{ include "civic.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "civic.componentLabels" -}}
{{ include "civic.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Deep merge of two maps, the second winning; false, 0 and "" override too (sprig's merge would not). */}}
{{- define "civic.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- $current := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "civic.merge" (dict "base" $current "over" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The merged values of one service as YAML: (dict "root" $ "name" "intake"); use with fromYaml. */}}
{{- define "civic.svc" -}}
{{- $own := index .root.Values .name | default dict -}}
{{- include "civic.merge" (dict "base" .root.Values.serviceDefaults "over" $own) -}}
{{- end -}}

{{- define "civic.svcFullname" -}}
{{- printf "%s-%s" (include "civic.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "civic.envPrefix" -}}
{{- printf "CIVIC_%s_" (upper .) -}}
{{- end -}}

{{- define "civic.image" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $repository := $svc.image.repository | default (printf "civicsignals-%s" .name) -}}
{{- if $root.Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $root.Values.image.registry) $repository -}}
{{- end -}}
{{- $tag := $svc.image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- if $svc.image.digest -}}
{{- printf "%s@%s" $repository $svc.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "civic.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "civic.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret with the services' keys (PII keys, session secret, SMTP password). */}}
{{- define "civic.keysSecret" -}}
{{- .Values.secrets.name | default (printf "%s-keys" (include "civic.fullname" .)) -}}
{{- end -}}

{{/* The CloudNativePG cluster of one service: (dict "root" $ "name" "intake") */}}
{{- define "civic.pgCluster" -}}
{{- printf "%s-%s-db" (include "civic.fullname" .root) .name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/*
The Secret and key holding a service's database URI, as "secret/key", or "" for SQLite in the
pod's emptyDir (a trial only: one replica, data lost with the pod).
*/}}
{{- define "civic.dbSecret" -}}
{{- $svc := .svc -}}
{{- if $svc.database.existingSecret -}}
{{- printf "%s/%s" $svc.database.existingSecret ($svc.database.key | default "uri") -}}
{{- else if .root.Values.postgres.enabled -}}
{{- printf "%s-app/uri" (include "civic.pgCluster" .) -}}
{{- end -}}
{{- end -}}

{{- define "civic.natsUrl" -}}
{{- if .Values.bus.url -}}
{{- .Values.bus.url -}}
{{- else if .Values.nats.enabled -}}
{{- printf "nats://%s-nats.%s.svc:4222" .Release.Name .Release.Namespace -}}
{{- else -}}
{{- "nats://nats:4222" -}}
{{- end -}}
{{- end -}}

{{/* Where residents reach the platform: publicBaseUrl, else the ingress host. */}}
{{- define "civic.publicBaseUrl" -}}
{{- if .Values.publicBaseUrl -}}
{{- .Values.publicBaseUrl -}}
{{- else if .Values.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls.enabled) .Values.ingress.host -}}
{{- else -}}
{{- "http://localhost:8000" -}}
{{- end -}}
{{- end -}}

{{/* Does the service always run more than one pod? (dict "svc" $svc) -> "true" or "" */}}
{{- define "civic.multiReplica" -}}
{{- if .svc.autoscaling.enabled -}}
{{- if gt (int .svc.autoscaling.minReplicas) 1 }}true{{ end -}}
{{- else if gt (int .svc.replicas) 1 -}}
true
{{- end -}}
{{- end -}}

{{- define "civic.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "civic.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}
