package app_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// smallRequests keeps requests small so that budgets of a few MiB hold many of them:
// the largest request is 64 KiB + 100 × 2 KiB.
func smallRequests(c *config.Config) {
	c.MaxEventBytes = 64 << 10
	c.MaxBatch = 100
}

// gauge is the value of an unlabelled gauge of the sidecar's registry.
func gauge(t *testing.T, s *sidecar, name string) float64 {
	t.Helper()
	mfs, err := s.app.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var v float64
			for _, m := range mf.GetMetric() {
				v += m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
			return v
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// streamReceived is how many PublishStream requests the server has read.
func streamReceived(t *testing.T, s *sidecar) float64 {
	t.Helper()
	mfs, err := s.app.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_msg_received_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "grpc_method" && l.GetValue() == "PublishStream" {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// rawConn is a connection of its own whose flow-control windows stay at 64 KiB (no
// BDP growth), so that a client not reading really stops the sidecar's answers.
func rawConn(t *testing.T, s *sidecar) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.app.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func streamRequest(id uint64, tenant string, events, payload int) *eventgwv1.PublishStreamRequest {
	req := &eventgwv1.PublishStreamRequest{RequestId: id}
	body := []byte(`{"pad":"` + strings.Repeat("x", payload) + `"}`)
	for range events {
		req.Events = append(req.Events, &eventgwv1.Event{
			EventType: "patient.updated", TenantId: tenant,
			Data: &eventgwv1.Event_PayloadJson{PayloadJson: body},
		})
	}
	return req
}

// waitStill waits until f stops changing (it has not changed over 5 looks, 100 ms
// apart), or fails after a minute.
func waitStill(t *testing.T, what string, f func() float64) float64 {
	t.Helper()
	last, same := f(), 0
	for deadline := time.Now().Add(time.Minute); same < 5; {
		if time.Now().After(deadline) {
			t.Fatalf("%s kept changing", what)
		}
		time.Sleep(100 * time.Millisecond)
		if v := f(); v == last {
			same++
		} else {
			last, same = v, 0
		}
	}
	return last
}

// A PublishStream whose client never reads its answers holds at most its budget: the
// stream stops reading (the client's sends block on HTTP/2 flow control) instead of
// buffering. Once the client reads, every request is answered and published; nothing
// stays held.
func TestPublishStreamStopsReadingAtItsBudget(t *testing.T) {
	const budget = 1 << 20
	s := startSidecar(t, func(c *config.Config) {
		smallRequests(c)
		c.PublishStreamBudgetBytes = budget
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := eventgwv1.NewEventServiceClient(rawConn(t, s)).PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const requests = 1000
	var sent atomic.Int64
	sendDone := make(chan error, 1)
	go func() {
		for i := range requests {
			if err := stream.Send(streamRequest(uint64(i), tenantA, 5, 2000)); err != nil {
				sendDone <- err
				return
			}
			sent.Add(1)
		}
		sendDone <- stream.CloseSend()
	}()
	held := func() float64 {
		h := gauge(t, s, "eventgw_publish_stream_held_bytes")
		if h > budget {
			t.Fatalf("the stream holds %.0f bytes, over its budget of %d", h, budget)
		}
		return h
	}
	// The client sends until flow control stops it; the server reads until the budget
	// is reached and its answers fill the client's window.
	received := waitStill(t, "the requests the server read", func() float64 { held(); return streamReceived(t, s) })
	if h := held(); h < budget/2 {
		t.Errorf("the stream stopped reading holding %.0f bytes, well below its budget", h)
	}
	if received >= requests || sent.Load() >= requests {
		t.Fatalf("the server read %.0f of %d requests (client sent %d): it did not stop reading", received, requests, sent.Load())
	}
	t.Logf("stopped: server read %.0f requests, client sent %d, %.0f bytes held", received, sent.Load(), held())

	// Reading the answers lets everything through.
	for i := range requests {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		if resp.GetRequestId() != uint64(i) || resp.GetError() != nil || len(resp.GetResults()) != 5 {
			t.Fatalf("answer %d: %v", i, resp)
		}
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("stream end: %v", err)
	}
	if err := <-sendDone; err != nil {
		t.Fatal(err)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != requests*5 {
		t.Errorf("%d records in Kafka, want %d", n, requests*5)
	}
	if h := gauge(t, s, "eventgw_publish_stream_held_bytes"); h != 0 {
		t.Errorf("%.0f bytes still held after every answer", h)
	}
}

// PublishStreams together hold at most the sidecar's budget. Every request is
// answered: published, or RESOURCE_EXHAUSTED (not published) when it came past the
// budget; Kafka holds exactly the ones answered published.
func TestPublishStreamsShareTheSidecarBudget(t *testing.T) {
	const (
		perStream = 1 << 20
		all       = 3 << 20
		streams   = 8
		requests  = 150
	)
	s := startSidecar(t, func(c *config.Config) {
		smallRequests(c)
		c.PublishStreamBudgetBytes = perStream
		c.PublishBudgetBytes = all
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := rawConn(t, s)
	sts := make([]eventgwv1.EventService_PublishStreamClient, streams)
	var wg sync.WaitGroup
	for i := range sts {
		st, err := eventgwv1.NewEventServiceClient(conn).PublishStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sts[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range requests {
				if err := st.Send(streamRequest(uint64(j), tenantA, 5, 2000)); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
			_ = st.CloseSend()
		}()
	}
	waitStill(t, "the requests the server read", func() float64 {
		if h := gauge(t, s, "eventgw_publish_stream_held_bytes"); h > all {
			t.Fatalf("the streams hold %.0f bytes, over the sidecar's budget of %d", h, all)
		}
		return streamReceived(t, s)
	})
	var ok, refused atomic.Int64
	var rg sync.WaitGroup
	for _, st := range sts {
		rg.Add(1)
		go func() {
			defer rg.Done()
			for j := range requests {
				resp, err := st.Recv()
				if err != nil {
					t.Errorf("answer %d: %v", j, err)
					return
				}
				switch e := resp.GetError(); {
				case e == nil && len(resp.GetResults()) == 5:
					ok.Add(1)
				case e != nil && codes.Code(e.GetCode()) == codes.ResourceExhausted && strings.Contains(e.GetMessage(), "--publish-budget-bytes"):
					refused.Add(1)
				default:
					t.Errorf("answer %d: %v", j, resp)
				}
			}
		}()
	}
	rg.Wait()
	wg.Wait()
	t.Logf("%d requests published, %d refused past the budget", ok.Load(), refused.Load())
	if ok.Load()+refused.Load() != streams*requests {
		t.Fatalf("%d answers, want %d", ok.Load()+refused.Load(), streams*requests)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != ok.Load()*5 {
		t.Errorf("%d records in Kafka, %d answered published", n, ok.Load()*5)
	}
}

// Unary calls hold at most --unary-budget-bytes of requests: past it a call is
// answered RESOURCE_EXHAUSTED (nothing published); once calls end, calls pass again.
func TestUnaryCallsShareABudget(t *testing.T) {
	const budget = 600 << 10
	d := newDeps(t)
	slow := testenv.InjectBrokerFault(d.kafka.Cluster, kmsg.Produce)
	s := startOn(t, d, func(c *config.Config) {
		smallRequests(c)
		c.UnaryBudgetBytes = budget
	})
	slow.Slow(300 * time.Millisecond) // calls stay in flight
	body := []byte(`{"pad":"` + strings.Repeat("y", 60<<10) + `"}`)
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
				EventType: "patient.updated", TenantId: tenantA, Data: &eventgwv1.Event_PayloadJson{PayloadJson: body},
			}})
			switch status.Code(err) {
			case codes.OK:
				ok.Add(1)
			case codes.ResourceExhausted:
				refused.Add(1)
			default:
				t.Errorf("call %d: %v", i, err)
			}
			if h := gauge(t, s, "eventgw_unary_held_bytes"); h > budget {
				t.Errorf("unary calls hold %.0f bytes, over the budget of %d", h, budget)
			}
		}()
	}
	wg.Wait()
	slow.Off()
	t.Logf("%d published, %d refused", ok.Load(), refused.Load())
	if refused.Load() == 0 || ok.Load() == 0 {
		t.Errorf("%d published and %d refused: want both with 40 calls of ~120 KiB at once and a %d-byte budget", ok.Load(), refused.Load(), budget)
	}
	if h := gauge(t, s, "eventgw_unary_held_bytes"); h != 0 {
		t.Errorf("%.0f bytes held with no call running", h)
	}
	if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: jsonEvent("patient.updated", "svc")}); err != nil {
		t.Errorf("a call after the burst: %v", err)
	}
	if n := topicCount(t, s.kafka.Brokers, "healthtech.patient.events"); n != ok.Load()+1 {
		t.Errorf("%d records in Kafka, %d published", n, ok.Load()+1)
	}
}
