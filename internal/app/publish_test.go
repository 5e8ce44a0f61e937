package app_test

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/riferrei/srclient"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/app"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
	"go.uber.org/zap"
)

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestPublishJSONHeadersAndPlacement(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	payload := map[string]any{"patient_id": "p-1", "name": "John Doe", "age": 42.0}
	resp, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, payload)},
		SourceService: "prm-service", SourceUserId: "user-7", CausationId: "cmd-1",
		Metadata: map[string]string{"region": "eu"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetResult()
	if r.GetTopic() != "healthtech.patient.events" || r.GetEventId() == "" {
		t.Fatalf("result %v", r)
	}
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events")
	if len(recs) != 1 {
		t.Fatalf("%d records in Kafka, want 1", len(recs))
	}
	rec := recs[0]
	if rec.Partition != r.GetPartition() || rec.Offset != r.GetOffset() {
		t.Errorf("record at %d@%d, response said %d@%d", rec.Partition, rec.Offset, r.GetPartition(), r.GetOffset())
	}
	if string(rec.Key) != tenantA {
		t.Errorf("key %q, want the tenant id", rec.Key)
	}
	want := map[string]string{
		"ce_specversion": "1.0", "ce_id": r.GetEventId(), "ce_type": "patient.created", "ce_source": "prm-service",
		"ce_tenantid": tenantA, "ce_correlationid": r.GetEventId(), "ce_causationid": "cmd-1", "ce_userid": "user-7",
		"ce_region": "eu", "content-type": "application/json",
	}
	for k, v := range want {
		if got, ok := header(rec, k); !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if ts, _ := header(rec, "ce_time"); ts == "" {
		t.Error("no ce_time")
	} else if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		t.Errorf("ce_time %q: %v", ts, err)
	}
	var got map[string]any
	if err := json.Unmarshal(rec.Value, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, payload) {
		t.Errorf("value %v, want %v", got, payload)
	}
}

func TestPublishPayloadJSONAndPartitionKey(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	raw := []byte(`{"appointment_id":"a-1","at":"2024-05-01T10:00:00Z"}`)
	resp, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventId: "0b8f7f0e-3f36-4a8c-9c77-8a1b2c3d4e5f", EventType: "appointment.booked", TenantId: tenantA,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: raw}, PartitionKey: "patient-9", CorrelationId: "corr-1",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetResult().GetEventId() != "0b8f7f0e-3f36-4a8c-9c77-8a1b2c3d4e5f" {
		t.Errorf("event id not kept: %v", resp.GetResult())
	}
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.appointment.events")
	if len(recs) != 1 || string(recs[0].Value) != string(raw) || string(recs[0].Key) != "patient-9" {
		t.Fatalf("records %v", recs)
	}
	if c, _ := header(recs[0], "ce_correlationid"); c != "corr-1" {
		t.Errorf("correlation id %q", c)
	}
	if src, _ := header(recs[0], "ce_source"); src != "eventgw" {
		t.Errorf("default source %q, want the --service-name", src)
	}
	// A plain Kafka client (murmur2, as Java's) keying by the same partition key picks
	// the same partition: Kafka Streams joins and other producers agree with the gateway.
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.kafka.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, key := range []string{"patient-9", tenantA, "1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d", "x"} {
		resp, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "appointment.booked", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: raw}, PartitionKey: key,
		}})
		if err != nil {
			t.Fatal(err)
		}
		r := &kgo.Record{Topic: "healthtech.appointment.events", Key: []byte(key), Value: raw}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if r.Partition != resp.GetResult().GetPartition() {
			t.Errorf("key %q: the gateway chose partition %d, a Kafka client %d", key, resp.GetResult().GetPartition(), r.Partition)
		}
	}
}

const patientSchema = `{"type":"record","name":"PatientCreated","namespace":"healthtech.patient","fields":[
 {"name":"patient_id","type":{"type":"string","logicalType":"uuid"}},
 {"name":"first_name","type":"string"},
 {"name":"age","type":"int"},
 {"name":"email","type":["null","string"],"default":null},
 {"name":"allergies","type":{"type":"array","items":"string"},"default":[]}]}`

