package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

const tenantB = "0c9e8d7f-6a5b-4c3d-8e2f-1a0b9c8d7e6f"

func exact(v int64) *eventgwv1.ExpectedVersion {
	return &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_Exact{Exact: v}}
}

var (
	anyVersion = &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_Any{Any: &emptypb.Empty{}}}
	noStream   = &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_NoStream{NoStream: &emptypb.Empty{}}}
)

func newEv(t *testing.T, typ string, data map[string]any) *eventgwv1.NewEvent {
	return &eventgwv1.NewEvent{EventType: typ, Body: &eventgwv1.NewEvent_Data{Data: mustStruct(t, data)}}
}

func appendReq(tenant, agg string, ev *eventgwv1.ExpectedVersion, events ...*eventgwv1.NewEvent) *eventgwv1.AppendEventsRequest {
	return &eventgwv1.AppendEventsRequest{TenantId: tenant, AggregateType: "Patient", AggregateId: agg, ExpectedVersion: ev, Events: events}
}

func readAll(t *testing.T, s *sidecar, tenant, agg string) []*eventgwv1.StoredEvent {
	t.Helper()
	st, err := s.store.ReadAggregate(callCtx(t), &eventgwv1.ReadAggregateRequest{TenantId: tenant, AggregateId: agg})
	if err != nil {
		t.Fatal(err)
	}
	return drain(t, st.Recv)
}

// drain collects the events of every page of a stream until it ends.
func drain[R interface {
	GetEvents() []*eventgwv1.StoredEvent
}](t *testing.T, recv func() (R, error)) []*eventgwv1.StoredEvent {
	t.Helper()
	var out []*eventgwv1.StoredEvent
	for {
		r, err := recv()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		out = append(out, r.GetEvents()...)
	}
}

func dbCount(t *testing.T, dbURL, sql string, args ...any) int64 {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAppendLoadAndMergePatchFold(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	agg := uuid.NewString()
	r, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream,
		newEv(t, "patient.created", map[string]any{
			"first_name": "John", "last_name": "Doe", "email": "john@example.com",
			"address": map[string]any{"city": "Oslo", "zip": "0150"},
		}),
		newEv(t, "patient.updated", map[string]any{"email": "jd@example.com", "phone": "555"}),
	))
	if err != nil {
		t.Fatal(err)
	}
	if r.GetVersion() != 2 || len(r.GetPositions()) != 2 || r.GetPositions()[0] >= r.GetPositions()[1] || len(r.GetEventIds()) != 2 {
		t.Fatalf("append: %v", r)
	}
	r, err = s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(2),
		newEv(t, "patient.updated", map[string]any{"phone": nil, "address": map[string]any{"zip": nil, "street": "Main 1"}})))
	if err != nil || r.GetVersion() != 3 {
		t.Fatalf("append 2: %v %v", r, err)
	}
	l, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"first_name": "John", "last_name": "Doe", "email": "jd@example.com",
		"address": map[string]any{"city": "Oslo", "street": "Main 1"},
	}
	if !reflect.DeepEqual(l.GetState().AsMap(), want) || l.GetVersion() != 3 || l.GetEventsFolded() != 3 || l.GetAggregateType() != "Patient" {
		t.Fatalf("load: %v, want state %v", l, want)
	}
	evs := readAll(t, s, tenantA, agg)
	if len(evs) != 3 || evs[2].GetVersion() != 3 || evs[0].GetData().AsMap()["first_name"] != "John" {
		t.Fatalf("read: %v", evs)
	}
	// Conflict: Aborted with the current version in the details.
	_, err = s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(1), newEv(t, "patient.updated", map[string]any{"x": 1.0})))
	assertConflict(t, err, 3)
	_, err = s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, newEv(t, "patient.updated", map[string]any{"x": 1.0})))
	assertConflict(t, err, 3)
	// Another aggregate type on the same id is refused.
	req := appendReq(tenantA, agg, anyVersion, newEv(t, "patient.updated", map[string]any{}))
	req.AggregateType = "Appointment"
	if _, err := s.store.AppendEvents(ctx, req); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("aggregate type change: %v", err)
	}
}

func assertConflict(t *testing.T, err error, current int64) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.Aborted {
		t.Fatalf("code %v (%v), want Aborted", st.Code(), err)
	}
	for _, d := range st.Details() {
		if vc, ok := d.(*eventgwv1.VersionConflict); ok {
			if vc.GetCurrentVersion() != current {
				t.Errorf("current version %d in details, want %d", vc.GetCurrentVersion(), current)
			}
			return
		}
	}
	t.Errorf("no VersionConflict detail in %v", st)
}

