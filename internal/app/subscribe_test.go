package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// eventually polls cond until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sub is a running Subscribe stream: its deliveries and assignments arrive on channels.
type sub struct {
	t           *testing.T
	cancel      context.CancelFunc
	deliveries  chan *eventgwv1.Delivery
	assignments chan *eventgwv1.Assignment
	done        chan error
	name        string
}

func subscribeTo(t *testing.T, s *sidecar, req *eventgwv1.SubscribeRequest) *sub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := s.events.Subscribe(ctx, req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	u := &sub{
		t: t, cancel: cancel, deliveries: make(chan *eventgwv1.Delivery, 100000),
		assignments: make(chan *eventgwv1.Assignment, 100), done: make(chan error, 1), name: req.GetSubscription(),
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				u.done <- err
				return
			}
			if a := resp.GetAssignment(); a != nil {
				u.assignments <- a
			}
			for _, d := range resp.GetDeliveries() {
				u.deliveries <- d
			}
		}
	}()
	t.Cleanup(cancel)
	return u
}

// waitAssigned waits for an assignment with at least n partitions in all.
func (u *sub) waitAssigned(n int) *eventgwv1.Assignment {
	u.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case a := <-u.assignments:
			got := 0
			for _, tp := range a.GetTopics() {
				got += len(tp.GetPartitions())
			}
			if got >= n {
				return a
			}
		case err := <-u.done:
			u.t.Fatalf("stream ended before assignment: %v", err)
		case <-timeout:
			u.t.Fatalf("no assignment of %d partitions within 30s", n)
		}
	}
}

// next returns the next n deliveries.
func (u *sub) next(n int, within time.Duration) []*eventgwv1.Delivery {
	u.t.Helper()
	out := make([]*eventgwv1.Delivery, 0, n)
	timeout := time.After(within)
	for len(out) < n {
		select {
		case d := <-u.deliveries:
			out = append(out, d)
		case err := <-u.done:
			u.t.Fatalf("stream ended after %d of %d deliveries: %v", len(out), n, err)
		case <-timeout:
			u.t.Fatalf("got %d of %d deliveries within %v", len(out), n, within)
		}
	}
	return out
}

// quiet asserts that no delivery arrives for d.
func (u *sub) quiet(d time.Duration) {
	u.t.Helper()
	select {
	case x := <-u.deliveries:
		u.t.Fatalf("unexpected delivery %s (offset %d, attempt %d)", x.GetDeliveryId(), x.GetOffset(), x.GetAttempt())
	case <-time.After(d):
	}
}

func ids(ds []*eventgwv1.Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.GetDeliveryId()
	}
	return out
}

func (s *sidecar) ack(t *testing.T, subscription string, ds []*eventgwv1.Delivery) *eventgwv1.AckResponse {
	t.Helper()
	r, err := s.events.Ack(callCtx(t), &eventgwv1.AckRequest{Subscription: subscription, DeliveryIds: ids(ds)})
	if err != nil {
		t.Fatalf("ack: %v", err)
	}
	return r
}

// publishKeyed publishes n events of type typ; event i has partition key keys[i%len(keys)]
// and payload {"seq": i}. It answers the event ids in order.
func publishKeyed(t *testing.T, s *sidecar, typ string, n int, keys []string) []string {
	t.Helper()
	var out []string
	for start := 0; start < n; start += 500 {
		var evs []*eventgwv1.Event
		for i := start; i < min(n, start+500); i++ {
			evs = append(evs, &eventgwv1.Event{
				EventType: typ, TenantId: tenantA, PartitionKey: keys[i%len(keys)],
				Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"seq":` + strconv.Itoa(i) + `}`)},
			})
		}
		r, err := s.events.PublishBatch(callCtx(t), &eventgwv1.PublishBatchRequest{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range r.GetResults() {
			if res.GetError() != nil {
				t.Fatalf("publish: %v", res.GetError())
			}
			out = append(out, res.GetResult().GetEventId())
		}
	}
	return out
}

// publishPadded publishes n events of about size bytes each, over 50 keys.
func publishPadded(t *testing.T, s *sidecar, typ string, n, size int) {
	t.Helper()
	pad := strings.Repeat("x", size)
	keys := keysN(50)
	for start := 0; start < n; start += 500 {
		var evs []*eventgwv1.Event
		for i := start; i < min(n, start+500); i++ {
			evs = append(evs, &eventgwv1.Event{EventType: typ, TenantId: tenantA, PartitionKey: keys[i%len(keys)],
				Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"seq":` + strconv.Itoa(i) + `,"pad":"` + pad + `"}`)}})
		}
		if _, err := s.events.PublishBatch(callCtx(t), &eventgwv1.PublishBatchRequest{Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
}

func seqOf(t *testing.T, d *eventgwv1.Delivery) int {
	t.Helper()
	m := regexp.MustCompile(`"seq":(\d+)`).FindSubmatch(d.GetPayloadJson())
	if m == nil {
		t.Fatalf("delivery %s has no seq in %q", d.GetDeliveryId(), d.GetPayloadJson())
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}

func keysN(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = uuid.NewString()
	}
	return out
}

// committed is the subscription's committed offsets summed over the topic, and the
// topic's end offsets summed.
func committed(t *testing.T, brokers []string, group, topic string) (int64, int64) {
	t.Helper()
	adm := newAdmin(t, brokers)
	ctx := callCtx(t)
	offs, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	var c int64
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.At >= 0 {
			c += o.At
		}
	})
	return c, topicCount(t, brokers, topic)
}

