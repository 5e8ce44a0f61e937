package saga

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/store"
)

const (
	// groupSlots is how many transactions of a kind (answers, starts) run at once;
	// what arrives while all are busy is written together by the next one (group
	// commit).
	groupSlots = 4
	// maxGroup is the most changes one transaction writes (each writes at most a few
	// events: far below store.MaxWriteEvents).
	maxGroup = 64
	// groupTimeout bounds a shared transaction (it is no caller's: its context is not
	// one's).
	groupTimeout = 30 * time.Second
)

// grouper is group commit, as the event store's appends: items are queued, and up to
// groupSlots writers each take whatever is queued (up to maxGroup items) and write it in
// one transaction. A writer is started when an item is queued and fewer than groupSlots
// run; it stops when the queue is empty. There is no timer: a lone item is written at
// once. (Callers only wait for their own item: they never contend for the slots.)
type grouper[T any] struct {
	mu      sync.Mutex
	queue   []*groupItem[T]
	running int
	// key: items with equal keys never share a batch ("" never conflicts).
	key   func(T) string
	write func([]*groupItem[T])
}

// groupItem is one item: write sets err (and whatever T holds) and closes done.
type groupItem[T any] struct {
	v    T
	err  error
	done chan struct{}
}

func newGrouper[T any](key func(T) string, write func([]*groupItem[T])) *grouper[T] {
	return &grouper[T]{key: key, write: write}
}

