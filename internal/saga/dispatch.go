package saga

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgxlisten"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/store"
)

const (
	// notifyChannel carries "<sidecar instance>|<queue>,<queue>..." (or "|*") when a
	// sidecar made tasks ready that its own workers may not take.
	notifyChannel = "eventgw_saga"
	// maxClaim is the most tasks one claim takes.
	maxClaim = 64
	// lockedRetry is how soon a poller looks again when ready tasks were skipped
	// because something held them locked.
	lockedRetry = 50 * time.Millisecond
	// maxNotifyPayload keeps a NOTIFY payload under PostgreSQL's 8000 bytes.
	maxNotifyPayload = 7000
)

// PollRequest is what a worker polls for.
type PollRequest struct {
	WorkerID      string
	Actions       []string
	Compensations []string
	// MaxInFlight is the most unanswered tasks the stream holds.
	MaxInFlight int
}

// Task is a task sent to a worker.
type Task struct {
	store.ClaimedTask
	StepID string
	// Action is the action or compensation to run.
	Action string
	// Input is a JSON object: an action's input (the context with the step's fixed
	// input over it) or a compensation's (the step's output).
	Input []byte
}

// poller is one PollTasks stream.
type poller struct {
	queues []string
	worker string
	max    int
	// wake: tasks of its queues may be ready (claim). room: an answer freed room
	// (claim only if a wake came while the stream was full).
	wake, room chan struct{}
	// pushed are tasks leased to this stream by a state change of this sidecar (see
	// Engine.leaseLocally); each has a reserved place in held, so the channel (of
	// capacity max) never blocks.
	pushed chan store.ClaimedTask

	mu   sync.Mutex
	held map[string]struct{}
	gone bool // the stream ended: pushes are given back
}

// claimResult is what a claim of a Poll stream found.
type claimResult struct {
	tasks []store.ClaimedTask
	next  time.Duration
	err   error
	limit int
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (p *poller) free() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.max - len(p.held)
}

func (p *poller) heldIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.held))
	for id := range p.held {
		out = append(out, id)
	}
	return out
}

