package subscribe

import (
	"context"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"google.golang.org/protobuf/proto"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/schema"
)

// noAvro stands in for the registry: every Avro value is undecodable.
type noAvro struct{}

func (noAvro) DecodeJSON(context.Context, []byte) ([]byte, error) {
	return nil, &schema.UndecodableError{SchemaID: 1}
}

func consumed(hs []sarama.RecordHeader, key, value []byte) *sarama.ConsumerMessage {
	rec := &sarama.ConsumerMessage{Topic: "healthtech.patient.events", Key: key, Value: value, Timestamp: time.Unix(1, 0)}
	for i := range hs {
		rec.Headers = append(rec.Headers, &hs[i])
	}
	return rec
}

// FuzzCloudEventsHeaders fuzzes the CloudEvents envelope both ways. An event Normalize
// accepts is published with headers that a delivery reads back field for field, and
// the delivery can be sent (proto.Marshal). Any record from another producer, whatever
// its key, headers and value, is either delivered (and can be sent) or refused with
// an error the stream dead-letters; never a panic, never a delivery that cannot be
// marshalled.
func FuzzCloudEventsHeaders(f *testing.F) {
	f.Add("patient.created", "6F1C2A9E-8D1B-4A4E-9F0E-2B9C1D3E4F5A", "user-1", "ward", "a1", int64(1700000000), []byte("ce_x"), []byte("\xff"), []byte(`{"a":1}`))
	f.Add("a.b", "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a", "é", "x", "", int64(253402300799), []byte("ce_time"), []byte("82269-01-01T00:00:00Z"), []byte{0, 0, 0, 0, 1, 2})
	f.Add("x", "", "\x00", "", "", int64(-1), []byte("\xffce_"), []byte(""), []byte(`{"s":"\xff"}`))
	f.Fuzz(func(t *testing.T, typ, tenant, user, mdKey, mdVal string, sec int64, hk, hv, value []byte) {
		ctx := context.Background()
		e := event.Event{Type: typ, TenantID: tenant, UserID: user, PayloadJSON: value, Metadata: map[string]string{mdKey: mdVal}}
		if sec != 0 {
			e.Time = time.Unix(sec, 0)
		}
		if e.Normalize("svc", event.Limits{MaxEventBytes: 1 << 20}, time.Unix(2, 0)) == nil {
			d, err := toDelivery(ctx, noAvro{}, consumed(e.Headers(""), []byte(e.Key()), e.PayloadJSON), "d", 1, false)
			if err != nil {
				t.Fatalf("a published event is not deliverable: %v", err)
			}
			if d.GetEventId() != e.ID || d.GetEventType() != e.Type || d.GetTenantId() != e.TenantID ||
				d.GetSourceService() != e.Source || d.GetSourceUserId() != e.UserID || d.GetCorrelationId() != e.CorrelationID ||
				!d.GetTime().AsTime().Equal(e.Time) || d.GetKey() != e.TenantID || d.GetMetadata()[mdKey] != mdVal || d.GetPayload() == nil {
				t.Fatalf("delivered %v, published %+v", d, e)
			}
			if _, err := proto.Marshal(d); err != nil {
				t.Fatalf("a delivery of a published event cannot be sent: %v", err)
			}
		}
		// A foreign record: the fuzzed header among a few envelope headers.
		hs := []sarama.RecordHeader{
			{Key: []byte(event.HeaderType), Value: []byte(typ)},
			{Key: []byte(event.HeaderTenantID), Value: []byte(tenant)},
			{Key: hk, Value: hv},
			{Key: []byte(event.HeaderContentType), Value: []byte(mdVal)},
		}
		for _, asJSON := range []bool{false, true} {
			d, err := toDelivery(ctx, noAvro{}, consumed(hs, hv, value), "d", 1, asJSON)
			if err != nil {
				if !isPermanent(err) {
					t.Fatalf("undecodable record answered %v, which is retried forever", err)
				}
				continue
			}
			if _, err := proto.Marshal(d); err != nil {
				t.Fatalf("a delivery of a foreign record cannot be sent: %v", err)
			}
		}
	})
}
