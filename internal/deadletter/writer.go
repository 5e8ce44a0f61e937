package deadletter

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// Headers the writer adds to a dead-lettered record (after the original record's own).
const (
	HeaderOriginalTopic     = "dlq_original_topic"
	HeaderOriginalPartition = "dlq_original_partition"
	HeaderOriginalOffset    = "dlq_original_offset"
	HeaderErrorType         = "dlq_error_type"
	HeaderErrorMessage      = "dlq_error_message"
	// HeaderAttempts is the deliveries the event had: RetryCount + 1.
	HeaderAttempts     = "dlq_attempts"
	HeaderSubscription = "dlq_subscription"
	// HeaderFailedAt is RFC 3339 with nanoseconds, UTC.
	HeaderFailedAt = "dlq_failed_at"
	// HeaderFailedEventID is the failed_events row's id.
	HeaderFailedEventID = "dlq_failed_event_id"
	// HeaderRetryOf marks a record published again by RetryFailedEvents: the id of the
	// failed_events row it was published from.
	HeaderRetryOf = "dlq_retry_of"
	// MetadataPrefix prefixes the header of each Letter.Metadata key.
	MetadataPrefix = "dlq_"
)

// Limits of a dead letter's fields (the failed_events columns' sizes, and what the
// gRPC edge accepts).
const (
	// MaxErrorType is error_type's size (VARCHAR(255)); longer ones are truncated.
	MaxErrorType = 255
	// MaxErrorMessage bounds error_message (and its header); longer ones are truncated.
	MaxErrorMessage = 4096
	// MaxEventType is event_type's size (VARCHAR(100)); longer ones are truncated.
	MaxEventType = 100
	// MaxSubscription is subscription's size (VARCHAR(255)).
	MaxSubscription = 255
	// MaxMetadata, MaxMetadataKey and MaxMetadataValue bound Letter.Metadata.
	MaxMetadata      = 32
	MaxMetadataKey   = 20
	MaxMetadataValue = 1024
)

// UnknownType is the event_type (and error_type) of a letter that has none, and the
// domain of one whose domain cannot be told.
const UnknownType = "unknown"

// rowIDSpace is the UUIDv5 namespace of the ids of consumed records' rows.
var rowIDSpace = uuid.MustParse("8b0e6f8e-4a43-5d7c-9a57-4f3c0b6f2d11")

// Config is what a Writer uses.
type Config struct {
	Producer *kafka.Producer
	Topics   *kafka.Topics
	Router   *kafka.Router
	Failed   *store.FailedEvents
	Metrics  *metrics.Metrics
	// Service is the service label of dlq_messages_total.
	Service string
	Log     *zap.Logger
}

// Writer dead-letters events: one record to <prefix>.dlq.<domain>, then one
// failed_events row. It is safe for concurrent use.
type Writer struct {
	cfg Config
	// topicPrefix is "<prefix>.", the start of the topics events are routed to.
	topicPrefix string
}

// New builds a Writer.
func New(cfg Config) *Writer {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Writer{cfg: cfg, topicPrefix: strings.TrimSuffix(cfg.Router.DLQTopic(""), "dlq.")}
}

// Letter is one event to dead-letter.
type Letter struct {
	Subscription string
	// Topic is the original topic; "" when the event was not consumed from Kafka.
	Topic string
	// Partition and Offset are -1 when there are none.
	Partition int32
	Offset    int64
	// Key and Value are the original record's (nil: null).
	Key, Value []byte
	// Headers are the original record's headers (the CloudEvents envelope).
	Headers []sarama.RecordHeader
	// TenantID, EventID and EventType come from the envelope; they may be empty or
	// malformed for foreign records.
	TenantID, EventID, EventType string
	// PayloadJSON is the payload decoded to a JSON object for the row; nil when it is
	// not JSON (then the row holds {"base64": "<value>"}).
	PayloadJSON []byte
	// ErrorType and ErrorMessage say why the event failed.
	ErrorType, ErrorMessage string
	// RetryCount is the redeliveries before the event was dead-lettered.
	RetryCount int32
	// Metadata are extra dlq_<key> headers (keys: see MetadataKeyReserved).
	Metadata map[string]string
}

// Result is the failed_events row's id and where Kafka stored the dead letter.
type Result struct {
	ID        string
	DLQTopic  string
	Partition int32
	Offset    int64
}

