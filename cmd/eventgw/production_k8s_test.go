package main

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/inject"
)

var updateManifests = flag.Bool("update", false, "rewrite deploy/kubernetes/injected-app.yaml from sample-app.yaml")

const k8sDir = "../../deploy/kubernetes"

// cert-manager's types are not in k8s.io/api: these are the fields of
// cert-manager.io/v1 that the manifests use, so that a typo is refused like an
// unknown field of a core type.
type (
	cmIssuerRef struct {
		Name string `json:"name"`
		Kind string `json:"kind"`
	}
	cmCertificate struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   cmObjectMeta      `json:"metadata"`
		Spec       cmCertificateSpec `json:"spec"`
	}
	cmObjectMeta struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	}
	cmCertificateSpec struct {
		IsCA        bool        `json:"isCA,omitempty"`
		CommonName  string      `json:"commonName,omitempty"`
		SecretName  string      `json:"secretName"`
		Duration    string      `json:"duration,omitempty"`
		RenewBefore string      `json:"renewBefore,omitempty"`
		DNSNames    []string    `json:"dnsNames,omitempty"`
		Usages      []string    `json:"usages,omitempty"`
		IssuerRef   cmIssuerRef `json:"issuerRef"`
		PrivateKey  *struct {
			Algorithm string `json:"algorithm"`
			Size      int    `json:"size"`
		} `json:"privateKey,omitempty"`
	}
	cmIssuer struct {
		APIVersion string       `json:"apiVersion"`
		Kind       string       `json:"kind"`
		Metadata   cmObjectMeta `json:"metadata"`
		Spec       struct {
			SelfSigned *struct{} `json:"selfSigned,omitempty"`
			CA         *struct {
				SecretName string `json:"secretName"`
			} `json:"ca,omitempty"`
		} `json:"spec"`
	}
)

// manifestTypes maps apiVersion/kind to a new value of its Go type.
var manifestTypes = map[string]func() any{
	"v1/Namespace":      func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount": func() any { return &corev1.ServiceAccount{} },
	"v1/Service":        func() any { return &corev1.Service{} },
	"v1/ConfigMap":      func() any { return &corev1.ConfigMap{} },
	"v1/Secret":         func() any { return &corev1.Secret{} },
	"v1/Pod":            func() any { return &corev1.Pod{} },
	"apps/v1/Deployment": func() any {
		return &appsv1.Deployment{}
	},
	"policy/v1/PodDisruptionBudget":                                func() any { return &policyv1.PodDisruptionBudget{} },
	"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": func() any { return &admissionregistrationv1.MutatingWebhookConfiguration{} },
	"cert-manager.io/v1/Certificate":                               func() any { return &cmCertificate{} },
	"cert-manager.io/v1/Issuer":                                    func() any { return &cmIssuer{} },
}

// k8sObjects decodes every document of every YAML file under deploy/kubernetes
// strictly (unknown or duplicate fields refused) into its type, by file.
func k8sObjects(t *testing.T) map[string][]any {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", k8sDir, err)
	}
	out := map[string][]any{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range inject.SplitYAML(b) {
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal(doc, &tm); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			mk, ok := manifestTypes[tm.APIVersion+"/"+tm.Kind]
			if !ok {
				t.Errorf("%s document %d: %s/%s has no type to check it with", f, i+1, tm.APIVersion, tm.Kind)
				continue
			}
			obj := mk()
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Errorf("%s document %d (%s): %v", filepath.Base(f), i+1, tm.Kind, err)
				continue
			}
			out[filepath.Base(f)] = append(out[filepath.Base(f)], obj)
		}
	}
	return out
}

func find[T any](t *testing.T, objs map[string][]any, file, name string) T {
	t.Helper()
	for _, o := range objs[file] {
		if v, ok := o.(T); ok {
			var meta struct {
				Metadata struct {
					Name string `json:"name"`
				} `json:"metadata"`
			}
			b, _ := yaml.Marshal(v)
			_ = yaml.Unmarshal(b, &meta)
			if meta.Metadata.Name == name {
				return v
			}
		}
	}
	var zero T
	t.Fatalf("%s has no %T named %s", file, zero, name)
	return zero
}

