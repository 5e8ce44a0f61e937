package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

// A database whose events carry positions from transaction ids the cluster has not
// reached (what a pg_dump restored into a new cluster looks like) is refused, with the
// command that repairs it; a healthy one passes.
func TestCheckPositionsRefusesPositionsAheadOfTheCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, testenv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := store.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	events := store.NewEvents(pool)
	tenant, agg := uuid.NewString(), uuid.NewString()
	if _, err := events.Append(ctx, store.AppendRequest{
		TenantID: tenant, AggregateType: "Patient", AggregateID: agg,
		Expected: store.ExpectNoStream, Events: []store.NewEvent{{ID: uuid.NewString(), Type: "patient.created", Data: []byte(`{}`), OccurredAt: time.Now()}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := store.CheckPositions(ctx, pool); err != nil {
		t.Fatalf("healthy database refused: %v", err)
	}

	// An event from "another cluster" whose xids ran 2^32 further (one epoch ahead).
	if _, err := pool.Exec(ctx, `INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version,
		event_type, event_data, occurred_at, position)
		VALUES ($1, $2, 'Patient', $3, 2, 'patient.updated', '{}', now(),
		        (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + (1::bigint << 32)) << 10)`,
		uuid.NewString(), tenant, agg); err != nil {
		t.Fatal(err)
	}
	err = store.CheckPositions(ctx, pool)
	if err == nil {
		t.Fatal("positions ahead of the cluster's transaction ids were accepted")
	}
	if !strings.Contains(err.Error(), "pg_resetwal --epoch=2 ") {
		t.Errorf("error %q should give the repair command with epoch 2", err)
	}
}
