package metrics

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestGRPCServerSeries: the series have the names and labels of go-grpc-middleware's
// provider (dashboards and alerts use them), start at zero for every method and code,
// and count unary calls, their codes and the messages of streams.
func TestGRPCServerSeries(t *testing.T) {
	m := NewGRPCServer([]float64{.001, .01, .1, 1})
	reg := prometheus.NewRegistry()
	reg.MustRegister(m)
	unary := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		call := m.BeginUnary(info.FullMethod)
		resp, err := h(ctx, req)
		call.EndUnary(err, time.Now())
		return resp, err
	}
	stream := func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		call, ss := m.BeginStream(ss, info)
		err := h(srv, ss)
		call.EndStream(err, time.Now())
		return err
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream))
	hs := health.NewServer()
	hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	m.Init(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	const labels = `grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"`
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := healthpb.NewHealthClient(conn)
	ctx := context.Background()
	for range 2 {
		if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "up"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v", err)
	}
	w, err := c.Watch(ctx, &healthpb.HealthCheckRequest{Service: "up"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatal(err)
	}

	checks := map[string]float64{
		`grpc_server_started_total{` + labels + `}`:                                                                      3,
		`grpc_server_msg_received_total{` + labels + `}`:                                                                 3,
		`grpc_server_msg_sent_total{` + labels + `}`:                                                                     2,
		`grpc_server_handled_total{grpc_code="OK",` + labels + `}`:                                                       2,
		`grpc_server_handled_total{grpc_code="NotFound",` + labels + `}`:                                                 1,
		`grpc_server_handled_total{grpc_code="Unavailable",` + labels + `}`:                                              0,
		`grpc_server_handling_seconds_count{` + labels + `}`:                                                             3,
		`grpc_server_started_total{grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream"}`:  1,
		`grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream"}`: 1,
	}
	got := gathered(t, reg)
	for series, want := range checks {
		v, ok := got[series]
		if !ok {
			t.Errorf("%s: missing", series)
			continue
		}
		if v != want {
			t.Errorf("%s = %v, want %v", series, v, want)
		}
	}
}

// gathered flattens the registry into "name{labels}" → value (histograms: _count).
func gathered(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+`="`+l.GetValue()+`"`)
			}
			key := "{" + strings.Join(ls, ",") + "}"
			switch {
			case m.GetCounter() != nil:
				out[mf.GetName()+key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[mf.GetName()+"_count"+key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
