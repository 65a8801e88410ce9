{{- define "meshsec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshsec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "meshsec.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "meshsec.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "meshsec.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "meshsec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshsec
{{- end }}

{{- define "meshsec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshsec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshsec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-controller" (include "meshsec.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshsec.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Service's in-cluster DNS name: agents dial it and the serving certificate names it. */}}
{{- define "meshsec.serviceHost" -}}
{{- printf "%s.%s.svc" (include "meshsec.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "meshsec.store" -}}
{{- if eq .Values.store.type "embedded" }}
{{- print "embedded:/var/lib/meshsec/controller/store.log" }}
{{- else if eq .Values.store.type "etcd" }}
{{- if not .Values.store.etcd.endpoints }}
{{- fail "store.type=etcd needs store.etcd.endpoints" }}
{{- end }}
{{- printf "etcd://%s" (join "," .Values.store.etcd.endpoints) }}
{{- else }}
{{- fail (printf "store.type must be embedded or etcd, not %q" .Values.store.type) }}
{{- end }}
{{- end }}

{{- define "meshsec.replicas" -}}
{{- if and (eq .Values.store.type "embedded") (gt (int .Values.controller.replicas) 1) }}
{{- fail "store.type=embedded runs exactly one controller replica; use store.type=etcd for more" }}
{{- end }}
{{- int .Values.controller.replicas }}
{{- end }}