func TestConcurrentWritersOneWinnerPerVersion(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.DBMaxConns = 32 })
	ctx := callCtx(t)
	// All racing to create the aggregate: exactly one wins.
	agg := uuid.NewString()
	var wins, conflicts atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(0), newEv(t, "patient.created", map[string]any{})))
			switch status.Code(err) {
			case codes.OK:
				wins.Add(1)
			case codes.Aborted:
				conflicts.Add(1)
			default:
				t.Errorf("unexpected: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != 15 {
		t.Fatalf("%d winners and %d conflicts creating one aggregate, want 1 and 15", wins.Load(), conflicts.Load())
	}
	// Writers that read the version, append at it, and retry on conflict.
	const writers, each = 8, 15
	conflicts.Store(0)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; {
				l, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg, Raw: true})
				if err != nil {
					t.Error(err)
					return
				}
				_, err = s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(l.GetVersion()),
					newEv(t, "patient.updated", map[string]any{"writer": float64(w), "i": float64(i)})))
				if status.Code(err) == codes.Aborted {
					conflicts.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				i++
			}
		}()
	}
	wg.Wait()
	evs := readAll(t, s, tenantA, agg)
	if len(evs) != 1+writers*each {
		t.Fatalf("%d events, want %d", len(evs), 1+writers*each)
	}
	seen := map[string]bool{}
	for i, e := range evs {
		if e.GetVersion() != int64(i+1) {
			t.Fatalf("event %d has version %d: gap or duplicate", i, e.GetVersion())
		}
		if i > 0 && e.GetPosition() <= evs[i-1].GetPosition() {
			t.Fatalf("version %d at position %d, not after version %d at %d", e.GetVersion(), e.GetPosition(), evs[i-1].GetVersion(), evs[i-1].GetPosition())
		}
		k := fmt.Sprint(e.GetData().AsMap())
		if i > 0 && seen[k] {
			t.Fatalf("duplicate write %s", k)
		}
		seen[k] = true
	}
	if conflicts.Load() == 0 {
		t.Error("no conflict happened: the writers did not race")
	}
	t.Logf("%d appends, %d conflicts retried", writers*each, conflicts.Load())
}

func TestIdempotentAppend(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	agg, other := uuid.NewString(), uuid.NewString()
	id1, id2 := uuid.NewString(), uuid.NewString()
	mk := func() *eventgwv1.AppendEventsRequest {
		e1 := newEv(t, "patient.created", map[string]any{"a": 1.0})
		e1.EventId = id1
		e2 := newEv(t, "patient.updated", map[string]any{"b": 2.0})
		e2.EventId = id2
		return appendReq(tenantA, agg, noStream, e1, e2)
	}
	first, err := s.store.AppendEvents(ctx, mk())
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.store.AppendEvents(ctx, mk()) // a retry after a lost answer
	if err != nil {
		t.Fatalf("retry refused: %v", err)
	}
	if again.GetVersion() != first.GetVersion() || !reflect.DeepEqual(again.GetPositions(), first.GetPositions()) {
		t.Errorf("retry answered %v, first %v", again, first)
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM stored_events`); n != 2 {
		t.Errorf("%d events stored after a retry, want 2", n)
	}
	// The same id on another aggregate is refused.
	req := mk()
	req.AggregateId = other
	if _, err := s.store.AppendEvents(ctx, req); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same id on another aggregate: %v", err)
	}
	// A mix of stored and new ids is refused.
	req = mk()
	req.ExpectedVersion = anyVersion
	req.Events[1].EventId = uuid.NewString()
	if _, err := s.store.AppendEvents(ctx, req); status.Code(err) != codes.AlreadyExists {
		t.Errorf("partial duplicate: %v", err)
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM stored_events`); n != 2 {
		t.Errorf("%d events stored, want 2", n)
	}
}

