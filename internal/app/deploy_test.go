package app_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for"`
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
		} `json:"rules"`
	} `json:"groups"`
}

// servedMetrics starts a sidecar, makes it publish (and refuse a publish) and append,
// and returns a function telling whether it serves a metric: one in its /metrics, or
// one registered on its registry that has no series yet (a vector gets its first with
// its first subscription, dead letter or saga).
func servedMetrics(t *testing.T) func(string) bool {
	t.Helper()
	s := startSidecar(t, nil)
	if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	// And one refused, so that the error counter has a series.
	_, _ = s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: &eventgwv1.Event{EventType: "patient.created", TenantId: "x"}})
	exported := map[string]bool{}
	for _, l := range strings.Split(httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics"), "\n") {
		if strings.HasPrefix(l, "# TYPE ") {
			exported[strings.Fields(l)[2]] = true
		}
	}
	for _, want := range []string{"event_published_total", "event_publish_errors_total", "event_publish_duration_seconds", "circuit_breaker_state", "outbox_backlog_events"} {
		if !exported[want] {
			t.Errorf("/metrics lacks %s after a publish", want)
		}
	}
	reg := s.app.Registry
	return func(name string) bool {
		if exported[name] {
			return true
		}
		// Registering a collector under a name the registry has fails: that is how
		// a registry says which names it has without a series for each.
		probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "probe"})
		if err := reg.Register(probe); err != nil {
			return true
		}
		reg.Unregister(probe)
		return false
	}
}

// metricNames parses a PromQL expression and returns the metric names it selects,
// histogram series (_bucket, _sum, _count) by their histogram's name.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Errorf("PromQL %q: %v", expr, err)
		return nil
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if strings.HasSuffix(name, suf) && strings.HasSuffix(strings.TrimSuffix(name, suf), "_seconds") {
					name = strings.TrimSuffix(name, suf)
				}
			}
			names = append(names, name)
		}
		return nil
	})
	if len(names) == 0 {
		t.Errorf("PromQL %q names no metric", expr)
	}
	return names
}

// TestPrometheusAlerts parses every alert's PromQL in deploy/prometheus/alerts.yml and
// checks that each metric it uses is one a running sidecar serves.
func TestPrometheusAlerts(t *testing.T) {
	b, err := os.ReadFile("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(b, &rf); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
	served := servedMetrics(t)
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("group %s: rule %q lacks alert, expr, severity or summary", g.Name, r.Alert)
			}
			for _, n := range metricNames(t, r.Expr) {
				if !served(n) {
					t.Errorf("%s uses %s, which eventgw does not serve", r.Alert, n)
				}
			}
		}
	}
	// The guide's four ("Monitoring"), and the outbox's.
	for _, want := range []string{"ConsumerLagHigh", "EventPublishErrorRateHigh", "DeadLetterQueueLarge", "CircuitBreakerOpen", "OutboxBacklogGrowing", "OutboxPublishSlow"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s", want)
		}
	}
}

// promtool finds Prometheus's rule checker (Debian's prometheus package; make deps
// installs it).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool is needed: run `make deps` (it installs Debian's prometheus package) or apt-get install prometheus")
	}
	return p
}

