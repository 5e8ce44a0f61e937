package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m) }

// Several sidecars starting at once on a new database: one applies the migrations, the
// others wait for it and find nothing left to do.
func TestMigrateConcurrently(t *testing.T) {
	dsn := testenv.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	applied := make([]int, 4)
	errs := make([]error, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				errs[i] = err
				return
			}
			defer pool.Close()
			applied[i], errs[i] = store.Migrate(ctx, pool)
		}()
	}
	wg.Wait()
	total := 0
	for i := range 4 {
		if errs[i] != nil {
			t.Fatalf("sidecar %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var files int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&files); err != nil {
		t.Fatal(err)
	}
	if total != files || files < 2 {
		t.Fatalf("%d migrations applied across sidecars, %d recorded: each must be applied exactly once", total, files)
	}
	// Applying again is a no-op.
	if n, err := store.Migrate(ctx, pool); err != nil || n != 0 {
		t.Fatalf("second run applied %d (%v)", n, err)
	}
}
