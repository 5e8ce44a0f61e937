package server

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/store"
	"github.com/eventgw/eventgw/internal/validate"
)

// maxAppend is the most events one append may hold: positions leave room for 1024.
const maxAppend = 1000

// Pages of ReadAggregate and ReplayEvents: at most readPageRows / replayPageRows events,
// and at most pageBytes as encoded in the response message. The store stops a page once
// its events hold pageBytes (store.PageLimit; memory); sendPages then splits it so that
// no message passes pageBytes, unless it holds a single larger event. pageBytes is well
// below the 4 MiB that gRPC clients accept by default, also for Structs (larger than
// the JSON they come from).
const (
	readPageRows   = 500
	replayPageRows = 1000
	pageBytes      = 1 << 20
)

// Kicker wakes the outbox relay after an append commits.
type Kicker interface{ Kick() }

// EventStoreService implements eventgw.v1.EventStoreService.
type EventStoreService struct {
	eventgwv1.UnimplementedEventStoreServiceServer
	events    *store.Events
	appender  *store.Appender
	snapshots *store.Snapshotter
	pub       *publish.Publisher
	relay     Kicker
	maxEvents int
	maxBytes  int
	// replay and read bound the pages read; msgBytes the messages sent (see pageBytes).
	replay, read store.PageLimit
	msgBytes     int
	// toEvent maps a stored event to the event published for it (the outbox's mapping).
	toEvent func(*store.StoredEvent) event.Event
}

// NewEventStoreService builds the handlers.
func NewEventStoreService(events *store.Events, appender *store.Appender, snaps *store.Snapshotter, pub *publish.Publisher, relay Kicker,
	toEvent func(*store.StoredEvent) event.Event, maxBatch, maxEventBytes int,
) *EventStoreService {
	if maxBatch > maxAppend {
		maxBatch = maxAppend
	}
	return &EventStoreService{
		events: events, appender: appender, snapshots: snaps, pub: pub, relay: relay,
		maxEvents: maxBatch, maxBytes: maxEventBytes, replay: store.PageLimit{Rows: replayPageRows, Bytes: pageBytes},
		read: store.PageLimit{Rows: readPageRows, Bytes: pageBytes}, msgBytes: pageBytes, toEvent: toEvent,
	}
}

