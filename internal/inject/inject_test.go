package inject

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/server"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

const testImage = "ghcr.io/eventgw/eventgw:0.1.0"

func testInjector(t *testing.T, serveFlags func() *flag.FlagSet) *Injector {
	t.Helper()
	in, err := New(Config{
		Image: testImage, ConnectionConfigMap: "eventgw-connection", ConnectionSecret: "eventgw-credentials",
		Resources: DefaultResources(), ServeFlags: serveFlags,
	})
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// golden is what a fixture's review is answered with, in a readable form.
type golden struct {
	Allowed bool            `json:"allowed"`
	Code    int32           `json:"code,omitempty"`
	Message string          `json:"message,omitempty"`
	Outcome string          `json:"outcome,omitempty"`
	Patch   json.RawMessage `json:"patch,omitempty"`
}

// TestWebhookGolden posts every testdata/*.review.json to the webhook's handler and
// compares its answer with <name>.golden.json (go test -update rewrites them). A patch
// is then applied to the submitted pod and the result decoded strictly back into a
// corev1.Pod and checked: the sidecar is there as a native sidecar with its probes,
// security and socket, and reviewing the patched pod again changes nothing.
func TestWebhookGolden(t *testing.T) {
	in := testInjector(t, nil)
	srv := httptest.NewServer(in.Handler(zap.NewNop()))
	defer srv.Close()
	files, _ := filepath.Glob("testdata/*.review.json")
	if len(files) < 10 {
		t.Fatalf("%d fixtures in testdata/", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".review.json")
		t.Run(name, func(t *testing.T) {
			reqBody, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			review := post(t, srv.URL, reqBody)
			var sent admissionv1.AdmissionReview
			if err := json.Unmarshal(reqBody, &sent); err != nil {
				t.Fatal(err)
			}
			resp := review.Response
			if resp == nil || resp.UID != sent.Request.UID || review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" {
				t.Fatalf("response is not an AdmissionReview answering uid %s: %+v", sent.Request.UID, review)
			}
			got := golden{Allowed: resp.Allowed, Outcome: resp.AuditAnnotations["eventgw.io/outcome"]}
			if resp.Result != nil {
				got.Code, got.Message = resp.Result.Code, resp.Result.Message
			}
			if resp.Patch != nil {
				if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
					t.Fatalf("patch type %v", resp.PatchType)
				}
				var ind bytes.Buffer
				if err := json.Indent(&ind, resp.Patch, "  ", "  "); err != nil {
					t.Fatal(err)
				}
				got.Patch = ind.Bytes()
			}
			compareGolden(t, filepath.Join("testdata", name+".golden.json"), got)

			if strings.HasPrefix(name, "deny-") {
				if resp.Allowed {
					t.Fatal("a deny- fixture was admitted")
				}
				// The refusal names what is wrong, so that a user can fix it.
				if !strings.Contains(resp.Result.Message, "eventgw.io/") && !strings.Contains(resp.Result.Message, "cannot be added") {
					t.Errorf("refusal names no annotation or clash: %s", resp.Result.Message)
				}
				return
			}
			if !resp.Allowed {
				t.Fatalf("refused: %s", resp.Result.Message)
			}
			if !strings.HasPrefix(name, "inject-") {
				if resp.Patch != nil {
					t.Fatalf("a pod that is not to be injected was patched: %s", resp.Patch)
				}
				return
			}
			pod := applyPatch(t, sent.Request.Object.Raw, resp.Patch)
			checkInjected(t, pod)
			// The patch, applied to the object as submitted, gives what Inject built.
			var orig corev1.Pod
			if err := json.Unmarshal(sent.Request.Object.Raw, &orig); err != nil {
				t.Fatal(err)
			}
			want, _, err := in.Inject(&orig)
			if err != nil {
				t.Fatal(err)
			}
			if !apiequality.Semantic.DeepEqual(want, pod) {
				w, _ := json.MarshalIndent(want, "", "  ")
				g, _ := json.MarshalIndent(pod, "", "  ")
				t.Errorf("patched pod differs from the injected one:\n--- patched\n%s\n--- injected\n%s", g, w)
			}
			// Idempotent: the injected pod, reviewed again, is left alone.
			again := sent
			again.Request.Object.Raw, _ = json.Marshal(pod)
			b, _ := json.Marshal(again)
			if r := post(t, srv.URL, b).Response; !r.Allowed || r.Patch != nil {
				t.Errorf("second review of the injected pod: allowed=%v patch=%s", r.Allowed, r.Patch)
			}
		})
	}
}

