package app_test

import (
	"net/http"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// gRPC health agrees with /readyz, per service: while PostgreSQL is down the services
// that need it are NOT_SERVING, EventService (publishes still accepted through Kafka)
// and the server stay SERVING; all are SERVING again once it is back.
func TestGRPCHealthFollowsReadiness(t *testing.T) {
	pg := testenv.StoppablePostgres(t)
	d := deps{kafka: testenv.NewKafka(t), registry: testenv.NewRegistry(t).URL(), dbURL: pg.DSN("postgres")}
	// The sidecar's background calls (relay, saga sweeps) open the PostgreSQL breaker
	// during the outage; a short open time lets the test see the services come back
	// (with the default 60 s they stay NOT_SERVING up to a minute after the restart).
	s := startOn(t, d, func(c *config.Config) { c.BreakerTimeout = time.Second })
	hc := healthpb.NewHealthClient(s.conn)
	status := func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(callCtx(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("health of %q: %v", svc, err)
		}
		return r.GetStatus()
	}
	const (
		serving    = healthpb.HealthCheckResponse_SERVING
		notServing = healthpb.HealthCheckResponse_NOT_SERVING
	)
	pgServices := []string{"eventgw.v1.EventStoreService", "eventgw.v1.DeadLetterService", "eventgw.v1.SagaService"}
	all := append([]string{"", "eventgw.v1.EventService"}, pgServices...)
	waitFor(t, 10*time.Second, "every service SERVING", func() bool {
		for _, svc := range all {
			if status(svc) != serving {
				return false
			}
		}
		return true
	})

	pg.Stop()
	waitFor(t, 20*time.Second, "the PostgreSQL services NOT_SERVING", func() bool {
		for _, svc := range pgServices {
			if status(svc) != notServing {
				return false
			}
		}
		return true
	})
	for _, svc := range []string{"", "eventgw.v1.EventService"} {
		if st := status(svc); st != serving {
			t.Errorf("%q is %v while publishes are accepted", svc, st)
		}
	}
	if code, rep := readyz(t, s); code != http.StatusOK || rep.Dependencies["postgres"].OK {
		t.Errorf("/readyz: %d %+v, want 200 with postgres failing", code, rep)
	}
	if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: seqEvent(tenantA, 0)}); err != nil {
		t.Errorf("EventService is SERVING but Publish failed: %v", err)
	}

	pg.Start()
	waitFor(t, 30*time.Second, "every service SERVING again", func() bool {
		for _, svc := range all {
			if status(svc) != serving {
				return false
			}
		}
		return true
	})
}