func TestPublishAvroThroughRegistry(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	reg, err := s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.created", Schema: patientSchema})
	if err != nil {
		t.Fatal(err)
	}
	if reg.GetSchema().GetSubject() != "healthtech.patient.events-patient.created" || reg.GetSchema().GetSchemaId() == 0 {
		t.Fatalf("register: %v", reg)
	}
	list, err := s.events.ListSchemas(ctx, &eventgwv1.ListSchemasRequest{})
	if err != nil || len(list.GetSchemas()) != 1 || list.GetSchemas()[0].GetEventType() != "patient.created" {
		t.Fatalf("list: %v %v", list, err)
	}
	pid := "1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d"
	payload := map[string]any{"patient_id": pid, "first_name": "Ada", "age": 36.0, "allergies": []any{"penicillin"}}
	resp, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, payload)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// The same event as payload_json.
	if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"patient_id":"` + pid + `","first_name":"Ada","age":36,"email":"a@b.org"}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events")
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	// Decode as any Confluent consumer would: magic byte, schema id, registry lookup.
	client := srclient.NewSchemaRegistryClient(s.registry)
	for _, rec := range recs {
		if rec.Value[0] != 0 {
			t.Fatalf("magic byte %d", rec.Value[0])
		}
		id := int(binary.BigEndian.Uint32(rec.Value[1:5]))
		if id != int(reg.GetSchema().GetSchemaId()) {
			t.Errorf("schema id %d, want %d", id, reg.GetSchema().GetSchemaId())
		}
		sch, err := client.GetSchema(id)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := avro.Unmarshal(avro.MustParse(sch.Schema()), rec.Value[5:], &got); err != nil {
			t.Fatal(err)
		}
		if got["patient_id"] != pid || got["first_name"] != "Ada" || got["age"] != 36 {
			t.Errorf("decoded %v", got)
		}
		if ct, _ := header(rec, "content-type"); ct != "application/avro" {
			t.Errorf("content-type %q", ct)
		}
		if ds, _ := header(rec, "ce_dataschema"); !strings.HasSuffix(ds, "/schemas/ids/"+strconv.Itoa(id)) {
			t.Errorf("ce_dataschema %q", ds)
		}
	}
	if recs[0].Offset != resp.GetResult().GetOffset() && recs[1].Offset != resp.GetResult().GetOffset() {
		t.Error("offset of the response not found")
	}

	// A payload that does not match is refused, naming the field, and nothing is sent.
	for name, tc := range map[string]struct {
		payload map[string]any
		field   string
	}{
		"wrong type":  {map[string]any{"patient_id": pid, "first_name": "Ada", "age": "old"}, "payload.age"},
		"missing":     {map[string]any{"patient_id": pid, "age": 3.0}, "payload.first_name"},
		"not integer": {map[string]any{"patient_id": pid, "first_name": "A", "age": 3.5}, "payload.age"},
		// A client's key is never echoed (it may hold data): the field is the payload.
		"unknown field": {map[string]any{"patient_id": pid, "first_name": "A", "age": 3.0, "ssn": "x"}, "payload"},
		"bad uuid":      {map[string]any{"patient_id": "nope", "first_name": "A", "age": 3.0}, "payload.patient_id"},
		"array item":    {map[string]any{"patient_id": pid, "first_name": "A", "age": 3.0, "allergies": []any{1.0}}, "payload.allergies[0]"},
	} {
		_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, tc.payload)},
		}})
		assertInvalid(t, name, err, tc.field)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != 2 {
		t.Errorf("refused events reached Kafka: %d records, want 2", n)
	}

	// A schema that is not Avro is refused.
	_, err = s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.updated", Schema: `{"type":"nope"}`})
	assertInvalid(t, "bad schema", err, "schema")
}

func assertInvalid(t *testing.T, name string, err error, field string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument {
		t.Errorf("%s: code %v (%v), want InvalidArgument", name, st.Code(), err)
		return
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return
				}
			}
			t.Errorf("%s: violations %v, want field %q (message %q)", name, br.GetFieldViolations(), field, st.Message())
			return
		}
	}
	t.Errorf("%s: no BadRequest details in %v", name, st)
}

