package subscribe

import (
	"context"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/tracing"
)

// traceDelivery starts the delivery span of a record that carries a trace context
// (its ce_traceparent and ce_tracestate headers): a consumer span, child of that
// context, ended once the delivery is sent to the stream. The delivery's metadata
// traceparent (and tracestate) become the span's, so that the subscriber's work is
// its child. A record without a trace context gets no span (nil); without a Tracer its
// headers come out in the metadata as they are.
func (s *stream) traceDelivery(rec *sarama.ConsumerMessage, d *eventgwv1.Delivery) trace.Span {
	tr := s.m.cfg.Tracer
	if tr == nil || d.GetMetadata()[tracing.TraceParent] == "" {
		return nil
	}
	pctx := tracing.Extract(context.Background(), func(k string) string { return d.GetMetadata()[k] })
	if !trace.SpanContextFromContext(pctx).IsValid() {
		return nil
	}
	sctx, span := tr.Start(pctx, "eventgw.deliver", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		attribute.String("messaging.system", "kafka"), attribute.String("messaging.destination.name", rec.Topic),
		attribute.Int("messaging.destination.partition.id", int(rec.Partition)), attribute.Int64("messaging.kafka.offset", rec.Offset),
		attribute.String("messaging.consumer.group.name", s.opts.Subscription), attribute.Int("eventgw.attempt", int(d.GetAttempt())),
		attribute.String("messaging.message.id", d.GetEventId())))
	tp, ts := tracing.Inject(sctx)
	d.Metadata[tracing.TraceParent] = tp
	if ts != "" {
		d.Metadata[tracing.TraceState] = ts
	}
	return span
}

// endDeliveries ends the delivery spans of a response, failed when it was not sent.
func endDeliveries(spans []trace.Span, err error) {
	for _, sp := range spans {
		if err != nil {
			sp.SetStatus(otelcodes.Error, "not sent")
		}
		sp.End()
	}
}
