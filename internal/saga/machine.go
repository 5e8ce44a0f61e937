package saga

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// Saga states (sagas.state).
const (
	StateRunning      = "RUNNING"
	StateCompleted    = "COMPLETED"
	StateCompensating = "COMPENSATING"
	StateCompensated  = "COMPENSATED"
	StateFailed       = "FAILED"
	StateCancelled    = "CANCELLED"
)

// Step statuses (saga_steps.status; a step not reached has no row and is PENDING).
const (
	StepPending            = "PENDING"
	StepRunning            = "RUNNING"
	StepCompleted          = "COMPLETED"
	StepFailed             = "FAILED"
	StepCompensating       = "COMPENSATING"
	StepCompensated        = "COMPENSATED"
	StepCompensationFailed = "COMPENSATION_FAILED"
	StepSkipped            = "SKIPPED"
)

// Task kinds (saga_steps.task_kind).
const (
	KindAction       = 1
	KindCompensation = 2
)

// Saga event types (published to <prefix>.saga.events).
const (
	EventStarted          = "saga.started"
	EventStepCompleted    = "saga.step_completed"
	EventStepFailed       = "saga.step_failed"
	EventCompensating     = "saga.compensating"
	EventStepCompensated  = "saga.step_compensated"
	EventCompleted        = "saga.completed"
	EventCompensated      = "saga.compensated"
	EventFailed           = "saga.failed"
	EventCancelled        = "saga.cancelled"
	ErrorTypeTimeout      = "timeout"
	ErrorTypeCancelled    = "cancelled"
	errorTypeCompensation = "compensation_failed"
)

// Ended reports whether state is final.
func Ended(state string) bool {
	return state == StateCompleted || state == StateCompensated || state == StateFailed || state == StateCancelled
}

// Errors of state changes the saga's state does not allow.
var (
	// ErrCompensating: CancelSaga on a saga compensating after a failure.
	ErrCompensating = redact.Sentinel("the saga is compensating after a failure; it can no longer be cancelled")
	// ErrIdempotencyKeyReused: StartSaga with a key the tenant used for another workflow.
	ErrIdempotencyKeyReused = redact.Sentinel("idempotency_key was used by the tenant for a saga of another workflow")
	// errNotExpired: a timeout for a task whose deadline has not passed.
	errNotExpired = redact.Sentinel("the task's deadline has not passed")
)

// EndedError says that the saga has ended: the change is refused.
type EndedError struct{ State string }

func (e *EndedError) Error() string { return "the saga has ended (" + e.State + ")" }

// LogSafe marks the text as loggable (redact.Safe): a state name.
func (e *EndedError) LogSafe() {}

// Outcome is how a task was answered.
type Outcome int

// Outcomes of a task.
const (
	Completed Outcome = iota + 1
	Failed
	TimedOut
)

// Answer is a worker's answer to a task (or its timeout).
type Answer struct {
	TaskID  string
	Outcome Outcome
	// Output is the step's output, a JSON object (Completed).
	Output       []byte
	ErrorType    string
	ErrorMessage string
	// NonRetryable: fail the step now, whatever its retry policy.
	NonRetryable bool
}

// Machine computes a saga's state changes: it reads the saga's row and step rows and
// answers what to write. It does no I/O, so its transitions are tested directly (see
// testdata/*.golden).
type Machine struct {
	Def *Definition
	// Now is the database's clock when the saga was locked.
	Now time.Time
	// Rand draws from [0, 1) for backoff jitter.
	Rand func() float64
	// NewTaskID makes a task id (a lease token: random, unguessable).
	NewTaskID func() string
	// NewEventID makes an event id.
	NewEventID func() string
	// Service is the events' source_service.
	Service string
}

// Change is what a state change writes, and what the engine does once it committed.
type Change struct {
	Saga   store.SagaRow
	Steps  []store.SagaStepRow
	Events []store.SagaEvent
	// Ready are the tasks made ready: their queue and when they may be taken.
	Ready []Ready
	// Ended is the saga's final state when this change ended it.
	Ended string
	// Durations are the attempts answered: their action and how long they ran.
	Durations []Duration
	// NoOp: nothing to write (a repeated cancel).
	NoOp bool
}

// Ready is a task made ready.
type Ready struct {
	Queue  string
	At     time.Time
	TaskID string
	Step   int
}

// Duration is how long an answered attempt ran.
type Duration struct {
	Action  string
	Seconds float64
}

// Queue is the claim queue of an action or compensation.
func Queue(kind int, name string) string {
	if kind == KindCompensation {
		return "c/" + name
	}
	return "a/" + name
}

