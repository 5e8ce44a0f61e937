package saga

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// Config configures an Engine.
type Config struct {
	Store   *store.Sagas
	Metrics *metrics.Saga
	Log     *zap.Logger
	// Service is the metrics' service label and the events' source_service.
	Service string
	// Kick wakes the outbox relay once saga events were committed (nil: the relay
	// finds them at its next poll).
	Kick func()
	// PollInterval is the fallback of claims and of the timeout sweeper when no
	// notification comes (default 1 s).
	PollInterval time.Duration
	// Tenants are the tenants whose tasks this sidecar's workers get, canonical UUIDs
	// (nil: any; tenants.go).
	Tenants []string
	// MaxWorkflowLabels and MaxActionLabels bound the distinct workflow and action
	// label values of the saga metrics (0: DefaultMaxWorkflowLabels,
	// DefaultMaxActionLabels). Callers choose both (RegisterWorkflow), so past the limit
	// they are counted under "other" (metrics.LabelCap), as the event metrics' labels.
	MaxWorkflowLabels int
	MaxActionLabels   int
}

// Default bounds of the saga metrics' label values.
const (
	DefaultMaxWorkflowLabels = 64
	DefaultMaxActionLabels   = 256
)

// Engine runs sagas: it makes their state changes, hands their tasks to workers and
// times out attempts. Several engines (sidecars) share one database.
type Engine struct {
	cfg      Config
	st       *store.Sagas
	log      *zap.Logger
	m        *metrics.Saga
	instance string

	defs   sync.Map // defKey → *Definition
	latest sync.Map // workflow id → int32: its latest version, as last seen

	mu      sync.Mutex
	pollers map[string]map[*poller]struct{} // queue → pollers
	held    map[string]*poller              // task id → the poller that sent it
	closed  bool
	stop    chan struct{} // closed by Shutdown: Poll streams end

	notifyMu     sync.Mutex
	notifyQueues map[string]bool
	notifyCh     chan struct{}

	answers *grouper[Answer]
	starts  *grouper[*startItem]

	// The label values of the metrics, bounded (Config.MaxWorkflowLabels, MaxActionLabels).
	workflowLabels, actionLabels *metrics.LabelCap
}

type defKey struct {
	id      string
	version int32
}

// New builds an engine; call Run for its background work.
func New(cfg Config) *Engine {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.Kick == nil {
		cfg.Kick = func() {}
	}
	if cfg.MaxWorkflowLabels <= 0 {
		cfg.MaxWorkflowLabels = DefaultMaxWorkflowLabels
	}
	if cfg.MaxActionLabels <= 0 {
		cfg.MaxActionLabels = DefaultMaxActionLabels
	}
	e := &Engine{
		cfg: cfg, st: cfg.Store, log: cfg.Log.Named("saga"), m: cfg.Metrics, instance: uuid.NewString(),
		pollers: map[string]map[*poller]struct{}{}, held: map[string]*poller{}, stop: make(chan struct{}),
		notifyQueues: map[string]bool{}, notifyCh: make(chan struct{}, 1),
		workflowLabels: metrics.NewLabelCap(cfg.MaxWorkflowLabels), actionLabels: metrics.NewLabelCap(cfg.MaxActionLabels),
	}
	e.answers = newGrouper(func(a Answer) string { return a.TaskID }, e.writeAnswers)
	e.starts = newGrouper(startKey, e.writeStarts)
	return e
}

// Shutdown ends every Poll stream (the sidecar is stopping; workers reconnect
// elsewhere). Tasks the workers hold stay leased: they can still answer them through
// another sidecar.
func (e *Engine) Shutdown() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.closed {
		e.closed = true
		close(e.stop)
	}
}

// ErrShutdown ends a Poll stream when the sidecar stops.
var ErrShutdown = redact.Sentinel("the sidecar is shutting down: reconnect to poll tasks")

// def answers a workflow's definition at version (cached: versions never change).
func (e *Engine) def(ctx context.Context, id string, version int32) (*Definition, error) {
	if d, ok := e.defs.Load(defKey{id, version}); ok {
		return d.(*Definition), nil
	}
	data, v, err := e.st.Workflow(ctx, id, version)
	if err != nil {
		return nil, err
	}
	d, err := ParseDefinition(data, v)
	if err != nil {
		return nil, err
	}
	e.defs.Store(defKey{id, v}, d)
	return d, nil
}

