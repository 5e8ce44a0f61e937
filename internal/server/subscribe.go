package server

import (
	"context"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/subscribe"
)

// Subscribe implements EventService.Subscribe.
func (s *EventService) Subscribe(req *eventgwv1.SubscribeRequest, stream eventgwv1.EventService_SubscribeServer) error {
	if s.subs == nil {
		return rewriteError(errNotServed)
	}
	o, err := subscribe.ParseOptions(req, s.subs.DefaultSubscription(), s.router)
	if err != nil {
		return rewriteError(err)
	}
	return rewriteError(s.subs.Subscribe(stream.Context(), o, stream.Send))
}

// Ack implements EventService.Ack.
func (s *EventService) Ack(ctx context.Context, req *eventgwv1.AckRequest) (*eventgwv1.AckResponse, error) {
	if s.subs == nil {
		return nil, rewriteError(errNotServed)
	}
	n, stale, err := s.subs.Ack(ctx, req.GetSubscription(), req.GetDeliveryIds())
	if err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.AckResponse{Acked: int32(n), StaleDeliveryIds: stale}, nil
}

// Nack implements EventService.Nack.
func (s *EventService) Nack(ctx context.Context, req *eventgwv1.NackRequest) (*eventgwv1.NackResponse, error) {
	if s.subs == nil {
		return nil, rewriteError(errNotServed)
	}
	var deadLetter bool
	switch req.GetAction() {
	case eventgwv1.NackAction_NACK_ACTION_UNSPECIFIED, eventgwv1.NackAction_NACK_ACTION_RETRY:
	case eventgwv1.NackAction_NACK_ACTION_DEAD_LETTER:
		deadLetter = true
	default:
		return nil, rewriteError(errBadNackAction)
	}
	n, stale, err := s.subs.Nack(ctx, req.GetSubscription(), req.GetDeliveryIds(), deadLetter, req.GetErrorType(), req.GetErrorMessage())
	if err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.NackResponse{Nacked: int32(n), StaleDeliveryIds: stale}, nil
}