// TestSubscribeDeliversEnvelopeAndCommitsOnAck: a published event and an appended one
// (through the outbox) arrive with their envelope, payload and place; acks commit the
// offsets before they are answered; counters and lag follow.
func TestSubscribeDeliversEnvelopeAndCommitsOnAck(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.ServiceName = "prm-service" })
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Topics: []string{"patient"}, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST})
	u.waitAssigned(12)
	ctx := callCtx(t)
	pub, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
		EventType: "patient.created", TenantId: tenantA, SourceService: "prm-service", SourceUserId: "user-7",
		CausationId: "cmd-1", Metadata: map[string]string{"region": "eu"},
		Data: &eventgwv1.Event_Payload{Payload: mustStruct(t, map[string]any{"patient_id": "p-1", "age": 42.0})},
	}})
	if err != nil {
		t.Fatal(err)
	}
	agg := uuid.NewString()
	if _, err := s.store.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
		TenantId: tenantA, AggregateType: "Patient", AggregateId: agg,
		ExpectedVersion: &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_Any{Any: &emptypb.Empty{}}},
		Events:          []*eventgwv1.NewEvent{{EventType: "patient.registered", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{"first_name":"Ann"}`)}}},
	}); err != nil {
		t.Fatal(err)
	}
	ds := u.next(2, 30*time.Second)
	slices.SortFunc(ds, func(a, b *eventgwv1.Delivery) int { return strings.Compare(a.GetEventType(), b.GetEventType()) })
	d := ds[0]
	if d.GetEventId() != pub.GetResult().GetEventId() || d.GetEventType() != "patient.created" || d.GetTenantId() != tenantA ||
		d.GetSourceService() != "prm-service" || d.GetSourceUserId() != "user-7" || d.GetCausationId() != "cmd-1" ||
		d.GetCorrelationId() != d.GetEventId() || d.GetMetadata()["region"] != "eu" || d.GetAttempt() != 1 ||
		d.GetTopic() != "healthtech.patient.events" || d.GetPartition() != pub.GetResult().GetPartition() ||
		d.GetOffset() != pub.GetResult().GetOffset() || d.GetKey() != tenantA || d.GetTime() == nil {
		t.Errorf("published event delivered as %+v", d)
	}
	if got := d.GetPayload().AsMap(); got["patient_id"] != "p-1" || got["age"] != 42.0 {
		t.Errorf("payload %v", got)
	}
	st := ds[1]
	if st.GetEventType() != "patient.registered" || st.GetSubject() != agg || st.GetKey() != agg ||
		st.GetMetadata()["aggregatetype"] != "Patient" || st.GetMetadata()["aggregateversion"] != "1" ||
		st.GetPayload().AsMap()["first_name"] != "Ann" {
		t.Errorf("appended event delivered as %+v", st)
	}
	if c, end := committed(t, s.kafka.Brokers, "prm-service", "healthtech.patient.events"); c >= end {
		t.Errorf("committed %d of %d before any ack", c, end)
	}
	r := s.ack(t, "prm-service", ds)
	if r.GetAcked() != 2 || len(r.GetStaleDeliveryIds()) != 0 {
		t.Errorf("ack answered %+v", r)
	}
	// The ack answered after the commit.
	if c, end := committed(t, s.kafka.Brokers, "prm-service", "healthtech.patient.events"); c != end || end != 2 {
		t.Errorf("after the ack: committed %d, end %d", c, end)
	}
	// Acking again: stale, nothing changes.
	if r := s.ack(t, "prm-service", ds[:1]); r.GetAcked() != 0 || len(r.GetStaleDeliveryIds()) != 1 {
		t.Errorf("second ack answered %+v", r)
	}
	metrics := httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics")
	for _, want := range []string{
		`event_consumed_total{service="prm-service",subscription="prm-service",topic="healthtech.patient.events"} 2`,
		`event_processing_duration_seconds_count{service="prm-service",subscription="prm-service"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestSubscribeKeyOrderParallel: with key ordering, a key's events arrive one at a
// time in publish order while many keys are in flight at once; acks in any order.
func TestSubscribeKeyOrderParallel(t *testing.T) {
	s := startSidecar(t, nil)
	keys := keysN(8)
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
		Subscription: "orders", Topics: []string{"healthtech.visit.events"}, MaxInFlight: 16, PayloadAsJson: true,
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
	})
	const n = 400
	publishKeyed(t, s, "visit.checked_in", n, keys)
	lastSeq := map[string]int{}
	inFlight := map[string]bool{}
	maxKeys, got := 0, 0
	var pending []*eventgwv1.Delivery
	for got < n {
		select {
		case d := <-u.deliveries:
			k := d.GetKey()
			if inFlight[k] {
				t.Fatalf("key %s delivered again while one of its events is unacknowledged", k)
			}
			inFlight[k] = true
			seq := seqOf(t, d)
			if prev, ok := lastSeq[k]; ok && seq <= prev {
				t.Fatalf("key %s: seq %d after %d", k, seq, prev)
			}
			lastSeq[k] = seq
			pending = append(pending, d)
			got++
			maxKeys = max(maxKeys, len(pending))
		case err := <-u.done:
			t.Fatal(err)
		case <-time.After(200 * time.Millisecond):
			if len(pending) == 0 {
				t.Fatalf("stalled after %d deliveries", got)
			}
		}
		// Ack in reverse order of arrival, a few at a time, once several are waiting.
		if len(pending) >= 4 || got == n || len(u.deliveries) == 0 && len(pending) > 0 {
			slices.Reverse(pending)
			s.ack(t, "orders", pending)
			for _, d := range pending {
				inFlight[d.GetKey()] = false
			}
			pending = pending[:0]
		}
	}
	if len(lastSeq) != len(keys) {
		t.Errorf("saw %d keys, want %d", len(lastSeq), len(keys))
	}
	if maxKeys < 2 {
		t.Errorf("at most %d keys were in flight together: no parallelism", maxKeys)
	}
	eventually(t, 10*time.Second, "all committed", func() bool {
		c, end := committed(t, s.kafka.Brokers, "orders", "healthtech.visit.events")
		return c == end && end == n
	})
}

// TestSubscribePartitionOrderOneInFlight: partition ordering with max_in_flight 1
// delivers every event once, in offset order per partition, one at a time.
func TestSubscribePartitionOrderOneInFlight(t *testing.T) {
	s := startSidecar(t, nil)
	publishKeyed(t, s, "lab.result_ready", 60, keysN(5))
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
		Subscription: "strict", Topics: []string{"lab"}, MaxInFlight: 1, PayloadAsJson: true,
		Ordering: eventgwv1.Ordering_ORDERING_PARTITION, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
	})
	last := map[int32]int64{}
	for i := range 60 {
		d := u.next(1, 20*time.Second)[0]
		if prev, ok := last[d.GetPartition()]; ok && d.GetOffset() != prev+1 {
			t.Fatalf("delivery %d: partition %d offset %d after %d", i, d.GetPartition(), d.GetOffset(), prev)
		}
		last[d.GetPartition()] = d.GetOffset()
		if len(u.deliveries) != 0 {
			t.Fatal("a second delivery while one is unacknowledged (max_in_flight 1)")
		}
		s.ack(t, "strict", []*eventgwv1.Delivery{d})
	}
}

