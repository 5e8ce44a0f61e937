package server

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// rewriteError maps an internal error to a gRPC status. It is the only place that does:
// messages are ours, never driver or SQL text.
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
		ve  *validate.Error
		ue  *kafka.UnavailableError
		ce  *store.ConflictError
		te  *store.TypeMismatchError
		pge *pgconn.PgError
	)
	switch {
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
	case errors.Is(err, store.ErrSnapshotVersion):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.As(err, &pge) && (pge.Code == "40001" || pge.Code == "40P01"):
		return status.Error(codes.Aborted, "concurrent update: retry")
	case errors.As(err, &pge) && (pge.Code == "57P01" || pge.Code == "57P03" || pge.Code[:2] == "08"):
		return status.Error(codes.Unavailable, "database unavailable: retry later")
	case isConnError(err):
		// The statement may or may not have committed: a retry with the same event ids
		// is answered idempotently.
		return status.Error(codes.Unavailable, "database unavailable (the outcome of a write in progress is unknown): retry with the same ids")
	case errors.As(err, &ve):
		st := status.New(codes.InvalidArgument, ve.Error())
		if ds, derr := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: ve.Field, Description: ve.Reason},
		}}); derr == nil {
			st = ds
		}
		return st.Err()
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded before Kafka acknowledged: the outcome is unknown; retry with the same event_id")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "call cancelled")
	case errors.Is(err, schema.ErrIncompatible):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, schema.ErrUnavailable):
		return status.Error(codes.Unavailable, "schema registry unavailable; retry later")
	case errors.Is(err, kafka.ErrClosed):
		return status.Error(codes.Unavailable, "the gateway is shutting down; retry on another instance")
	case errors.As(err, &ue):
		return status.Error(codes.Unavailable, ue.Error()+"; retry with the same event_id")
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

// logCause describes an internal error's cause for the log without event data:
// PostgreSQL's DETAIL and WHERE (which may quote values) are left out.
func logCause(err error) string {
	var ie *internalError
	if !errors.As(err, &ie) {
		return ""
	}
	var pge *pgconn.PgError
	if errors.As(ie.cause, &pge) {
		return "postgres " + pge.Code + ": " + pge.Message + " (constraint " + pge.ConstraintName + ")"
	}
	return ie.cause.Error()
}

// statusCode is the code rewriteError gives err.
func statusCode(err error) (codes.Code, string) {
	st := status.Convert(rewriteError(err))
	return st.Code(), st.Message()
}

// isConnError reports a database that could not be reached or went away.
func isConnError(err error) bool {
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		(pgconn.Timeout(err) && !errors.Is(err, context.DeadlineExceeded))
}
