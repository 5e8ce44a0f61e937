package app_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// TestRelayFencing: two sidecars share a database; the relay's lock connection is
// terminated under load. At no moment may both relays publish (each publishes only
// within its lease, and a relay taking over waits out the previous lease), a relay is
// publishing again afterwards, and every appended event reaches Kafka in order.
func TestRelayFencing(t *testing.T) {
	d := newDeps(t)
	a := startOn(t, d, nil)
	waitFor(t, 10*time.Second, "a relay", func() bool { return a.app.Relay.Active() })
	b := startOn(t, d, nil)
	aggs := []string{uuid.NewString(), uuid.NewString()}
	counts := map[string]int64{}
	appendMany(t, a, aggs, 3, counts)
	waitOutboxEmpty(t, d.dbURL, 10*time.Second)

	// Sample both relays' right to publish while the leader's lock connection dies.
	overlap := make(chan time.Duration, 1)
	stop := make(chan struct{})
	sampled := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				sampled <- n
				return
			default:
			}
			la, lb := a.app.Relay.LeaseLeft(), b.app.Relay.LeaseLeft()
			if la > 0 && lb > 0 {
				select {
				case overlap <- min(la, lb):
				default:
				}
			}
			n++
			time.Sleep(time.Millisecond)
		}
	}()

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, d.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var killed int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND classid = 1162302258 AND objid = 0 AND granted`).Scan(&killed)
	if err != nil || killed != 1 {
		t.Fatalf("terminated %d lock holders (%v), want 1", killed, err)
	}
	appendMany(t, b, aggs, 3, counts)
	waitFor(t, 30*time.Second, "a relay publishing again", func() bool {
		return a.app.Relay.Active() || b.app.Relay.Active()
	})
	appendMany(t, a, aggs, 3, counts)
	waitOutboxEmpty(t, d.dbURL, 30*time.Second)
	close(stop)
	n := <-sampled
	select {
	case left := <-overlap:
		t.Fatalf("both relays held a lease at once (%v left on the shorter)", left)
	default:
	}
	t.Logf("sampled both relays %d times; no overlap", n)
	checkInOrder(t, outboxRecords(t, d.kafka.Brokers, "healthtech.patient.events"), counts, false)
}