// do writes v (alone or with others) and answers its item once written, or ctx's
// error (the item may still be written later: its outcome is unknown to the caller).
func (g *grouper[T]) do(ctx context.Context, v T) (*groupItem[T], error) {
	it := &groupItem[T]{v: v, done: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, it)
	start := g.running < groupSlots
	if start {
		g.running++
	}
	g.mu.Unlock()
	if start {
		go g.writer()
	}
	select {
	case <-it.done:
		return it, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// writer writes batches until the queue is empty.
func (g *grouper[T]) writer() {
	for {
		batch := g.take()
		if batch == nil {
			return
		}
		g.write(batch)
	}
}

// take removes up to maxGroup items of distinct keys from the queue; with the queue
// empty it answers nil and the writer stops (counted under the same lock).
func (g *grouper[T]) take() []*groupItem[T] {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.queue) == 0 {
		g.running--
		return nil
	}
	var batch []*groupItem[T]
	seen := make(map[string]bool, len(g.queue))
	rest := g.queue[:0]
	for _, it := range g.queue {
		k := g.key(it.v)
		if len(batch) == maxGroup || (k != "" && seen[k]) {
			rest = append(rest, it)
			continue
		}
		if k != "" {
			seen[k] = true
		}
		batch = append(batch, it)
	}
	clear(g.queue[len(rest):])
	g.queue = rest
	return batch
}

// answer writes a worker's answer: alone, or with the answers that arrived meanwhile,
// in one transaction. Each answer is still its saga's own state change, all or
// nothing; the answers of one transaction are of distinct sagas, locked in saga id
// order.
func (e *Engine) answer(ctx context.Context, a Answer) error {
	it, err := e.answers.do(ctx, a)
	if err != nil {
		return err
	}
	if it.err == nil || errors.Is(it.err, store.ErrTaskNotLeased) {
		e.unhold(a.TaskID)
	}
	return it.err
}

// alone writes one answer in a transaction of its own.
func (e *Engine) alone(ctx context.Context, it *groupItem[Answer]) {
	a := it.v
	_, it.err = e.transition(ctx, func() (*store.SagaTx, error) { return e.st.LockByTask(ctx, a.TaskID) },
		func(m *Machine, tx *store.SagaTx) (Change, error) { return m.Answer(tx.Saga, tx.Steps, a) })
	close(it.done)
}

func fail[T any](batch []*groupItem[T], err error) {
	for _, it := range batch {
		it.err = err
		close(it.done)
	}
}

// writeAnswers writes a batch of answers in one transaction. An answer whose saga
// another answer of the batch already changes is written alone afterwards; when the
// shared write fails, every answer is written alone.
func (e *Engine) writeAnswers(batch []*groupItem[Answer]) {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	if len(batch) == 1 {
		e.alone(ctx, batch[0])
		return
	}
	ids := make([]string, len(batch))
	for i, it := range batch {
		ids[i] = it.v.TaskID
	}
	var tx *store.SagaBatch
	for range 3 {
		var err error
		if tx, err = e.st.LockByTasks(ctx, ids); err != nil {
			fail(batch, err)
			return
		}
		var missing []defKey
		for i := range tx.Sagas {
			k := defKey{tx.Sagas[i].WorkflowID, tx.Sagas[i].WorkflowVersion}
			if _, ok := e.defs.Load(k); !ok {
				missing = append(missing, k)
			}
		}
		if len(missing) == 0 {
			break
		}
		tx.Rollback()
		tx = nil
		for _, k := range missing {
			if _, err := e.def(ctx, k.id, k.version); err != nil {
				fail(batch, err)
				return
			}
		}
	}
	if tx == nil {
		for _, it := range batch {
			e.alone(ctx, it)
		}
		return
	}
	sagaOf := make(map[string]int, len(batch))
	for i := range tx.Sagas {
		for _, st := range tx.Steps[tx.Sagas[i].ID] {
			if st.TaskID != "" {
				sagaOf[st.TaskID] = i
			}
		}
	}
	var (
		writes  []store.SagaWrite
		changes []*Change
		pushes  []localLease
		written []*groupItem[Answer]
		later   []*groupItem[Answer]
		used    = make(map[int]bool, len(batch))
	)
	for _, it := range batch {
		i, ok := sagaOf[it.v.TaskID]
		switch {
		case !ok:
			it.err = store.ErrTaskNotLeased
			close(it.done)
			continue
		case used[i]:
			later = append(later, it)
			continue
		}
		sg := tx.Sagas[i]
		d, _ := e.defs.Load(defKey{sg.WorkflowID, sg.WorkflowVersion})
		ch, err := e.machine(d.(*Definition), tx.Now).Answer(sg, tx.Steps[sg.ID], it.v)
		if err != nil {
			it.err = err
			close(it.done)
			continue
		}
		used[i] = true
		pushes = append(pushes, e.leaseLocally(&ch, tx.Now)...)
		c := ch
		changes = append(changes, &c)
		writes = append(writes, store.SagaWrite{Saga: &c.Saga, Steps: c.Steps, Events: c.Events, At: tx.Now})
		written = append(written, it)
	}
	switch {
	case len(writes) == 0:
		tx.Rollback()
	default:
		if err := tx.Commit(ctx, writes); err != nil {
			for _, l := range pushes {
				e.unhold(l.task.TaskID)
			}
			e.log.Warn("a shared saga write failed; writing its answers one by one", zap.Int("answers", len(written)), redact.Error(err))
			later = append(later, written...)
			break
		}
		for _, l := range pushes {
			e.push(l.p, l.task)
		}
		for _, c := range changes {
			e.after(c)
		}
		for _, it := range written {
			close(it.done)
		}
	}
	for _, it := range later {
		e.alone(ctx, it)
	}
}

// startItem is a saga to insert, and what became of it.
type startItem struct {
	ns  store.NewSaga
	res store.Inserted
}

func startKey(s *startItem) string {
	if s.ns.Saga.IdempotencyKey == "" {
		return ""
	}
	return s.ns.Saga.TenantID + "\x00" + s.ns.Saga.IdempotencyKey
}

// writeStarts inserts a batch of new sagas in one statement, sorted by tenant and
// idempotency key (so that two statements never wait for each other's keys).
func (e *Engine) writeStarts(batch []*groupItem[*startItem]) {
	ctx, cancel := context.WithTimeout(context.Background(), groupTimeout)
	defer cancel()
	slices.SortFunc(batch, func(a, b *groupItem[*startItem]) int { return strings.Compare(startKey(a.v), startKey(b.v)) })
	ns := make([]store.NewSaga, len(batch))
	for i, it := range batch {
		ns[i] = it.v.ns
	}
	res, err := e.st.InsertSagas(ctx, ns)
	if err != nil {
		fail(batch, err)
		return
	}
	for i, it := range batch {
		it.v.res, it.err = res[i], res[i].Err
		close(it.done)
	}
}
