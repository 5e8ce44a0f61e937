package store

import (
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

	"github.com/eventgw/eventgw/internal/validate"
)

// Saga errors.
var (
	// ErrWorkflowNotFound: no workflow with that id (and version) is registered.
	ErrWorkflowNotFound = errors.New("workflow not registered")
	// ErrSagaNotFound: no such saga for this tenant (another tenant's saga is reported
	// the same way, so that its existence does not leak).
	ErrSagaNotFound = errors.New("saga not found")
	// ErrTaskNotLeased: no task with that id is held by a worker: it timed out, was
	// taken back, was already answered, or never existed.
	ErrTaskNotLeased = errors.New("task is not leased: it timed out, was reassigned or answered already, or never existed")
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
type Sagas struct{ pool *pgxpool.Pool }

// NewSagas uses pool.
func NewSagas(pool *pgxpool.Pool) *Sagas { return &Sagas{pool: pool} }

// Pool is the pool the store uses.
func (s *Sagas) Pool() *pgxpool.Pool { return s.pool }

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
func (s *Sagas) RegisterWorkflow(ctx context.Context, id string, definition, digest []byte) (int32, bool, error) {
	for attempt := 0; ; attempt++ {
		var inserted, latest *int32
		err := s.pool.QueryRow(ctx, registerSQL, id, string(definition), digest).Scan(&inserted, &latest)
		var pgErr *pgconn.PgError
		switch {
		case err == nil && inserted != nil:
			return *inserted, true, nil
		case err == nil && latest != nil:
			return *latest, false, nil
		case err == nil:
			return 0, false, fmt.Errorf("register workflow %s: no version answered", id)
		case errors.As(err, &pgErr) && pgErr.Code == "23505" && attempt < 10:
			continue // another sidecar registered a version at the same time: look again
		default:
			return 0, false, fmt.Errorf("register workflow %s: %w", id, err)
		}
	}
}

// Workflow answers a workflow's definition (JSON) at version, or at its latest version
// when version is 0, and that version. ErrWorkflowNotFound when there is none.
func (s *Sagas) Workflow(ctx context.Context, id string, version int32) ([]byte, int32, error) {
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
func (s *Sagas) LatestWorkflowVersion(ctx context.Context, id string) (int32, error) {
	var v int32
	err := s.pool.QueryRow(ctx, `SELECT version FROM saga_workflows WHERE workflow_id = $1 ORDER BY version DESC LIMIT 1`, id).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrWorkflowNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("read workflow %s: %w", id, err)
	}
	return v, nil
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

func stringOf(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// insertSagaSQL inserts a saga of workflow version $4, its first step and its events in
// one statement (and transaction), unless $4 is no longer the workflow's latest version
// or the tenant already has a saga with the idempotency key: then it inserts nothing.
// It answers the saga's creation time (NULL: nothing inserted), the workflow's latest
// version and the first task's deadline (when it is inserted leased, $12 'leased').
const insertSagaSQL = `WITH v AS (
	SELECT max(version) AS latest FROM saga_workflows WHERE workflow_id = $3
), s AS (
	INSERT INTO sagas (saga_id, tenant_id, workflow_id, workflow_version, state, current_step, context,
	                   idempotency_key, created_at, updated_at)
	SELECT $1::uuid, $2::uuid, $3, $4, $5, 0, $6::jsonb, $7, now(), now() FROM v WHERE v.latest = $4
	ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
	RETURNING saga_id, created_at
), st AS (
	INSERT INTO saga_steps (saga_id, step_index, status, attempt, task_id, task_state, task_kind, queue,
	                        timeout_ms, ready_at, scheduled_at, worker_id, deadline, started_at)
	SELECT s.saga_id, 0, $8, 1, $9::uuid, $12::varchar, 1, $10, $11::int, now(), now(), $13::varchar,
	       CASE WHEN $12::varchar = 'leased' THEN now() + $11::int * interval '1 millisecond' END,
	       CASE WHEN $12::varchar = 'leased' THEN now() END
	  FROM s
	RETURNING deadline
), ev AS (
	INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version, event_type,
	                           event_data, occurred_at, metadata, position)
	SELECT u.id, $2::uuid, 'Saga', s.saga_id, u.ord, u.typ, u.dat::jsonb, now(), u.meta::jsonb,
	       (pg_current_xact_id()::text::bigint << 10) + u.ord - 1
	  FROM s, unnest($14::uuid[], $15::text[], $16::text[], $17::text[]) WITH ORDINALITY AS u(id, typ, dat, meta, ord)
)
SELECT (SELECT created_at FROM s), (SELECT latest FROM v), (SELECT deadline FROM st)`

// Inserted is what InsertSaga did.
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
}

// InsertSaga inserts a new saga of sg.WorkflowVersion with its first step (whose task
// is ready, or leased to first.WorkerID when first.TaskState is TaskLeased) and its
// events, in one transaction; its times are the database's clock. Nothing is written
// when that version is no longer the workflow's latest (Stale), or when the tenant
// already has a saga with the same idempotency key (that saga is answered, Created
// false). ErrWorkflowNotFound when the workflow has no version.
func (s *Sagas) InsertSaga(ctx context.Context, sg *SagaRow, first *SagaStepRow, events []SagaEvent) (Inserted, error) {
	ids, types, data, meta := sagaEventColumns(events)
	state := first.TaskState
	if state == "" {
		state = TaskReady
	}
	var created, deadline *time.Time
	var latest *int32
	err := s.pool.QueryRow(ctx, insertSagaSQL, sg.ID, sg.TenantID, sg.WorkflowID, sg.WorkflowVersion, sg.State,
		string(sg.Context), nullString(sg.IdempotencyKey),
		first.Status, first.TaskID, first.Queue, first.TimeoutMS, state, nullString(first.WorkerID),
		ids, types, data, meta).Scan(&created, &latest, &deadline)
	if err != nil {
		return Inserted{}, fmt.Errorf("insert saga: %w", err)
	}
	switch {
	case latest == nil:
		return Inserted{}, ErrWorkflowNotFound
	case created != nil:
		out := *sg
		out.CreatedAt, out.UpdatedAt = *created, *created
		return Inserted{Saga: out, Created: true, Latest: *latest, Deadline: timeOf(deadline)}, nil
	case *latest != sg.WorkflowVersion:
		return Inserted{Stale: true, Latest: *latest}, nil
	}
	// The key is taken; the saga that holds it is committed (the unique index waited
	// for it).
	existing, err := s.sagaByKey(ctx, sg.TenantID, sg.IdempotencyKey)
	return Inserted{Saga: existing, Latest: *latest}, err
}

func sagaEventColumns(events []SagaEvent) (ids, types, data, meta []string) {
	for _, e := range events {
		ids = append(ids, e.ID)
		types = append(types, e.Type)
		data = append(data, string(e.Data))
		m := "{}"
		if len(e.Metadata) > 0 {
			m = string(e.Metadata)
		}
		meta = append(meta, m)
	}
	return ids, types, data, meta
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

// scanStep scans stepColumns, and then extra columns into extra.
func scanStep(row pgx.Row, st *SagaStepRow, extra ...any) error {
	var task *uuid.UUID
	var ready, deadline, sched, started, finished, compSched, compensated *time.Time
	dest := []any{&st.Index, &st.Status, &st.Attempt, &st.CompAttempt, &task, &st.TaskState, &st.TaskKind,
		&st.Queue, &st.TimeoutMS, &ready, &deadline, &st.WorkerID, &st.Output, &st.ErrorType, &st.ErrorMessage,
		&sched, &started, &finished, &compSched, &compensated}
	if err := row.Scan(append(dest, extra...)...); err != nil {
		return err
	}
	if task != nil {
		st.TaskID = task.String()
	}
	st.ReadyAt, st.Deadline, st.ScheduledAt, st.StartedAt = timeOf(ready), timeOf(deadline), timeOf(sched), timeOf(started)
	st.FinishedAt, st.CompScheduledAt, st.CompensatedAt = timeOf(finished), timeOf(compSched), timeOf(compensated)
	return nil
}

func (s *Sagas) sagaByKey(ctx context.Context, tenant, key string) (SagaRow, error) {
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
	conn *pgxpool.Conn
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

func (s *Sagas) lock(ctx context.Context, lockSQL string, args []any, stepsWhere, stepsLock string, notFound error) (*SagaTx, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("saga: %w", err)
	}
	t := &SagaTx{conn: conn}
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

// writeSQL writes a state change in one statement: the saga's row, its steps' rows
// (whole, inserted or replaced) and its events, appended after the saga's latest one
// (the only insert into stored_events of the transaction: positions are the
// transaction id and the event's index).
const writeSQL = `WITH sg AS (
	UPDATE sagas SET state = $2, current_step = $3, context = $4::jsonb, cancel_requested = $5,
	       error_type = $6, error_message = $7, failed_step = $8, updated_at = $9, ended_at = $10
	 WHERE saga_id = $1::uuid
), st AS (
	INSERT INTO saga_steps (saga_id, step_index, status, attempt, comp_attempt, task_id, task_state, task_kind, queue,
	                        timeout_ms, ready_at, deadline, worker_id, output, error_type, error_message, scheduled_at,
	                        started_at, finished_at, comp_scheduled_at, compensated_at)
	SELECT $1::uuid, u.* FROM unnest($11::smallint[], $12::varchar[], $13::int[], $14::int[], $15::uuid[], $16::varchar[],
	       $17::smallint[], $18::varchar[], $19::int[], $20::timestamptz[], $21::timestamptz[], $22::varchar[], $23::jsonb[],
	       $24::varchar[], $25::text[], $26::timestamptz[], $27::timestamptz[], $28::timestamptz[], $29::timestamptz[],
	       $30::timestamptz[]) AS u
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
	SELECT u.id, $31::uuid, 'Saga', $1::uuid, v.base + u.ord, u.typ, u.dat::jsonb, $9, u.meta::jsonb,
	       (pg_current_xact_id()::text::bigint << 10) + u.ord - 1
	  FROM (SELECT coalesce(max(version), 0) AS base FROM stored_events WHERE aggregate_id = $1::uuid) v,
	       unnest($32::uuid[], $33::text[], $34::text[], $35::text[]) WITH ORDINALITY AS u(id, typ, dat, meta, ord)
)
SELECT 1`

// Commit writes the saga's new row, the steps given (whole rows, inserted or
// replaced) and the events, and commits: one round trip.
func (t *SagaTx) Commit(ctx context.Context, sg *SagaRow, steps []SagaStepRow, events []SagaEvent) error {
	n := len(steps)
	var (
		idx                                 = make([]int16, n)
		status, taskState, queue, worker    = make([]string, n), make([]*string, n), make([]*string, n), make([]*string, n)
		attempt, compAttempt, timeout       = make([]int32, n), make([]int32, n), make([]int32, n)
		kind                                = make([]int16, n)
		taskID                              = make([]*string, n)
		ready, deadline                     = make([]*time.Time, n), make([]*time.Time, n)
		output                              = make([]*string, n)
		errType, errMsg                     = make([]string, n), make([]string, n)
		sched, started, finished, compSched = make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n), make([]*time.Time, n)
		compensated                         = make([]*time.Time, n)
	)
	for i := range steps {
		st := &steps[i]
		idx[i], status[i], attempt[i], compAttempt[i] = int16(st.Index), st.Status, int32(st.Attempt), int32(st.CompAttempt)
		taskID[i], taskState[i], kind[i], queue[i] = nullString(st.TaskID), nullString(st.TaskState), int16(st.TaskKind), nullString(st.Queue)
		timeout[i], ready[i], deadline[i], worker[i] = int32(st.TimeoutMS), nullTime(st.ReadyAt), nullTime(st.Deadline), nullString(st.WorkerID)
		if st.Output != nil {
			o := string(st.Output)
			output[i] = &o
		}
		errType[i], errMsg[i] = st.ErrorType, st.ErrorMessage
		sched[i], started[i], finished[i] = nullTime(st.ScheduledAt), nullTime(st.StartedAt), nullTime(st.FinishedAt)
		compSched[i], compensated[i] = nullTime(st.CompScheduledAt), nullTime(st.CompensatedAt)
	}
	ids, types, data, meta := sagaEventColumns(events)
	b := &pgx.Batch{}
	b.Queue(writeSQL, sg.ID, sg.State, sg.CurrentStep, string(sg.Context), sg.CancelRequested,
		sg.ErrorType, sg.ErrorMessage, failedStep(sg.FailedStep), t.Now, nullTime(sg.EndedAt),
		idx, status, attempt, compAttempt, taskID, taskState, kind, queue, timeout, ready, deadline, worker, output,
		errType, errMsg, sched, started, finished, compSched, compensated,
		sg.TenantID, ids, types, data, meta)
	b.Queue(`COMMIT`)
	err := t.conn.SendBatch(ctx, b).Close()
	if err != nil {
		t.Rollback()
		return fmt.Errorf("write saga %s: %w", sg.ID, err)
	}
	t.done = true
	t.conn.Release()
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

func failedStep(i int) *int {
	if i < 0 {
		return nil
	}
	return &i
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
	b := &pgx.Batch{}
	b.Queue(claimSQL, queues, limit, worker)
	b.Queue(nextReadySQL, queues)
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
	_, err := s.pool.Exec(ctx, `UPDATE saga_steps SET task_state = 'ready', task_id = gen_random_uuid(),
		worker_id = NULL, deadline = NULL WHERE task_id = ANY($1::uuid[]) AND task_state = 'leased'`, taskIDs)
	if err != nil {
		return fmt.Errorf("release tasks: %w", err)
	}
	return nil
}

// StillLeased answers which of taskIDs are still leased.
func (s *Sagas) StillLeased(ctx context.Context, taskIDs []string) (map[string]bool, error) {
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
func (s *Sagas) Expired(ctx context.Context, limit int) ([]string, time.Duration, error) {
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
func (s *Sagas) PendingTasks(ctx context.Context) (map[string]int64, error) {
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
func (s *Sagas) GetSaga(ctx context.Context, tenant, sagaID string) (SagaRow, []SagaStepRow, []SagaHistoryEvent, error) {
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
	rows, err := s.pool.Query(ctx, sb.String(), args...)
	if err != nil {
		return nil, "", fmt.Errorf("list sagas: %w", err)
	}
	defer rows.Close()
	out := make([]SagaRow, 0, min(f.PageSize+1, 128))
	for rows.Next() {
		var sg SagaRow
		if err := scanSaga(rows, &sg); err != nil {
			return nil, "", fmt.Errorf("list sagas: %w", err)
		}
		out = append(out, sg)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list sagas: %w", err)
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
