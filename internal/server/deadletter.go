package server

import (
	"context"
	"encoding/base64"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/deadletter"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// Limits of DeadLetterService requests.
const (
	defaultFailedPage = 100
	maxFailedPage     = 1000
	maxRetryIDs       = 1000
	// maxFilterType and maxFilterSubscription bound the filters (their columns' sizes).
	maxFilterType         = deadletter.MaxEventType
	maxFilterSubscription = deadletter.MaxSubscription
	// markTimeout bounds recording a retry once Kafka has the events, when the caller
	// has gone.
	markTimeout = 10 * time.Second
)

// DeadLetterService implements eventgw.v1.DeadLetterService.
type DeadLetterService struct {
	eventgwv1.UnimplementedDeadLetterServiceServer
	failed   *store.FailedEvents
	writer   *deadletter.Writer
	pub      *publish.Publisher
	producer *kafka.Producer
	topics   *kafka.Topics
	router   *kafka.Router
	metrics  *metrics.Metrics
	// service is the service label of dlq_retries_total.
	service string
}

// NewDeadLetterService builds the DeadLetterService handlers.
func NewDeadLetterService(failed *store.FailedEvents, w *deadletter.Writer, pub *publish.Publisher, producer *kafka.Producer,
	topics *kafka.Topics, router *kafka.Router, m *metrics.Metrics, service string,
) *DeadLetterService {
	return &DeadLetterService{
		failed: failed, writer: w, pub: pub, producer: producer, topics: topics, router: router, metrics: m, service: service,
	}
}

// ListFailedEvents implements DeadLetterService.ListFailedEvents.
func (s *DeadLetterService) ListFailedEvents(ctx context.Context, req *eventgwv1.ListFailedEventsRequest) (*eventgwv1.ListFailedEventsResponse, error) {
	flt, err := toFailedFilter(req)
	if err != nil {
		return nil, rewriteError(err)
	}
	rows, next, err := s.failed.List(ctx, flt)
	if err != nil {
		return nil, rewriteError(err)
	}
	resp := &eventgwv1.ListFailedEventsResponse{FailedEvents: make([]*eventgwv1.FailedEvent, len(rows)), NextPageToken: next}
	for i := range rows {
		resp.FailedEvents[i] = toFailedEvent(&rows[i])
	}
	return resp, nil
}

func toFailedFilter(req *eventgwv1.ListFailedEventsRequest) (store.FailedFilter, error) {
	flt := store.FailedFilter{
		EventType: req.GetEventType(), Subscription: req.GetSubscription(),
		IncludeResolved: req.GetIncludeResolved(), PageSize: int(req.GetPageSize()), PageToken: req.GetPageToken(),
	}
	var err error
	if flt.TenantID, err = validate.CanonicalUUIDOrNil("tenant_id", req.GetTenantId()); err != nil {
		return flt, err
	}
	if err := checkChars("event_type", flt.EventType, maxFilterType, false); err != nil {
		return flt, err
	}
	if err := checkChars("subscription", flt.Subscription, maxFilterSubscription, false); err != nil {
		return flt, err
	}
	switch {
	case flt.PageSize == 0:
		flt.PageSize = defaultFailedPage
	case flt.PageSize < 0 || flt.PageSize > maxFailedPage:
		return flt, validate.Errorf("page_size", "must be between 1 and %d (0: %d)", maxFailedPage, defaultFailedPage)
	}
	if flt.FailedAfter, err = validate.Timestamp("failed_after", req.GetFailedAfter()); err != nil {
		return flt, err
	}
	if flt.FailedBefore, err = validate.Timestamp("failed_before", req.GetFailedBefore()); err != nil {
		return flt, err
	}
	if !flt.FailedAfter.IsZero() && !flt.FailedBefore.IsZero() && !flt.FailedAfter.Before(flt.FailedBefore) {
		return flt, validate.Errorf("failed_before", "must be after failed_after")
	}
	return flt, nil
}

// toFailedEvent converts a row for an answer. It never fails: a payload a Struct cannot
// hold (stored before the write-time limits) is answered as {"base64": "<its JSON>"},
// the form of payloads that were not JSON, so one such row never fails its page.
func toFailedEvent(e *store.FailedEvent) *eventgwv1.FailedEvent {
	payload, ok := storedStruct(e.Payload)
	if !ok {
		payload = &structpb.Struct{Fields: map[string]*structpb.Value{
			"base64": structpb.NewStringValue(base64.StdEncoding.EncodeToString(e.Payload)),
		}}
	}
	return &eventgwv1.FailedEvent{
		Id: e.ID, TenantId: e.TenantID, EventId: e.EventID, EventType: e.EventType, EventPayload: payload,
		ErrorType: e.ErrorType, ErrorMessage: e.ErrorMessage, RetryCount: e.RetryCount,
		FailedAt: timestamppb.New(e.FailedAt), Retried: e.Retried, Resolved: e.Resolved,
		Subscription: e.Subscription, Topic: e.Topic, Partition: e.Partition, Offset: e.Offset,
		DlqTopic: e.DLQTopic, RetriesPublished: e.RetriesPublished,
	}
}

// RetryFailedEvents implements DeadLetterService.RetryFailedEvents: every id must be an
// unresolved failed event of the tenant, or nothing is published. Each stored record is
// published again to its original topic (SendToDeadLetter rows: their event type's)
// with its key, value and headers, plus dlq_retry_of = the row id; once Kafka has them
// the rows are marked retried. The rows are not locked while Kafka acknowledges: a row
// resolved meanwhile is still published and marked (the retry had been accepted), and
// two concurrent retries of a row both publish it (consumers deduplicate on the
// event id).
func (s *DeadLetterService) RetryFailedEvents(ctx context.Context, req *eventgwv1.RetryFailedEventsRequest) (*eventgwv1.RetryFailedEventsResponse, error) {
	tenant, ids, err := checkRetryIDs(req.GetTenantId(), req.GetIds())
	if err != nil {
		return nil, rewriteError(err)
	}
	rows, err := s.failed.Retryable(ctx, tenant, ids)
	if err != nil {
		return nil, rewriteError(err)
	}
	msgs := make([]*sarama.ProducerMessage, len(rows))
	for i := range rows {
		r := &rows[i]
		topic := r.Topic
		if topic == "" {
			if !validate.IsEventType(r.EventType) {
				return nil, rewriteError(validate.Errorf(idsField(i), "names a failed event with neither an original topic nor an event type to route it by"))
			}
			topic = s.router.Topic(r.EventType)
		}
		if !r.HasRecord {
			return nil, rewriteError(validate.Errorf(idsField(i), "names a failed event that holds no Kafka record to publish again"))
		}
		if i == 0 || topic != msgs[i-1].Topic {
			if err := s.topics.Ensure(ctx, topic, kafka.Domain(r.EventType)); err != nil {
				return nil, rewriteError(&kafka.UnavailableError{Err: err})
			}
		}
		msgs[i] = retryMessage(r, topic)
	}
	b := kafka.NewBatch(len(msgs))
	s.producer.Send(ctx, b, msgs)
	b.Wait(ctx)

	resp := &eventgwv1.RetryFailedEventsResponse{Results: make([]*eventgwv1.PublishResult, len(rows))}
	published := make([]string, 0, len(rows))
	var firstErr error
	for i := range rows {
		res, _ := b.Result(i)
		if res.Err != nil {
			if firstErr == nil {
				firstErr = res.Err
			}
			continue
		}
		published = append(published, rows[i].ID)
		s.metrics.DLQRetries.WithLabelValues(s.service, msgs[i].Topic).Inc()
		resp.Results[i] = &eventgwv1.PublishResult{EventId: rows[i].EventID, Topic: msgs[i].Topic, Partition: res.Partition, Offset: res.Offset}
	}
	// What Kafka has is recorded even when the caller has gone meanwhile.
	if len(published) > 0 {
		mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), markTimeout)
		err := s.failed.MarkRetried(mctx, tenant, published)
		cancel()
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		// The published ones are marked; a retry of the call publishes them again
		// (consumers deduplicate on the event id).
		return nil, rewriteError(firstErr)
	}
	resp.Retried = int32(len(published))
	return resp, nil
}

