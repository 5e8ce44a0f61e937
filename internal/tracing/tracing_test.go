package tracing

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
)

func TestStamp(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := Extract(context.Background(), propagation.MapCarrier{TraceParent: tp, TraceState: "a=1"}.Get)
	if got, ts := Inject(ctx); got != tp || ts != "a=1" {
		t.Fatalf("Inject after Extract: %q %q", got, ts)
	}
	if md := Stamp(ctx, nil, 32); md[TraceParent] != tp || md[TraceState] != "a=1" {
		t.Errorf("Stamp into nil: %v", md)
	}
	own := "00-11111111111111111111111111111111-2222222222222222-01"
	if md := Stamp(ctx, map[string]string{TraceParent: own}, 32); md[TraceParent] != own {
		t.Errorf("Stamp replaced the caller's own traceparent: %v", md)
	}
	full := map[string]string{}
	for i := range 31 {
		full[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	if md := Stamp(ctx, full, 32); md[TraceParent] != "" {
		t.Error("Stamp went past the metadata limit")
	}
	if md := Stamp(context.Background(), nil, 32); md != nil {
		t.Errorf("Stamp without a trace context: %v", md)
	}
	if got, _ := Inject(Extract(context.Background(), propagation.MapCarrier{TraceParent: "garbage"}.Get)); got != "" {
		t.Errorf("a malformed traceparent passed: %q", got)
	}
}
