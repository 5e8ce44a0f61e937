package inject

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/eventgw/eventgw/internal/config"
)

// What the injected sidecar looks like from the pod.
const (
	// ContainerName is the sidecar's container; a pod that has one is left alone.
	ContainerName = "eventgw"
	// SocketVolume is the emptyDir shared by the sidecar and the pod's containers.
	SocketVolume = "eventgw-socket"
	// SocketDir is where SocketVolume is mounted in every container.
	SocketDir = "/var/run/eventgw"
	// SocketPath is the sidecar's gRPC unix socket.
	SocketPath = SocketDir + "/eventgw.sock"
	// SocketEnv is the variable that gives SocketPath to the app containers.
	SocketEnv = "EVENTGW_SOCKET"
	// LoopbackGRPCAddr is the loopback TCP gRPC address, served beside the socket when
	// the sidecar has a second listener flag (loopbackFlag).
	LoopbackGRPCAddr = "127.0.0.1:50051"
	loopbackGRPCPort = 50051
	// HTTPPortName names the sidecar's /metrics, /healthz and /readyz port.
	HTTPPortName = "eventgw-http"
	// DefaultUID is the sidecar's user (distroless "nonroot") unless the pod sets one.
	DefaultUID = 65532
	// StatusInjected is AnnotationStatus on an injected pod.
	StatusInjected = "injected"
	// HealthzPath and ReadyzPath are the sidecar's probe paths (internal/server).
	HealthzPath = "/healthz"
	ReadyzPath  = "/readyz"
)

// loopbackFlag is the serve flag that would add a loopback TCP gRPC listener beside
// the unix socket. The injector uses it when this build's serve has it.
const loopbackFlag = "grpc-loopback-addr"

// Config is how the webhook builds sidecars.
type Config struct {
	// Image is the sidecar image (keep it at the webhook's own version).
	Image           string
	ImagePullPolicy corev1.PullPolicy
	// ConnectionConfigMap and ConnectionSecret, in the pod's namespace, hold the
	// EVENTGW_* connection settings (brokers, registry URL, database URL); the sidecar
	// takes them with envFrom. Empty: not used.
	ConnectionConfigMap string
	ConnectionSecret    string
	// Resources are the sidecar's default requests and limits.
	Resources corev1.ResourceRequirements
	// ServeFlags returns a fresh `eventgw serve` flag set; the sidecar's arguments
	// must parse with it. Nil: this build's (config.Config.Register).
	ServeFlags func() *flag.FlagSet
}

// DefaultResources are the sidecar's requests and limits without annotations.
func DefaultResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("512Mi")},
	}
}

// ServeFlags is this build's `eventgw serve` flag set.
func ServeFlags() *flag.FlagSet {
	var c config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.Register(fs)
	return fs
}

// HTTPPort is the port of the serve flags' default --http-addr (9090): the sidecar
// serves /metrics, /healthz and /readyz there on every interface, so that the kubelet
// (probes) and Prometheus reach it on the pod's IP.
func HTTPPort(fs *flag.FlagSet) (int32, error) {
	f := fs.Lookup("http-addr")
	if f == nil {
		return 0, errors.New("serve has no --http-addr")
	}
	_, p, err := net.SplitHostPort(f.DefValue)
	if err != nil {
		return 0, fmt.Errorf("--http-addr default %q: %w", f.DefValue, err)
	}
	n, err := strconv.ParseInt(p, 10, 32)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("--http-addr default %q has no port", f.DefValue)
	}
	return int32(n), nil
}

// Injector adds the sidecar to pods.
type Injector struct {
	cfg      Config
	httpPort int32
	loopback bool // serve has loopbackFlag
	tenants  bool // serve has --tenants
}

// New checks cfg and returns an Injector.
func New(cfg Config) (*Injector, error) {
	if cfg.Image == "" {
		return nil, errors.New("the sidecar image is required")
	}
	if cfg.ImagePullPolicy == "" {
		cfg.ImagePullPolicy = corev1.PullIfNotPresent
	}
	switch cfg.ImagePullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return nil, fmt.Errorf("image pull policy %q: want Always, IfNotPresent or Never", cfg.ImagePullPolicy)
	}
	if cfg.ServeFlags == nil {
		cfg.ServeFlags = ServeFlags
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := cfg.Resources.Requests[r]
		lim, hasLim := cfg.Resources.Limits[r]
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			return nil, fmt.Errorf("default %s request %s exceeds its limit %s", r, req.String(), lim.String())
		}
	}
	fs := cfg.ServeFlags()
	port, err := HTTPPort(fs)
	if err != nil {
		return nil, err
	}
	return &Injector{cfg: cfg, httpPort: port, loopback: fs.Lookup(loopbackFlag) != nil, tenants: fs.Lookup("tenants") != nil}, nil
}

