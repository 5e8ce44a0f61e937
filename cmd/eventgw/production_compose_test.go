package main

import (
	"context"
	"flag"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"

	"github.com/eventgw/eventgw/internal/config"
)

const composeDir = "../../deploy/compose"

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	dir, err := filepath.Abs(composeDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "docker-compose.yml")}},
		Environment: types.Mapping{}, // no POSTGRES_PASSWORD etc.: the file's defaults
	}, func(o *loader.Options) { o.SetProjectName("eventgw", true) })
	if err != nil {
		t.Fatalf("compose-go cannot load docker-compose.yml: %v", err)
	}
	return p
}

// imagePinned: a tag other than latest, or a digest.
func imagePinned(image string) bool {
	if strings.Contains(image, "@sha256:") {
		return true
	}
	i := strings.LastIndex(image, ":")
	return i > strings.LastIndex(image, "/") && image[i+1:] != "latest" && image[i+1:] != ""
}

func env(s types.ServiceConfig, k string) string {
	if v := s.Environment[k]; v != nil {
		return *v
	}
	return ""
}

// TestComposeStack loads deploy/compose/docker-compose.yml with compose-go (as docker
// compose would) and checks: the guide's services, with images pinned; host ports
// free of clashes and on loopback; the guide's topic settings on the three KRaft
// brokers, agreeing with the sidecar's own topic defaults; and the sidecar: its
// command and EVENTGW_* environment are `eventgw serve` flags that parse and
// validate, every host it connects to is a service it depends on, Prometheus scrapes
// its HTTP port and loads the project's alert rules.
func TestComposeStack(t *testing.T) {
	p := loadCompose(t)
	for _, want := range []string{"kafka-1", "kafka-2", "kafka-3", "schema-registry", "postgres", "kafka-ui", "prometheus", "grafana", "eventgw"} {
		if _, ok := p.Services[want]; !ok {
			t.Errorf("no service %s", want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	type hostPort struct{ ip, port, proto string }
	used := map[hostPort]string{}
	published := map[string]string{} // service -> its published ports
	for name, s := range p.Services {
		if s.Image == "" || !imagePinned(s.Image) {
			t.Errorf("service %s: image %q is not pinned to a version", name, s.Image)
		}
		for _, port := range s.Ports {
			if port.Published == "" {
				continue
			}
			hp := hostPort{port.HostIP, port.Published, port.Protocol}
			if other, ok := used[hp]; ok {
				t.Errorf("host port %s:%s of %s is also %s's", hp.ip, hp.port, name, other)
			}
			used[hp] = name
			if port.HostIP != "127.0.0.1" {
				t.Errorf("service %s publishes port %s on %q: bind it to 127.0.0.1", name, port.Published, port.HostIP)
			}
			published[name] += port.Published + ":" + strconv.Itoa(int(port.Target)) + " "
		}
	}
	// The guide's ports (kafka-ui: 8080 instead of its 8090).
	for svc, want := range map[string]string{"kafka-1": "9092:9092", "kafka-2": "9094:9094", "kafka-3": "9095:9095", "schema-registry": "8081:8081", "kafka-ui": "8080:8080"} {
		if !strings.Contains(published[svc], want) {
			t.Errorf("%s publishes %q, want %s", svc, published[svc], want)
		}
	}
	if !strings.Contains(p.Services["kafka-ui"].Image, "kafbat/kafka-ui") {
		t.Errorf("kafka-ui runs %s, want kafbat's", p.Services["kafka-ui"].Image)
	}

	// The sidecar's serve flags: the guide's topic settings are their defaults.
	var defaults config.Config
	dfs := flag.NewFlagSet("serve", flag.ContinueOnError)
	defaults.Register(dfs)
	ids := map[string]bool{}
	for _, name := range []string{"kafka-1", "kafka-2", "kafka-3"} {
		k := p.Services[name]
		for key, want := range map[string]string{
			"KAFKA_PROCESS_ROLES":              "broker,controller",
			"KAFKA_CONTROLLER_QUORUM_VOTERS":   "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093",
			"KAFKA_NUM_PARTITIONS":             strconv.Itoa(defaults.Partitions),
			"KAFKA_DEFAULT_REPLICATION_FACTOR": strconv.Itoa(defaults.Replication),
			"KAFKA_MIN_INSYNC_REPLICAS":        strconv.Itoa(defaults.MinInsyncReplicas),
			"KAFKA_LOG_RETENTION_HOURS":        strconv.Itoa(int(defaults.Retention.Hours())),
		} {
			if got := env(k, key); got != want {
				t.Errorf("%s: %s=%q, want %q (the guide's topic settings)", name, key, got, want)
			}
		}
		if defaults.Partitions != 12 || defaults.Replication != 3 || defaults.MinInsyncReplicas != 2 {
			t.Errorf("serve's topic defaults %d/%d/%d are not the guide's 12/3/2", defaults.Partitions, defaults.Replication, defaults.MinInsyncReplicas)
		}
		if id := env(k, "KAFKA_NODE_ID"); id == "" || ids[id] || env(k, "CLUSTER_ID") == "" {
			t.Errorf("%s: node id %q must be set and unique, with a CLUSTER_ID", name, id)
		} else {
			ids[id] = true
		}
	}

	// The sidecar.
	sc := p.Services["eventgw"]
	if sc.Build == nil {
		t.Fatal("eventgw is not built from the Dockerfile")
	}
	if _, err := os.Stat(filepath.Join(sc.Build.Context, sc.Build.Dockerfile)); err != nil {
		t.Errorf("the sidecar's Dockerfile: %v", err)
	}
	if !sc.ReadOnly || !slices.Contains(sc.CapDrop, "ALL") {
		t.Error("the sidecar should run with a read-only root filesystem and no capabilities")
	}
	if len(sc.Command) == 0 || sc.Command[0] != "serve" {
		t.Fatalf("the sidecar runs %q, not serve", sc.Command)
	}
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	for k := range sc.Environment {
		name := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "EVENTGW_"), "_", "-"))
		if !strings.HasPrefix(k, "EVENTGW_") || fs.Lookup(name) == nil {
			t.Errorf("sidecar environment %s is no `eventgw serve` flag", k)
		}
		t.Setenv(k, env(sc, k))
	}
	if err := config.Parse(fs, sc.Command[1:]); err != nil {
		t.Fatalf("serve does not take %q: %v", sc.Command, err)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the sidecar's settings do not validate: %v", err)
	}
	if cfg.Dev {
		t.Error("the compose sidecar must use the compose services, not --dev")
	}
	needs := func(what, hostport string) {
		t.Helper()
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			t.Errorf("%s %q: %v", what, hostport, err)
			return
		}
		svc, ok := p.Services[host]
		if !ok {
			t.Errorf("%s %s is no service of the stack", what, hostport)
			return
		}
		if _, ok := sc.DependsOn[host]; !ok {
			t.Errorf("the sidecar does not depend on %s (%s)", host, what)
		}
		if host == "postgres" && sc.DependsOn[host].Condition != types.ServiceConditionHealthy {
			t.Error("the sidecar stops at start without PostgreSQL: wait for postgres to be healthy")
		}
		if strings.HasPrefix(host, "kafka-") && !strings.Contains(env(svc, "KAFKA_LISTENERS"), ":"+port) {
			t.Errorf("%s has no listener on %s", host, port)
		}
	}
	for _, b := range cfg.Brokers() {
		needs("Kafka broker", b)
	}
	if len(cfg.Brokers()) != 3 {
		t.Errorf("the sidecar knows %d brokers, want the 3", len(cfg.Brokers()))
	}
	for what, raw := range map[string]string{"schema registry": cfg.SchemaRegistryURL, "database": cfg.DatabaseURL} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("%s URL: %v", what, err)
		}
		needs(what, u.Host)
	}
	pg := p.Services["postgres"]
	if u, _ := url.Parse(cfg.DatabaseURL); u.User.Username() != env(pg, "POSTGRES_USER") || strings.TrimPrefix(u.Path, "/") != env(pg, "POSTGRES_DB") {
		t.Errorf("the sidecar's database URL does not match postgres's user and database")
	} else if pw, _ := u.User.Password(); pw != env(pg, "POSTGRES_PASSWORD") {
		t.Error("the sidecar's database password is not postgres's")
	}
	_, httpPort, _ := net.SplitHostPort(cfg.HTTPAddr)
	if h, _, _ := net.SplitHostPort(cfg.HTTPAddr); h == "127.0.0.1" || h == "localhost" {
		t.Error("the sidecar's HTTP port must listen beyond loopback: Prometheus scrapes it from its own container")
	}

	// Prometheus scrapes that port and loads the alert rules; Grafana gets the
	// dashboards.
	var prom struct {
		Global        map[string]string `json:"global"`
		RuleFiles     []string          `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			MetricsPath   string `json:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	b, err := os.ReadFile(filepath.Join(composeDir, "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &prom); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	if len(prom.ScrapeConfigs) == 0 || len(prom.ScrapeConfigs[0].StaticConfigs) == 0 ||
		!slices.Contains(prom.ScrapeConfigs[0].StaticConfigs[0].Targets, "eventgw:"+httpPort) {
		t.Errorf("Prometheus does not scrape eventgw:%s", httpPort)
	}
	mounts := map[string]string{}
	for _, name := range []string{"prometheus", "grafana"} {
		for _, v := range p.Services[name].Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s: %v", name, v.Source, err)
				}
				mounts[filepath.Base(v.Source)] = v.Target
			}
		}
	}
	if tgt := mounts["alerts.yml"]; len(prom.RuleFiles) == 0 || tgt == "" || !strings.HasSuffix(tgt, prom.RuleFiles[0]) {
		t.Errorf("Prometheus loads %v; alerts.yml is mounted at %q", prom.RuleFiles, tgt)
	}
	if mounts["provisioning"] == "" || mounts["dashboards"] == "" {
		t.Error("Grafana lacks the provisioning or dashboards mount")
	}
}

