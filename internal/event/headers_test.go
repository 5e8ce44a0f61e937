package event

import (
	"reflect"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// AppendHeaders into shared arrays (a request's arena) gives each event the headers
// Headers gives it, also when the room runs out part way, and later events never
// overwrite earlier ones.
func TestAppendHeadersSharesArraysSafely(t *testing.T) {
	evs := []Event{
		{ID: "0190a1b2-0000-7000-8000-000000000001", Type: "clinical.note_added", Source: "a", TenantID: "t1", CorrelationID: "c1", Time: time.Unix(1, 0)},
		{ID: "0190a1b2-0000-7000-8000-000000000002", Type: "clinical.note_added", Source: "bb", TenantID: "t2", CorrelationID: "c2", Time: time.Unix(2, 0),
			Metadata: map[string]string{"region": "eu", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
		{ID: "0190a1b2-0000-7000-8000-000000000003", Type: "billing.paid", Source: "ccc", TenantID: "t3", CorrelationID: "c3", Subject: "agg-1", Time: time.Unix(3, 0),
			Extra: []Header{{Key: "ce_aggregatetype", Value: "Invoice"}}},
	}
	for _, room := range []struct{ hdrs, buf int }{{100, 4096}, {12, 200}, {0, 0}} {
		hdrs := make([]sarama.RecordHeader, 0, room.hdrs)
		buf := make([]byte, 0, room.buf)
		got := make([][]sarama.RecordHeader, len(evs))
		for i := range evs {
			var hs []sarama.RecordHeader
			hs, buf = evs[i].AppendHeaders(hdrs[len(hdrs):len(hdrs):cap(hdrs)], buf, "")
			got[i] = hs
			if len(hdrs)+len(hs) <= cap(hdrs) && len(hs) > 0 && &hdrs[:len(hdrs)+1][len(hdrs)] == &hs[0] {
				hdrs = hdrs[:len(hdrs)+len(hs)]
			}
		}
		for i := range evs {
			if want := evs[i].Headers(""); !sameHeaders(got[i], want) {
				t.Errorf("room %v, event %d: headers %q, want %q", room, i, got[i], want)
			}
		}
	}
}

// sameHeaders compares headers ignoring the order of the metadata ones (map order).
func sameHeaders(a, b []sarama.RecordHeader) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]string{}
	for _, h := range a {
		m[string(h.Key)] = string(h.Value)
	}
	for _, h := range b {
		if v, ok := m[string(h.Key)]; !ok || v != string(h.Value) {
			return false
		}
	}
	return reflect.DeepEqual(len(m), len(a))
}