// TestSubscribeFlowControl: a client that never acks gets exactly max_in_flight
// deliveries; the sidecar stops fetching (what it holds stays bounded); acks resume it.
func TestSubscribeFlowControl(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.SubscribeMaxHeldBytes = 256 << 10 })
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
		Subscription: "slow", Topics: []string{"billing"}, MaxInFlight: 10, PayloadAsJson: true,
		Ordering: eventgwv1.Ordering_ORDERING_NONE, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
	})
	u.waitAssigned(12)
	const n = 12000 // ~2 KiB each: 24 MiB, far more than the stream may hold
	publishPadded(t, s, "billing.invoice_sent", n, 2048)
	first := u.next(10, 20*time.Second)
	u.quiet(time.Second)
	held := s.app.Subs.Held()
	if held.Delivered != 10 {
		t.Errorf("in flight %d, want 10", held.Delivered)
	}
	// Held: what max_in_flight allows plus the read-ahead, bounded by the byte budget
	// and what sarama had fetched for the partitions when the stream paused.
	// (12 partitions × (64 buffered records + one 256 KiB fetch)).
	if held.Events >= n/2 || held.Bytes > 12<<20 || !held.Paused {
		t.Errorf("the stream holds %+v with nothing acknowledged: it did not stop fetching", held)
	}
	s.ack(t, "slow", first)
	more := u.next(10, 10*time.Second)
	if slices.ContainsFunc(more, func(d *eventgwv1.Delivery) bool { return slices.Contains(ids(first), d.GetDeliveryId()) }) {
		t.Error("an acknowledged delivery came again")
	}
	// Drain: everything arrives once acks flow.
	total := 20
	s.ack(t, "slow", more)
	for total < n {
		ds := u.next(1, 20*time.Second)
		ds = append(ds, pending(u.deliveries)...)
		total += len(ds)
		s.ack(t, "slow", ds)
	}
	if total != n {
		t.Errorf("delivered %d events, want %d", total, n)
	}
}

