package app_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// nestJSON is {"a":{"a":…{}…}}: an object nested depth levels deep, holding inner at
// the bottom (inner "" is {}).
func nestJSON(depth int, inner string) string {
	if inner == "" {
		inner = "{}"
	}
	return strings.Repeat(`{"a":`, depth-1) + inner + strings.Repeat(`}`, depth-1)
}

// nestStruct is nestJSON as a Struct.
func nestStruct(depth int) *structpb.Struct {
	s := &structpb.Struct{}
	for range depth - 1 {
		s = &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewStructValue(s)}}
	}
	return s
}

// assertInvalidRule is assertInvalid that also wants the rule's words in the message.
func assertInvalidRule(t *testing.T, name string, err error, field, rule string) {
	t.Helper()
	assertInvalid(t, name, err, field)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, rule) {
		t.Errorf("%s: message %q, want %q in it", name, msg, rule)
	}
}

func execSQL(t *testing.T, dbURL, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// The JSON data rule (README "Limits of stored data") on every writer: what a reader
// could not give back is refused with InvalidArgument naming the field and the rule,
// the same on the Struct and the JSON-bytes paths, and nothing is stored or published.
func TestWritersRefuseWhatReadersCannotReturn(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	agg := uuid.NewString()
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, newEv(t, "patient.registered", map[string]any{"v": 1.0}))); err != nil {
		t.Fatal(err)
	}
	bad := []struct{ name, json, rule string }{
		{"nesting", nestJSON(65, ""), "deeper than 64 levels"},
		{"nesting in arrays", `{"a":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, "deeper than 64 levels"},
		{"number overflow", `{"n":1e400}`, "number out of range"},
		{"number underflow", `{"n":1e-400}`, "number out of range"},
		{"huge exponent", `{"n":0e-99999}`, "number out of range"},
		{"NUL", `{"s":"a\u0000b"}`, "U+0000"},
		{"NUL in a key", `{"a\u0000":1}`, "U+0000"},
		{"invalid UTF-8", "{\"s\":\"a\xffb\"}", "not valid UTF-8"},
		{"lone surrogate", `{"s":"\ud800"}`, "lone UTF-16 surrogate"},
		{"reversed surrogates", `{"s":"\udc00\ud800"}`, "lone UTF-16 surrogate"},
		{"repeated key", `{"a":1,"b":2,"a":3}`, "repeats a key"},
	}
	for _, b := range bad {
		_, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, anyVersion,
			&eventgwv1.NewEvent{EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(b.json)}}))
		assertInvalidRule(t, "AppendEvents data_json: "+b.name, err, "events[0].data_json", b.rule)
		_, err = s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(b.json)},
		}})
		assertInvalidRule(t, "Publish payload_json: "+b.name, err, "payload_json", b.rule)
		_, err = s.events.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: []*eventgwv1.Event{
			{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)}},
			{EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(b.json)}},
		}})
		assertInvalidRule(t, "PublishBatch payload_json: "+b.name, err, "events[1].payload_json", b.rule)
	}
	// PublishStream answers the request with the same code and words.
	ps, err := s.events.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range bad {
		if err := ps.Send(&eventgwv1.PublishStreamRequest{RequestId: uint64(i), Events: []*eventgwv1.Event{{
			EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(b.json)},
		}}}); err != nil {
			t.Fatal(err)
		}
		resp, err := ps.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if e := resp.GetError(); e == nil || codes.Code(e.GetCode()) != codes.InvalidArgument || !strings.Contains(e.GetMessage(), "payload_json") || !strings.Contains(e.GetMessage(), b.rule) {
			t.Errorf("PublishStream %s: %v", b.name, resp)
		}
	}
	_ = ps.CloseSend()

	// The Struct paths: the same rule where a Struct can break it.
	nul := mustStruct(t, map[string]any{"s": "a\x00b"})
	structs := []struct {
		name string
		s    *structpb.Struct
		rule string
	}{
		{"nesting", nestStruct(65), "deeper than 64 levels"},
		{"NUL", nul, "U+0000"},
	}
	for _, c := range structs {
		_, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, anyVersion,
			&eventgwv1.NewEvent{EventType: "patient.updated", Body: &eventgwv1.NewEvent_Data{Data: c.s}}))
		assertInvalidRule(t, "AppendEvents data: "+c.name, err, "events[0].data", c.rule)
		_, err = s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_Payload{Payload: c.s},
		}})
		assertInvalidRule(t, "Publish payload: "+c.name, err, "payload", c.rule)
		_, err = s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: tenantA, AggregateId: agg, Version: 1, State: c.s})
		assertInvalidRule(t, "SaveSnapshot state: "+c.name, err, "state", c.rule)
	}
	// Metadata values must be UTF-8 text too (they become Kafka headers and JSON).
	_, err = s.store.AppendEvents(ctx, appendReq(tenantA, agg, anyVersion, &eventgwv1.NewEvent{
		EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{}`)}, Metadata: map[string]string{"ward": "a\x00"},
	}))
	assertInvalid(t, "AppendEvents metadata NUL", err, "events[0].metadata")

	// RegisterSchema: the schema text is stored and parsed at every start.
	deepSchema := `{"type":"record","name":"R","fields":[{"name":"f","type":` + strings.Repeat(`{"type":"array","items":`, 70) + `"int"` + strings.Repeat(`}`, 70) + `}]}`
	_, err = s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.deep", Schema: deepSchema})
	assertInvalidRule(t, "RegisterSchema nesting", err, "schema", "deeper than 64 levels")
	_, err = s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{EventType: "patient.nul", Schema: `{"type":"record","name":"R","doc":"a\u0000","fields":[]}`})
	assertInvalidRule(t, "RegisterSchema NUL", err, "schema", "U+0000")

	// Timestamps outside 0001..9999 (RFC 3339, CloudEvents' time) are refused, never
	// published (year 82269) nor handed to PostgreSQL.
	const year10000 = 253402300800 // 10000-01-01T00:00:00Z
	for name, ts := range map[string]*timestamppb.Timestamp{
		"year 10000":    {Seconds: year10000},
		"year 82269":    {Seconds: 2533999999999},
		"before year 1": {Seconds: -62135596801},
	} {
		_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "patient.updated", TenantId: tenantA, Time: ts, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
		}})
		assertInvalid(t, "Publish time "+name, err, "time")
		_, err = s.store.AppendEvents(ctx, appendReq(tenantA, agg, anyVersion, &eventgwv1.NewEvent{
			EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{}`)}, OccurredAt: ts,
		}))
		assertInvalid(t, "AppendEvents occurred_at "+name, err, "events[0].occurred_at")
		for _, field := range []string{"from_time", "to_time"} {
			req := &eventgwv1.ReplayEventsRequest{TenantId: tenantA}
			if field == "from_time" {
				req.FromTime = ts
			} else {
				req.ToTime = ts
			}
			st, err := s.store.ReplayEvents(ctx, req)
			if err == nil {
				_, err = st.Recv()
			}
			assertInvalid(t, "ReplayEvents "+field+" "+name, err, field)
		}
	}
	// The last second of year 9999 is fine.
	if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.updated", TenantId: tenantA, Time: &timestamppb.Timestamp{Seconds: year10000 - 1},
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
	}}); err != nil {
		t.Errorf("Publish at 9999-12-31T23:59:59Z: %v", err)
	}

	// Nothing refused was stored or published.
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM stored_events`); n != 1 {
		t.Errorf("%d stored events, want the first one only", n)
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM aggregate_snapshots`); n != 0 {
		t.Errorf("%d snapshots stored by refused calls", n)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != 2 { // the append, the 9999 publish
		t.Errorf("healthtech.patient.events holds %d records, want 2", n)
	}
}

// Data at the edges of the rule is accepted, and every reader gives it back: as a
// Struct, as JSON, folded, replayed, snapshotted and published.
func TestAcceptedDataReadsBackEverywhere(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.SnapshotEvery = 2 })
	ctx := callCtx(t)
	agg := uuid.NewString()
	edges := []string{
		nestJSON(64, ""),
		`{"a":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`,
		`{"max":1.7976931348623157e308,"min":-1.7976931348623157e308,"tiny":5e-324,"small":1e-300,"zero":0e-400,"neg0":-0.0,"exp":1E+2}`,
		`{"big":123456789012345678901234567890,"id":9007199254740993}`,
		`{"s":"\ud83d\ude00 é \u00e9 \" \\ \/ \b\f\n\r\t","😀":"ÆØÅ"}`,
		`{"n":` + "1." + strings.Repeat("1", 300) + `e-90}`,
	}
	evs := make([]*eventgwv1.NewEvent, len(edges))
	for i, e := range edges {
		evs[i] = &eventgwv1.NewEvent{EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(e)}}
	}
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, evs...)); err != nil {
		t.Fatalf("edge data refused: %v", err)
	}
	// The append crossed --snapshot-every: the automatic snapshot folds the edge data.
	eventually(t, 30*time.Second, "the automatic snapshot at version 6", func() bool {
		return dbCount(t, s.dbURL, `SELECT count(*) FROM aggregate_snapshots WHERE aggregate_id = $1 AND version = 6`, agg) == 1
	})
	// At the limit through a Struct, and a snapshot at the limit.
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, anyVersion,
		&eventgwv1.NewEvent{EventType: "patient.updated", Body: &eventgwv1.NewEvent_Data{Data: nestStruct(64)}})); err != nil {
		t.Fatalf("Struct at the nesting limit refused: %v", err)
	}
	if _, err := s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: tenantA, AggregateId: agg, Version: 7, State: nestStruct(64)}); err != nil {
		t.Fatalf("snapshot at the nesting limit refused: %v", err)
	}
	for _, asJSON := range []bool{false, true} {
		st, err := s.store.ReadAggregate(ctx, &eventgwv1.ReadAggregateRequest{TenantId: tenantA, AggregateId: agg, DataAsJson: asJSON})
		if err != nil {
			t.Fatal(err)
		}
		read := drain(t, st.Recv)
		if len(read) != 7 {
			t.Fatalf("read %d events, want 7", len(read))
		}
		for i, e := range read {
			if e.GetDataNotStruct() || (!asJSON && e.GetData() == nil) || (asJSON && !json.Valid(e.GetDataJson())) {
				t.Errorf("json %v: event %d not given back as asked: %v", asJSON, i+1, e)
			}
		}
		if !asJSON {
			f := read[2].GetData().GetFields()
			if f["max"].GetNumberValue() != math.MaxFloat64 || f["tiny"].GetNumberValue() != 5e-324 || f["small"].GetNumberValue() != 1e-300 {
				t.Errorf("numbers at the ends of the range: %v", f)
			}
			// Big integers: the nearest float64 in a Struct (send them as strings to keep
			// every digit), every digit in data_json.
			if got := read[3].GetData().GetFields()["big"].GetNumberValue(); got != 1.2345678901234568e29 {
				t.Errorf("big integer as a Struct: %v", got)
			}
		} else if !strings.Contains(string(read[3].GetDataJson()), "123456789012345678901234567890") {
			t.Errorf("big integer as JSON lost digits: %s", read[3].GetDataJson())
		}
		rs, err := s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, DataAsJson: asJSON})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range drain(t, rs.Recv) {
			if e.GetDataNotStruct() || (!asJSON && e.GetData() == nil) {
				t.Errorf("replay: event %d not given back as asked", e.GetVersion())
			}
		}
		l, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg, DataAsJson: asJSON})
		if err != nil || l.GetStateNotStruct() || l.GetVersion() != 7 || (!asJSON && l.GetState() == nil) {
			t.Errorf("load (json %v): %v %v", asJSON, l, err)
		}
		raw, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg, Raw: true, DataAsJson: asJSON})
		if err != nil || raw.GetStateNotStruct() || raw.GetSnapshotVersion() != 7 {
			t.Errorf("load raw (json %v): %v %v", asJSON, raw, err)
		}
	}
	// Published data at the edges, by Publish and through the outbox, is readable as a
	// Struct by a consumer.
	for _, e := range edges {
		if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(e)},
		}}); err != nil {
			t.Fatalf("publish of edge data refused: %v", err)
		}
	}
	var n int64
	eventually(t, 30*time.Second, "the outbox published the appends", func() bool {
		n = topicCount(t, s.kafka.Brokers, "healthtech.patient.events")
		return n >= int64(len(edges)+7)
	})
	if n != int64(len(edges)+7) {
		t.Errorf("healthtech.patient.events holds %d records, want %d", n, len(edges)+7)
	}
	for _, r := range testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events") {
		if err := new(structpb.Struct).UnmarshalJSON(r.Value); err != nil {
			t.Errorf("a published value is not readable as a Struct (offset %d): %v", r.Offset, err)
		}
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM failed_events`); n != 0 {
		t.Errorf("the outbox dead-lettered %d appended events", n)
	}
	if strings.Contains(s.logs.String(), "automatic snapshot failed") {
		t.Error("an automatic snapshot failed on accepted data")
	}
}

// Rows stored before the limits (here written with SQL: nested 400 deep, a number
// beyond float64) never fail a page: each reader answers the other rows as asked and
// that row as JSON with data_not_struct / state_not_struct, the fold still works, and
// automatic snapshots go on.
func TestLegacyRowsNeverFailAPage(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.SnapshotEvery = 4 })
	ctx := callCtx(t)
	agg := uuid.NewString()
	evs := make([]*eventgwv1.NewEvent, 3)
	for i := range evs {
		evs[i] = newEv(t, "patient.updated", map[string]any{"n": float64(i + 1)})
	}
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, evs...)); err != nil {
		t.Fatal(err)
	}
	deep := nestJSON(400, "1")
	big := `{"big":1e400}` // jsonb keeps it as a 401-digit numeric
	execSQL(t, s.dbURL, `UPDATE stored_events SET event_data = $1::jsonb WHERE aggregate_id = $2 AND version = 2`, deep, agg)
	execSQL(t, s.dbURL, `UPDATE stored_events SET event_data = $1::jsonb WHERE aggregate_id = $2 AND version = 3`, big, agg)

	check := func(what string, got []*eventgwv1.StoredEvent) {
		t.Helper()
		if len(got) != 3 {
			t.Fatalf("%s: %d events, want 3", what, len(got))
		}
		if got[0].GetData().GetFields()["n"].GetNumberValue() != 1 || got[0].GetDataNotStruct() {
			t.Errorf("%s: a good row is not a Struct: %v", what, got[0])
		}
		for _, e := range got[1:] {
			if !e.GetDataNotStruct() || e.GetData() != nil || !json.Valid(e.GetDataJson()) {
				t.Errorf("%s: legacy row %d not marked with its JSON: %v", what, e.GetVersion(), e.GetDataNotStruct())
			}
		}
	}
	check("ReadAggregate", readAll(t, s, tenantA, agg))
	rs, err := s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenantA})
	if err != nil {
		t.Fatal(err)
	}
	check("ReplayEvents", drain(t, rs.Recv))
	raw, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg, Raw: true})
	if err != nil {
		t.Fatalf("raw load: %v", err)
	}
	check("LoadAggregate raw", raw.GetEvents())
	l, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg})
	if err != nil {
		t.Fatalf("load of an aggregate with legacy rows: %v", err)
	}
	if !l.GetStateNotStruct() || l.GetState() != nil || l.GetVersion() != 3 {
		t.Errorf("load: state_not_struct %v, version %d", l.GetStateNotStruct(), l.GetVersion())
	}
	var state map[string]json.RawMessage
	if err := json.Unmarshal(l.GetStateJson(), &state); err != nil || string(state["n"]) != "1" || !strings.HasPrefix(string(state["big"]), "1000000000") || len(state["a"]) < 400 {
		t.Errorf("folded state_json: %.200s (%v)", l.GetStateJson(), err)
	}
	// The 4th event crosses --snapshot-every: the automatic snapshot folds the legacy
	// rows and is stored; the aggregate loads from it.
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(3), newEv(t, "patient.updated", map[string]any{"n": 4.0}))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the automatic snapshot", func() bool {
		return dbCount(t, s.dbURL, `SELECT count(*) FROM aggregate_snapshots WHERE aggregate_id = $1 AND version = 4`, agg) == 1
	})
	l, err = s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg})
	if err != nil || l.GetSnapshotVersion() != 4 || !l.GetStateNotStruct() {
		t.Errorf("load from the legacy snapshot: %v %v", l.GetSnapshotVersion(), err)
	}
	// A snapshot stored before the limits (SaveSnapshot took deep states) loads too.
	execSQL(t, s.dbURL, `UPDATE aggregate_snapshots SET state = $1::jsonb WHERE aggregate_id = $2`, nestJSON(400, `"x"`), agg)
	if l, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg, Raw: true}); err != nil || !l.GetStateNotStruct() {
		t.Errorf("raw load of a legacy snapshot: %v", err)
	}

	// Dead letters: a legacy payload is answered {"base64": its JSON}, the page intact.
	dl := dlClient(s)
	for range 2 {
		sendDL(t, s, dlEvent(t, tenantA, "patient.updated"))
	}
	execSQL(t, s.dbURL, `UPDATE failed_events SET event_payload = $1::jsonb WHERE id = (SELECT id FROM failed_events ORDER BY failed_at LIMIT 1)`, big)
	list, err := dl.ListFailedEvents(ctx, &eventgwv1.ListFailedEventsRequest{TenantId: tenantA})
	if err != nil || len(list.GetFailedEvents()) != 2 {
		t.Fatalf("list with a legacy row: %v %v", list, err)
	}
	marked := 0
	for _, f := range list.GetFailedEvents() {
		if b64 := f.GetEventPayload().GetFields()["base64"].GetStringValue(); b64 != "" {
			js, err := base64.StdEncoding.DecodeString(b64)
			if err != nil || !json.Valid(js) {
				t.Errorf("base64 payload %q: %v", b64, err)
			}
			marked++
		}
	}
	if marked != 1 {
		t.Errorf("%d rows answered as base64, want the legacy one", marked)
	}
	if strings.Contains(s.logs.String(), `"level":"error"`) {
		t.Errorf("errors logged while reading legacy rows:\n%s", tail(s.logs.String(), 2000))
	}
}

