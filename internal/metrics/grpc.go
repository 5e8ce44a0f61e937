package metrics

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// GRPCServer is the gRPC server metrics of go-grpc-middleware's Prometheus provider
// (grpc_server_started_total, grpc_server_handled_total, grpc_server_msg_received_total,
// grpc_server_msg_sent_total, grpc_server_handling_seconds; the same names, help texts
// and labels, so dashboards and alerts written for it work), with every series of a
// method resolved once when the server is built: a call costs no label lookup (hashing
// the label values, a lock, label slices on the heap), which the provider paid five
// times per unary call.
type GRPCServer struct {
	started, handled, received, sent *prometheus.CounterVec
	handling                         *prometheus.HistogramVec
	// methods is written by Init before the server serves, then only read.
	methods map[string]*methodMetrics
}

// methodMetrics are one method's series.
type methodMetrics struct {
	typ                     string
	started, received, sent prometheus.Counter
	handled                 [codes.Unauthenticated + 1]prometheus.Counter // by code
	handling                prometheus.Observer
}

// NewGRPCServer builds the metrics with the handling-time histogram's buckets.
func NewGRPCServer(buckets []float64) *GRPCServer {
	labels := []string{"grpc_type", "grpc_service", "grpc_method"}
	return &GRPCServer{
		started: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_started_total",
			Help: "Total number of RPCs started on the server.",
		}, labels),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_handled_total",
			Help: "Total number of RPCs completed on the server, regardless of success or failure.",
		}, append(labels[:3:3], "grpc_code")),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_received_total",
			Help: "Total number of RPC stream messages received on the server.",
		}, labels),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "grpc_server_msg_sent_total",
			Help: "Total number of gRPC stream messages sent by the server.",
		}, labels),
		handling: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "grpc_server_handling_seconds",
			Help:    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
			Buckets: buckets,
		}, labels),
		methods: map[string]*methodMetrics{},
	}
}

// Describe implements prometheus.Collector.
func (m *GRPCServer) Describe(ch chan<- *prometheus.Desc) {
	m.started.Describe(ch)
	m.handled.Describe(ch)
	m.received.Describe(ch)
	m.sent.Describe(ch)
	m.handling.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *GRPCServer) Collect(ch chan<- prometheus.Metric) {
	m.started.Collect(ch)
	m.handled.Collect(ch)
	m.received.Collect(ch)
	m.sent.Collect(ch)
	m.handling.Collect(ch)
}

// Init resolves the series of every method srv serves (each starts at zero, every
// code included). Call it once, after registering the services and before serving.
func (m *GRPCServer) Init(srv *grpc.Server) {
	for service, info := range srv.GetServiceInfo() {
		for _, mi := range info.Methods {
			typ := "bidi_stream"
			switch {
			case !mi.IsClientStream && !mi.IsServerStream:
				typ = "unary"
			case mi.IsClientStream && !mi.IsServerStream:
				typ = "client_stream"
			case !mi.IsClientStream && mi.IsServerStream:
				typ = "server_stream"
			}
			m.methods["/"+service+"/"+mi.Name] = m.resolve(typ, service, mi.Name)
		}
	}
}

func (m *GRPCServer) resolve(typ, service, method string) *methodMetrics {
	mm := &methodMetrics{
		typ:      typ,
		started:  m.started.WithLabelValues(typ, service, method),
		received: m.received.WithLabelValues(typ, service, method),
		sent:     m.sent.WithLabelValues(typ, service, method),
		handling: m.handling.WithLabelValues(typ, service, method),
	}
	for c := range mm.handled {
		mm.handled[c] = m.handled.WithLabelValues(typ, service, method, codes.Code(c).String())
	}
	return mm
}

// method answers fullMethod's series; a method Init did not see (none, unless a
// service is registered later) is resolved on each call.
func (m *GRPCServer) method(fullMethod string, typ string) *methodMetrics {
	if mm, ok := m.methods[fullMethod]; ok {
		return mm
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	return m.resolve(typ, service, method)
}

// code is the status code an error is reported with, as gRPC itself answers it
// (context errors as Canceled / DeadlineExceeded).
func code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	s, ok := status.FromError(err)
	if !ok {
		s = status.FromContextError(err)
	}
	return s.Code()
}

func (mm *methodMetrics) done(err error, start time.Time) {
	c := code(err)
	if int(c) < len(mm.handled) {
		mm.handled[c].Inc()
	} else {
		mm.handled[codes.Unknown].Inc()
	}
	mm.handling.Observe(time.Since(start).Seconds())
}

// Call is one call's series: Begin at its start, End when the handler returns.
type Call struct{ mm *methodMetrics }

// BeginUnary counts a unary call started and its request received.
func (m *GRPCServer) BeginUnary(fullMethod string) Call {
	mm := m.method(fullMethod, "unary")
	mm.started.Inc()
	mm.received.Inc()
	return Call{mm}
}

// EndUnary counts the call handled with err's code (and its response sent when err is
// nil) and observes the time since start.
func (c Call) EndUnary(err error, start time.Time) {
	if err == nil {
		c.mm.sent.Inc()
	}
	c.mm.done(err, start)
}

// BeginStream counts a streaming call started; the stream it answers counts the
// messages received and sent.
func (m *GRPCServer) BeginStream(ss grpc.ServerStream, info *grpc.StreamServerInfo) (Call, grpc.ServerStream) {
	typ := "bidi_stream"
	switch {
	case info.IsClientStream && !info.IsServerStream:
		typ = "client_stream"
	case !info.IsClientStream && info.IsServerStream:
		typ = "server_stream"
	}
	mm := m.method(info.FullMethod, typ)
	mm.started.Inc()
	return Call{mm}, &countedStream{ServerStream: ss, mm: mm}
}

// EndStream counts the call handled with err's code and observes the time since start.
func (c Call) EndStream(err error, start time.Time) { c.mm.done(err, start) }

// countedStream counts the messages a stream receives and sends.
type countedStream struct {
	grpc.ServerStream
	mm *methodMetrics
}

func (s *countedStream) SendMsg(msg any) error {
	err := s.ServerStream.SendMsg(msg)
	if err == nil {
		s.mm.sent.Inc()
	}
	return err
}

func (s *countedStream) RecvMsg(msg any) error {
	err := s.ServerStream.RecvMsg(msg)
	if err == nil {
		s.mm.received.Inc()
	}
	return err
}
