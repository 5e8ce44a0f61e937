package app_test

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// spanNamed answers the ended span named name whose parent is parent.
func spanNamed(rec *tracetest.SpanRecorder, name string, parent trace.SpanID) sdktrace.ReadOnlySpan {
	for _, s := range rec.Ended() {
		if s.Name() == name && s.Parent().SpanID() == parent {
			return s
		}
	}
	return nil
}

// traceparentOf parses a traceparent header value.
func traceparentOf(t *testing.T, v string) (trace.TraceID, trace.SpanID) {
	t.Helper()
	parts := strings.Split(v, "-")
	if len(parts) != 4 {
		t.Fatalf("traceparent %q", v)
	}
	tid, err1 := trace.TraceIDFromHex(parts[1])
	sid, err2 := trace.SpanIDFromHex(parts[2])
	if err1 != nil || err2 != nil {
		t.Fatalf("traceparent %q: %v %v", v, err1, err2)
	}
	return tid, sid
}

// TestTraceContextPropagation: a caller's traceparent and tracestate (gRPC metadata)
// reach Kafka as ce_traceparent and ce_tracestate and come back out on deliveries,
// and the spans chain: the caller's span → the Publish server span, whose context the
// Kafka header carries (for an append: the AppendEvents server span → the outbox relay's
// span, whose context the header carries) → the delivery span, whose context the
// delivery carries. Spans are recorded with the SDK's in-memory recorder (the global
// provider: no --otlp-endpoint).
func TestTraceContextPropagation(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prev := otel.GetTracerProvider()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev); _ = tp.Shutdown(callCtx(t)) })

	s := startSidecar(t, nil)
	const caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	callerTrace, callerSpan := traceparentOf(t, caller)
	ctx := metadata.AppendToOutgoingContext(callCtx(t), "traceparent", caller, "tracestate", "clinic=7")

	sub := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "traced", Topics: []string{"patient"},
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST, Ordering: eventgwv1.Ordering_ORDERING_NONE})
	sub.waitAssigned(12)
	res, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: patientEvent(tenantA)})
	if err != nil {
		t.Fatal(err)
	}
	agg := uuid.NewString()
	app, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, newEv(t, "patient.created", map[string]any{"x": 1.0})))
	if err != nil {
		t.Fatal(err)
	}
	publishSpan := spanNamed(rec, "eventgw.v1.EventService/Publish", callerSpan)
	appendSpan := spanNamed(rec, "eventgw.v1.EventStoreService/AppendEvents", callerSpan)
	if publishSpan == nil || appendSpan == nil || !publishSpan.Parent().IsRemote() || publishSpan.SpanContext().TraceID() != callerTrace {
		t.Fatalf("server spans of Publish (%v) and AppendEvents (%v) are not the caller's children", publishSpan, appendSpan)
	}
	var relaySpan sdktrace.ReadOnlySpan
	eventually(t, 20*time.Second, "the relay span of the appended event", func() bool {
		relaySpan = spanNamed(rec, "eventgw.relay", appendSpan.SpanContext().SpanID())
		return relaySpan != nil
	})
	if relaySpan.SpanKind() != trace.SpanKindProducer || relaySpan.SpanContext().TraceID() != callerTrace {
		t.Errorf("relay span: kind %v, trace %s", relaySpan.SpanKind(), relaySpan.SpanContext().TraceID())
	}
	want := map[string]trace.SpanID{ // event id → the span its Kafka header names
		res.GetResult().GetEventId(): publishSpan.SpanContext().SpanID(),
		app.GetEventIds()[0]:         relaySpan.SpanContext().SpanID(),
	}

	eventually(t, 20*time.Second, "both events in Kafka", func() bool { return topicCount(t, s.kafka.Brokers, "healthtech.patient.events") == 2 })
	for _, r := range testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events") {
		id, _ := header(r, "ce_id")
		tpv, ok := header(r, "ce_traceparent")
		if !ok {
			t.Fatalf("event %s has no ce_traceparent", id)
		}
		tid, sid := traceparentOf(t, tpv)
		if tid != callerTrace || sid != want[id] {
			t.Errorf("event %s: ce_traceparent %s, want trace %s span %s", id, tpv, callerTrace, want[id])
		}
		if ts, _ := header(r, "ce_tracestate"); ts != "clinic=7" {
			t.Errorf("event %s: ce_tracestate %q", id, ts)
		}
	}

	for _, d := range sub.next(2, 20*time.Second) {
		tid, sid := traceparentOf(t, d.GetMetadata()["traceparent"])
		var deliver sdktrace.ReadOnlySpan
		eventually(t, 10*time.Second, "the delivery span ended", func() bool {
			deliver = spanNamed(rec, "eventgw.deliver", want[d.GetEventId()])
			return deliver != nil
		})
		if tid != callerTrace || sid != deliver.SpanContext().SpanID() || deliver.SpanKind() != trace.SpanKindConsumer {
			t.Errorf("delivery of %s: traceparent %s, want the delivery span %s of trace %s", d.GetEventId(), d.GetMetadata()["traceparent"], deliver.SpanContext().SpanID(), callerTrace)
		}
		if d.GetMetadata()["tracestate"] != "clinic=7" {
			t.Errorf("delivery of %s: tracestate %q", d.GetEventId(), d.GetMetadata()["tracestate"])
		}
	}
}

// collector is an OTLP/gRPC trace collector that keeps the names of the spans it gets.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	names []string
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				c.names = append(c.names, sp.GetName())
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (c *collector) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.names)
}

// TestOTLPExport: with --otlp-endpoint the sidecar's spans reach an OTLP collector (at
// the latest when it shuts down, which flushes them).
func TestOTLPExport(t *testing.T) {
	col := &collector{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, col)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)

	s := startSidecar(t, func(c *config.Config) { c.OTLPEndpoint, c.OTLPInsecure = l.Addr().String(), true })
	if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: patientEvent(tenantA)}); err != nil {
		t.Fatal(err)
	}
	s.shutdown()
	if !slices.Contains(col.got(), "eventgw.v1.EventService/Publish") {
		t.Errorf("the collector got %v, want the Publish span", col.got())
	}
}
