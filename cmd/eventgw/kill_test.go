package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// relayBatch is the outbox relay's batch size: after a crash, at most the batch the dead
// relay had sent but not yet recorded is sent again.
const relayBatch = 500

// TestSidecarKilledLosesNothing kills `eventgw serve` (SIGKILL) while 8 callers append
// to their aggregates and publish, then starts a new sidecar on the same database and
// Kafka. Every acknowledged append is stored, with no gap in any aggregate, and reaches
// Kafka in version order (at least once: what the dead relay had sent but not recorded
// comes again, no more than one relay batch). Every acknowledged publish is in Kafka.
func TestSidecarKilledLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the binary; run without -short")
	}
	k := testenv.NewKafka(t)
	reg := testenv.NewRegistry(t)
	db := testenv.NewDatabase(t)
	bin := buildBinary(t)
	args := []string{"--kafka-brokers", strings.Join(k.Brokers, ","), "--schema-registry-url", reg.URL(), "--database-url", db}
	first := startServe(t, bin, args...)

	conn, err := grpc.NewClient(first.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	store, events := eventgwv1.NewEventStoreServiceClient(conn), eventgwv1.NewEventServiceClient(conn)

	var (
		mu        sync.Mutex
		acked     = map[string]int64{} // aggregate → highest acknowledged version
		published []string             // acknowledged Publish event ids
		total     atomic.Int64
		wg        sync.WaitGroup
	)
	tenants := []string{uuid.NewString(), uuid.NewString()}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tenant := tenants[w%2]
			aggs := []string{uuid.NewString(), uuid.NewString(), uuid.NewString()}
			versions := make([]int64, len(aggs))
			for i := 0; ; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				a := i % len(aggs)
				n := 1 + i%3
				evs := make([]*eventgwv1.NewEvent, n)
				for j := range evs {
					evs[j] = &eventgwv1.NewEvent{EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{
						DataJson: []byte(`{"visit":` + strconv.Itoa(i) + `}`),
					}}
				}
				r, err := store.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
					TenantId: tenant, AggregateType: "Patient", AggregateId: aggs[a], Events: evs,
					ExpectedVersion: &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_Exact{Exact: versions[a]}},
				})
				if err == nil && i%4 == 0 {
					id := uuid.NewString()
					_, err = events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
						EventId: id, EventType: "appointment.booked", TenantId: tenant,
						Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"slot":1}`)},
					}})
					if err == nil {
						mu.Lock()
						published = append(published, id)
						mu.Unlock()
					}
				}
				cancel()
				if err != nil {
					if c := status.Code(err); c != codes.Unavailable && c != codes.Canceled {
						t.Errorf("worker %d: %v (want Unavailable once the sidecar is gone)", w, err)
					}
					return // the sidecar is gone
				}
				versions[a] = r.GetVersion()
				mu.Lock()
				acked[aggs[a]] = r.GetVersion()
				mu.Unlock()
				total.Add(1)
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for total.Load() < 400 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-first.exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the sidecar exited with %v, want killed", err)
	}
	wg.Wait()
	t.Logf("killed the sidecar after %d acknowledged appends and %d publishes", total.Load(), len(published))
	if total.Load() < 400 {
		t.Fatalf("only %d appends in 30 s before the kill", total.Load())
	}

	second := startServe(t, bin, args...)
	defer second.stop(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close(ctx)
	// The new sidecar relays what the dead one left.
	drainBy := time.Now().Add(30 * time.Second)
	for backlog := int64(-1); backlog != 0; {
		if time.Now().After(drainBy) {
			t.Fatalf("the new sidecar left %d events unpublished after 30 s", backlog)
		}
		if backlog > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		if err := pg.QueryRow(ctx, `SELECT count(*) FROM stored_events WHERE position > (SELECT position FROM outbox_cursor)`).Scan(&backlog); err != nil {
			t.Fatal(err)
		}
	}

	// Stored: versions 1..n per aggregate, n at least what was acknowledged.
	stored := map[string]int64{}
	rows, err := pg.Query(ctx, `SELECT aggregate_id::text, count(*), max(version) FROM stored_events GROUP BY aggregate_id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var agg string
		var n, top int64
		if err := rows.Scan(&agg, &n, &top); err != nil {
			t.Fatal(err)
		}
		if n != top {
			t.Errorf("aggregate %s: %d events stored, up to version %d (a gap)", agg, n, top)
		}
		stored[agg] = top
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for agg, v := range acked {
		if stored[agg] < v {
			t.Errorf("aggregate %s: version %d was acknowledged, %d is stored", agg, v, stored[agg])
		}
	}

	// In Kafka: per aggregate, the first delivery of each version in order 1..n; a
	// version seen again is a re-send of the dead relay's last batch.
	seen := map[string]int64{}
	resent := 0
	for _, r := range testenv.ConsumeAll(t, k.Brokers, "healthtech.patient.events") {
		agg, v := header(r, "ce_subject"), header(r, "ce_aggregateversion")
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("record without a version header: %v", r.Headers)
		}
		switch {
		case n == seen[agg]+1:
			seen[agg] = n
		case n <= seen[agg]:
			resent++
		default:
			t.Errorf("aggregate %s: version %d reached Kafka before version %d", agg, n, seen[agg]+1)
		}
	}
	for agg, v := range stored {
		if seen[agg] != v {
			t.Errorf("aggregate %s: Kafka has versions 1..%d of the %d stored", agg, seen[agg], v)
		}
	}
	if resent > relayBatch {
		t.Errorf("%d events reached Kafka twice; at most one relay batch (%d) may", resent, relayBatch)
	}
	t.Logf("%d aggregates, %d events stored and in Kafka; %d sent again after the kill", len(stored), sum(stored), resent)

	ids := map[string]bool{}
	for _, r := range testenv.ConsumeAll(t, k.Brokers, "healthtech.appointment.events") {
		ids[header(r, "ce_id")] = true
	}
	for _, id := range published {
		if !ids[id] {
			t.Errorf("acknowledged publish %s is not in Kafka", id)
		}
	}
	if t.Failed() {
		t.Logf("killed sidecar's log:\n%s", first.logText())
	}
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func sum(m map[string]int64) (n int64) {
	for _, v := range m {
		n += v
	}
	return n
}
