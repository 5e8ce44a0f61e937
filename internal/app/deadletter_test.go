package app_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/testenv"
)

func dlClient(s *sidecar) eventgwv1.DeadLetterServiceClient {
	return eventgwv1.NewDeadLetterServiceClient(s.conn)
}

// dlEvent is an event as a service would hand it to SendToDeadLetter.
func dlEvent(t *testing.T, tenant, typ string) *eventgwv1.Event {
	return &eventgwv1.Event{
		EventId: uuid.NewString(), EventType: typ, TenantId: tenant, SourceService: "prm-service",
		Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, map[string]any{"patient_id": "p-1", "first_name": "John"})},
	}
}

func sendDL(t *testing.T, s *sidecar, ev *eventgwv1.Event) *eventgwv1.SendToDeadLetterResponse {
	t.Helper()
	resp, err := dlClient(s).SendToDeadLetter(callCtx(t), &eventgwv1.SendToDeadLetterRequest{
		Event: ev, ErrorType: "ValidationError", ErrorMessage: "first_name: too short\n\tat handler.py:12",
		RetryCount: 2, Metadata: map[string]string{"service": "prm-service"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// dlMetric is the value of a sample of the sidecar's /metrics (0 when absent).
func dlMetric(t *testing.T, s *sidecar, sample string) float64 {
	t.Helper()
	for _, l := range strings.Split(httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

func dlPool(t *testing.T, s *sidecar) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func recordHeaders(r *kgo.Record) map[string]string {
	m := make(map[string]string, len(r.Headers))
	for _, h := range r.Headers {
		m[h.Key] = string(h.Value)
	}
	return m
}

// failedRow is a failed_events row as the guide defines it, plus the retry columns.
type failedRow struct {
	TenantID, EventID, EventType, ErrorType, ErrorMessage string
	Payload                                               map[string]any
	RetryCount                                            int32
	FailedAt                                              time.Time
	Retried, Resolved                                     bool
	RetriesPublished                                      int32
	RetriedAt                                             *time.Time
}

func readFailed(t *testing.T, s *sidecar, id string) failedRow {
	t.Helper()
	var r failedRow
	var payload []byte
	err := dlPool(t, s).QueryRow(callCtx(t), `SELECT tenant_id::text, event_id::text, event_type, event_payload,
		error_type, error_message, retry_count, failed_at, retried, resolved, retries_published, retried_at
		FROM failed_events WHERE id = $1`, id).Scan(&r.TenantID, &r.EventID, &r.EventType, &payload, &r.ErrorType,
		&r.ErrorMessage, &r.RetryCount, &r.FailedAt, &r.Retried, &r.Resolved, &r.RetriesPublished, &r.RetriedAt)
	if err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	if err := json.Unmarshal(payload, &r.Payload); err != nil {
		t.Fatal(err)
	}
	return r
}

// SendToDeadLetter (the guide's send_to_dlq) writes the event, encoded as Publish
// would, to healthtech.dlq.<domain> with every dlq_* header, and a failed_events row;
// it does not publish the event.
func TestDeadLetterSendToDeadLetter(t *testing.T) {
	s := startSidecar(t, nil)
	ev := dlEvent(t, tenantA, "patient.created")
	before := time.Now()
	resp := sendDL(t, s, ev)
	if resp.GetDlqTopic() != "healthtech.dlq.patient" || uuid.Validate(resp.GetId()) != nil {
		t.Fatalf("response %v", resp)
	}

	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.dlq.patient")
	if len(recs) != 1 {
		t.Fatalf("%d records in the DLQ topic, want 1", len(recs))
	}
	r := recs[0]
	if r.Partition != resp.GetPartition() || r.Offset != resp.GetOffset() {
		t.Errorf("record at %d@%d, response said %d@%d", r.Partition, r.Offset, resp.GetPartition(), resp.GetOffset())
	}
	var value map[string]any
	if err := json.Unmarshal(r.Value, &value); err != nil || !reflect.DeepEqual(value, ev.GetPayload().AsMap()) {
		t.Errorf("value %s (%v), want the payload", r.Value, err)
	}
	if string(r.Key) != tenantA {
		t.Errorf("key %q, want the tenant id (as Publish keys it)", r.Key)
	}
	hs := recordHeaders(r)
	failedAt, err := time.Parse(time.RFC3339Nano, hs["dlq_failed_at"])
	if err != nil || failedAt.Before(before.Add(-time.Second)) || failedAt.After(time.Now().Add(time.Second)) {
		t.Errorf("dlq_failed_at %q (%v)", hs["dlq_failed_at"], err)
	}
	want := map[string]string{
		// The original envelope.
		"ce_specversion": "1.0", "ce_id": ev.GetEventId(), "ce_type": "patient.created", "ce_source": "prm-service",
		"ce_tenantid": tenantA, "ce_correlationid": ev.GetEventId(), "content-type": "application/json",
		// Why and where it failed.
		"dlq_original_topic": "", "dlq_original_partition": "-1", "dlq_original_offset": "-1",
		"dlq_error_type": "ValidationError", "dlq_error_message": "first_name: too short\n\tat handler.py:12",
		"dlq_attempts": "3", "dlq_subscription": "", "dlq_failed_event_id": resp.GetId(), "dlq_service": "prm-service",
	}
	for k, v := range want {
		if got, ok := hs[k]; !ok || got != v {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
		}
	}
	if _, ok := hs["ce_time"]; !ok {
		t.Error("no ce_time header")
	}

	row := readFailed(t, s, resp.GetId())
	if row.TenantID != tenantA || row.EventID != ev.GetEventId() || row.EventType != "patient.created" ||
		!reflect.DeepEqual(row.Payload, ev.GetPayload().AsMap()) || row.ErrorType != "ValidationError" ||
		row.ErrorMessage != want["dlq_error_message"] || row.RetryCount != 2 || row.Retried || row.Resolved {
		t.Errorf("row %+v", row)
	}
	if d := row.FailedAt.Sub(failedAt); d > time.Microsecond || d < -time.Microsecond {
		t.Errorf("failed_at %v, header %v", row.FailedAt, failedAt)
	}

	// Listed with every field.
	l, err := dlClient(s).ListFailedEvents(callCtx(t), &eventgwv1.ListFailedEventsRequest{TenantId: tenantA})
	if err != nil || len(l.GetFailedEvents()) != 1 || l.GetNextPageToken() != "" {
		t.Fatalf("list: %v %v", l, err)
	}
	fe := l.GetFailedEvents()[0]
	if fe.GetId() != resp.GetId() || fe.GetTenantId() != tenantA || fe.GetEventId() != ev.GetEventId() ||
		fe.GetEventType() != "patient.created" || !reflect.DeepEqual(fe.GetEventPayload().AsMap(), ev.GetPayload().AsMap()) ||
		fe.GetErrorType() != "ValidationError" || fe.GetErrorMessage() != want["dlq_error_message"] || fe.GetRetryCount() != 2 ||
		!fe.GetFailedAt().AsTime().Equal(row.FailedAt) || fe.GetRetried() || fe.GetResolved() || fe.GetSubscription() != "" ||
		fe.GetTopic() != "" || fe.GetPartition() != -1 || fe.GetOffset() != -1 || fe.GetDlqTopic() != "healthtech.dlq.patient" ||
		fe.GetRetriesPublished() != 0 {
		t.Errorf("listed %v", fe)
	}

	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != 0 {
		t.Errorf("%d records in the event's own topic: a dead letter must not be published", n)
	}
	if v := dlMetric(t, s, `dlq_messages_total{service="eventgw",topic="healthtech.dlq.patient"}`); v != 1 {
		t.Errorf("dlq_messages_total = %v, want 1", v)
	}
}

// listIDs pages through req with size and returns the ids; a repeat fails the test.
func listIDs(t *testing.T, s *sidecar, req *eventgwv1.ListFailedEventsRequest, size int32) []string {
	t.Helper()
	req.PageSize = size
	req.PageToken = ""
	limit := int(size)
	if size == 0 {
		limit = 100 // the default
	}
	var ids []string
	seen := map[string]bool{}
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("paging does not end")
		}
		resp, err := dlClient(s).ListFailedEvents(callCtx(t), req)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetFailedEvents()) > limit {
			t.Fatalf("%d rows on a page of %d", len(resp.GetFailedEvents()), size)
		}
		for _, fe := range resp.GetFailedEvents() {
			if seen[fe.GetId()] {
				t.Fatalf("row %s on two pages", fe.GetId())
			}
			seen[fe.GetId()] = true
			ids = append(ids, fe.GetId())
		}
		if resp.GetNextPageToken() == "" {
			return ids
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

type dlRow struct {
	id, typ, sub string
	at           time.Time
	resolved     bool
}

// seedFailed stores failed events of tenantA at chosen times (as the writer stores
// consumed records) and a few of tenantB.
func seedFailed(t *testing.T, s *sidecar, n int, base time.Time) []dlRow {
	t.Helper()
	failed := store.NewFailedEvents(dlPool(t, s))
	var rows []dlRow
	for i := range n {
		typ, sub := "patient.created", "billing"
		if i%3 == 0 {
			typ = "appointment.booked"
		}
		if i%2 == 0 {
			sub = "audit"
		}
		at := base.Add(time.Duration(i/2) * time.Second) // pairs share a failed_at
		rows = append(rows, dlRow{id: insertFailed(t, failed, tenantA, typ, sub, at, i), typ: typ, sub: sub, at: at})
	}
	for i := range 3 {
		insertFailed(t, failed, tenantB, "patient.created", "billing", base, 1000+i)
	}
	return rows
}

func insertFailed(t *testing.T, failed *store.FailedEvents, tenant, typ, sub string, at time.Time, offset int) string {
	t.Helper()
	id := uuid.NewString()
	value := fmt.Sprintf(`{"n":%d}`, offset)
	if _, err := failed.Insert(callCtx(t), &store.FailedEvent{
		ID: id, TenantID: tenant, EventID: uuid.NewString(), EventType: typ, Payload: []byte(value),
		ErrorType: "Timeout", FailedAt: at, Subscription: sub, Topic: "healthtech.legacy.events", Partition: 0,
		Offset: int64(offset), DLQTopic: "healthtech.dlq.legacy", RecordKey: []byte(tenant), RecordValue: []byte(value),
		RecordHeaders: []store.RecordHeader{{Key: "ce_id", Value: []byte(id)}, {Key: "ce_type", Value: []byte(typ)}},
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

// ListFailedEvents filters by event type, subscription, resolution and time, and pages
// newest first across pages with no repeats or gaps.
func TestFailedEventListFiltersAndPaging(t *testing.T) {
	s := startSidecar(t, nil)
	base := time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)
	rows := seedFailed(t, s, 25, base)
	for _, i := range []int{3, 10, 17} {
		if _, err := dlClient(s).ResolveFailedEvent(callCtx(t), &eventgwv1.ResolveFailedEventRequest{TenantId: tenantA, Id: rows[i].id}); err != nil {
			t.Fatal(err)
		}
		rows[i].resolved = true
	}
	slices.SortFunc(rows, func(a, b dlRow) int {
		if c := b.at.Compare(a.at); c != 0 {
			return c
		}
		ua, ub := uuid.MustParse(a.id), uuid.MustParse(b.id)
		return slices.Compare(ub[:], ua[:])
	})
	want := func(keep func(dlRow) bool) []string {
		var out []string
		for _, r := range rows {
			if keep(r) {
				out = append(out, r.id)
			}
		}
		return out
	}
	after, before := base.Add(3*time.Second), base.Add(9*time.Second)
	cases := []struct {
		name string
		req  *eventgwv1.ListFailedEventsRequest
		keep func(dlRow) bool
	}{
		{"default: unresolved", &eventgwv1.ListFailedEventsRequest{}, func(r dlRow) bool { return !r.resolved }},
		{"include resolved", &eventgwv1.ListFailedEventsRequest{IncludeResolved: true}, func(dlRow) bool { return true }},
		{
			"event type", &eventgwv1.ListFailedEventsRequest{EventType: "appointment.booked"},
			func(r dlRow) bool { return !r.resolved && r.typ == "appointment.booked" },
		},
		{
			"subscription with resolved", &eventgwv1.ListFailedEventsRequest{Subscription: "billing", IncludeResolved: true},
			func(r dlRow) bool { return r.sub == "billing" },
		},
		{
			"time range", &eventgwv1.ListFailedEventsRequest{FailedAfter: timestamppb.New(after), FailedBefore: timestamppb.New(before)},
			func(r dlRow) bool { return !r.resolved && !r.at.Before(after) && r.at.Before(before) },
		},
		{
			"all filters", &eventgwv1.ListFailedEventsRequest{
				EventType: "patient.created", Subscription: "audit", FailedAfter: timestamppb.New(after), IncludeResolved: true,
			},
			func(r dlRow) bool { return r.typ == "patient.created" && r.sub == "audit" && !r.at.Before(after) },
		},
	}
	for _, c := range cases {
		w := want(c.keep)
		if len(w) == 0 {
			t.Fatalf("%s: the seed matches nothing", c.name)
		}
		for _, size := range []int32{1, 4, 0} {
			req := c.req
			req.TenantId = tenantA
			if got := listIDs(t, s, req, size); !slices.Equal(got, w) {
				t.Errorf("%s, page size %d:\n got %v\nwant %v", c.name, size, got, w)
			}
		}
	}
	// The default page is 100 rows.
	resp, err := dlClient(s).ListFailedEvents(callCtx(t), &eventgwv1.ListFailedEventsRequest{TenantId: tenantA, IncludeResolved: true})
	if err != nil || len(resp.GetFailedEvents()) != 25 || resp.GetNextPageToken() != "" {
		t.Errorf("default page: %d rows, next %q, %v", len(resp.GetFailedEvents()), resp.GetNextPageToken(), err)
	}
}

// Tenant B sees none of tenant A's failed events and cannot retry or resolve them.
func TestFailedEventTenantIsolation(t *testing.T) {
	s := startSidecar(t, nil)
	resp := sendDL(t, s, dlEvent(t, tenantA, "patient.created"))
	c := dlClient(s)

	l, err := c.ListFailedEvents(callCtx(t), &eventgwv1.ListFailedEventsRequest{TenantId: tenantB, IncludeResolved: true})
	if err != nil || len(l.GetFailedEvents()) != 0 {
		t.Fatalf("tenant B lists %v (%v)", l.GetFailedEvents(), err)
	}
	_, err = c.RetryFailedEvents(callCtx(t), &eventgwv1.RetryFailedEventsRequest{TenantId: tenantB, Ids: []string{resp.GetId()}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("retry by tenant B: %v, want NotFound", err)
	}
	_, err = c.ResolveFailedEvent(callCtx(t), &eventgwv1.ResolveFailedEventRequest{TenantId: tenantB, Id: resp.GetId()})
	if status.Code(err) != codes.NotFound {
		t.Errorf("resolve by tenant B: %v, want NotFound", err)
	}
	// A retry naming A's row among B's own is refused whole.
	own := sendDL(t, s, dlEvent(t, tenantB, "patient.created"))
	_, err = c.RetryFailedEvents(callCtx(t), &eventgwv1.RetryFailedEventsRequest{TenantId: tenantB, Ids: []string{own.GetId(), resp.GetId()}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("retry by tenant B of its row and A's: %v, want NotFound", err)
	}

	if row := readFailed(t, s, resp.GetId()); row.Retried || row.Resolved || row.RetriesPublished != 0 {
		t.Errorf("tenant A's row changed: %+v", row)
	}
	if row := readFailed(t, s, own.GetId()); row.Retried || row.RetriesPublished != 0 {
		t.Errorf("tenant B's row marked retried by a refused call: %+v", row)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != 0 {
		t.Errorf("%d records published by refused retries", n)
	}
	if v := dlMetric(t, s, `dlq_retries_total{service="eventgw",topic="healthtech.patient.events"}`); v != 0 {
		t.Errorf("dlq_retries_total = %v after refused retries", v)
	}
}

// RetryFailedEvents publishes the stored record again (same key, value and headers,
// plus dlq_retry_of) to its original topic, or for a SendToDeadLetter row to its event
// type's topic; marks the rows retried and counts dlq_retries_total. Resolved rows are
// refused with nothing published.
func TestFailedEventRetryAndResolve(t *testing.T) {
	s := startSidecar(t, nil)
	c := dlClient(s)
	ev := dlEvent(t, tenantA, "patient.created")
	sent := sendDL(t, s, ev)
	dlqRec := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.dlq.patient")[0]
	// A consumed record's row: its original topic is not its event type's.
	consumed := insertFailed(t, store.NewFailedEvents(dlPool(t, s)), tenantA, "patient.updated", "billing", time.Now(), 7)

	resp, err := c.RetryFailedEvents(callCtx(t), &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA, Ids: []string{sent.GetId(), consumed}})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRetried() != 2 || len(resp.GetResults()) != 2 {
		t.Fatalf("response %v", resp)
	}
	r0, r1 := resp.GetResults()[0], resp.GetResults()[1]
	if r0.GetEventId() != ev.GetEventId() || r0.GetTopic() != "healthtech.patient.events" || r1.GetTopic() != "healthtech.legacy.events" {
		t.Errorf("results %v", resp.GetResults())
	}

	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events")
	if len(recs) != 1 {
		t.Fatalf("%d records in the original topic, want 1", len(recs))
	}
	rec := recs[0]
	if string(rec.Value) != string(dlqRec.Value) || string(rec.Key) != string(dlqRec.Key) ||
		rec.Partition != r0.GetPartition() || rec.Offset != r0.GetOffset() {
		t.Errorf("retried record %q/%q at %d@%d; dead letter %q/%q, response %d@%d", rec.Key, rec.Value, rec.Partition, rec.Offset,
			dlqRec.Key, dlqRec.Value, r0.GetPartition(), r0.GetOffset())
	}
	// The original envelope, in order, then dlq_retry_of; none of the DLQ headers.
	var envelope []kgo.RecordHeader
	for _, h := range dlqRec.Headers {
		if !strings.HasPrefix(h.Key, "dlq_") {
			envelope = append(envelope, h)
		}
	}
	wantHeaders := append(envelope, kgo.RecordHeader{Key: "dlq_retry_of", Value: []byte(sent.GetId())})
	if !reflect.DeepEqual(rec.Headers, wantHeaders) {
		t.Errorf("retried headers\n%v\nwant\n%v", rec.Headers, wantHeaders)
	}
	legacy := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.legacy.events")
	if len(legacy) != 1 || string(legacy[0].Value) != `{"n":7}` || string(legacy[0].Key) != tenantA {
		t.Fatalf("legacy topic: %v", legacy)
	}
	if h := recordHeaders(legacy[0]); h["ce_id"] != consumed || h["ce_type"] != "patient.updated" || h["dlq_retry_of"] != consumed {
		t.Errorf("legacy record headers %v", h)
	}

	row := readFailed(t, s, sent.GetId())
	if !row.Retried || row.RetriesPublished != 1 || row.RetriedAt == nil || row.Resolved {
		t.Errorf("row after retry %+v", row)
	}
	if v := dlMetric(t, s, `dlq_retries_total{service="eventgw",topic="healthtech.patient.events"}`); v != 1 {
		t.Errorf("dlq_retries_total{patient} = %v, want 1", v)
	}
	if v := dlMetric(t, s, `dlq_retries_total{service="eventgw",topic="healthtech.legacy.events"}`); v != 1 {
		t.Errorf("dlq_retries_total{legacy} = %v, want 1", v)
	}
	l, err := c.ListFailedEvents(callCtx(t), &eventgwv1.ListFailedEventsRequest{TenantId: tenantA, Subscription: "billing"})
	if err != nil || len(l.GetFailedEvents()) != 1 || !l.GetFailedEvents()[0].GetRetried() || l.GetFailedEvents()[0].GetRetriesPublished() != 1 {
		t.Errorf("listed after retry: %v %v", l, err)
	}

	// Resolved: no longer listed by default, and not retried (nor is the unresolved
	// row named with it).
	if _, err := c.ResolveFailedEvent(callCtx(t), &eventgwv1.ResolveFailedEventRequest{TenantId: tenantA, Id: sent.GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResolveFailedEvent(callCtx(t), &eventgwv1.ResolveFailedEventRequest{TenantId: tenantA, Id: sent.GetId()}); err != nil {
		t.Errorf("resolving again: %v", err)
	}
	_, err = c.RetryFailedEvents(callCtx(t), &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA, Ids: []string{consumed, sent.GetId()}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("retry of a resolved row: %v, want FailedPrecondition", err)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events") + topicCount(t, s.kafka.Brokers, "healthtech.legacy.events"); n != 2 {
		t.Errorf("%d records in the original topics after a refused retry, want 2", n)
	}
	if row := readFailed(t, s, consumed); row.RetriesPublished != 1 {
		t.Errorf("refused retry changed a row: %+v", row)
	}
	if row := readFailed(t, s, sent.GetId()); !row.Resolved || row.RetriesPublished != 1 {
		t.Errorf("resolved row %+v", row)
	}
	l, err = c.ListFailedEvents(callCtx(t), &eventgwv1.ListFailedEventsRequest{TenantId: tenantA})
	if err != nil || len(l.GetFailedEvents()) != 1 || l.GetFailedEvents()[0].GetId() != consumed {
		t.Errorf("unresolved list: %v %v", l, err)
	}
	_, err = c.ResolveFailedEvent(callCtx(t), &eventgwv1.ResolveFailedEventRequest{TenantId: tenantA, Id: uuid.NewString()})
	if status.Code(err) != codes.NotFound {
		t.Errorf("resolve of an unknown id: %v, want NotFound", err)
	}
}

// Bad requests are InvalidArgument naming the field, and write nothing.
func TestDeadLetterBadInputWritesNothing(t *testing.T) {
	s := startSidecar(t, nil)
	c := dlClient(s)
	ctx := callCtx(t)
	good := func() *eventgwv1.SendToDeadLetterRequest {
		return &eventgwv1.SendToDeadLetterRequest{Event: dlEvent(t, tenantA, "patient.created"), ErrorType: "E", ErrorMessage: "m"}
	}
	many := make(map[string]string, 33)
	for i := range 33 {
		many["k"+strconv.Itoa(i)] = "v"
	}
	manyIDs := make([]string, 1001)
	for i := range manyIDs {
		manyIDs[i] = uuid.NewString()
	}
	id := uuid.NewString()
	sends := []struct {
		name, field string
		mutate      func(*eventgwv1.SendToDeadLetterRequest)
	}{
		{"no event", "event", func(r *eventgwv1.SendToDeadLetterRequest) { r.Event = nil }},
		{"bad tenant", "event.tenant_id", func(r *eventgwv1.SendToDeadLetterRequest) { r.Event.TenantId = "tenant-a" }},
		{"bad event type", "event.event_type", func(r *eventgwv1.SendToDeadLetterRequest) { r.Event.EventType = "Patient Created" }},
		{"no payload", "event.payload", func(r *eventgwv1.SendToDeadLetterRequest) { r.Event.Data = nil }},
		{"no error type", "error_type", func(r *eventgwv1.SendToDeadLetterRequest) { r.ErrorType = "" }},
		{"long error type", "error_type", func(r *eventgwv1.SendToDeadLetterRequest) { r.ErrorType = strings.Repeat("E", 256) }},
		{"oversize error message", "error_message", func(r *eventgwv1.SendToDeadLetterRequest) { r.ErrorMessage = strings.Repeat("é", 4097) }},
		{"NUL in error message", "error_message", func(r *eventgwv1.SendToDeadLetterRequest) { r.ErrorMessage = "a\x00b" }},
		{"negative retry count", "retry_count", func(r *eventgwv1.SendToDeadLetterRequest) { r.RetryCount = -1 }},
		{"bad metadata key", "metadata", func(r *eventgwv1.SendToDeadLetterRequest) { r.Metadata = map[string]string{"Bad-Key": "v"} }},
		{"reserved metadata key", "metadata", func(r *eventgwv1.SendToDeadLetterRequest) { r.Metadata = map[string]string{"subscription": "v"} }},
		{"long metadata value", "metadata", func(r *eventgwv1.SendToDeadLetterRequest) {
			r.Metadata = map[string]string{"service": strings.Repeat("v", 1025)}
		}},
		{"too much metadata", "metadata", func(r *eventgwv1.SendToDeadLetterRequest) { r.Metadata = many }},
	}
	for _, tc := range sends {
		req := good()
		tc.mutate(req)
		_, err := c.SendToDeadLetter(ctx, req)
		assertInvalid(t, "SendToDeadLetter: "+tc.name, err, tc.field)
	}
	lists := []struct {
		name, field string
		req         *eventgwv1.ListFailedEventsRequest
	}{
		{"no tenant", "tenant_id", &eventgwv1.ListFailedEventsRequest{}},
		{"bad tenant", "tenant_id", &eventgwv1.ListFailedEventsRequest{TenantId: "acme"}},
		{"huge page size", "page_size", &eventgwv1.ListFailedEventsRequest{TenantId: tenantA, PageSize: 1001}},
		{"negative page size", "page_size", &eventgwv1.ListFailedEventsRequest{TenantId: tenantA, PageSize: -1}},
		{"malformed page token", "page_token", &eventgwv1.ListFailedEventsRequest{TenantId: tenantA, PageToken: "not-a-token"}},
		{"forged page token", "page_token", &eventgwv1.ListFailedEventsRequest{
			TenantId: tenantA, PageToken: base64.RawURLEncoding.EncodeToString([]byte("v2:2025-01-01:" + id)),
		}},
		{"empty time range", "failed_before", &eventgwv1.ListFailedEventsRequest{
			TenantId: tenantA, FailedAfter: timestamppb.New(time.Now()), FailedBefore: timestamppb.New(time.Now().Add(-time.Hour)),
		}},
		{"control character in filter", "subscription", &eventgwv1.ListFailedEventsRequest{TenantId: tenantA, Subscription: "a\nb"}},
	}
	for _, tc := range lists {
		_, err := c.ListFailedEvents(ctx, tc.req)
		assertInvalid(t, "ListFailedEvents: "+tc.name, err, tc.field)
	}
	retries := []struct {
		name, field string
		req         *eventgwv1.RetryFailedEventsRequest
	}{
		{"bad tenant", "tenant_id", &eventgwv1.RetryFailedEventsRequest{TenantId: "x", Ids: []string{id}}},
		{"bad id", "ids[1]", &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA, Ids: []string{id, "nope"}}},
		{"no ids", "ids", &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA}},
		{"too many ids", "ids", &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA, Ids: manyIDs}},
		{"repeated id", "ids[1]", &eventgwv1.RetryFailedEventsRequest{TenantId: tenantA, Ids: []string{id, id}}},
	}
	for _, tc := range retries {
		_, err := c.RetryFailedEvents(ctx, tc.req)
		assertInvalid(t, "RetryFailedEvents: "+tc.name, err, tc.field)
	}
	_, err := c.ResolveFailedEvent(ctx, &eventgwv1.ResolveFailedEventRequest{TenantId: tenantA, Id: "42"})
	assertInvalid(t, "ResolveFailedEvent: bad id", err, "id")
	_, err = c.ResolveFailedEvent(ctx, &eventgwv1.ResolveFailedEventRequest{TenantId: "", Id: id})
	assertInvalid(t, "ResolveFailedEvent: no tenant", err, "tenant_id")

	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM failed_events`); n != 0 {
		t.Errorf("%d failed_events rows written by bad requests", n)
	}
	for _, topic := range []string{"healthtech.dlq.patient", "healthtech.patient.events"} {
		if n := topicCount(t, s.kafka.Brokers, topic); n != 0 {
			t.Errorf("%d records in %s written by bad requests", n, topic)
		}
	}
	if v := dlMetric(t, s, `dlq_messages_total{service="eventgw",topic="healthtech.dlq.patient"}`); v != 0 {
		t.Errorf("dlq_messages_total = %v", v)
	}
	// The same requests, made good, succeed: the checks above refused only what was bad.
	if _, err := c.SendToDeadLetter(ctx, good()); err != nil {
		t.Errorf("good request: %v", err)
	}
}