func TestTenantIsolation(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	agg := uuid.NewString()
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, newEv(t, "patient.created", map[string]any{"name": "A's patient"}))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantB, uuid.NewString(), noStream, newEv(t, "patient.created", map[string]any{"name": "B's patient"}))); err != nil {
		t.Fatal(err)
	}
	_, err := s.store.AppendEvents(ctx, appendReq(tenantB, agg, anyVersion, newEv(t, "patient.updated", map[string]any{})))
	if status.Code(err) != codes.NotFound {
		t.Errorf("append to another tenant's aggregate: %v", err)
	}
	if _, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantB, AggregateId: agg}); status.Code(err) != codes.NotFound {
		t.Errorf("load: %v", err)
	}
	st, _ := s.store.ReadAggregate(ctx, &eventgwv1.ReadAggregateRequest{TenantId: tenantB, AggregateId: agg})
	if _, err := st.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("read: %v", err)
	}
	if _, err := s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{
		TenantId: tenantB, AggregateId: agg, Version: 1,
		State: mustStruct(t, map[string]any{}),
	}); status.Code(err) != codes.NotFound {
		t.Errorf("snapshot: %v", err)
	}
	for _, e := range replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantB}) {
		if e.GetTenantId() != tenantB {
			t.Errorf("tenant B's replay returned %s's event", e.GetTenantId())
		}
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM stored_events WHERE aggregate_id = $1`, agg); n != 1 {
		t.Errorf("%d events on A's aggregate, want 1", n)
	}
}

func replayAll(t *testing.T, s *sidecar, req *eventgwv1.ReplayEventsRequest) []*eventgwv1.StoredEvent {
	t.Helper()
	st, err := s.store.ReplayEvents(callCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	return drain(t, st.Recv)
}

func TestAppendBadInputWritesNothing(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.MaxEventBytes = 1024; c.MaxBatch = 5 })
	ctx := callCtx(t)
	good := func() *eventgwv1.AppendEventsRequest {
		return appendReq(tenantA, uuid.NewString(), anyVersion, newEv(t, "patient.created", map[string]any{"a": 1.0}))
	}
	with := func(f func(r *eventgwv1.AppendEventsRequest)) *eventgwv1.AppendEventsRequest {
		r := good()
		f(r)
		return r
	}
	big := make([]*eventgwv1.NewEvent, 6)
	for i := range big {
		big[i] = newEv(t, "patient.created", map[string]any{})
	}
	dup := uuid.NewString()
	cases := map[string]struct {
		req   *eventgwv1.AppendEventsRequest
		field string
	}{
		"tenant":            {with(func(r *eventgwv1.AppendEventsRequest) { r.TenantId = "t1" }), "tenant_id"},
		"aggregate id":      {with(func(r *eventgwv1.AppendEventsRequest) { r.AggregateId = "patient-1" }), "aggregate_id"},
		"aggregate type":    {with(func(r *eventgwv1.AppendEventsRequest) { r.AggregateType = "Pat ient" }), "aggregate_type"},
		"no aggregate type": {with(func(r *eventgwv1.AppendEventsRequest) { r.AggregateType = "" }), "aggregate_type"},
		"no expected":       {with(func(r *eventgwv1.AppendEventsRequest) { r.ExpectedVersion = nil }), "expected_version"},
		"empty expected":    {with(func(r *eventgwv1.AppendEventsRequest) { r.ExpectedVersion = &eventgwv1.ExpectedVersion{} }), "expected_version"},
		"negative expected": {with(func(r *eventgwv1.AppendEventsRequest) { r.ExpectedVersion = exact(-3) }), "expected_version.exact"},
		"no events":         {with(func(r *eventgwv1.AppendEventsRequest) { r.Events = nil }), "events"},
		"too many events":   {with(func(r *eventgwv1.AppendEventsRequest) { r.Events = big }), "events"},
		"event type":        {with(func(r *eventgwv1.AppendEventsRequest) { r.Events[0].EventType = "PatientCreated" }), "events[0].event_type"},
		"event id":          {with(func(r *eventgwv1.AppendEventsRequest) { r.Events[0].EventId = "1" }), "events[0].event_id"},
		"no data":           {with(func(r *eventgwv1.AppendEventsRequest) { r.Events[0].Body = nil }), "events[0].data"},
		"data json not obj": {with(func(r *eventgwv1.AppendEventsRequest) {
			r.Events[0].Body = &eventgwv1.NewEvent_DataJson{DataJson: []byte(`"x"`)}
		}), "events[0].data_json"},
		"data too big": {with(func(r *eventgwv1.AppendEventsRequest) {
			r.Events[0] = newEv(t, "patient.created", map[string]any{"x": string(make([]byte, 2000))})
		}), "events[0].data"},
		"metadata key": {with(func(r *eventgwv1.AppendEventsRequest) { r.Events[0].Metadata = map[string]string{"Bad Key": "v"} }), "events[0].metadata"},
		"metadata key reserved once published": {with(func(r *eventgwv1.AppendEventsRequest) {
			r.Events[0].Metadata = map[string]string{"tenant_id": "v"}
		}), "events[0].metadata"},
		"metadata key too long once published": {with(func(r *eventgwv1.AppendEventsRequest) {
			r.Events[0].Metadata = map[string]string{"clinical_trial_enrolment_site": "v"}
		}), "events[0].metadata"},
		"duplicate ids": {with(func(r *eventgwv1.AppendEventsRequest) {
			r.Events = []*eventgwv1.NewEvent{newEv(t, "patient.created", map[string]any{}), newEv(t, "patient.updated", map[string]any{})}
			r.Events[0].EventId, r.Events[1].EventId = dup, dup
		}), "events[1].event_id"},
		"bad occurred_at": {with(func(r *eventgwv1.AppendEventsRequest) {
			r.Events[0].OccurredAt = &timestamppb.Timestamp{Seconds: -1 << 60}
		}), "events[0].occurred_at"},
	}
	for name, tc := range cases {
		_, err := s.store.AppendEvents(ctx, tc.req)
		assertInvalid(t, name, err, tc.field)
	}
	// The message names the attribute the key would collide with, not the key the
	// client sent (a client's key is never echoed).
	_, err := s.store.AppendEvents(ctx, cases["metadata key reserved once published"].req)
	if msg := status.Convert(err).Message(); strings.Contains(msg, "tenant_id") || !strings.Contains(msg, "ce_tenantid") {
		t.Errorf("reserved metadata key: message %q should name ce_tenantid and not echo the key", msg)
	}
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM stored_events`); n != 0 {
		t.Errorf("%d events written by refused appends", n)
	}
	// Reads validate too.
	if _, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("load with bad id: %v", err)
	}
	st, _ := s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, EventTypes: []string{"Bad"}})
	if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("replay with bad type: %v", err)
	}
}

