package server

import (
	"context"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

const testToken = "s3cret-token-0123456789abcdef"

// serveAccess runs a gateway gRPC server (no services: they answer UNIMPLEMENTED once
// a call gets past the access checks) on loopback, and answers a client and the logs.
func serveAccess(t *testing.T, acc Access) (*grpc.ClientConn, *observer.ObservedLogs) {
	t.Helper()
	// Registered first, run last: the server's and the client's goroutines are gone,
	// and gRPC's pooled buffers freed (a sync.Pool empties over two collections),
	// before the next test: the heap measurements of cost_test.go must not see them go.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, before)
		runtime.GC()
		runtime.GC()
	})
	core, logs := observer.New(zap.DebugLevel)
	srv, hs := NewGRPC(Options{MaxRecvBytes: 1 << 20, Registerer: prometheus.NewRegistry(), Log: zap.New(core), Access: acc}, Services{})
	SetServing(hs, true)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, logs
}

func withAuth(t *testing.T, v ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	md := metadata.MD{}
	for _, x := range v {
		md.Append("authorization", x)
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// TestTokenRequired: with a token, a unary or streaming call without it, with another
// one, with another scheme or with two authorization values is UNAUTHENTICATED; with
// it ("Bearer", any case) the call reaches its handler. Health and reflection need it
// unless opened. The token is never logged.
func TestTokenRequired(t *testing.T) {
	for _, open := range []bool{false, true} {
		conn, logs := serveAccess(t, Access{Token: NewToken([]byte(testToken), open, open)})
		events := eventgwv1.NewEventServiceClient(conn)
		for _, tc := range []struct {
			name string
			auth []string
			want codes.Code
		}{
			{"none", nil, codes.Unauthenticated},
			{"wrong", []string{"Bearer wrong-token-0123456789abcdef"}, codes.Unauthenticated},
			{"prefix", []string{"Bearer " + testToken[:len(testToken)-1]}, codes.Unauthenticated},
			{"basic", []string{"Basic " + testToken}, codes.Unauthenticated},
			{"bare", []string{testToken}, codes.Unauthenticated},
			{"twice", []string{"Bearer " + testToken, "Bearer " + testToken}, codes.Unauthenticated},
			{"right", []string{"Bearer " + testToken}, codes.Unimplemented},
			{"lowercase scheme", []string{"bearer " + testToken}, codes.Unimplemented},
		} {
			_, err := events.Publish(withAuth(t, tc.auth...), &eventgwv1.PublishRequest{})
			if status.Code(err) != tc.want {
				t.Errorf("Publish, token %s: %v, want %s", tc.name, err, tc.want)
			}
			var serr error
			if st, err := events.PublishStream(withAuth(t, tc.auth...)); err != nil {
				serr = err
			} else {
				_, serr = st.Recv()
			}
			if status.Code(serr) != tc.want {
				t.Errorf("PublishStream, token %s: %v, want %s", tc.name, serr, tc.want)
			}
		}
		openWant := codes.Unauthenticated
		if open {
			openWant = codes.OK
		}
		_, err := healthpb.NewHealthClient(conn).Check(withAuth(t), &healthpb.HealthCheckRequest{})
		if status.Code(err) != openWant {
			t.Errorf("health without the token (open %v): %v, want %s", open, err, openWant)
		}
		if _, err := healthpb.NewHealthClient(conn).Check(withAuth(t, "Bearer "+testToken), &healthpb.HealthCheckRequest{}); err != nil {
			t.Errorf("health with the token: %v", err)
		}
		rs, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(withAuth(t))
		if err == nil {
			// A Send after the server refused the stream answers io.EOF; Recv has the status.
			_ = rs.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
			_, err = rs.Recv()
		}
		if status.Code(err) != openWant {
			t.Errorf("reflection without the token (open %v): %v, want %s", open, err, openWant)
		}
		for _, e := range logs.All() {
			line := e.Message
			for k, v := range e.ContextMap() {
				line += " " + k + "=" + strings.TrimSpace(toString(v))
			}
			if strings.Contains(line, testToken) || strings.Contains(line, "wrong-token") {
				t.Fatalf("a token was logged: %s", line)
			}
		}
		if logs.FilterField(zap.String("code", "Unauthenticated")).Len() == 0 {
			t.Error("refused calls were not logged")
		}
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

// TestTokenThenTenants: the token is checked before the tenant allow-list, so a
// caller without it learns nothing about the tenants served.
func TestTokenThenTenants(t *testing.T) {
	conn, _ := serveAccess(t, Access{Token: NewToken([]byte(testToken), false, false), Tenants: NewTenants([]string{servedTenant})})
	events := eventgwv1.NewEventServiceClient(conn)
	req := &eventgwv1.PublishRequest{Event: &eventgwv1.Event{TenantId: foreignTenant}}
	if _, err := events.Publish(withAuth(t), req); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no token, another tenant: %v, want UNAUTHENTICATED", err)
	}
	if _, err := events.Publish(withAuth(t, "Bearer "+testToken), req); status.Code(err) != codes.PermissionDenied {
		t.Errorf("token, another tenant: %v, want PERMISSION_DENIED", err)
	}
}
