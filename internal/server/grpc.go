package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/metrics"
)

// Options configures the gRPC server.
type Options struct {
	MaxRecvBytes int
	// MaxConcurrentStreams bounds the calls at once on one connection (0: gRPC's
	// default, no bound).
	MaxConcurrentStreams uint32
	// Limiter, when set, bounds the bytes of unary requests being handled.
	Limiter    *Limiter
	Registerer prometheus.Registerer
	Log        *zap.Logger
	// Access is the API token and the tenant allow-list (zero: every call passes).
	Access Access
}

// What one connection and one stream may hold, whatever the client does (README
// "Memory"), and how idle or dead clients are dropped.
const (
	// StreamWindow is each stream's HTTP/2 flow-control window, static: what a client
	// may send on a stream the sidecar is not reading (gRPC's dynamic windows would
	// grow it to 16 MiB). A message the sidecar reads gets a window of its own size.
	StreamWindow = 64 << 10
	// connWindow only paces a connection: gRPC acknowledges its data on arrival.
	connWindow = 1 << 20
	// MaxHeaderBytes bounds the metadata (HTTP/2 headers) of one call.
	MaxHeaderBytes = 16 << 10
	// keepaliveTime: a connection silent that long is pinged; without an answer within
	// keepaliveTimeout it is closed (a client that vanished).
	keepaliveTime    = 30 * time.Second
	keepaliveTimeout = 10 * time.Second
	// maxConnectionIdle closes a connection without calls that long (a client
	// reconnects when it needs one), so idle connections do not hold
	// --grpc-max-connections.
	maxConnectionIdle = 10 * time.Minute
	// connectionTimeout bounds a new connection's HTTP/2 handshake.
	connectionTimeout = 10 * time.Second
	// keepaliveMinTime: a client pinging more often is sent GOAWAY (too_many_pings).
	keepaliveMinTime = 10 * time.Second
	// streamWorkers is the pool of goroutines that run handlers (see NewGRPC).
	streamWorkers = 64
)

// Services are the handlers to serve; nil ones answer Unimplemented.
type Services struct {
	Events     eventgwv1.EventServiceServer
	EventStore eventgwv1.EventStoreServiceServer
	Sagas      eventgwv1.SagaServiceServer
	DeadLetter eventgwv1.DeadLetterServiceServer
}

// NewGRPC builds the gRPC server with health, reflection and metrics. The health
// server starts NOT_SERVING; set it SERVING once everything behind it is up.
func NewGRPC(opts Options, svcs Services) (*grpc.Server, *health.Server) {
	gm := metrics.NewGRPCServer([]float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5})
	opts.Registerer.MustRegister(gm)
	e := &edge{metrics: gm, log: opts.Log}
	// One interceptor for the metrics, the recovery and the log: each level of gRPC's
	// interceptor chain costs a closure and a stack frame per call.
	unary := []grpc.UnaryServerInterceptor{e.unary}
	sopts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(opts.MaxRecvBytes),
		grpc.StaticStreamWindowSize(StreamWindow),
		grpc.StaticConnWindowSize(connWindow),
		grpc.MaxHeaderListSize(MaxHeaderBytes),
		grpc.ConnectionTimeout(connectionTimeout),
		// Reused handler goroutines keep their grown stacks: a fresh goroutine per RPC
		// grows its stack through several copies on every call. A unary Publish holds
		// its worker until Kafka acknowledges, so the pool covers the calls in flight of
		// a busy service (64 callers), not just the cores: past the pool, gRPC starts a
		// fresh goroutine per call again.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: keepaliveTime, Timeout: keepaliveTimeout, MaxConnectionIdle: maxConnectionIdle,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
		grpc.ChainStreamInterceptor(e.stream),
	}
	if opts.MaxConcurrentStreams > 0 {
		sopts = append(sopts, grpc.MaxConcurrentStreams(opts.MaxConcurrentStreams))
	}
	// The API token and the tenant allow-list come before the limiter: a refused call
	// holds nothing.
	accessUnary, accessStream := opts.Access.interceptors()
	unary = append(unary, accessUnary...)
	sopts = append(sopts, grpc.ChainStreamInterceptor(accessStream...))
	if l := opts.Limiter; l != nil {
		// After the metrics and the log, so that refused calls are counted and logged.
		unary = append(unary, l.unaryInterceptor)
		sopts = append(sopts, grpc.InTapHandle(l.tap))
	}
	srv := grpc.NewServer(append(sopts, grpc.ChainUnaryInterceptor(unary...))...)
	if svcs.Events == nil {
		svcs.Events = eventgwv1.UnimplementedEventServiceServer{}
	}
	if svcs.EventStore == nil {
		svcs.EventStore = eventgwv1.UnimplementedEventStoreServiceServer{}
	}
	if svcs.Sagas == nil {
		svcs.Sagas = eventgwv1.UnimplementedSagaServiceServer{}
	}
	if svcs.DeadLetter == nil {
		svcs.DeadLetter = eventgwv1.UnimplementedDeadLetterServiceServer{}
	}
	eventgwv1.RegisterEventServiceServer(srv, svcs.Events)
	eventgwv1.RegisterEventStoreServiceServer(srv, svcs.EventStore)
	eventgwv1.RegisterSagaServiceServer(srv, svcs.Sagas)
	eventgwv1.RegisterDeadLetterServiceServer(srv, svcs.DeadLetter)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	gm.Init(srv)
	return srv, hs
}

