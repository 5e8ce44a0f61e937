package server

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// rewriteError maps an internal error to a gRPC status. It is the only place that does.
// It decides by error class (the types and sentinels of the package that owns each
// dependency), from the most specific to the most generic; messages are ours, never
// driver, SQL or payload text.
func rewriteError(err error) error {
	if err == nil {
		return nil
	}
	var ie *internalError
	if errors.As(err, &ie) {
		return err
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var (
		ve *validate.Error
		ce *store.ConflictError
		te *store.TypeMismatchError
		xe *store.ConcurrencyError
		ue *store.UnfoldableError
		oe *resilience.OpenError
		ke *kafka.UnavailableError
		se *store.UnavailableError
	)
	switch {
	// The caller's input and the state it met.
	case errors.As(err, &ve):
		st := status.New(codes.InvalidArgument, ve.Error())
		if ds, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: ve.Field, Description: ve.Reason},
		}}); derr == nil {
			st = ds
		}
		return st.Err()
	case errors.As(err, &ce):
		st := status.New(codes.Aborted, ce.Error()+"; reload the aggregate and retry")
		if ds, derr := st.WithDetails(&eventgwv1.VersionConflict{AggregateId: ce.AggregateID, CurrentVersion: ce.Current}); derr == nil {
			st = ds
		}
		return st.Err()
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, "aggregate not found")
	case errors.Is(err, store.ErrFailedEventNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrFailedEventResolved):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, store.ErrEventIDTaken), errors.Is(err, store.ErrPartialDuplicate):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.As(err, &te):
		return status.Error(codes.FailedPrecondition, te.Error())
	case errors.As(err, &ue):
		return status.Error(codes.FailedPrecondition, ue.Error()+": read the aggregate with raw or ReadAggregate")
	case errors.Is(err, store.ErrSnapshotVersion):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, schema.ErrIncompatible):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.As(err, &xe):
		return status.Error(codes.Aborted, "concurrent update: retry")

	// A dependency that cannot serve now: each named by the class of the package that
	// owns it, before anything generic (a registry or broker network failure is not
	// the database's).
	case errors.Is(err, store.ErrAppendQueueFull):
		return status.Error(codes.ResourceExhausted, "the appends waiting to be written hold as many bytes as the gateway may keep (--append-queue-bytes): nothing was written; retry with the same ids")
	case errors.Is(err, publish.ErrNotQueued):
		return status.Error(codes.Unavailable, "kafka and PostgreSQL are both unavailable: the event was not accepted; retry with the same event_id")
	case errors.As(err, &oe):
		return status.Error(codes.Unavailable, oe.Error()+"; retry later")
	case errors.Is(err, schema.ErrUnavailable):
		return status.Error(codes.Unavailable, "schema registry unavailable; retry later")
	case errors.Is(err, kafka.ErrClosed):
		return status.Error(codes.Unavailable, "the gateway is shutting down; retry on another instance")
	case errors.As(err, &ke):
		return status.Error(codes.Unavailable, "kafka did not acknowledge the event; retry with the same event_id")
	case errors.As(err, &se) && se.OutcomeUnknown:
		// The statement may or may not have committed: a retry with the same ids is
		// answered idempotently.
		return status.Error(codes.Unavailable, "database unavailable (the outcome of the write is unknown): retry with the same ids")
	case errors.As(err, &se):
		return status.Error(codes.Unavailable, "database unavailable: retry later")

	// Generic.
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded: the outcome is unknown; retry with the same ids")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call cancelled")
	}
	return &internalError{cause: err}
}

// internalError answers Internal "internal error" to the caller and keeps the cause for
// the server's log (see logCause).
type internalError struct{ cause error }

func (e *internalError) Error() string { return "internal error" }
func (e *internalError) GRPCStatus() *status.Status {
	return status.New(codes.Internal, "internal error")
}
func (e *internalError) Unwrap() error { return e.cause }

// logCause describes an internal error's cause for the log by class and code, never by
// its text (redact.Describe): a driver, JSON-parser or protojson error quotes the input
// it refused. A PostgreSQL error is a *store.DBError: the call, SQLSTATE and constraint.
func logCause(err error) string {
	var ie *internalError
	if !errors.As(err, &ie) {
		return ""
	}
	return redact.Describe(ie.cause)
}

// statusCode is the code rewriteError gives err.
func statusCode(err error) (codes.Code, string) {
	st := status.Convert(rewriteError(err))
	return st.Code(), st.Message()
}