// change holds a change being built.
type change struct {
	m      *Machine
	c      Change
	steps  []store.SagaStepRow // every step row, updated in place
	dirty  map[int]bool
	events []pendingEvent
}

func (m *Machine) begin(sg store.SagaRow, steps []store.SagaStepRow) *change {
	ch := &change{m: m, c: Change{Saga: sg}, dirty: map[int]bool{}}
	ch.steps = make([]store.SagaStepRow, len(steps))
	copy(ch.steps, steps)
	ch.c.Saga.UpdatedAt = m.Now
	return ch
}

// row answers the row of step i, adding it when the step has none yet.
func (ch *change) row(i int) *store.SagaStepRow {
	for k := range ch.steps {
		if ch.steps[k].Index == i {
			ch.dirty[i] = true
			return &ch.steps[k]
		}
	}
	ch.steps = append(ch.steps, store.SagaStepRow{Index: i, Status: StepPending, TimeoutMS: int(ch.m.Def.Steps[i].Timeout() / time.Millisecond)})
	ch.dirty[i] = true
	return &ch.steps[len(ch.steps)-1]
}

func (ch *change) find(i int) *store.SagaStepRow {
	for k := range ch.steps {
		if ch.steps[k].Index == i {
			return &ch.steps[k]
		}
	}
	return nil
}

func (ch *change) done() Change {
	for k := range ch.steps {
		if ch.dirty[ch.steps[k].Index] {
			ch.c.Steps = append(ch.c.Steps, ch.steps[k])
		}
	}
	return ch.c
}

// schedule makes a new task of kind for step row st, ready at at.
func (ch *change) schedule(st *store.SagaStepRow, kind int, at time.Time) {
	def := &ch.m.Def.Steps[st.Index]
	name := def.Action
	if kind == KindCompensation {
		name = def.Compensation
	}
	st.TaskID, st.TaskState, st.TaskKind, st.Queue = ch.m.NewTaskID(), store.TaskReady, kind, Queue(kind, name)
	st.TimeoutMS = int(def.Timeout() / time.Millisecond)
	st.ReadyAt, st.Deadline, st.WorkerID = at, time.Time{}, ""
	ch.c.Ready = append(ch.c.Ready, Ready{Queue: st.Queue, At: at, TaskID: st.TaskID, Step: st.Index})
}

func clearTask(st *store.SagaStepRow) {
	st.TaskID, st.TaskState, st.TaskKind, st.Queue = "", "", 0, ""
	st.ReadyAt, st.Deadline, st.WorkerID = time.Time{}, time.Time{}, ""
}

// eventData is the payload of a saga event.
type eventData struct {
	SagaID          string          `json:"saga_id"`
	WorkflowID      string          `json:"workflow_id"`
	WorkflowVersion int32           `json:"workflow_version"`
	State           string          `json:"state"`
	StepID          string          `json:"step_id,omitempty"`
	StepIndex       *int            `json:"step_index,omitempty"`
	Kind            string          `json:"kind,omitempty"`
	Action          string          `json:"action,omitempty"`
	Attempt         int             `json:"attempt,omitempty"`
	Context         json.RawMessage `json:"context,omitempty"`
	Output          json.RawMessage `json:"output,omitempty"`
	ErrorType       string          `json:"error_type,omitempty"`
	ErrorMessage    string          `json:"error_message,omitempty"`
	WillRetry       *bool           `json:"will_retry,omitempty"`
	NextAttemptAt   *time.Time      `json:"next_attempt_at,omitempty"`
	Reason          string          `json:"reason,omitempty"`
}

func kindName(kind int) string {
	if kind == KindCompensation {
		return "compensation"
	}
	return "action"
}

// event adds an event of type typ; step is -1 for a saga-level event. Its state is
// the saga's state once the whole change is made (see seal).
func (ch *change) event(typ string, step int, fill func(d *eventData)) {
	sg := &ch.c.Saga
	d := eventData{SagaID: sg.ID, WorkflowID: sg.WorkflowID, WorkflowVersion: sg.WorkflowVersion}
	if step >= 0 {
		i := step
		d.StepID, d.StepIndex = ch.m.Def.Steps[step].ID, &i
	}
	if fill != nil {
		fill(&d)
	}
	ch.events = append(ch.events, pendingEvent{typ: typ, data: d})
}

type pendingEvent struct {
	typ  string
	data eventData
}

