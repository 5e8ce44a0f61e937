// Package tracing carries W3C trace context (traceparent, tracestate) through the
// gateway, from gRPC metadata to Kafka headers (the CloudEvents distributed-tracing
// extension, ce_traceparent and ce_tracestate) and back out on deliveries, and makes
// OpenTelemetry spans for publish, append, relay and delivery, exported over OTLP
// when --otlp-endpoint is set.
//
// Without --otlp-endpoint the gateway uses OpenTelemetry's global provider, a no-op
// unless a program (a test) sets one: nothing is recorded or exported, and a caller's
// traceparent still passes through unchanged (a no-op span keeps its parent's
// context).
package tracing

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Instrumentation names the gateway's tracer.
const Instrumentation = "github.com/eventgw/eventgw"

// The W3C header names, as gRPC metadata keys and CloudEvents extension names (Kafka
// headers ce_traceparent, ce_tracestate).
const (
	TraceParent = "traceparent"
	TraceState  = "tracestate"
)

var w3c = propagation.TraceContext{}

// Provider answers the tracer provider: one exporting over OTLP/gRPC to endpoint
// (host:port; plaintext with insecure, else TLS with the system's roots), or the global
// one when endpoint is empty. shutdown flushes and stops what it started.
func Provider(ctx context.Context, endpoint string, insecure bool, service string) (tp trace.TracerProvider, shutdown func(context.Context) error, err error) {
	if endpoint == "" {
		return otel.GetTracerProvider(), func(context.Context) error { return nil }, nil
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(endpoint)}
	if insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("--otlp-endpoint: %w", err)
	}
	p := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))),
	)
	return p, p.Shutdown, nil
}

// Extract answers ctx with the remote span context that get's traceparent and
// tracestate hold (ctx as it is when they hold none, or a malformed one).
func Extract(ctx context.Context, get func(key string) string) context.Context {
	return w3c.Extract(ctx, getter(get))
}

// Inject answers the traceparent and tracestate of ctx's span ("" when it has none).
func Inject(ctx context.Context) (traceparent, tracestate string) {
	c := propagation.MapCarrier{}
	w3c.Inject(ctx, c)
	return c[TraceParent], c[TraceState]
}

type getter func(string) string

func (g getter) Get(key string) string { return g(key) }
func (g getter) Set(string, string)    {}
func (g getter) Keys() []string        { return []string{TraceParent, TraceState} }

// Stamp sets traceparent and tracestate in md from ctx's span, unless md names a
// traceparent already (the caller's own) or has no room (max entries); it answers the
// map, made when nil.
func Stamp(ctx context.Context, md map[string]string, max int) map[string]string {
	tp, ts := Inject(ctx)
	if tp == "" || md[TraceParent] != "" || len(md)+2 > max {
		return md
	}
	if md == nil {
		md = make(map[string]string, 2)
	}
	md[TraceParent] = tp
	if ts != "" {
		md[TraceState] = ts
	}
	return md
}