func (e *Engine) machine(d *Definition, now time.Time) *Machine {
	return &Machine{
		Def: d, Now: now, Rand: rand.Float64, Service: e.cfg.Service,
		NewTaskID:  func() string { return uuid.NewString() },
		NewEventID: func() string { return uuid.Must(uuid.NewV7()).String() },
	}
}

// Register stores d (see Definition.Normalize) and answers the version new sagas of
// the workflow get, and whether it is new.
func (e *Engine) Register(ctx context.Context, d *Definition) (int32, bool, error) {
	if err := d.Normalize(); err != nil {
		return 0, false, err
	}
	data, digest, err := d.Canonical()
	if err != nil {
		return 0, false, err
	}
	v, created, err := e.st.RegisterWorkflow(ctx, d.WorkflowID, data, digest)
	if err != nil {
		return 0, false, err
	}
	e.latest.Store(d.WorkflowID, v)
	if created {
		e.log.Info("workflow registered", zap.String("workflow_id", d.WorkflowID), zap.Int32("version", v), zap.Int("steps", len(d.Steps)))
	}
	return v, created, nil
}

// StartRequest starts a saga.
type StartRequest struct {
	WorkflowID string
	TenantID   string
	// Context is a JSON object.
	Context        []byte
	IdempotencyKey string
}

// Start starts a saga of the workflow's latest version, or (created false) answers the
// tenant's saga with the same idempotency key. When a worker on this sidecar has room
// for the first task, the saga is inserted with that task already leased to it.
func (e *Engine) Start(ctx context.Context, req StartRequest) (store.SagaRow, bool, error) {
	var err error
	if req.TenantID, err = validate.CanonicalUUID("tenant_id", req.TenantID); err != nil {
		return store.SagaRow{}, false, err
	}
	if err := validate.Name("workflow_id", req.WorkflowID, MaxIDLen, true); err != nil {
		return store.SagaRow{}, false, err
	}
	if err := Text("idempotency_key", req.IdempotencyKey, MaxIdempotencyKey, false); err != nil {
		return store.SagaRow{}, false, err
	}
	if len(req.Context) == 0 {
		req.Context = []byte("{}")
	}
	if err := checkObject("context", req.Context); err != nil {
		return store.SagaRow{}, false, err
	}
	v, err := e.latestVersion(ctx, req.WorkflowID)
	if err != nil {
		return store.SagaRow{}, false, err
	}
	for range 5 {
		d, err := e.def(ctx, req.WorkflowID, v)
		if err != nil {
			return store.SagaRow{}, false, err
		}
		m := e.machine(d, time.Now())
		ch := m.Start(store.SagaRow{
			ID: uuid.Must(uuid.NewV7()).String(), TenantID: req.TenantID, WorkflowID: req.WorkflowID, WorkflowVersion: d.Version,
			Context: req.Context, IdempotencyKey: req.IdempotencyKey,
		})
		first := &ch.Steps[0]
		p := e.reserve(first.Queue, first.TaskID)
		if p != nil {
			first.TaskState, first.WorkerID = store.TaskLeased, p.worker
		}
		var ins store.Inserted
		it, err := e.starts.do(ctx, &startItem{ns: store.NewSaga{Saga: &ch.Saga, First: first, Events: ch.Events}})
		if err == nil {
			ins, err = it.v.res, it.err
		}
		if err != nil || !ins.Created {
			if p != nil {
				e.unhold(first.TaskID)
			}
		}
		switch {
		case err != nil:
			return store.SagaRow{}, false, err
		case ins.Stale:
			v = ins.Latest
			e.latest.Store(req.WorkflowID, v)
			continue
		case !ins.Created && ins.Saga.WorkflowID != req.WorkflowID:
			return store.SagaRow{}, false, ErrIdempotencyKeyReused
		case !ins.Created:
			return ins.Saga, false, nil
		}
		sg := ins.Saga
		e.m.Started.WithLabelValues(e.cfg.Service, e.workflowLabels.Value(sg.WorkflowID)).Inc()
		if ce := e.log.Check(zap.DebugLevel, "saga started"); ce != nil {
			ce.Write(zap.String("saga_id", sg.ID), zap.String("workflow_id", sg.WorkflowID), zap.Int32("version", sg.WorkflowVersion))
		}
		if p != nil {
			ch.Ready = nil
			e.push(p, store.ClaimedTask{
				SagaID: sg.ID, TenantID: sg.TenantID, WorkflowID: sg.WorkflowID, WorkflowVersion: sg.WorkflowVersion,
				TaskID: first.TaskID, Kind: KindAction, Queue: first.Queue, Attempt: 1,
				ReadyAt: sg.CreatedAt, Deadline: ins.Deadline, Context: sg.Context,
			})
		}
		ch.Saga.UpdatedAt = sg.CreatedAt
		for i := range ch.Ready {
			ch.Ready[i].At = sg.CreatedAt
		}
		e.after(&ch)
		return sg, true, nil
	}
	return store.SagaRow{}, false, redact.Sentinel("saga: the workflow's latest version kept changing")
}