// TestSubscribeSidecarBudget: streams that never ack stop fetching when all of them
// together hold --subscribe-budget-bytes, although each is far under its own limits;
// acks free the budget and every stream then gets everything.
func TestSubscribeSidecarBudget(t *testing.T) {
	const budget = 8 << 20
	s := startSidecar(t, func(c *config.Config) {
		c.SubscribeBudgetBytes, c.SubscribeMaxHeldBytes = budget, budget
		c.Partitions = 3 // a small read-ahead beyond the budget
	})
	var us []*sub
	for _, name := range []string{"budget-a", "budget-b", "budget-c"} {
		u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
			Subscription: name, Topics: []string{"claims"}, MaxInFlight: 10000, PayloadAsJson: true,
			Ordering: eventgwv1.Ordering_ORDERING_NONE, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
		})
		u.waitAssigned(3)
		us = append(us, u)
	}
	const n, size = 6000, 4096 // 24 MiB: each stream alone may hold a third of it
	publishPadded(t, s, "claims.submitted", n, size)
	eventually(t, 30*time.Second, "the streams to stop fetching", func() bool { return s.app.Subs.Held().Paused })
	time.Sleep(time.Second) // what was fetched when they paused arrives
	held := s.app.Subs.Held()
	// Past the budget by at most what sarama had fetched when each stream paused:
	// 3 partitions × (64 buffered records + one 256 KiB fetch) per stream. Without
	// the sidecar's budget they would hold 3 × 8 MiB.
	slack := 3 * 3 * (64*(size+512) + 256<<10)
	if held.Bytes > budget+slack || held.Events >= 3*n/2 {
		t.Errorf("streams hold %+v with nothing acknowledged; budget %d (+%d read ahead)", held, budget, slack)
	}
	// Acknowledge everything: each stream gets all n events.
	var wg sync.WaitGroup
	counts := make([]int, len(us))
	for i, u := range us {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seen := map[string]bool{}
			deadline := time.Now().Add(60 * time.Second)
			for len(seen) < n && time.Now().Before(deadline) {
				ds := pending(u.deliveries)
				if len(ds) == 0 {
					time.Sleep(20 * time.Millisecond)
					continue
				}
				for _, d := range ds {
					seen[d.GetEventId()] = true
				}
				if _, err := s.events.Ack(callCtx(t), &eventgwv1.AckRequest{Subscription: u.name, DeliveryIds: ids(ds)}); err != nil {
					t.Errorf("ack: %v", err)
					return
				}
			}
			counts[i] = len(seen)
		}()
	}
	wg.Wait()
	for i, c := range counts {
		if c != n {
			t.Errorf("stream %s got %d distinct events, want %d", us[i].name, c, n)
		}
	}
}

func pending(ch chan *eventgwv1.Delivery) []*eventgwv1.Delivery {
	var out []*eventgwv1.Delivery
	for {
		select {
		case d := <-ch:
			out = append(out, d)
		default:
			return out
		}
	}
}

