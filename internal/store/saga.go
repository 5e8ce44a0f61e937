package store

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/validate"
)

// Saga errors.
var (
	// ErrWorkflowNotFound: no workflow with that id (and version) is registered.
	ErrWorkflowNotFound = redact.Sentinel("workflow not registered")
	// ErrSagaNotFound: no such saga for this tenant (another tenant's saga is reported
	// the same way, so that its existence does not leak).
	ErrSagaNotFound = redact.Sentinel("saga not found")
	// ErrTaskNotLeased: no task with that id is held by a worker: it timed out, was
	// taken back, was already answered, or never existed.
	ErrTaskNotLeased = redact.Sentinel("task is not leased: it timed out, was reassigned or answered already, or never existed")
)

// Task states of a saga_steps row (task_state).
const (
	TaskReady  = "ready"
	TaskLeased = "leased"
)

// SagaAggregateType is the aggregate_type of saga events in stored_events.
const SagaAggregateType = "Saga"

// SagaRow is a row of sagas.
type SagaRow struct {
	ID              string
	TenantID        string
	WorkflowID      string
	WorkflowVersion int32
	State           string
	// CurrentStep is the index of the step running or being compensated.
	CurrentStep int
	// Context is a JSON object.
	Context         []byte
	IdempotencyKey  string
	CancelRequested bool
	ErrorType       string
	ErrorMessage    string
	// FailedStep is the index of the step whose failure compensated or failed the
	// saga, -1 for none.
	FailedStep int
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// EndedAt is zero until the saga ends.
	EndedAt time.Time
}

// SagaStepRow is a row of saga_steps: a step the saga reached, and its live task.
// Zero times are NULL.
type SagaStepRow struct {
	Index       int
	Status      string
	Attempt     int
	CompAttempt int
	// TaskID is the live task's id (its lease token), "" when none.
	TaskID string
	// TaskState is TaskReady, TaskLeased or "" (no live task).
	TaskState string
	// TaskKind is 1 (action) or 2 (compensation) for the live task.
	TaskKind int
	// Queue is "a/<action>" or "c/<compensation>" of the live task.
	Queue     string
	TimeoutMS int
	ReadyAt   time.Time
	Deadline  time.Time
	WorkerID  string
	// Output is the action's output (a JSON object), nil until it completed.
	Output          []byte
	ErrorType       string
	ErrorMessage    string
	ScheduledAt     time.Time
	StartedAt       time.Time
	FinishedAt      time.Time
	CompScheduledAt time.Time
	CompensatedAt   time.Time
}

// SagaEvent is a saga event to store (and publish through the outbox).
type SagaEvent struct {
	ID   string
	Type string
	// Data and Metadata are JSON objects.
	Data     []byte
	Metadata []byte
}

// Sagas is the saga tables (and the saga events in stored_events).
//
// Every method runs its statements inside Do, as the event store's: errors come in
// this package's classes, the postgres breaker (WithBreaker) counts each call, and a
// call that failed for PostgreSQL's reasons is retried when that is safe: reads, and
// writes that never reached the server. A state change is two calls, LockByTask (or
// LockSaga, LockByTasks) and Commit, with the engine's decision between them: the lock
// is retried (it writes nothing), the commit never is (the transaction it ends is gone
// with a failed connection); the engine runs the whole change again instead when
// TxRetriable says nothing was written.
type Sagas struct {
	pool    *pgxpool.Pool
	breaker *resilience.Breaker
}

// NewSagas uses pool.
func NewSagas(pool *pgxpool.Pool, opts ...Option) *Sagas {
	return &Sagas{pool: pool, breaker: buildOptions(opts).breaker}
}

// Pool is the pool the store uses.
func (s *Sagas) Pool() *pgxpool.Pool { return s.pool }

// doOnce is Do without retries: for the second half of a transaction, which cannot be
// run again alone.
func doOnce(ctx context.Context, b *resilience.Breaker, op string, f func(context.Context) error) error {
	if b != nil {
		if err := b.Allow(); err != nil {
			return &UnavailableError{Op: op, open: err}
		}
	}
	err := classify(ctx, ReadWrite, op, f(ctx))
	if b != nil {
		b.Done(err)
	}
	return err
}

// TxRetriable reports whether a saga state change that failed with err (its lock or its
// commit) wrote nothing for PostgreSQL's reasons, so that it may run again whole: lock,
// decision, commit. (A commit cut off after it was sent has an unknown outcome: not
// retried.)
func TxRetriable(err error) bool { return safeToRetry(err) }

// Notify sends a notification on channel (pg_notify).
func (s *Sagas) Notify(ctx context.Context, channel, payload string) error {
	return Do(ctx, s.breaker, ReadWrite, "saga notify", func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `SELECT pg_notify($1, $2)`, channel, payload)
		return err
	})
}

// registerSQL inserts a new version unless the latest one has the same digest; it
// answers the inserted version (NULL if none) and the latest one before.
const registerSQL = `WITH latest AS (
	SELECT version, digest FROM saga_workflows WHERE workflow_id = $1 ORDER BY version DESC LIMIT 1
), ins AS (
	INSERT INTO saga_workflows (workflow_id, version, definition, digest)
	SELECT $1, coalesce((SELECT version FROM latest), 0) + 1, $2::jsonb, $3
	 WHERE NOT EXISTS (SELECT 1 FROM latest WHERE digest = $3)
	RETURNING version
)
SELECT (SELECT version FROM ins), (SELECT version FROM latest)`

// RegisterWorkflow stores definition (JSON) as the workflow's next version unless the
// latest version has the same digest. It answers the version new sagas get and
// whether it was created.
func (s *Sagas) RegisterWorkflow(ctx context.Context, id string, definition, digest []byte) (version int32, created bool, err error) {
	err = Do(ctx, s.breaker, ReadWrite, "register workflow", func(ctx context.Context) error {
		for attempt := 0; ; attempt++ {
			var inserted, latest *int32
			err := s.pool.QueryRow(ctx, registerSQL, id, string(definition), digest).Scan(&inserted, &latest)
			var pgErr *pgconn.PgError
			switch {
			case err == nil && inserted != nil:
				version, created = *inserted, true
				return nil
			case err == nil && latest != nil:
				version, created = *latest, false
				return nil
			case err == nil:
				return fmt.Errorf("register workflow %s: no version answered", id)
			case errors.As(err, &pgErr) && pgErr.Code == "23505" && attempt < 10:
				continue // another sidecar registered a version at the same time: look again
			default:
				return fmt.Errorf("register workflow %s: %w", id, err)
			}
		}
	})
	return version, created, err
}

