package store_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testenv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

func appendOne(tenant, agg string, expected int64) store.AppendRequest {
	return store.AppendRequest{
		TenantID: tenant, AggregateType: "Patient", AggregateID: agg, Expected: expected,
		Events: []store.NewEvent{{ID: uuid.NewString(), Type: "patient.updated", Data: []byte(`{"a":1}`), OccurredAt: time.Now()}},
	}
}

// AppendMany gives each append its own outcome: successes, a conflict, another tenant.
func TestAppendManyOutcomes(t *testing.T) {
	pool := newPool(t)
	ev := store.NewEvents(pool)
	ctx := context.Background()
	tenant, other := uuid.NewString(), uuid.NewString()
	existing := uuid.NewString()
	if _, err := ev.Append(ctx, appendOne(tenant, existing, store.ExpectNoStream)); err != nil {
		t.Fatal(err)
	}
	foreign := uuid.NewString()
	if _, err := ev.Append(ctx, appendOne(other, foreign, store.ExpectNoStream)); err != nil {
		t.Fatal(err)
	}
	a, b := uuid.NewString(), uuid.NewString()
	reqs := []store.AppendRequest{
		appendOne(tenant, a, store.ExpectNoStream),
		appendOne(tenant, existing, 1),
		appendOne(tenant, b, store.ExpectAny),
		appendOne(tenant, foreign, store.ExpectAny),
		appendOne(tenant, uuid.NewString(), 5), // a conflict: expects version 5 of a new aggregate
	}
	ptrs := make([]*store.AppendRequest, len(reqs))
	for i := range reqs {
		ptrs[i] = &reqs[i]
	}
	start := time.Now()
	res, errs := ev.AppendMany(ctx, ptrs)
	t.Logf("AppendMany of %d took %v", len(reqs), time.Since(start))
	if errs[0] != nil || res[0].Version != 1 || errs[1] != nil || res[1].Version != 2 || errs[2] != nil || res[2].Version != 1 {
		t.Fatalf("successes: %v %v", res[:3], errs[:3])
	}
	if !errors.Is(errs[3], store.ErrNotFound) {
		t.Errorf("another tenant's aggregate: %v", errs[3])
	}
	var ce *store.ConflictError
	if !errors.As(errs[4], &ce) || ce.Current != 0 {
		t.Errorf("conflict: %v", errs[4])
	}
	if res[0].Positions[0] == res[1].Positions[0] || res[1].Positions[0] == res[2].Positions[0] {
		t.Errorf("positions not distinct: %v %v %v", res[0].Positions, res[1].Positions, res[2].Positions)
	}
}

// Many concurrent appenders through the Appender: every append lands once, versions
// have no gaps, and per aggregate position order is version order.
func TestAppenderConcurrent(t *testing.T) {
	pool := newPool(t)
	ev := store.NewEvents(pool)
	ap := store.NewAppender(ev, 4)
	tenant := uuid.NewString()
	aggs := make([]string, 6)
	for i := range aggs {
		aggs[i] = uuid.NewString()
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := 0
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				agg := aggs[(w+i)%len(aggs)]
				if _, err := ap.Append(context.Background(), appendOne(tenant, agg, store.ExpectAny)); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
					t.Log(err)
				}
			}
		}()
	}
	wg.Wait()
	if errs > 0 {
		t.Fatalf("%d appends failed", errs)
	}
	ctx := context.Background()
	for _, agg := range aggs {
		var last, lastPos int64
		err := ev.ReadAggregate(ctx, tenant, agg, 1, 1000, func(page []store.StoredEvent) error {
			for _, e := range page {
				if e.Version != last+1 || e.Position <= lastPos {
					t.Errorf("aggregate %s: version %d at %d after version %d at %d", agg, e.Version, e.Position, last, lastPos)
				}
				last, lastPos = e.Version, e.Position
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if last != 80 {
			t.Errorf("aggregate %s has %d events, want 80", agg, last)
		}
	}
}

// The appends waiting for a statement are bounded in bytes: past the bound Append
// answers ErrAppendQueueFull at once, and once the queue drains appends go through.
func TestAppenderQueueIsBounded(t *testing.T) {
	pool := newPool(t)
	ev := store.NewEvents(pool)
	// One append is 570 bytes by the appender's count (256 + 256 per event + its id,
	// type and data): three fit in 2000, a fourth does not.
	ap := store.NewAppender(ev, 1).WithMaxBytes(2000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE stored_events IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	tenant := uuid.NewString()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := ap.Append(ctx, appendOne(tenant, uuid.NewString(), store.ExpectNoStream))
			errs <- err
		}()
	}
	for ap.Held() < 3*570 {
		select {
		case <-ctx.Done():
			t.Fatalf("the appends did not queue: %d bytes held", ap.Held())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := ap.Append(ctx, appendOne(tenant, uuid.NewString(), store.ExpectNoStream)); !errors.Is(err, store.ErrAppendQueueFull) {
		t.Fatalf("append past the bound: %v, want ErrAppendQueueFull", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("queued append: %v", err)
		}
	}
	if n := ap.Held(); n != 0 {
		t.Errorf("%d bytes still held after every append was answered", n)
	}
	if _, err := ap.Append(ctx, appendOne(tenant, uuid.NewString(), store.ExpectNoStream)); err != nil {
		t.Errorf("append once the queue drained: %v", err)
	}
}
