package app_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

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

// guideOnly are metrics the guide names that later parts of eventgw export (consumers,
// DLQ, circuit breakers): alerts on them are kept ready.
var guideOnly = map[string]bool{
	"consumer_lag_messages": true, "dlq_messages_total": true, "circuit_breaker_state": true,
}

// TestPrometheusAlerts parses deploy/prometheus/alerts.yml and checks that every metric
// an alert uses is exported by a running sidecar (or is one of the guide's yet to come).
func TestPrometheusAlerts(t *testing.T) {
	b, err := os.ReadFile("../../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.UnmarshalStrict(b, &rf); err != nil {
		t.Fatalf("alerts.yml: %v", err)
	}
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
	metric := regexp.MustCompile(`\b[a-z][a-z0-9_]*_(total|seconds_bucket|seconds|messages|events|state)\b`)
	rules := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			rules++
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("group %s: rule %q lacks alert, expr, severity or summary", g.Name, r.Alert)
			}
			names := metric.FindAllString(r.Expr, -1)
			if len(names) == 0 {
				t.Errorf("%s: no metric in %q", r.Alert, r.Expr)
			}
			for _, n := range names {
				base := strings.TrimSuffix(n, "_bucket")
				if !exported[base] && !guideOnly[base] {
					t.Errorf("%s uses %s, which eventgw does not export", r.Alert, n)
				}
			}
		}
	}
	if rules < 6 {
		t.Errorf("%d rules, want the guide's four and the outbox's two", rules)
	}
}
