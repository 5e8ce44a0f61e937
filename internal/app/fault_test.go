package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// TestPostgresRestart crashes PostgreSQL under a running sidecar: appends answer
// Unavailable (quickly, not Internal, not a hang) while it is down, succeed again once it
// is back, and the outbox relay resumes: every appended event reaches Kafka, in order.
func TestPostgresRestart(t *testing.T) {
	// A cluster of its own, durable (the shared test cluster runs without fsync, and a
	// crash of it loses what it acknowledged, as PostgreSQL documents).
	pg := testenv.DurablePostgres(t)
	d := deps{kafka: testenv.NewKafka(t), registry: testenv.NewRegistry(t).URL(), dbURL: pg.DSN("postgres")}
	// The sidecar's own background calls (relay, saga sweeps) meet the outage too and
	// open the PostgreSQL breaker; a short open time lets the test see it close again
	// (with the default 60 s, appends are refused for up to a minute after the restart).
	s := startOn(t, d, func(c *config.Config) { c.BreakerTimeout = time.Second })
	agg := uuid.NewString()
	counts := map[string]int64{}
	appendMany(t, s, []string{agg}, 5, counts)
	waitOutboxEmpty(t, d.dbURL, 10*time.Second)

	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = pg.Restart(context.Background())
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	start := time.Now()
	_, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(5), newEv(t, "patient.updated", map[string]any{})))
	cancel()
	if c := status.Code(err); c != codes.Unavailable {
		t.Fatalf("append with PostgreSQL down: %v, want Unavailable", err)
	}
	t.Logf("Unavailable after %v", time.Since(start).Round(time.Millisecond))

	if err := pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	restarted = true
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := s.store.AppendEvents(callCtx(t), appendReq(tenantA, agg, exact(5), newEv(t, "patient.updated", map[string]any{"after": "restart"})))
		if err == nil {
			counts[agg] = 6
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("appends still failing 20s after PostgreSQL came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	appendMany(t, s, []string{agg}, 4, counts)
	waitOutboxEmpty(t, d.dbURL, 20*time.Second)
	checkInOrder(t, outboxRecords(t, d.kafka.Brokers, "healthtech.patient.events"), counts, false)
	if evs := readAll(t, s, tenantA, agg); len(evs) != 10 {
		t.Errorf("%d events stored, want 10", len(evs))
	}
}

// TestPublishStreamClientGone: a client that goes away mid-stream loses nothing it was
// told was stored, the server ends the stream, and the sidecar serves on.
func TestPublishStreamClientGone(t *testing.T) {
	s := startSidecar(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := s.events.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := range 2000 {
			if err := stream.Send(&eventgwv1.PublishStreamRequest{RequestId: uint64(i + 1), Events: []*eventgwv1.Event{{
				EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
			}}}); err != nil {
				return
			}
		}
	}()
	acked := map[string]bool{}
	for len(acked) < 300 {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResults() {
			if r.GetResult() != nil {
				acked[r.GetResult().GetEventId()] = true
			}
		}
	}
	cancel() // the client goes away with requests in flight
	// Acknowledged means acks=all came back: the events are in Kafka already.
	if missing := missingFromKafka(t, s.kafka.Brokers, "healthtech.patient.events", acked); missing > 0 {
		t.Fatalf("%d of %d acknowledged events missing from Kafka", missing, len(acked))
	}
	// The server saw the stream end, and still serves.
	waitStreamCanceled(t, s, "PublishStream", 10*time.Second)
	if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.updated",
		TenantId:  tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
	}}); err != nil {
		t.Fatalf("publish after an abandoned stream: %v", err)
	}
}

// A ReplayEvents client that goes away mid-stream: the server ends the stream and gives
// its PostgreSQL connection back (nothing stays checked out), and replays on.
func TestReplayClientGoneReleasesConnections(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	evs := make([]*eventgwv1.NewEvent, 100)
	for i := range evs {
		evs[i] = newEv(t, "patient.updated", map[string]any{"i": float64(i)})
	}
	// Far more than HTTP/2 flow control lets the server send ahead of a client that
	// stopped reading.
	for range 50 {
		for _, e := range evs {
			e.EventId = "" // a new id per append
		}
		if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, uuid.NewString(), noStream, evs...)); err != nil {
			t.Fatal(err)
		}
	}
	waitOutboxEmpty(t, s.dbURL, 10*time.Second)

	rctx, cancel := context.WithCancel(context.Background())
	st, err := s.store.ReplayEvents(rctx, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, DataAsJson: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel() // gone after the first message of 5000 events

	waitStreamCanceled(t, s, "ReplayEvents", 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for s.app.Pool.Stat().AcquiredConns() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d PostgreSQL connections still checked out after the client went away", s.app.Pool.Stat().AcquiredConns())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := len(replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, DataAsJson: true})); got != 5000 {
		t.Errorf("a replay after the abandoned one got %d events, want 5000", got)
	}
}

// waitStreamCanceled waits until the server's metrics show it ended a method's stream
// as canceled (its client went away).
func waitStreamCanceled(t *testing.T, s *sidecar, method string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics"),
		`grpc_server_handled_total{grpc_code="Canceled",grpc_method="`+method+`"`) {
		if time.Now().After(deadline) {
			t.Fatalf("the server did not end the abandoned %s stream", method)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