// latestVersion answers a workflow's latest version: remembered once read (this
// sidecar's registrations update it; a start with a version another sidecar has since
// superseded is refused by the insert, which answers the latest).
func (e *Engine) latestVersion(ctx context.Context, id string) (int32, error) {
	if v, ok := e.latest.Load(id); ok {
		return v.(int32), nil
	}
	v, err := e.st.LatestWorkflowVersion(ctx, id)
	if err != nil {
		return 0, err
	}
	e.latest.Store(id, v)
	return v, nil
}

// tenantSaga answers tenant and saga ids in canonical form (validate.CanonicalUUID).
func tenantSaga(tenant, id string) (string, string, error) {
	t, err := validate.CanonicalUUID("tenant_id", tenant)
	if err != nil {
		return "", "", err
	}
	id, err = validate.CanonicalUUID("saga_id", id)
	return t, id, err
}

// View is a saga as GetSaga shows it.
type View struct {
	Saga    store.SagaRow
	Def     *Definition
	Steps   []store.SagaStepRow
	History []store.SagaHistoryEvent
}

// Get answers tenant's saga id with its steps and history.
func (e *Engine) Get(ctx context.Context, tenant, id string) (*View, error) {
	tenant, id, err := tenantSaga(tenant, id)
	if err != nil {
		return nil, err
	}
	sg, steps, hist, err := e.st.GetSaga(ctx, tenant, id)
	if err != nil {
		return nil, err
	}
	d, err := e.def(ctx, sg.WorkflowID, sg.WorkflowVersion)
	if err != nil {
		return nil, err
	}
	return &View{Saga: sg, Def: d, Steps: steps, History: hist}, nil
}

// List answers a page of a tenant's sagas.
func (e *Engine) List(ctx context.Context, f store.SagaFilter) ([]store.SagaRow, string, error) {
	return e.st.ListSagas(ctx, f)
}

// StepID answers the id of step i of a workflow version ("" when unknown).
func (e *Engine) StepID(ctx context.Context, sg *store.SagaRow, i int) string {
	d, err := e.def(ctx, sg.WorkflowID, sg.WorkflowVersion)
	if err != nil || i < 0 || i >= len(d.Steps) {
		return ""
	}
	return d.Steps[i].ID
}

// Cancel cancels tenant's running saga id (see Machine.Cancel) and answers it.
func (e *Engine) Cancel(ctx context.Context, tenant, id, reason string) (store.SagaRow, error) {
	tenant, id, err := tenantSaga(tenant, id)
	if err != nil {
		return store.SagaRow{}, err
	}
	ch, err := e.transition(ctx, func() (*store.SagaTx, error) { return e.st.LockSaga(ctx, tenant, id) },
		func(m *Machine, tx *store.SagaTx) (Change, error) { return m.Cancel(tx.Saga, tx.Steps, reason) })
	if err != nil {
		return store.SagaRow{}, err
	}
	if !ch.NoOp {
		e.log.Info("saga cancelled", zap.String("saga_id", id), zap.String("workflow_id", ch.Saga.WorkflowID), zap.String("state", ch.Saga.State))
	}
	return ch.Saga, nil
}

