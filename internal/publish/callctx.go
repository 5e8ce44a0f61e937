package publish

import (
	"context"
	"sync"
	"time"
)

// callCtx is a publish call's context: its caller's, bounded by Config.Timeout when
// the caller brought no deadline. context.WithTimeout would cost a timer, a channel and
// a registration with the parent on every call; callCtx makes that context only when
// something asks for Done (a wait that cannot be answered at once: a full producer
// queue, a topic being created, the PostgreSQL queue). Waiting for Kafka's
// acknowledgements does not ask: it waits on waitable() and the deadline with a reused
// timer (kafka.Batch.WaitUntil). Err answers as the made context would: the parent's
// error, or DeadlineExceeded once the deadline has passed.
type callCtx struct {
	parent   context.Context
	deadline time.Time // zero: the parent's, or none

	mu     sync.Mutex
	made   context.Context
	cancel context.CancelFunc
}

var _ context.Context = (*callCtx)(nil)

// init sets c up under parent and returns the call's context: c, or parent itself when
// there is nothing to add (parent has a deadline, or timeout is 0).
func (c *callCtx) init(parent context.Context, timeout time.Duration) context.Context {
	if _, ok := parent.Deadline(); ok || timeout <= 0 {
		return parent
	}
	c.parent, c.deadline = parent, time.Now().Add(timeout)
	return c
}

// release frees the made context, if any (as the CancelFunc of WithTimeout).
func (c *callCtx) release() {
	c.mu.Lock()
	cancel := c.cancel
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

func (c *callCtx) make() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.made == nil {
		c.made, c.cancel = context.WithDeadline(c.parent, c.deadline)
	}
	return c.made
}

// waitable is the context to wait on together with the deadline: the parent while
// no context has been made (the deadline is then waited for by the caller's timer).
func (c *callCtx) waitable() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.made != nil {
		return c.made
	}
	return c.parent
}

func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, true }

func (c *callCtx) Done() <-chan struct{} { return c.make().Done() }

func (c *callCtx) Err() error {
	c.mu.Lock()
	made := c.made
	c.mu.Unlock()
	if made != nil {
		return made.Err()
	}
	if err := c.parent.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *callCtx) Value(key any) any { return c.parent.Value(key) }

// AfterFunc lets contexts derived from c follow it without a goroutine each.
func (c *callCtx) AfterFunc(f func()) (stop func() bool) { return context.AfterFunc(c.make(), f) }