// TestDockerfile: multi-stage, every base image pinned, a static (CGO off) build, the
// final image distroless or scratch, running as a non-root user.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var froms []string
	var user string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms = append(froms, f[1])
			user = "" // USER is per stage
		case "USER":
			user = f[1]
		}
	}
	if len(froms) < 2 {
		t.Fatalf("%d stages: build in one, run in another", len(froms))
	}
	for _, img := range froms {
		if img != "scratch" && !imagePinned(img) {
			t.Errorf("FROM %s is not pinned", img)
		}
	}
	final := froms[len(froms)-1]
	if final != "scratch" && !strings.HasPrefix(final, "gcr.io/distroless/static") {
		t.Errorf("final stage %s: want distroless static or scratch", final)
	}
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); user == "" || uid == "root" || (err == nil && n == 0) {
		t.Errorf("final stage runs as %q: want a non-root user", user)
	}
	if !regexp.MustCompile(`CGO_ENABLED=0[^\n]*go build[^\n]*\./cmd/eventgw`).Match(regexp.MustCompile(`\\\n\s*`).ReplaceAll(b, []byte(" "))) {
		t.Error("the binary is not built with CGO_ENABLED=0 (static)")
	}
	if !strings.Contains(string(b), `ENTRYPOINT ["/eventgw"]`) {
		t.Error("no ENTRYPOINT running /eventgw")
	}
	ig, err := os.ReadFile("../../.dockerignore")
	if err != nil || !strings.Contains(string(ig), ".git") {
		t.Errorf(".dockerignore should keep .git out of the build context: %v", err)
	}
}