// Workflow answers a workflow's definition (JSON) at version, or at its latest version
// when version is 0, and that version. ErrWorkflowNotFound when there is none.
func (s *Sagas) Workflow(ctx context.Context, id string, version int32) (def []byte, v int32, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read workflow", func(ctx context.Context) error {
		def, v, err = s.workflow(ctx, id, version)
		return err
	})
	return def, v, err
}

func (s *Sagas) workflow(ctx context.Context, id string, version int32) ([]byte, int32, error) {
	var def []byte
	var v int32
	err := s.pool.QueryRow(ctx, `SELECT definition, version FROM saga_workflows
		WHERE workflow_id = $1 AND ($2 = 0 OR version = $2) ORDER BY version DESC LIMIT 1`, id, version).Scan(&def, &v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, 0, ErrWorkflowNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read workflow %s: %w", id, err)
	}
	return def, v, nil
}

// LatestWorkflowVersion answers the latest version of a workflow (ErrWorkflowNotFound
// when none).
func (s *Sagas) LatestWorkflowVersion(ctx context.Context, id string) (v int32, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read workflow", func(ctx context.Context) error {
		err := s.pool.QueryRow(ctx, `SELECT version FROM saga_workflows WHERE workflow_id = $1 ORDER BY version DESC LIMIT 1`, id).Scan(&v)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrWorkflowNotFound
		}
		if err != nil {
			return fmt.Errorf("read workflow %s: %w", id, err)
		}
		return nil
	})
	return v, err
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func nullString(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func timeOf(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

// insertSagasSQL inserts sagas, their first steps and their events in one statement
// (and transaction). A saga is not inserted when its workflow version is no longer the
// latest, or when its tenant already has a saga with its idempotency key (the rows are
// inserted in the order given: callers sort them, so that two statements never wait
// for each other's keys). It answers, per saga in the order given: its creation time
// (NULL: not inserted), the workflow's latest version and the first task's deadline
// (when inserted leased).
const insertSagasSQL = `WITH u AS (
	SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::varchar[], $4::int[], $5::varchar[], $6::text[], $7::varchar[],
	                     $8::varchar[], $9::uuid[], $10::varchar[], $11::int[], $12::varchar[], $13::varchar[])
	       WITH ORDINALITY AS u(id, tenant, wf, ver, state, ctx, ikey, status, task, queue, timeout, tstate, worker, i)
), v AS (
	SELECT workflow_id, max(version) AS latest FROM saga_workflows WHERE workflow_id IN (SELECT wf FROM u) GROUP BY workflow_id
), s AS (
	INSERT INTO sagas (saga_id, tenant_id, workflow_id, workflow_version, state, current_step, context,
	                   idempotency_key, created_at, updated_at)
	SELECT u.id, u.tenant, u.wf, u.ver, u.state, 0, u.ctx::jsonb, u.ikey, now(), now()
	  FROM u JOIN v ON v.workflow_id = u.wf AND v.latest = u.ver
	 ORDER BY u.i
	ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
	RETURNING saga_id, created_at
), st AS (
	INSERT INTO saga_steps (saga_id, step_index, status, attempt, task_id, task_state, task_kind, queue,
	                        timeout_ms, ready_at, scheduled_at, worker_id, deadline, started_at)
	SELECT u.id, 0, u.status, 1, u.task, u.tstate, 1, u.queue, u.timeout, now(), now(), u.worker,
	       CASE WHEN u.tstate = 'leased' THEN now() + u.timeout * interval '1 millisecond' END,
	       CASE WHEN u.tstate = 'leased' THEN now() END
	  FROM u JOIN s ON s.saga_id = u.id
	RETURNING saga_id, deadline
), ev AS (
	INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version, event_type,
	                           event_data, occurred_at, metadata, position)
	SELECT e.id, u.tenant, 'Saga', e.agg, row_number() OVER (PARTITION BY e.agg ORDER BY e.ord), e.typ, e.dat::jsonb,
	       now(), e.meta::jsonb, (pg_current_xact_id()::text::bigint << 10) + e.ord - 1
	  FROM unnest($14::uuid[], $15::uuid[], $16::text[], $17::text[], $18::text[]) WITH ORDINALITY AS e(id, agg, typ, dat, meta, ord)
	  JOIN s ON s.saga_id = e.agg JOIN u ON u.id = e.agg
)
SELECT s.created_at, v.latest, st.deadline
  FROM u LEFT JOIN s ON s.saga_id = u.id LEFT JOIN v ON v.workflow_id = u.wf LEFT JOIN st ON st.saga_id = u.id
 ORDER BY u.i`

// NewSaga is a saga to insert: its row, its first step (whose task is ready, or leased
// to First.WorkerID when First.TaskState is TaskLeased) and its events.
type NewSaga struct {
	Saga   *SagaRow
	First  *SagaStepRow
	Events []SagaEvent
}

// Inserted is what InsertSagas did with one saga.
type Inserted struct {
	// Saga is the saga inserted (its times the database's clock), or the tenant's saga
	// with the same idempotency key.
	Saga    SagaRow
	Created bool
	// Stale: the version given is not the workflow's latest (Latest is): nothing was
	// inserted.
	Stale  bool
	Latest int32
	// Deadline is the first task's when it was inserted leased.
	Deadline time.Time
	// Err is ErrWorkflowNotFound when the workflow has no version.
	Err error
}

// InsertSaga inserts one saga (see InsertSagas).
func (s *Sagas) InsertSaga(ctx context.Context, sg *SagaRow, first *SagaStepRow, events []SagaEvent) (Inserted, error) {
	out, err := s.InsertSagas(ctx, []NewSaga{{Saga: sg, First: first, Events: events}})
	if err != nil {
		return Inserted{}, err
	}
	return out[0], out[0].Err
}

// InsertSagas inserts new sagas (of distinct tenant idempotency keys, sorted by them)
// with their first steps and their events, in one statement and transaction; their
// times are the database's clock. A saga whose workflow version is no longer the latest
// is not inserted (Stale); one whose tenant already has a saga with its idempotency key
// is not either, and that saga is answered (Created false).
func (s *Sagas) InsertSagas(ctx context.Context, ns []NewSaga) ([]Inserted, error) {
	n := len(ns)
	var (
		ids, tenants, wfs, states, ctxs, statuses, tasks, queues, tstates = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		vers, timeouts                                                    = make([]int32, n), make([]int32, n)
		keys, workers                                                     = make([]*string, n), make([]*string, n)
		evID, evAgg, evType, evData, evMeta                               []string
	)
	for i, x := range ns {
		sg, f := x.Saga, x.First
		ids[i], tenants[i], wfs[i], vers[i], states[i], ctxs[i] = sg.ID, sg.TenantID, sg.WorkflowID, sg.WorkflowVersion, sg.State, string(sg.Context)
		keys[i], statuses[i], tasks[i], queues[i], timeouts[i] = nullString(sg.IdempotencyKey), f.Status, f.TaskID, f.Queue, int32(f.TimeoutMS)
		tstates[i], workers[i] = cmp.Or(f.TaskState, TaskReady), nullString(f.WorkerID)
		for _, e := range x.Events {
			m := "{}"
			if len(e.Metadata) > 0 {
				m = string(e.Metadata)
			}
			evID, evAgg, evType, evData, evMeta = append(evID, e.ID), append(evAgg, sg.ID), append(evType, e.Type), append(evData, string(e.Data)), append(evMeta, m)
		}
	}
	var out []Inserted
	err := Do(ctx, s.breaker, ReadWrite, "insert sagas", func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, insertSagasSQL, ids, tenants, wfs, vers, states, ctxs, keys, statuses, tasks, queues, timeouts,
			tstates, workers, evID, evAgg, evType, evData, evMeta)
		if err != nil {
			return fmt.Errorf("insert sagas: %w", err)
		}
		defer rows.Close()
		out = make([]Inserted, 0, n)
		for rows.Next() {
			var created, deadline *time.Time
			var latest *int32
			if err := rows.Scan(&created, &latest, &deadline); err != nil {
				return fmt.Errorf("insert sagas: %w", err)
			}
			i := len(out)
			var r Inserted
			switch {
			case i >= n:
			case latest == nil:
				r.Err = ErrWorkflowNotFound
			case created != nil:
				r.Saga = *ns[i].Saga
				r.Saga.CreatedAt, r.Saga.UpdatedAt = *created, *created
				r.Created, r.Latest, r.Deadline = true, *latest, timeOf(deadline)
			case *latest != ns[i].Saga.WorkflowVersion:
				r.Stale, r.Latest = true, *latest
			default:
				r.Latest = *latest
			}
			out = append(out, r)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("insert sagas: %w", err)
		}
		if len(out) != n {
			return fmt.Errorf("insert sagas: %d answers for %d sagas", len(out), n)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range ns {
		if r := &out[i]; r.Err == nil && !r.Created && !r.Stale {
			// The key is taken; the saga that holds it is committed (the unique index
			// waited for it).
			if r.Saga, err = s.sagaByKey(ctx, ns[i].Saga.TenantID, ns[i].Saga.IdempotencyKey); err != nil {
				r.Err = err
			}
		}
	}
	return out, nil
}

const sagaColumns = `saga_id, tenant_id, workflow_id, workflow_version, state, current_step, context,
	coalesce(idempotency_key, ''), cancel_requested, error_type, error_message, coalesce(failed_step, -1),
	created_at, updated_at, ended_at`

func scanSaga(row pgx.Row, sg *SagaRow) error {
	var ended *time.Time
	var id, tenant uuid.UUID
	if err := row.Scan(&id, &tenant, &sg.WorkflowID, &sg.WorkflowVersion, &sg.State, &sg.CurrentStep, &sg.Context,
		&sg.IdempotencyKey, &sg.CancelRequested, &sg.ErrorType, &sg.ErrorMessage, &sg.FailedStep,
		&sg.CreatedAt, &sg.UpdatedAt, &ended); err != nil {
		return err
	}
	sg.ID, sg.TenantID, sg.EndedAt = id.String(), tenant.String(), timeOf(ended)
	return nil
}

const stepColumns = `step_index, status, attempt, comp_attempt, task_id, coalesce(task_state, ''), task_kind,
	coalesce(queue, ''), timeout_ms, ready_at, deadline, coalesce(worker_id, ''), output, error_type, error_message,
	scheduled_at, started_at, finished_at, comp_scheduled_at, compensated_at`

// stepScan scans stepColumns into a SagaStepRow.
type stepScan struct {
	st                                                                *SagaStepRow
	task                                                              *uuid.UUID
	ready, deadline, sched, started, finished, compSched, compensated *time.Time
}

func (sc *stepScan) dest() []any {
	st := sc.st
	return []any{
		&st.Index, &st.Status, &st.Attempt, &st.CompAttempt, &sc.task, &st.TaskState, &st.TaskKind,
		&st.Queue, &st.TimeoutMS, &sc.ready, &sc.deadline, &st.WorkerID, &st.Output, &st.ErrorType, &st.ErrorMessage,
		&sc.sched, &sc.started, &sc.finished, &sc.compSched, &sc.compensated,
	}
}

func (sc *stepScan) finish() {
	st := sc.st
	if sc.task != nil {
		st.TaskID = sc.task.String()
	}
	st.ReadyAt, st.Deadline, st.ScheduledAt, st.StartedAt = timeOf(sc.ready), timeOf(sc.deadline), timeOf(sc.sched), timeOf(sc.started)
	st.FinishedAt, st.CompScheduledAt, st.CompensatedAt = timeOf(sc.finished), timeOf(sc.compSched), timeOf(sc.compensated)
}

// scanStep scans stepColumns, and then extra columns into extra.
func scanStep(row pgx.Row, st *SagaStepRow, extra ...any) error {
	sc := stepScan{st: st}
	if err := row.Scan(append(sc.dest(), extra...)...); err != nil {
		return err
	}
	sc.finish()
	return nil
}

func (s *Sagas) sagaByKey(ctx context.Context, tenant, key string) (sg SagaRow, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read saga", func(ctx context.Context) error {
		sg, err = s.readByKey(ctx, tenant, key)
		return err
	})
	return sg, err
}

func (s *Sagas) readByKey(ctx context.Context, tenant, key string) (SagaRow, error) {
	var sg SagaRow
	err := scanSaga(s.pool.QueryRow(ctx, `SELECT `+sagaColumns+` FROM sagas WHERE tenant_id = $1::uuid AND idempotency_key = $2`, tenant, key), &sg)
	if errors.Is(err, pgx.ErrNoRows) {
		return SagaRow{}, fmt.Errorf("saga with idempotency key: %w", ErrSagaNotFound)
	}
	if err != nil {
		return SagaRow{}, fmt.Errorf("read saga: %w", err)
	}
	return sg, nil
}

// SagaTx is one state change of a saga in progress: its transaction holds the saga's
// row lock (and, for LockSaga, its steps' row locks). Finish it with Commit or Rollback.
type SagaTx struct {
	conn    *pgxpool.Conn
	breaker *resilience.Breaker
	// Now is the database's clock once the locks were taken.
	Now   time.Time
	Saga  SagaRow
	Steps []SagaStepRow
	done  bool
}

// lockByTaskSQL locks the saga of a task: the first statement of every state change, so
// that the transaction's id is taken here and later changes of the saga get later
// positions. FOR NO KEY UPDATE: the saga's key does not change (foreign keys to it may
// still be checked meanwhile).
const lockByTaskSQL = `SELECT ` + sagaColumns + ` FROM sagas
	WHERE saga_id = (SELECT saga_id FROM saga_steps WHERE task_id = $1::uuid) FOR NO KEY UPDATE`

const lockBySagaSQL = `SELECT ` + sagaColumns + ` FROM sagas WHERE saga_id = $1::uuid AND tenant_id = $2::uuid FOR NO KEY UPDATE`

// LockByTask begins the state change answering task taskID: it locks the task's saga
// and reads its steps. ErrTaskNotLeased when no saga has a step with that live task id
// (the caller checks the step is still leased). The steps are not row-locked: under
// the saga's lock only Claim (which takes ready tasks, never the leased one answered)
// and Release (of tasks never delivered, so never answered) change them.
func (s *Sagas) LockByTask(ctx context.Context, taskID string) (*SagaTx, error) {
	return s.lock(ctx, lockByTaskSQL, []any{taskID}, `saga_id = (SELECT saga_id FROM saga_steps WHERE task_id = $1::uuid)`, "", ErrTaskNotLeased)
}

// LockSaga begins a state change of tenant's saga sagaID (ErrSagaNotFound when the
// tenant has none). It also locks the saga's steps, so that no claim leases a ready
// task of the saga while the change decides about it.
func (s *Sagas) LockSaga(ctx context.Context, tenant, sagaID string) (*SagaTx, error) {
	return s.lock(ctx, lockBySagaSQL, []any{sagaID, tenant}, `saga_id = $1::uuid`, ` FOR NO KEY UPDATE`, ErrSagaNotFound)
}

// lock begins a state change (see LockByTask). It writes nothing: a failure for
// PostgreSQL's reasons is retried (Do, as a read).
func (s *Sagas) lock(ctx context.Context, lockSQL string, args []any, stepsWhere, stepsLock string, notFound error) (t *SagaTx, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "lock saga", func(ctx context.Context) error {
		t, err = s.lockOnce(ctx, lockSQL, args, stepsWhere, stepsLock, notFound)
		return err
	})
	return t, err
}

