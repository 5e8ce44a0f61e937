package saga_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/saga"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

// The engine starts goroutines (its background work, group-commit writers, Poll
// streams): none may outlive the tests.
func TestMain(m *testing.M) { testenv.MainNoLeaks(m) }

// engineEnv is an engine on a fresh database, its background work running until the
// test ends.
type engineEnv struct {
	pool   *pgxpool.Pool
	sagas  *store.Sagas
	engine *saga.Engine
	reg    *prometheus.Registry
}

func newEngine(t *testing.T, dsn string, mutate func(*saga.Config), opts ...store.Option) *engineEnv {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Migrate(ctx, pool); err != nil {
		pool.Close()
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg := saga.Config{
		Store: store.NewSagas(pool, opts...), Metrics: metrics.NewSaga(reg), Log: zap.NewNop(), Service: "svc",
		PollInterval: 100 * time.Millisecond,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	e := saga.New(cfg)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = e.Run(runCtx); close(done) }()
	t.Cleanup(func() {
		e.Shutdown()
		stop()
		<-done
		pool.Close()
	})
	return &engineEnv{pool: pool, sagas: cfg.Store, engine: e, reg: reg}
}

// oneStep is a workflow of one step running action.
func oneStep(id, action string) *saga.Definition {
	return &saga.Definition{WorkflowID: id, Steps: []saga.Step{{ID: "s1", Action: action, TimeoutSeconds: 30}}}
}

// poller runs a Poll stream of actions that hands each task to handle, until the test
// ends or the stream does (its error on done).
type poller struct {
	cancel context.CancelFunc
	done   chan error
}

func poll(t *testing.T, e *saga.Engine, actions []string, handle func(saga.Task)) *poller {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &poller{cancel: cancel, done: make(chan error, 1)}
	var handlers sync.WaitGroup
	go func() {
		err := e.Poll(ctx, saga.PollRequest{WorkerID: "w", Actions: actions, MaxInFlight: 16}, func(tasks []saga.Task) error {
			for _, task := range tasks {
				handlers.Add(1)
				go func() { defer handlers.Done(); handle(task) }()
			}
			return nil
		})
		handlers.Wait()
		p.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Error("Poll did not end")
		}
	})
	return p
}

// labelValues answers the values of label of metric name, with their counts (counters)
// or sample counts (histograms).
func labelValues(t *testing.T, reg *prometheus.Registry, name, label string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != label {
					continue
				}
				switch {
				case m.GetCounter() != nil:
					out[l.GetValue()] += m.GetCounter().GetValue()
				case m.GetHistogram() != nil:
					out[l.GetValue()] += float64(m.GetHistogram().GetSampleCount())
				case m.GetGauge() != nil:
					out[l.GetValue()] += m.GetGauge().GetValue()
				}
			}
		}
	}
	return out
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSagaMetricLabelsBounded: workflow and action names are chosen by callers, so the
// saga metrics keep at most the configured number of distinct values of each and count
// every later one under "other": the counts are all there, the series are bounded.
func TestSagaMetricLabelsBounded(t *testing.T) {
	env := newEngine(t, testenv.NewDatabase(t), func(c *saga.Config) { c.MaxWorkflowLabels, c.MaxActionLabels = 2, 3 })
	ctx := context.Background()
	const workflows = 6
	var actions []string
	for i := range workflows {
		a := fmt.Sprintf("act%d", i)
		actions = append(actions, a)
		if _, _, err := env.engine.Register(ctx, oneStep(fmt.Sprintf("wf%d", i), a)); err != nil {
			t.Fatal(err)
		}
	}
	tenant := uuid.NewString()
	var ids []string
	for i := range workflows {
		sg, _, err := env.engine.Start(ctx, saga.StartRequest{WorkflowID: fmt.Sprintf("wf%d", i), TenantID: tenant})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sg.ID)
	}
	// Every action has a pending task (the gauge folds them too).
	waitFor(t, 20*time.Second, "saga_tasks_pending", func() error {
		got := labelValues(t, env.reg, "saga_tasks_pending", "action")
		if len(got) != 4 || got[metrics.Other] != workflows-3 {
			return fmt.Errorf("%v", got)
		}
		return nil
	})
	poll(t, env.engine, actions, func(task saga.Task) {
		if err := env.engine.Complete(ctx, task.TaskID, []byte(`{}`)); err != nil {
			t.Error(err)
		}
	})
	for _, id := range ids {
		waitFor(t, 20*time.Second, "saga "+id+" completed", func() error {
			v, err := env.engine.Get(ctx, tenant, id)
			if err != nil {
				return err
			}
			if v.Saga.State != saga.StateCompleted {
				return errors.New(v.Saga.State)
			}
			return nil
		})
	}
	for _, c := range []struct {
		metric, label string
		kept          int
	}{
		{"saga_started_total", "workflow", 2},
		{"saga_completed_total", "workflow", 2},
		{"saga_step_duration_seconds", "action", 3},
	} {
		got := labelValues(t, env.reg, c.metric, c.label)
		if len(got) != c.kept+1 {
			t.Errorf("%s: %d %s values %v, want %d and %q", c.metric, len(got), c.label, got, c.kept, metrics.Other)
		}
		total := 0.0
		for v, n := range got {
			total += n
			if v != metrics.Other && n != 1 {
				t.Errorf("%s{%s=%q} = %v, want 1", c.metric, c.label, v, n)
			}
		}
		if total != workflows || got[metrics.Other] != float64(workflows-c.kept) {
			t.Errorf("%s: %v: want %d in all, %d under %q", c.metric, got, workflows, workflows-c.kept, metrics.Other)
		}
	}
}

