package subscribe

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"github.com/valyala/fastjson"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/schema"
)

// Decoder decodes Confluent-framed Avro values back into JSON (schema.Registry).
type Decoder interface {
	DecodeJSON(ctx context.Context, value []byte) ([]byte, error)
}

// headerValue returns the value of header key, or "".
func headerValue(hs []*sarama.RecordHeader, key string) string {
	for _, h := range hs {
		if string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// isAvro reports whether a record's value is Avro (by its content type, or a schema
// reference, and the wire-format header).
func isAvro(rec *sarama.ConsumerMessage) bool {
	if !schema.IsWireFormat(rec.Value) {
		return false
	}
	for _, h := range rec.Headers {
		switch string(h.Key) {
		case event.HeaderContentType:
			return string(h.Value) == event.ContentTypeAvro
		case event.HeaderDataSchema:
			return true
		}
	}
	return false
}

// payloadJSON is a record's payload as JSON: Avro decoded, JSON as it is. A value
// that is neither is a *schema.UndecodableError (permanent); an unreachable registry
// is schema.ErrUnavailable (transient).
func payloadJSON(ctx context.Context, dec Decoder, rec *sarama.ConsumerMessage) ([]byte, error) {
	if isAvro(rec) {
		return dec.DecodeJSON(ctx, rec.Value)
	}
	if !isJSONObject(rec.Value) {
		return nil, errNotJSON
	}
	return rec.Value, nil
}

// isJSONObject reports whether a consumed value is a JSON object. Records from other
// producers are judged by JSON's syntax alone, not by the limits the gateway's writers
// enforce (event.IsJSONObject): a payload_as_json stream can take any JSON object, and
// a Struct stream dead-letters only what a Struct cannot hold.
func isJSONObject(b []byte) bool {
	i := 0
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i < len(b) && b[i] == '{' && fastjson.ValidateBytes(b) == nil
}

// protoString is b as a protobuf string: a foreign record's key or header may hold
// bytes that are not UTF-8, which a Delivery could not be marshalled with; they become
// U+FFFD.
func protoString(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

var errNotJSON = errors.New("the value is neither a JSON object nor Avro in Confluent wire format")

// isPermanent reports a decoding failure that no retry will fix.
func isPermanent(err error) bool {
	var ue *schema.UndecodableError
	return errors.Is(err, errNotJSON) || errors.As(err, &ue)
}

// toDelivery builds the Delivery of rec. Payload errors are returned as they are.
func toDelivery(ctx context.Context, dec Decoder, rec *sarama.ConsumerMessage, id string, attempt int32, asJSON bool) (*eventgwv1.Delivery, error) {
	d := &eventgwv1.Delivery{
		DeliveryId: id, Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Attempt: attempt,
		Key: protoString(rec.Key),
	}
	for _, h := range rec.Headers {
		k := protoString(h.Key)
		name, ok := strings.CutPrefix(k, event.ExtensionPrefix)
		if !ok {
			continue
		}
		v := protoString(h.Value)
		switch k {
		case event.HeaderID:
			d.EventId = v
		case event.HeaderType:
			d.EventType = v
		case event.HeaderTenantID:
			d.TenantId = v
		case event.HeaderSource:
			d.SourceService = v
		case event.HeaderCorrelationID:
			d.CorrelationId = v
		case event.HeaderCausationID:
			d.CausationId = v
		case event.HeaderUserID:
			d.SourceUserId = v
		case event.HeaderSubject:
			d.Subject = v
		case event.HeaderTime:
			if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
				d.Time = timestamppb.New(t)
			}
		case event.HeaderSpecVersion, event.HeaderDataSchema:
		default:
			if d.Metadata == nil {
				d.Metadata = make(map[string]string, 4)
			}
			d.Metadata[name] = v
		}
	}
	if d.Time == nil && !rec.Timestamp.IsZero() {
		d.Time = timestamppb.New(rec.Timestamp)
	}
	js, err := payloadJSON(ctx, dec, rec)
	if err != nil {
		return nil, err
	}
	if asJSON {
		d.PayloadJson = js
		return d, nil
	}
	st := &structpb.Struct{}
	if err := protojson.Unmarshal(js, st); err != nil {
		// Valid JSON that a Struct cannot hold (such as numbers beyond float64).
		return nil, errNotJSON
	}
	d.Payload = st
	return d, nil
}