// TestSubscribeRetriesAndDeadLetters: an expired ack deadline redelivers (attempt 2);
// a nacked event comes back after its backoff while other keys go on; the last
// attempt, or a nack with dead-letter, sends the event to the DLQ topic and
// failed_events with the reason, and then the offset moves past it.
func TestSubscribeRetriesAndDeadLetters(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.ServiceName = "fhir-service" })
	keys := keysN(3)
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
		Subscription: "fhir", Topics: []string{"clinical"}, MaxInFlight: 10, AckDeadlineSeconds: 1, MaxAttempts: 3,
		RetryBackoffMs: 200, PayloadAsJson: true, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
	})
	publishKeyed(t, s, "clinical.note_added", 6, keys) // seq 0..5; key i%3
	ds := u.next(3, 20*time.Second)                    // the head of each key
	bySeq := map[int]*eventgwv1.Delivery{}
	for _, d := range ds {
		bySeq[seqOf(t, d)] = d
	}
	if len(bySeq) != 3 || bySeq[0] == nil || bySeq[1] == nil || bySeq[2] == nil {
		t.Fatalf("first deliveries %v, want seq 0, 1, 2", bySeq)
	}
	// seq 0: nack with retry. seq 1: ack. seq 2: let its deadline pass.
	nackAt := time.Now()
	if r, err := s.events.Nack(callCtx(t), &eventgwv1.NackRequest{
		Subscription: "fhir", DeliveryIds: []string{bySeq[0].GetDeliveryId()}, ErrorType: "TransientError",
	}); err != nil || r.GetNacked() != 1 {
		t.Fatalf("nack: %v %v", r, err)
	}
	s.ack(t, "fhir", []*eventgwv1.Delivery{bySeq[1]})
	// Key 1 goes on (seq 4) while seq 0 waits for its backoff.
	seen := map[string]*eventgwv1.Delivery{}
	for len(seen) < 3 {
		d := u.next(1, 10*time.Second)[0]
		seen[fmt.Sprintf("%d/%d", seqOf(t, d), d.GetAttempt())] = d
		if seqOf(t, d) == 0 && time.Since(nackAt) < 100*time.Millisecond {
			t.Errorf("nacked event back after %v, before its backoff", time.Since(nackAt))
		}
	}
	for _, want := range []string{"4/1", "0/2", "2/2"} {
		if seen[want] == nil {
			t.Fatalf("deliveries (seq/attempt) %v lack %s", keysOf(seen), want)
		}
	}
	// seq 0, attempt 2: dead-letter now, as a poison event.
	if _, err := s.events.Nack(callCtx(t), &eventgwv1.NackRequest{
		Subscription: "fhir", DeliveryIds: []string{seen["0/2"].GetDeliveryId()}, Action: eventgwv1.NackAction_NACK_ACTION_DEAD_LETTER,
		ErrorType: "ValidationError", ErrorMessage: "missing encounter reference",
	}); err != nil {
		t.Fatal(err)
	}
	s.ack(t, "fhir", []*eventgwv1.Delivery{seen["4/1"]})
	// seq 2 expires again (attempt 3), then is dead-lettered by its deadline.
	third := u.next(1, 10*time.Second)[0]
	for seqOf(t, third) != 2 {
		s.ack(t, "fhir", []*eventgwv1.Delivery{third}) // seq 3 (key 0, after the dead letter)
		third = u.next(1, 10*time.Second)[0]
	}
	if third.GetAttempt() != 3 {
		t.Fatalf("seq 2 delivered with attempt %d, want 3", third.GetAttempt())
	}
	// Then seq 5 (key 2) follows once seq 2 is dead-lettered.
	rest := u.next(1, 15*time.Second)
	for seqOf(t, rest[0]) != 5 {
		s.ack(t, "fhir", rest)
		rest = u.next(1, 15*time.Second)
	}
	s.ack(t, "fhir", rest)

	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.dlq.clinical")
	if len(recs) != 2 {
		t.Fatalf("%d records in the DLQ topic, want 2", len(recs))
	}
	reasons := map[string]string{}
	for _, r := range recs {
		et, _ := header(r, "dlq_error_type")
		sub, _ := header(r, "dlq_subscription")
		top, _ := header(r, "dlq_original_topic")
		att, _ := header(r, "dlq_attempts")
		id, _ := header(r, "ce_id")
		if sub != "fhir" || top != "healthtech.clinical.events" || id == "" {
			t.Errorf("DLQ record headers: subscription %q topic %q ce_id %q", sub, top, id)
		}
		reasons[et] = att
	}
	if reasons["ValidationError"] != "2" || reasons["eventgw.AckDeadlineExceeded"] != "3" {
		t.Errorf("DLQ reasons and attempts %v", reasons)
	}
	conn, err := pgx.Connect(callCtx(t), s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	var msg string
	var retries int
	if err := conn.QueryRow(callCtx(t), `SELECT count(*) OVER (), error_message, retry_count FROM failed_events
		WHERE subscription = 'fhir' AND error_type = 'ValidationError' AND tenant_id = $1`, tenantA).Scan(&n, &msg, &retries); err != nil {
		t.Fatal(err)
	}
	if n != 1 || msg != "missing encounter reference" || retries != 1 {
		t.Errorf("failed_events row: %d rows, message %q, retry_count %d", n, msg, retries)
	}
	eventually(t, 10*time.Second, "the offset moves past the dead letters", func() bool {
		c, end := committed(t, s.kafka.Brokers, "fhir", "healthtech.clinical.events")
		return c == end && end == 6
	})
	if m := httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics"); !strings.Contains(m, `dlq_messages_total{service="fhir-service",topic="healthtech.dlq.clinical"} 2`) {
		t.Errorf("dlq_messages_total not 2:\n%s", grepLines(m, "dlq_"))
	}
}