func (s *Sagas) lockOnce(ctx context.Context, lockSQL string, args []any, stepsWhere, stepsLock string, notFound error) (*SagaTx, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("saga: %w", err)
	}
	t := &SagaTx{conn: conn, breaker: s.breaker}
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(lockSQL, args...)
	// After the saga's lock (a statement of its own: a new snapshot): its steps, and
	// the clock.
	b.Queue(`SELECT `+stepColumns+`, clock_timestamp() FROM saga_steps WHERE `+stepsWhere+` ORDER BY step_index`+stepsLock, args[0])
	br := conn.SendBatch(ctx, b)
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		if err := scanSaga(br.QueryRow(), &t.Saga); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var st SagaStepRow
			if err := scanStep(rows, &st, &t.Now); err != nil {
				rows.Close()
				return err
			}
			t.Steps = append(t.Steps, st)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(t.Steps) == 0 {
			return pgx.ErrNoRows
		}
		return nil
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		t.Rollback()
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, notFound
		}
		return nil, fmt.Errorf("lock saga: %w", err)
	}
	return t, nil
}

// Rollback ends the transaction without writing; it is a no-op after Commit.
func (t *SagaTx) Rollback() {
	if t.done {
		return
	}
	t.done = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := t.conn.Exec(ctx, `ROLLBACK`); err != nil {
		// The pool closes a connection released inside a transaction.
		_ = t.conn.Conn().Close(ctx)
	}
	t.conn.Release()
}

