package deadletter_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/deadletter"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

func TestMain(m *testing.M) { testenv.MainNoLeaks(m) }

const tenant = "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a"

// env is a writer on a fresh database and a kfake cluster, built as the sidecar
// builds it.
type env struct {
	pool   *pgxpool.Pool
	kafka  *testenv.Kafka
	failed *store.FailedEvents
	w      *deadletter.Writer
	reg    *prometheus.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := testenv.NewKafka(t)
	pool, err := pgxpool.New(ctx, testenv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := store.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(k.Brokers, kafka.ProducerConfig("deadletter-test", kafka.MaxMessageBytes(1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	settings := kafka.DefaultTopicSettings()
	settings.Partitions = 3
	topics, err := kafka.NewTopics(client, settings, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	producer, err := kafka.NewProducer(client, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = producer.Close() })
	reg := prometheus.NewRegistry()
	failed := store.NewFailedEvents(pool)
	w := deadletter.New(deadletter.Config{
		Producer: producer, Topics: topics, Router: kafka.NewRouter("healthtech", nil), Failed: failed,
		Metrics: metrics.New(reg), Service: "test-svc", Log: zap.NewNop(),
	})
	return &env{pool: pool, kafka: k, failed: failed, w: w, reg: reg}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// envelope is a CloudEvents envelope as the gateway publishes it.
func envelope(id, typ, tenantID string) []sarama.RecordHeader {
	return []sarama.RecordHeader{
		{Key: []byte("ce_specversion"), Value: []byte("1.0")},
		{Key: []byte("ce_id"), Value: []byte(id)},
		{Key: []byte("ce_type"), Value: []byte(typ)},
		{Key: []byte("ce_source"), Value: []byte("prm-service")},
		{Key: []byte("ce_tenantid"), Value: []byte(tenantID)},
		{Key: []byte("content-type"), Value: []byte("application/json")},
	}
}

func consumed(eventID string) *deadletter.Letter {
	value := []byte(`{"patient_id":"p-1","first_name":"John"}`)
	return &deadletter.Letter{
		Subscription: "billing-projector",
		Topic:        "healthtech.patient.events", Partition: 2, Offset: 17,
		Key: []byte(tenant), Value: value,
		Headers:  envelope(eventID, "patient.created", tenant),
		TenantID: tenant, EventID: eventID, EventType: "patient.created",
		PayloadJSON: value,
		ErrorType:   "ValidationError", ErrorMessage: "first_name: too short\n  at handler.py:12",
		RetryCount: 2,
		Metadata:   map[string]string{"service": "prm-service", "subscription": "must not win"},
	}
}

func headerMap(t *testing.T, r *kgo.Record) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, h := range r.Headers {
		if _, dup := m[h.Key]; dup {
			t.Errorf("header %s appears twice", h.Key)
		}
		m[h.Key] = string(h.Value)
	}
	return m
}

// row reads a failed_events row with every column.
type row struct {
	TenantID, EventID, EventType, ErrorType, ErrorMessage string
	Payload                                               map[string]any
	RetryCount                                            int32
	FailedAt                                              time.Time
	Retried, Resolved                                     bool
	Subscription, Topic, DLQTopic                         string
	Partition                                             int32
	Offset                                                int64
	Key, Value                                            []byte
	Headers                                               []map[string]string
	RetriesPublished                                      int32
}

func readRow(t *testing.T, pool *pgxpool.Pool, id string) row {
	t.Helper()
	var r row
	var payload, headers []byte
	err := pool.QueryRow(ctxT(t), `SELECT tenant_id::text, event_id::text, event_type, event_payload, error_type,
		coalesce(error_message, ''), retry_count, failed_at, retried, resolved, subscription, topic, kafka_partition,
		kafka_offset, dlq_topic, record_key, record_value, record_headers, retries_published
		FROM failed_events WHERE id = $1`, id).Scan(&r.TenantID, &r.EventID, &r.EventType, &payload, &r.ErrorType,
		&r.ErrorMessage, &r.RetryCount, &r.FailedAt, &r.Retried, &r.Resolved, &r.Subscription, &r.Topic, &r.Partition,
		&r.Offset, &r.DLQTopic, &r.Key, &r.Value, &headers, &r.RetriesPublished)
	if err != nil {
		t.Fatalf("read row %s: %v", id, err)
	}
	if err := json.Unmarshal(payload, &r.Payload); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(headers, &r.Headers); err != nil {
		t.Fatal(err)
	}
	return r
}

func rowCount(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(ctxT(t), `SELECT count(*) FROM failed_events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// counter is the value of a counter with labels.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// A consumed record goes to healthtech.dlq.<domain of its topic> unchanged (key, value,
// envelope in order) with every dlq_* header, then to a row holding the guide's
// columns, where it was consumed and the record; dlq_messages_total counts it.
func TestWriteConsumedRecord(t *testing.T) {
	e := newEnv(t)
	eventID := uuid.NewString()
	l := consumed(eventID)
	before := time.Now()
	res, err := e.w.Write(ctxT(t), l)
	if err != nil {
		t.Fatal(err)
	}
	if res.DLQTopic != "healthtech.dlq.patient" || res.Partition < 0 || res.Offset < 0 {
		t.Fatalf("result %+v", res)
	}
	if _, err := uuid.Parse(res.ID); err != nil {
		t.Fatalf("row id %q: %v", res.ID, err)
	}

	recs := testenv.ConsumeAll(t, e.kafka.Brokers, "healthtech.dlq.patient")
	if len(recs) != 1 {
		t.Fatalf("%d records in the DLQ topic, want 1", len(recs))
	}
	r := recs[0]
	if string(r.Key) != tenant || string(r.Value) != string(l.Value) || r.Partition != res.Partition || r.Offset != res.Offset {
		t.Errorf("record key %q value %q at %d/%d, want the original at %d/%d", r.Key, r.Value, r.Partition, r.Offset, res.Partition, res.Offset)
	}
	for i, h := range l.Headers {
		if i >= len(r.Headers) || r.Headers[i].Key != string(h.Key) || string(r.Headers[i].Value) != string(h.Value) {
			t.Fatalf("header %d: the original envelope must come first and unchanged; got %v", i, r.Headers)
		}
	}
	hs := headerMap(t, r)
	failedAt, err := time.Parse(time.RFC3339Nano, hs["dlq_failed_at"])
	if err != nil || failedAt.Before(before.Add(-time.Second)) || failedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("dlq_failed_at %q: %v", hs["dlq_failed_at"], err)
	}
	want := map[string]string{
		"dlq_original_topic": "healthtech.patient.events", "dlq_original_partition": "2", "dlq_original_offset": "17",
		"dlq_error_type": "ValidationError", "dlq_error_message": l.ErrorMessage, "dlq_attempts": "3",
		"dlq_subscription": "billing-projector", "dlq_failed_event_id": res.ID, "dlq_service": "prm-service",
	}
	for k, v := range want {
		if hs[k] != v {
			t.Errorf("header %s = %q, want %q", k, hs[k], v)
		}
	}

	got := readRow(t, e.pool, res.ID)
	if got.TenantID != tenant || got.EventID != eventID || got.EventType != "patient.created" ||
		got.ErrorType != "ValidationError" || got.ErrorMessage != l.ErrorMessage || got.RetryCount != 2 ||
		got.Retried || got.Resolved || got.Subscription != "billing-projector" || got.Topic != "healthtech.patient.events" ||
		got.Partition != 2 || got.Offset != 17 || got.DLQTopic != "healthtech.dlq.patient" ||
		string(got.Key) != tenant || string(got.Value) != string(l.Value) || got.RetriesPublished != 0 {
		t.Errorf("row %+v", got)
	}
	if !reflect.DeepEqual(got.Payload, map[string]any{"patient_id": "p-1", "first_name": "John"}) {
		t.Errorf("event_payload %v", got.Payload)
	}
	if d := got.FailedAt.Sub(failedAt); d > time.Microsecond || d < -time.Microsecond {
		t.Errorf("failed_at %v, the header says %v", got.FailedAt, failedAt)
	}
	// record_headers: the original envelope only, in order, values base64.
	if len(got.Headers) != len(l.Headers) {
		t.Fatalf("record_headers %v", got.Headers)
	}
	for i, h := range l.Headers {
		if got.Headers[i]["k"] != string(h.Key) || got.Headers[i]["v"] != base64.StdEncoding.EncodeToString(h.Value) {
			t.Errorf("record_headers[%d] = %v, want %s", i, got.Headers[i], h.Key)
		}
	}
	if n := counter(t, e.reg, "dlq_messages_total", map[string]string{"service": "test-svc", "topic": "healthtech.dlq.patient"}); n != 1 {
		t.Errorf("dlq_messages_total = %v, want 1", n)
	}
}

// The hand-off of a consumed record retried (after a crash, or a failed insert) writes
// the record to the DLQ topic again but keeps one row, with the same id.
func TestWriteSameRecordTwiceKeepsOneRow(t *testing.T) {
	e := newEnv(t)
	l := consumed(uuid.NewString())
	r1, err := e.w.Write(ctxT(t), l)
	if err != nil {
		t.Fatal(err)
	}
	l2 := consumed(l.EventID)
	l2.ErrorMessage = "second attempt"
	r2, err := e.w.Write(ctxT(t), l2)
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID != r2.ID {
		t.Fatalf("row ids %s and %s for one consumed record", r1.ID, r2.ID)
	}
	if n := rowCount(t, e.pool); n != 1 {
		t.Fatalf("%d rows, want 1", n)
	}
	if got := readRow(t, e.pool, r1.ID); got.ErrorMessage != l.ErrorMessage {
		t.Errorf("the first row must stay as written: error_message %q", got.ErrorMessage)
	}
	recs := testenv.ConsumeAll(t, e.kafka.Brokers, "healthtech.dlq.patient")
	if len(recs) != 2 {
		t.Fatalf("%d DLQ records, want 2 (at least once)", len(recs))
	}
	for _, r := range recs {
		if id := headerMap(t, r)["dlq_failed_event_id"]; id != r1.ID {
			t.Errorf("dlq_failed_event_id %s, want %s", id, r1.ID)
		}
	}
	// Another offset of the same partition is another row.
	l3 := consumed(uuid.NewString())
	l3.Offset = 18
	r3, err := e.w.Write(ctxT(t), l3)
	if err != nil {
		t.Fatal(err)
	}
	if r3.ID == r1.ID || rowCount(t, e.pool) != 2 {
		t.Errorf("offset 18 got id %s (offset 17: %s), %d rows", r3.ID, r1.ID, rowCount(t, e.pool))
	}
}

// Foreign or incomplete letters still dead-letter: the DLQ domain falls back to the
// event type's then "unknown", and columns that must be UUIDs or bounded text get the
// documented stand-ins.
func TestWriteForeignLetters(t *testing.T) {
	e := newEnv(t)
	long := strings.Repeat("é", 300)
	cases := []struct {
		name         string
		l            deadletter.Letter
		dlq          string
		tenantID     string
		eventIDIsRow bool
		eventType    string
		errorType    string
		payload      map[string]any
	}{
		{
			name: "routed topic: domain of the event type",
			l: deadletter.Letter{Topic: "custom-appointments", Partition: 0, Offset: 1, Value: []byte(`{"a":1}`),
				TenantID: tenant, EventID: uuid.NewString(), EventType: "appointment.booked", PayloadJSON: []byte(`{"a":1}`),
				ErrorType: "Timeout"},
			dlq: "healthtech.dlq.appointment", tenantID: tenant, eventType: "appointment.booked", errorType: "Timeout",
			payload: map[string]any{"a": 1.0},
		},
		{
			name: "no envelope, not JSON",
			l: deadletter.Letter{Topic: "legacy-feed", Partition: 3, Offset: 9, Value: []byte{0, 1, 2, 0xff},
				TenantID: "acme", EventID: "42", EventType: "", ErrorType: ""},
			dlq: "healthtech.dlq.unknown", tenantID: uuid.Nil.String(), eventIDIsRow: true, eventType: "unknown", errorType: "unknown",
			payload: map[string]any{"base64": base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 0xff})},
		},
		{
			name: "malformed type and oversize text",
			l: deadletter.Letter{Topic: "healthtech.Bad Domain.events", Partition: 0, Offset: 2, Value: []byte(`{"x":"\u0000"}`),
				TenantID: strings.ToUpper(tenant), EventID: uuid.NewString(), EventType: "Foo Bar!" + long,
				PayloadJSON: []byte(`{"x":"\u0000"}`), ErrorType: long},
			dlq: "healthtech.dlq.unknown", tenantID: tenant, eventType: ("Foo Bar!" + long)[:len("Foo Bar!")+92*2],
			errorType: long[:255*2],
			payload:   map[string]any{"base64": base64.StdEncoding.EncodeToString([]byte(`{"x":"\u0000"}`))},
		},
		{
			name: "domain of the original topic wins over the event type's",
			l: deadletter.Letter{Topic: "healthtech.clinical.events", Partition: 1, Offset: 5, Value: []byte(`{}`),
				TenantID: tenant, EventID: uuid.NewString(), EventType: "patient.created", PayloadJSON: []byte(`{}`), ErrorType: "E"},
			dlq: "healthtech.dlq.clinical", tenantID: tenant, eventType: "patient.created", errorType: "E", payload: map[string]any{},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := e.w.Write(ctxT(t), &c.l)
			if err != nil {
				t.Fatal(err)
			}
			if res.DLQTopic != c.dlq {
				t.Errorf("DLQ topic %s, want %s", res.DLQTopic, c.dlq)
			}
			got := readRow(t, e.pool, res.ID)
			wantEventID := c.l.EventID
			if c.eventIDIsRow {
				wantEventID = res.ID
			}
			if got.TenantID != c.tenantID || got.EventID != wantEventID || got.EventType != c.eventType || got.ErrorType != c.errorType {
				t.Errorf("tenant %s event %s type %q error type %q; want %s %s %q %q", got.TenantID, got.EventID,
					got.EventType, got.ErrorType, c.tenantID, wantEventID, c.eventType, c.errorType)
			}
			if utf8.RuneCountInString(got.EventType) > 100 || utf8.RuneCountInString(got.ErrorType) > 255 {
				t.Errorf("text not truncated to its column")
			}
			if !reflect.DeepEqual(got.Payload, c.payload) {
				t.Errorf("event_payload %v, want %v", got.Payload, c.payload)
			}
			if string(got.Value) != string(c.l.Value) {
				t.Errorf("record_value %q, want %q", got.Value, c.l.Value)
			}
		})
	}
}

// Letters that were not consumed (SendToDeadLetter) get a new row each time.
func TestWriteUnconsumedLettersGetNewRows(t *testing.T) {
	e := newEnv(t)
	l := deadletter.Letter{Partition: -1, Offset: -1, Value: []byte(`{}`), TenantID: tenant, EventID: uuid.NewString(),
		EventType: "patient.created", PayloadJSON: []byte(`{}`), ErrorType: "E"}
	r1, err := e.w.Write(ctxT(t), &l)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.w.Write(ctxT(t), &l)
	if err != nil {
		t.Fatal(err)
	}
	if r1.ID == r2.ID || rowCount(t, e.pool) != 2 {
		t.Errorf("ids %s %s, %d rows: want two rows", r1.ID, r2.ID, rowCount(t, e.pool))
	}
	hs := headerMap(t, testenv.ConsumeAll(t, e.kafka.Brokers, "healthtech.dlq.patient")[0])
	if hs["dlq_original_topic"] != "" || hs["dlq_original_partition"] != "-1" || hs["dlq_original_offset"] != "-1" || hs["dlq_attempts"] != "1" {
		t.Errorf("headers %v", hs)
	}
}

// When Kafka does not acknowledge the dead letter, Write fails with a retriable
// *kafka.UnavailableError and stores no row: the subscription must not pass the event.
func TestWriteKafkaDownStoresNothing(t *testing.T) {
	e := newEnv(t)
	if e.kafka.Cluster == nil {
		t.Skip("needs kfake to inject the failure")
	}
	// Create the DLQ topic first: the outage is of produce requests only.
	if _, err := e.w.Write(ctxT(t), consumed(uuid.NewString())); err != nil {
		t.Fatal(err)
	}
	e.kafka.Cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		e.kafka.Cluster.KeepControl()
		return nil, errors.New("injected outage"), true
	})
	l := consumed(uuid.NewString())
	l.Offset = 99
	_, err := e.w.Write(ctxT(t), l)
	var ue *kafka.UnavailableError
	if !errors.As(err, &ue) || !ue.Retriable() {
		t.Fatalf("error %v, want a *kafka.UnavailableError", err)
	}
	if n := rowCount(t, e.pool); n != 1 {
		t.Errorf("%d rows after a failed dead letter, want only the first", n)
	}
	if strings.Contains(err.Error(), "John") {
		t.Errorf("the error quotes the payload: %v", err)
	}
}