// TestKubernetesManifests decodes every manifest strictly into its k8s.io/api type (or
// cert-manager's fields), and checks that the pieces fit: the webhook configuration
// calls the Service, the Service reaches the webhook's port, the certificate names the
// Service and lands in the Secret the webhook mounts, the webhook's arguments parse as
// `eventgw inject` flags, the sample namespace is one the webhook selects, and the
// connection settings are serve flags.
func TestKubernetesManifests(t *testing.T) {
	objs := k8sObjects(t)
	for _, want := range []string{"namespace.yaml", "webhook.yaml", "webhook-config.yaml", "cert-manager.yaml", "connection.yaml", "sample-app.yaml", "injected-app.yaml"} {
		if len(objs[want]) == 0 {
			t.Errorf("deploy/kubernetes/%s is missing or empty", want)
		}
	}
	mwc := find[*admissionregistrationv1.MutatingWebhookConfiguration](t, objs, "webhook-config.yaml", "eventgw-sidecar-injector")
	svc := find[*corev1.Service](t, objs, "webhook.yaml", "eventgw-webhook")
	dep := find[*appsv1.Deployment](t, objs, "webhook.yaml", "eventgw-webhook")
	cert := find[*cmCertificate](t, objs, "cert-manager.yaml", "eventgw-webhook")
	ns := find[*corev1.Namespace](t, objs, "sample-app.yaml", "healthtech-demo")

	if len(mwc.Webhooks) != 1 {
		t.Fatalf("%d webhooks", len(mwc.Webhooks))
	}
	wh := mwc.Webhooks[0]
	if wh.FailurePolicy == nil || wh.SideEffects == nil || *wh.SideEffects != admissionregistrationv1.SideEffectClassNone ||
		!slices.Contains(wh.AdmissionReviewVersions, "v1") || wh.TimeoutSeconds == nil || *wh.TimeoutSeconds > 10 {
		t.Error("the webhook needs failurePolicy, sideEffects None, admissionReviewVersions v1 and a short timeout")
	}
	if wh.NamespaceSelector == nil || len(wh.NamespaceSelector.MatchLabels)+len(wh.NamespaceSelector.MatchExpressions) == 0 {
		t.Fatal("no namespaceSelector: the webhook would see every namespace's pods, kube-system's too")
	}
	for k, v := range wh.NamespaceSelector.MatchLabels {
		if ns.Labels[k] != v {
			t.Errorf("the sample namespace lacks the label %s=%s the webhook selects", k, v)
		}
	}
	if len(wh.Rules) != 1 || !slices.Equal(wh.Rules[0].Resources, []string{"pods"}) || !slices.Equal(wh.Rules[0].Operations, []admissionregistrationv1.OperationType{admissionregistrationv1.Create}) {
		t.Errorf("rules %+v: want CREATE of pods", wh.Rules)
	}
	ref := wh.ClientConfig.Service
	if ref == nil || ref.Name != svc.Name || ref.Namespace != svc.Namespace || ref.Path == nil || *ref.Path != inject.MutatePath {
		t.Fatalf("clientConfig %+v does not call service %s/%s at %s", ref, svc.Namespace, svc.Name, inject.MutatePath)
	}
	if ref.Port == nil || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != *ref.Port {
		t.Error("the webhook's port is not the Service's")
	}
	if mwc.Annotations["cert-manager.io/inject-ca-from"] != cert.Metadata.Namespace+"/"+cert.Metadata.Name {
		t.Errorf("cert-manager.io/inject-ca-from %q does not name the Certificate", mwc.Annotations["cert-manager.io/inject-ca-from"])
	}
	if host := svc.Name + "." + svc.Namespace + ".svc"; !slices.Contains(cert.Spec.DNSNames, host) {
		t.Errorf("certificate names %v, not %s", cert.Spec.DNSNames, host)
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("the Service does not select the webhook's pods (%s=%s)", k, v)
		}
	}

	// The webhook container: its arguments and environment are `eventgw inject`'s
	// flags, it listens on the port the Service targets, with the certificate's Secret.
	c := dep.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "inject" {
		t.Fatalf("webhook args %q", c.Args)
	}
	var f injectFlags
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	f.register(fs)
	for _, e := range c.Env {
		name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Name, "EVENTGW_"), "_", "-"))
		if fs.Lookup(name) == nil {
			t.Errorf("webhook env %s is no eventgw inject flag", e.Name)
		}
		t.Setenv(e.Name, e.Value)
	}
	if err := config.Parse(fs, c.Args[1:]); err != nil {
		t.Fatalf("webhook args: %v", err)
	}
	if _, err := f.injector(); err != nil {
		t.Errorf("webhook settings: %v", err)
	}
	if f.image != c.Image {
		t.Errorf("sidecar image %s is not the webhook's own %s", f.image, c.Image)
	}
	_, port, _ := net.SplitHostPort(f.addr)
	if len(c.Ports) != 1 || fmt.Sprint(c.Ports[0].ContainerPort) != port || svc.Spec.Ports[0].TargetPort.String() != c.Ports[0].Name {
		t.Errorf("webhook listens on %s; container ports %+v; service targets %s", f.addr, c.Ports, svc.Spec.Ports[0].TargetPort.String())
	}
	var tlsSecret string
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.Secret != nil {
			tlsSecret = v.Secret.SecretName
		}
	}
	if tlsSecret != cert.Spec.SecretName || !strings.HasPrefix(f.certFile, c.VolumeMounts[0].MountPath+"/") {
		t.Errorf("webhook reads %s from secret %q; the certificate goes to %q", f.certFile, tlsSecret, cert.Spec.SecretName)
	}
	checkHardened(t, "webhook", dep.Spec.Template.Spec, c)

	// Connection settings: each key is a serve flag's variable.
	cm := find[*corev1.ConfigMap](t, objs, "connection.yaml", f.configMap)
	sec := find[*corev1.Secret](t, objs, "connection.yaml", f.secret)
	serveFS := inject.ServeFlags()
	keys := map[string]bool{}
	for k := range cm.Data {
		keys[k] = true
	}
	for k := range sec.StringData {
		keys[k] = true
	}
	for k := range keys {
		if serveFS.Lookup(strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "EVENTGW_"), "_", "-"))) == nil {
			t.Errorf("connection setting %s is no eventgw serve flag", k)
		}
	}
	for _, k := range []string{"EVENTGW_KAFKA_BROKERS", "EVENTGW_SCHEMA_REGISTRY_URL"} {
		if cm.Data[k] == "" {
			t.Errorf("the ConfigMap lacks %s", k)
		}
	}
	if sec.StringData["EVENTGW_DATABASE_URL"] == "" || cm.Data["EVENTGW_DATABASE_URL"] != "" {
		t.Error("the database URL (it holds a password) belongs in the Secret, not the ConfigMap")
	}
	if cm.Namespace != ns.Name || sec.Namespace != ns.Name {
		t.Error("the connection settings must be in the sample app's namespace (envFrom reads the pod's namespace)")
	}
}

