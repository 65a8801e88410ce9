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

{{/* The Secret of the controller's TLS to etcd ("" without): store.type=etcd only. */}}
{{- define "meshsec.etcdTlsSecret" -}}
{{- $name := ((.Values.store.etcd.tls).secretName) | default "" }}
{{- if and $name (ne .Values.store.type "etcd") }}
{{- fail "store.etcd.tls.secretName needs store.type=etcd" }}
{{- end }}
{{- $name }}
{{- end }}

{{- define "meshsec.replicas" -}}
{{- if and (eq .Values.store.type "embedded") (gt (int .Values.controller.replicas) 1) }}
{{- fail "store.type=embedded runs exactly one controller replica; use store.type=etcd for more" }}
{{- end }}
{{- int .Values.controller.replicas }}
{{- end }}

{{/* The data-plane daemon's image: its own tag, so that image.tag (an agent upgrade) leaves the
daemon's pod template, and with it the packet path, untouched. */}}
{{- define "meshsec.dataplaneImage" -}}
{{- $i := .Values.agent.userspace.image }}
{{- printf "%s:%s" (default .Values.image.repository $i.repository) (default .Chart.AppVersion $i.tag) }}
{{- end }}

{{/* How the userspace data-plane daemon runs: daemonset, sidecar or off (none for dataplane: kernel). */}}
{{- define "meshsec.dataplaneDaemon" -}}
{{- if eq .Values.agent.dataplane "kernel" }}off{{ else }}{{ .Values.agent.userspace.daemon }}{{ end }}
{{- end }}

{{/* The daemon's arguments, identical in both shapes (the tests parse them with its parser). */}}
{{- define "meshsec.dataplaneArgs" -}}
- --socket=/run/meshsec/dataplane.sock
- --tun-name={{ .Values.agent.tunName }}
- --path-mtu={{ .Values.agent.userspace.pathMtu }}
- --log-level={{ .Values.agent.userspace.logLevel }}
{{- end }}

{{/* The daemon's security context: root for the TUN device, raw ESP sockets, routes and rules in
the node's namespace. */}}
{{- define "meshsec.dataplaneSecurityContext" -}}
runAsUser: 0
{{- if .Values.agent.privileged }}
privileged: true
{{- else }}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
  add: [NET_ADMIN, NET_RAW]
{{- end }}
{{- end }}