// Poll leases tasks of the request's actions and compensations and hands them to send
// until ctx ends (or Shutdown): at most MaxInFlight unanswered at a time. It is woken
// when tasks become ready: at once by a state change in this sidecar, by NOTIFY from
// another one, or, failing both, every PollInterval. A batch send could not deliver
// (the stream broke) is given back at once, its attempt not counted.
func (e *Engine) Poll(ctx context.Context, req PollRequest, send func([]Task) error) error {
	p := &poller{
		worker: req.WorkerID, max: req.MaxInFlight, wake: make(chan struct{}, 1), room: make(chan struct{}, 1), held: map[string]struct{}{},
		pushed: make(chan store.ClaimedTask, req.MaxInFlight),
	}
	seen := map[string]bool{}
	for _, a := range req.Actions {
		if q := Queue(KindAction, a); !seen[q] {
			seen[q] = true
			p.queues = append(p.queues, q)
		}
	}
	for _, c := range req.Compensations {
		if q := Queue(KindCompensation, c); !seen[q] {
			seen[q] = true
			p.queues = append(p.queues, q)
		}
	}
	if err := e.addPoller(p); err != nil {
		return err
	}
	defer e.removePoller(p)
	tick := time.NewTicker(e.cfg.PollInterval)
	defer tick.Stop()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var timerC <-chan time.Time
	// A claim runs when tasks may be ready: at the start, when woken, when a retry's
	// backoff ends, at each poll — not after tasks were pushed or answered (no query per
	// task when this sidecar's changes lease them here directly). It runs in a goroutine
	// of its own, so that tasks pushed meanwhile are sent at once instead of waiting for
	// its round trip; its tasks are sent by this loop (the stream's only sender). One
	// claim at a time; a wake during it makes another. Its limit is the room when it
	// starts: tasks pushed meanwhile may take some of it, so that the stream briefly
	// holds up to one claim more than MaxInFlight (reserving the room instead would turn
	// those pushes away, into claims of their own).
	needClaim := true
	claimDone := make(chan claimResult, 1)
	claiming := false
	defer func() {
		if claiming { // the stream ended during a claim: give back what it took
			r := <-claimDone
			if len(r.tasks) > 0 {
				e.giveBack(r.tasks)
			}
		}
	}()
	for {
		if free := p.free(); needClaim && !claiming && free > 0 {
			limit := min(free, maxClaim)
			claiming, needClaim = true, false
			go func() {
				tasks, next, err := e.claim(ctx, p, limit)
				claimDone <- claimResult{tasks: tasks, next: next, err: err, limit: limit}
			}()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-e.stop:
			return ErrShutdown
		case c := <-p.pushed:
			batch := []store.ClaimedTask{c}
			for more := true; more && len(batch) < maxClaim; {
				select {
				case c := <-p.pushed:
					batch = append(batch, c)
				default:
					more = false
				}
			}
			if err := e.deliver(ctx, p, batch, send); err != nil {
				return err
			}
		case r := <-claimDone:
			claiming = false
			ids := make([]string, len(r.tasks))
			for i := range r.tasks {
				ids[i] = r.tasks[i].TaskID
			}
			e.hold(p, ids)
			switch {
			case r.err != nil && ctx.Err() != nil:
				return ctx.Err()
			case r.err != nil:
				e.log.Warn("saga task claim failed; will retry", zap.String("worker_id", p.worker), redact.Error(r.err))
			case len(r.tasks) > 0:
				if err := e.deliver(ctx, p, r.tasks, send); err != nil {
					return err
				}
				if len(r.tasks) == r.limit {
					needClaim = true // more may be waiting
					continue
				}
			}
			if timer != nil {
				timer.Stop()
				timer, timerC = nil, nil
			}
			switch {
			case r.err != nil || r.next == store.NoneWaiting:
			case r.next <= 0:
				timer = time.NewTimer(lockedRetry)
			default:
				timer = time.NewTimer(r.next + time.Millisecond)
			}
			if timer != nil {
				timerC = timer.C
			}
		case <-p.wake:
			needClaim = true
		case <-p.room:
		case <-timerC:
			timer, timerC = nil, nil
			needClaim = true
		case <-tick.C:
			needClaim = true
			if p.free() <= 0 {
				e.reconcile(ctx, p)
			}
		}
	}
}

// deliver builds the messages of tasks leased to p (and held) and sends them; when the
// send fails, the tasks are given back.
func (e *Engine) deliver(ctx context.Context, p *poller, claimed []store.ClaimedTask, send func([]Task) error) error {
	tasks := make([]Task, 0, len(claimed))
	ids := make([]string, len(claimed))
	for i := range claimed {
		ids[i] = claimed[i].TaskID
	}
	var err error
	for i := range claimed {
		var t Task
		if t, err = e.task(ctx, &claimed[i]); err != nil {
			break
		}
		tasks = append(tasks, t)
	}
	if err == nil {
		err = send(tasks)
	}
	if err != nil {
		e.giveBack(claimed)
		return err
	}
	now := time.Now()
	for i := range claimed {
		e.m.Dispatch.WithLabelValues(e.cfg.Service).Observe(max(0, now.Sub(claimed[i].ReadyAt).Seconds()))
	}
	return nil
}

// task builds the message of a claimed task.
func (e *Engine) task(ctx context.Context, c *store.ClaimedTask) (Task, error) {
	d, err := e.def(ctx, c.WorkflowID, c.WorkflowVersion)
	if err != nil {
		return Task{}, err
	}
	st := &d.Steps[c.StepIndex]
	t := Task{ClaimedTask: *c, StepID: st.ID}
	if c.Kind == KindCompensation {
		t.Action, t.Input = st.Compensation, c.Output
		if len(t.Input) == 0 {
			t.Input = []byte("{}")
		}
		return t, nil
	}
	t.Action = st.Action
	if t.Input, err = mergeObjects(c.Context, st.Input); err != nil {
		return Task{}, err
	}
	return t, nil
}

func (e *Engine) addPoller(p *poller) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrShutdown
	}
	for _, q := range p.queues {
		set := e.pollers[q]
		if set == nil {
			set = map[*poller]struct{}{}
			e.pollers[q] = set
		}
		set[p] = struct{}{}
	}
	return nil
}