func TestPublishBatchAnswersPerEventInOrder(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	var evs []*eventgwv1.Event
	for i := range 50 {
		evs = append(evs, &eventgwv1.Event{
			EventType: []string{"patient.created", "clinical.lab_result"}[i%2], TenantId: tenantA,
			Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(fmt.Sprintf(`{"n":%d}`, i))},
		})
	}
	resp, err := s.events.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != 50 {
		t.Fatalf("%d results", len(resp.GetResults()))
	}
	ids := map[string]int{}
	for i, r := range resp.GetResults() {
		res := r.GetResult()
		if res == nil {
			t.Fatalf("event %d: %v", i, r.GetError())
		}
		wantTopic := []string{"healthtech.patient.events", "healthtech.clinical.events"}[i%2]
		if res.GetTopic() != wantTopic {
			t.Errorf("event %d on %s", i, res.GetTopic())
		}
		ids[res.GetEventId()] = i
	}
	for _, topic := range []string{"healthtech.patient.events", "healthtech.clinical.events"} {
		recs := testenv.ConsumeAll(t, s.kafka.Brokers, topic)
		if len(recs) != 25 {
			t.Fatalf("%s: %d records", topic, len(recs))
		}
		last := -1
		for _, rec := range recs { // one tenant key: one partition, in order
			id, _ := header(rec, "ce_id")
			i, ok := ids[id]
			if !ok || string(rec.Value) != fmt.Sprintf(`{"n":%d}`, i) {
				t.Fatalf("record %s does not match its event", id)
			}
			if i < last {
				t.Errorf("event %d stored after event %d", i, last)
			}
			last = i
		}
	}
}