// foldFromZero folds events' data from nothing, by an independent model of RFC 7386
// on Go values (the gateway's fold works on JSON text).
func foldFromZero(evs []*eventgwv1.StoredEvent) map[string]any {
	var state any = map[string]any{}
	for _, e := range evs {
		state = mergeModel(state, e.GetData().AsMap())
	}
	return state.(map[string]any)
}

func mergeModel(target, patch any) any {
	p, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	t, ok := target.(map[string]any)
	if !ok {
		t = map[string]any{}
	}
	for k, v := range p {
		if v == nil {
			delete(t, k)
			continue
		}
		t[k] = mergeModel(t[k], v)
	}
	return t
}

func TestSnapshotsAndFoldEqualFoldFromZero(t *testing.T) {
	s := startSidecar(t, nil) // --snapshot-every 100 by default
	ctx := callCtx(t)
	agg := uuid.NewString()
	rng := rand.New(rand.NewPCG(1, 2))
	version := int64(0)
	for version < 250 {
		var evs []*eventgwv1.NewEvent
		for range 1 + rng.IntN(20) {
			patch := map[string]any{"k" + strconv.Itoa(rng.IntN(30)): float64(rng.IntN(1000))}
			if rng.IntN(5) == 0 {
				patch["k"+strconv.Itoa(rng.IntN(30))] = nil
			}
			if rng.IntN(4) == 0 {
				patch["nested"] = map[string]any{"n" + strconv.Itoa(rng.IntN(5)): "v" + strconv.Itoa(rng.IntN(9))}
			}
			evs = append(evs, newEv(t, "patient.updated", patch))
		}
		r, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(version), evs...))
		if err != nil {
			t.Fatal(err)
		}
		version = r.GetVersion()
	}
	// Automatic snapshots are written in the background: wait for the one at or after 200.
	deadline := time.Now().Add(10 * time.Second)
	var l *eventgwv1.LoadAggregateResponse
	for {
		var err error
		l, err = s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg})
		if err != nil {
			t.Fatal(err)
		}
		if l.GetSnapshotVersion() >= 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l.GetSnapshotVersion() < 200 || l.GetEventsFolded() >= 100 || l.GetSnapshotVersion()+l.GetEventsFolded() != version {
		t.Fatalf("snapshot version %d, %d events folded, version %d", l.GetSnapshotVersion(), l.GetEventsFolded(), version)
	}
	// One snapshot per crossing of a multiple of 100, taken at the version the aggregate
	// has when the background job runs (so two crossings may share one snapshot).
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM aggregate_snapshots WHERE aggregate_id = $1`, agg); n < 1 {
		t.Errorf("%d automatic snapshots", n)
	}
	want := foldFromZero(readAll(t, s, tenantA, agg))
	if got := l.GetState().AsMap(); !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot + fold differs from fold from zero:\n got %v\nwant %v", got, want)
	}
	// Raw: snapshot state and the tail (two more events make sure there is one).
	r, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(version),
		newEv(t, "patient.updated", map[string]any{"tail": 1.0}), newEv(t, "patient.updated", map[string]any{"tail": 2.0})))
	if err != nil {
		t.Fatal(err)
	}
	version = r.GetVersion()
	raw, err := s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg, Raw: true, DataAsJson: true})
	if err != nil {
		t.Fatal(err)
	}
	tail := raw.GetEvents()
	if len(tail) != int(version-raw.GetSnapshotVersion()) || len(tail) < 2 || len(raw.GetStateJson()) == 0 ||
		string(tail[len(tail)-1].GetDataJson()) != `{"tail": 2}` {
		t.Fatalf("raw load: snapshot at %d, %d events after it, version %d", raw.GetSnapshotVersion(), len(tail), version)
	}
	// SaveSnapshot: a client state at an existing version newer than the latest is kept;
	// a missing or older version is refused.
	state := mustStruct(t, map[string]any{"client": "state"})
	if _, err := s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: tenantA, AggregateId: agg, Version: version + 1, State: state}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("snapshot past the version: %v", err)
	}
	if _, err := s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: tenantA, AggregateId: agg, Version: 50, State: state}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("snapshot older than the latest: %v", err)
	}
	if _, err := s.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: tenantA, AggregateId: agg, Version: version, State: state}); err != nil {
		t.Fatalf("snapshot at the current version: %v", err)
	}
	l, _ = s.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantA, AggregateId: agg})
	if l.GetSnapshotVersion() != version || l.GetEventsFolded() != 0 || l.GetState().AsMap()["client"] != "state" {
		t.Errorf("load after SaveSnapshot: %v", l)
	}
}

func TestReplayFiltersAndResume(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	type rec struct {
		tenant, aggType, typ string
		at                   time.Time
	}
	var all []rec
	for i := range 60 {
		r := rec{
			tenant: []string{tenantA, tenantB}[i%2], aggType: []string{"Patient", "Appointment"}[i%3%2],
			typ: []string{"patient.created", "patient.updated", "appointment.booked"}[i%3], at: base.Add(time.Duration(i) * time.Hour),
		}
		ev := newEv(t, r.typ, map[string]any{"i": float64(i)})
		ev.OccurredAt = timestamppb.New(r.at)
		req := appendReq(r.tenant, uuid.NewString(), noStream, ev)
		req.AggregateType = r.aggType
		if _, err := s.store.AppendEvents(ctx, req); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	check := func(name string, req *eventgwv1.ReplayEventsRequest, keep func(rec) bool) {
		t.Helper()
		got := replayAll(t, s, req)
		var want []float64
		for i, r := range all {
			if keep(r) {
				want = append(want, float64(i))
			}
		}
		var gotI []float64
		for i, e := range got {
			gotI = append(gotI, e.GetData().AsMap()["i"].(float64))
			if i > 0 && e.GetPosition() <= got[i-1].GetPosition() {
				t.Errorf("%s: positions not increasing", name)
			}
		}
		if !reflect.DeepEqual(gotI, want) {
			t.Errorf("%s: got %v, want %v", name, gotI, want)
		}
	}
	check("tenant", &eventgwv1.ReplayEventsRequest{TenantId: tenantA}, func(r rec) bool { return r.tenant == tenantA })
	check("types", &eventgwv1.ReplayEventsRequest{TenantId: tenantA, EventTypes: []string{"patient.created", "appointment.booked"}},
		func(r rec) bool { return r.tenant == tenantA && r.typ != "patient.updated" })
	check("aggregate type", &eventgwv1.ReplayEventsRequest{TenantId: tenantB, AggregateType: "Appointment"},
		func(r rec) bool { return r.tenant == tenantB && r.aggType == "Appointment" })
	from, to := base.Add(10*time.Hour), base.Add(40*time.Hour)
	check("time range", &eventgwv1.ReplayEventsRequest{TenantId: tenantA, FromTime: timestamppb.New(from), ToTime: timestamppb.New(to)},
		func(r rec) bool { return r.tenant == tenantA && !r.at.Before(from) && r.at.Before(to) })
	// Resume: a first page with a limit, then from its last position.
	first := replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, Limit: 7})
	rest := replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, AfterPosition: first[len(first)-1].GetPosition()})
	whole := replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA})
	if len(first) != 7 || len(first)+len(rest) != len(whole) || rest[0].GetEventId() != whole[7].GetEventId() {
		t.Errorf("resume: %d + %d events, whole %d", len(first), len(rest), len(whole))
	}
}

// TestReplayIsGapSafe holds an append's transaction open (it has a low position) while
// later appends commit: replay must stop below it, and after it commits a resumed replay
// must deliver it and everything after, skipping nothing.
func TestReplayIsGapSafe(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, uuid.NewString(), noStream, newEv(t, "patient.created", map[string]any{"n": 0.0}))); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// An append whose transaction stays open: its position comes from its xid, which is
	// lower than those of the appends that follow.
	held := uuid.NewString()
	var heldPos []int64
	if err := tx.QueryRow(ctx, `INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version, event_type,
		event_data, occurred_at, position) VALUES ($1, $2, 'Patient', $3, 1, 'patient.created', '{"n": "held"}', now(),
		pg_current_xact_id()::text::bigint << 10) RETURNING ARRAY[position]`, held, tenantA, uuid.NewString()).Scan(&heldPos); err != nil {
		t.Fatal(err)
	}
	var later []int64
	for i := range 5 {
		r, err := s.store.AppendEvents(ctx, appendReq(tenantA, uuid.NewString(), noStream, newEv(t, "patient.created", map[string]any{"n": float64(i + 1)})))
		if err != nil {
			t.Fatal(err)
		}
		later = append(later, r.GetPositions()[0])
	}
	if later[0] <= heldPos[0] {
		t.Fatalf("later appends got positions %v, not above the held one %d", later, heldPos[0])
	}
	before := replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA})
	for _, e := range before {
		if e.GetPosition() >= heldPos[0] {
			t.Fatalf("replay delivered position %d past the open transaction at %d", e.GetPosition(), heldPos[0])
		}
	}
	if len(before) != 1 {
		t.Fatalf("replay before commit: %d events, want the 1 committed before the open transaction", len(before))
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	after := replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, AfterPosition: before[len(before)-1].GetPosition()})
	if len(after) != 6 || after[0].GetEventId() != held {
		t.Fatalf("resumed replay: %d events, first %v; want the held event then 5", len(after), after)
	}
}

// outboxRecords reads the events of topic, grouped by aggregate in Kafka order.
func outboxRecords(t *testing.T, brokers []string, topic string) map[string][]int64 {
	t.Helper()
	byAgg := map[string][]int64{}
	for _, r := range testenv.ConsumeAll(t, brokers, topic) {
		agg, _ := header(r, "ce_subject")
		v, _ := header(r, "ce_aggregateversion")
		n, _ := strconv.ParseInt(v, 10, 64)
		if string(r.Key) != agg {
			t.Errorf("key %q is not the aggregate id %q", r.Key, agg)
		}
		byAgg[agg] = append(byAgg[agg], n)
	}
	return byAgg
}

const backlogSQL = `SELECT count(*) FROM stored_events WHERE position > (SELECT position FROM outbox_cursor)`

// waitOutboxEmpty waits until every appended event was acknowledged by Kafka.
func waitOutboxEmpty(t *testing.T, dbURL string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for dbCount(t, dbURL, backlogSQL) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("outbox not drained within %v: %d left", within, dbCount(t, dbURL, backlogSQL))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkInOrder(t *testing.T, byAgg map[string][]int64, want map[string]int64, exactlyOnce bool) {
	t.Helper()
	for agg, n := range want {
		got := byAgg[agg]
		// At least once: a version seen before is a copy (an error only when exactly
		// once is expected); the first copies must come in version order.
		var dedup []int64
		seen := map[int64]bool{}
		for _, v := range got {
			if seen[v] {
				if exactlyOnce {
					t.Errorf("aggregate %s: version %d twice in Kafka (%v)", agg, v, got)
				}
				continue
			}
			if len(dedup) > 0 && v < dedup[len(dedup)-1] {
				t.Errorf("aggregate %s: version %d after %d in Kafka (%v)", agg, v, dedup[len(dedup)-1], got)
			}
			seen[v] = true
			dedup = append(dedup, v)
		}
		if int64(len(dedup)) != n || (n > 0 && dedup[n-1] != n) {
			t.Errorf("aggregate %s: Kafka has versions %v, want 1..%d", agg, got, n)
		}
	}
}

func appendMany(t *testing.T, s *sidecar, aggs []string, rounds int, counts map[string]int64) {
	t.Helper()
	ctx := callCtx(t)
	for range rounds {
		for _, agg := range aggs {
			r, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, exact(counts[agg]),
				newEv(t, "patient.updated", map[string]any{"v": float64(counts[agg] + 1)})))
			if err != nil {
				t.Fatalf("append while Kafka is down must succeed: %v", err)
			}
			counts[agg] = r.GetVersion()
		}
	}
}

func TestOutboxPublishesInOrderThroughOutageAndRestart(t *testing.T) {
	d := newDeps(t)
	s := startOn(t, d, nil)
	aggs := []string{uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()}
	counts := map[string]int64{}
	appendMany(t, s, aggs, 5, counts)
	waitOutboxEmpty(t, d.dbURL, 10*time.Second)
	checkInOrder(t, outboxRecords(t, d.kafka.Brokers, "healthtech.patient.events"), counts, true)

	// Kafka goes down: produce requests fail (the broker drops the connection).
	var down atomic.Bool
	down.Store(true)
	d.kafka.Cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		d.kafka.Cluster.KeepControl()
		if down.Load() {
			return nil, errors.New("injected outage"), true
		}
		return nil, nil, false
	})
	appendMany(t, s, aggs, 5, counts)
	time.Sleep(300 * time.Millisecond)
	if n := dbCount(t, d.dbURL, backlogSQL); n == 0 {
		t.Fatal("the outbox emptied while Kafka was down: the outage was not simulated")
	}
	// The sidecar is restarted while Kafka is still down; a new one takes over.
	s.shutdown()
	s2 := startOn(t, d, nil)
	appendMany(t, s2, aggs, 3, counts)
	backlog := dbCount(t, d.dbURL, backlogSQL)
	down.Store(false)
	waitOutboxEmpty(t, d.dbURL, 30*time.Second)
	t.Logf("backlog of %d events drained after the outage", backlog)
	checkInOrder(t, outboxRecords(t, d.kafka.Brokers, "healthtech.patient.events"), counts, false)
	body := httpGet(t, "http://"+s2.app.HTTPAddr()+"/metrics")
	if !containsLine(body, "outbox_backlog_events") {
		t.Error("outbox_backlog_events not exported")
	}
}

func containsLine(body, prefix string) bool {
	for _, l := range splitLines(body) {
		if len(l) >= len(prefix) && l[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// TestTwoSidecarsPublishEachEventOnce runs two sidecars on one database: in the healthy
// case every appended event reaches Kafka exactly once, in version order per aggregate.
func TestTwoSidecarsPublishEachEventOnce(t *testing.T) {
	d := newDeps(t)
	a := startOn(t, d, nil)
	b := startOn(t, d, nil)
	deadline := time.Now().Add(10 * time.Second)
	for !a.app.Relay.Active() && !b.app.Relay.Active() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(1500 * time.Millisecond) // both have tried to take the relay lock
	if a.app.Relay.Active() == b.app.Relay.Active() {
		t.Fatalf("relay active on a: %v, on b: %v; want exactly one", a.app.Relay.Active(), b.app.Relay.Active())
	}
	var aggs []string
	for range 20 {
		aggs = append(aggs, uuid.NewString())
	}
	counts := map[string]int64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, side := range []*sidecar{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := callCtx(t)
			for round := range 10 {
				for j, agg := range aggs {
					if (j+round+i)%2 != 0 {
						continue
					}
					_, err := side.store.AppendEvents(ctx, appendReq(tenantA, agg, anyVersion, newEv(t, "patient.updated", map[string]any{})))
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					counts[agg]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	waitOutboxEmpty(t, d.dbURL, 15*time.Second)
	byAgg := outboxRecords(t, d.kafka.Brokers, "healthtech.patient.events")
	checkInOrder(t, byAgg, counts, true)
	total := 0
	for _, v := range byAgg {
		total += len(v)
	}
	var want int64
	for _, n := range counts {
		want += n
	}
	if int64(total) != want {
		t.Errorf("%d records in Kafka for %d appended events", total, want)
	}
}

// ReplayEvents with target_topic republishes the replayed events to that topic (to
// rebuild a projection), acknowledged before each page is streamed.
func TestReplayIntoTopic(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	for i := range 5 {
		if _, err := s.store.AppendEvents(ctx, appendReq(tenantA, uuid.NewString(), noStream,
			newEv(t, "patient.created", map[string]any{"i": float64(i)}))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.store.AppendEvents(ctx, appendReq(tenantB, uuid.NewString(), noStream,
		newEv(t, "patient.created", map[string]any{"other": "tenant"}))); err != nil {
		t.Fatal(err)
	}
	const target = "healthtech.patient_rebuild.events"
	got := replayAll(t, s, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, TargetTopic: target})
	if len(got) != 5 {
		t.Fatalf("replayed %d events, want 5", len(got))
	}
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, target)
	if len(recs) != 5 {
		t.Fatalf("%d records in the target topic, want 5", len(recs))
	}
	for i, r := range recs {
		if tid, _ := header(r, "ce_tenantid"); tid != tenantA {
			t.Errorf("record %d of tenant %q", i, tid)
		}
		if v, _ := header(r, "ce_aggregateversion"); v != "1" {
			t.Errorf("record %d: aggregate version %q", i, v)
		}
	}
	// Only the gateway's own topics: never Kafka's internal ones or another application's.
	for _, bad := range []string{"bad topic!", "__consumer_offsets", "__transaction_state", "projections.patient.rebuild", "healthtech.patient"} {
		st, _ := s.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenantA, TargetTopic: bad})
		if _, err := st.Recv(); status.Code(err) != codes.InvalidArgument {
			t.Errorf("target topic %q: %v, want InvalidArgument", bad, err)
		}
	}
	if n := topicCount(t, s.kafka.Brokers, "projections.patient.rebuild"); n != 0 {
		t.Errorf("%d records written outside the gateway's namespace", n)
	}
}

// An appended event reaches Kafka in the wire format of Publish: the CloudEvents
// envelope (well-known metadata keys fill it, others become extensions), keyed by the
// aggregate id, with ce_subject and the aggregate type and version.
func TestOutboxRecordWireFormat(t *testing.T) {
	s := startSidecar(t, nil)
	ctx := callCtx(t)
	agg := uuid.NewString()
	ev := newEv(t, "patient.created", map[string]any{"first_name": "Ada"})
	ev.Metadata = map[string]string{
		"correlation_id": "corr-9", "causation_id": "cmd-3", "source_service": "prm-service",
		"user_id": "nurse-4", "clinic_site": "oslo",
	}
	r, err := s.store.AppendEvents(ctx, appendReq(tenantA, agg, noStream, ev))
	if err != nil {
		t.Fatal(err)
	}
	waitOutboxEmpty(t, s.dbURL, 10*time.Second)
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events")
	if len(recs) != 1 {
		t.Fatalf("%d records in Kafka, want 1", len(recs))
	}
	rec := recs[0]
	var value map[string]any
	if err := json.Unmarshal(rec.Value, &value); err != nil || string(rec.Key) != agg || value["first_name"] != "Ada" || len(value) != 1 {
		t.Errorf("key %q value %s (%v)", rec.Key, rec.Value, err)
	}
	id := readAll(t, s, tenantA, agg)[0].GetEventId()
	for k, want := range map[string]string{
		"ce_specversion": "1.0", "ce_id": id, "ce_type": "patient.created", "ce_source": "prm-service",
		"ce_tenantid": tenantA, "ce_subject": agg, "ce_correlationid": "corr-9", "ce_causationid": "cmd-3",
		"ce_userid": "nurse-4", "ce_clinicsite": "oslo", "ce_aggregatetype": "Patient",
		"ce_aggregateversion": "1", "content-type": "application/json",
	} {
		if got, ok := header(rec, k); !ok || got != want {
			t.Errorf("header %s = %q (present %v), want %q", k, got, ok, want)
		}
	}
	if _, ok := header(rec, "ce_time"); !ok || r.GetVersion() != 1 {
		t.Errorf("no ce_time header, or version %d", r.GetVersion())
	}
}
