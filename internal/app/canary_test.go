package app_test

import (
	"context"
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// Health data never reaches a log line, a status message, the private PostgreSQL's
// server.log or ce_dataschema, on every path that carries it: refused payloads of each
// rule, client keys (Avro record and map keys, metadata keys), a fold that fails (the
// automatic snapshotter's WARN, LoadAggregate), the outbox relay's dead letter, the
// subscribe decode warning and the dead-letter writer, PostgreSQL's own errors; and the
// registry URL's password is never logged nor published.
func TestNoPatientDataOnAnyPath(t *testing.T) {
	const (
		canary = "CANARY-PHI-7f3a91"
		lower  = "canaryphi7f3a91" // the canary as a well-formed metadata key
		secret = "S3CRET-PW-55"
	)
	reg := testenv.NewRegistry(t).URL()
	d := newDeps(t)
	d.registry = strings.Replace(reg, "http://", "http://eventgw:"+secret+"@", 1)
	s := startOn(t, d, func(c *config.Config) { c.SnapshotEvery = 2 })
	ctx := callCtx(t)

	mapSchema := `{"type":"record","name":"LabResult","namespace":"healthtech.lab","fields":[{"name":"flags","type":{"type":"map","values":"int"}}]}`
	var patientID uint32
	for typ, sc := range map[string]string{"patient.created": patientSchema, "lab.result": mapSchema} {
		r, err := s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: typ, Schema: sc})
		if err != nil {
			t.Fatal(err)
		}
		if typ == "patient.created" {
			patientID = uint32(r.GetSchema().GetSchemaId())
		}
	}
	refused := func(name string, err error, want string) {
		t.Helper()
		st := status.Convert(err)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", name)
		case strings.Contains(st.Message(), canary) || strings.Contains(st.Message(), lower):
			t.Errorf("%s: the error repeats the caller's data: %q", name, st.Message())
		case !strings.Contains(st.Message(), want):
			t.Errorf("%s: %q, want %q: the call must reach the path it names", name, st.Message(), want)
		}
	}
	publish := func(ev *eventgwv1.Event) error {
		_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: ev})
		return err
	}
	js := func(typ, payload string) *eventgwv1.Event {
		return &eventgwv1.Event{EventType: typ, TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(payload)}}
	}
	// An Avro publish: accepted, with a ce_dataschema.
	if err := publish(js("patient.created", `{"patient_id":"`+uuid.NewString()+`","first_name":"`+canary+`","age":40}`)); err != nil {
		t.Fatal(err)
	}
	refused("Avro: unknown record key", publish(js("patient.created", `{"patient_id":"`+uuid.NewString()+`","first_name":"x","age":1,"`+canary+`":1}`)), "not a field of the schema")
	refused("Avro: map key", publish(js("lab.result", `{"flags":{"`+canary+`":"high"}}`)), "payload.flags.*")
	refused("Avro: value", publish(js("patient.created", `{"patient_id":"`+canary+`","first_name":"x","age":1}`)), "payload.patient_id")
	refused("JSON: not JSON", publish(js("patient.updated", `{"x":"`+canary+`"`)), "not valid JSON")
	refused("JSON: NUL", publish(js("patient.updated", `{"x":"`+canary+`\u0000"}`)), "U+0000")
	refused("JSON: number", publish(js("patient.updated", `{"x":"`+canary+`","n":1e999}`)), "number out of range")
	refused("JSON: repeated key", publish(js("patient.updated", `{"`+canary+`":1,"`+canary+`":2}`)), "repeats a key")
	withMeta := js("patient.updated", `{}`)
	withMeta.Metadata = map[string]string{canary: "v"}
	refused("metadata key", publish(withMeta), "lowercase letters or digits")
	withMeta.Metadata = map[string]string{lower: canary + "\n"}
	refused("metadata value", publish(withMeta), "control characters")

	agg := uuid.NewString()
	appendJSON := func(agg string, ev *eventgwv1.ExpectedVersion, data string, md map[string]string) error {
		_, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, ev, &eventgwv1.NewEvent{
			EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(data)}, Metadata: md,
		}))
		return err
	}
	refused("AppendEvents: NUL", appendJSON(agg, anyVersion, `{"x":"`+canary+`\u0000"}`, nil), "U+0000")
	refused("AppendEvents: metadata key form", appendJSON(agg, anyVersion, `{}`, map[string]string{canary: "v"}), "lowercase letters")
	refused("AppendEvents: metadata key as extension", appendJSON(agg, anyVersion, `{}`, map[string]string{lower + "_and_more_words": "v"}), "at most 20 characters")
	_, err := dlClient(s).SendToDeadLetter(ctx, &eventgwv1.SendToDeadLetterRequest{
		Event: js("patient.updated", `{"x":"`+canary+`"}`), ErrorType: "E", Metadata: map[string]string{lower: canary + "\x00"},
	})
	refused("SendToDeadLetter: metadata value", err, "metadata")

	// A row no parser can fold (stored before the limits: nested beyond encoding/json's
	// 10,000 levels) holding the canary: the automatic snapshot fails (WARN, by class),
	// LoadAggregate answers FailedPrecondition, the readers answer it as JSON.
	if err := appendJSON(agg, noStream, `{"n":1}`, nil); err != nil {
		t.Fatal(err)
	}
	// The canary at the end too: parsers quote the text around where they stopped.
	deep := strings.Repeat("[", 10001) + `"` + canary + `"` + strings.Repeat("]", 10001)
	execSQL(t, s.dbURL, `UPDATE stored_events SET event_data = jsonb_build_object('x', $1::jsonb, 'note', $3::text) WHERE aggregate_id = $2`, deep, agg, canary)
	if err := appendJSON(agg, exact(1), `{"n":2}`, nil); err != nil { // crosses --snapshot-every 2
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the automatic snapshot's failure", func() bool {
		return strings.Contains(s.logs.String(), "automatic snapshot failed")
	})
	_, err = s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("load of an unfoldable aggregate: %v", err)
	}
	refused("LoadAggregate: unfoldable", err, "cannot be folded")
	if evs := readAll(t, s, tenantA, agg); len(evs) != 2 || !evs[0].GetDataNotStruct() {
		t.Errorf("read of the unfoldable row: %d events", len(evs))
	}

	// The outbox relay dead-letters an appended event its schema no longer takes (here
	// written with SQL: a key the schema does not have).
	relayed := uuid.NewString()
	execSQL(t, s.dbURL, `INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, event_data, occurred_at, position)
		VALUES ($1, $2, 'Patient', $3, 1, 'patient.created', $4::jsonb, now(), pg_current_xact_id()::text::bigint << 10)`,
		relayed, tenantA, uuid.NewString(), `{"patient_id":"`+uuid.NewString()+`","first_name":"x","age":1,"`+canary+`":1}`)
	eventually(t, 30*time.Second, "the relay's dead letter", func() bool {
		return dbCount(t, s.dbURL, `SELECT count(*) FROM failed_events WHERE event_id = $1 AND error_type = 'outbox_encode'`, relayed) == 1
	})
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM failed_events WHERE error_message LIKE '%'||$1||'%'`, canary); n != 0 {
		t.Errorf("%d failed_events error messages hold the caller's data", n)
	}

	// Consumed records that cannot be decoded (not JSON; Avro that does not decode) are
	// dead-lettered: the decode warning and the writer's log name offsets and classes.
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.kafka.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	avro := []byte{0, 0, 0, 0, 0, 1} // patient_id's string length: zigzag 1 is -1
	binary.BigEndian.PutUint32(avro[1:], patientID)
	for _, v := range [][]byte{[]byte(`{"x":"` + canary + `"`), append(avro, []byte(canary)...)} {
		ct := "application/json"
		if v[0] == 0 {
			ct = "application/avro"
		}
		// Keys of their own: deliveries of one key wait for the previous one's ack.
		r := &kgo.Record{Topic: "healthtech.patient.events", Key: []byte(uuid.NewString()), Value: v, Headers: []kgo.RecordHeader{
			{Key: "ce_type", Value: []byte("patient.updated")}, {Key: "ce_tenantid", Value: []byte(tenantA)}, {Key: "content-type", Value: []byte(ct)},
		}}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "canary", Topics: []string{"patient"}, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST})
	eventually(t, 60*time.Second, "the undecodable records dead-lettered", func() bool {
		return dbCount(t, s.dbURL, `SELECT count(*) FROM failed_events WHERE error_type = 'eventgw.UndecodablePayload'`) == 2
	})

	// PostgreSQL's own errors quote what they refused (DETAIL, CONTEXT, and some
	// messages): none of it reaches the private cluster's server.log.
	conn, err := pgx.Connect(context.Background(), s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`SELECT $1::jsonb`, `SELECT $1::uuid`, `SELECT $1::int`} {
		_, _ = conn.Exec(context.Background(), q, `{"x":"`+canary+`\u0000"}`)
	}
	_, _ = conn.Exec(context.Background(), `INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, event_data, occurred_at, position)
		SELECT event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, jsonb_build_object('x', $1::text), occurred_at, position FROM stored_events LIMIT 1`, canary)
	conn.Close(context.Background())

	// ce_dataschema: the registry URL without its credentials.
	for _, r := range testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events") {
		if ref, ok := header(r, "ce_dataschema"); ok && (strings.Contains(ref, secret) || strings.Contains(ref, "eventgw@") || !strings.HasPrefix(ref, reg+"/schemas/ids/")) {
			t.Errorf("ce_dataschema %q", ref)
		}
	}
	// Kafka gone: the errors are logged too.
	s.kafka.Cluster.Close()
	_ = publish(js("patient.updated", `{"x":"`+canary+`"}`))
	s.shutdown()

	logs := s.logs.String()
	for _, want := range []string{"call failed", "automatic snapshot failed", "can no longer be published", "cannot decode a consumed event", "event dead-lettered"} {
		if !strings.Contains(logs, want) {
			t.Errorf("nothing logged as %q: the check would be empty", want)
		}
	}
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, canary) || strings.Contains(line, lower) || strings.Contains(line, secret) {
			t.Errorf("caller data or the registry password in a log line: %.300s", line)
		}
	}
	if pg := testenv.Postgres(t); pg != nil {
		raw, err := os.ReadFile(pg.LogFile())
		if err != nil {
			t.Fatal(err)
		}
		b := string(raw)
		if strings.Contains(b, canary) || strings.Contains(b, lower) {
			i := strings.Index(b, canary)
			t.Errorf("the caller's data in PostgreSQL's server.log: …%.300s", b[max(0, i-200):])
		}
	}
}
