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

{{/* The component's ServiceAccount: (dict "root" $ "component" "registry"). */}}
{{- define "kappa.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create }}
{{- printf "%s-%s" (include "kappa.fullname" .root) .component }}
{{- else }}
{{- "default" }}
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
{{- include "kappa.requireSecure" .root }}
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
{{- /* Each service its own Kafka principal when kafka.sasl.secrets names one for it. */}}
{{- $component := trimPrefix "kappa-" .service }}
{{- $secret := default $v.kafka.sasl.existingSecret (index $v.kafka.sasl.secrets $component | default "") }}
- name: KAPPA_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret (or kafka.sasl.secrets.<component>) is required when kafka.sasl.enabled" $secret }}
      key: {{ $v.kafka.sasl.usernameKey }}
- name: KAPPA_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
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

{{/* The TLS Secret of a component, or "": (dict "root" $ "component" "registry"). */}}
{{- define "kappa.tlsSecret" -}}
{{- index .root.Values.security.tls.secrets .component }}
{{- end }}

{{/* The gRPC URL of a component's Service, https when it serves TLS. */}}
{{- define "kappa.url" -}}
{{- $scheme := ternary "https" "http" (ne (include "kappa.tlsSecret" .) "") -}}
{{- $port := index .root.Values .component "grpcPort" -}}
{{ $scheme }}://{{ include "kappa.fullname" .root }}-{{ .component }}:{{ $port }}
{{- end }}

{{/* Environment for a component's TLS, tokens and signatures: (dict "root" $ "component" "registry"). */}}
{{- define "kappa.securityEnv" -}}
{{- $v := .root.Values.security -}}
{{- if include "kappa.tlsSecret" . }}
- name: KAPPA_TLS_CERT
  value: /etc/kappa/tls/tls.crt
- name: KAPPA_TLS_KEY
  value: /etc/kappa/tls/tls.key
{{- if $v.tls.clientAuth }}
- name: KAPPA_TLS_CLIENT_CA
  value: /etc/kappa/tls/ca.crt
{{- end }}
{{- end }}
{{- if $v.auth.tokensSecret }}
- name: KAPPA_AUTH_TOKENS
  value: /etc/kappa/auth/tokens
{{- end }}
{{- if and $v.signing.trustedKeysConfigMap (or (eq .component "predictor") (and (eq .component "registry") $v.signing.registryRequiresSignatures)) }}
- name: KAPPA_TRUSTED_KEYS
  value: /etc/kappa/trusted-keys
{{- end }}
{{- if and (eq .component "registry") $v.signing.trustedKeysConfigMap }}
- name: KAPPA_REGISTRY_SIGNING_KEY
  value: /etc/kappa/signing/signing.key
{{- end }}
{{- if eq .component "trainer" }}
{{- if include "kappa.tlsSecret" (dict "root" .root "component" "registry") }}
{{- if not (include "kappa.tlsSecret" .) }}
{{- fail "security.tls.secrets.trainer is required when the registry serves TLS: the trainer's client reads ca.crt from it" }}
{{- end }}
- name: KAPPA_REGISTRY_TLS_CA
  value: /etc/kappa/tls/ca.crt
{{- if $v.tls.clientAuth }}
- name: KAPPA_REGISTRY_TLS_CERT
  value: /etc/kappa/tls/tls.crt
- name: KAPPA_REGISTRY_TLS_KEY
  value: /etc/kappa/tls/tls.key
{{- end }}
{{- end }}
{{- if $v.auth.trainerTokenSecret }}
- name: KAPPA_REGISTRY_TOKEN_FILE
  value: /etc/kappa/registry-token/token
{{- if and .root.Values.insecure (not (include "kappa.tlsSecret" (dict "root" .root "component" "registry"))) }}
{{- /* A lab without TLS: the token crosses the cluster network in plaintext, as asked. */}}
- name: KAPPA_REGISTRY_ALLOW_PLAINTEXT_TOKEN
  value: "true"
{{- end }}
{{- end }}
{{- if $v.signing.trainerKeySecret }}
- name: KAPPA_SIGNING_KEY
  value: /etc/kappa/signing/signing.key
{{- end }}
{{- end }}
{{- if eq .component "console" }}
{{- if include "kappa.tlsSecret" (dict "root" .root "component" "registry") }}
{{- if not (include "kappa.tlsSecret" .) }}
{{- fail "security.tls.secrets.console is required when the registry serves TLS: the console's client reads ca.crt from it" }}
{{- end }}
- name: KAPPA_MESH_TLS_CA
  value: /etc/kappa/tls/ca.crt
{{- if $v.tls.clientAuth }}
- name: KAPPA_MESH_TLS_CERT
  value: /etc/kappa/tls/tls.crt
- name: KAPPA_MESH_TLS_KEY
  value: /etc/kappa/tls/tls.key
{{- end }}
{{- end }}
{{- if $v.auth.consoleTokenSecret }}
- name: KAPPA_MESH_TOKEN_FILE
  value: /etc/kappa/mesh-token/token
{{- if and .root.Values.insecure (not (include "kappa.tlsSecret" (dict "root" .root "component" "registry"))) }}
- name: KAPPA_MESH_ALLOW_PLAINTEXT_TOKEN
  value: "true"
{{- end }}
{{- else if $v.auth.tokensSecret }}
{{- fail "security.auth.consoleTokenSecret is required with security.auth.tokensSecret: the console reads the registry and predictors with its own token (the read role; `kappa token new console --roles read`)" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kappa.securityMounts" -}}
{{- $v := .root.Values.security -}}
{{- if include "kappa.tlsSecret" . }}
- name: tls
  mountPath: /etc/kappa/tls
  readOnly: true
{{- end }}
{{- if $v.auth.tokensSecret }}
- name: auth-tokens
  mountPath: /etc/kappa/auth
  readOnly: true
{{- end }}
{{- if and $v.signing.trustedKeysConfigMap (or (eq .component "predictor") (and (eq .component "registry") $v.signing.registryRequiresSignatures)) }}
- name: trusted-keys
  mountPath: /etc/kappa/trusted-keys
  readOnly: true
{{- end }}
{{- if and (eq .component "trainer") $v.auth.trainerTokenSecret }}
- name: registry-token
  mountPath: /etc/kappa/registry-token
  readOnly: true
{{- end }}
{{- if and (eq .component "console") $v.auth.consoleTokenSecret }}
- name: mesh-token
  mountPath: /etc/kappa/mesh-token
  readOnly: true
{{- end }}
{{- if or (and (eq .component "trainer") $v.signing.trainerKeySecret) (and (eq .component "registry") $v.signing.trustedKeysConfigMap) }}
- name: signing-key
  mountPath: /etc/kappa/signing
  readOnly: true
{{- end }}
{{- end }}

{{- define "kappa.securityVolumes" -}}
{{- $v := .root.Values.security -}}
{{- with include "kappa.tlsSecret" . }}
- name: tls
  secret:
    secretName: {{ . }}
    items:
      - {key: tls.crt, path: tls.crt}
      - {key: tls.key, path: tls.key}
      - {key: ca.crt, path: ca.crt}
{{- end }}
{{- with $v.auth.tokensSecret }}
- name: auth-tokens
  secret:
    secretName: {{ . }}
    items:
      - {key: tokens, path: tokens}
{{- end }}
{{- if and $v.signing.trustedKeysConfigMap (or (eq .component "predictor") (and (eq .component "registry") $v.signing.registryRequiresSignatures)) }}
- name: trusted-keys
  configMap:
    name: {{ $v.signing.trustedKeysConfigMap }}
{{- end }}
{{- if and (eq .component "trainer") $v.auth.trainerTokenSecret }}
- name: registry-token
  secret:
    secretName: {{ $v.auth.trainerTokenSecret }}
    items:
      - {key: token, path: token}
{{- end }}
{{- if and (eq .component "console") $v.auth.consoleTokenSecret }}
- name: mesh-token
  secret:
    secretName: {{ $v.auth.consoleTokenSecret }}
    items:
      - {key: token, path: token}
{{- end }}
{{- if and (eq .component "trainer") $v.signing.trainerKeySecret }}
- name: signing-key
  secret:
    secretName: {{ $v.signing.trainerKeySecret }}
    defaultMode: 0400
    items:
      - {key: signing.key, path: signing.key}
{{- end }}
{{- if and (eq .component "registry") $v.signing.trustedKeysConfigMap }}
- name: signing-key
  secret:
    secretName: {{ required "security.signing.registryKeySecret is required with security.signing.trustedKeysConfigMap: predictors that verify follow only alias moves the registry signed (make a key with `kappa keys new`, put its public key in the ConfigMap)" $v.signing.registryKeySecret }}
    defaultMode: 0400
    items:
      - {key: signing.key, path: signing.key}
{{- end }}
{{- end }}

{{/* One probe against grpc.health.v1 `service`. The kubelet's own gRPC probe cannot speak TLS,
so a component serving TLS is probed by `kappa health` (in the same image) over TLS instead. */}}
{{- define "kappa.probeAction" -}}
{{- if include "kappa.tlsSecret" .c }}
exec:
  command:
    - /usr/local/bin/kappa
    - health
    - https://127.0.0.1:{{ .port }}
    - --service={{ .service }}
    - --tls-ca=/etc/kappa/tls/ca.crt
    - --tls-server-name={{ include "kappa.fullname" .c.root }}-{{ .c.component }}
    {{- if .c.root.Values.security.tls.clientAuth }}
    - --tls-cert=/etc/kappa/tls/tls.crt
    - --tls-key=/etc/kappa/tls/tls.key
    {{- end }}
{{- else }}
grpc:
  port: {{ .port }}
  {{- /* No service: the server's overall status (the bridge's readiness). */}}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Probes against grpc.health.v1: liveness asks "liveness" (SERVING while the process runs),
readiness asks the service's own name. Call with
(dict "c" (dict "root" $ "component" "registry") "port" 50051 "service" "kappa.registry.v1.Registry"). */}}
{{- define "kappa.probes" -}}
livenessProbe:
  {{- include "kappa.probeAction" (dict "c" .c "port" .port "service" "liveness") | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  {{- include "kappa.probeAction" (dict "c" .c "port" .port "service" .service) | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* The Secret holding the bridge's MQTT credentials: an existing one, the one the chart makes
from bridge.mqtt.credentials.username/password, or "" (anonymous). */}}
{{- define "kappa.bridgeCredentialsSecret" -}}
{{- $c := .Values.bridge.mqtt.credentials -}}
{{- if $c.existingSecret -}}
{{ $c.existingSecret }}
{{- else if $c.username -}}
{{ include "kappa.fullname" . }}-bridge-mqtt
{{- end -}}
{{- end }}

{{/* "true" when a component is deployed: the registry and predictors always, the trainer, the
bridge and the console when enabled. (dict "root" $ "component" "bridge") */}}
{{- define "kappa.enabled" -}}
{{- if or (has .component (list "registry" "predictor")) (index .root.Values .component).enabled }}true{{ end }}
{{- end }}

{{/* The alerting rules on the monitoring windows, shared by the PrometheusRule and the chart's
rule tests (promtool). */}}
{{- define "kappa.monitoringRules" -}}
{{- $rule := .Values.metrics.prometheusRule -}}
- name: kappa-model-monitoring
  rules:
    - alert: KappaFeatureDrift
      # A feature's live values no longer look like the data the served version was trained on.
      expr: max by (model, version, feature) (kappa_predictor_feature_drift_psi) >= {{ $rule.driftThreshold }}
      for: {{ $rule.for }}
      labels:
        severity: {{ $rule.severity }}
      annotations:
        summary: "{{ "{{" }} $labels.model {{ "}}" }} v{{ "{{" }} $labels.version {{ "}}" }}: {{ "{{" }} $labels.feature {{ "}}" }} drifted (PSI {{ "{{" }} $value | printf \"%.2f\" {{ "}}" }})"
        description: "The population stability index of {{ "{{" }} $labels.feature {{ "}}" }} against the version's training data has stayed at or above {{ $rule.driftThreshold }}. Check the sensor or its units, or retrain on recent data (kappa monitor --model {{ "{{" }} $labels.model {{ "}}" }})."
    - alert: KappaAnomalyRateHigh
      # Many more anomalies than on the validation data: a fleet problem, or a model out of date.
      expr: |
        max by (model, version) (kappa_predictor_window_anomaly_rate)
          > on (model, version) ({{ $rule.anomalyRateFactor }} * max by (model, version) (kappa_predictor_reference_anomaly_rate))
        and on (model, version) max by (model, version) (kappa_predictor_window_rows) >= {{ $rule.minWindowRows }}
      for: {{ $rule.for }}
      labels:
        severity: {{ $rule.severity }}
      annotations:
        summary: "{{ "{{" }} $labels.model {{ "}}" }} v{{ "{{" }} $labels.version {{ "}}" }}: anomaly rate {{ "{{" }} $value | humanizePercentage {{ "}}" }}, over {{ $rule.anomalyRateFactor }}x the validation data's"
        description: "The share of scored rows above the anomaly threshold has stayed above {{ $rule.anomalyRateFactor }} times the rate on the version's validation data."
{{- end }}

{{/* Refuses to render an install that is not secure, naming what is missing, unless
`insecure: true` (a lab). Every component's environment includes it, so whichever renders
first refuses. */}}
{{- define "kappa.requireSecure" -}}
{{- $v := .Values -}}
{{- if not $v.insecure }}
{{- $missing := list }}
{{- $components := list }}
{{- range $name := list "registry" "predictor" "trainer" "bridge" }}
{{- if include "kappa.enabled" (dict "root" $ "component" $name) }}{{ $components = append $components $name }}{{ end }}
{{- end }}
{{- range $name := $components }}
{{- if not (index $v.security.tls.secrets $name) }}{{ $missing = append $missing (printf "security.tls.secrets.%s (TLS on its gRPC port)" $name) }}{{ end }}
{{- end }}
{{- if not $v.security.auth.tokensSecret }}{{ $missing = append $missing "security.auth.tokensSecret (bearer tokens and roles)" }}{{ end }}
{{- if and (has "trainer" $components) (not $v.security.auth.trainerTokenSecret) }}{{ $missing = append $missing "security.auth.trainerTokenSecret (the trainer's token for the registry)" }}{{ end }}
{{- if not $v.security.signing.trustedKeysConfigMap }}{{ $missing = append $missing "security.signing.trustedKeysConfigMap (the keys predictors trust)" }}{{ end }}
{{- if not $v.security.signing.registryKeySecret }}{{ $missing = append $missing "security.signing.registryKeySecret (the registry signs alias moves)" }}{{ end }}
{{- if and (has "trainer" $components) (not $v.security.signing.trainerKeySecret) }}{{ $missing = append $missing "security.signing.trainerKeySecret (the trainer signs what it publishes)" }}{{ end }}
{{- if not $v.networkPolicy.enabled }}{{ $missing = append $missing "networkPolicy.enabled=true" }}{{ end }}
{{- if not $v.kafka.sasl.enabled }}{{ $missing = append $missing "kafka.sasl.enabled=true (a Kafka principal per component)" }}{{ end }}
{{- range $name := $components }}
{{- if and $v.kafka.sasl.enabled (not (index $v.kafka.sasl.secrets $name)) }}{{ $missing = append $missing (printf "kafka.sasl.secrets.%s (its own Kafka principal, not a shared one)" $name) }}{{ end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "this install would not be secure; set %s. For a lab, set insecure=true instead: then anything that reaches the Services may publish, move and serve models." (join ", " $missing)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The tiering flags of the services that create event and prediction topics. */}}
{{- define "kappa.topicTieringArgs" -}}
{{- $t := .Values.kafka.topicTiering }}
- --topic-remote-storage={{ $t.remoteStorage }}
- --topic-local-retention={{ $t.localRetention }}
- --topic-retention={{ $t.retention }}
{{- end }}
