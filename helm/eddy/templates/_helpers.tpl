{{/*
Expand the name of the chart.
*/}}
{{- define "eddy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "eddy.fullname" -}}
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
Create chart name and version as used by the chart label.
*/}}
{{- define "eddy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels. Never used as selectors (they carry versions that change on upgrade).
*/}}
{{- define "eddy.labels" -}}
helm.sh/chart: {{ include "eddy.chart" . }}
{{ include "eddy.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eddy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable for the life of a release.
*/}}
{{- define "eddy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eddy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of one component. Call with (dict "ctx" $ "component" "ingest").
*/}}
{{- define "eddy.componentLabels" -}}
{{ include "eddy.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "ingest").
*/}}
{{- define "eddy.componentSelectorLabels" -}}
{{ include "eddy.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Common annotations (metadata of every resource); empty when none.
*/}}
{{- define "eddy.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Resource names.
*/}}
{{- define "eddy.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "eddy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eddy.ingest.fullname" -}}
{{- printf "%s-ingest" (include "eddy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eddy.state.fullname" -}}
{{- printf "%s-state" (include "eddy.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "eddy.state.headlessServiceName" -}}
{{- printf "%s-headless" (include "eddy.state.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eddy.etcd.fullname" -}}
{{- printf "%s-etcd" (include "eddy.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "eddy.etcd.headlessServiceName" -}}
{{- printf "%s-headless" (include "eddy.etcd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Service that answers the public API (eddy.v1.Eddy): the ingest Service, named after the
ingest nodes even when state nodes serve it (state.role "ingest,state" and ingest disabled).
*/}}
{{- define "eddy.publicServiceName" -}}
{{- include "eddy.ingest.fullname" . }}
{{- end }}

{{/*
The component whose pods back the public Service.
*/}}
{{- define "eddy.publicComponent" -}}
{{- if .Values.ingest.enabled }}ingest{{ else }}state{{ end }}
{{- end }}

{{/*
Name of the ServiceAccount.
*/}}
{{- define "eddy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eddy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference. Call with (dict "image" .Values.image "global" .Values.global "default" .Chart.AppVersion).
*/}}
{{- define "eddy.imageRef" -}}
{{- $registry := .image.registry -}}
{{- if and .global .global.imageRegistry -}}
{{- $registry = .global.imageRegistry -}}
{{- end -}}
{{- $repo := .image.repository -}}
{{- if $registry -}}
{{- $repo = printf "%s/%s" $registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString (default .default .image.tag)) -}}
{{- end -}}
{{- end }}

{{- define "eddy.image" -}}
{{- include "eddy.imageRef" (dict "image" .Values.image "global" .Values.global "default" .Chart.AppVersion) }}
{{- end }}

{{- define "eddy.etcd.image" -}}
{{- include "eddy.imageRef" (dict "image" .Values.etcd.image "global" .Values.global "default" "v3.5.17") }}
{{- end }}

{{/*
imagePullSecrets of a pod spec (global + image), rendered at the pod spec's indentation.
*/}}
{{- define "eddy.imagePullSecrets" -}}
{{- $secrets := concat (.Values.global.imagePullSecrets | default list) (.Values.image.pullSecrets | default list) | uniq }}
{{- if $secrets }}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
etcd client URLs joined with "," (EDDY_ETCD): the in-chart etcd when enabled, otherwise
externalEtcd.endpoints.
*/}}
{{- define "eddy.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- printf "http://%s.%s.svc.%s:2379" (include "eddy.etcd.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else if .Values.externalEtcd.endpoints }}
{{- join "," .Values.externalEtcd.endpoints }}
{{- else }}
{{- fail "eddy: set externalEtcd.endpoints (etcd client URLs) or etcd.enabled=true for a trial etcd" }}
{{- end }}
{{- end }}

{{/*
Environment shared by every Eddy process (coordinator and nodes).
*/}}
{{- define "eddy.commonEnv" -}}
- name: EDDY_ETCD
  value: {{ include "eddy.etcdEndpoints" . | quote }}
- name: EDDY_CLUSTER
  value: {{ .Values.cluster.name | quote }}
- name: EDDY_LOG_LEVEL
  value: {{ .Values.cluster.logLevel | quote }}
- name: EDDY_SHUTDOWN_GRACE
  value: {{ .Values.cluster.shutdownGrace | quote }}
{{ include "eddy.securityEnv" . }}
{{- end }}

{{/*
The Secret holding the gRPC certificate: tls.existingSecret, or the one the chart's
cert-manager Certificate writes.
*/}}
{{- define "eddy.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "eddy.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{/*
Is the external etcd's Secret mounted? (only for an external etcd with existingSecret)
*/}}
{{- define "eddy.etcdSecretMounted" -}}
{{- if and (not .Values.etcd.enabled) .Values.externalEtcd.existingSecret }}true{{ end }}
{{- end }}

{{/*
Environment of the security settings, shared by every Eddy process: TLS files (or
EDDY_INSECURE: protected mode refuses a plaintext listener on 0.0.0.0 otherwise), the etcd
client's TLS and user, and the token file. The paths are where eddy.securityVolumeMounts
mounts the Secrets.
*/}}
{{- define "eddy.securityEnv" -}}
{{- if .Values.tls.enabled }}
- name: EDDY_TLS_CERT
  value: /etc/eddy/tls/tls.crt
- name: EDDY_TLS_KEY
  value: /etc/eddy/tls/tls.key
- name: EDDY_TLS_CA
  value: /etc/eddy/tls/ca.crt
- name: EDDY_TLS_CLIENT_AUTH
  value: {{ .Values.tls.clientAuth | quote }}
{{- else }}
- name: EDDY_INSECURE
  value: "true"
{{- end }}
{{- if include "eddy.etcdSecretMounted" . }}
{{- with .Values.externalEtcd }}
{{- if .tls.ca }}
- name: EDDY_ETCD_CA
  value: /etc/eddy/etcd/ca.crt
{{- end }}
{{- if .tls.clientCert }}
- name: EDDY_ETCD_CERT
  value: /etc/eddy/etcd/tls.crt
- name: EDDY_ETCD_KEY
  value: /etc/eddy/etcd/tls.key
{{- end }}
{{- if .auth.user }}
- name: EDDY_ETCD_USER
  value: {{ .auth.user | quote }}
- name: EDDY_ETCD_PASSWORD_FILE
  value: /etc/eddy/etcd/password
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.auth.tokenSecret }}
- name: EDDY_TOKEN_FILE
  value: /etc/eddy/auth/{{ .Values.auth.tokenSecretKey }}
{{- end }}
{{- end }}

{{/*
volumeMounts of the Secrets named by eddy.securityEnv (empty when none). No subPath: a
Secret volume is updated in place (a rename), which the processes notice and reload.
*/}}
{{- define "eddy.securityVolumeMounts" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/eddy/tls
  readOnly: true
{{- end }}
{{- if include "eddy.etcdSecretMounted" . }}
- name: etcd-client
  mountPath: /etc/eddy/etcd
  readOnly: true
{{- end }}
{{- if .Values.auth.tokenSecret }}
- name: tokens
  mountPath: /etc/eddy/auth
  readOnly: true
{{- end }}
{{- end }}

{{/*
The volumes of eddy.securityVolumeMounts. Mode 0440: readable by the pods' fsGroup only.
*/}}
{{- define "eddy.securityVolumes" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "eddy.tlsSecretName" . }}
    defaultMode: 0440
{{- end }}
{{- if include "eddy.etcdSecretMounted" . }}
- name: etcd-client
  secret:
    secretName: {{ .Values.externalEtcd.existingSecret }}
    defaultMode: 0440
    items:
      {{- if .Values.externalEtcd.tls.ca }}
      - key: ca.crt
        path: ca.crt
      {{- end }}
      {{- if .Values.externalEtcd.tls.clientCert }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
      {{- if .Values.externalEtcd.auth.user }}
      - key: password
        path: password
      {{- end }}
{{- end }}
{{- if .Values.auth.tokenSecret }}
- name: tokens
  secret:
    secretName: {{ .Values.auth.tokenSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.auth.tokenSecretKey }}
        path: {{ .Values.auth.tokenSecretKey }}
{{- end }}
{{- end }}

{{/*
Environment of eddy-node (ingest and state roles).
*/}}
{{- define "eddy.nodeEnv" -}}
{{ include "eddy.commonEnv" . }}
- name: EDDY_PARTITIONS
  value: {{ .Values.cluster.partitions | quote }}
- name: EDDY_WINDOW
  value: {{ .Values.cluster.window | quote }}
- name: EDDY_OUT_OF_ORDERNESS
  value: {{ .Values.cluster.outOfOrderness | quote }}
{{- end }}

{{/*
User-supplied env: cluster-wide extras first, then the component's (later entries win).
Call with (dict "ctx" $ "extra" .Values.ingest.extraEnv).
*/}}
{{- define "eddy.extraEnv" -}}
{{- with .ctx.Values.cluster.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
envFrom block of a container (empty when none).
*/}}
{{- define "eddy.envFrom" -}}
{{- with .Values.cluster.extraEnvFrom }}
envFrom:
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A gRPC probe. Call with (dict "probe" .Values.ingest.livenessProbe "port" 7070 "service" "liveness"
"tls" .Values.tls.enabled). The port is a number (gRPC probes take no named ports) equal to
the container port. Kubernetes' gRPC probe speaks plaintext only, so with TLS the probe runs
`eddy health` in the container instead: the CLI reads the container's EDDY_TLS_CA/CERT/KEY
and checks the certificate's 127.0.0.1 address.
*/}}
{{- define "eddy.grpcProbe" -}}
{{- if .tls -}}
exec:
  command: ["eddy", "--endpoint", "127.0.0.1:{{ int .port }}", "--timeout", "{{ .probe.timeoutSeconds }}s", "health", "--service", {{ .service | quote }}]
{{- else -}}
grpc:
  port: {{ int .port }}
  service: {{ .service }}
{{- end }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/*
Affinity of a component: the user's affinity, else a pod anti-affinity preset (soft/hard)
over kubernetes.io/hostname. Call with (dict "ctx" $ "component" "state" "values" .Values.state).
*/}}
{{- define "eddy.affinity" -}}
{{- if .values.affinity }}
affinity:
{{ toYaml .values.affinity | indent 2 }}
{{- else if eq .values.podAntiAffinityPreset "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
{{ include "eddy.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | indent 14 }}
{{- else if eq .values.podAntiAffinityPreset "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
{{ include "eddy.componentSelectorLabels" (dict "ctx" .ctx "component" .component) | indent 12 }}
{{- end }}
{{- end }}

{{/*
Scheduling fields shared by the pod specs (nodeSelector, tolerations, spread, priority).
Call with (dict "ctx" $ "component" "state" "values" .Values.state).
*/}}
{{- define "eddy.scheduling" -}}
{{- with .values.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- include "eddy.affinity" . }}
{{- with .values.tolerations }}
tolerations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
PromQL matchers selecting this release's Eddy series (without braces). With the chart's
ServiceMonitor, Prometheus labels every target with its namespace and Service.
*/}}
{{- define "eddy.promSelector" -}}
{{- if .Values.metrics.prometheusRule.selector }}
{{- .Values.metrics.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=\"%s\",service=~\"%s|%s|%s\"" .Release.Namespace (include "eddy.coordinator.fullname" .) (include "eddy.ingest.fullname" .) (include "eddy.state.headlessServiceName" .) }}
{{- end }}
{{- end }}

{{/*
Checks of value combinations that the schema cannot express.
*/}}
{{- define "eddy.validateValues" -}}
{{- if and (not .Values.ingest.enabled) (not (contains "ingest" .Values.state.role)) }}
{{- fail "eddy: with ingest.enabled=false set state.role to \"ingest,state\", or nothing serves the public API" }}
{{- end }}
{{- if and .Values.checkpoints.shared.enabled (not .Values.checkpoints.shared.existingClaim) }}
{{- fail "eddy: checkpoints.shared.enabled needs checkpoints.shared.existingClaim (a ReadWriteMany PVC)" }}
{{- end }}
{{- if and .Values.state.pdb.enabled (ge (int .Values.coordinator.replicationFactor) 2) (ge (int .Values.state.pdb.maxUnavailable) (int .Values.coordinator.replicationFactor)) }}
{{- fail "eddy: state.pdb.maxUnavailable must be below coordinator.replicationFactor, or a voluntary disruption may take down every copy of a partition at once" }}
{{- end }}
{{- $minInsync := int .Values.coordinator.minInsyncReplicas }}
{{- if eq $minInsync 0 }}{{- $minInsync = ternary 2 1 (ge (int .Values.coordinator.replicationFactor) 2) }}{{- end }}
{{- if lt (int .Values.state.replicaCount) $minInsync }}
{{- fail (printf "eddy: state.replicaCount (%d) is below min-insync (%d): every write would be refused (UNAVAILABLE) until more state nodes join; add state nodes or lower coordinator.minInsyncReplicas / replicationFactor" (int .Values.state.replicaCount) $minInsync) }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "eddy: tls.enabled needs tls.existingSecret (a Secret with tls.crt, tls.key, ca.crt) or tls.certManager.issuerRef.name (a cert-manager Issuer)" }}
{{- end }}
{{- $ee := .Values.externalEtcd }}
{{- if and (or $ee.tls.ca $ee.tls.clientCert $ee.auth.user) (not $ee.existingSecret) }}
{{- fail "eddy: externalEtcd.tls.ca, externalEtcd.tls.clientCert and externalEtcd.auth.user read their files from externalEtcd.existingSecret: set it" }}
{{- end }}
{{- if and $ee.existingSecret (not (or $ee.tls.ca $ee.tls.clientCert $ee.auth.user)) }}
{{- fail "eddy: externalEtcd.existingSecret is set but nothing reads it: set externalEtcd.tls.ca, externalEtcd.tls.clientCert and/or externalEtcd.auth.user" }}
{{- end }}
{{- if and .Values.etcd.enabled $ee.existingSecret }}
{{- fail "eddy: externalEtcd.existingSecret applies to an external etcd; the in-chart etcd (etcd.enabled) has no TLS or users" }}
{{- end }}
{{- if and .Values.ingest.autoscaling.enabled (lt (int .Values.ingest.autoscaling.maxReplicas) (int .Values.ingest.autoscaling.minReplicas)) }}
{{- fail "eddy: ingest.autoscaling.maxReplicas must be >= minReplicas" }}
{{- end }}
{{- end }}