// Complete answers task taskID done with output (a JSON object).
func (e *Engine) Complete(ctx context.Context, taskID string, output []byte) error {
	taskID, err := validate.CanonicalUUID("task_id", taskID)
	if err != nil {
		return err
	}
	if len(output) == 0 {
		output = []byte("{}")
	}
	if err := checkObject("output", output); err != nil {
		return err
	}
	return e.answer(ctx, Answer{TaskID: taskID, Outcome: Completed, Output: output})
}

// Fail answers task taskID failed.
func (e *Engine) Fail(ctx context.Context, taskID, errorType, errorMessage string, nonRetryable bool) error {
	taskID, err := validate.CanonicalUUID("task_id", taskID)
	if err != nil {
		return err
	}
	if err := validate.Name("error_type", errorType, MaxErrorTypeLen, true); err != nil {
		return err
	}
	if err := Text("error_message", errorMessage, MaxErrorMessageLen, true); err != nil {
		return err
	}
	return e.answer(ctx, Answer{TaskID: taskID, Outcome: Failed, ErrorType: errorType, ErrorMessage: errorMessage, NonRetryable: nonRetryable})
}

// transition runs one state change: lock, compute, write, commit; then wakes workers
// and the relay. A definition not cached yet is read outside the transaction, which
// then starts again (so that no transaction waits for a second connection). A commit
// that failed for PostgreSQL's reasons having written nothing (store.TxRetriable) runs
// the whole change again, after a backoff: the saga is locked and decided anew.
func (e *Engine) transition(ctx context.Context, lock func() (*store.SagaTx, error), apply func(*Machine, *store.SagaTx) (Change, error)) (Change, error) {
	wait := txRetryBase
	for range 3 {
		tx, err := lock()
		if err != nil {
			return Change{}, err
		}
		d, ok := e.defs.Load(defKey{tx.Saga.WorkflowID, tx.Saga.WorkflowVersion})
		if !ok {
			wf, v := tx.Saga.WorkflowID, tx.Saga.WorkflowVersion
			tx.Rollback()
			if _, err := e.def(ctx, wf, v); err != nil {
				return Change{}, err
			}
			continue
		}
		ch, err := apply(e.machine(d.(*Definition), tx.Now), tx)
		if err != nil || ch.NoOp {
			tx.Rollback()
			return ch, err
		}
		pushes := e.leaseLocally(&ch, tx.Now)
		if err := tx.Commit(ctx, &ch.Saga, ch.Steps, ch.Events); err != nil {
			for _, p := range pushes {
				e.unhold(p.task.TaskID)
			}
			if store.TxRetriable(err) && sleepCtx(ctx, wait) {
				wait *= 4
				continue
			}
			return Change{}, err
		}
		for _, p := range pushes {
			e.push(p.p, p.task)
		}
		e.after(&ch)
		return ch, nil
	}
	return Change{}, redact.Sentinel("saga: the state change could not be made: its definition kept missing from the cache, or its commit kept failing")
}

// txRetryBase is the wait before a state change runs again after a commit that wrote
// nothing (then 4 times longer), as store.Do's retries.
const txRetryBase = 50 * time.Millisecond

// sleepCtx waits d, or answers false if ctx ends first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// after runs once a change committed: workers of its new tasks are woken (here and,
// through NOTIFY, elsewhere), the relay is kicked, metrics and logs.
func (e *Engine) after(ch *Change) {
	for _, r := range ch.Ready {
		if !e.serves(ch.Saga.TenantID) {
			e.announce(r.Queue) // for the workers of the sidecars that serve its tenant
			continue
		}
		e.ready(r, ch.Saga.UpdatedAt)
	}
	if len(ch.Events) > 0 {
		e.cfg.Kick()
	}
	for _, d := range ch.Durations {
		e.m.StepDuration.WithLabelValues(e.cfg.Service, e.actionLabels.Value(d.Action)).Observe(d.Seconds)
	}
	if ch.Ended == "" {
		return
	}
	sg := &ch.Saga
	e.m.Completed.WithLabelValues(e.cfg.Service, e.workflowLabels.Value(sg.WorkflowID), ch.Ended).Inc()
	switch ch.Ended {
	case StateFailed:
		// The error type only: messages come from workers and may hold health data.
		e.log.Warn("saga failed: an operator must look", zap.String("saga_id", sg.ID), zap.String("workflow_id", sg.WorkflowID),
			zap.Int("failed_step", sg.FailedStep), zap.String("error_type", sg.ErrorType))
	case StateCompensated:
		e.log.Info("saga compensated", zap.String("saga_id", sg.ID), zap.String("workflow_id", sg.WorkflowID),
			zap.Int("failed_step", sg.FailedStep), zap.String("error_type", sg.ErrorType))
	default:
		if ce := e.log.Check(zap.DebugLevel, "saga ended"); ce != nil {
			ce.Write(zap.String("saga_id", sg.ID), zap.String("workflow_id", sg.WorkflowID), zap.String("state", ch.Ended))
		}
	}
}

