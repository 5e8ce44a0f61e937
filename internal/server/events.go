package server

import (
	"context"
	"errors"
	"io"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/subscribe"
	"github.com/eventgw/eventgw/internal/validate"
)

// EventService implements eventgw.v1.EventService.
type EventService struct {
	eventgwv1.UnimplementedEventServiceServer
	pub     *publish.Publisher
	schemas *schema.Registry
	router  *kafka.Router
	timeout time.Duration
	// maxInFlight bounds the stream requests a PublishStream keeps in flight.
	maxInFlight int
	log         *zap.Logger
	subs        *subscribe.Manager
	// limits bounds the bytes PublishStreams hold (nil: only maxInFlight does).
	limits *Limiter
}

// WithLimiter bounds the bytes of the requests PublishStreams hold unanswered.
func (s *EventService) WithLimiter(l *Limiter) *EventService {
	s.limits = l
	return s
}

var (
	errNotServed     = status.Error(codes.Unimplemented, "subscriptions are not served by this gateway")
	errBadNackAction = validate.Errorf("action", "is not a known action (NACK_ACTION_RETRY or NACK_ACTION_DEAD_LETTER)")
)

// WithSubscriptions serves Subscribe, Ack and Nack through m.
func (s *EventService) WithSubscriptions(m *subscribe.Manager) *EventService {
	s.subs = m
	return s
}

// NewEventService builds the EventService handlers.
func NewEventService(pub *publish.Publisher, schemas *schema.Registry, router *kafka.Router, timeout time.Duration, log *zap.Logger) *EventService {
	return &EventService{pub: pub, schemas: schemas, router: router, timeout: timeout, maxInFlight: 4096, log: log}
}

func toEvent(in *eventgwv1.Event, out *event.Event) {
	*out = event.Event{
		ID:            in.GetEventId(),
		Type:          in.GetEventType(),
		TenantID:      in.GetTenantId(),
		Payload:       in.GetPayload(),
		PayloadJSON:   in.GetPayloadJson(),
		Source:        in.GetSourceService(),
		UserID:        in.GetSourceUserId(),
		CorrelationID: in.GetCorrelationId(),
		CausationID:   in.GetCausationId(),
		Metadata:      in.GetMetadata(),
		PartitionKey:  in.GetPartitionKey(),
	}
	if t := in.GetTime(); t != nil {
		out.Time = t.AsTime()
	}
	// An explicitly empty payload_json is "present but empty", not "absent".
	if _, ok := in.GetData().(*eventgwv1.Event_PayloadJson); ok && out.PayloadJSON == nil {
		out.PayloadJSON = []byte{}
	}
}

func toEvents(in []*eventgwv1.Event) ([]event.Event, error) {
	out := make([]event.Event, len(in))
	for i, e := range in {
		if e == nil {
			return nil, validate.Errorf("events", "holds a null event")
		}
		toEvent(e, &out[i])
	}
	return out, nil
}

// Publish implements EventService.Publish.
func (s *EventService) Publish(ctx context.Context, req *eventgwv1.PublishRequest) (*eventgwv1.PublishResponse, error) {
	if req.GetEvent() == nil {
		return nil, rewriteError(validate.Errorf("event", "is required"))
	}
	var ev event.Event
	toEvent(req.GetEvent(), &ev)
	o, err := s.pub.PublishOne(ctx, &ev)
	if err != nil {
		return nil, rewriteError(err)
	}
	if o.Err != nil {
		return nil, rewriteError(o.Err)
	}
	// The response and its result in one allocation.
	r := &struct {
		resp eventgwv1.PublishResponse
		res  eventgwv1.PublishResult
	}{res: eventgwv1.PublishResult{EventId: o.EventID, Topic: o.Topic, Partition: o.Partition, Offset: o.Offset, Queued: o.Queued}}
	r.resp.Result = &r.res
	return &r.resp, nil
}

// PublishBatch implements EventService.PublishBatch.
func (s *EventService) PublishBatch(ctx context.Context, req *eventgwv1.PublishBatchRequest) (*eventgwv1.PublishBatchResponse, error) {
	evs, err := toEvents(req.GetEvents())
	if err != nil {
		return nil, rewriteError(err)
	}
	outs, err := s.pub.Publish(ctx, evs)
	if err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.PublishBatchResponse{Results: toResults(outs)}, nil
}

func toResults(outs []publish.Outcome) []*eventgwv1.EventResult {
	res := make([]*eventgwv1.EventResult, len(outs))
	// One allocation for all results of the batch.
	backing := make([]eventgwv1.PublishResult, len(outs))
	holders := make([]eventgwv1.EventResult_Result, len(outs))
	ers := make([]eventgwv1.EventResult, len(outs))
	for i := range outs {
		o := &outs[i]
		if o.Err != nil {
			code, msg := statusCode(o.Err)
			res[i] = &eventgwv1.EventResult{Outcome: &eventgwv1.EventResult_Error{Error: &eventgwv1.EventError{
				Code: int32(code), Message: msg, Index: int32(i),
			}}}
			continue
		}
		backing[i] = eventgwv1.PublishResult{EventId: o.EventID, Topic: o.Topic, Partition: o.Partition, Offset: o.Offset, Queued: o.Queued}
		holders[i].Result = &backing[i]
		ers[i].Outcome = &holders[i]
		res[i] = &ers[i]
	}
	return res
}

