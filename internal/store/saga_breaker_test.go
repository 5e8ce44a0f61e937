package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

// The saga store's calls run through store.Do and the postgres breaker, as the event
// store's: while PostgreSQL is down each one (reads, claims, inserts, locks, and the
// commit of a state change locked before the outage) answers a retriable
// *store.UnavailableError and counts once as a failure, so the breaker opens from saga
// traffic alone and then refuses calls without reaching for a connection. Once
// PostgreSQL is back, saga calls succeed again, the breaker closes, and a whole state
// change (lock, commit) and a claim work; the change cut off by the outage wrote
// nothing.
func TestSagaCallsOpenTheBreakerAndRecover(t *testing.T) {
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
	settings := resilience.DefaultSettings()
	settings.Timeout = 200 * time.Millisecond
	settings.FailureThreshold = 11 // the calls below
	b := store.NewBreaker("svc", settings, resilience.NewMetrics(reg), zap.NewNop())
	s := store.NewSagas(pool, store.WithBreaker(b))
	registerWF(t, s, "wf", `{"v":1}`)
	tasks := insertReady(t, s, "wf", 2, "a/do", 30000)
	sg, steps, _, err := getByTask(ctx, t, s, tasks[0])
	if err != nil {
		t.Fatal(err)
	}
	locked, err := s.LockByTask(ctx, tasks[0]) // held across the outage
	if err != nil {
		t.Fatal(err)
	}

	pg.Stop()
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"commit of a change locked before", func(ctx context.Context) error {
			row := locked.Saga
			row.State = "COMPLETED"
			return locked.Commit(ctx, &row, nil, nil)
		}},
		{"RegisterWorkflow", func(ctx context.Context) error {
			_, _, err := s.RegisterWorkflow(ctx, "wf2", []byte(`{}`), []byte("d"))
			return err
		}},
		{"Workflow", func(ctx context.Context) error { _, _, err := s.Workflow(ctx, "wf", 1); return err }},
		{"LatestWorkflowVersion", func(ctx context.Context) error { _, err := s.LatestWorkflowVersion(ctx, "wf"); return err }},
		{"InsertSagas", func(ctx context.Context) error {
			_, err := s.InsertSagas(ctx, []store.NewSaga{{
				Saga:  &store.SagaRow{ID: uuid.NewString(), TenantID: sg.TenantID, WorkflowID: "wf", WorkflowVersion: 1, State: "RUNNING", Context: []byte(`{}`)},
				First: &store.SagaStepRow{Status: "RUNNING", TaskID: uuid.NewString(), Queue: "a/do", TimeoutMS: 1000},
			}})
			return err
		}},
		{"GetSaga", func(ctx context.Context) error { _, _, _, err := s.GetSaga(ctx, sg.TenantID, sg.ID); return err }},
		{"ListSagas", func(ctx context.Context) error {
			_, _, err := s.ListSagas(ctx, store.SagaFilter{TenantID: sg.TenantID, PageSize: 10})
			return err
		}},
		{"LockByTask", func(ctx context.Context) error { _, err := s.LockByTask(ctx, tasks[1]); return err }},
		{"LockByTasks", func(ctx context.Context) error { _, err := s.LockByTasks(ctx, tasks); return err }},
		{"Claim", func(ctx context.Context) error { _, _, err := s.Claim(ctx, []string{"a/do"}, 1, "w"); return err }},
		{"Expired", func(ctx context.Context) error { _, _, err := s.Expired(ctx, 10); return err }},
	}
	if len(calls) != settings.FailureThreshold {
		t.Fatalf("%d calls for a threshold of %d", len(calls), settings.FailureThreshold)
	}
	for i, c := range calls {
		if b.State() != resilience.Closed {
			t.Fatalf("the breaker opened after %d calls, before %s", i, c.name)
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.call(cctx)
		cancel()
		var ue *store.UnavailableError
		var oe *resilience.OpenError
		if !errors.As(err, &ue) || errors.As(err, &oe) || !resilience.Retriable(err) {
			t.Fatalf("%s with PostgreSQL down: %v, want a retriable *store.UnavailableError", c.name, err)
		}
	}
	if b.State() != resilience.Open {
		t.Fatalf("after %d failed saga calls the breaker is %v, want open", len(calls), b.State())
	}
	if got := metric(t, reg, "circuit_breaker_failures_total", store.BreakerName); got != float64(len(calls)) {
		t.Errorf("circuit_breaker_failures_total %v, want %d: one per call, retries included", got, len(calls))
	}
	_, _, err = s.Claim(ctx, []string{"a/do"}, 1, "w")
	var oe *resilience.OpenError
	if !errors.As(err, &oe) || oe.Dependency != store.BreakerName {
		t.Fatalf("Claim with the breaker open: %v, want the postgres breaker's refusal", err)
	}

	pg.Start()
	eventually(t, 30*time.Second, "GetSaga after PostgreSQL came back, breaker closed", func() error {
		if _, _, _, err := s.GetSaga(ctx, sg.TenantID, sg.ID); err != nil {
			return err
		}
		if st := b.State(); st != resilience.Closed {
			return errors.New("breaker " + st.String())
		}
		return nil
	})
	// The commit cut off by the outage wrote nothing; a whole change works now.
	got, gotSteps, _, err := s.GetSaga(ctx, sg.TenantID, sg.ID)
	if err != nil || got.State != "RUNNING" || len(gotSteps) != len(steps) {
		t.Fatalf("saga after the failed commit: %s %v, want it RUNNING as before", got.State, err)
	}
	tx, err := s.LockByTask(ctx, tasks[0])
	if err != nil {
		t.Fatal(err)
	}
	row := tx.Saga
	row.State = "COMPLETED"
	if err := tx.Commit(ctx, &row, nil, nil); err != nil {
		t.Fatalf("commit after recovery: %v", err)
	}
	if got, _, _, err := s.GetSaga(ctx, sg.TenantID, sg.ID); err != nil || got.State != "COMPLETED" {
		t.Fatalf("after the commit: %s %v", got.State, err)
	}
	if claimed, _, err := s.Claim(ctx, []string{"a/do"}, 5, "w"); err != nil || len(claimed) != 2 {
		t.Fatalf("claim after recovery: %d tasks, %v; want both sagas' tasks", len(claimed), err)
	}
}

// getByTask answers the saga holding task and its steps.
func getByTask(ctx context.Context, t *testing.T, s *store.Sagas, task string) (store.SagaRow, []store.SagaStepRow, []store.SagaHistoryEvent, error) {
	t.Helper()
	tx, err := s.LockByTask(ctx, task)
	if err != nil {
		return store.SagaRow{}, nil, nil, err
	}
	tx.Rollback()
	return s.GetSaga(ctx, tx.Saga.TenantID, tx.Saga.ID)
}
