{{/* The chart's name. */}}
{{- define "gpu-telemetry.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name (release and chart name once). */}}
{{- define "gpu-telemetry.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label. */}}
{{- define "gpu-telemetry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. The overlay's objects select their pods by their own labels (ray.io/cluster,
app.kubernetes.io/name); these are only added to each object's metadata, never to selectors, so
a release selects exactly what the overlay does.
*/}}
{{- define "gpu-telemetry.selectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels Helm adds to every object's metadata (next to the overlay's own). */}}
{{- define "gpu-telemetry.labels" -}}
helm.sh/chart: {{ include "gpu-telemetry.chart" . }}
{{ include "gpu-telemetry.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
The pod specs of a RayCluster or RayJob that run the pipeline image: the head, every worker
group, a RayJob's submitter. Called for its effect: sets each container's image.
*/}}
{{- define "gpu-telemetry.setPipelineImage" -}}
{{- $obj := index . 0 }}{{- $image := index . 1 }}
{{- $pods := list }}
{{- if eq $obj.kind "RayCluster" }}
{{- $pods = append $pods $obj.spec.headGroupSpec.template.spec }}
{{- range $obj.spec.workerGroupSpecs }}{{ $pods = append $pods .template.spec }}{{ end }}
{{- else if and (eq $obj.kind "RayJob") $obj.spec.submitterPodTemplate }}
{{- $pods = append $pods $obj.spec.submitterPodTemplate.spec }}
{{- end }}
{{- range $pods }}{{ range .containers }}{{ if .image }}{{ $_ := set . "image" $image }}{{ end }}{{ end }}{{ end }}
{{- end }}

{{/* Worker-group bounds from one seed component's autoscaling values; fails on min > max. */}}
{{- define "gpu-telemetry.setBounds" -}}
{{- $group := index . 0 }}{{- $component := index . 1 }}{{- $values := index . 2 }}
{{- $auto := (index $values $component).autoscaling | default dict }}
{{- if not (kindIs "invalid" $auto.minReplicas) }}{{ $_ := set $group "minReplicas" $auto.minReplicas }}{{ end }}
{{- if not (kindIs "invalid" $auto.maxReplicas) }}{{ $_ := set $group "maxReplicas" $auto.maxReplicas }}{{ end }}
{{- if gt (int $group.minReplicas) (int $group.maxReplicas) }}
{{- fail (printf "%s.autoscaling: minReplicas %v is above maxReplicas %v (worker group %s)" $component $group.minReplicas $group.maxReplicas $group.groupName) }}
{{- end }}
{{- end }}
