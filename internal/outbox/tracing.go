package outbox

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/tracing"
)

// traceRelay starts the relay span of an appended event that carries a trace context
// (stored from its AppendEvents call): a producer span, child of that context, from
// encoding to Kafka's acknowledgement. The event is published with the span's context
// as its ce_traceparent, so that deliveries are the relay's children. An event without
// a trace context gets no span (nil).
func (r *Relay) traceRelay(ctx context.Context, ev *event.Event) trace.Span {
	if r.Tracer == nil || ev.Metadata[tracing.TraceParent] == "" {
		return nil
	}
	pctx := tracing.Extract(ctx, func(k string) string { return ev.Metadata[k] })
	if !trace.SpanContextFromContext(pctx).IsValid() {
		return nil
	}
	sctx, span := r.Tracer.Start(pctx, "eventgw.relay", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "kafka"), attribute.String("messaging.message.id", ev.ID)))
	tp, ts := tracing.Inject(sctx)
	ev.Metadata[tracing.TraceParent] = tp
	if ts != "" {
		ev.Metadata[tracing.TraceState] = ts
	}
	return span
}

// endRelay ends the relay spans of a batch (nil ones are events without a trace
// context): failed from index failedFrom on when err is set.
func endRelay(spans []trace.Span, failedFrom int, err error) {
	for i, s := range spans {
		if s == nil {
			continue
		}
		if err != nil && i >= failedFrom {
			s.SetStatus(otelcodes.Error, "not published")
		}
		s.End()
	}
}
