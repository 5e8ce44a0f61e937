package kafka

import (
	"context"
	"errors"
	"testing"
	"time"
)

// WaitUntil gives up on the messages still pending at the deadline with
// DeadlineExceeded, at the caller's cancellation with its error, and leaves the
// outcomes Kafka gave.
func TestBatchWaitUntil(t *testing.T) {
	b := NewBatch(2)
	b.slots[0].complete(Result{Partition: 3, Offset: 7})
	b.WaitUntil(context.Background(), time.Now().Add(10*time.Millisecond))
	if r, _ := b.Result(0); r.Err != nil || r.Offset != 7 {
		t.Errorf("acknowledged message: %+v", r)
	}
	if r, ok := b.Result(1); !ok || !errors.Is(r.Err, context.DeadlineExceeded) {
		t.Errorf("pending message at the deadline: %+v, %v", r, ok)
	}

	b = NewBatch(1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b.WaitUntil(ctx, time.Now().Add(time.Hour))
	if r, _ := b.Result(0); !errors.Is(r.Err, context.Canceled) {
		t.Errorf("pending message of a cancelled call: %+v", r)
	}

	b = NewBatch(1)
	b.slots[0].complete(Result{Offset: 1})
	b.WaitUntil(context.Background(), time.Now().Add(-time.Second)) // done: the deadline does not matter
	if r, _ := b.Result(0); r.Err != nil {
		t.Errorf("acknowledged before a past deadline: %+v", r)
	}
}

// Quiet is closed once the producer has reported on every message, whether asked for
// before or after.
func TestBatchQuiet(t *testing.T) {
	b := NewBatch(1)
	q := b.Quiet()
	b.inProducer.Add(1) // handed to the producer
	b.reported()        // Send's own hold
	select {
	case <-q:
		t.Fatal("quiet while the producer still holds a message")
	default:
	}
	b.reported() // the producer reports
	<-q
	b2 := NewBatch(1)
	b2.reported()
	<-b2.Quiet() // asked for after
}
