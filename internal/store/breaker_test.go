package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

// metric is the value of a circuit_breaker_* series of service svc, dependency dep.
func metric(t *testing.T, reg *prometheus.Registry, name, dep string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["dependency"] == dep && labels["service"] == "svc" {
				if m.GetGauge() != nil {
					return m.GetGauge().GetValue()
				}
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// eventually polls cond until it holds; within only bounds a failing test.
func eventually(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// While PostgreSQL is down, store calls answer *store.UnavailableError at once (no pgx
// type, no hang); after the failure threshold the postgres breaker opens and calls are
// refused without reaching for a connection; once PostgreSQL is back the pool
// reconnects by itself, the half-open trials succeed, the breaker closes, and the data
// written before the stop is there.
func TestPostgresDownBreakerOpensAndRecovers(t *testing.T) {
	pg := testenv.StoppablePostgres(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	core, logs := observer.New(zap.InfoLevel)
	settings := resilience.DefaultSettings()
	settings.Timeout = 200 * time.Millisecond // the guide's 60 s would make the test wait a minute
	b := store.NewBreaker("svc", settings, resilience.NewMetrics(reg), zap.New(core))
	events := store.NewEvents(pool, store.WithBreaker(b))
	failed := store.NewFailedEvents(pool, store.WithBreaker(b))
	schemas := store.NewSchemas(pool, store.WithBreaker(b))

	tenant, agg := uuid.NewString(), uuid.NewString()
	if _, err := events.Append(ctx, appendOne(tenant, agg, store.ExpectNoStream)); err != nil {
		t.Fatal(err)
	}

	pg.Stop()
	// Each exported call of each store type answers the typed error while down.
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"Append", func(ctx context.Context) error {
			_, err := events.Append(ctx, appendOne(tenant, agg, store.ExpectAny))
			return err
		}},
		{"Load", func(ctx context.Context) error { _, err := events.Load(ctx, tenant, agg); return err }},
		{"ReadAggregate", func(ctx context.Context) error {
			return events.ReadAggregate(ctx, tenant, agg, 1, 100, func([]store.StoredEvent) error { return nil })
		}},
		{"FailedEvents.List", func(ctx context.Context) error {
			_, _, err := failed.List(ctx, store.FailedFilter{TenantID: tenant, PageSize: 10})
			return err
		}},
		{"Schemas.All", func(ctx context.Context) error { _, err := schemas.All(ctx); return err }},
	}
	for _, c := range calls {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.call(cctx)
		cancel()
		var ue *store.UnavailableError
		var oe *resilience.OpenError
		if !errors.As(err, &ue) || errors.As(err, &oe) || !resilience.Retriable(err) {
			t.Fatalf("%s with PostgreSQL down: %v, want a retriable *store.UnavailableError", c.name, err)
		}
	}
	if b.State() != resilience.Open || metric(t, reg, "circuit_breaker_state", store.BreakerName) != 1 {
		t.Fatalf("after %d failures the breaker is %v, gauge %v; want open (1)", len(calls), b.State(), metric(t, reg, "circuit_breaker_state", store.BreakerName))
	}
	if got := metric(t, reg, "circuit_breaker_failures_total", store.BreakerName); got != float64(len(calls)) {
		t.Errorf("circuit_breaker_failures_total %v, want %d", got, len(calls))
	}
	// Open: refused before any connection is tried, naming the dependency, still the
	// store's typed error.
	_, err = events.Load(ctx, tenant, agg)
	var ue *store.UnavailableError
	var oe *resilience.OpenError
	if !errors.As(err, &ue) || !errors.As(err, &oe) || oe.Dependency != "postgres" {
		t.Fatalf("with the breaker open: %v, want *store.UnavailableError holding postgres's *resilience.OpenError", err)
	}
	if got := metric(t, reg, "circuit_breaker_failures_total", store.BreakerName); got != float64(len(calls)) {
		t.Errorf("a refused call counted as a failure: %v", got)
	}

	pg.Start()
	eventually(t, 30*time.Second, "append after PostgreSQL came back", func() error {
		_, err := events.Append(ctx, appendOne(tenant, agg, store.ExpectAny))
		return err
	})
	eventually(t, 30*time.Second, "breaker closing", func() error {
		if _, err := events.Load(ctx, tenant, agg); err != nil {
			return err
		}
		if st := b.State(); st != resilience.Closed {
			return errors.New("breaker " + st.String())
		}
		return nil
	})
	if metric(t, reg, "circuit_breaker_state", store.BreakerName) != 0 || metric(t, reg, "circuit_breaker_successes_total", store.BreakerName) < 2 {
		t.Errorf("after recovery: state gauge %v, successes %v", metric(t, reg, "circuit_breaker_state", store.BreakerName),
			metric(t, reg, "circuit_breaker_successes_total", store.BreakerName))
	}
	l, err := events.Load(ctx, tenant, agg)
	if err != nil || l.Version < 2 {
		t.Fatalf("load after recovery: %+v, %v", l, err)
	}
	var changes []string
	for _, e := range logs.FilterMessage("circuit breaker state changed").All() {
		f := e.ContextMap()
		changes = append(changes, f["from"].(string)+">"+f["to"].(string))
	}
	if got := strings.Join(changes, " "); got != "closed>open open>half-open half-open>closed" {
		t.Errorf("state changes logged: %q", got)
	}
}