func TestPublishStreamAcksInOrder(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	stream, err := s.events.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const requests = 2000
	errc := make(chan error, 1)
	go func() {
		for i := range requests {
			req := &eventgwv1.PublishStreamRequest{RequestId: uint64(i + 1), Events: []*eventgwv1.Event{{
				EventType: "patient.updated", TenantId: tenantA,
				Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"i":` + strconv.Itoa(i) + `}`)},
			}}}
			if i == 500 { // one bad request in the middle is answered in its place
				req.Events[0].TenantId = "not-a-uuid"
			}
			if err := stream.Send(req); err != nil {
				errc <- err
				return
			}
		}
		errc <- stream.CloseSend()
	}()
	ok := 0
	for i := range requests {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("recv %d: %v", i, err)
		}
		if resp.GetRequestId() != uint64(i+1) {
			t.Fatalf("ack %d for request %d: out of order", resp.GetRequestId(), i+1)
		}
		if i == 500 {
			if resp.GetError().GetCode() != int32(codes.InvalidArgument) || len(resp.GetResults()) != 0 {
				t.Errorf("bad request answered %v", resp)
			}
			continue
		}
		if len(resp.GetResults()) != 1 || resp.GetResults()[0].GetResult() == nil {
			t.Fatalf("response %d: %v", i, resp)
		}
		ok++
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("stream end: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != int64(ok) {
		t.Errorf("%d records in Kafka, %d acked", n, ok)
	}
}

func TestBadInputIsRefusedAndNothingSent(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) {
		c.MaxBatch = 10
		c.MaxEventBytes = 1024
		c.Domains = "patient,appointment"
	})
	ctx := callCtx(t)
	ok := func() *eventgwv1.Event {
		return &eventgwv1.Event{
			EventType: "patient.created", TenantId: tenantA,
			Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"a":1}`)},
		}
	}
	with := func(f func(e *eventgwv1.Event)) *eventgwv1.Event { e := ok(); f(e); return e }
	single := map[string]struct {
		ev    *eventgwv1.Event
		field string
	}{
		"tenant not uuid":     {with(func(e *eventgwv1.Event) { e.TenantId = "tenant-1" }), "tenant_id"},
		"tenant missing":      {with(func(e *eventgwv1.Event) { e.TenantId = "" }), "tenant_id"},
		"event id not uuid":   {with(func(e *eventgwv1.Event) { e.EventId = "42" }), "event_id"},
		"type malformed":      {with(func(e *eventgwv1.Event) { e.EventType = "PatientCreated" }), "event_type"},
		"type one segment":    {with(func(e *eventgwv1.Event) { e.EventType = "patient" }), "event_type"},
		"type unknown domain": {with(func(e *eventgwv1.Event) { e.EventType = "billing.paid" }), "event_type"},
		"payload missing":     {with(func(e *eventgwv1.Event) { e.Data = nil }), "payload"},
		"payload not object":  {with(func(e *eventgwv1.Event) { e.Data = &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`[1]`)} }), "payload_json"},
		"payload not json":    {with(func(e *eventgwv1.Event) { e.Data = &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"a":`)} }), "payload_json"},
		"payload too big": {with(func(e *eventgwv1.Event) {
			e.Data = &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"a":"` + strings.Repeat("x", 2000) + `"}`)}
		}), "payload_json"},
		"struct too big": {with(func(e *eventgwv1.Event) {
			e.Data = &eventgwv1.Event_Payload{Payload: mustStruct(t, map[string]any{"a": strings.Repeat("x", 2000)})}
		}), "payload"},
		"metadata key":      {with(func(e *eventgwv1.Event) { e.Metadata = map[string]string{"Bad-Key": "v"} }), "metadata"},
		"metadata reserved": {with(func(e *eventgwv1.Event) { e.Metadata = map[string]string{"tenantid": "v"} }), "metadata"},
		"source service":    {with(func(e *eventgwv1.Event) { e.SourceService = "prm service!" }), "source_service"},
		"control chars":     {with(func(e *eventgwv1.Event) { e.CorrelationId = "a\nb" }), "correlation_id"},
	}
	for name, tc := range single {
		_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: tc.ev})
		assertInvalid(t, name, err, tc.field)
	}
	_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{})
	assertInvalid(t, "no event", err, "event")

	dupID := "0b8f7f0e-3f36-4a8c-9c77-8a1b2c3d4e5f"
	many := make([]*eventgwv1.Event, 11)
	for i := range many {
		many[i] = ok()
	}
	batches := map[string]struct {
		evs   []*eventgwv1.Event
		field string
	}{
		"empty batch":     {nil, "events"},
		"oversized batch": {many, "events"},
		"duplicate ids": {[]*eventgwv1.Event{
			with(func(e *eventgwv1.Event) { e.EventId = dupID }), ok(), with(func(e *eventgwv1.Event) { e.EventId = dupID }),
		}, "events[2].event_id"},
		"one bad event": {[]*eventgwv1.Event{ok(), with(func(e *eventgwv1.Event) { e.TenantId = "x" }), ok()}, "events[1].tenant_id"},
	}
	for name, tc := range batches {
		_, err := s.events.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: tc.evs})
		assertInvalid(t, name, err, tc.field)
	}
	for _, topic := range []string{"healthtech.patient.events", "healthtech.billing.events"} {
		if n := topicCount(t, s.kafka.Brokers, topic); n != 0 {
			t.Errorf("%s holds %d records after refused calls", topic, n)
		}
	}
	// The invalid events were counted.
	body := httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics")
	if !strings.Contains(body, `event_publish_errors_total{event_type="patient.created",reason="invalid",service="eventgw"}`) {
		t.Error("event_publish_errors_total{reason=invalid} not exported")
	}
}