func idsField(i int) string { return "ids[" + strconv.Itoa(i) + "]" }

// checkRetryIDs answers the tenant and the ids in canonical form.
func checkRetryIDs(tenant string, ids []string) (string, []string, error) {
	tenant, err := validate.CanonicalUUIDOrNil("tenant_id", tenant)
	if err != nil {
		return "", nil, err
	}
	if len(ids) == 0 {
		return "", nil, validate.Errorf("ids", "is empty: name at least one failed event")
	}
	if len(ids) > maxRetryIDs {
		return "", nil, validate.Errorf("ids", "has %d ids, over the limit of %d", len(ids), maxRetryIDs)
	}
	canon := make([]string, len(ids))
	seen := make(map[string]int, len(ids))
	for i, id := range ids {
		if canon[i], err = validate.CanonicalUUID(idsField(i), id); err != nil {
			return "", nil, err
		}
		if j, dup := seen[canon[i]]; dup {
			return "", nil, validate.Errorf(idsField(i), "repeats ids[%d]", j)
		}
		seen[canon[i]] = i
	}
	return tenant, canon, nil
}

// retryMessage is r's stored record for topic, with dlq_retry_of naming r (in place of
// the header of an earlier retry).
func retryMessage(r *store.FailedEvent, topic string) *sarama.ProducerMessage {
	hs := make([]sarama.RecordHeader, 0, len(r.RecordHeaders)+1)
	for _, h := range r.RecordHeaders {
		if h.Key != deadletter.HeaderRetryOf {
			hs = append(hs, sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value})
		}
	}
	hs = append(hs, sarama.RecordHeader{Key: []byte(deadletter.HeaderRetryOf), Value: []byte(r.ID)})
	m := &sarama.ProducerMessage{Topic: topic, Headers: hs}
	if r.RecordKey != nil {
		m.Key = sarama.ByteEncoder(r.RecordKey)
	}
	if r.RecordValue != nil {
		m.Value = sarama.ByteEncoder(r.RecordValue)
	}
	return m
}

