package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/testenv"
)

// scrape reads the samples of the sidecar's /metrics: name{labels} → value.
func scrape(url string) (map[string]float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// peaks samples the sidecar's metrics until stopped and keeps each one's highest value.
type peaks struct {
	url  string
	mu   sync.Mutex
	max  map[string]float64
	last map[string]float64
	stop chan struct{}
	done chan struct{}
}

func samplePeaks(t *testing.T, url string) *peaks {
	p := &peaks{url: url, max: map[string]float64{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			if m, err := scrape(url); err == nil {
				p.mu.Lock()
				p.last = m
				for k, v := range m {
					if v > p.max[k] {
						p.max[k] = v
					}
				}
				p.mu.Unlock()
			}
			select {
			case <-p.stop:
				return
			case <-time.After(25 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(p.end)
	return p
}

func (p *peaks) end() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

func (p *peaks) peak(name string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.max[name]
}

func (p *peaks) now(name string) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last[name]
}

// readyHTTP is the metrics URL the sidecar logged when ready.
func readyHTTP(t *testing.T, d *devSidecar) string {
	t.Helper()
	for _, line := range strings.Split(d.logText(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "eventgw is ready" {
			return m["http"].(string)
		}
	}
	t.Fatal("no ready line with the metrics address")
	return ""
}

func dialSidecar(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func pubEvent(tenant string, payload int) *eventgwv1.Event {
	return &eventgwv1.Event{
		EventType: "patient.updated", TenantId: tenant,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"pad":"` + strings.Repeat("z", payload) + `"}`)},
	}
}

// TestHostileCallersStayWithinTheMemoryBudget runs `eventgw serve` as a process and,
// all at once: 500 PublishStreams that never read their answers, 40 calls whose request
// message is never finished (raw HTTP/2, answering pings), 2,000 concurrent unary
// Publish calls, and one client publishing on a stream as fast as it can. The
// sidecar's heap in use (go_memstats_heap_inuse_bytes, sampled every 25 ms) stays under
// the documented peak-memory formula for its settings (config.PeakHeap, which it also
// gets as GOMEMLIMIT), each budget's gauge stays under its budget, the unfinished
// messages' connections are closed, and afterwards the sidecar serves normally and
// holds nothing.
func TestHostileCallersStayWithinTheMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary; run without -short")
	}
	k := testenv.NewKafka(t)
	reg := testenv.NewRegistry(t)
	db := testenv.NewDatabase(t)
	bin := buildBinary(t)
	args := []string{
		"--kafka-brokers", strings.Join(k.Brokers, ","), "--schema-registry-url", reg.URL(), "--database-url", db,
		"--grpc-max-connections=64", "--grpc-max-concurrent-streams=64",
		"--publish-stream-budget-bytes=4194304", "--publish-budget-bytes=67108864",
		"--unary-budget-bytes=33554432", "--grpc-max-receiving-bytes=33554432", "--grpc-recv-timeout=10s",
		"--append-queue-bytes=16777216",
	}
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	if err := config.Parse(fs, args); err != nil {
		t.Fatal(err)
	}
	budget, terms := cfg.PeakHeap(0)
	t.Setenv("GOMEMLIMIT", strconv.FormatInt(budget, 10))
	sc := startServe(t, bin, args...)
	p := samplePeaks(t, readyHTTP(t, sc))
	for p.now("go_memstats_heap_inuse_bytes") == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	idle := p.now("go_memstats_heap_inuse_bytes")
	tenant := uuid.NewString()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// 1. 500 PublishStreams that never read: 8 connections whose windows stay at 64 KiB.
	hostileCtx, stopHostile := context.WithCancel(ctx)
	defer stopHostile()
	var hostileSent atomic.Int64
	var hostile sync.WaitGroup
	for range 8 {
		conn := dialSidecar(t, sc.grpc, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		for range 500 / 8 {
			hostile.Add(1)
			go func() {
				defer hostile.Done()
				st, err := eventgwv1.NewEventServiceClient(conn).PublishStream(hostileCtx)
				if err != nil {
					return
				}
				// One event of 8 KiB a request: the budget fills with few events for
				// Kafka to take.
				req := &eventgwv1.PublishStreamRequest{Events: []*eventgwv1.Event{pubEvent(tenant, 8<<10)}}
				for i := uint64(0); ; i++ {
					req.RequestId = i
					if st.Send(req) != nil {
						return
					}
					hostileSent.Add(1)
				}
			}()
		}
	}

	// 2. 40 request messages declared 2 MiB, sent to 1.5 MiB and never finished.
	var unfinished sync.WaitGroup
	raws := make([]*testenv.H2Client, 20)
	msg := testenv.GRPCMessageStart(2 << 20)
	for i := range raws {
		raws[i] = testenv.DialH2(t, sc.grpc)
		for _, id := range []uint32{1, 3} {
			raws[i].Open(id, "/eventgw.v1.EventService/Publish")
			unfinished.Add(1)
			go func() {
				defer unfinished.Done()
				raws[i].Send(id, msg[:3<<19])
			}()
		}
	}

	// 3. 2,000 unary calls at once, over 32 connections.
	unaryConns := make([]eventgwv1.EventServiceClient, 32)
	for i := range unaryConns {
		unaryConns[i] = eventgwv1.NewEventServiceClient(dialSidecar(t, sc.grpc))
	}
	var unaryOK, unaryRefused atomic.Int64
	var unary sync.WaitGroup
	start := make(chan struct{})
	for i := range 2000 {
		unary.Add(1)
		go func() {
			defer unary.Done()
			<-start
			cctx, ccancel := context.WithTimeout(ctx, time.Minute)
			defer ccancel()
			_, err := unaryConns[i%len(unaryConns)].Publish(cctx, &eventgwv1.PublishRequest{Event: pubEvent(tenant, 500)})
			switch status.Code(err) {
			case codes.OK:
				unaryOK.Add(1)
			case codes.ResourceExhausted:
				unaryRefused.Add(1)
			default:
				t.Errorf("unary call: %v", err)
			}
		}()
	}
	close(start)

	// 4. One client publishing on a stream as fast as it can, reading its answers. When
	// the attack ends it stops sending and waits for every answer.
	normal := dialSidecar(t, sc.grpc)
	fastStop := make(chan struct{})
	var fastSent, fastOK, fastRefused atomic.Int64
	fastDone := make(chan error, 1)
	go func() {
		st, err := eventgwv1.NewEventServiceClient(normal).PublishStream(ctx)
		if err != nil {
			fastDone <- err
			return
		}
		inflight := make(chan struct{}, 64)
		recvDone := make(chan error, 1)
		go func() {
			for {
				resp, err := st.Recv()
				if err != nil {
					recvDone <- err
					return
				}
				switch e := resp.GetError(); {
				case e == nil:
					fastOK.Add(1)
				case codes.Code(e.GetCode()) == codes.ResourceExhausted:
					fastRefused.Add(1)
				default:
					recvDone <- fmt.Errorf("answer: %v", e)
					return
				}
				<-inflight
			}
		}()
		req := &eventgwv1.PublishStreamRequest{}
		for range 100 {
			req.Events = append(req.Events, pubEvent(tenant, 200))
		}
	send:
		for i := uint64(0); ; i++ {
			select {
			case inflight <- struct{}{}:
			case <-fastStop:
				break send
			}
			req.RequestId = i
			if err := st.Send(req); err != nil {
				fastDone <- err
				return
			}
			fastSent.Add(1)
		}
		_ = st.CloseSend()
		if err := <-recvDone; !errors.Is(err, io.EOF) {
			fastDone <- err
			return
		}
		fastDone <- nil
	}()

	// The attack runs until the unary calls are answered and every unfinished
	// message's connection is closed.
	unary.Wait()
	for i, r := range raws {
		if !r.WaitClosed(time.Minute) {
			t.Fatalf("raw connection %d holding unfinished messages was not closed", i)
		}
	}
	unfinished.Wait()
	for hostileSent.Load() < 500 {
		time.Sleep(10 * time.Millisecond)
	}
	close(fastStop)
	if err := <-fastDone; err != nil {
		t.Errorf("fast client: %v", err)
	}
	if fastOK.Load()+fastRefused.Load() != fastSent.Load() {
		t.Errorf("fast client: %d requests sent, %d answered", fastSent.Load(), fastOK.Load()+fastRefused.Load())
	}
	attackPeak := p.peak("go_memstats_heap_inuse_bytes")
	stopHostile()
	hostile.Wait()

	// Afterwards: nothing held, and normal service.
	for _, g := range []string{"eventgw_publish_stream_held_bytes", "grpc_server_receiving_bytes", "eventgw_unary_held_bytes"} {
		deadline := time.Now().Add(time.Minute)
		for p.now(g) != 0 && time.Now().Before(deadline) {
			time.Sleep(25 * time.Millisecond)
		}
		if v := p.now(g); v != 0 {
			t.Errorf("%s is %.0f once the callers are gone", g, v)
		}
	}
	events := eventgwv1.NewEventServiceClient(normal)
	if _, err := events.Publish(ctx, &eventgwv1.PublishRequest{Event: pubEvent(tenant, 100)}); err != nil {
		t.Errorf("publish afterwards: %v", err)
	}
	st, err := events.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if err := st.Send(&eventgwv1.PublishStreamRequest{RequestId: uint64(i), Events: []*eventgwv1.Event{pubEvent(tenant, 100)}}); err != nil {
			t.Fatal(err)
		}
	}
	_ = st.CloseSend()
	for i := range 50 {
		if resp, err := st.Recv(); err != nil || resp.GetError() != nil {
			t.Fatalf("stream answer %d afterwards: %v %v", i, resp, err)
		}
	}
	agg := uuid.NewString()
	store := eventgwv1.NewEventStoreServiceClient(normal)
	if _, err := store.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
		TenantId: tenant, AggregateType: "Patient", AggregateId: agg,
		ExpectedVersion: &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_NoStream{NoStream: &emptypb.Empty{}}},
		Events:          []*eventgwv1.NewEvent{{EventType: "patient.registered", Body: &eventgwv1.NewEvent_DataJson{DataJson: []byte(`{"a":1}`)}}},
	}); err != nil {
		t.Errorf("append afterwards: %v", err)
	}
	if r, err := store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenant, AggregateId: agg}); err != nil || r.GetVersion() != 1 {
		t.Errorf("load afterwards: %v %v", r, err)
	}
	if h, err := healthpb.NewHealthClient(normal).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health afterwards: %v %v", h, err)
	}
	p.end()

	mib := func(v float64) string { return fmt.Sprintf("%.0f MiB", v/(1<<20)) }
	t.Logf("heap in use: idle %s, peak %s during the attack; budget %s", mib(idle), mib(attackPeak), mib(float64(budget)))
	for _, term := range terms {
		t.Logf("  %-95s %s", term.Name, mib(float64(term.Bytes)))
	}
	t.Logf("hostile streams: %d requests sent; unary: %d published, %d refused; fast client: %d requests published, %d refused",
		hostileSent.Load(), unaryOK.Load(), unaryRefused.Load(), fastOK.Load(), fastRefused.Load())
	t.Logf("peaks: publish streams held %s (budget %s), unary held %s (budget %s), receiving %s (budget %s); connections closed: %.0f recv timeout, %.0f receiving budget",
		mib(p.peak("eventgw_publish_stream_held_bytes")), mib(float64(cfg.PublishBudgetBytes)),
		mib(p.peak("eventgw_unary_held_bytes")), mib(float64(cfg.UnaryBudgetBytes)),
		mib(p.peak("grpc_server_receiving_bytes")), mib(float64(cfg.GRPCMaxReceivingBytes)),
		p.peak(`grpc_server_connections_closed_total{reason="recv_timeout"}`), p.peak(`grpc_server_connections_closed_total{reason="receiving_budget"}`))

	if peak := p.peak("go_memstats_heap_inuse_bytes"); peak > float64(budget) {
		t.Errorf("heap in use peaked at %s, over the budget of %s", mib(peak), mib(float64(budget)))
	}
	for g, limit := range map[string]int{
		"eventgw_publish_stream_held_bytes": cfg.PublishBudgetBytes,
		"eventgw_unary_held_bytes":          cfg.UnaryBudgetBytes,
		// Each connection adds what one read brought (at most gRPC's 32 KiB read
		// buffer) before the oldest connection is closed.
		"grpc_server_receiving_bytes": cfg.GRPCMaxReceivingBytes + len(raws)*32<<10,
	} {
		if v := p.peak(g); v > float64(limit) {
			t.Errorf("%s peaked at %.0f, over its budget of %d", g, v, limit)
		}
	}
	if p.peak("eventgw_publish_stream_held_bytes") < float64(cfg.PublishBudgetBytes)/2 {
		t.Errorf("the hostile streams held only %s: the attack did not reach the budget", mib(p.peak("eventgw_publish_stream_held_bytes")))
	}
	closed := p.now(`grpc_server_connections_closed_total{reason="recv_timeout"}`) + p.now(`grpc_server_connections_closed_total{reason="receiving_budget"}`)
	if closed != float64(len(raws)) {
		t.Errorf("the sidecar closed %.0f connections for unfinished messages, want the %d that held them", closed, len(raws))
	}
	if unaryOK.Load() == 0 || fastOK.Load() == 0 {
		t.Errorf("calls were not served during the attack: %d unary, %d stream requests published", unaryOK.Load(), fastOK.Load())
	}
	sc.stop(t)
}
