{{/* Names, labels and the pieces every kubevents container shares. */}}

{{- define "kubevents.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The base of every object's name: kubevents-producer, kubevents-core, kubevents-sink-<id>
     when the release is called kubevents, as in deploy/kubernetes. */}}
{{- define "kubevents.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kubevents.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubevents.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "kubevents.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kubevents.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubevents
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "producer"). */}}
{{- define "kubevents.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubevents.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubevents.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The chart's own Secret: only the secrets that no existingSecret provides. */}}
{{- define "kubevents.secretName" -}}
{{- include "kubevents.fullname" . }}
{{- end }}

{{- define "kubevents.kafkaSaslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "kubevents.kafkaTlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* Environment of every kubevents container: cluster, Kafka (with its security), topics. */}}
{{- define "kubevents.commonEnv" -}}
- name: KUBEVENTS_CLUSTER_NAME
  value: {{ .Values.cluster.name | quote }}
- name: KUBEVENTS_KAFKA_BROKERS
  value: {{ .Values.kafka.brokers | quote }}
- name: KUBEVENTS_KAFKA_COMPRESSION
  value: {{ .Values.kafka.compression | quote }}
- name: KUBEVENTS_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "kubevents.kafkaSaslEnabled" . }}
- name: KUBEVENTS_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: KUBEVENTS_KAFKA_SASL_USERNAME
  value: {{ required "kafka.sasl.username is required with a SASL_ securityProtocol" .Values.kafka.sasl.username | quote }}
- name: KUBEVENTS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret | default (include "kubevents.secretName" .) }}
      key: {{ ternary .Values.kafka.sasl.existingSecretKey "kafka-sasl-password" (ne .Values.kafka.sasl.existingSecret "") }}
{{- end }}
{{- if include "kubevents.kafkaTlsEnabled" . }}
{{- if .Values.kafka.tls.caSecret }}
- name: KUBEVENTS_KAFKA_SSL_CAFILE
  value: /etc/kubevents/kafka-ca/{{ .Values.kafka.tls.caSecretKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: KUBEVENTS_KAFKA_SSL_CERTFILE
  value: /etc/kubevents/kafka-client/tls.crt
- name: KUBEVENTS_KAFKA_SSL_KEYFILE
  value: /etc/kubevents/kafka-client/tls.key
{{- end }}
{{- if .Values.kafka.tls.insecureSkipVerify }}
- name: KUBEVENTS_KAFKA_SSL_INSECURE_SKIP_VERIFY
  value: "true"
{{- end }}
{{- end }}
- name: KUBEVENTS_TOPICS_RAW
  value: {{ .Values.topics.raw | quote }}
- name: KUBEVENTS_TOPICS_ENRICHED
  value: {{ .Values.topics.enriched | quote }}
- name: KUBEVENTS_TOPICS_DLQ
  value: {{ .Values.topics.dlq | quote }}
- name: KUBEVENTS_TOPICS_PARTITIONS
  value: {{ .Values.topics.partitions | quote }}
- name: KUBEVENTS_TOPICS_REPLICATION_FACTOR
  value: {{ .Values.topics.replicationFactor | quote }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volume mounts for the Kafka TLS files and /tmp (the root filesystem is read-only). */}}
{{- define "kubevents.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "kubevents.kafkaTlsEnabled" . }}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/kubevents/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/kubevents/kafka-client
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "kubevents.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "kubevents.kafkaTlsEnabled" . }}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
    items:
      - key: {{ .Values.kafka.tls.caSecretKey }}
        path: {{ .Values.kafka.tls.caSecretKey }}
{{- end }}
{{- if .Values.kafka.tls.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientCertSecret }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every workload (as deploy/kubernetes). */}}
{{- define "kubevents.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kubevents.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "kubevents.podExtras" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Probes on /healthz and /readyz of the named port (the HTTP server starts once Kafka, and
     for the producer the API server, have answered: the startup probe gives it time). */}}
{{- define "kubevents.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
{{- end }}