func keysOf(m map[string]*eventgwv1.Delivery) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestSubscribeFilterAndLag: filtered-out types are committed without delivery; the
// lag metric counts what is not yet finished and drops to zero after the acks.
func TestSubscribeFilterAndLag(t *testing.T) {
	s := startSidecar(t, nil)
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
		Subscription: "created-only", Topics: []string{"patient"}, EventTypes: []string{"patient.created"},
		MaxInFlight: 5, PayloadAsJson: true, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
	})
	u.waitAssigned(12)
	keys := keysN(4)
	publishKeyed(t, s, "patient.created", 20, keys)
	publishKeyed(t, s, "patient.updated", 30, keys)
	lag := func() float64 {
		var sum float64
		for _, l := range strings.Split(httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics"), "\n") {
			if strings.HasPrefix(l, `consumer_lag_messages{`) && strings.Contains(l, `subscription="created-only"`) {
				v, _ := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
				sum += v
			}
		}
		return sum
	}
	var got []*eventgwv1.Delivery
	got = append(got, u.next(4, 20*time.Second)...)
	// Nothing acknowledged: everything after each partition's first held event lags.
	eventually(t, 15*time.Second, "lag reflects the unacknowledged events", func() bool { return lag() >= 20 })
	for len(got) < 20 {
		s.ack(t, "created-only", got[len(got)-min(len(got), 5):])
		more := u.next(1, 10*time.Second)
		got = append(got, append(more, pending(u.deliveries)...)...)
	}
	s.ack(t, "created-only", got)
	for _, d := range got {
		if d.GetEventType() != "patient.created" {
			t.Fatalf("delivered a filtered-out %s", d.GetEventType())
		}
	}
	u.quiet(500 * time.Millisecond)
	eventually(t, 10*time.Second, "filtered events committed", func() bool {
		c, end := committed(t, s.kafka.Brokers, "created-only", "healthtech.patient.events")
		return c == end && end == 50
	})
	eventually(t, 15*time.Second, "lag back to 0", func() bool { return lag() == 0 })
}

// TestSubscribeGroupSharesAndRebalances: streams of one subscription split the
// partitions; a third joining and one leaving with unacknowledged deliveries
// rebalance; in the end every event was acknowledged by someone, and the only
// duplicates are the deliveries that were in flight on the stream that left.
func TestSubscribeGroupSharesAndRebalances(t *testing.T) {
	s := startSidecar(t, nil)
	req := &eventgwv1.SubscribeRequest{Subscription: "shared", Topics: []string{"appointment"}, MaxInFlight: 50,
		PayloadAsJson: true, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST}
	a := subscribeTo(t, s, req)
	a.waitAssigned(12)
	b := subscribeTo(t, s, req)
	b.waitAssigned(1)
	var (
		mu       sync.Mutex
		ackedBy  = map[string]string{} // event id → stream
		dups     int
		inFlight = map[string][]string{} // stream → unacked event ids when it left
	)
	consume := func(name string, u *sub, stopAfter int, stop chan struct{}) {
		n := 0
		for {
			select {
			case d := <-u.deliveries:
				n++
				if stopAfter > 0 && n > stopAfter {
					mu.Lock()
					inFlight[name] = append(inFlight[name], d.GetEventId())
					mu.Unlock()
					continue // held, never acked
				}
				r, err := s.events.Ack(context.Background(), &eventgwv1.AckRequest{Subscription: "shared", DeliveryIds: []string{d.GetDeliveryId()}})
				if err != nil {
					t.Errorf("%s ack: %v", name, err)
					return
				}
				mu.Lock()
				if r.GetAcked() == 1 {
					if prev, ok := ackedBy[d.GetEventId()]; ok {
						dups++
						t.Logf("acked twice: %s by %s then %s (partition %d offset %d attempt %d)", d.GetEventId(), prev, name, d.GetPartition(), d.GetOffset(), d.GetAttempt())
					}
					ackedBy[d.GetEventId()] = name
				}
				mu.Unlock()
			case <-stop:
				return
			}
		}
	}
	stopA, stopB, stopC := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go consume("a", a, 0, stopA)
	go consume("b", b, 120, stopB)
	published := publishKeyed(t, s, "appointment.booked", 600, keysN(40))
	c := subscribeTo(t, s, req)
	go consume("c", c, 0, stopC)
	published = append(published, publishKeyed(t, s, "appointment.booked", 600, keysN(40))...)
	eventually(t, 30*time.Second, "b holds deliveries it will never ack", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(inFlight["b"]) > 0
	})
	// b goes away with its unacknowledged deliveries: they go to a and c.
	b.cancel()
	close(stopB)
	published = append(published, publishKeyed(t, s, "appointment.booked", 300, keysN(40))...)
	eventually(t, 60*time.Second, "every event acknowledged by someone", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ackedBy) == len(published)
	})
	close(stopA)
	close(stopC)
	mu.Lock()
	defer mu.Unlock()
	who := map[string]int{}
	for _, id := range published {
		who[ackedBy[id]]++
	}
	if who["a"] == 0 || who["b"] == 0 || who["c"] == 0 {
		t.Errorf("acks per stream %v: the group did not share the partitions", who)
	}
	for _, id := range inFlight["b"] {
		if ackedBy[id] == "b" || ackedBy[id] == "" {
			t.Errorf("event %s held by b was not redelivered to another stream", id)
		}
	}
	if dups != 0 {
		t.Errorf("%d events acknowledged twice: only unacknowledged deliveries may come again", dups)
	}
	if c, end := committed(t, s.kafka.Brokers, "shared", "healthtech.appointment.events"); c != end {
		t.Errorf("committed %d of %d", c, end)
	}
}