// ResolveFailedEvent implements DeadLetterService.ResolveFailedEvent.
func (s *DeadLetterService) ResolveFailedEvent(ctx context.Context, req *eventgwv1.ResolveFailedEventRequest) (*eventgwv1.ResolveFailedEventResponse, error) {
	tenant, err := validate.CanonicalUUIDOrNil("tenant_id", req.GetTenantId())
	if err != nil {
		return nil, rewriteError(err)
	}
	id, err := validate.CanonicalUUID("id", req.GetId())
	if err != nil {
		return nil, rewriteError(err)
	}
	if err := s.failed.Resolve(ctx, tenant, id); err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.ResolveFailedEventResponse{}, nil
}

// SendToDeadLetter implements DeadLetterService.SendToDeadLetter (the guide's
// send_to_dlq): the event is checked and encoded as Publish would, then dead-lettered
// (its domain's DLQ topic and a failed_events row) without being published.
func (s *DeadLetterService) SendToDeadLetter(ctx context.Context, req *eventgwv1.SendToDeadLetterRequest) (*eventgwv1.SendToDeadLetterResponse, error) {
	if err := checkSendToDeadLetter(req); err != nil {
		return nil, rewriteError(err)
	}
	var ev event.Event
	toEvent(req.GetEvent(), &ev)
	msg, err := s.pub.Encode(&ev, time.Now())
	if err != nil {
		return nil, rewriteError(validate.Prefix("event", err))
	}
	payload := ev.PayloadJSON
	if payload == nil {
		if payload, err = event.AppendStructJSON(make([]byte, 0, 256), ev.Payload); err != nil {
			return nil, rewriteError(validate.Prefix("event.payload", err))
		}
	}
	l := &deadletter.Letter{
		Partition: -1, Offset: -1, Headers: msg.Headers,
		TenantID: ev.TenantID, EventID: ev.ID, EventType: ev.Type, PayloadJSON: payload,
		ErrorType: req.GetErrorType(), ErrorMessage: req.GetErrorMessage(), RetryCount: req.GetRetryCount(),
		Metadata: req.GetMetadata(),
	}
	if l.Key, err = encoded(msg.Key); err != nil {
		return nil, rewriteError(err)
	}
	if l.Value, err = encoded(msg.Value); err != nil {
		return nil, rewriteError(err)
	}
	res, err := s.writer.Write(ctx, l)
	if err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.SendToDeadLetterResponse{Id: res.ID, DlqTopic: res.DLQTopic, Partition: res.Partition, Offset: res.Offset}, nil
}

func encoded(e sarama.Encoder) ([]byte, error) {
	if e == nil {
		return nil, nil
	}
	return e.Encode()
}

func checkSendToDeadLetter(req *eventgwv1.SendToDeadLetterRequest) error {
	if req.GetEvent() == nil {
		return validate.Errorf("event", "is required")
	}
	if req.GetErrorType() == "" {
		return validate.Errorf("error_type", "is required (such as the exception's class name)")
	}
	if err := checkChars("error_type", req.GetErrorType(), deadletter.MaxErrorType, false); err != nil {
		return err
	}
	if err := checkChars("error_message", req.GetErrorMessage(), deadletter.MaxErrorMessage, true); err != nil {
		return err
	}
	if req.GetRetryCount() < 0 {
		return validate.Errorf("retry_count", "must not be negative")
	}
	md := req.GetMetadata()
	if len(md) > deadletter.MaxMetadata {
		return validate.Errorf("metadata", "has %d entries, over the limit of %d", len(md), deadletter.MaxMetadata)
	}
	for k, v := range md {
		if !isMetadataKey(k) {
			return validate.Errorf("metadata", "keys must be 1-%d lowercase letters or digits (they become dlq_<key> headers)", deadletter.MaxMetadataKey)
		}
		if deadletter.MetadataKeyReserved(k) {
			return validate.Errorf("metadata", "key %q would replace the gateway's own dlq_%s header", k, k)
		}
		if err := checkChars("metadata", v, deadletter.MaxMetadataValue, false); err != nil {
			return validate.Errorf("metadata", "a value is longer than %d characters or holds characters it may not", deadletter.MaxMetadataValue)
		}
	}
	return nil
}

func isMetadataKey(k string) bool {
	if k == "" || len(k) > deadletter.MaxMetadataKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// checkChars checks text of at most max characters without control characters (but
// tabs and line breaks when multiline: error messages hold stack traces).
func checkChars(field, s string, max int, multiline bool) error {
	if len(s) > max && utf8.RuneCountInString(s) > max {
		return validate.Errorf(field, "is longer than %d characters", max)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 && !(multiline && (c == '\n' || c == '\r' || c == '\t')) || c == 0x7f {
			return validate.Errorf(field, "must not contain control characters")
		}
	}
	return nil
}