// writeSQL writes state changes of distinct sagas in one statement: the sagas' rows,
// their steps' rows (whole, inserted or replaced) and their events, each saga's
// appended after its latest one. It is the only insert into stored_events of its
// transaction: positions are the transaction id and the event's index in the
// statement.
const writeSQL = `WITH sg AS (
	UPDATE sagas s SET state = u.state, current_step = u.cur, context = u.ctx::jsonb, cancel_requested = u.cancel,
	       error_type = u.et, error_message = u.em, failed_step = u.fs, updated_at = u.upd, ended_at = u.ended
	  FROM unnest($1::uuid[], $2::varchar[], $3::int[], $4::text[], $5::bool[], $6::varchar[], $7::text[], $8::int[],
	              $9::timestamptz[], $10::timestamptz[]) AS u(id, state, cur, ctx, cancel, et, em, fs, upd, ended)
	 WHERE s.saga_id = u.id
), st AS (
	INSERT INTO saga_steps (saga_id, step_index, status, attempt, comp_attempt, task_id, task_state, task_kind, queue,
	                        timeout_ms, ready_at, deadline, worker_id, output, error_type, error_message, scheduled_at,
	                        started_at, finished_at, comp_scheduled_at, compensated_at)
	SELECT * FROM unnest($11::uuid[], $12::smallint[], $13::varchar[], $14::int[], $15::int[], $16::uuid[], $17::varchar[],
	       $18::smallint[], $19::varchar[], $20::int[], $21::timestamptz[], $22::timestamptz[], $23::varchar[], $24::jsonb[],
	       $25::varchar[], $26::text[], $27::timestamptz[], $28::timestamptz[], $29::timestamptz[], $30::timestamptz[],
	       $31::timestamptz[])
	ON CONFLICT (saga_id, step_index) DO UPDATE SET status = EXCLUDED.status, attempt = EXCLUDED.attempt,
	       comp_attempt = EXCLUDED.comp_attempt, task_id = EXCLUDED.task_id, task_state = EXCLUDED.task_state,
	       task_kind = EXCLUDED.task_kind, queue = EXCLUDED.queue, timeout_ms = EXCLUDED.timeout_ms,
	       ready_at = EXCLUDED.ready_at, deadline = EXCLUDED.deadline, worker_id = EXCLUDED.worker_id,
	       output = EXCLUDED.output, error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message,
	       scheduled_at = EXCLUDED.scheduled_at, started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at,
	       comp_scheduled_at = EXCLUDED.comp_scheduled_at, compensated_at = EXCLUDED.compensated_at
), ev AS (
	INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version,
	                           event_type, event_data, occurred_at, metadata, position)
	SELECT u.id, u.tenant, 'Saga', u.agg, coalesce(v.base, 0) + row_number() OVER (PARTITION BY u.agg ORDER BY u.ord),
	       u.typ, u.dat::jsonb, u.at, u.meta::jsonb, (pg_current_xact_id()::text::bigint << 10) + u.ord - 1
	  FROM unnest($32::uuid[], $33::uuid[], $34::uuid[], $35::text[], $36::text[], $37::text[], $38::timestamptz[])
	       WITH ORDINALITY AS u(id, tenant, agg, typ, dat, meta, at, ord)
	  LEFT JOIN LATERAL (SELECT max(version) AS base FROM stored_events e WHERE e.aggregate_id = u.agg) v ON true
)
SELECT 1`

