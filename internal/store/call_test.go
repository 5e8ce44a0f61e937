package store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/store"
)

// Do turns what the driver reports into the store's classes, by type and SQLSTATE:
// nothing pgx-typed comes out, a write cut off after sending says its outcome is
// unknown, the caller's own cancellation stays a cancellation, and an unclassified
// PostgreSQL error says only its SQLSTATE, message and constraint.
func TestDoClassifiesDriverErrors(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	type want int
	const (
		unavailable want = iota
		concurrency
		dbError
		canceled
		asIs
	)
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		access  store.Access
		err     error
		want    want
		unknown bool // OutcomeUnknown of an *UnavailableError
		outcome resilience.Outcome
	}{
		{"40001 serialization failure", nil, store.ReadWrite, &pgconn.PgError{Code: "40001", Message: "could not serialize"}, concurrency, false, resilience.Success},
		{"40P01 deadlock", nil, store.ReadWrite, fmt.Errorf("append: %w", &pgconn.PgError{Code: "40P01"}), concurrency, false, resilience.Success},
		{"57P01 admin shutdown, write", nil, store.ReadWrite, &pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, unavailable, true, resilience.Failure},
		{"57P01 admin shutdown, read", nil, store.ReadOnly, &pgconn.PgError{Code: "57P01"}, unavailable, false, resilience.Failure},
		{"57P03 starting up", nil, store.ReadOnly, &pgconn.PgError{Code: "57P03"}, unavailable, false, resilience.Failure},
		{"08006 connection failure", nil, store.ReadOnly, &pgconn.PgError{Code: "08006"}, unavailable, false, resilience.Failure},
		{"57014 statement timeout", nil, store.ReadOnly, &pgconn.PgError{Code: "57014"}, unavailable, false, resilience.Failure},
		{"57014 after the caller cancelled", cancelled, store.ReadOnly, &pgconn.PgError{Code: "57014"}, canceled, false, resilience.Ignore},
		{"connection refused, write", nil, store.ReadWrite, refused, unavailable, false, resilience.Failure},
		{"connection reset, write", nil, store.ReadWrite, fmt.Errorf("append: %w", reset), unavailable, true, resilience.Failure},
		{"unexpected EOF", nil, store.ReadOnly, io.ErrUnexpectedEOF, unavailable, false, resilience.Failure},
		{"network error after the caller cancelled", cancelled, store.ReadWrite, reset, canceled, false, resilience.Ignore},
		{"23502 not null", nil, store.ReadWrite, &pgconn.PgError{
			Code: "23502", Message: "invalid input syntax for type uuid: \"Jane Doe\"",
			Detail: "Failing row contains (Jane Doe).", Where: "SQL function", ConstraintName: "c1",
		}, dbError, false, resilience.Success},
		{"domain error", nil, store.ReadWrite, fmt.Errorf("append: %w", store.ErrNotFound), asIs, false, resilience.Success},
		{"conflict", nil, store.ReadWrite, &store.ConflictError{AggregateID: "a", Current: 1}, asIs, false, resilience.Success},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			got := store.Do(ctx, nil, tc.access, "append", func(context.Context) error { return tc.err })
			var pge *pgconn.PgError
			if errors.As(got, &pge) {
				t.Errorf("%v: a pgx error reaches the caller", got)
			}
			var ue *store.UnavailableError
			var ce *store.ConcurrencyError
			var de *store.DBError
			switch tc.want {
			case unavailable:
				if !errors.As(got, &ue) || ue.OutcomeUnknown != tc.unknown || !resilience.Retriable(got) {
					t.Errorf("%v: want *UnavailableError (outcome unknown %v), retriable", got, tc.unknown)
				}
			case concurrency:
				if !errors.As(got, &ce) || !resilience.Retriable(got) {
					t.Errorf("%v: want a retriable *ConcurrencyError", got)
				}
			case dbError:
				if !errors.As(got, &de) || de.Code != "23502" || resilience.Retriable(got) {
					t.Errorf("%v: want a *DBError", got)
				}
				if s := got.Error(); !strings.Contains(s, "23502") || !strings.Contains(s, "c1") ||
					strings.Contains(s, "Jane") || strings.Contains(s, "SQL function") || strings.Contains(s, "syntax") {
					t.Errorf("DBError text %q: want code and constraint, never the message, DETAIL or WHERE", s)
				}
			case canceled:
				if !errors.Is(got, context.Canceled) || errors.As(got, &ue) {
					t.Errorf("%v: want the caller's cancellation", got)
				}
			case asIs:
				if !errors.Is(got, tc.err) && got != tc.err {
					t.Errorf("%v: want %v as it is", got, tc.err)
				}
			}
			if o := store.Classify(got); o != tc.outcome {
				t.Errorf("Classify(%v) = %v, want %v", got, o, tc.outcome)
			}
		})
	}
}

// TestDoRetriesOnlyWhatChangedNothing: a read that met a refused connection is tried
// again (and succeeds); a write whose statement may have reached the server is not.
func TestDoRetriesOnlyWhatChangedNothing(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	tries := 0
	err := store.Do(context.Background(), nil, store.ReadOnly, "read", func(context.Context) error {
		if tries++; tries == 1 {
			return refused
		}
		return nil
	})
	if err != nil || tries != 2 {
		t.Fatalf("read after a refused connection: %v after %d tries, want success on the 2nd", err, tries)
	}
	tries = 0
	err = store.Do(context.Background(), nil, store.ReadOnly, "read", func(context.Context) error { tries++; return refused })
	var ue *store.UnavailableError
	if !errors.As(err, &ue) || tries != 3 {
		t.Fatalf("read with PostgreSQL down: %v after %d tries, want UnavailableError after 3", err, tries)
	}
	tries = 0
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	err = store.Do(context.Background(), nil, store.ReadWrite, "append", func(context.Context) error { tries++; return reset })
	if !errors.As(err, &ue) || tries != 1 || !ue.OutcomeUnknown {
		t.Fatalf("write cut off mid-call: %v after %d tries (outcome unknown %v), want one try", err, tries, ue != nil && ue.OutcomeUnknown)
	}
	// No retry waits past the caller's deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	tries = 0
	_ = store.Do(ctx, nil, store.ReadOnly, "read", func(context.Context) error { tries++; return refused })
	if tries > 2 {
		t.Fatalf("%d tries within a 10 ms deadline", tries)
	}
}