// ServiceNames are the gateway's gRPC services, as the health service names them.
var ServiceNames = []string{
	eventgwv1.EventService_ServiceDesc.ServiceName, eventgwv1.EventStoreService_ServiceDesc.ServiceName,
	eventgwv1.SagaService_ServiceDesc.ServiceName, eventgwv1.DeadLetterService_ServiceDesc.ServiceName,
}

// SetServing flips every service's health status. NOT_SERVING is for good (shutdown):
// later changes, SetHealth's too, are ignored.
func SetServing(hs *health.Server, serving bool) {
	if !serving {
		hs.Shutdown()
		return
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for _, name := range ServiceNames {
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
}

// SetHealth sets the status of each service named in serving ("" is the server as a
// whole); services not named keep theirs.
func SetHealth(hs *health.Server, serving map[string]bool) {
	for name, ok := range serving {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if ok {
			st = healthpb.HealthCheckResponse_SERVING
		}
		hs.SetServingStatus(name, st)
	}
}

// edge is what every call goes through first: its gRPC metrics, the recovery of a
// handler's panic (answered Internal) and the log of failed calls (method, code,
// message, duration: never request bodies).
type edge struct {
	metrics *metrics.GRPCServer
	log     *zap.Logger
}

func (e *edge) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	call := e.metrics.BeginUnary(info.FullMethod)
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("panic in handler", zap.String("method", info.FullMethod), zap.Stack("stack"))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		logCall(e.log, info.FullMethod, start, err)
		call.EndUnary(err, start)
	}()
	return handler(ctx, req)
}

func (e *edge) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	call, ss := e.metrics.BeginStream(ss, info)
	defer func() {
		if r := recover(); r != nil {
			e.log.Error("panic in handler", zap.String("method", info.FullMethod), zap.Stack("stack"))
			err = status.Error(codes.Internal, "internal error")
		}
		logCall(e.log, info.FullMethod, start, err)
		call.EndStream(err, start)
	}()
	return handler(srv, ss)
}

func logCall(log *zap.Logger, method string, start time.Time, err error) {
	if err == nil {
		if ce := log.Check(zap.DebugLevel, "call"); ce != nil {
			ce.Write(zap.String("method", method), zap.Duration("duration", time.Since(start)))
		}
		return
	}
	st := status.Convert(err)
	lvl := zap.InfoLevel
	switch st.Code() {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		lvl = zap.ErrorLevel
	case codes.Unavailable, codes.DeadlineExceeded:
		lvl = zap.WarnLevel
	default: // the caller's mistake or choice: info
	}
	if ce := log.Check(lvl, "call failed"); ce != nil {
		fields := []zap.Field{
			zap.String("method", method), zap.String("code", st.Code().String()),
			zap.String("message", st.Message()), zap.Duration("duration", time.Since(start)),
		}
		if cause := logCause(err); cause != "" {
			fields = append(fields, zap.String("cause", cause))
		}
		ce.Write(fields...)
	}
}