// SagaWrite is one saga's state change: its new row, the steps it writes (whole rows,
// inserted or replaced) and its events.
type SagaWrite struct {
	Saga   *SagaRow
	Steps  []SagaStepRow
	Events []SagaEvent
	// At is the change's time (updated_at, the events' occurred_at).
	At time.Time
}

// MaxWriteEvents bounds the events of one transaction (positions leave room for 1024).
const MaxWriteEvents = 1000

// queueWrite queues writeSQL for ws (distinct sagas).
func queueWrite(b *pgx.Batch, ws []SagaWrite) {
	var (
		sID, sState, sCtx, sET, sEM  []string
		sCur                         []int32
		sCancel                      []bool
		sFS                          []*int32
		sUpd                         []time.Time
		sEnded                       []*time.Time
		stSaga                       []string
		stIdx, stKind                []int16
		stStatus, stET, stEM         []string
		stAttempt, stComp, stTimeout []int32
		stTask, stState, stQueue     []*string
		stWorker, stOutput           []*string
		stReady, stDeadline, stSched []*time.Time
		stStarted, stFinished        []*time.Time
		stCompSched, stCompensated   []*time.Time
		evID, evTenant, evAgg        []string
		evType, evData, evMeta       []string
		evAt                         []time.Time
	)
	for _, w := range ws {
		sg := w.Saga
		var fs *int32
		if sg.FailedStep >= 0 {
			v := int32(sg.FailedStep)
			fs = &v
		}
		sID, sState, sCur, sCtx = append(sID, sg.ID), append(sState, sg.State), append(sCur, int32(sg.CurrentStep)), append(sCtx, string(sg.Context))
		sCancel, sET, sEM, sFS = append(sCancel, sg.CancelRequested), append(sET, sg.ErrorType), append(sEM, sg.ErrorMessage), append(sFS, fs)
		sUpd, sEnded = append(sUpd, w.At), append(sEnded, nullTime(sg.EndedAt))
		for i := range w.Steps {
			st := &w.Steps[i]
			var out *string
			if st.Output != nil {
				o := string(st.Output)
				out = &o
			}
			stSaga, stIdx, stStatus = append(stSaga, sg.ID), append(stIdx, int16(st.Index)), append(stStatus, st.Status)
			stAttempt, stComp = append(stAttempt, int32(st.Attempt)), append(stComp, int32(st.CompAttempt))
			stTask, stState, stKind = append(stTask, nullString(st.TaskID)), append(stState, nullString(st.TaskState)), append(stKind, int16(st.TaskKind))
			stQueue, stTimeout = append(stQueue, nullString(st.Queue)), append(stTimeout, int32(st.TimeoutMS))
			stReady, stDeadline, stWorker = append(stReady, nullTime(st.ReadyAt)), append(stDeadline, nullTime(st.Deadline)), append(stWorker, nullString(st.WorkerID))
			stOutput, stET, stEM = append(stOutput, out), append(stET, st.ErrorType), append(stEM, st.ErrorMessage)
			stSched, stStarted, stFinished = append(stSched, nullTime(st.ScheduledAt)), append(stStarted, nullTime(st.StartedAt)), append(stFinished, nullTime(st.FinishedAt))
			stCompSched, stCompensated = append(stCompSched, nullTime(st.CompScheduledAt)), append(stCompensated, nullTime(st.CompensatedAt))
		}
		for _, e := range w.Events {
			m := "{}"
			if len(e.Metadata) > 0 {
				m = string(e.Metadata)
			}
			evID, evTenant, evAgg = append(evID, e.ID), append(evTenant, sg.TenantID), append(evAgg, sg.ID)
			evType, evData, evMeta, evAt = append(evType, e.Type), append(evData, string(e.Data)), append(evMeta, m), append(evAt, w.At)
		}
	}
	b.Queue(writeSQL, sID, sState, sCur, sCtx, sCancel, sET, sEM, sFS, sUpd, sEnded,
		stSaga, stIdx, stStatus, stAttempt, stComp, stTask, stState, stKind, stQueue, stTimeout, stReady, stDeadline,
		stWorker, stOutput, stET, stEM, stSched, stStarted, stFinished, stCompSched, stCompensated,
		evID, evTenant, evAgg, evType, evData, evMeta, evAt)
}

