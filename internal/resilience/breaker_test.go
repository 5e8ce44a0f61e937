package resilience

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

type transient struct{}

func (transient) Error() string   { return "broker unreachable" }
func (transient) Retriable() bool { return true }

var errBadInput = errors.New("bad input")

func TestBreakerLifecycle(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	core, logs := observer.New(zap.InfoLevel)
	s := Settings{FailureThreshold: 5, SuccessThreshold: 2, Timeout: 50 * time.Millisecond, HalfOpenMaxRequests: 3}
	b := NewBreaker("kafka", "svc", s, ClassifyRetriable, m, zap.New(core))
	state := func() float64 { return testutil.ToFloat64(m.state.WithLabelValues("svc", "kafka")) }

	// Bad input and cancellations never open it; four failures do not either.
	for range 10 {
		_ = b.Do(func() error { return errBadInput })
	}
	_ = b.Do(func() error { return context.Canceled })
	for range 4 {
		_ = b.Do(func() error { return transient{} })
	}
	if b.State() != Closed {
		t.Fatalf("state %v after 4 failures, want closed", b.State())
	}
	// A success resets the consecutive count.
	_ = b.Do(func() error { return nil })
	for range 4 {
		_ = b.Do(func() error { return transient{} })
	}
	if b.State() != Closed {
		t.Fatal("4 failures after a success opened the breaker")
	}
	_ = b.Do(func() error { return transient{} })
	if b.State() != Open || state() != 1 {
		t.Fatalf("state %v (gauge %v) after the 5th consecutive failure, want open (1)", b.State(), state())
	}
	called := false
	err := b.Do(func() error { called = true; return nil })
	var oe *OpenError
	if called || !errors.As(err, &oe) || oe.Dependency != "kafka" || !Retriable(err) || !errors.Is(err, ErrOpen) {
		t.Fatalf("open breaker: called %v, err %v", called, err)
	}

	time.Sleep(80 * time.Millisecond)
	if b.State() != HalfOpen {
		t.Fatalf("state %v after the timeout, want half-open", b.State())
	}
	// Three trial calls at once, not four.
	for i := range 3 {
		if err := b.Allow(); err != nil {
			t.Fatalf("trial %d refused: %v", i, err)
		}
	}
	if err := b.Allow(); err == nil {
		t.Fatal("a 4th concurrent trial call was let through")
	}
	b.Done(nil)
	if b.State() != HalfOpen {
		t.Fatal("closed after one success; success threshold is 2")
	}
	b.Done(nil)
	if b.State() != Closed || state() != 0 {
		t.Fatalf("state %v (gauge %v) after 2 successes, want closed (0)", b.State(), state())
	}
	b.Done(nil) // the third trial's answer

	if got := testutil.ToFloat64(m.failures.WithLabelValues("svc", "kafka")); got != 9 {
		t.Errorf("circuit_breaker_failures_total = %v, want 9", got)
	}
	if got := testutil.ToFloat64(m.successes.WithLabelValues("svc", "kafka")); got != 14 {
		t.Errorf("circuit_breaker_successes_total = %v, want 14", got)
	}
	changes := logs.FilterMessage("circuit breaker state changed").All()
	if len(changes) != 3 {
		t.Fatalf("%d state-change log lines, want 3 (open, half-open, closed)", len(changes))
	}
}

func TestBreakerHalfOpenFailureReopens(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	s := Settings{FailureThreshold: 1, SuccessThreshold: 2, Timeout: 30 * time.Millisecond, HalfOpenMaxRequests: 3}
	b := NewBreaker("postgres", "svc", s, ClassifyRetriable, m, zap.NewNop())
	_ = b.Do(func() error { return transient{} })
	time.Sleep(50 * time.Millisecond)
	// 2 of 3 trials must succeed: two failures re-open it.
	_ = b.Do(func() error { return transient{} })
	_ = b.Do(func() error { return transient{} })
	if b.State() != Open {
		t.Fatalf("state %v after 2 failed trials, want open", b.State())
	}
}

func TestSettingsValidate(t *testing.T) {
	if err := DefaultSettings().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := DefaultSettings()
	bad.HalfOpenMaxRequests = 1
	if bad.Validate() == nil {
		t.Fatal("half_open_max_requests below success_threshold accepted")
	}
}

func TestRetry(t *testing.T) {
	p := RetryPolicy{Initial: time.Millisecond, Max: 4 * time.Millisecond, MaxTries: 4}
	n := 0
	err := p.Do(context.Background(), func(context.Context) error { n++; return transient{} })
	if n != 4 || !Retriable(err) {
		t.Fatalf("%d tries (want 4), err %v", n, err)
	}
	n = 0
	if err := p.Do(context.Background(), func(context.Context) error { n++; return errBadInput }); n != 1 || err != errBadInput {
		t.Fatalf("non-retriable error retried: %d tries, %v", n, err)
	}
	n = 0
	err = p.Do(context.Background(), func(context.Context) error {
		if n++; n < 3 {
			return transient{}
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("recovering call: %d tries, %v", n, err)
	}
	// The deadline bounds the retries: no wait past it.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	slow := RetryPolicy{Initial: time.Second, Max: time.Second}
	n = 0
	_ = slow.Do(ctx, func(context.Context) error { n++; return transient{} })
	if n != 1 || ctx.Err() != nil {
		t.Fatalf("waited past the deadline: %d tries, ctx %v", n, ctx.Err())
	}
}