func validMetaKey(k string) bool {
	if k == "" || len(k) > 40 || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// AppendEvents implements EventStoreService.AppendEvents.
func (s *EventStoreService) AppendEvents(ctx context.Context, req *eventgwv1.AppendEventsRequest) (*eventgwv1.AppendEventsResponse, error) {
	ar, err := s.toAppend(req)
	if err != nil {
		return nil, rewriteError(err)
	}
	res, err := s.appender.Append(ctx, ar)
	if err != nil {
		return nil, rewriteError(err)
	}
	if !res.Duplicate {
		s.relay.Kick()
		s.snapshots.Appended(ar.TenantID, ar.AggregateID, res.PrevVersion, res.Version)
	}
	ids := make([]string, len(ar.Events))
	for i := range ar.Events {
		ids[i] = ar.Events[i].ID
	}
	return &eventgwv1.AppendEventsResponse{Version: res.Version, Positions: res.Positions, EventIds: ids}, nil
}

func (s *EventStoreService) toAppend(req *eventgwv1.AppendEventsRequest) (store.AppendRequest, error) {
	ar := store.AppendRequest{AggregateType: req.GetAggregateType()}
	var err error
	if ar.TenantID, err = validate.CanonicalUUID("tenant_id", req.GetTenantId()); err != nil {
		return ar, err
	}
	if err := validate.Name("aggregate_type", ar.AggregateType, 100, true); err != nil {
		return ar, err
	}
	if ar.AggregateID, err = validate.CanonicalUUID("aggregate_id", req.GetAggregateId()); err != nil {
		return ar, err
	}
	switch k := req.GetExpectedVersion().GetKind().(type) {
	case *eventgwv1.ExpectedVersion_Exact:
		if k.Exact < 0 || k.Exact > 1<<31-1 {
			return ar, validate.Errorf("expected_version.exact", "must be 0 (a new aggregate) or a version")
		}
		ar.Expected = k.Exact
	case *eventgwv1.ExpectedVersion_Any:
		ar.Expected = store.ExpectAny
	case *eventgwv1.ExpectedVersion_NoStream:
		ar.Expected = store.ExpectNoStream
	default:
		return ar, validate.Errorf("expected_version", "is required: {\"exact\": N}, {\"any\": {}} or {\"no_stream\": {}}")
	}
	evs := req.GetEvents()
	if len(evs) == 0 {
		return ar, validate.Errorf("events", "is empty: append at least one event")
	}
	if len(evs) > s.maxEvents {
		return ar, validate.Errorf("events", "has %d events, over the limit of %d", len(evs), s.maxEvents)
	}
	now := time.Now().UTC()
	seen := make(map[string]int, len(evs))
	ar.Events = make([]store.NewEvent, len(evs))
	for i, e := range evs {
		ne, err := s.toNewEvent(e, ar, now)
		if err != nil {
			return ar, validate.Prefix(eventsField(i), err)
		}
		if j, dup := seen[ne.ID]; dup {
			return ar, validate.Errorf(eventsField(i)+".event_id", "repeats the id of events[%d]", j)
		}
		seen[ne.ID] = i
		ar.Events[i] = ne
	}
	return ar, nil
}

func eventsField(i int) string { return "events[" + strconv.Itoa(i) + "]" }

func (s *EventStoreService) toNewEvent(e *eventgwv1.NewEvent, ar store.AppendRequest, now time.Time) (store.NewEvent, error) {
	if e == nil {
		return store.NewEvent{}, validate.Errorf("", "is null")
	}
	ne := store.NewEvent{Type: e.GetEventType(), OccurredAt: now}
	if e.GetEventId() == "" {
		ne.ID = uuid.Must(uuid.NewV7()).String()
	} else {
		id, err := validate.CanonicalUUID("event_id", e.GetEventId())
		if err != nil {
			return ne, err
		}
		ne.ID = id
	}
	if err := validate.EventType("event_type", ne.Type); err != nil {
		return ne, err
	}
	// Only what every reader can give back is stored (validate.JSONObject's limits).
	switch d := e.GetBody().(type) {
	case *eventgwv1.NewEvent_Data:
		b, err := event.AppendStructJSON(make([]byte, 0, 256), d.Data)
		if err != nil {
			return ne, validate.Prefix("data", err)
		}
		ne.Data = b
	case *eventgwv1.NewEvent_DataJson:
		if len(d.DataJson) > s.maxBytes {
			return ne, validate.Errorf("data_json", "is %d bytes, over the %d-byte limit (--max-event-bytes)", len(d.DataJson), s.maxBytes)
		}
		if err := validate.JSONObject("data_json", d.DataJson); err != nil {
			return ne, err
		}
		ne.Data = d.DataJson
	default:
		return ne, validate.Errorf("data", "is required (data as a JSON object, or data_json as bytes)")
	}
	if len(ne.Data) > s.maxBytes {
		return ne, validate.Errorf("data", "is %d bytes, over the %d-byte limit (--max-event-bytes)", len(ne.Data), s.maxBytes)
	}
	if md := e.GetMetadata(); len(md) > 0 {
		if len(md) > 32 {
			return ne, validate.Errorf("metadata", "has %d entries, over the limit of 32", len(md))
		}
		for k, v := range md {
			// Errors say which rule a key broke, never the key.
			if !validMetaKey(k) {
				return ne, validate.Errorf("metadata", "keys must be 1-40 lowercase letters, digits or _ starting with a letter")
			}
			if err := event.CheckStoredMetadataKey(k); err != nil {
				return ne, err
			}
			if err := validate.Text("metadata", v, 1024); err != nil {
				return ne, validate.Errorf("metadata", "a value is longer than 1024 bytes, holds control characters or is not UTF-8")
			}
		}
		b, _ := json.Marshal(md)
		ne.Metadata = b
	}
	if t := e.GetOccurredAt(); t != nil {
		at, err := validate.Timestamp("occurred_at", t)
		if err != nil {
			return ne, err
		}
		ne.OccurredAt = at
	}
	// The event will be published through the outbox: it must pass every publish check
	// (domain, schema) now, or it would block its outbox shard later.
	se := store.StoredEvent{
		EventID: ne.ID, TenantID: ar.TenantID, AggregateType: ar.AggregateType, AggregateID: ar.AggregateID,
		Type: ne.Type, Data: ne.Data, Metadata: ne.Metadata, OccurredAt: ne.OccurredAt, Version: 1,
	}
	pe := s.toEvent(&se)
	if err := s.pub.Check(&pe); err != nil {
		return ne, err
	}
	return ne, nil
}

// toStored converts a stored event for an answer. It never fails: an event whose data
// cannot be given as a Struct (stored before the write-time limits) is answered with
// data_json and data_not_struct instead, so one such event never fails its page.
func toStored(e *store.StoredEvent, asJSON bool, out *eventgwv1.StoredEvent) {
	*out = eventgwv1.StoredEvent{
		EventId: e.EventID, TenantId: e.TenantID, AggregateType: e.AggregateType, AggregateId: e.AggregateID,
		Version: e.Version, EventType: e.Type, OccurredAt: timestamppb.New(e.OccurredAt), Position: e.Position,
		RecordedAt: timestamppb.New(e.RecordedAt),
	}
	if len(e.Metadata) > 2 {
		var md map[string]string
		if err := json.Unmarshal(e.Metadata, &md); err == nil {
			out.Metadata = md
		}
	}
	if asJSON {
		out.DataJson = e.Data
		return
	}
	if st, ok := storedStruct(e.Data); ok {
		out.Data = st
		return
	}
	out.DataJson, out.DataNotStruct = e.Data, true
}

// storedStruct converts stored JSON to a Struct, when it is an object within the nesting
// limit (a deeper one would pass here but fail the client's decoder) that protojson
// reads (numbers within float64's range).
func storedStruct(b []byte) (*structpb.Struct, bool) {
	if validate.JSONDepth(b) > validate.MaxDepth {
		return nil, false
	}
	st := &structpb.Struct{}
	if err := st.UnmarshalJSON(b); err != nil {
		return nil, false // its text quotes the data: dropped
	}
	return st, true
}

// sendPages converts a page of events and sends it as messages of at most maxBytes
// encoded (a single larger event goes alone), in order: send gets each message's events.
func sendPages(evs []store.StoredEvent, asJSON bool, maxBytes int, send func([]*eventgwv1.StoredEvent) error) error {
	out := toStoredPage(evs, asJSON)
	start, size := 0, 0
	for i, e := range out {
		// The event's field in the response: its tag, its length and the event.
		n := protowire.SizeBytes(proto.Size(e)) + 1
		if i > start && size+n > maxBytes {
			if err := send(out[start:i]); err != nil {
				return err
			}
			start, size = i, 0
		}
		size += n
	}
	if start < len(out) {
		return send(out[start:])
	}
	return nil
}

func toStoredPage(evs []store.StoredEvent, asJSON bool) []*eventgwv1.StoredEvent {
	backing := make([]eventgwv1.StoredEvent, len(evs))
	out := make([]*eventgwv1.StoredEvent, len(evs))
	for i := range evs {
		toStored(&evs[i], asJSON, &backing[i])
		out[i] = &backing[i]
	}
	return out
}

// tenantAggregate answers the request's tenant and aggregate ids in canonical form.
func tenantAggregate(tenant, aggregate string) (string, string, error) {
	t, err := validate.CanonicalUUID("tenant_id", tenant)
	if err != nil {
		return "", "", err
	}
	a, err := validate.CanonicalUUID("aggregate_id", aggregate)
	return t, a, err
}

// ReadAggregate implements EventStoreService.ReadAggregate.
func (s *EventStoreService) ReadAggregate(req *eventgwv1.ReadAggregateRequest, stream eventgwv1.EventStoreService_ReadAggregateServer) error {
	tenant, agg, err := tenantAggregate(req.GetTenantId(), req.GetAggregateId())
	if err != nil {
		return rewriteError(err)
	}
	if req.GetFromVersion() < 0 {
		return rewriteError(validate.Errorf("from_version", "must not be negative"))
	}
	err = s.events.ReadAggregatePages(stream.Context(), tenant, agg, req.GetFromVersion(), s.read,
		func(page []store.StoredEvent) error {
			return sendPages(page, req.GetDataAsJson(), s.msgBytes, func(evs []*eventgwv1.StoredEvent) error {
				return stream.Send(&eventgwv1.ReadAggregateResponse{Events: evs})
			})
		})
	return rewriteError(err)
}

// LoadAggregate implements EventStoreService.LoadAggregate.
func (s *EventStoreService) LoadAggregate(ctx context.Context, req *eventgwv1.LoadAggregateRequest) (*eventgwv1.LoadAggregateResponse, error) {
	tenant, agg, err := tenantAggregate(req.GetTenantId(), req.GetAggregateId())
	if err != nil {
		return nil, rewriteError(err)
	}
	l, err := s.events.Load(ctx, tenant, agg)
	if err != nil {
		return nil, rewriteError(err)
	}
	resp := &eventgwv1.LoadAggregateResponse{AggregateType: l.AggregateType, Version: l.Version, EventsFolded: int64(len(l.Tail))}
	if l.Snapshot != nil {
		resp.SnapshotVersion = l.Snapshot.Version
	}
	if int64(len(l.Tail)) >= s.snapshots.Every() && s.snapshots.Every() > 0 {
		s.snapshots.Enqueue(tenant, agg)
	}
	if req.GetRaw() {
		resp.EventsFolded = 0
		if l.Snapshot != nil {
			setState(resp, l.Snapshot.State, req.GetDataAsJson())
		}
		resp.Events = toStoredPage(l.Tail, req.GetDataAsJson())
		return resp, nil
	}
	state, err := store.FoldJSON(l)
	if err != nil {
		return nil, rewriteError(err)
	}
	setState(resp, state, req.GetDataAsJson())
	return resp, nil
}

// setState sets the state as asked, or as state_json with state_not_struct when it
// cannot be a Struct (see toStored).
func setState(resp *eventgwv1.LoadAggregateResponse, state []byte, asJSON bool) {
	if asJSON {
		resp.StateJson = state
		return
	}
	if st, ok := storedStruct(state); ok {
		resp.State = st
		return
	}
	resp.StateJson, resp.StateNotStruct = state, true
}

// SaveSnapshot implements EventStoreService.SaveSnapshot.
func (s *EventStoreService) SaveSnapshot(ctx context.Context, req *eventgwv1.SaveSnapshotRequest) (*eventgwv1.SaveSnapshotResponse, error) {
	tenant, agg, err := tenantAggregate(req.GetTenantId(), req.GetAggregateId())
	if err != nil {
		return nil, rewriteError(err)
	}
	if req.GetVersion() < 1 {
		return nil, rewriteError(validate.Errorf("version", "must be a version of the aggregate (1 or more)"))
	}
	if req.GetState() == nil {
		return nil, rewriteError(validate.Errorf("state", "is required"))
	}
	b, err := event.AppendStructJSON(nil, req.GetState())
	if err != nil {
		return nil, rewriteError(validate.Prefix("state", err))
	}
	if len(b) > s.maxBytes*16 {
		return nil, rewriteError(validate.Errorf("state", "is %d bytes, over the %d-byte limit", len(b), s.maxBytes*16))
	}
	id, err := s.events.SaveSnapshot(ctx, tenant, agg, req.GetVersion(), b)
	if err != nil {
		return nil, rewriteError(err)
	}
	return &eventgwv1.SaveSnapshotResponse{SnapshotId: id}, nil
}

// ReplayEvents implements EventStoreService.ReplayEvents.
func (s *EventStoreService) ReplayEvents(req *eventgwv1.ReplayEventsRequest, stream eventgwv1.EventStoreService_ReplayEventsServer) error {
	f := store.ReplayFilter{
		AggregateType: req.GetAggregateType(),
		AfterPosition: req.GetAfterPosition(), Limit: req.GetLimit(), EventTypes: req.GetEventTypes(),
	}
	var err error
	if f.TenantID, err = validate.CanonicalUUID("tenant_id", req.GetTenantId()); err != nil {
		return rewriteError(err)
	}
	if err := validate.Name("aggregate_type", f.AggregateType, 100, false); err != nil {
		return rewriteError(err)
	}
	if len(f.EventTypes) > 100 {
		return rewriteError(validate.Errorf("event_types", "has more than 100 types"))
	}
	for i, t := range f.EventTypes {
		if err := validate.EventType("event_types["+strconv.Itoa(i)+"]", t); err != nil {
			return rewriteError(err)
		}
	}
	if f.AfterPosition < 0 || f.Limit < 0 {
		return rewriteError(validate.Errorf("after_position", "and limit must not be negative"))
	}
	if f.From, err = validate.Timestamp("from_time", req.GetFromTime()); err != nil {
		return rewriteError(err)
	}
	if f.To, err = validate.Timestamp("to_time", req.GetToTime()); err != nil {
		return rewriteError(err)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return rewriteError(validate.Errorf("to_time", "must be after from_time"))
	}
	target := req.GetTargetTopic()
	if target != "" {
		if err := s.checkTarget(target); err != nil {
			return rewriteError(err)
		}
	}
	ctx := stream.Context()
	err = s.events.ReplayPages(ctx, f, s.replay, func(page []store.StoredEvent) error {
		if target != "" {
			if err := s.republish(ctx, page, target); err != nil {
				return err
			}
		}
		return sendPages(page, req.GetDataAsJson(), s.msgBytes, func(evs []*eventgwv1.StoredEvent) error {
			return stream.Send(&eventgwv1.ReplayEventsResponse{Events: evs})
		})
	})
	return rewriteError(err)
}

// checkTarget admits a replay's target_topic: a topic of the gateway's own namespace
// (never Kafka's internal topics or another application's), within --max-topics.
func (s *EventStoreService) checkTarget(target string) error {
	if !kafka.IsTopicName(target) {
		return validate.Errorf("target_topic", "is not a valid Kafka topic name")
	}
	if _, ok := s.pub.Router().Owns(target); !ok {
		return validate.Errorf("target_topic", "is not one of this gateway's topics: give <prefix>.<domain>.events (or a --routes target)")
	}
	return s.pub.AdmitTopic("target_topic", target)
}

// republish sends a replayed page to target (for rebuilding projections) and waits
// for Kafka's acknowledgement before the page is streamed on.
func (s *EventStoreService) republish(ctx context.Context, page []store.StoredEvent, target string) error {
	now := time.Now()
	evs := make([]event.Event, len(page))
	msgs := make([]*sarama.ProducerMessage, len(page))
	for i := range page {
		evs[i] = s.toEvent(&page[i])
		m, err := s.pub.Encode(&evs[i], now)
		if err != nil {
			return err
		}
		m.Topic = target
		msgs[i] = m
	}
	pending, err := s.pub.Send(ctx, evs, msgs, now)
	if err != nil {
		return err
	}
	for _, o := range pending.Wait(ctx) {
		if o.Err != nil {
			return o.Err
		}
	}
	return nil
}