// seal encodes the change's events, with the saga's state after the change and their
// metadata (correlation id: the saga id).
func (ch *change) seal() {
	sg := &ch.c.Saga
	meta, _ := json.Marshal(map[string]string{
		"correlation_id": sg.ID, "source_service": ch.m.Service, "workflow_id": sg.WorkflowID,
	})
	for i := range ch.events {
		d := &ch.events[i].data
		d.State = sg.State
		data, _ := json.Marshal(d)
		ch.c.Events = append(ch.c.Events, store.SagaEvent{ID: ch.m.NewEventID(), Type: ch.events[i].typ, Data: data, Metadata: meta})
	}
}

func (ch *change) end(state string) {
	sg := &ch.c.Saga
	sg.State, sg.EndedAt = state, ch.m.Now
	ch.c.Ended = state
}

// Start is the change that creates sg (its id, tenant, workflow, context, key and
// creation time set by the caller): RUNNING, its first step's task ready now.
func (m *Machine) Start(sg store.SagaRow) Change {
	sg.State, sg.CurrentStep, sg.FailedStep = StateRunning, 0, -1
	sg.CreatedAt, sg.UpdatedAt = m.Now, m.Now
	ch := m.begin(sg, nil)
	st := ch.row(0)
	st.Status, st.Attempt, st.ScheduledAt = StepRunning, 1, m.Now
	ch.schedule(st, KindAction, m.Now)
	ch.event(EventStarted, -1, func(d *eventData) { d.Context = sg.Context })
	ch.seal()
	return ch.done()
}

// Answer is the change a worker's answer (or a timeout) makes. store.ErrTaskNotLeased
// when no step of sg holds the task leased.
func (m *Machine) Answer(sg store.SagaRow, steps []store.SagaStepRow, a Answer) (Change, error) {
	ch := m.begin(sg, steps)
	var st *store.SagaStepRow
	for k := range ch.steps {
		if ch.steps[k].TaskID == a.TaskID && ch.steps[k].TaskState == store.TaskLeased {
			st = &ch.steps[k]
		}
	}
	if st == nil || Ended(sg.State) {
		return Change{}, store.ErrTaskNotLeased
	}
	if a.Outcome == TimedOut && st.Deadline.After(m.Now) {
		return Change{}, errNotExpired
	}
	ch.dirty[st.Index] = true
	def := &m.Def.Steps[st.Index]
	kind := st.TaskKind
	attempt := st.Attempt
	if kind == KindCompensation {
		attempt = st.CompAttempt
	}
	if a.Outcome != TimedOut {
		started := st.Deadline.Add(-time.Duration(st.TimeoutMS) * time.Millisecond)
		name := def.Action
		if kind == KindCompensation {
			name = def.Compensation
		}
		ch.c.Durations = append(ch.c.Durations, Duration{Action: name, Seconds: max(0, m.Now.Sub(started).Seconds())})
	}
	clearTask(st)
	if a.Outcome == TimedOut {
		a.ErrorType = ErrorTypeTimeout
		a.ErrorMessage = fmt.Sprintf("attempt %d of %s %q did not answer within %ds", attempt, kindName(kind), def.ID, def.TimeoutSeconds)
		a.NonRetryable = false
	}
	var err error
	switch {
	case kind == KindAction && a.Outcome == Completed:
		err = ch.actionCompleted(st, a.Output, attempt)
	case kind == KindAction:
		ch.actionFailed(st, a, attempt)
	case a.Outcome == Completed:
		ch.compensated(st, attempt)
	default:
		ch.compensationFailed(st, a, attempt)
	}
	if err != nil {
		return Change{}, err
	}
	ch.seal()
	return ch.done(), nil
}

func (ch *change) actionCompleted(st *store.SagaStepRow, output []byte, attempt int) error {
	sg := &ch.c.Saga
	if len(output) == 0 {
		output = []byte("{}")
	}
	merged, err := mergeObjects(sg.Context, output)
	if err != nil {
		return err
	}
	if len(merged) > MaxContextBytes {
		return validate.Errorf("output", "laid over the saga context it makes %d bytes of JSON, over the limit of %d", len(merged), MaxContextBytes)
	}
	sg.Context = merged
	st.Status, st.Output, st.FinishedAt = StepCompleted, output, ch.m.Now
	i := st.Index
	last := i == len(ch.m.Def.Steps)-1
	if sg.CancelRequested {
		// Cancelled while this attempt ran: it is done, undo it with the rest.
		ch.event(EventStepCompleted, i, func(d *eventData) { d.Kind, d.Attempt, d.Output = "action", attempt, output })
		ch.unwind(i, true)
		return nil
	}
	if last {
		ch.end(StateCompleted)
	} else {
		next := ch.row(i + 1)
		next.Status, next.Attempt, next.ScheduledAt = StepRunning, 1, ch.m.Now
		ch.schedule(next, KindAction, ch.m.Now)
		sg.CurrentStep = i + 1
	}
	ch.event(EventStepCompleted, i, func(d *eventData) { d.Kind, d.Attempt, d.Output = "action", attempt, output })
	if last {
		ch.event(EventCompleted, -1, func(d *eventData) { d.Context = sg.Context })
	}
	return nil
}