func TestRequireSchemas(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.RequireSchemas = true })
	ctx := callCtx(t)
	ev := &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"patient_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","first_name":"A","age":1}`)},
	}
	_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev})
	assertInvalid(t, "unregistered type", err, "event_type")
	if _, err := s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.created", Schema: patientSchema}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev}); err != nil {
		t.Fatalf("registered type refused: %v", err)
	}
}

func TestTopicSettings(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	for _, typ := range []string{"patient.created", "clinical.lab_result"} {
		if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: typ, TenantId: tenantA,
			Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	adm := newAdmin(t, s.kafka.Brokers)
	details, err := adm.ListTopics(ctx, "healthtech.patient.events", "healthtech.clinical.events")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range details {
		if len(d.Partitions) != 12 {
			t.Errorf("%s: %d partitions", d.Topic, len(d.Partitions))
		}
		if rf := len(d.Partitions[0].Replicas); rf != 3 {
			t.Errorf("%s: replication %d, want 3", d.Topic, rf)
		}
	}
	cfgs, err := adm.DescribeTopicConfigs(ctx, "healthtech.patient.events", "healthtech.clinical.events")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"healthtech.patient.events":  strconv.FormatInt((30 * 24 * time.Hour).Milliseconds(), 10),
		"healthtech.clinical.events": strconv.FormatInt((90 * 24 * time.Hour).Milliseconds(), 10),
	}
	for _, rc := range cfgs {
		got := map[string]string{}
		for _, c := range rc.Configs {
			got[c.Key] = c.MaybeValue()
		}
		if got["min.insync.replicas"] != "2" || got["retention.ms"] != want[rc.Name] {
			t.Errorf("%s: min.insync.replicas=%q retention.ms=%q, want 2 and %s", rc.Name, got["min.insync.replicas"], got["retention.ms"], want[rc.Name])
		}
	}
	_ = kadm.TopicDetails{}
}

// TestKafkaClosedPublishIsQueued: with the whole Kafka cluster gone, Publish neither
// hangs nor fails: the event is queued in PostgreSQL, and a caller's own short deadline
// is honoured.
func TestKafkaClosedPublishIsQueued(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	ev := &eventgwv1.Event{EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)}}
	if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev}); err != nil {
		t.Fatal(err)
	}
	s.kafka.Cluster.Close()
	start := time.Now()
	resp, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev})
	if err != nil || !resp.GetResult().GetQueued() {
		t.Fatalf("publish with Kafka gone: %v, %v; want queued", resp, err)
	}
	t.Logf("queued after %v", time.Since(start))
	dctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	resp, err = s.events.Publish(dctx, &eventgwv1.PublishRequest{Event: ev})
	if c := status.Code(err); (err != nil && c != codes.DeadlineExceeded) || (err == nil && !resp.GetResult().GetQueued()) {
		t.Fatalf("short deadline: %v, %v; want queued or DeadlineExceeded", resp, err)
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM publish_queue`); n < 1 {
		t.Fatalf("%d rows queued", n)
	}
}

func TestGracefulShutdownLosesNoAckedEvent(t *testing.T) {
	s := startSidecar(t, nil)
	var (
		mu    sync.Mutex
		acked = map[string]bool{}
		wg    sync.WaitGroup
	)
	started := make(chan struct{})
	var once sync.Once
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				resp, err := s.events.PublishBatch(context.Background(), &eventgwv1.PublishBatchRequest{Events: []*eventgwv1.Event{
					{EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))}},
					{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)}},
				}})
				if err != nil {
					return // the sidecar is going away
				}
				mu.Lock()
				for _, r := range resp.GetResults() {
					if r.GetResult() != nil {
						acked[r.GetResult().GetEventId()] = true
					}
				}
				mu.Unlock()
				if i == 20 {
					once.Do(func() { close(started) })
				}
			}
		}()
	}
	<-started
	s.shutdown()
	wg.Wait()
	missing := missingFromKafka(t, s.kafka.Brokers, "healthtech.patient.events", acked)
	if len(acked) < 100 || missing > 0 {
		t.Fatalf("%d acked events, %d of them missing from Kafka", len(acked), missing)
	}
	t.Logf("%d acked before shutdown, all in Kafka", len(acked))
}

