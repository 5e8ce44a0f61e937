package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/testenv"
)

// TestSidecarKilledSubscriptionAtLeastOnce kills `eventgw serve` (SIGKILL) while a
// subscriber acknowledges its deliveries, then subscribes through a new sidecar with
// the same subscription. Every published event is acknowledged by someone, and no event
// whose Ack was answered comes again: the only duplicates are deliveries that were in
// flight when the sidecar died.
func TestSidecarKilledSubscriptionAtLeastOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the binary; run without -short")
	}
	k := testenv.NewKafka(t)
	reg := testenv.NewRegistry(t)
	db := testenv.NewDatabase(t)
	bin := buildBinary(t)
	args := []string{"--kafka-brokers", strings.Join(k.Brokers, ","), "--schema-registry-url", reg.URL(), "--database-url", db,
		"--subscribe-session-timeout", "6s"}
	first := startServe(t, bin, args...)
	conn := dial(t, first.grpc)
	events := eventgwv1.NewEventServiceClient(conn)

	const n = 3000
	published := map[string]bool{}
	for start := 0; start < n; start += 500 {
		var evs []*eventgwv1.Event
		for i := start; i < start+500; i++ {
			evs = append(evs, &eventgwv1.Event{EventType: "ward.bed_assigned", TenantId: uuid.NewString(),
				Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"bed":` + strconv.Itoa(i) + `}`)}})
		}
		r, err := events.PublishBatch(context.Background(), &eventgwv1.PublishBatchRequest{Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range r.GetResults() {
			published[res.GetResult().GetEventId()] = true
		}
	}

	var (
		mu       sync.Mutex
		acked    = map[string]int{} // event id → sidecar (1 or 2) whose Ack answered acked
		again    int                // events delivered after their Ack was answered
		inFlight = map[string]bool{}
		// unknown: events whose Ack call the killed sidecar never answered: it may
		// have applied it (and committed) before dying.
		unknown = map[string]bool{}
	)
	req := &eventgwv1.SubscribeRequest{Subscription: "ward-service", Topics: []string{"ward"}, MaxInFlight: 50,
		PayloadAsJson: true, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST}
	consume := func(ctx context.Context, which int, client eventgwv1.EventServiceClient) {
		stream, err := client.Subscribe(ctx, req)
		if err != nil {
			t.Logf("subscribe through sidecar %d: %v", which, err)
			return
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				t.Logf("stream of sidecar %d ended: %v", which, err)
				return
			}
			var ids []string
			mu.Lock()
			for _, d := range resp.GetDeliveries() {
				if _, ok := acked[d.GetEventId()]; ok {
					again++
				}
				inFlight[d.GetEventId()] = true
				ids = append(ids, d.GetDeliveryId())
			}
			mu.Unlock()
			if len(ids) == 0 {
				continue
			}
			r, err := client.Ack(ctx, &eventgwv1.AckRequest{Subscription: "ward-service", DeliveryIds: ids})
			if err != nil {
				mu.Lock()
				for _, d := range resp.GetDeliveries() {
					unknown[d.GetEventId()] = true
				}
				mu.Unlock()
				return
			}
			stale := map[string]bool{}
			for _, id := range r.GetStaleDeliveryIds() {
				stale[id] = true
			}
			mu.Lock()
			for _, d := range resp.GetDeliveries() {
				if !stale[d.GetDeliveryId()] {
					acked[d.GetEventId()] = which
					delete(inFlight, d.GetEventId())
				}
			}
			mu.Unlock()
		}
	}
	ctx1, cancel1 := context.WithCancel(context.Background())
	defer cancel1()
	done1 := make(chan struct{})
	go func() { defer close(done1); consume(ctx1, 1, events) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		got := len(acked)
		mu.Unlock()
		if got >= n/4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d acknowledged through the first sidecar in 60 s\n%s", got, first.logText())
		}
		time.Sleep(time.Millisecond)
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-first.exited
	<-done1
	mu.Lock()
	byFirst, wasInFlight := len(acked), len(inFlight)
	mu.Unlock()

	second := startServe(t, bin, args...)
	defer second.stop(t)
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go consume(ctx2, 2, eventgwv1.NewEventServiceClient(dial(t, second.grpc)))
	deadline = time.Now().Add(90 * time.Second)
	for {
		mu.Lock()
		got := len(acked)
		for id := range unknown {
			if acked[id] == 0 {
				got++
			}
		}
		mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged 90 s after the restart\n%s", got, n, second.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel2()
	mu.Lock()
	defer mu.Unlock()
	for id := range published {
		if acked[id] == 0 && !unknown[id] {
			t.Errorf("event %s was never acknowledged", id)
		}
	}
	if again != 0 {
		t.Errorf("%d events were delivered again after their Ack was answered", again)
	}
	t.Logf("acknowledged through the killed sidecar: %d; in flight when it died: %d (of which %d in an unanswered Ack); through the new one: %d",
		byFirst, wasInFlight, len(unknown), n-byFirst)
}

func dial(t *testing.T, target string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}