func post(t *testing.T, url string, body []byte) admissionv1.AdmissionReview {
	t.Helper()
	res, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("webhook answered %s: %s", res.Status, b)
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &review); err != nil {
		t.Fatal(err)
	}
	return review
}

func compareGolden(t *testing.T, path string, got golden) {
	t.Helper()
	b, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/inject -update to write it)", err)
	}
	if !bytes.Equal(want, b) {
		t.Errorf("%s differs (go test ./internal/inject -update rewrites it):\n--- got\n%s\n--- want\n%s", path, b, want)
	}
}

// applyPatch applies an RFC 6902 patch to the object as submitted (not as this
// package re-encodes it) and decodes the result strictly into a Pod.
func applyPatch(t *testing.T, raw, patch []byte) *corev1.Pod {
	t.Helper()
	p, err := jsonpatchapply.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(out, &pod); err != nil {
		t.Fatalf("patched pod: %v\n%s", err, out)
	}
	return &pod
}

// checkInjected checks what every injected pod must have.
func checkInjected(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	if len(pod.Spec.InitContainers) == 0 || pod.Spec.InitContainers[0].Name != ContainerName {
		t.Fatalf("the sidecar is not the first init container: %+v", pod.Spec.InitContainers)
	}
	if hasContainerIn(pod.Spec.Containers, ContainerName) {
		t.Error("the sidecar is also a regular container")
	}
	sc := pod.Spec.InitContainers[0]
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Error("the sidecar is not a native sidecar (restartPolicy Always)")
	}
	s := sc.SecurityContext
	if s == nil || s.RunAsNonRoot == nil || !*s.RunAsNonRoot || s.RunAsUser == nil || *s.RunAsUser == 0 ||
		s.ReadOnlyRootFilesystem == nil || !*s.ReadOnlyRootFilesystem || s.AllowPrivilegeEscalation == nil || *s.AllowPrivilegeEscalation ||
		s.Capabilities == nil || !slices.Equal(s.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(s.Capabilities.Add) != 0 {
		t.Errorf("sidecar security context: %+v", s)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := sc.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := sc.Resources.Limits[r]; !ok {
			t.Errorf("no %s limit", r)
		}
	}
	if sc.StartupProbe == nil || sc.LivenessProbe == nil || sc.ReadinessProbe == nil {
		t.Fatal("a probe is missing")
	}
	checkServes(t, sc)
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == SocketVolume {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.EmptyDir == nil {
		t.Fatal("no emptyDir for the socket")
	}
	for _, c := range append(slices.Clone(pod.Spec.InitContainers), pod.Spec.Containers...) {
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == SocketVolume && m.MountPath == SocketDir }) {
			t.Errorf("container %s does not mount the socket folder", c.Name)
		}
		if c.Name != ContainerName && !slices.Contains(c.Env, corev1.EnvVar{Name: SocketEnv, Value: SocketPath}) {
			t.Errorf("container %s lacks %s=%s", c.Name, SocketEnv, SocketPath)
		}
	}
	if pod.Annotations[AnnotationStatus] != StatusInjected {
		t.Error("no status annotation")
	}
}

// checkServes parses the sidecar's command line with `eventgw serve`'s own flags (and
// its environment as `serve` would read it) and checks that the probes ask what that
// sidecar serves: its --http-addr port, the paths internal/server answers, and the
// socket in --grpc-addr.
func checkServes(t *testing.T, sc corev1.Container) {
	t.Helper()
	if len(sc.Args) == 0 || sc.Args[0] != "serve" {
		t.Fatalf("sidecar args %q do not run serve", sc.Args)
	}
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	for _, e := range sc.Env {
		if strings.HasPrefix(e.Name, "EVENTGW_") && e.Value != "" {
			t.Setenv(e.Name, e.Value)
		}
	}
	if err := config.Parse(fs, sc.Args[1:]); err != nil {
		t.Fatalf("serve does not take the sidecar's arguments %q: %v", sc.Args, err)
	}
	if cfg.GRPCAddr != "unix://"+SocketPath {
		t.Errorf("--grpc-addr %q, want the socket %s", cfg.GRPCAddr, SocketPath)
	}
	_, port, err := net.SplitHostPort(cfg.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if host, _, _ := net.SplitHostPort(cfg.HTTPAddr); host == "127.0.0.1" || host == "localhost" {
		t.Errorf("--http-addr %q is loopback: the kubelet probes the pod IP", cfg.HTTPAddr)
	}
	var defaults config.Config
	dfs := flag.NewFlagSet("serve", flag.ContinueOnError)
	defaults.Register(dfs)
	if _, dport, _ := net.SplitHostPort(defaults.HTTPAddr); dport != port {
		t.Errorf("sidecar HTTP port %s is not serve's default %s", port, dport)
	}
	if len(sc.Ports) != 1 || sc.Ports[0].Name != HTTPPortName || port != itoa(sc.Ports[0].ContainerPort) {
		t.Errorf("container ports %+v do not declare the HTTP port %s", sc.Ports, port)
	}
	// The handler `eventgw serve` puts on --http-addr, with nothing to check: every
	// probe path must answer 200 from it.
	h := server.NewHTTP(prometheus.NewRegistry(), server.Readiness{}).Handler
	for _, p := range []*corev1.Probe{sc.StartupProbe, sc.LivenessProbe, sc.ReadinessProbe} {
		g := p.HTTPGet
		if g == nil || g.Port.String() != port || g.Scheme != corev1.URISchemeHTTP {
			t.Errorf("probe %+v is not an HTTP GET on port %s", p, port)
			continue
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, g.Path, nil))
		if rec.Code != http.StatusOK {
			t.Errorf("serve answers %s with %d", g.Path, rec.Code)
		}
	}
	if sc.LivenessProbe.HTTPGet.Path != HealthzPath || sc.StartupProbe.HTTPGet.Path != HealthzPath || sc.ReadinessProbe.HTTPGet.Path != ReadyzPath {
		t.Error("liveness and startup must ask /healthz (up while a dependency is down), readiness /readyz")
	}
	if sc.ReadinessProbe.TimeoutSeconds <= 3 {
		t.Error("/readyz takes up to 3 s to check the dependencies: the probe's timeout must be longer")
	}
}

