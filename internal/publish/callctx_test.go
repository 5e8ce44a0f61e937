package publish

import (
	"context"
	"errors"
	"testing"
	"time"
)

// callCtx answers as context.WithTimeout would: the deadline, the parent's values and
// cancellation, DeadlineExceeded once the deadline has passed (asked for Done or not).
func TestCallCtx(t *testing.T) {
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	defer cancel()

	var c callCtx
	ctx := c.init(parent, 20*time.Millisecond)
	if ctx != &c {
		t.Fatal("a parent without a deadline should get the call's")
	}
	if _, ok := ctx.Deadline(); !ok || ctx.Value(key{}) != "v" || ctx.Err() != nil {
		t.Fatalf("deadline %v, value %v, err %v", ok, ctx.Value(key{}), ctx.Err())
	}
	if c.waitable() != parent {
		t.Error("nothing made yet: the parent is what to wait on")
	}
	<-ctx.Done() // made on demand, closed at the deadline
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("after the deadline: %v", ctx.Err())
	}
	c.release()

	var c2 callCtx
	ctx = c2.init(parent, time.Hour)
	cancel()
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Errorf("parent cancelled, nothing made: %v", ctx.Err())
	}
	<-ctx.Done()
	c2.release()

	c3 := &callCtx{parent: context.Background(), deadline: time.Now().Add(-time.Second)}
	if !errors.Is(c3.Err(), context.DeadlineExceeded) {
		t.Errorf("deadline passed, Done never asked: %v", c3.Err())
	}

	dl, dcancel := context.WithTimeout(context.Background(), time.Hour)
	defer dcancel()
	var c4 callCtx
	if c4.init(dl, time.Second) != dl {
		t.Error("a parent with a deadline keeps it")
	}
	var c5 callCtx
	if c5.init(context.Background(), 0) != context.Background() {
		t.Error("no timeout: the parent as it is")
	}
}