func TestNoPayloadInLogs(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	const canary = "CANARY-PHI-7f3a91"
	if _, err := s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.created", Schema: patientSchema}); err != nil {
		t.Fatal(err)
	}
	calls := []*eventgwv1.Event{
		{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, map[string]any{"name": canary})}},
		{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"note":"` + canary + `"}`)}},
		{EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, map[string]any{"patient_id": canary, "first_name": canary, "age": canary})}},
		// Valid but for the unknown key, so that it reaches the unknown-key check.
		{EventType: "patient.created", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, map[string]any{
			"patient_id": "1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d", "first_name": "x", "age": 1.0, canary: 1.0,
		})}},
		{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"x":"` + canary + strings.Repeat("y", 2<<20) + `"}`)}},
		{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"x":"` + canary + `"`)}},
	}
	failures := 0
	for i, ev := range calls {
		_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev})
		if err != nil {
			failures++
			if strings.Contains(err.Error(), canary) {
				t.Errorf("error message repeats payload data: %v", err)
			}
		}
		if i == 3 && !strings.Contains(status.Convert(err).Message(), "not a field of the schema") {
			t.Errorf("the unknown-key case was refused before its check: %v", err)
		}
	}
	if failures != 4 {
		t.Errorf("%d calls failed, want 4 (the canary must reach the error paths)", failures)
	}
	// Kafka outage: errors are logged too.
	s.kafka.Cluster.Close()
	_, _ = s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: calls[0]})
	s.shutdown()
	logs := s.logs.String()
	if !strings.Contains(logs, "call failed") {
		t.Fatal("no failure was logged at all: the check would be empty")
	}
	if strings.Contains(logs, canary) {
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, canary) {
				t.Errorf("payload data in a log line: %.300s", line)
			}
		}
	}
}

func TestHealthReflectionAndMetrics(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	hc, err := healthpb.NewHealthClient(s.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "eventgw.v1.EventService"})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hc, err)
	}
	if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA,
		SourceService: "prm-service", Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
	}}); err != nil {
		t.Fatal(err)
	}
	body := httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics")
	for _, want := range []string{
		`event_published_total{event_type="patient.created",service="prm-service"} 1`,
		`event_publish_duration_seconds_count{service="prm-service"} 1`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Publish",grpc_service="eventgw.v1.EventService",grpc_type="unary"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code, rep := readyz(t, s); code != 200 || rep.Status != "ready" || len(rep.Dependencies) != 3 ||
		!rep.Dependencies["kafka"].OK || rep.Dependencies["kafka"].Breaker != "closed" {
		t.Errorf("/readyz: %d %+v", code, rep)
	}
	sagas := eventgwv1.NewSagaServiceClient(s.conn)
	if _, err := sagas.GetSaga(ctx, &eventgwv1.GetSagaRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("GetSaga without a tenant: %v, want InvalidArgument", err)
	}
}

func TestUnixSocket(t *testing.T) {
	sock := t.TempDir() + "/eventgw.sock"
	s := startSidecar(t, func(c *config.Config) { c.GRPCAddr = "unix://" + sock })
	if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
	}}); err != nil {
		t.Fatal(err)
	}
}

// TestUnreachableDependenciesFailFast: without PostgreSQL the sidecar cannot keep
// anything durable, so it does not start (an unreachable Kafka or registry does not
// stop it: see TestStartsWithoutKafka and TestStartsWithoutRegistry).
func TestUnreachableDependenciesFailFast(t *testing.T) {
	k := testenv.NewKafka(t)
	reg := testenv.NewRegistry(t)
	db := testenv.NewDatabase(t)
	for name, tc := range map[string]struct {
		mutate func(*config.Config)
		want   string
	}{
		"postgres": {func(c *config.Config) { c.DatabaseURL = "postgres://u:secretpw@127.0.0.1:1/db" }, "postgres at postgres://u:xxxxx@127.0.0.1:1/db is unreachable"},
	} {
		cfg := defaultConfig(t)
		cfg.KafkaBrokers, cfg.SchemaRegistryURL, cfg.DatabaseURL = joinComma(k.Brokers), reg.URL(), db
		tc.mutate(&cfg)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		_, err := app.Build(ctx, cfg, zap.NewNop())
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "secretpw") {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
		t.Logf("%s: failed after %v", name, time.Since(start).Round(time.Millisecond))
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