// Outcome is what Inject did with a pod.
type Outcome int

const (
	// Injected: the sidecar was added.
	Injected Outcome = iota
	// NotRequested: no eventgw.io/inject: "true".
	NotRequested
	// AlreadyInjected: the pod has the sidecar (or the webhook's mark) already.
	AlreadyInjected
)

func (o Outcome) String() string {
	switch o {
	case Injected:
		return "injected"
	case NotRequested:
		return "not requested"
	case AlreadyInjected:
		return "already injected"
	default:
		return "outcome(" + strconv.Itoa(int(o)) + ")"
	}
}

// Inject returns pod with the sidecar added, or pod itself (unchanged) when it did not
// ask for one or has one. The error is an *AnnotationError or a *ConflictError: the
// pod must be refused.
func (in *Injector) Inject(pod *corev1.Pod) (*corev1.Pod, Outcome, error) {
	want, err := wantsInjection(pod.Annotations)
	if err != nil || !want {
		return pod, NotRequested, err
	}
	if pod.Annotations[AnnotationStatus] != "" || hasContainer(pod, ContainerName) {
		return pod, AlreadyInjected, nil
	}
	s, err := parseSettings(pod, in.cfg.Resources)
	if err != nil {
		return pod, NotRequested, err
	}
	if err := in.checkConflicts(pod); err != nil {
		return pod, NotRequested, err
	}
	sidecar, err := in.sidecar(pod, s)
	if err != nil {
		return pod, NotRequested, err
	}

	out := pod.DeepCopy()
	out.Spec.InitContainers = append([]corev1.Container{sidecar}, out.Spec.InitContainers...)
	out.Spec.Volumes = append(out.Spec.Volumes, corev1.Volume{
		Name:         SocketVolume,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory, SizeLimit: ptr(resource.MustParse("1Mi"))}},
	})
	for _, cs := range [][]corev1.Container{out.Spec.InitContainers[1:], out.Spec.Containers} {
		for i := range cs {
			c := &cs[i]
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: SocketVolume, MountPath: SocketDir})
			if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == SocketEnv }) {
				c.Env = append(c.Env, corev1.EnvVar{Name: SocketEnv, Value: SocketPath})
			}
		}
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[AnnotationStatus] = StatusInjected
	return out, Injected, nil
}

// checkConflicts refuses pods whose containers use the sidecar's ports, volume, mount
// path or socket variable for something else.
func (in *Injector) checkConflicts(pod *corev1.Pod) error {
	ports := []int32{in.httpPort}
	if in.loopback {
		ports = append(ports, loopbackGRPCPort)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == SocketVolume {
			return &ConflictError{fmt.Sprintf("the pod already has a volume named %s", SocketVolume)}
		}
	}
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, p := range c.Ports {
				if slices.Contains(ports, p.ContainerPort) {
					return &ConflictError{fmt.Sprintf("container %s uses port %d, which the sidecar listens on in the pod's network namespace", c.Name, p.ContainerPort)}
				}
			}
			for _, m := range c.VolumeMounts {
				if m.MountPath == SocketDir || strings.HasPrefix(m.MountPath, SocketDir+"/") {
					return &ConflictError{fmt.Sprintf("container %s mounts %s at %s, where the sidecar's socket volume goes", c.Name, m.Name, m.MountPath)}
				}
			}
			for _, e := range c.Env {
				if e.Name == SocketEnv && (e.Value != SocketPath || e.ValueFrom != nil) {
					return &ConflictError{fmt.Sprintf("container %s sets %s to something other than the sidecar's socket %s", c.Name, SocketEnv, SocketPath)}
				}
			}
		}
	}
	return nil
}