// TestSubscribeBadInput: bad requests are refused with InvalidArgument and change
// nothing: the delivery they named can still be acknowledged afterwards.
func TestSubscribeBadInput(t *testing.T) {
	s := startSidecar(t, nil)
	for name, req := range map[string]*eventgwv1.SubscribeRequest{
		"no topics":                   {Subscription: "x"},
		"topic outside the namespace": {Subscription: "x", Topics: []string{"payments.internal"}},
		"internal topic":              {Subscription: "x", Topics: []string{"__consumer_offsets"}},
		"zero-length domain":          {Subscription: "x", Topics: []string{""}},
		"huge max_in_flight":          {Subscription: "x", Topics: []string{"patient"}, MaxInFlight: 1_000_000},
		"negative max_in_flight":      {Subscription: "x", Topics: []string{"patient"}, MaxInFlight: -1},
		"bad subscription":            {Subscription: "no spaces please", Topics: []string{"patient"}},
		"bad event type":              {Subscription: "x", Topics: []string{"patient"}, EventTypes: []string{"Patient Created"}},
		"ack deadline too long":       {Subscription: "x", Topics: []string{"patient"}, AckDeadlineSeconds: 86400},
		"unknown ordering":            {Subscription: "x", Topics: []string{"patient"}, Ordering: 42},
	} {
		stream, err := s.events.Subscribe(callCtx(t), req)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "mine", Topics: []string{"patient"},
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST})
	other := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "theirs", Topics: []string{"patient"},
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST})
	publishKeyed(t, s, "patient.created", 1, keysN(1))
	d := u.next(1, 20*time.Second)[0]
	o := other.next(1, 20*time.Second)[0]
	inst := strings.SplitN(d.GetDeliveryId(), ".", 2)[0]
	for name, req := range map[string]*eventgwv1.AckRequest{
		"empty subscription":     {DeliveryIds: []string{d.GetDeliveryId()}},
		"no ids":                 {Subscription: "mine"},
		"malformed id":           {Subscription: "mine", DeliveryIds: []string{d.GetDeliveryId(), "garbage"}},
		"another sidecar's id":   {Subscription: "mine", DeliveryIds: []string{"zzzzzz.1.1.1"}},
		"never delivered":        {Subscription: "mine", DeliveryIds: []string{inst + ".1.zzzz.1"}},
		"future stream":          {Subscription: "mine", DeliveryIds: []string{inst + ".zzzz.1.1"}},
		"another subscription's": {Subscription: "mine", DeliveryIds: []string{d.GetDeliveryId(), o.GetDeliveryId()}},
	} {
		if _, err := s.events.Ack(callCtx(t), req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("ack with %s: %v, want InvalidArgument", name, err)
		}
		if _, err := s.events.Nack(callCtx(t), &eventgwv1.NackRequest{Subscription: req.GetSubscription(), DeliveryIds: req.GetDeliveryIds()}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("nack with %s: %v, want InvalidArgument", name, err)
		}
	}
	if _, err := s.events.Nack(callCtx(t), &eventgwv1.NackRequest{Subscription: "mine", DeliveryIds: []string{d.GetDeliveryId()},
		ErrorMessage: strings.Repeat("x", 5000)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("nack with a 5000-byte message: %v", err)
	}
	if r := s.ack(t, "mine", []*eventgwv1.Delivery{d}); r.GetAcked() != 1 {
		t.Errorf("the delivery could not be acknowledged after the refused calls: %+v", r)
	}
	if r := s.ack(t, "theirs", []*eventgwv1.Delivery{o}); r.GetAcked() != 1 {
		t.Errorf("the other subscription's delivery: %+v", r)
	}
}