// MetadataKeyReserved reports whether metadata key k would be written as one of the
// writer's own headers (dlq_subscription, dlq_attempts): the writer's header wins.
func MetadataKeyReserved(k string) bool {
	_, ok := fixedHeaders[MetadataPrefix+k]
	return ok
}

var fixedHeaders = map[string]struct{}{
	HeaderOriginalTopic: {}, HeaderOriginalPartition: {}, HeaderOriginalOffset: {}, HeaderErrorType: {},
	HeaderErrorMessage: {}, HeaderAttempts: {}, HeaderSubscription: {}, HeaderFailedAt: {}, HeaderFailedEventID: {},
}

// Write dead-letters l: it produces one record to the DLQ topic of l's domain (l's key,
// value and headers, plus the dlq_* headers) and waits for Kafka's acknowledgement
// (acks=all), then stores the failed_events row. Only then may a subscription's offset
// pass the event.
//
// The row id of a consumed record (Partition >= 0) is a UUIDv5 of its subscription,
// topic, partition and offset: dead-lettering it again after a crash or a failed
// insert writes the record to the DLQ topic again (at least once) but keeps one row.
// Other letters get a new UUIDv7.
//
// Columns that must be UUIDs get a stand-in when the envelope's value is not one:
// tenant_id the nil UUID (00000000-0000-0000-0000-000000000000; such rows are listed
// for that tenant id only), event_id the row id. A missing event type or error type is
// "unknown"; text too long for its column is truncated.
//
// Kafka failures are *kafka.UnavailableError. Nothing of the event's data is logged.
func (w *Writer) Write(ctx context.Context, l *Letter) (Result, error) {
	domain := w.domain(l)
	dlq := w.cfg.Router.DLQTopic(domain)
	id := rowID(l)
	now := time.Now().UTC()
	errType := clean(l.ErrorType, MaxErrorType)
	if errType == "" {
		errType = UnknownType
	}
	errMsg := clean(l.ErrorMessage, MaxErrorMessage)
	retryCount := max(l.RetryCount, 0)

	if err := w.cfg.Topics.Ensure(ctx, dlq, domain); err != nil {
		return Result{}, &kafka.UnavailableError{Err: fmt.Errorf("dead-letter topic %s: %w", dlq, err)}
	}
	added := []sarama.RecordHeader{
		header(HeaderOriginalTopic, l.Topic),
		header(HeaderOriginalPartition, strconv.FormatInt(int64(l.Partition), 10)),
		header(HeaderOriginalOffset, strconv.FormatInt(l.Offset, 10)),
		header(HeaderErrorType, errType),
		header(HeaderErrorMessage, errMsg),
		header(HeaderAttempts, strconv.FormatInt(int64(retryCount)+1, 10)),
		header(HeaderSubscription, l.Subscription),
		header(HeaderFailedAt, now.Format(time.RFC3339Nano)),
		header(HeaderFailedEventID, id),
	}
	keys := make([]string, 0, len(l.Metadata))
	for k := range l.Metadata {
		if !MetadataKeyReserved(k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		added = append(added, header(MetadataPrefix+k, l.Metadata[k]))
	}
	msg := &sarama.ProducerMessage{Topic: dlq, Headers: withHeaders(l.Headers, added)}
	if l.Key != nil {
		msg.Key = sarama.ByteEncoder(l.Key)
	}
	if l.Value != nil {
		msg.Value = sarama.ByteEncoder(l.Value)
	}
	b := kafka.NewBatch(1)
	w.cfg.Producer.Send(ctx, b, []*sarama.ProducerMessage{msg})
	b.Wait(ctx)
	r, _ := b.Result(0)
	if r.Err != nil {
		return Result{}, &kafka.UnavailableError{Err: fmt.Errorf("dead-letter failed event %s to %s: %w", id, dlq, r.Err)}
	}
	// Counted once Kafka has it: the metric counts the DLQ topic's records (a hand-off
	// retried after a failed insert writes two records and one row).
	w.cfg.Metrics.DLQMessages.WithLabelValues(w.cfg.Service, dlq).Inc()

	row := &store.FailedEvent{
		ID:           id,
		TenantID:     uuidOr(l.TenantID, uuid.Nil.String()),
		EventID:      uuidOr(l.EventID, id),
		EventType:    clean(l.EventType, MaxEventType),
		Payload:      rowPayload(l),
		ErrorType:    errType,
		ErrorMessage: errMsg,
		RetryCount:   retryCount,
		FailedAt:     now,
		Subscription: clean(l.Subscription, MaxSubscription),
		Topic:        l.Topic,
		Partition:    l.Partition,
		Offset:       l.Offset,
		DLQTopic:     dlq,
		RecordKey:    l.Key,
		RecordValue:  l.Value,
	}
	if row.EventType == "" {
		row.EventType = UnknownType
	}
	row.RecordHeaders = make([]store.RecordHeader, len(l.Headers))
	for i, h := range l.Headers {
		row.RecordHeaders[i] = store.RecordHeader{Key: string(h.Key), Value: h.Value}
	}
	inserted, err := w.cfg.Failed.Insert(ctx, row)
	if err != nil {
		return Result{}, fmt.Errorf("dead-letter: the record is in %s but its failed_events row is not: %w", dlq, err)
	}
	w.cfg.Log.Info("event dead-lettered",
		zap.String("failed_event_id", id), zap.String("event_id", row.EventID), zap.String("event_type", logType(row.EventType)),
		zap.String("topic", l.Topic), zap.Int32("partition", l.Partition), zap.Int64("offset", l.Offset),
		zap.String("dlq_topic", dlq), zap.Int32("dlq_partition", r.Partition), zap.Int64("dlq_offset", r.Offset),
		zap.Bool("row_existed", !inserted))
	return Result{ID: id, DLQTopic: dlq, Partition: r.Partition, Offset: r.Offset}, nil
}

// domain is the dead-letter domain of l: that of its original topic when it is
// "<prefix>.<domain>.events", else its event type's, else "unknown".
func (w *Writer) domain(l *Letter) string {
	const suffix = ".events"
	t := l.Topic
	if len(t) > len(w.topicPrefix)+len(suffix) && strings.HasPrefix(t, w.topicPrefix) && strings.HasSuffix(t, suffix) {
		if d := t[len(w.topicPrefix) : len(t)-len(suffix)]; kafka.IsDomain(d) {
			return d
		}
	}
	if d := kafka.Domain(l.EventType); kafka.IsDomain(d) {
		return d
	}
	return UnknownType
}

// rowID is the failed_events id of l (see Write).
func rowID(l *Letter) string {
	if l.Partition >= 0 {
		name := l.Subscription + "/" + l.Topic + "/" + strconv.FormatInt(int64(l.Partition), 10) + "/" + strconv.FormatInt(l.Offset, 10)
		return uuid.NewSHA1(rowIDSpace, []byte(name)).String()
	}
	return uuid.Must(uuid.NewV7()).String()
}

func header(k, v string) sarama.RecordHeader {
	return sarama.RecordHeader{Key: []byte(k), Value: []byte(v)}
}

// withHeaders is orig followed by added; an original header with the key of an added
// one (a record dead-lettered before) is left out, so that each dlq_* header is there
// once and describes this failure.
func withHeaders(orig, added []sarama.RecordHeader) []sarama.RecordHeader {
	out := make([]sarama.RecordHeader, 0, len(orig)+len(added))
	for _, h := range orig {
		if !slices.ContainsFunc(added, func(a sarama.RecordHeader) bool { return bytes.Equal(a.Key, h.Key) }) {
			out = append(out, h)
		}
	}
	return append(out, added...)
}

// uuidOr is s in canonical form when it is a UUID, else def.
func uuidOr(s, def string) string {
	if validate.UUID("", s) != nil {
		return def
	}
	return uuid.MustParse(s).String()
}

// rowPayload is event_payload: the payload's JSON object, or {"base64": value} when
// there is none or PostgreSQL's jsonb could not hold it (invalid UTF-8, \u0000).
func rowPayload(l *Letter) []byte {
	p := l.PayloadJSON
	if p != nil && utf8.Valid(p) && !bytes.Contains(p, []byte(`\u0000`)) && event.IsJSONObject(p) {
		return p
	}
	b, _ := json.Marshal(map[string]string{"base64": base64.StdEncoding.EncodeToString(l.Value)})
	return b
}

// clean makes s storable as PostgreSQL text of at most n characters: valid UTF-8,
// without NUL bytes, truncated.
func clean(s string, n int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if len(s) <= n {
		return s
	}
	i := 0
	for count := 0; i < len(s) && count < n; count++ {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return s[:i]
}

// logType keeps malformed event types (foreign records) out of the log.
func logType(t string) string {
	if t == UnknownType || validate.IsEventType(t) {
		return t
	}
	return "invalid"
}