// removePoller forgets an ended stream. The tasks it received stay leased: the worker
// may still answer them (through any sidecar) before their deadline. Tasks pushed to it
// that it never sent are given back.
func (e *Engine) removePoller(p *poller) {
	e.mu.Lock()
	for _, q := range p.queues {
		delete(e.pollers[q], p)
		if len(e.pollers[q]) == 0 {
			delete(e.pollers, q)
		}
	}
	for _, id := range p.heldIDs() {
		delete(e.held, id)
	}
	e.mu.Unlock()
	p.mu.Lock()
	p.gone = true
	var unsent []store.ClaimedTask
	for more := true; more; {
		select {
		case c := <-p.pushed:
			unsent = append(unsent, c)
		default:
			more = false
		}
	}
	p.mu.Unlock()
	if len(unsent) > 0 {
		e.giveBack(unsent)
	}
}

// giveBack makes leased tasks that never reached their worker ready again at once
// (under new task ids; the attempt is not counted) and wakes their pollers.
func (e *Engine) giveBack(tasks []store.ClaimedTask) {
	ids := make([]string, len(tasks))
	for i := range tasks {
		ids[i] = tasks[i].TaskID
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := e.st.Release(ctx, ids)
	cancel()
	if err != nil {
		e.log.Warn("giving back undelivered saga tasks failed: they time out instead", zap.Int("tasks", len(ids)), redact.Error(err))
	}
	for i := range tasks {
		e.unhold(tasks[i].TaskID)
		if !e.wake(tasks[i].Queue) {
			e.announce(tasks[i].Queue)
		}
	}
}

// reserve finds a poller of this sidecar with room for a task of queue and holds the
// task there (nil: none has room).
func (e *Engine) reserve(queue, taskID string) *poller {
	e.mu.Lock()
	defer e.mu.Unlock()
	for p := range e.pollers[queue] {
		p.mu.Lock()
		ok := !p.gone && len(p.held) < p.max
		if ok {
			p.held[taskID] = struct{}{}
		}
		p.mu.Unlock()
		if ok {
			e.held[taskID] = p
			return p
		}
	}
	return nil
}

// push hands a task leased to p to its stream, or gives it back if the stream ended.
// It runs once the change that made the task due committed: that is when the task
// became ready (ReadyAt, by this sidecar's clock).
func (e *Engine) push(p *poller, c store.ClaimedTask) {
	c.ReadyAt = time.Now()
	p.mu.Lock()
	if !p.gone {
		p.pushed <- c // room was reserved
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	go e.giveBack([]store.ClaimedTask{c})
}

// localLease is a task a state change leases to a poller of this sidecar.
type localLease struct {
	p    *poller
	task store.ClaimedTask
}

// leaseLocally leases the tasks a change makes ready now to pollers of this sidecar
// that have room, in the change itself: their step rows are written leased (deadline
// now + timeout), so no claim is needed and no other worker can take them. The caller
// pushes them once the change committed, or unholds them if it did not.
func (e *Engine) leaseLocally(ch *Change, now time.Time) []localLease {
	if !e.serves(ch.Saga.TenantID) {
		return nil
	}
	var out []localLease
	kept := ch.Ready[:0]
	for _, r := range ch.Ready {
		if r.At.After(now) {
			kept = append(kept, r)
			continue
		}
		var row *store.SagaStepRow
		for i := range ch.Steps {
			if ch.Steps[i].Index == r.Step && ch.Steps[i].TaskID == r.TaskID {
				row = &ch.Steps[i]
			}
		}
		var p *poller
		if row != nil {
			p = e.reserve(r.Queue, r.TaskID)
		}
		if p == nil {
			kept = append(kept, r)
			continue
		}
		row.TaskState, row.WorkerID = store.TaskLeased, p.worker
		row.Deadline = now.Add(time.Duration(row.TimeoutMS) * time.Millisecond)
		attempt := row.Attempt
		var output []byte
		if row.TaskKind == KindAction && row.StartedAt.IsZero() {
			row.StartedAt = now
		}
		if row.TaskKind == KindCompensation {
			attempt, output = row.CompAttempt, row.Output
		}
		sg := &ch.Saga
		out = append(out, localLease{p: p, task: store.ClaimedTask{
			SagaID: sg.ID, TenantID: sg.TenantID, WorkflowID: sg.WorkflowID, WorkflowVersion: sg.WorkflowVersion,
			StepIndex: row.Index, TaskID: row.TaskID, Kind: row.TaskKind, Queue: row.Queue, Attempt: attempt,
			ReadyAt: now, Deadline: row.Deadline, Context: sg.Context, Output: output,
		}})
	}
	ch.Ready = kept
	return out
}

func (e *Engine) hold(p *poller, ids []string) {
	e.mu.Lock()
	for _, id := range ids {
		e.held[id] = p
	}
	e.mu.Unlock()
	p.mu.Lock()
	for _, id := range ids {
		p.held[id] = struct{}{}
	}
	p.mu.Unlock()
}

// unhold frees the room a task took in the stream that holds it.
func (e *Engine) unhold(id string) {
	e.mu.Lock()
	p := e.held[id]
	delete(e.held, id)
	e.mu.Unlock()
	if p == nil {
		return
	}
	p.mu.Lock()
	delete(p.held, id)
	p.mu.Unlock()
	signal(p.room)
}

// reconcile frees the room of tasks a full stream holds that are no longer leased:
// answered through another sidecar, or timed out.
func (e *Engine) reconcile(ctx context.Context, p *poller) {
	ids := p.heldIDs()
	if len(ids) == 0 {
		return
	}
	still, err := e.st.StillLeased(ctx, ids)
	if err != nil {
		return
	}
	for _, id := range ids {
		if !still[id] {
			e.unhold(id)
		}
	}
}

// ready wakes the pollers of a task made ready (at once, or when its backoff ends),
// and announces it to other sidecars unless a poller here has room for it.
func (e *Engine) ready(r Ready, now time.Time) {
	if d := r.At.Sub(now); d > 0 {
		time.AfterFunc(d, func() { e.wake(r.Queue) })
		e.announce(r.Queue)
		return
	}
	if !e.wake(r.Queue) {
		e.announce(r.Queue)
	}
}

// wake signals the pollers of queue, and reports whether one of them has room.
func (e *Engine) wake(queue string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	room := false
	for p := range e.pollers[queue] {
		signal(p.wake)
		if !room && p.free() > 0 {
			room = true
		}
	}
	return room
}

func (e *Engine) wakeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, set := range e.pollers {
		for p := range set {
			signal(p.wake)
		}
	}
}

func (e *Engine) announce(queue string) {
	e.notifyMu.Lock()
	e.notifyQueues[queue] = true
	e.notifyMu.Unlock()
	signal(e.notifyCh)
}

// notifier sends one NOTIFY at a time, covering every queue announced meanwhile (a
// NOTIFY inside the state change's transaction would serialize commits).
func (e *Engine) notifier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-e.notifyCh:
		}
		e.notifyMu.Lock()
		queues := make([]string, 0, len(e.notifyQueues))
		for q := range e.notifyQueues {
			queues = append(queues, q)
		}
		clear(e.notifyQueues)
		e.notifyMu.Unlock()
		payload := e.instance + "|" + strings.Join(queues, ",")
		if len(payload) > maxNotifyPayload {
			payload = e.instance + "|*"
		}
		if err := e.st.Notify(ctx, notifyChannel, payload); err != nil && ctx.Err() == nil {
			e.log.Debug("saga notify failed (other sidecars poll anyway)", redact.Error(err))
		}
	}
}

// listen wakes this sidecar's pollers on other sidecars' notifications.
func (e *Engine) listen(ctx context.Context) {
	l := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, e.st.Pool().Config().ConnConfig.Copy())
		},
		ReconnectDelay: time.Second,
		LogError: func(_ context.Context, err error) {
			if ctx.Err() == nil {
				e.log.Warn("saga listener", redact.Error(err))
			}
		},
	}
	l.Handle(notifyChannel, pgxlisten.HandlerFunc(func(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
		from, queues, ok := strings.Cut(n.Payload, "|")
		if !ok || from == e.instance {
			return nil
		}
		if queues == "*" {
			e.wakeAll()
			return nil
		}
		for _, q := range strings.Split(queues, ",") {
			e.wake(q)
		}
		return nil
	}))
	_ = l.Listen(ctx)
}