type inflight struct {
	id      uint64
	pending *publish.Pending
	err     error
	cancel  context.CancelFunc
	ctx     context.Context
	cost    int64 // held in the stream's budget until answered
}

// PublishStream implements EventService.PublishStream: requests are handed to Kafka as
// they arrive (many in flight), and answered in the order they came. The requests not
// yet answered are bounded in bytes, per stream and over all streams (Limiter): at the
// bound the stream stops reading until answers free room.
func (s *EventService) PublishStream(stream eventgwv1.EventService_PublishStreamServer) error {
	ctx := stream.Context()
	queue := make(chan inflight, s.maxInFlight)
	sendErr := make(chan error, 1)
	share := s.limits.stream()
	go func() {
		var err error
		for f := range queue {
			if err != nil {
				f.cancel()
				if f.pending != nil {
					f.pending.Wait(f.ctx) // settles its breaker permit; the outcome goes nowhere
				}
				share.release(f.cost)
				continue // drain: the stream is broken
			}
			resp := &eventgwv1.PublishStreamResponse{RequestId: f.id}
			if f.err != nil {
				code, msg := statusCode(f.err)
				resp.Error = &eventgwv1.EventError{Code: int32(code), Message: msg, Index: -1}
			} else {
				resp.Results = toResults(f.pending.Wait(f.ctx))
			}
			f.cancel()
			err = stream.Send(resp)
			share.release(f.cost)
		}
		sendErr <- err
	}()
	var recvErr error
	var prev *publish.Pending // the last request handed on: queueing keeps the stream's order
	for {
		if err := share.waitRoom(ctx); err != nil {
			recvErr = status.FromContextError(err).Err()
			break
		}
		req, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				recvErr = err
			}
			break
		}
		rctx, cancel := context.WithTimeout(ctx, s.timeout)
		f := inflight{id: req.GetRequestId(), cancel: cancel, ctx: rctx}
		cost := requestCost(req)
		evs, err := toEvents(req.GetEvents())
		if err == nil && !share.admit(cost) {
			err = errStreamsBudget
		} else if err == nil {
			f.cost = cost
		}
		if err == nil {
			f.pending, err = s.pub.StartAfter(rctx, evs, prev)
		}
		if f.pending != nil {
			prev = f.pending
		}
		f.err = err
		select {
		case queue <- f:
		case <-ctx.Done():
			cancel()
			share.release(f.cost)
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(queue)
	serr := <-sendErr
	switch {
	case serr != nil:
		return serr
	case recvErr != nil:
		if status.Code(recvErr) == codes.Canceled || errors.Is(recvErr, context.Canceled) {
			return status.Error(codes.Canceled, "client went away")
		}
		return recvErr
	}
	return nil
}

// RegisterSchema implements EventService.RegisterSchema.
func (s *EventService) RegisterSchema(ctx context.Context, req *eventgwv1.RegisterSchemaRequest) (*eventgwv1.RegisterSchemaResponse, error) {
	if err := validate.EventType("event_type", req.GetEventType()); err != nil {
		return nil, rewriteError(err)
	}
	if req.GetSchema() == "" {
		return nil, rewriteError(validate.Errorf("schema", "is required (an Avro record schema as JSON text)"))
	}
	if len(req.GetSchema()) > 256<<10 {
		return nil, rewriteError(validate.Errorf("schema", "is longer than 256 KiB"))
	}
	sc, err := s.schemas.Register(ctx, req.GetEventType(), s.router.Topic(req.GetEventType()), req.GetSchema())
	if err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.RegisterSchemaResponse{Schema: toSchemaInfo(sc)}, nil
}

// ListSchemas implements EventService.ListSchemas.
func (s *EventService) ListSchemas(_ context.Context, req *eventgwv1.ListSchemasRequest) (*eventgwv1.ListSchemasResponse, error) {
	if err := validate.Text("event_type_prefix", req.GetEventTypePrefix(), 100); err != nil {
		return nil, rewriteError(err)
	}
	list := s.schemas.List(req.GetEventTypePrefix())
	out := &eventgwv1.ListSchemasResponse{Schemas: make([]*eventgwv1.SchemaInfo, len(list))}
	for i, sc := range list {
		out.Schemas[i] = toSchemaInfo(sc)
	}
	return out, nil
}

func toSchemaInfo(sc *schema.Schema) *eventgwv1.SchemaInfo {
	return &eventgwv1.SchemaInfo{
		EventType: sc.EventType, Subject: sc.Subject, SchemaId: int32(sc.ID), Version: int32(sc.Version),
		Schema: sc.Text, RegisteredAt: timestamppb.New(sc.RegisteredAt),
	}
}
