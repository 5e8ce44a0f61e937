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