func itoa(n int32) string { b, _ := json.Marshal(n); return string(b) }

func hasContainerIn(cs []corev1.Container, name string) bool {
	return slices.ContainsFunc(cs, func(c corev1.Container) bool { return c.Name == name })
}

// withFlags is this build's serve flags plus extra string flags: a later build's
// (those this build has are kept as they are).
func withFlags(extra ...string) func() *flag.FlagSet {
	return func() *flag.FlagSet {
		fs := ServeFlags()
		for _, n := range extra {
			if fs.Lookup(n) == nil { // this build may have it already
				fs.String(n, "", "")
			}
		}
		return fs
	}
}

func annotatedPod(ann map[string]string) *corev1.Pod {
	a := map[string]string{AnnotationInject: "true"}
	for k, v := range ann {
		a[k] = v
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "prm-", Annotations: a, Labels: map[string]string{"app": "prm-service"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "prm:1"}}},
	}
}

// TestTenantsAnnotation: the allow-list reaches the sidecar as --tenants (lowercase,
// without repeats) when serve has that flag, and a pod asking for an allow-list that
// this build's sidecar cannot enforce is refused rather than run open.
func TestTenantsAnnotation(t *testing.T) {
	const ann = "6F1C2A9E-8D1B-4A4E-9F0E-2B9C1D3E4F5A, 0b6a9c1e-3d2f-4e5a-8b7c-9d0e1f2a3b4c,6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a"
	const want = "--tenants=6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a,0b6a9c1e-3d2f-4e5a-8b7c-9d0e1f2a3b4c"
	if ServeFlags().Lookup("tenants") == nil {
		_, _, err := testInjector(t, nil).Inject(annotatedPod(map[string]string{AnnotationTenants: ann}))
		var ae *AnnotationError
		if !errors.As(err, &ae) || ae.Annotation != AnnotationTenants || !strings.Contains(err.Error(), "--tenants") {
			t.Errorf("without --tenants in serve, an allow-list must refuse the pod naming %s: %v", AnnotationTenants, err)
		}
	}
	in := testInjector(t, withFlags("tenants"))
	out, outcome, err := in.Inject(annotatedPod(map[string]string{AnnotationTenants: ann}))
	if err != nil || outcome != Injected {
		t.Fatalf("%v %v", outcome, err)
	}
	if args := out.Spec.InitContainers[0].Args; !slices.Contains(args, want) || !slices.Contains(args, "--service-name=prm-service") {
		t.Errorf("args %q lack %s or the service name from the app label", args, want)
	}
}

// TestLoopbackListener: when serve can listen on loopback TCP beside the socket, the
// sidecar does, and an app container using that port is refused.
func TestLoopbackListener(t *testing.T) {
	in := testInjector(t, withFlags(loopbackFlag))
	out, _, err := in.Inject(annotatedPod(nil))
	if err != nil {
		t.Fatal(err)
	}
	if args := out.Spec.InitContainers[0].Args; !slices.Contains(args, "--"+loopbackFlag+"="+LoopbackGRPCAddr) {
		t.Errorf("args %q lack the loopback listener", args)
	}
	pod := annotatedPod(nil)
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 50051}}
	var ce *ConflictError
	if _, _, err := in.Inject(pod); !errors.As(err, &ce) {
		t.Errorf("port 50051 clash not refused: %v", err)
	}
	if _, _, err := testInjector(t, nil).Inject(pod); ServeFlags().Lookup(loopbackFlag) == nil && err != nil {
		t.Errorf("without a loopback listener, port 50051 is the app's: %v", err)
	}
}

