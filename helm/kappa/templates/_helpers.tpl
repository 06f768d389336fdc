{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "kappa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; components append -registry, -predictor, -trainer. */}}
{{- define "kappa.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else if contains (include "kappa.name" .) .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "kappa.name" .) | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Kubernetes recommended labels. Call with (dict "root" $ "component" "registry"). */}}
{{- define "kappa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "kappa.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: kappa
{{- end }}

{{- define "kappa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kappa.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kappa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kappa.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kappa.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* librdkafka properties from values, plus what SASL and TLS imply. */}}
{{- define "kappa.kafkaProperties" -}}
{{- $props := dict }}
{{- range $k, $v := .Values.kafka.properties }}{{- $_ := set $props $k (toString $v) }}{{- end }}
{{- if and .Values.kafka.sasl.enabled .Values.kafka.tls.enabled }}
{{- $_ := set $props "security.protocol" "SASL_SSL" }}
{{- else if .Values.kafka.sasl.enabled }}
{{- $_ := set $props "security.protocol" "SASL_PLAINTEXT" }}
{{- else if .Values.kafka.tls.enabled }}
{{- $_ := set $props "security.protocol" "SSL" }}
{{- end }}
{{- if .Values.kafka.sasl.enabled }}
{{- $_ := set $props "sasl.mechanism" .Values.kafka.sasl.mechanism }}
{{- end }}
{{- if .Values.kafka.tls.enabled }}
{{- $_ := set $props "ssl.ca.location" (printf "/etc/kappa/kafka-tls/%s" .Values.kafka.tls.caKey) }}
{{- if .Values.kafka.tls.certKey }}
{{- $_ := set $props "ssl.certificate.location" (printf "/etc/kappa/kafka-tls/%s" .Values.kafka.tls.certKey) }}
{{- $_ := set $props "ssl.key.location" (printf "/etc/kappa/kafka-tls/%s" .Values.kafka.tls.keyKey) }}
{{- end }}
{{- end }}
{{- $pairs := list }}
{{- range $k := keys $props | sortAlpha }}{{- $pairs = append $pairs (printf "%s=%s" $k (get $props $k)) }}{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* Environment every service shares: Kafka, tracing, logs. Call with (dict "root" $ "service" "kappa-registry"). */}}
{{- define "kappa.commonEnv" -}}
{{- $v := .root.Values -}}
- name: KAPPA_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrapServers is required: the host:port list of your Kafka cluster" $v.kafka.bootstrapServers | quote }}
{{- with include "kappa.kafkaProperties" .root }}
- name: KAPPA_KAFKA_PROPERTIES
  value: {{ . | quote }}
{{- end }}
{{- if $v.kafka.propertiesSecret.name }}
- name: KAPPA_KAFKA_PROPERTIES_FILE
  value: /etc/kappa/kafka-properties/{{ $v.kafka.propertiesSecret.key }}
{{- end }}
{{- if $v.kafka.sasl.enabled }}
- name: KAPPA_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required when kafka.sasl.enabled" $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.usernameKey }}
- name: KAPPA_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.kafka.sasl.existingSecret }}
      key: {{ $v.kafka.sasl.passwordKey }}
{{- end }}
- name: KAPPA_MODELS_TOPIC
  value: {{ $v.kafka.topics.models | quote }}
- name: KAPPA_LOG_FORMAT
  value: {{ $v.logs.format | quote }}
- name: KAPPA_LOG
  value: {{ $v.logs.level | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
{{- if $v.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.tracing.otlpEndpoint | quote }}
{{- end }}
{{- if $v.tracing.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.tracing.sampler | quote }}
{{- else }}
- name: KAPPA_TRACE_REQUEST_RATIO
  value: {{ $v.tracing.requestRatio | toString | quote }}
{{- end }}
{{- if $v.tracing.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $v.tracing.samplerArg | quote }}
{{- end }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "service.instance.id=$(POD_NAME),k8s.namespace.name=%s%s" .root.Release.Namespace (ternary (printf ",%s" $v.tracing.resourceAttributes) "" (ne $v.tracing.resourceAttributes "")) | quote }}
{{- end }}

{{- define "kappa.volumeMounts" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  mountPath: /etc/kappa/kafka-tls
  readOnly: true
{{- end }}
{{- if .Values.kafka.propertiesSecret.name }}
- name: kafka-properties
  mountPath: /etc/kappa/kafka-properties
  readOnly: true
{{- end }}
{{- end }}

{{- define "kappa.volumes" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-tls
  secret:
    secretName: {{ required "kafka.tls.existingSecret is required when kafka.tls.enabled" .Values.kafka.tls.existingSecret }}
{{- end }}
{{- if .Values.kafka.propertiesSecret.name }}
- name: kafka-properties
  secret:
    secretName: {{ .Values.kafka.propertiesSecret.name }}
{{- end }}
{{- end }}

{{/* Probes against grpc.health.v1: liveness asks "liveness" (SERVING while the process runs),
readiness asks the service's own name. Call with (dict "port" 50051 "service" "kappa.registry.v1.Registry"). */}}
{{- define "kappa.probes" -}}
livenessProbe:
  grpc:
    port: {{ .port }}
    service: liveness
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  grpc:
    port: {{ .port }}
    service: {{ .service }}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}
