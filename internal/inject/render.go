package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// SplitYAML splits a multi-document YAML stream, dropping documents that hold only
// comments or space.
func SplitYAML(b []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSep.Split(string(b), -1) {
		empty := true
		for _, l := range strings.Split(d, "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				empty = false
				break
			}
		}
		if !empty {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// Render injects the sidecar into the Pods, Deployments, StatefulSets and DaemonSets
// of a YAML manifest stream, as the webhook would, and passes other documents through:
// the plain manifests for a cluster without the webhook (like istioctl kube-inject).
func (in *Injector) Render(manifests []byte) ([]byte, error) {
	var out bytes.Buffer
	for i, doc := range SplitYAML(manifests) {
		var tm struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		var (
			obj      any
			template func() (*corev1.PodTemplateSpec, error)
		)
		switch tm.APIVersion + "/" + tm.Kind {
		case "v1/Pod":
			pod := &corev1.Pod{}
			obj = pod
			template = func() (*corev1.PodTemplateSpec, error) {
				t := &corev1.PodTemplateSpec{ObjectMeta: pod.ObjectMeta, Spec: pod.Spec}
				return t, nil
			}
		case "apps/v1/Deployment":
			d := &appsv1.Deployment{}
			obj, template = d, func() (*corev1.PodTemplateSpec, error) { return &d.Spec.Template, nil }
		case "apps/v1/StatefulSet":
			s := &appsv1.StatefulSet{}
			obj, template = s, func() (*corev1.PodTemplateSpec, error) { return &s.Spec.Template, nil }
		case "apps/v1/DaemonSet":
			s := &appsv1.DaemonSet{}
			obj, template = s, func() (*corev1.PodTemplateSpec, error) { return &s.Spec.Template, nil }
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		if obj == nil {
			// Passed through as written, less the comments before it (those of the
			// documents re-encoded below are lost too, and would describe the input).
			out.Write(stripLeadingComments(doc))
			continue
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		t, _ := template()
		pod := &corev1.Pod{ObjectMeta: t.ObjectMeta, Spec: t.Spec}
		injected, _, err := in.Inject(pod)
		if err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		t.ObjectMeta, t.Spec = injected.ObjectMeta, injected.Spec
		if p, ok := obj.(*corev1.Pod); ok {
			p.ObjectMeta, p.Spec = injected.ObjectMeta, injected.Spec
		}
		b, err := marshalClean(obj)
		if err != nil {
			return nil, err
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}

// marshalClean is YAML of obj without the empty fields the Go types always write
// (creationTimestamp: null, status: {}, resources: {}).
func marshalClean(obj any) ([]byte, error) {
	j, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, err
	}
	prune(m)
	if s, ok := m["status"].(map[string]any); ok && len(s) == 0 {
		delete(m, "status")
	}
	return yaml.Marshal(m)
}

func prune(v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if x == nil {
				delete(v, k)
				continue
			}
			if r, ok := x.(map[string]any); ok && len(r) == 0 && (k == "resources" || k == "strategy") {
				delete(v, k)
				continue
			}
			prune(x)
		}
	case []any:
		for _, x := range v {
			prune(x)
		}
	}
}

func stripLeadingComments(doc []byte) []byte {
	lines := strings.SplitAfter(string(doc), "\n")
	for len(lines) > 0 {
		if l := strings.TrimSpace(lines[0]); l != "" && !strings.HasPrefix(l, "#") {
			break
		}
		lines = lines[1:]
	}
	s := strings.Join(lines, "")
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	return []byte(s)
}
