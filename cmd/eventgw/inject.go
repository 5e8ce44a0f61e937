package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/inject"
)

// injectFlags are the settings of `eventgw inject`.
type injectFlags struct {
	addr, certFile, keyFile string
	render                  string
	image, pullPolicy       string
	configMap, secret       string
	cpuRequest, cpuLimit    string
	memRequest, memLimit    string
	logFormat, logLevel     string
}

func (f *injectFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "addr", ":8443", "HTTPS listen address of the webhook (POST /mutate, GET /healthz)")
	fs.StringVar(&f.certFile, "tls-cert", "", "webhook serving certificate, PEM (re-read when it changes; required unless --render)")
	fs.StringVar(&f.keyFile, "tls-key", "", "webhook serving key, PEM (required unless --render)")
	fs.StringVar(&f.render, "render", "", "instead of serving: read this manifest file (- for stdin), inject the sidecar into its Pods, Deployments, StatefulSets and DaemonSets and print it (for clusters without the webhook)")
	fs.StringVar(&f.image, "sidecar-image", "", "image of the injected sidecar, the webhook's own version (required)")
	fs.StringVar(&f.pullPolicy, "sidecar-pull-policy", "IfNotPresent", "imagePullPolicy of the sidecar: Always, IfNotPresent or Never")
	fs.StringVar(&f.configMap, "connection-config-map", "eventgw-connection", "ConfigMap in the pod's namespace with the sidecar's EVENTGW_* connection settings (envFrom; empty: none)")
	fs.StringVar(&f.secret, "connection-secret", "eventgw-credentials", "Secret in the pod's namespace with the sidecar's EVENTGW_* secrets such as EVENTGW_DATABASE_URL (envFrom; empty: none)")
	fs.StringVar(&f.cpuRequest, "sidecar-cpu-request", "100m", "sidecar CPU request (annotation eventgw.io/cpu-request overrides)")
	fs.StringVar(&f.cpuLimit, "sidecar-cpu-limit", "1", "sidecar CPU limit (eventgw.io/cpu-limit)")
	fs.StringVar(&f.memRequest, "sidecar-memory-request", "128Mi", "sidecar memory request (eventgw.io/memory-request)")
	fs.StringVar(&f.memLimit, "sidecar-memory-limit", "512Mi", "sidecar memory limit, also its GOMEMLIMIT (eventgw.io/memory-limit)")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
}

func (f *injectFlags) injector() (*inject.Injector, error) {
	res := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, q := range []struct {
		flag, v string
		list    corev1.ResourceList
		name    corev1.ResourceName
	}{
		{"--sidecar-cpu-request", f.cpuRequest, res.Requests, corev1.ResourceCPU},
		{"--sidecar-cpu-limit", f.cpuLimit, res.Limits, corev1.ResourceCPU},
		{"--sidecar-memory-request", f.memRequest, res.Requests, corev1.ResourceMemory},
		{"--sidecar-memory-limit", f.memLimit, res.Limits, corev1.ResourceMemory},
	} {
		if q.v == "" {
			continue
		}
		qty, err := resource.ParseQuantity(q.v)
		if err != nil || qty.Sign() <= 0 {
			return nil, fmt.Errorf("%s: %q is not a positive quantity", q.flag, q.v)
		}
		q.list[q.name] = qty
	}
	if f.image == "" {
		return nil, errors.New("--sidecar-image (EVENTGW_SIDECAR_IMAGE) is required")
	}
	return inject.New(inject.Config{
		Image: f.image, ImagePullPolicy: corev1.PullPolicy(f.pullPolicy),
		ConnectionConfigMap: f.configMap, ConnectionSecret: f.secret, Resources: res,
	})
}

const injectUsage = `Usage: eventgw inject [flags]

Serves the mutating admission webhook that adds the eventgw sidecar to pods annotated
eventgw.io/inject: "true" (see deploy/kubernetes/). With --render FILE it prints FILE's
workloads with the sidecar added instead, for clusters without the webhook.
Every flag can also be set as EVENTGW_<FLAG>.

inject flags:
`

func runInject(args []string, stdout, stderr io.Writer) int {
	var f injectFlags
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	f.register(fs)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, injectUsage); fs.PrintDefaults() }
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	in, err := f.injector()
	if err != nil {
		fmt.Fprintln(stderr, "eventgw inject:", err)
		return 2
	}
	if f.render != "" {
		var b []byte
		if f.render == "-" {
			b, err = io.ReadAll(os.Stdin)
		} else {
			b, err = os.ReadFile(f.render)
		}
		if err == nil {
			b, err = in.Render(b)
		}
		if err != nil {
			fmt.Fprintln(stderr, "eventgw inject:", err)
			return 1
		}
		_, _ = stdout.Write(b)
		return 0
	}
	if f.certFile == "" || f.keyFile == "" {
		fmt.Fprintln(stderr, "eventgw inject: --tls-cert and --tls-key are required: the API server calls webhooks over HTTPS only")
		return 2
	}
	log, err := newLogger(f.logFormat, f.logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "eventgw inject:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := in.Serve(ctx, inject.ServeOptions{Addr: f.addr, CertFile: f.certFile, KeyFile: f.keyFile, Log: log}); err != nil {
		log.Error("inject stopped", zap.Error(err))
		return 1
	}
	return 0
}