func (ch *change) retry(st *store.SagaStepRow, kind, attempt int) time.Time {
	def := &ch.m.Def.Steps[st.Index]
	at := ch.m.Now.Add(def.Retry.Backoff(attempt, ch.m.Rand()))
	if kind == KindCompensation {
		st.CompAttempt++
	} else {
		st.Attempt++
	}
	ch.schedule(st, kind, at)
	return at
}

func (ch *change) failedEvent(st *store.SagaStepRow, kind, attempt int, a Answer, next *time.Time) {
	retry := next != nil
	ch.event(EventStepFailed, st.Index, func(d *eventData) {
		d.Kind, d.Attempt, d.ErrorType, d.ErrorMessage = kindName(kind), attempt, a.ErrorType, a.ErrorMessage
		d.WillRetry, d.NextAttemptAt = &retry, next
		if kind == KindCompensation {
			d.Action = ch.m.Def.Steps[st.Index].Compensation
		} else {
			d.Action = ch.m.Def.Steps[st.Index].Action
		}
	})
}

func (ch *change) actionFailed(st *store.SagaStepRow, a Answer, attempt int) {
	sg := &ch.c.Saga
	def := &ch.m.Def.Steps[st.Index]
	st.ErrorType, st.ErrorMessage = a.ErrorType, a.ErrorMessage
	if !a.NonRetryable && attempt < def.Retry.MaxAttempts && !sg.CancelRequested {
		at := ch.retry(st, KindAction, attempt)
		ch.failedEvent(st, KindAction, attempt, a, &at)
		return
	}
	st.Status, st.FinishedAt = StepFailed, ch.m.Now
	if !sg.CancelRequested {
		sg.ErrorType, sg.ErrorMessage, sg.FailedStep = a.ErrorType, "step "+strconv.Quote(def.ID)+" failed: "+a.ErrorMessage, st.Index
	}
	ch.failedEvent(st, KindAction, attempt, a, nil)
	ch.unwind(st.Index, true)
}

// unwind stops forward execution after step i ended (failed, completed under a cancel
// or skipped): the compensations run from step i (when self) or the step before it,
// or the saga ends at once when compensation is off.
func (ch *change) unwind(i int, self bool) {
	sg := &ch.c.Saga
	if !ch.m.Def.EnableCompensation {
		if sg.CancelRequested {
			ch.end(StateCancelled)
			ch.event(EventCancelled, -1, func(d *eventData) { d.Reason = sg.ErrorMessage })
		} else {
			ch.end(StateFailed)
			ch.event(EventFailed, i, func(d *eventData) { d.ErrorType, d.ErrorMessage = sg.ErrorType, sg.ErrorMessage })
		}
		return
	}
	from := i
	if !self {
		from = i - 1
	}
	if sg.State != StateCompensating {
		sg.State = StateCompensating
		ch.event(EventCompensating, i, func(d *eventData) {
			d.ErrorType, d.ErrorMessage = sg.ErrorType, sg.ErrorMessage
			if sg.CancelRequested {
				d.Reason = "cancelled"
			}
		})
	}
	ch.compensateFrom(from)
}

// compensateFrom schedules the compensation of the first step, from step i down,
// that did (or may have half-done) its work and has a compensation action; or, when
// there is none left, ends the saga.
func (ch *change) compensateFrom(i int) {
	sg := &ch.c.Saga
	for j := i; j >= 0; j-- {
		st := ch.find(j)
		if st == nil || ch.m.Def.Steps[j].Compensation == "" {
			continue
		}
		if st.Status != StepCompleted && st.Status != StepFailed {
			continue
		}
		st = ch.row(j)
		st.Status, st.CompAttempt, st.CompScheduledAt = StepCompensating, 1, ch.m.Now
		ch.schedule(st, KindCompensation, ch.m.Now)
		sg.CurrentStep = j
		return
	}
	if sg.CancelRequested {
		ch.end(StateCancelled)
		ch.event(EventCancelled, -1, func(d *eventData) { d.Reason = sg.ErrorMessage })
		return
	}
	ch.end(StateCompensated)
	ch.event(EventCompensated, -1, func(d *eventData) { d.ErrorType, d.ErrorMessage = sg.ErrorType, sg.ErrorMessage })
}

