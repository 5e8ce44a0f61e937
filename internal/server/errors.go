package server

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/validate"
)

// rewriteError maps an internal error to a gRPC status. It is the only place that does:
// messages are ours, never driver or SQL text.
func rewriteError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ve *validate.Error
	var ue *kafka.UnavailableError
	switch {
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
	return status.Error(codes.Internal, "internal error")
}

// statusCode is the code rewriteError gives err.
func statusCode(err error) (codes.Code, string) {
	st := status.Convert(rewriteError(err))
	return st.Code(), st.Message()
}
