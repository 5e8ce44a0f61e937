package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/resilience"
)

// BreakerName is the dependency name of the PostgreSQL breaker (the metrics' label and
// the name an open breaker's error gives).
const BreakerName = "postgres"

// NewBreaker builds the postgres circuit breaker (see Classify for what counts). Give it
// to every store type (WithBreaker) so that while PostgreSQL is down their calls fail
// at once with an *UnavailableError instead of each waiting for a connection.
func NewBreaker(service string, s resilience.Settings, m *resilience.Metrics, log *zap.Logger) *resilience.Breaker {
	return resilience.NewBreaker(BreakerName, service, s, Classify, m, log)
}

// Classify says what a store call's error says about PostgreSQL: an *UnavailableError is
// its failure; a cancellation or the caller's own deadline says nothing (the caller
// gave up; a deadline may be shorter than any database could meet); anything else is
// an answer (a conflict, a not-found, a refused input: PostgreSQL worked).
func Classify(err error) resilience.Outcome {
	var ue *UnavailableError
	switch {
	case err == nil:
		return resilience.Success
	case errors.As(err, &ue):
		return resilience.Failure
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return resilience.Ignore
	}
	return resilience.Success
}

// Option configures a store type.
type Option func(*options)

type options struct {
	breaker *resilience.Breaker
}

// WithBreaker guards the type's calls with b, the postgres breaker (NewBreaker); nil
// means no breaker.
func WithBreaker(b *resilience.Breaker) Option { return func(o *options) { o.breaker = b } }

func buildOptions(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Access says whether a store call may change data (a write cut off by a lost
// connection has an unknown outcome; a read's is of no interest).
type Access bool

const (
	ReadOnly  Access = false
	ReadWrite Access = true
)

// Do runs f, one store call's work against PostgreSQL, through breaker b (nil: none),
// and answers f's error in this package's classes: an *UnavailableError (also when b
// refuses the call), a *ConcurrencyError, a *DBError, the caller's context error, or
// f's own error (a sentinel, a *ConflictError, ...) as it is. Every exported function
// and method of this package that talks to PostgreSQL runs its statements inside Do, so
// that no pgx type reaches a caller and every call counts once for the breaker.
//
// f holds only the database work: never a caller's callback (its error would be judged
// as PostgreSQL's, and a half-open breaker's trial permit would be held while the
// caller works). Do calls do not nest. op names the call in errors ("append").
//
// A call that failed for PostgreSQL's reasons and certainly changed nothing (a read, or
// a write that never reached the server) is tried again with backoff and jitter, up to
// retryTries times and never past ctx's deadline, within one breaker permit: the
// breaker counts the call once, by its last try.
func Do(ctx context.Context, b *resilience.Breaker, access Access, op string, f func(context.Context) error) error {
	if b != nil {
		if err := b.Allow(); err != nil {
			return &UnavailableError{Op: op, open: err}
		}
	}
	var err error
	wait := retryBase
	for try := 1; ; try++ {
		err = classify(ctx, access, op, f(ctx))
		if !safeToRetry(err) || try == retryTries || !sleepWithin(ctx, wait/2+rand.N(wait/2+1)) {
			break
		}
		wait *= 4
	}
	if b != nil {
		b.Done(err)
	}
	return err
}

// Retries of a call that failed for PostgreSQL's reasons: 3 tries, after ~50 and ~200 ms.
const (
	retryTries = 3
	retryBase  = 50 * time.Millisecond
)

// safeToRetry: PostgreSQL failed the call and nothing of it may have been applied.
func safeToRetry(err error) bool {
	var ue *UnavailableError
	return errors.As(err, &ue) && ue.open == nil && !ue.OutcomeUnknown
}

// sleepWithin waits d unless ctx ends first or its deadline is nearer than d.
func sleepWithin(ctx context.Context, d time.Duration) bool {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// unavailableCode reports the SQLSTATEs of a server that cannot serve now: connection
// exceptions (class 08), admin or crash shutdown and "starting up" (57P01-57P03), too
// many connections (53300), a statement cancelled while the caller still waited
// (57014 with a live context: statement_timeout or an administrator).
func unavailableCode(code string) bool {
	switch code {
	case "57P01", "57P02", "57P03", "53300", "57014":
		return true
	}
	return len(code) == 5 && code[:2] == "08"
}

// classify turns an error of f into this package's classes (see Do).
func classify(ctx context.Context, access Access, op string, err error) error {
	if err == nil {
		return nil
	}
	var pge *pgconn.PgError
	if errors.As(err, &pge) {
		switch {
		case pge.Code == "57014" && ctx.Err() != nil:
			return fmt.Errorf("%s: %w", op, ctx.Err())
		case pge.Code == "40001" || pge.Code == "40P01":
			return &ConcurrencyError{Op: op, Code: pge.Code}
		case unavailableCode(pge.Code):
			return &UnavailableError{
				Op: op, OutcomeUnknown: access == ReadWrite && mayHaveSent(err),
				reason: "postgres " + pge.Code + ": " + pge.Message,
			}
		}
		return &DBError{Op: op, Code: pge.Code, Constraint: pge.ConstraintName}
	}
	conn := isConnError(err)
	if cerr := ctx.Err(); cerr != nil && (conn || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		// The caller's context ended the call: say that, not how the driver noticed.
		return fmt.Errorf("%s: %w", op, cerr)
	}
	if conn {
		return &UnavailableError{
			Op: op, OutcomeUnknown: access == ReadWrite && mayHaveSent(err),
			reason: connReason(err),
		}
	}
	return err
}

// isConnError reports a database that could not be reached or went away: a failed
// connect, a network error, a connection closed under the call, an error pgx says
// happened before anything was sent, a timeout of the driver's own.
func isConnError(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// mayHaveSent reports an error after which a statement may have reached the server:
// not one pgx says happened before sending, nor a failed connect.
func mayHaveSent(err error) bool {
	var ce *pgconn.ConnectError
	var oe *net.OpError
	return !pgconn.SafeToRetry(err) && !errors.As(err, &ce) && !(errors.As(err, &oe) && oe.Op == "dial")
}

// connReason describes a connection failure for the log: the network error, without
// the connect error's user and database names.
func connReason(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe.Error()
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection was closed"
	case pgconn.Timeout(err):
		return "timeout"
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return "could not connect"
	}
	return "connection failed"
}
