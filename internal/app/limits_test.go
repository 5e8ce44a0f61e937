package app_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
)

func jsonEvent(typ, source string) *eventgwv1.Event {
	return &eventgwv1.Event{
		EventType: typ, TenantId: tenantA, SourceService: source,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"a":1}`)},
	}
}

// Callers choose domains, services and event types: past --max-topics a new domain is
// refused (publish and append) and no topic is created; past the metrics' label limits
// new values are counted as "other".
func TestCallersCannotGrowTopicsOrMetricSeries(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) {
		c.MaxTopics = 2
		c.MetricsMaxServices = 2
		c.MetricsMaxEventTypes = 3
	})
	ctx := callCtx(t)
	for _, typ := range []string{"patient.created", "appointment.booked"} {
		if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: jsonEvent(typ, "svc-a")}); err != nil {
			t.Fatalf("publish %s: %v", typ, err)
		}
	}
	_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: jsonEvent("billing.paid", "svc-a")})
	assertInvalid(t, "third domain", err, "event_type")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "--max-topics") {
		t.Errorf("the refusal does not say which limit: %q", msg)
	}
	_, err = s.store.AppendEvents(ctx, appendReq(tenantA, uuid.NewString(), noStream, newEv(t, "lab.result_received", map[string]any{"a": 1.0})))
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("append of a new domain past --max-topics: %v, want InvalidArgument", err)
	}
	details, err := newAdmin(t, s.kafka.Brokers).ListTopics(ctx, "healthtech.billing.events", "healthtech.lab.events")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range details {
		if d.Err == nil {
			t.Errorf("topic %s was created past --max-topics", d.Topic)
		}
	}
	// Domains already in use keep working, for any number of event types and services.
	for i, typ := range []string{"patient.updated", "patient.merged", "patient.deleted", "appointment.cancelled", "appointment.moved"} {
		svc := []string{"svc-a", "svc-b", "svc-c", "svc-d"}[i%4]
		if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: jsonEvent(typ, svc)}); err != nil {
			t.Fatalf("publish %s: %v", typ, err)
		}
	}
	m := metricFamilies(t, s)
	services, types := map[string]bool{}, map[string]bool{}
	for _, mt := range append(m["event_published_total"], m["event_publish_errors_total"]...) {
		services[mt["service"]] = true
		types[mt["event_type"]] = true
	}
	if len(services) != 3 || !services["other"] {
		t.Errorf("service label values %v: want 2 and other", services)
	}
	if len(types) != 4 || !types["other"] {
		t.Errorf("event_type label values %v: want 3 and other", types)
	}
}

// metricFamilies gathers the sidecar's metrics: name → the label sets of its series.
func metricFamilies(t *testing.T, s *sidecar) map[string][]map[string]string {
	t.Helper()
	mfs, err := s.app.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]map[string]string{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[mf.GetName()] = append(out[mf.GetName()], labels)
		}
	}
	return out
}
