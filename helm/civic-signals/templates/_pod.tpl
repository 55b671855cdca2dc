{{/*
The environment of a service's container, shared by its Deployment and its migration Job:
(dict "root" $ "name" "intake" "svc" $svc "migrating" bool)
Secrets only ever arrive through valueFrom.secretKeyRef.
*/}}
{{- define "civic.env" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
{{- $p := include "civic.envPrefix" $name -}}
{{- $db := include "civic.dbSecret" (dict "root" $root "name" $name "svc" $svc) -}}
- name: {{ $p }}HOST
  value: "0.0.0.0"
- name: {{ $p }}PORT
  value: {{ $root.Values.containerPort | quote }}
- name: {{ $p }}FORWARDED_ALLOW_IPS
  value: {{ $root.Values.trustedProxies | quote }}
- name: {{ $p }}DATA_DIR
  value: /data
- name: {{ $p }}TENANTS_DIR
  value: /etc/civic/tenants
- name: {{ $p }}LOG_LEVEL
  value: {{ $svc.logLevel | quote }}
{{- if $db }}
- name: {{ $p }}DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ index (splitList "/" $db) 0 }}
      key: {{ index (splitList "/" $db) 1 }}
{{- end }}
- name: {{ $p }}MIGRATE_ON_START
  value: {{ ternary "false" "true" (and (not (empty $db)) $root.Values.migrations.enabled (not .migrating)) | quote }}
{{- if not .migrating }}
{{- if $root.Values.bus.existingSecret }}
- name: {{ $p }}NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.bus.existingSecret }}
      key: {{ $root.Values.bus.key }}
{{- else }}
- name: {{ $p }}NATS_URL
  value: {{ include "civic.natsUrl" $root | quote }}
{{- end }}
- name: {{ $p }}STREAM_REPLICAS
  value: {{ $root.Values.bus.streamReplicas | quote }}
{{- if eq $name "intake" }}
- name: {{ $p }}PUBLIC_BASE_URL
  value: {{ include "civic.publicBaseUrl" $root | quote }}
- name: {{ $p }}ROUTING_URL
  value: {{ printf "http://%s-routing.%s.svc" (include "civic.fullname" $root) $root.Release.Namespace | quote }}
- name: {{ $p }}NOTIFIER_URL
  value: {{ printf "http://%s-notifier.%s.svc" (include "civic.fullname" $root) $root.Release.Namespace | quote }}
- name: {{ $p }}SERVICE_KEYS_DIR
  value: /etc/civic/service-keys/intake
{{- if $svc.attachments.existingClaim }}
- name: {{ $p }}ATTACHMENTS_DIR
  value: /var/lib/civic/attachments
{{- end }}
{{- end }}
{{- if eq $name "notifier" }}
- name: {{ $p }}PUBLIC_BASE_URL
  value: {{ include "civic.publicBaseUrl" $root | quote }}
- name: {{ $p }}INTAKE_URL
  value: {{ printf "http://%s-intake.%s.svc" (include "civic.fullname" $root) $root.Release.Namespace | quote }}
- name: {{ $p }}INTAKE_KEYS_DIR
  value: /etc/civic/service-keys/notifier
- name: {{ $p }}DKIM_KEYS_DIR
  value: /etc/civic/dkim
- name: {{ $p }}SMTP_HOST
  value: {{ $svc.smtp.host | quote }}
- name: {{ $p }}SMTP_PORT
  value: {{ $svc.smtp.port | quote }}
- name: {{ $p }}SMTP_STARTTLS
  value: {{ $svc.smtp.starttls | quote }}
- name: {{ $p }}SMTP_CONNECTIONS
  value: {{ $svc.smtp.connections | quote }}
{{- if $svc.smtp.username }}
- name: {{ $p }}SMTP_USERNAME
  value: {{ $svc.smtp.username | quote }}
{{- end }}
- name: {{ $p }}MAIL_FROM
  value: {{ $svc.mailFrom | quote }}
{{- end }}
{{- range $key, $value := $svc.env }}
- name: {{ $p }}{{ $key }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- range $key, $ref := $svc.secretEnv }}
- name: {{ $p }}{{ $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | default (include "civic.keysSecret" $root) }}
      key: {{ $ref.key }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Writable places of a read-only root file system: /data and /tmp. */}}
{{- define "civic.scratchVolumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .svc.dataSizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "civic.scratchMounts" -}}
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end -}}