// sidecar builds the sidecar container for a pod with settings s.
func (in *Injector) sidecar(pod *corev1.Pod, s settings) (corev1.Container, error) {
	args := []string{"serve", "--grpc-addr=unix://" + SocketPath}
	if in.loopback {
		args = append(args, "--"+loopbackFlag+"="+LoopbackGRPCAddr)
	}
	args = append(args, fmt.Sprintf("--http-addr=:%d", in.httpPort))
	if s.serviceName != "" {
		args = append(args, "--service-name="+s.serviceName)
	}
	if s.topicPrefix != "" {
		args = append(args, "--topic-prefix="+s.topicPrefix)
	}
	if s.logLevel != "" {
		args = append(args, "--log-level="+s.logLevel)
	}
	if len(s.tenants) > 0 {
		if !in.tenants {
			const why = "cannot be enforced: this eventgw build's serve has no --tenants flag (use a newer eventgw)"
			return corev1.Container{}, &AnnotationError{AnnotationTenants, pod.Annotations[AnnotationTenants], why}
		}
		args = append(args, "--tenants="+strings.Join(s.tenants, ","))
	}
	// The same check `eventgw serve` makes first: a sidecar that would stop at its
	// command line is never injected.
	fs := in.cfg.ServeFlags()
	if err := fs.Parse(args[1:]); err != nil {
		return corev1.Container{}, fmt.Errorf("the sidecar's arguments %q do not parse: %w", args, err)
	}

	uid := int64(DefaultUID)
	// The socket is the sidecar's file: an app running as the pod's user reaches it
	// when the sidecar runs as that user too.
	if sc := pod.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil && *sc.RunAsUser != 0 {
		uid = *sc.RunAsUser
	}
	var env []corev1.EnvVar
	if _, ok := s.resources.Limits[corev1.ResourceMemory]; ok {
		// The Go runtime collects harder as it nears the container's limit, rather
		// than being killed for it.
		env = append(env, corev1.EnvVar{Name: "GOMEMLIMIT", ValueFrom: &corev1.EnvVarSource{
			ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: ContainerName, Resource: "limits.memory", Divisor: resource.MustParse("1")},
		}})
	}
	var envFrom []corev1.EnvFromSource
	if in.cfg.ConnectionConfigMap != "" {
		ref := corev1.LocalObjectReference{Name: in.cfg.ConnectionConfigMap}
		envFrom = append(envFrom, corev1.EnvFromSource{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: ref}})
	}
	if in.cfg.ConnectionSecret != "" {
		ref := corev1.LocalObjectReference{Name: in.cfg.ConnectionSecret}
		envFrom = append(envFrom, corev1.EnvFromSource{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: ref}})
	}
	probe := func(path string, period, timeout, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(in.httpPort), Scheme: corev1.URISchemeHTTP}},
			PeriodSeconds:    period,
			TimeoutSeconds:   timeout,
			FailureThreshold: failures,
		}
	}
	return corev1.Container{
		Name:            ContainerName,
		Image:           in.cfg.Image,
		ImagePullPolicy: in.cfg.ImagePullPolicy,
		Args:            args,
		// restartPolicy Always on an init container makes it a native sidecar.
		RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways),
		Ports:         []corev1.ContainerPort{{Name: HTTPPortName, ContainerPort: in.httpPort, Protocol: corev1.ProtocolTCP}},
		EnvFrom:       envFrom,
		Env:           env,
		Resources:     s.resources,
		// Up to 2 minutes to connect to PostgreSQL and migrate; the app containers
		// start when this passes.
		StartupProbe:  probe(HealthzPath, 2, 2, 60),
		LivenessProbe: probe(HealthzPath, 10, 2, 3),
		// /readyz checks each dependency within 3 s.
		ReadinessProbe: probe(ReadyzPath, 5, 5, 2),
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             ptr(true),
			RunAsUser:                ptr(uid),
			RunAsGroup:               ptr(uid),
			AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem:   ptr(true),
			Privileged:               ptr(false),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		VolumeMounts:             []corev1.VolumeMount{{Name: SocketVolume, MountPath: SocketDir}},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}, nil
}

func hasContainer(pod *corev1.Pod, name string) bool {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if c.Name == name {
				return true
			}
		}
	}
	return false
}

func ptr[T any](v T) *T { return &v }