// One canonical form for ids: an uppercase UUID names the same tenant, aggregate and
// event as its lowercase form, on every call; other spellings and the nil UUID are
// refused.
func TestUUIDsAreCanonical(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	upper := func(s string) string { return strings.ToUpper(s) }
	agg, ev1, ev2 := uuid.NewString(), uuid.NewString(), uuid.NewString()
	req := appendReq(upper(tenantA), upper(agg), noStream,
		&eventgwv1.NewEvent{EventId: upper(ev1), EventType: "patient.registered", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{"n":1}`)}},
		&eventgwv1.NewEvent{EventId: ev2, EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{"n":2}`)}})
	first, err := s.store.AppendEvents(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if first.GetEventIds()[0] != ev1 {
		t.Errorf("event id answered as %q, want the canonical %q", first.GetEventIds()[0], ev1)
	}
	// The same append again, in either case, is answered as the first one.
	for _, r := range []*eventgwv1.AppendEventsRequest{req, appendReq(tenantA, agg, noStream, req.Events...)} {
		again, err := s.store.AppendEvents(ctx, r)
		if err != nil || again.GetVersion() != 2 || again.GetPositions()[1] != first.GetPositions()[1] {
			t.Errorf("retried append: %v %v, want the first answer", again, err)
		}
	}
	lowered := &eventgwv1.NewEvent{EventId: strings.ToUpper(ev2), EventType: "patient.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{"n":2}`)}}
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(1), lowered)); status.Code(err) == codes.AlreadyExists {
		t.Errorf("an uppercase id of an event of this aggregate is 'stored on another aggregate': %v", err)
	}
	// A wrong version is a conflict, not "not found".
	_, err = s.store.AppendEvents(ctx, appendReq(upper(tenantA), upper(agg), exact(1), newEv(t, "patient.updated", map[string]any{})))
	assertConflict(t, err, 2)
	// Reads find it in either case, and answer canonical ids.
	for _, id := range []struct{ tenant, agg string }{{upper(tenantA), upper(agg)}, {tenantA, agg}, {upper(tenantA), agg}} {
		evs := readAll(t, s, id.tenant, id.agg)
		if len(evs) != 2 || evs[0].GetEventId() != ev1 || evs[0].GetTenantId() != tenantA || evs[0].GetAggregateId() != agg {
			t.Errorf("read %v: %v", id, evs)
		}
		l, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: id.tenant, AggregateId: id.agg})
		if err != nil || l.GetVersion() != 2 {
			t.Errorf("load %v: %v %v", id, l, err)
		}
	}
	if _, err := s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: upper(tenantA), AggregateId: upper(agg), Version: 2, State: mustStruct(t, map[string]any{"n": 2.0})}); err != nil {
		t.Errorf("snapshot with uppercase ids: %v", err)
	}
	rs, err := s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: upper(tenantA)})
	if err != nil {
		t.Fatal(err)
	}
	if got := drain(t, rs.Recv); len(got) != 2 {
		t.Errorf("replay with an uppercase tenant: %d events", len(got))
	}
	// Another tenant in uppercase is still another tenant.
	if _, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: upper(tenantB), AggregateId: agg}); status.Code(err) != codes.NotFound {
		t.Errorf("another tenant: %v", err)
	}

	// Publish: the same tenant in either case gets the same key, partition and
	// ce_tenantid, and an uppercase event id is published canonical.
	pubID := uuid.NewString()
	var parts []int32
	for _, tenant := range []string{tenantA, upper(tenantA)} {
		id := ""
		if tenant != tenantA {
			id = upper(pubID)
		}
		r, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventId: id, EventType: "appointment.booked", TenantId: tenant, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
		}})
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, r.GetResult().GetPartition())
		if id != "" && r.GetResult().GetEventId() != pubID {
			t.Errorf("published event id %q, want %q", r.GetResult().GetEventId(), pubID)
		}
	}
	if parts[0] != parts[1] {
		t.Errorf("partitions %v for one tenant", parts)
	}
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.appointment.events")
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	for _, r := range recs {
		ten, _ := header(r, "ce_tenantid")
		if string(r.Key) != tenantA || ten != tenantA {
			t.Errorf("key %q ce_tenantid %q, want %q", r.Key, ten, tenantA)
		}
	}
	if id, _ := header(recs[1], "ce_id"); id != pubID {
		t.Errorf("ce_id %q, want %q", id, pubID)
	}

	// Refused spellings, and the nil UUID as a tenant or any other id.
	const nilUUID = "00000000-0000-0000-0000-000000000000"
	for _, bad := range []string{"{" + tenantA + "}", "urn:uuid:" + tenantA, strings.ReplaceAll(tenantA, "-", ""), nilUUID} {
		_, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "appointment.booked", TenantId: bad, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{}`)},
		}})
		assertInvalid(t, "Publish tenant "+bad, err, "tenant_id")
		_, err = s.store.AppendEvents(ctx, appendReq(bad, uuid.NewString(), noStream, newEv(t, "patient.registered", map[string]any{})))
		assertInvalid(t, "AppendEvents tenant "+bad, err, "tenant_id")
		_, err = s.store.AppendEvents(ctx, appendReq(tenantA, bad, noStream, newEv(t, "patient.registered", map[string]any{})))
		assertInvalid(t, "AppendEvents aggregate "+bad, err, "aggregate_id")
		_, err = s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: bad})
		assertInvalid(t, "LoadAggregate aggregate "+bad, err, "aggregate_id")
	}
	// The dead-letter service takes the nil tenant: letters of consumed records without
	// a valid ce_tenantid are kept under it.
	if _, err := dlClient(s).ListFailedEvents(ctx, &eventgwv1.ListFailedEventsRequest{TenantId: nilUUID}); err != nil {
		t.Errorf("dead letters of the nil tenant: %v", err)
	}
	// Failed-event ids: uppercase finds the row; the same id twice in two spellings is
	// one id.
	res := sendDL(t, s, dlEvent(t, tenantA, "patient.updated"))
	_, err = dlClient(s).RetryFailedEvents(ctx, &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA, Ids: []string{res.GetId(), upper(res.GetId())}})
	assertInvalid(t, "retry one id twice", err, "ids[1]")
	if _, err := dlClient(s).ResolveFailedEvent(ctx, &eventgwv1.ResolveFailedEventRequest{TenantId: upper(tenantA), Id: upper(res.GetId())}); err != nil {
		t.Errorf("resolve by uppercase ids: %v", err)
	}
}