func (ch *change) compensated(st *store.SagaStepRow, attempt int) {
	st.Status, st.CompensatedAt = StepCompensated, ch.m.Now
	comp := ch.m.Def.Steps[st.Index].Compensation
	ch.event(EventStepCompensated, st.Index, func(d *eventData) {
		d.Kind, d.Action, d.Attempt = "compensation", comp, attempt
	})
	ch.compensateFrom(st.Index - 1)
}

func (ch *change) compensationFailed(st *store.SagaStepRow, a Answer, attempt int) {
	sg := &ch.c.Saga
	def := &ch.m.Def.Steps[st.Index]
	st.ErrorType, st.ErrorMessage = a.ErrorType, a.ErrorMessage
	if !a.NonRetryable && attempt < def.Retry.MaxAttempts {
		at := ch.retry(st, KindCompensation, attempt)
		ch.failedEvent(st, KindCompensation, attempt, a, &at)
		return
	}
	st.Status = StepCompensationFailed
	sg.ErrorType = a.ErrorType
	sg.ErrorMessage = "compensation " + strconv.Quote(def.Compensation) + " of step " + strconv.Quote(def.ID) + " failed: " + a.ErrorMessage
	sg.FailedStep = st.Index
	ch.end(StateFailed)
	ch.failedEvent(st, KindCompensation, attempt, a, nil)
	ch.event(EventFailed, st.Index, func(d *eventData) { d.ErrorType, d.ErrorMessage = sg.ErrorType, sg.ErrorMessage })
}

// Cancel is the change CancelSaga makes. A running step whose task is waiting is
// taken back at once (SKIPPED if no attempt ever ran, else FAILED and compensated
// like a failed step); a step a worker is running is left to finish or time out, and
// is then compensated. A repeated cancel changes nothing (NoOp).
func (m *Machine) Cancel(sg store.SagaRow, steps []store.SagaStepRow, reason string) (Change, error) {
	switch {
	case Ended(sg.State):
		return Change{}, &EndedError{State: sg.State}
	case sg.CancelRequested:
		return Change{Saga: sg, NoOp: true}, nil
	case sg.State == StateCompensating:
		return Change{}, ErrCompensating
	}
	ch := m.begin(sg, steps)
	s := &ch.c.Saga
	s.CancelRequested = true
	s.ErrorType, s.ErrorMessage = ErrorTypeCancelled, "cancelled"
	if reason != "" {
		s.ErrorMessage = "cancelled: " + reason
	}
	st := ch.find(s.CurrentStep)
	if st == nil || st.TaskState == "" {
		// Not reachable while the invariant (one live task per running saga) holds.
		return Change{}, fmt.Errorf("saga %s: no live task at step %d", s.ID, s.CurrentStep)
	}
	st = ch.row(st.Index)
	if st.TaskState == store.TaskLeased {
		// A worker runs it: wait for its answer (or its timeout).
		if m.Def.EnableCompensation {
			s.State = StateCompensating
			ch.event(EventCompensating, st.Index, func(d *eventData) {
				d.Reason, d.ErrorType, d.ErrorMessage = "cancelled", s.ErrorType, s.ErrorMessage
			})
		}
		ch.seal()
		return ch.done(), nil
	}
	ranBefore := !st.StartedAt.IsZero()
	clearTask(st)
	if ranBefore {
		st.Status, st.FinishedAt = StepFailed, m.Now
		st.ErrorType, st.ErrorMessage = ErrorTypeCancelled, "cancelled while waiting for a retry"
	} else {
		st.Status, st.Attempt = StepSkipped, 0 // it never ran
	}
	ch.unwind(st.Index, ranBefore)
	ch.seal()
	return ch.done(), nil
}

// mergeObjects lays the keys of JSON object over over those of base.
func mergeObjects(base, over []byte) ([]byte, error) {
	if len(over) == 0 || string(over) == "{}" {
		return base, nil
	}
	var b, o map[string]json.RawMessage
	if err := json.Unmarshal(base, &b); err != nil {
		return nil, fmt.Errorf("saga context is not a JSON object: %w", err)
	}
	if err := json.Unmarshal(over, &o); err != nil {
		return nil, validate.Errorf("output", "must be a JSON object")
	}
	if b == nil {
		b = make(map[string]json.RawMessage, len(o))
	}
	for k, v := range o {
		b[k] = v
	}
	return json.Marshal(b)
}
