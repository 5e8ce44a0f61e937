package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// defaultAppendTimeout bounds one shared statement.
const defaultAppendTimeout = 30 * time.Second

// maxSharedEvents bounds the events of one shared statement: positions leave room for
// 1024 events per transaction.
const maxSharedEvents = 1000

// Appender is group commit for appends. Concurrent appends to distinct aggregates are
// written by one statement in one transaction (appendManySQL): one round trip, one
// plan, one WAL flush for all of them. There is no timer and no hand-off when there is
// no contention: a caller that finds a free slot writes its own append, together with
// whatever other appends are waiting at that moment; callers that find every slot busy
// queue up and are written by the next slot holder.
type Appender struct {
	events *Events
	slots  chan struct{}

	mu    sync.Mutex
	queue []*pendingAppend
	// held is the bytes of the appends queued or being written, at most maxBytes.
	held     int64
	maxBytes int64
}

type pendingAppend struct {
	req  *AppendRequest
	res  AppendResult
	err  error
	done chan struct{}
	size int64
}

// ErrAppendQueueFull means the appends waiting to be written hold as many bytes as the
// appender may keep (--append-queue-bytes): nothing was written; retry.
var ErrAppendQueueFull = errors.New("the append queue is full")

// NewAppender writes with at most `slots` statements at a time.
func NewAppender(events *Events, slots int) *Appender {
	return &Appender{events: events, slots: make(chan struct{}, max(1, slots))}
}

// WithMaxBytes bounds the bytes of the appends queued or being written (0: no bound):
// past it Append answers ErrAppendQueueFull at once. An append the caller gave up on
// still counts until it is written.
func (a *Appender) WithMaxBytes(n int64) *Appender {
	a.maxBytes = n
	return a
}

// Held is the bytes of the appends queued or being written.
func (a *Appender) Held() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held
}

// appendSize is what an append holds while it waits: its events' data and metadata,
// and a little for each event and the request.
func appendSize(req *AppendRequest) int64 {
	n := int64(256)
	for i := range req.Events {
		e := &req.Events[i]
		n += 256 + int64(len(e.ID)+len(e.Type)+len(e.Data)+len(e.Metadata))
	}
	return n
}

// Append appends req, alone or together with concurrent appends.
func (a *Appender) Append(ctx context.Context, req AppendRequest) (AppendResult, error) {
	p := &pendingAppend{req: &req, done: make(chan struct{}), size: appendSize(&req)}
	a.mu.Lock()
	if a.maxBytes > 0 && a.held > 0 && a.held+p.size > a.maxBytes {
		a.mu.Unlock()
		return AppendResult{}, ErrAppendQueueFull
	}
	a.held += p.size
	a.queue = append(a.queue, p)
	a.mu.Unlock()
	for {
		select {
		case <-p.done:
			return p.res, p.err
		case a.slots <- struct{}{}:
			if batch := a.take(); len(batch) > 0 {
				a.write(batch)
			}
			<-a.slots
		case <-ctx.Done():
			// Written or not, later: a retry with the same event ids is answered
			// idempotently.
			return AppendResult{}, fmt.Errorf("append: %w", ctx.Err())
		}
	}
}

// take removes a batch from the queue: distinct aggregates, at most maxSharedEvents
// events. Appends to an aggregate already in the batch stay queued for the next one.
func (a *Appender) take() (batch []*pendingAppend) {
	a.mu.Lock()
	defer a.mu.Unlock()
	seen := make(map[string]bool, len(a.queue))
	n := 0
	rest := a.queue[:0]
	for _, p := range a.queue {
		switch {
		case seen[p.req.AggregateID], n > 0 && n+len(p.req.Events) > maxSharedEvents:
			rest = append(rest, p)
		default:
			seen[p.req.AggregateID] = true
			n += len(p.req.Events)
			batch = append(batch, p)
		}
	}
	a.queue = rest
	return batch
}

func (a *Appender) write(batch []*pendingAppend) {
	// Not a caller's context: the statement is shared.
	ctx, cancel := context.WithTimeout(context.Background(), defaultAppendTimeout)
	defer cancel()
	if len(batch) == 1 {
		p := batch[0]
		p.res, p.err = a.events.Append(ctx, *p.req)
		a.finish(batch)
		return
	}
	// One lock order for every statement, so that two never deadlock on each other.
	slices.SortFunc(batch, func(x, y *pendingAppend) int { return cmp.Compare(x.req.AggregateID, y.req.AggregateID) })
	reqs := make([]*AppendRequest, len(batch))
	for i, p := range batch {
		reqs[i] = p.req
	}
	results, errs := a.events.AppendMany(ctx, reqs)
	for i, p := range batch {
		p.res, p.err = results[i], errs[i]
	}
	a.finish(batch)
}

// finish gives the batch's bytes back, then its answers.
func (a *Appender) finish(batch []*pendingAppend) {
	var n int64
	for _, p := range batch {
		n += p.size
	}
	a.mu.Lock()
	a.held -= n
	a.mu.Unlock()
	for _, p := range batch {
		close(p.done)
	}
}
