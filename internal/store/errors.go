package store

import (
	"errors"
	"fmt"
)

var (
	// ErrNotFound: no such aggregate for this tenant (another tenant's aggregate is
	// reported the same way, so that its existence does not leak).
	ErrNotFound = errors.New("aggregate not found")
	// ErrEventIDTaken: an event id of the append is stored on another aggregate.
	ErrEventIDTaken = errors.New("an event id of this append is already stored on another aggregate")
	// ErrPartialDuplicate: some, not all, event ids of the append are already stored.
	ErrPartialDuplicate = errors.New("some event ids of this append are already stored (a retry must resend the same events)")
	// ErrSnapshotVersion: a snapshot at a version that does not exist or is older than the latest.
	ErrSnapshotVersion = errors.New("snapshot version refused")
	// ErrFailedEventNotFound: no such failed event for this tenant (another tenant's
	// rows are reported the same way).
	ErrFailedEventNotFound = errors.New("failed event not found")
	// ErrFailedEventResolved: the failed event is resolved and can no longer be retried.
	ErrFailedEventResolved = errors.New("failed event is resolved")
)

// ConflictError is a failed optimistic-concurrency check.
type ConflictError struct {
	AggregateID string
	Current     int64
	Expected    string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("version conflict on aggregate %s: expected %s, current version is %d", e.AggregateID, e.Expected, e.Current)
}

// TypeMismatchError says the aggregate exists with another aggregate type.
type TypeMismatchError struct{ Stored string }

func (e *TypeMismatchError) Error() string {
	return fmt.Sprintf("aggregate_type: the aggregate is a %q", e.Stored)
}

// UnavailableError says PostgreSQL could not be reached, went away mid-call, is shutting
// down or starting up, or the postgres breaker refused the call. It is retriable.
type UnavailableError struct {
	// Op names the store call ("append", "list failed events").
	Op string
	// OutcomeUnknown: a write was cut off after its statement may have reached
	// PostgreSQL, so it may have committed. Appends, failed-event inserts and schema
	// saves are idempotent on their ids: retried with the same ids, they are answered
	// as the first call was.
	OutcomeUnknown bool

	reason string // what failed, without data: a SQLSTATE and message, or a network error
	open   error  // the breaker's *resilience.OpenError, when it refused the call
}

func (e *UnavailableError) Error() string {
	if e.open != nil {
		return e.Op + ": " + e.open.Error()
	}
	s := "postgres unavailable (" + e.Op + "): " + e.reason
	if e.OutcomeUnknown {
		s += " (the write may have committed)"
	}
	return s
}

// Unwrap answers the breaker's *resilience.OpenError when the breaker refused the call;
// never a driver error (nothing above this package sees pgx types).
func (e *UnavailableError) Unwrap() error   { return e.open }
func (e *UnavailableError) Retriable() bool { return true }

// ConcurrencyError says PostgreSQL aborted the call's transaction to resolve a conflict
// with a concurrent one (serialization failure 40001, deadlock 40P01). Nothing was
// written; it is retriable.
type ConcurrencyError struct {
	Op   string
	Code string // the SQLSTATE
}

func (e *ConcurrencyError) Error() string {
	return e.Op + ": postgres " + e.Code + ": the transaction was aborted by a concurrent one; retry"
}
func (e *ConcurrencyError) Retriable() bool { return true }

// DBError is a PostgreSQL error that no class of this package covers: a bug, or a
// database that is not as the migrations left it. Its text is what may be logged of a
// PostgreSQL error: SQLSTATE, message and constraint, never DETAIL or WHERE, which can
// quote row values (health data).
type DBError struct {
	Op         string
	Code       string
	Message    string
	Constraint string
}

func (e *DBError) Error() string {
	s := e.Op + ": postgres " + e.Code + ": " + e.Message
	if e.Constraint != "" {
		s += " (constraint " + e.Constraint + ")"
	}
	return s
}
