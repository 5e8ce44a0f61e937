package server

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/tracing"
)

// maxEventMetadata is the most metadata entries an event may have (event and store
// checks): the trace context is added only where it fits.
const maxEventMetadata = 32

// Tracing gives every call a server span, child of the traceparent (and tracestate)
// of its gRPC metadata, and stamps that span's context into the metadata of each event
// the request publishes or appends, unless the event names a traceparent of its own:
// published, it is the ce_traceparent and ce_tracestate headers (the CloudEvents
// distributed-tracing extension); appended, it is stored with the event and published
// by the outbox relay. Only the call's method and status code go on the span: never
// payloads, metadata or messages.
type Tracing struct {
	tracer trace.Tracer
}

// NewTracing traces calls with t.
func NewTracing(t trace.Tracer) *Tracing { return &Tracing{tracer: t} }

func (tr *Tracing) start(ctx context.Context, method string) (context.Context, trace.Span) {
	in := ctx
	ctx = tracing.Extract(ctx, func(k string) string {
		// Not FromIncomingContext, which copies the call's whole metadata.
		if v := metadata.ValueFromIncomingContext(in, k); len(v) == 1 {
			return v[0]
		}
		return ""
	})
	name := strings.TrimPrefix(method, "/")
	service, rpc, _ := strings.Cut(name, "/")
	return tr.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("rpc.system", "grpc"), attribute.String("rpc.service", service), attribute.String("rpc.method", rpc)))
}

func end(span trace.Span, err error) {
	if err != nil {
		code := status.Code(err)
		span.SetAttributes(attribute.Int("rpc.grpc.status_code", int(code)))
		span.SetStatus(otelcodes.Error, code.String())
	}
	span.End()
}

// stamp puts ctx's trace context into the metadata of each event of req.
func stamp(ctx context.Context, req any) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	event := func(e *eventgwv1.Event) {
		if e != nil {
			e.Metadata = tracing.Stamp(ctx, e.Metadata, maxEventMetadata)
		}
	}
	switch r := req.(type) {
	case *eventgwv1.PublishRequest:
		event(r.GetEvent())
	case *eventgwv1.PublishBatchRequest:
		for _, e := range r.GetEvents() {
			event(e)
		}
	case *eventgwv1.PublishStreamRequest:
		for _, e := range r.GetEvents() {
			event(e)
		}
	case *eventgwv1.SendToDeadLetterRequest:
		event(r.GetEvent())
	case *eventgwv1.AppendEventsRequest:
		for _, e := range r.GetEvents() {
			if e != nil {
				e.Metadata = tracing.Stamp(ctx, e.Metadata, maxEventMetadata)
			}
		}
	}
}

func (tr *Tracing) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, span := tr.start(ctx, info.FullMethod)
	stamp(ctx, req)
	resp, err := handler(ctx, req)
	end(span, err)
	return resp, err
}

func (tr *Tracing) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, span := tr.start(ss.Context(), info.FullMethod)
	err := handler(srv, &tracedStream{ServerStream: ss, ctx: ctx})
	end(span, err)
	return err
}

// tracedStream carries the span's context and stamps each request received.
type tracedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *tracedStream) Context() context.Context { return s.ctx }

func (s *tracedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	stamp(s.ctx, m)
	return nil
}