// Commit writes the saga's new row, the steps given (whole rows, inserted or
// replaced) and the events, and commits: one round trip.
// A commit is never retried alone (see Sagas); whatever the outcome, the transaction
// is over.
func (t *SagaTx) Commit(ctx context.Context, sg *SagaRow, steps []SagaStepRow, events []SagaEvent) error {
	err := doOnce(ctx, t.breaker, "write saga", func(ctx context.Context) error {
		return t.commit(ctx, []SagaWrite{{Saga: sg, Steps: steps, Events: events, At: t.Now}})
	})
	if err != nil {
		t.Rollback() // the breaker refused the commit: the transaction is still open
		return fmt.Errorf("write saga %s: %w", sg.ID, err)
	}
	return nil
}

func (t *SagaTx) commit(ctx context.Context, ws []SagaWrite) error {
	b := &pgx.Batch{}
	queueWrite(b, ws)
	b.Queue(`COMMIT`)
	err := t.conn.SendBatch(ctx, b).Close()
	if err != nil {
		t.Rollback()
		return err
	}
	t.done = true
	t.conn.Release()
	return nil
}

// SagaBatch is the state changes of several sagas in one transaction (group commit):
// it holds their rows' locks, taken in saga id order.
type SagaBatch struct {
	SagaTx
	// Sagas are the locked sagas; Steps their steps, by saga id.
	Sagas []SagaRow
	Steps map[string][]SagaStepRow
}

// LockByTasks begins the state changes answering tasks taskIDs: it locks their sagas
// (in saga id order, so that two batches never deadlock) and reads their steps. A task
// id that names no live task is left out (ErrTaskNotLeased for its caller).
func (s *Sagas) LockByTasks(ctx context.Context, taskIDs []string) (t *SagaBatch, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "lock sagas", func(ctx context.Context) error {
		t, err = s.lockByTasks(ctx, taskIDs)
		return err
	})
	return t, err
}

func (s *Sagas) lockByTasks(ctx context.Context, taskIDs []string) (*SagaBatch, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("saga: %w", err)
	}
	t := &SagaBatch{SagaTx: SagaTx{conn: conn, breaker: s.breaker}, Steps: make(map[string][]SagaStepRow, len(taskIDs))}
	const of = `saga_id IN (SELECT saga_id FROM saga_steps WHERE task_id = ANY($1::uuid[]))`
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SELECT `+sagaColumns+` FROM sagas WHERE `+of+` ORDER BY saga_id FOR NO KEY UPDATE`, taskIDs)
	b.Queue(`SELECT saga_id, `+stepColumns+` FROM saga_steps WHERE `+of+` ORDER BY saga_id, step_index`, taskIDs)
	b.Queue(`SELECT clock_timestamp()`)
	br := conn.SendBatch(ctx, b)
	err = func() error {
		if _, err := br.Exec(); err != nil {
			return err
		}
		rows, err := br.Query()
		if err != nil {
			return err
		}
		for rows.Next() {
			var sg SagaRow
			if err := scanSaga(rows, &sg); err != nil {
				rows.Close()
				return err
			}
			t.Sagas = append(t.Sagas, sg)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if rows, err = br.Query(); err != nil {
			return err
		}
		for rows.Next() {
			var st SagaStepRow
			var id uuid.UUID
			sc := stepScan{st: &st}
			if err := rows.Scan(append([]any{&id}, sc.dest()...)...); err != nil {
				rows.Close()
				return err
			}
			sc.finish()
			t.Steps[id.String()] = append(t.Steps[id.String()], st)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return br.QueryRow().Scan(&t.Now)
	}()
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		t.Rollback()
		return nil, fmt.Errorf("lock sagas: %w", err)
	}
	return t, nil
}

// Commit writes the state changes of distinct sagas (at most 1000 events in all) and
// commits: one round trip.
func (t *SagaBatch) Commit(ctx context.Context, ws []SagaWrite) error {
	err := doOnce(ctx, t.breaker, "write sagas", func(ctx context.Context) error { return t.commit(ctx, ws) })
	if err != nil {
		t.Rollback()
		return fmt.Errorf("write sagas: %w", err)
	}
	return nil
}

// NoneWaiting is the "how long until" of Claim and Expired when nothing waits.
const NoneWaiting = time.Duration(math.MinInt64)

// secondsOr is a duration of s seconds, or NoneWaiting for NULL.
func secondsOr(s *float64) time.Duration {
	if s == nil {
		return NoneWaiting
	}
	return time.Duration(*s * float64(time.Second))
}

// ClaimedTask is a task a claim leased, with what its message needs.
type ClaimedTask struct {
	SagaID          string
	TenantID        string
	WorkflowID      string
	WorkflowVersion int32
	StepIndex       int
	TaskID          string
	Kind            int
	Queue           string
	Attempt         int
	ReadyAt         time.Time
	Deadline        time.Time
	// Context is the saga's context; Output the step's output (compensations).
	Context []byte
	Output  []byte
}

// claimSQL leases up to $2 ready tasks of the queues $1 (oldest first) to worker $3.
// SKIP LOCKED: claims of several workers and sidecars never wait for each other, and a
// task whose saga is changing (its step row locked) is left for the next claim.
const claimSQL = `WITH c AS (
	SELECT saga_id, step_index FROM saga_steps
	 WHERE task_state = 'ready' AND queue = ANY($1::text[]) AND ready_at <= clock_timestamp()
	 ORDER BY ready_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE saga_steps st SET task_state = 'leased', worker_id = $3,
       deadline = clock_timestamp() + st.timeout_ms * interval '1 millisecond',
       started_at = CASE WHEN st.task_kind = 1 THEN coalesce(st.started_at, clock_timestamp()) ELSE st.started_at END
  FROM c, sagas s
 WHERE st.saga_id = c.saga_id AND st.step_index = c.step_index AND s.saga_id = c.saga_id
RETURNING st.saga_id, s.tenant_id, s.workflow_id, s.workflow_version, st.step_index, st.task_id, st.task_kind,
          st.queue, CASE WHEN st.task_kind = 1 THEN st.attempt ELSE st.comp_attempt END, st.ready_at, st.deadline,
          s.context, CASE WHEN st.task_kind = 2 THEN st.output END`

// nextReadySQL answers in how many seconds the next task of the queues becomes ready
// (NULL: none waits; negative: one is ready but locked), as seen after the claim in the
// same transaction, by the database's clock.
const nextReadySQL = `SELECT extract(epoch FROM min(ready_at) - clock_timestamp())::float8
	FROM saga_steps WHERE task_state = 'ready' AND queue = ANY($1::text[])`

// Claim leases up to limit ready tasks of queues to worker, and answers them and how
// long until the next task of queues becomes ready (NoneWaiting: none is waiting;
// negative: one is ready but was locked).
func (s *Sagas) Claim(ctx context.Context, queues []string, limit int, worker string) ([]ClaimedTask, time.Duration, error) {
	return s.claim(ctx, func() *pgx.Batch {
		b := &pgx.Batch{}
		b.Queue(claimSQL, queues, limit, worker)
		b.Queue(nextReadySQL, queues)
		return b
	})
}

// claim sends a claim's batch (a claim, then how long until the next task is ready),
// one implicit transaction: it leases tasks, so it is retried only when it never
// reached PostgreSQL.
func (s *Sagas) claim(ctx context.Context, batch func() *pgx.Batch) (out []ClaimedTask, next time.Duration, err error) {
	err = Do(ctx, s.breaker, ReadWrite, "claim tasks", func(ctx context.Context) error {
		out, next, err = s.claimOnce(ctx, batch())
		return err
	})
	return out, next, err
}

func (s *Sagas) claimOnce(ctx context.Context, b *pgx.Batch) ([]ClaimedTask, time.Duration, error) {
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return nil, 0, fmt.Errorf("claim tasks: %w", err)
	}
	var out []ClaimedTask
	for rows.Next() {
		var c ClaimedTask
		var saga, tenant, task uuid.UUID
		if err := rows.Scan(&saga, &tenant, &c.WorkflowID, &c.WorkflowVersion, &c.StepIndex, &task, &c.Kind, &c.Queue,
			&c.Attempt, &c.ReadyAt, &c.Deadline, &c.Context, &c.Output); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("claim tasks: %w", err)
		}
		c.SagaID, c.TenantID, c.TaskID = saga.String(), tenant.String(), task.String()
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("claim tasks: %w", err)
	}
	var next *float64
	if err := br.QueryRow().Scan(&next); err != nil {
		return nil, 0, fmt.Errorf("claim tasks: %w", err)
	}
	if err := br.Close(); err != nil {
		return nil, 0, fmt.Errorf("claim tasks: %w", err)
	}
	return out, secondsOr(next), nil
}

// Release gives back leased tasks that never reached their worker (its stream broke
// while they were sent): they are ready again at once, under new task ids (an answer
// to the old ones is refused), and the attempt is not counted.
func (s *Sagas) Release(ctx context.Context, taskIDs []string) error {
	return Do(ctx, s.breaker, ReadWrite, "release tasks", func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, `UPDATE saga_steps SET task_state = 'ready', task_id = gen_random_uuid(),
			worker_id = NULL, deadline = NULL WHERE task_id = ANY($1::uuid[]) AND task_state = 'leased'`, taskIDs)
		if err != nil {
			return fmt.Errorf("release tasks: %w", err)
		}
		return nil
	})
}

// StillLeased answers which of taskIDs are still leased.
func (s *Sagas) StillLeased(ctx context.Context, taskIDs []string) (out map[string]bool, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read leases", func(ctx context.Context) error {
		out, err = s.stillLeased(ctx, taskIDs)
		return err
	})
	return out, err
}

func (s *Sagas) stillLeased(ctx context.Context, taskIDs []string) (map[string]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT task_id FROM saga_steps WHERE task_id = ANY($1::uuid[]) AND task_state = 'leased'`, taskIDs)
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	defer rows.Close()
	out := make(map[string]bool, len(taskIDs))
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("read leases: %w", err)
		}
		out[id.String()] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	return out, nil
}