// TestPromtoolRules: the alert rules pass `promtool check rules`, their unit tests
// (deploy/prometheus/alerts_test.yml: each alert fires when it should and stays
// quiet when it should) pass `promtool test rules`, and the compose stack's
// Prometheus configuration, with the rules where it mounts them, passes
// `promtool check config`.
func TestPromtoolRules(t *testing.T) {
	pt := promtool(t)
	run := func(dir string, args ...string) {
		t.Helper()
		cmd := exec.Command(pt, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("../../deploy/prometheus", "check", "rules", "alerts.yml")
	run("../../deploy/prometheus", "test", "rules", "alerts_test.yml")
	// docker-compose.yml mounts alerts.yml at rules/alerts.yml beside prometheus.yml.
	dir := t.TempDir()
	copyFile(t, "../../deploy/compose/prometheus.yml", filepath.Join(dir, "prometheus.yml"))
	copyFile(t, "../../deploy/prometheus/alerts.yml", filepath.Join(dir, "rules", "alerts.yml"))
	run(dir, "check", "config", "prometheus.yml")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// grafanaPanel is the part of a Grafana panel the test reads.
type grafanaPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

// grafanaVars are the values Grafana puts in place of the dashboard's variables.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$service", ".*")

// TestGrafanaDashboard parses every panel's PromQL in deploy/grafana/dashboards with
// the Prometheus parser and checks that each metric it names is one the sidecar
// serves; that the guide's panels are there; and that the panels use the data source
// provisioned beside them.
func TestGrafanaDashboard(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/grafana/dashboards/*.json")
	if len(files) == 0 {
		t.Fatal("no dashboard in deploy/grafana/dashboards")
	}
	var ds struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name      string `json:"name"`
			UID       string `json:"uid"`
			Type      string `json:"type"`
			Access    string `json:"access"`
			URL       string `json:"url"`
			IsDefault bool   `json:"isDefault"`
			Editable  bool   `json:"editable"`
		} `json:"datasources"`
	}
	b, err := os.ReadFile("../../deploy/grafana/provisioning/datasources/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("datasource provisioning: %v", err)
	}
	uid := ds.Datasources[0].UID
	served := servedMetrics(t)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var dash struct {
			UID        string         `json:"uid"`
			Title      string         `json:"title"`
			Panels     []grafanaPanel `json:"panels"`
			Templating struct {
				List []struct {
					Name       string `json:"name"`
					Definition string `json:"definition"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal(b, &dash); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if dash.UID == "" || dash.Title == "" {
			t.Errorf("%s: a provisioned dashboard needs a uid and a title", f)
		}
		var titles, used []string
		ids := map[int]bool{}
		var walk func([]grafanaPanel)
		walk = func(ps []grafanaPanel) {
			for _, p := range ps {
				if ids[p.ID] {
					t.Errorf("%s: panel id %d twice", f, p.ID)
				}
				ids[p.ID] = true
				walk(p.Panels)
				if p.Type == "row" {
					continue
				}
				titles = append(titles, p.Title)
				if p.Datasource == nil || p.Datasource.UID != uid || len(p.Targets) == 0 {
					t.Errorf("panel %q: no query on the provisioned data source %q", p.Title, uid)
				}
				for _, tg := range p.Targets {
					for _, n := range metricNames(t, grafanaVars.Replace(tg.Expr)) {
						used = append(used, n)
						if !served(n) {
							t.Errorf("panel %q (%s) uses %s, which eventgw does not serve", p.Title, tg.RefID, n)
						}
					}
				}
			}
		}
		walk(dash.Panels)
		for _, v := range dash.Templating.List {
			// label_values(<metric>, <label>)
			m, _, _ := strings.Cut(strings.TrimPrefix(v.Definition, "label_values("), ",")
			if !served(strings.TrimSpace(m)) {
				t.Errorf("variable %s reads %s, which eventgw does not serve", v.Name, m)
			}
		}
		// The guide's panels, and the ones this dashboard adds.
		for _, want := range []string{"Publish rate", "Publish error rate", "Consumer lag by service", "Circuit breaker state", "DLQ rate",
			"Publish latency", "Append latency", "Outbox backlog", "publish_queue backlog", "Sagas started and finished", "Saga tasks pending"} {
			if !slices.ContainsFunc(titles, func(s string) bool { return strings.HasPrefix(s, want) }) {
				t.Errorf("%s has no %q panel", filepath.Base(f), want)
			}
		}
		for _, want := range []string{"event_published_total", "event_publish_errors_total", "consumer_lag_messages", "circuit_breaker_state", "dlq_messages_total",
			"event_publish_duration_seconds", "grpc_server_handling_seconds", "outbox_backlog_events", "publish_queue_backlog_events", "saga_started_total", "saga_completed_total"} {
			if !slices.Contains(used, want) {
				t.Errorf("%s does not chart %s", filepath.Base(f), want)
			}
		}
		sort.Strings(used)
		t.Logf("%s: %d panels on %d metrics", filepath.Base(f), len(titles), len(slices.Compact(used)))
	}
}