// Run does the engine's background work until ctx ends: the NOTIFY listener and
// sender, the timeout sweeper and the pending-tasks gauge.
func (e *Engine) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){e.listen, e.notifier, e.sweep, e.measurePending} {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	wg.Wait()
	return nil
}

// sweep times out leased tasks whose deadline passed, in every sidecar: whichever
// locks the saga first makes the change, the others find the task no longer leased.
// It sleeps until the next deadline (at most PollInterval: deadlines set elsewhere).
func (e *Engine) sweep(ctx context.Context) {
	for {
		ids, next, err := e.st.Expired(ctx, 100)
		if err != nil && ctx.Err() == nil {
			e.log.Warn("saga timeout sweep failed; will retry", redact.Error(err))
		}
		for _, id := range ids {
			a := Answer{TaskID: id, Outcome: TimedOut}
			ch, err := e.transition(ctx, func() (*store.SagaTx, error) { return e.st.LockByTask(ctx, id) },
				func(m *Machine, tx *store.SagaTx) (Change, error) { return m.Answer(tx.Saga, tx.Steps, a) })
			switch {
			case err == nil:
				e.unhold(id)
				e.log.Info("saga task timed out", zap.String("saga_id", ch.Saga.ID), zap.String("task_id", id),
					zap.String("workflow_id", ch.Saga.WorkflowID))
			case errors.Is(err, store.ErrTaskNotLeased), errors.Is(err, errNotExpired):
			case ctx.Err() != nil:
				return
			default:
				e.log.Warn("saga timeout failed; will retry", zap.String("task_id", id), redact.Error(err))
			}
		}
		wait := e.cfg.PollInterval
		switch {
		case len(ids) == 100:
			wait = 0
		case next != store.NoneWaiting && next < wait:
			wait = next + time.Millisecond
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}
}

// measurePending sets saga_tasks_pending every 5 seconds: per action label (the
// actions past the label limit summed under "other"), and 0 for a label whose tasks
// are all taken.
func (e *Engine) measurePending(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	seen := map[string]bool{}
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		byQueue, err := e.st.PendingTasks(qctx)
		cancel()
		if err == nil {
			byAction := map[string]float64{}
			for q, n := range byQueue {
				byAction[e.actionLabels.Value(q[2:])] += float64(n)
			}
			for a := range seen {
				if _, ok := byAction[a]; !ok {
					e.m.TasksPending.WithLabelValues(e.cfg.Service, a).Set(0)
				}
			}
			for a, n := range byAction {
				seen[a] = true
				e.m.TasksPending.WithLabelValues(e.cfg.Service, a).Set(n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// History is a saga event as GetSaga shows it.
type History struct {
	Event store.SagaHistoryEvent
	Data  HistoryData
}

// HistoryData is what a history entry shows of a saga event's payload.
type HistoryData struct {
	State        string `json:"state"`
	StepID       string `json:"step_id"`
	Kind         string `json:"kind"`
	Attempt      int    `json:"attempt"`
	ErrorType    string `json:"error_type"`
	ErrorMessage string `json:"error_message"`
	WillRetry    bool   `json:"will_retry"`
	Reason       string `json:"reason"`
}

// ParseHistory decodes the payload of a saga event.
func ParseHistory(h store.SagaHistoryEvent) HistoryData {
	var d HistoryData
	_ = json.Unmarshal(h.Data, &d)
	return d
}
