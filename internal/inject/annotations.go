package inject

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/google/uuid"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// The annotations a pod may carry. Every eventgw.io/ annotation is checked: an unknown
// one (a typo) refuses the pod instead of being ignored.
const (
	// AnnotationInject: "true" asks for the sidecar, "false" (or no annotation) not.
	AnnotationInject = "eventgw.io/inject"
	// AnnotationServiceName: the sidecar's --service-name (ce_source, the metrics'
	// service label). Default: the pod's app.kubernetes.io/name or app label.
	AnnotationServiceName = "eventgw.io/service-name"
	// AnnotationTenants: comma-separated tenant UUIDs the sidecar serves (--tenants);
	// calls for other tenants are refused. Default: any tenant.
	AnnotationTenants = "eventgw.io/tenants"
	// AnnotationTopicPrefix: --topic-prefix (default healthtech).
	AnnotationTopicPrefix = "eventgw.io/topic-prefix"
	// AnnotationLogLevel: --log-level: debug, info, warn or error.
	AnnotationLogLevel = "eventgw.io/log-level"
	// AnnotationCPURequest, AnnotationCPULimit, AnnotationMemoryRequest and
	// AnnotationMemoryLimit override the sidecar's resources (Kubernetes quantities
	// such as 250m or 256Mi). A memory limit also sets GOMEMLIMIT.
	AnnotationCPURequest    = "eventgw.io/cpu-request"
	AnnotationCPULimit      = "eventgw.io/cpu-limit"
	AnnotationMemoryRequest = "eventgw.io/memory-request"
	AnnotationMemoryLimit   = "eventgw.io/memory-limit"
	// AnnotationStatus is set by the webhook on the pods it injected.
	AnnotationStatus = "eventgw.io/status"
)

// Annotations lists every annotation the webhook reads, for messages and docs.
var Annotations = []string{
	AnnotationInject, AnnotationServiceName, AnnotationTenants, AnnotationTopicPrefix, AnnotationLogLevel,
	AnnotationCPURequest, AnnotationCPULimit, AnnotationMemoryRequest, AnnotationMemoryLimit, AnnotationStatus,
}

// AnnotationError is a bad annotation value: the pod is refused with it.
type AnnotationError struct {
	Annotation string
	Value      string
	Reason     string
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s: %q %s", e.Annotation, e.Value, e.Reason)
}

// ConflictError is a pod the sidecar cannot be added to as it is (a port, volume,
// mount or variable of the sidecar's already used): the pod is refused with it.
type ConflictError struct{ Reason string }

func (e *ConflictError) Error() string { return "eventgw sidecar cannot be added: " + e.Reason }

// settings are a pod's per-pod sidecar settings, read from its annotations.
type settings struct {
	serviceName string
	tenants     []string
	topicPrefix string
	logLevel    string
	resources   corev1.ResourceRequirements
}

var (
	// A service name becomes ce_source and a metrics label: keep it a plain name.
	serviceNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)
	// A topic prefix starts topic names: Kafka's legal characters, with room left
	// under its 249-character limit for ".<domain>.events".
	topicPrefixRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)
	logLevels     = []string{"debug", "info", "warn", "error"}
)

// wantsInjection reads eventgw.io/inject.
func wantsInjection(ann map[string]string) (bool, error) {
	v, ok := ann[AnnotationInject]
	if !ok {
		return false, nil
	}
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	default:
		return false, &AnnotationError{AnnotationInject, v, `must be "true" or "false"`}
	}
}

// parseSettings checks every eventgw.io/ annotation of a pod that asked for the
// sidecar and returns its settings over the defaults.
func parseSettings(pod *corev1.Pod, defaults corev1.ResourceRequirements) (settings, error) {
	ann := pod.Annotations
	for k, v := range ann {
		if strings.HasPrefix(k, "eventgw.io/") && !slices.Contains(Annotations, k) {
			return settings{}, &AnnotationError{k, v, "is not an eventgw annotation (known: " + strings.Join(Annotations, ", ") + ")"}
		}
	}
	s := settings{resources: *defaults.DeepCopy()}
	if s.resources.Requests == nil {
		s.resources.Requests = corev1.ResourceList{}
	}
	if s.resources.Limits == nil {
		s.resources.Limits = corev1.ResourceList{}
	}
	s.serviceName = ann[AnnotationServiceName]
	if _, set := ann[AnnotationServiceName]; set {
		if !serviceNameRe.MatchString(s.serviceName) {
			return s, &AnnotationError{AnnotationServiceName, s.serviceName, "must be 1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit"}
		}
	} else {
		for _, l := range []string{"app.kubernetes.io/name", "app"} {
			if v := pod.Labels[l]; serviceNameRe.MatchString(v) {
				s.serviceName = v
				break
			}
		}
	}
	if v, set := ann[AnnotationTenants]; set {
		seen := map[string]bool{}
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			// Canonical 8-4-4-4-12 form only, as the sidecar's tenant_id checks.
			if _, err := uuid.Parse(t); err != nil || len(t) != 36 {
				return s, &AnnotationError{AnnotationTenants, v, fmt.Sprintf("must be comma-separated tenant UUIDs such as 6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a (%q is not one)", t)}
			}
			t = strings.ToLower(t)
			if !seen[t] {
				seen[t] = true
				s.tenants = append(s.tenants, t)
			}
		}
	}
	if v, set := ann[AnnotationTopicPrefix]; set {
		if !topicPrefixRe.MatchString(v) {
			return s, &AnnotationError{AnnotationTopicPrefix, v, "must be 1 to 100 letters, digits, '.', '_' or '-' (Kafka topic characters), starting with a letter or digit"}
		}
		s.topicPrefix = v
	}
	if v, set := ann[AnnotationLogLevel]; set {
		if !slices.Contains(logLevels, v) {
			return s, &AnnotationError{AnnotationLogLevel, v, "must be one of " + strings.Join(logLevels, ", ")}
		}
		s.logLevel = v
	}
	for _, q := range []struct {
		annotation string
		list       corev1.ResourceList
		name       corev1.ResourceName
	}{
		{AnnotationCPURequest, s.resources.Requests, corev1.ResourceCPU},
		{AnnotationCPULimit, s.resources.Limits, corev1.ResourceCPU},
		{AnnotationMemoryRequest, s.resources.Requests, corev1.ResourceMemory},
		{AnnotationMemoryLimit, s.resources.Limits, corev1.ResourceMemory},
	} {
		v, set := ann[q.annotation]
		if !set {
			continue
		}
		qty, err := resource.ParseQuantity(v)
		if err != nil || qty.Sign() <= 0 {
			return s, &AnnotationError{q.annotation, v, "must be a positive Kubernetes quantity such as 250m (CPU) or 256Mi (memory)"}
		}
		q.list[q.name] = qty
	}
	// A request above its limit is refused by the API server; say which annotation.
	for _, r := range []struct {
		name corev1.ResourceName
		req  string
		lim  string
	}{{corev1.ResourceCPU, AnnotationCPURequest, AnnotationCPULimit}, {corev1.ResourceMemory, AnnotationMemoryRequest, AnnotationMemoryLimit}} {
		req, hasReq := s.resources.Requests[r.name]
		lim, hasLim := s.resources.Limits[r.name]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			culprit := r.req
			if _, set := ann[r.req]; !set {
				culprit = r.lim
			}
			return s, &AnnotationError{culprit, ann[culprit], fmt.Sprintf("makes the sidecar's %s request (%s) exceed its limit (%s)", r.name, req.String(), lim.String())}
		}
	}
	return s, nil
}