// TestSubscribeStreamEndsOnShutdown: a graceful stop ends Subscribe streams with
// Unavailable (resubscribe elsewhere) instead of hanging the shutdown.
func TestSubscribeStreamEndsOnShutdown(t *testing.T) {
	s := startSidecar(t, nil)
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "x", Topics: []string{"patient"}})
	u.waitAssigned(12)
	s.shutdown()
	select {
	case err := <-u.done:
		if status.Code(err) != codes.Unavailable && !errors.Is(err, io.EOF) {
			t.Errorf("stream ended with %v, want Unavailable", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream still open 10 s after shutdown")
	}
}

// TestSubscribeAckAheadOfCommitSurvivesTheStream: deliveries acknowledged beyond the
// commit point (an earlier one still unacknowledged) are not delivered again to the
// next stream, although the stream that acknowledged them claimed the partition at an
// offset that never moved (regression: that first mark at the committed offset was
// dropped, and its acknowledgements with it).
func TestSubscribeAckAheadOfCommitSurvivesTheStream(t *testing.T) {
	s := startSidecar(t, nil)
	req := &eventgwv1.SubscribeRequest{Subscription: "ahead", Topics: []string{"patient"},
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST, Ordering: eventgwv1.Ordering_ORDERING_NONE}
	key := []string{uuid.NewString()} // one partition
	end := func(u *sub) {
		t.Helper()
		u.cancel()
		select {
		case <-u.done:
		case <-time.After(30 * time.Second):
			t.Fatal("stream did not end")
		}
	}
	byOffset := func(ds []*eventgwv1.Delivery) {
		slices.SortFunc(ds, func(a, b *eventgwv1.Delivery) int { return int(a.GetOffset() - b.GetOffset()) })
	}

	// A first stream commits offset 2 of the partition.
	u1 := subscribeTo(t, s, req)
	u1.waitAssigned(12)
	publishKeyed(t, s, "patient.updated", 2, key)
	if r := s.ack(t, "ahead", u1.next(2, 30*time.Second)); r.GetAcked() != 2 {
		t.Fatalf("first ack answered %+v", r)
	}
	end(u1)

	// The next stream claims the partition at 2, reads 2–6 and acknowledges 4–6 only.
	publishKeyed(t, s, "patient.updated", 5, key)
	u2 := subscribeTo(t, s, req)
	u2.waitAssigned(12)
	ds := u2.next(5, 30*time.Second)
	byOffset(ds)
	if ds[0].GetOffset() != 2 || ds[4].GetOffset() != 6 {
		t.Fatalf("second stream got offsets %d–%d, want 2–6", ds[0].GetOffset(), ds[4].GetOffset())
	}
	if r := s.ack(t, "ahead", ds[2:]); r.GetAcked() != 3 {
		t.Fatalf("ack of 4–6 answered %+v", r)
	}
	end(u2) // 2 and 3 unacknowledged

	// The third stream gets 2 and 3 again, and nothing else.
	u3 := subscribeTo(t, s, req)
	u3.waitAssigned(12)
	again := u3.next(2, 30*time.Second)
	byOffset(again)
	if again[0].GetEventId() != ds[0].GetEventId() || again[1].GetEventId() != ds[1].GetEventId() {
		t.Errorf("third stream got offsets %d and %d, want the unacknowledged 2 and 3", again[0].GetOffset(), again[1].GetOffset())
	}
	u3.quiet(2 * time.Second)
}

// TestSubscribeAckWaitsForAConfirmedCommit: an Ack is answered once Kafka confirmed its
// offset commit. The coordinator refuses the first commits (REBALANCE_IN_PROGRESS, as
// in the moment a rebalance joins): the Ack is answered after a commit went through,
// and the offsets are committed when it is. When Kafka keeps refusing, the Ack answers
// Unavailable instead of a success it cannot vouch for.
func TestSubscribeAckWaitsForAConfirmedCommit(t *testing.T) {
	s := startSidecar(t, nil)
	var refuse, refused atomic.Int32
	cluster := s.kafka.Cluster
	cluster.ControlKey(int16(kmsg.OffsetCommit), func(r kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		req := r.(*kmsg.OffsetCommitRequest)
		if req.Group != "confirm" || refuse.Load() <= 0 {
			return nil, nil, false
		}
		refuse.Add(-1)
		refused.Add(1)
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, rt := range req.Topics {
			t := kmsg.NewOffsetCommitResponseTopic()
			t.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				p := kmsg.NewOffsetCommitResponseTopicPartition()
				p.Partition, p.ErrorCode = rp.Partition, kerr.RebalanceInProgress.Code
				t.Partitions = append(t.Partitions, p)
			}
			resp.Topics = append(resp.Topics, t)
		}
		return resp, nil, true
	})
	u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{Subscription: "confirm", Topics: []string{"lab"},
		StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST, Ordering: eventgwv1.Ordering_ORDERING_NONE})
	u.waitAssigned(12)
	publishKeyed(t, s, "lab.result_ready", 20, keysN(5))
	ds := u.next(20, 30*time.Second)

	refuse.Store(3)
	if r := s.ack(t, "confirm", ds[:10]); r.GetAcked() != 10 {
		t.Fatalf("ack answered %+v", r)
	}
	if refused.Load() == 0 {
		t.Fatal("no commit was refused: the test did not test anything")
	}
	// sarama's own periodic commit would land within a second: read at once.
	if c, _ := committed(t, s.kafka.Brokers, "confirm", "healthtech.lab.events"); c < 10 {
		t.Errorf("Ack answered with %d offsets committed, want at least 10 (%d commits refused)", c, refused.Load())
	}

	refuse.Store(1 << 20)
	_, err := s.events.Ack(callCtx(t), &eventgwv1.AckRequest{Subscription: "confirm", DeliveryIds: ids(ds[10:])})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("ack with every commit refused: %v, want Unavailable", err)
	}
	refuse.Store(0)
	// The marks stay with sarama, which commits them once Kafka takes them.
	eventually(t, 10*time.Second, "the refused commit to land later", func() bool {
		c, end := committed(t, s.kafka.Brokers, "confirm", "healthtech.lab.events")
		return c == end && end == 20
	})
}