// TestNewRefusesBadConfig: the webhook does not start with settings that would make
// every sidecar broken.
func TestNewRefusesBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no image":       {},
		"pull policy":    {Image: testImage, ImagePullPolicy: "Sometimes"},
		"request>limit":  {Image: testImage, Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")}, Limits: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}}},
		"no --http-addr": {Image: testImage, ServeFlags: func() *flag.FlagSet { return flag.NewFlagSet("x", flag.ContinueOnError) }},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestServeTLS runs the webhook over TLS with a certificate made here, answers a
// review, then picks up a renewed certificate without a restart.
func TestServeTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	pool := x509.NewCertPool()
	writeCert := func(serial int64) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "eventgw-webhook.eventgw-system.svc"},
			DNSNames: []string{"eventgw-webhook.eventgw-system.svc"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			IsCA: true, BasicConstraintsValid: true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		c, _ := x509.ParseCertificate(der)
		pool.AddCert(c)
		_ = os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
		_ = os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
		// A renewal lands with a later modification time.
		mt := time.Now().Add(time.Duration(serial) * time.Second)
		_ = os.Chtimes(certFile, mt, mt)
		_ = os.Chtimes(keyFile, mt, mt)
	}
	writeCert(1)
	in := testInjector(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- in.Serve(ctx, ServeOptions{Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, Log: zap.NewNop(), Ready: func(a string) { addrc <- a }})
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-done:
		t.Fatal(err)
	}
	serial := func() int64 {
		t.Helper()
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
		body, _ := os.ReadFile("testdata/inject-minimal.review.json")
		res, err := c.Post("https://"+addr+MutatePath, "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var review admissionv1.AdmissionReview
		if err := json.NewDecoder(res.Body).Decode(&review); err != nil || review.Response == nil || !review.Response.Allowed || review.Response.Patch == nil {
			t.Fatalf("review over TLS: %v %+v", err, review.Response)
		}
		return res.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if s := serial(); s != 1 {
		t.Fatalf("serial %d", s)
	}
	writeCert(2)
	if s := serial(); s != 2 {
		t.Errorf("renewed certificate not picked up: serial %d", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// TestRender: Pods and workloads get the sidecar, other documents pass through, a bad
// annotation names its document, and rendering an injected manifest changes nothing.
func TestRender(t *testing.T) {
	in := testInjector(t, nil)
	src := `# comment
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {a: b}
---
apiVersion: v1
kind: Pod
metadata:
  name: one
  annotations: {eventgw.io/inject: "true", eventgw.io/service-name: one}
spec:
  containers: [{name: app, image: app:1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: two}
spec:
  serviceName: two
  selector: {matchLabels: {app: two}}
  template:
    metadata:
      labels: {app: two}
      annotations: {eventgw.io/inject: "true"}
    spec:
      containers: [{name: app, image: app:1}]
`
	out, err := in.Render([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	docs := SplitYAML(out)
	if len(docs) != 3 || !strings.Contains(string(docs[0]), "kind: ConfigMap") || strings.Contains(string(docs[0]), "# comment") {
		t.Fatalf("documents: %q", docs)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(docs[1], &pod); err != nil {
		t.Fatal(err)
	}
	checkInjected(t, &pod)
	var ss appsv1.StatefulSet
	if err := yaml.UnmarshalStrict(docs[2], &ss); err != nil {
		t.Fatal(err)
	}
	checkInjected(t, &corev1.Pod{ObjectMeta: ss.Spec.Template.ObjectMeta, Spec: ss.Spec.Template.Spec})
	if !slices.Contains(ss.Spec.Template.Spec.InitContainers[0].Args, "--service-name=two") {
		t.Errorf("service name not from the template's app label: %q", ss.Spec.Template.Spec.InitContainers[0].Args)
	}
	again, err := in.Render(out)
	if err != nil || string(again) != string(out) {
		t.Errorf("rendering twice changed the manifest (%v)", err)
	}
	_, err = in.Render([]byte(strings.Replace(src, `eventgw.io/service-name: one`, `eventgw.io/service-name: "o n e"`, 1)))
	if err == nil || !strings.Contains(err.Error(), "document 2") || !strings.Contains(err.Error(), AnnotationServiceName) {
		t.Errorf("bad annotation: %v", err)
	}
}
