package store

import (
	"fmt"

	"github.com/eventgw/eventgw/internal/redact"
)

var (
	// ErrNotFound: no such aggregate for this tenant (another tenant's aggregate is
	// reported the same way, so that its existence does not leak).
	ErrNotFound = redact.Sentinel("aggregate not found")
	// ErrEventIDTaken: an event id of the append is stored on another aggregate.
	ErrEventIDTaken = redact.Sentinel("an event id of this append is already stored on another aggregate")
	// ErrPartialDuplicate: some, not all, event ids of the append are already stored.
	ErrPartialDuplicate = redact.Sentinel("some event ids of this append are already stored (a retry must resend the same events)")
	// ErrSnapshotVersion: a snapshot at a version that does not exist or is older than the latest.
	ErrSnapshotVersion = redact.Sentinel("snapshot version refused")
	// ErrFailedEventNotFound: no such failed event for this tenant (another tenant's
	// rows are reported the same way).
	ErrFailedEventNotFound = redact.Sentinel("failed event not found")
	// ErrFailedEventResolved: the failed event is resolved and can no longer be retried.
	ErrFailedEventResolved = redact.Sentinel("failed event is resolved")
)

// UnfoldableError says an aggregate's stored data cannot be folded into its state: a
// value that is not JSON even to encoding/json (nothing the gateway writes; data from
// outside, or nested beyond 10,000 levels). It names the event (or snapshot) by id and
// version, never its data. The aggregate can still be read with LoadAggregate's raw
// mode or ReadAggregate.
type UnfoldableError struct {
	EventID  string
	Version  int64
	Snapshot bool // the snapshot's state, not an event's data
}

func (e *UnfoldableError) LogSafe() {}
func (e *UnfoldableError) Error() string {
	switch {
	case e.Snapshot:
		return fmt.Sprintf("the snapshot at version %d cannot be folded", e.Version)
	case e.EventID != "":
		return fmt.Sprintf("the data of the event at version %d (%s) cannot be folded", e.Version, e.EventID)
	}
	return "the aggregate's data cannot be folded"
}

// ConflictError is a failed optimistic-concurrency check.
type ConflictError struct {
	AggregateID string
	Current     int64
	Expected    string
}

func (e *ConflictError) LogSafe() {}
func (e *ConflictError) Error() string {
	return fmt.Sprintf("version conflict on aggregate %s: expected %s, current version is %d", e.AggregateID, e.Expected, e.Current)
}

// TypeMismatchError says the aggregate exists with another aggregate type.
type TypeMismatchError struct{ Stored string }

func (e *TypeMismatchError) LogSafe() {}
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

func (e *UnavailableError) LogSafe() {}
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

func (e *ConcurrencyError) LogSafe() {}
func (e *ConcurrencyError) Error() string {
	return e.Op + ": postgres " + e.Code + ": the transaction was aborted by a concurrent one; retry"
}
func (e *ConcurrencyError) Retriable() bool { return true }

// DBError is a PostgreSQL error that no class of this package covers: a bug, or a
// database that is not as the migrations left it. It keeps what may be logged of a
// PostgreSQL error: the call, the SQLSTATE and the constraint. Not the message: some
// messages quote the value they refused (invalid input syntax for type uuid: "…",
// invalid byte sequence for encoding "UTF8": 0x…), and DETAIL and WHERE quote row
// values (health data).
type DBError struct {
	Op         string
	Code       string
	Constraint string
}

func (e *DBError) LogSafe() {}
func (e *DBError) Error() string {
	s := e.Op + ": postgres " + e.Code
	if e.Constraint != "" {
		s += " (constraint " + e.Constraint + ")"
	}
	return s
}