// checkHardened: non-root, no privilege escalation, read-only root, no capabilities.
func checkHardened(t *testing.T, what string, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	psc, sc := spec.SecurityContext, c.SecurityContext
	nonRoot := (psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot) || (sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot)
	if !nonRoot || sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s container %s is not hardened: %+v", what, c.Name, sc)
	}
}

// TestInjectedManifest: deploy/kubernetes/injected-app.yaml, the sample app with the
// sidecar for clusters without the webhook, is what `eventgw inject --render` makes of
// sample-app.yaml with the webhook's settings (go test -update rewrites it).
func TestInjectedManifest(t *testing.T) {
	objs := k8sObjects(t)
	dep := find[*appsv1.Deployment](t, objs, "webhook.yaml", "eventgw-webhook")
	var args []string
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		args = append(args, "--"+strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Name, "EVENTGW_"), "_", "-"))+"="+e.Value)
	}
	var stdout, stderr bytes.Buffer
	if rc := runInject(append(args, "--render", filepath.Join(k8sDir, "sample-app.yaml")), &stdout, &stderr); rc != 0 {
		t.Fatalf("eventgw inject --render: %d\n%s", rc, stderr.String())
	}
	path := filepath.Join(k8sDir, "injected-app.yaml")
	if *updateManifests {
		header := "# GENERATED by `eventgw inject --sidecar-image ghcr.io/eventgw/eventgw:0.1.0 --render sample-app.yaml`\n" +
			"# (go test ./cmd/eventgw -run TestInjectedManifest -update): the sample app with the sidecar\n" +
			"# added, for clusters without the webhook. Apply it instead of sample-app.yaml, with\n" +
			"# connection.yaml; it needs no webhook, cert-manager or namespace label.\n"
		if err := os.WriteFile(path, append([]byte(header), stdout.Bytes()...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := find[*appsv1.Deployment](t, k8sObjects(t), "injected-app.yaml", "prm-service")
	var got appsv1.Deployment
	docs := inject.SplitYAML(stdout.Bytes())
	if err := yaml.UnmarshalStrict(docs[len(docs)-1], &got); err != nil {
		t.Fatal(err)
	}
	if !apiequality.Semantic.DeepEqual(&got, want) {
		t.Fatalf("injected-app.yaml is not what inject --render makes of sample-app.yaml (go test ./cmd/eventgw -run TestInjectedManifest -update):\n%s", stdout.String())
	}
	spec := want.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != inject.ContainerName {
		t.Fatal("no sidecar in injected-app.yaml")
	}
	checkHardened(t, "sidecar", spec, spec.InitContainers[0])
	checkHardened(t, "app", spec, spec.Containers[0])
	// The app runs as the sidecar's user, so it can open the sidecar's socket.
	if *spec.InitContainers[0].SecurityContext.RunAsUser != *spec.SecurityContext.RunAsUser {
		t.Error("sidecar and app run as different users: the app could not open the socket")
	}
}