// Expired answers up to limit leased tasks whose deadline has passed, and how long
// until the next deadline of a leased task (NoneWaiting: none), by the database's
// clock.
func (s *Sagas) Expired(ctx context.Context, limit int) (ids []string, next time.Duration, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read expired tasks", func(ctx context.Context) error {
		ids, next, err = s.expired(ctx, limit)
		return err
	})
	return ids, next, err
}

func (s *Sagas) expired(ctx context.Context, limit int) ([]string, time.Duration, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT task_id FROM saga_steps WHERE task_state = 'leased' AND deadline <= clock_timestamp()
		ORDER BY deadline LIMIT $1`, limit)
	b.Queue(`SELECT extract(epoch FROM min(deadline) - clock_timestamp())::float8
		FROM saga_steps WHERE task_state = 'leased' AND deadline > clock_timestamp()`)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return nil, 0, fmt.Errorf("read expired tasks: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, 0, fmt.Errorf("read expired tasks: %w", err)
		}
		ids = append(ids, id.String())
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("read expired tasks: %w", err)
	}
	var next *float64
	if err := br.QueryRow().Scan(&next); err != nil {
		return nil, 0, fmt.Errorf("read expired tasks: %w", err)
	}
	return ids, secondsOr(next), br.Close()
}

// PendingTasks answers the number of ready tasks per queue (whole database).
func (s *Sagas) PendingTasks(ctx context.Context) (out map[string]int64, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "count pending tasks", func(ctx context.Context) error {
		out, err = s.pendingTasks(ctx)
		return err
	})
	return out, err
}

func (s *Sagas) pendingTasks(ctx context.Context) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT queue, count(*) FROM saga_steps WHERE task_state = 'ready' GROUP BY queue`)
	if err != nil {
		return nil, fmt.Errorf("count pending tasks: %w", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var q string
		var n int64
		if err := rows.Scan(&q, &n); err != nil {
			return nil, fmt.Errorf("count pending tasks: %w", err)
		}
		out[q] = n
	}
	return out, rows.Err()
}

// SagaHistoryEvent is a stored saga event.
type SagaHistoryEvent struct {
	ID         string
	Sequence   int64
	Type       string
	Data       []byte
	OccurredAt time.Time
}

// GetSaga answers tenant's saga sagaID with its steps and its events, oldest first.
// ErrSagaNotFound when the tenant has no such saga.
func (s *Sagas) GetSaga(ctx context.Context, tenant, sagaID string) (sg SagaRow, steps []SagaStepRow, hist []SagaHistoryEvent, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read saga", func(ctx context.Context) error {
		sg, steps, hist, err = s.getSaga(ctx, tenant, sagaID)
		return err
	})
	return sg, steps, hist, err
}

