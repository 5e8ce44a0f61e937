package resilience

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// RetryPolicy retries transient errors with exponential backoff and jitter.
type RetryPolicy struct {
	Initial, Max time.Duration
	// MaxTries bounds the attempts (0: until ctx's deadline).
	MaxTries uint
}

// DefaultRetry starts at 50 ms, doubles up to 2 s with ±50% jitter, 5 tries.
func DefaultRetry() RetryPolicy {
	return RetryPolicy{Initial: 50 * time.Millisecond, Max: 2 * time.Second, MaxTries: 5}
}

// Do runs f until it succeeds, fails with an error that is not Retriable, runs out of
// tries, or ctx ends (its deadline bounds the whole; a wait that would pass it is not
// taken). It answers f's last error.
func (p RetryPolicy) Do(ctx context.Context, f func(context.Context) error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.RandomizationFactor = p.Initial, p.Max, 0.5
	var last error
	for try := uint(1); ; try++ {
		last = f(ctx)
		if last == nil || !Retriable(last) || (p.MaxTries > 0 && try >= p.MaxTries) {
			return last
		}
		wait := bo.NextBackOff()
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
			return last
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return last
		case <-t.C:
		}
	}
}
