package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MutatePath is where the webhook takes AdmissionReviews.
const MutatePath = "/mutate"

// maxReviewBytes bounds a request body: the API server's own limit on an object is
// about 3 MiB, and a review carries it once or twice.
const maxReviewBytes = 8 << 20

// Handler serves AdmissionReview (admission.k8s.io/v1) requests for pods: it answers
// with a JSON patch adding the sidecar, with no patch, or with a refusal naming the
// annotation or clash that caused it.
func (in *Injector) Handler(log *zap.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReviewBytes))
		if err != nil {
			http.Error(w, "read body: "+err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		var review admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &review); err != nil || review.Request == nil {
			http.Error(w, "the body is not an AdmissionReview with a request", http.StatusBadRequest)
			return
		}
		resp := in.Review(review.Request)
		if resp.Allowed {
			log.Info("admission", zap.String("namespace", review.Request.Namespace), zap.String("pod", podName(review.Request)),
				zap.String("outcome", resp.AuditAnnotations["eventgw.io/outcome"]))
		} else {
			log.Info("admission refused", zap.String("namespace", review.Request.Namespace), zap.String("pod", podName(review.Request)),
				zap.String("reason", resp.Result.Message))
		}
		out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
		if out.APIVersion == "" {
			out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}

// Review decides on one admission request.
func (in *Injector) Review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		resp.AuditAnnotations = map[string]string{"eventgw.io/outcome": "not a pod creation"}
		return resp
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return deny(resp, http.StatusBadRequest, fmt.Sprintf("the object is not a Pod: %v", err))
	}
	out, outcome, err := in.Inject(&pod)
	if err != nil {
		var ae *AnnotationError
		var ce *ConflictError
		if errors.As(err, &ae) || errors.As(err, &ce) {
			return deny(resp, http.StatusUnprocessableEntity, err.Error())
		}
		return deny(resp, http.StatusInternalServerError, "eventgw sidecar injection failed: "+err.Error())
	}
	resp.AuditAnnotations = map[string]string{"eventgw.io/outcome": outcome.String()}
	if outcome != Injected {
		return resp
	}
	patch, err := Patch(&pod, out)
	if err != nil {
		return deny(resp, http.StatusInternalServerError, "eventgw sidecar injection failed: "+err.Error())
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	return resp
}

// Op is one RFC 6902 operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Patch is the RFC 6902 JSON patch that turns pod into injected (what Inject returned
// for it): the sidecar prepended to the init containers, the socket volume, each other
// container's mount and variable, the status annotation. It is built from those
// additions, not by diffing the two encodings: a diff of lists turns an app's own init
// container into the sidecar plus a re-added copy, and a diff against the typed
// re-encoding of the submitted object would touch fields this package's types do not
// know. Each addition is "add" to the end of a list ("/-"), or of the whole list when
// the pod has none, so the patch applies to the object exactly as submitted.
func Patch(pod, injected *corev1.Pod) ([]byte, error) {
	var ops []Op
	spec, out := &pod.Spec, &injected.Spec
	if len(out.InitContainers) != len(spec.InitContainers)+1 || len(out.Containers) != len(spec.Containers) {
		return nil, errors.New("injected pod does not add exactly one init container")
	}
	if len(spec.InitContainers) == 0 {
		ops = append(ops, Op{"add", "/spec/initContainers", []corev1.Container{out.InitContainers[0]}})
	} else {
		ops = append(ops, Op{"add", "/spec/initContainers/0", out.InitContainers[0]})
	}
	for i := range spec.InitContainers {
		// Prepending the sidecar moved the pod's own init containers one down.
		ops = appendContainerOps(ops, fmt.Sprintf("/spec/initContainers/%d", i+1), &spec.InitContainers[i], &out.InitContainers[i+1])
	}
	for i := range spec.Containers {
		ops = appendContainerOps(ops, fmt.Sprintf("/spec/containers/%d", i), &spec.Containers[i], &out.Containers[i])
	}
	ops = appendList(ops, "/spec/volumes", spec.Volumes, out.Volumes)
	if len(pod.Annotations) == 0 {
		ops = append(ops, Op{"add", "/metadata/annotations", injected.Annotations})
	} else {
		keys := make([]string, 0, len(injected.Annotations))
		for k := range injected.Annotations {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if v, had := pod.Annotations[k]; !had || v != injected.Annotations[k] {
				ops = append(ops, Op{"add", "/metadata/annotations/" + escapePointer(k), injected.Annotations[k]})
			}
		}
	}
	return json.Marshal(ops)
}

func appendContainerOps(ops []Op, path string, c, out *corev1.Container) []Op {
	ops = appendList(ops, path+"/volumeMounts", c.VolumeMounts, out.VolumeMounts)
	return appendList(ops, path+"/env", c.Env, out.Env)
}

// appendList adds the elements out has past the end of in.
func appendList[T any](ops []Op, path string, in, out []T) []Op {
	switch {
	case len(out) <= len(in):
		return ops
	case len(in) == 0:
		return append(ops, Op{"add", path, out})
	}
	for _, v := range out[len(in):] {
		ops = append(ops, Op{"add", path + "/-", v})
	}
	return ops
}

// escapePointer escapes a JSON pointer token (RFC 6901).
func escapePointer(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

func deny(resp *admissionv1.AdmissionResponse, code int32, msg string) *admissionv1.AdmissionResponse {
	resp.Allowed = false
	resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: metav1.StatusReasonInvalid, Message: msg}
	if code >= 500 {
		resp.Result.Reason = metav1.StatusReasonInternalError
	}
	return resp
}

// podName is the pod's name, or its generateName (pods of a ReplicaSet have no name yet).
func podName(req *admissionv1.AdmissionRequest) string {
	if req.Name != "" {
		return req.Name
	}
	var m struct {
		Metadata struct {
			GenerateName string `json:"generateName"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(req.Object.Raw, &m)
	return m.Metadata.GenerateName
}