func (s *Sagas) getSaga(ctx context.Context, tenant, sagaID string) (SagaRow, []SagaStepRow, []SagaHistoryEvent, error) {
	b := &pgx.Batch{}
	b.Queue(`SELECT `+sagaColumns+` FROM sagas WHERE saga_id = $1::uuid AND tenant_id = $2::uuid`, sagaID, tenant)
	b.Queue(`SELECT `+stepColumns+` FROM saga_steps WHERE saga_id = $1::uuid ORDER BY step_index`, sagaID)
	b.Queue(`SELECT event_id, version, event_type, event_data, occurred_at FROM stored_events
		WHERE aggregate_id = $1::uuid AND tenant_id = $2::uuid AND aggregate_type = 'Saga' ORDER BY version`, sagaID, tenant)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	var sg SagaRow
	if err := scanSaga(br.QueryRow(), &sg); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return SagaRow{}, nil, nil, ErrSagaNotFound
		}
		return SagaRow{}, nil, nil, fmt.Errorf("read saga: %w", err)
	}
	var steps []SagaStepRow
	rows, err := br.Query()
	if err != nil {
		return SagaRow{}, nil, nil, fmt.Errorf("read saga steps: %w", err)
	}
	for rows.Next() {
		var st SagaStepRow
		if err := scanStep(rows, &st); err != nil {
			rows.Close()
			return SagaRow{}, nil, nil, fmt.Errorf("read saga steps: %w", err)
		}
		steps = append(steps, st)
	}
	if err := rows.Err(); err != nil {
		return SagaRow{}, nil, nil, fmt.Errorf("read saga steps: %w", err)
	}
	var hist []SagaHistoryEvent
	rows, err = br.Query()
	if err != nil {
		return SagaRow{}, nil, nil, fmt.Errorf("read saga events: %w", err)
	}
	for rows.Next() {
		var h SagaHistoryEvent
		var id uuid.UUID
		var v int32
		if err := rows.Scan(&id, &v, &h.Type, &h.Data, &h.OccurredAt); err != nil {
			rows.Close()
			return SagaRow{}, nil, nil, fmt.Errorf("read saga events: %w", err)
		}
		h.ID, h.Sequence = id.String(), int64(v)
		hist = append(hist, h)
	}
	if err := rows.Err(); err != nil {
		return SagaRow{}, nil, nil, fmt.Errorf("read saga events: %w", err)
	}
	return sg, steps, hist, br.Close()
}

// SagaFilter selects a page of a tenant's sagas.
type SagaFilter struct {
	// TenantID is required.
	TenantID string
	// WorkflowID, when not empty, must match exactly.
	WorkflowID string
	// States, when not empty, are the states listed.
	States []string
	// CreatedAfter (inclusive) and CreatedBefore (exclusive) bound created_at; zero is
	// unbounded.
	CreatedAfter  time.Time
	CreatedBefore time.Time
	// PageSize is the most rows answered (the caller bounds it).
	PageSize int
	// PageToken is the previous page's next token ("" for the first page).
	PageToken string
}

// ListSagas answers a page of a tenant's sagas, newest first (created_at, then saga id,
// descending), and the token of the next page ("" after the last one). Paging is by
// keyset, as FailedEvents.List. A malformed token is a *validate.Error.
func (s *Sagas) ListSagas(ctx context.Context, f SagaFilter) ([]SagaRow, string, error) {
	if f.PageSize <= 0 {
		return nil, "", validate.Errorf("page_size", "must be positive")
	}
	var sb strings.Builder
	args := []any{f.TenantID}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	sb.WriteString(`SELECT ` + sagaColumns + ` FROM sagas WHERE tenant_id = $1::uuid`)
	if f.WorkflowID != "" {
		sb.WriteString(` AND workflow_id = ` + arg(f.WorkflowID))
	}
	if len(f.States) > 0 {
		sb.WriteString(` AND state = ANY(` + arg(f.States) + `::text[])`)
	}
	if !f.CreatedAfter.IsZero() {
		sb.WriteString(` AND created_at >= ` + arg(f.CreatedAfter) + `::timestamptz`)
	}
	if !f.CreatedBefore.IsZero() {
		sb.WriteString(` AND created_at < ` + arg(f.CreatedBefore) + `::timestamptz`)
	}
	if f.PageToken != "" {
		at, id, err := decodeSagaPageToken(f.PageToken)
		if err != nil {
			return nil, "", err
		}
		sb.WriteString(` AND (created_at, saga_id) < (` + arg(at) + `::timestamptz, ` + arg(id) + `::uuid)`)
	}
	sb.WriteString(` ORDER BY created_at DESC, saga_id DESC LIMIT ` + arg(f.PageSize+1))
	var out []SagaRow
	err := Do(ctx, s.breaker, ReadOnly, "list sagas", func(ctx context.Context) error {
		rows, err := s.pool.Query(ctx, sb.String(), args...)
		if err != nil {
			return fmt.Errorf("list sagas: %w", err)
		}
		defer rows.Close()
		out = make([]SagaRow, 0, min(f.PageSize+1, 128))
		for rows.Next() {
			var sg SagaRow
			if err := scanSaga(rows, &sg); err != nil {
				return fmt.Errorf("list sagas: %w", err)
			}
			out = append(out, sg)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("list sagas: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	if len(out) <= f.PageSize {
		return out, "", nil
	}
	out = out[:f.PageSize]
	last := &out[len(out)-1]
	return out, encodeSagaPageToken(last.CreatedAt, last.ID), nil
}

// Saga page tokens: base64url of a version byte, created_at in Unix microseconds
// (PostgreSQL's precision) and the saga id.
const sagaPageTokenV1 = 0x53

func encodeSagaPageToken(at time.Time, id string) string {
	b := make([]byte, 1, 25)
	b[0] = sagaPageTokenV1
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixMicro()))
	u := uuid.MustParse(id)
	b = append(b, u[:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeSagaPageToken(tok string) (time.Time, string, error) {
	bad := validate.Errorf("page_token", "is not a next_page_token of ListSagas")
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != 25 || b[0] != sagaPageTokenV1 {
		return time.Time{}, "", bad
	}
	u, err := uuid.FromBytes(b[9:])
	if err != nil {
		return time.Time{}, "", bad
	}
	return time.UnixMicro(int64(binary.BigEndian.Uint64(b[1:9]))).UTC(), u.String(), nil
}