// TestSagaEngineThroughPostgresOutage: during an outage the engine's calls answer the
// store's retriable *store.UnavailableError (StartSaga, an answer) and their failures
// open the postgres breaker; once PostgreSQL is back (breaker half-open, then closed)
// the same answer is accepted, the worker's stream, which lived through the outage,
// gets the next task, and new sagas start and complete.
func TestSagaEngineThroughPostgresOutage(t *testing.T) {
	pg := testenv.StoppablePostgres(t)
	reg := prometheus.NewRegistry()
	settings := resilience.DefaultSettings()
	settings.Timeout = 200 * time.Millisecond
	b := store.NewBreaker("svc", settings, resilience.NewMetrics(reg), zap.NewNop())
	env := newEngine(t, pg.DSN("postgres"), nil, store.WithBreaker(b))
	ctx := context.Background()
	def := &saga.Definition{WorkflowID: "outage", Steps: []saga.Step{
		{ID: "s1", Action: "out.do1", TimeoutSeconds: 300}, {ID: "s2", Action: "out.do2", TimeoutSeconds: 300},
	}}
	if _, _, err := env.engine.Register(ctx, def); err != nil {
		t.Fatal(err)
	}
	tasks := make(chan saga.Task, 16)
	poll(t, env.engine, []string{"out.do1", "out.do2"}, func(task saga.Task) { tasks <- task })
	next := func() saga.Task {
		t.Helper()
		select {
		case task := <-tasks:
			return task
		case <-time.After(30 * time.Second):
			t.Fatal("no task")
			return saga.Task{}
		}
	}
	tenant := uuid.NewString()
	sg, _, err := env.engine.Start(ctx, saga.StartRequest{WorkflowID: "outage", TenantID: tenant})
	if err != nil {
		t.Fatal(err)
	}
	first := next()

	pg.Stop()
	unavailable := func(what string, err error) {
		t.Helper()
		var ue *store.UnavailableError
		if !errors.As(err, &ue) || !resilience.Retriable(err) {
			t.Fatalf("%s with PostgreSQL down: %v, want a retriable *store.UnavailableError", what, err)
		}
	}
	for i := 0; b.State() == resilience.Closed; i++ {
		if i == 10 {
			t.Fatal("the breaker did not open")
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		unavailable("Complete", env.engine.Complete(cctx, first.TaskID, []byte(`{"bed":"b1"}`)))
		_, _, err := env.engine.Start(cctx, saga.StartRequest{WorkflowID: "outage", TenantID: tenant})
		cancel()
		unavailable("Start", err)
	}

	pg.Start()
	waitFor(t, 60*time.Second, "the answer accepted after PostgreSQL came back", func() error {
		return env.engine.Complete(ctx, first.TaskID, []byte(`{"bed":"b1"}`))
	})
	second := next()
	if second.SagaID != sg.ID || second.StepID != "s2" {
		t.Fatalf("after the outage the stream got %s/%s, want %s/s2", second.SagaID, second.StepID, sg.ID)
	}
	if err := env.engine.Complete(ctx, second.TaskID, nil); err != nil {
		t.Fatal(err)
	}
	sg2, _, err := env.engine.Start(ctx, saga.StartRequest{WorkflowID: "outage", TenantID: tenant})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		task := next()
		if task.SagaID != sg2.ID {
			t.Fatalf("task of saga %s, want %s", task.SagaID, sg2.ID)
		}
		if err := env.engine.Complete(ctx, task.TaskID, nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{sg.ID, sg2.ID} {
		waitFor(t, 20*time.Second, "saga "+id+" completed", func() error {
			v, err := env.engine.Get(ctx, tenant, id)
			if err != nil {
				return err
			}
			if v.Saga.State != saga.StateCompleted {
				return errors.New(v.Saga.State)
			}
			return nil
		})
	}
	if b.State() != resilience.Closed {
		t.Errorf("breaker %v after recovery", b.State())
	}
}
