package app_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/devstack"
	"github.com/eventgw/eventgw/internal/server"
	"github.com/eventgw/eventgw/internal/testenv"
)

// kafkaOutage makes every produce request of the cluster fail (the broker drops the
// connection) while down is set.
func kafkaOutage(k *testenv.Kafka) *atomic.Bool {
	var down atomic.Bool
	k.Cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		k.Cluster.KeepControl()
		if down.Load() {
			return nil, errors.New("injected outage"), true
		}
		return nil, nil, false
	})
	return &down
}

// seqEvent is event seq of a tenant's ordered sequence.
func seqEvent(tenant string, seq int) *eventgwv1.Event {
	return &eventgwv1.Event{
		EventType: "patient.updated", TenantId: tenant,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: fmt.Appendf(nil, `{"seq":%d}`, seq)},
	}
}

// checkSeqOrder checks that the records hold each tenant's events, after removing
// duplicates by event id, once each and in sequence order per tenant; it answers the
// duplicates (at least once: a publish whose outcome Kafka did not report may be sent
// again).
func checkSeqOrder(t *testing.T, recs []*kgo.Record, want map[string]int) (dups int) {
	t.Helper()
	ids := map[string]bool{}
	last := map[string]int{}
	for _, r := range recs {
		var tenant, id string
		for _, h := range r.Headers {
			switch h.Key {
			case "ce_tenantid":
				tenant = string(h.Value)
			case "ce_id":
				id = string(h.Value)
			}
		}
		if ids[id] {
			dups++
			continue
		}
		ids[id] = true
		var p struct{ Seq int }
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatal(err)
		}
		prev, seen := last[tenant]
		if seen && p.Seq != prev+1 {
			t.Errorf("tenant %s: seq %d after %d (out of order or missing; partition %d offset %d)", tenant, p.Seq, prev, r.Partition, r.Offset)
		}
		if !seen && p.Seq != 0 {
			t.Errorf("tenant %s: first seq on Kafka is %d, want 0", tenant, p.Seq)
		}
		last[tenant] = p.Seq
	}
	for tenant, n := range want {
		if last[tenant] != n-1 {
			t.Errorf("tenant %s: last seq on Kafka %d, want %d", tenant, last[tenant], n-1)
		}
	}
	return dups
}

// TestPublishFallbackQueuesWhileKafkaDown: with Kafka failing, Publish, PublishBatch and
// PublishStream answer success with queued set; the rows are in PostgreSQL; the Kafka
// breaker opens; when Kafka is back the relay publishes the backlog and the sidecar
// publishes directly again. On Kafka, every event is there once, in order per key.
func TestPublishFallbackQueuesWhileKafkaDown(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.BreakerTimeout = 500 * time.Millisecond })
	tenants := []string{tenantA, "0b7c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5b", "1c7c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5c"}
	next := map[string]int{}
	publishOne := func(tenant string) *eventgwv1.PublishResult {
		t.Helper()
		resp, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: seqEvent(tenant, next[tenant])})
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		next[tenant]++
		return resp.GetResult()
	}
	for _, tn := range tenants {
		if r := publishOne(tn); r.GetQueued() || r.GetOffset() < 0 {
			t.Fatalf("healthy Kafka: result %v, want published", r)
		}
	}

	down := kafkaOutage(s.kafka)
	down.Store(true)
	queued := 0
	for i := range 8 {
		r := publishOne(tenants[i%len(tenants)])
		if !r.GetQueued() || r.GetPartition() != -1 || r.GetTopic() != "healthtech.patient.events" {
			t.Fatalf("Kafka down: result %v, want queued", r)
		}
		queued++
	}
	// A batch, and a stream of three requests, while queued.
	batch := make([]*eventgwv1.Event, 0, 6)
	for i := range 6 {
		tn := tenants[i%len(tenants)]
		batch = append(batch, seqEvent(tn, next[tn]))
		next[tn]++
	}
	bresp, err := s.events.PublishBatch(callCtx(t), &eventgwv1.PublishBatchRequest{Events: batch})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range bresp.GetResults() {
		if !r.GetResult().GetQueued() {
			t.Fatalf("batch event %d: %v, want queued", i, r)
		}
		queued++
	}
	st, err := s.events.PublishStream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for req := range 3 {
		evs := make([]*eventgwv1.Event, 0, 3)
		for _, tn := range tenants {
			evs = append(evs, seqEvent(tn, next[tn]))
			next[tn]++
		}
		if err := st.Send(&eventgwv1.PublishStreamRequest{RequestId: uint64(req), Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResults() {
			if !r.GetResult().GetQueued() {
				t.Fatalf("stream request %d: %v, want queued", resp.GetRequestId(), r)
			}
			queued++
		}
	}
	_ = st.CloseSend()
	if n := dbCount(t, s.dbURL, `SELECT count(*) FROM publish_queue`); n != int64(queued) {
		t.Fatalf("publish_queue holds %d rows, want %d", n, queued)
	}
	// The relay keeps trying Kafka meanwhile: the Kafka breaker opens.
	breaker := func() string {
		return grepLines(httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics"), `circuit_breaker_state{dependency="kafka"`)
	}
	waitFor(t, 30*time.Second, "the Kafka breaker to open", func() bool { return strings.HasSuffix(breaker(), "} 1") })
	metrics := httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics")
	if !strings.Contains(metrics, fmt.Sprintf("event_publish_queued_total %d", queued)) {
		t.Errorf("event_publish_queued_total is not %d:\n%s", queued, grepLines(metrics, "event_publish_queued"))
	}

	down.Store(false)
	deadline := time.Now().Add(30 * time.Second)
	for s.app.Fallback.Queued() || dbCount(t, s.dbURL, `SELECT count(*) FROM publish_queue`) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("still queueing 30 s after Kafka came back (%d rows left)", dbCount(t, s.dbURL, `SELECT count(*) FROM publish_queue`))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, tn := range tenants {
		if r := publishOne(tn); r.GetQueued() {
			t.Fatalf("Kafka back and queue drained: result %v, want published directly", r)
		}
	}
	want := map[string]int{}
	for tn, n := range next {
		want[tn] = n
	}
	recs := testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events")
	total := 0
	for _, n := range want {
		total += n
	}
	if len(recs) != total {
		t.Errorf("%d records on Kafka, want %d", len(recs), total)
	}
	if dups := checkSeqOrder(t, recs, want); dups != 0 {
		t.Errorf("%d duplicates on Kafka: the outage began between calls, none was in flight", dups)
	}
	waitFor(t, 10*time.Second, "the Kafka breaker to close", func() bool { return strings.HasSuffix(breaker(), "} 0") })
	metrics = httpGet(t, "http://"+s.app.HTTPAddr()+"/metrics")
	if !strings.Contains(metrics, fmt.Sprintf("publish_queue_published_total %d", queued)) {
		t.Errorf("publish_queue_published_total is not %d:\n%s", queued, grepLines(metrics, "publish_queue"))
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		_ = l.Close()
	}
	return ports
}

func readyz(t *testing.T, s *sidecar) (int, server.ReadyReport) {
	t.Helper()
	resp, err := http.Get("http://" + s.app.HTTPAddr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep server.ReadyReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, rep
}

// TestStartsWithoutKafka: a sidecar whose Kafka is unreachable starts, says so in its
// log and /readyz (200, degraded; /healthz stays 200), queues publishes, and once the
// brokers appear connects by itself and publishes the backlog.
func TestStartsWithoutKafka(t *testing.T) {
	ports := freePorts(t, 3)
	var brokers []string
	for _, p := range ports {
		brokers = append(brokers, fmt.Sprintf("127.0.0.1:%d", p))
	}
	cfg := defaultConfig(t)
	cfg.KafkaBrokers = strings.Join(brokers, ",")
	cfg.SchemaRegistryURL = testenv.NewRegistry(t).URL()
	cfg.DatabaseURL = testenv.NewDatabase(t)
	s := runSidecar(t, cfg)
	if !strings.Contains(s.logs.String(), "kafka is unreachable; starting anyway") {
		t.Error("the log does not say Kafka is unreachable")
	}
	code, rep := readyz(t, s)
	if code != http.StatusOK || rep.Status != "degraded" || rep.Dependencies["kafka"].OK || !rep.Dependencies["postgres"].OK {
		t.Fatalf("/readyz %d %+v, want 200 degraded with kafka down", code, rep)
	}
	if body := httpGet(t, "http://"+s.app.HTTPAddr()+"/healthz"); body != "ok\n" {
		t.Fatalf("/healthz %q", body)
	}
	resp, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: seqEvent(tenantA, 0)})
	if err != nil || !resp.GetResult().GetQueued() {
		t.Fatalf("publish without Kafka: %v %v, want queued", resp, err)
	}

	cluster, err := devstack.StartKafka(ports...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	waitFor(t, 60*time.Second, "the queued publish to reach Kafka", func() bool {
		return dbCount(t, s.dbURL, `SELECT count(*) FROM publish_queue`) == 0
	})
	if !strings.Contains(s.logs.String(), "connected to Kafka") {
		t.Error("the log does not say Kafka was connected")
	}
	recs := testenv.ConsumeAll(t, brokers, "healthtech.patient.events")
	checkSeqOrder(t, recs, map[string]int{tenantA: 1})
	if _, rep := readyz(t, s); !rep.Dependencies["kafka"].OK {
		t.Errorf("/readyz after Kafka appeared: %+v", rep)
	}
}

// TestStartsWithoutRegistry: a sidecar whose Schema Registry is unreachable starts with
// the schemas kept in PostgreSQL, says so in its log and /readyz, publishes events with
// those schemas (Avro) and without, and refuses a new schema with Unavailable.
func TestStartsWithoutRegistry(t *testing.T) {
	d := newDeps(t)
	first := startOn(t, d, nil)
	ctx := callCtx(t)
	if _, err := first.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{
		EventType: "patient.admitted",
		Schema:    `{"type":"record","name":"Admitted","fields":[{"name":"ward","type":"string"}]}`,
	}); err != nil {
		t.Fatal(err)
	}
	first.shutdown()

	d.registry = "http://127.0.0.1:1"
	s := startOn(t, d, nil)
	if !strings.Contains(s.logs.String(), "schema registry unreachable; starting with the schemas stored in PostgreSQL") {
		t.Error("the log does not say the registry is unreachable")
	}
	code, rep := readyz(t, s)
	if code != http.StatusOK || rep.Status != "degraded" || rep.Dependencies["schema-registry"].OK {
		t.Fatalf("/readyz %d %+v, want 200 degraded with the registry down", code, rep)
	}
	avro := &eventgwv1.Event{EventType: "patient.admitted", TenantId: tenantA,
		Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"ward":"B2"}`)}}
	resp, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: avro})
	if err != nil || resp.GetResult().GetQueued() {
		t.Fatalf("publish with a stored schema: %v %v", resp, err)
	}
	recs := testenv.ConsumeAll(t, d.kafka.Brokers, "healthtech.patient.events")
	if len(recs) != 1 || len(recs[0].Value) < 5 || recs[0].Value[0] != 0 {
		t.Fatalf("the event is not Avro in Confluent wire format: %d records", len(recs))
	}
	if _, err := s.events.Publish(ctx, &eventgwv1.PublishRequest{Event: seqEvent(tenantA, 0)}); err != nil {
		t.Fatalf("publish without a schema: %v", err)
	}
	_, err = s.events.RegisterSchema(ctx, &eventgwv1.RegisterSchemaRequest{
		EventType: "patient.discharged",
		Schema:    `{"type":"record","name":"Discharged","fields":[{"name":"ward","type":"string"}]}`,
	})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a new schema with the registry down: %v, want Unavailable", err)
	}
}

// TestKafkaAndPostgresDown: with both down a publish is not accepted (Unavailable,
// saying so); with PostgreSQL back it is queued, and with Kafka back it is published.
func TestKafkaAndPostgresDown(t *testing.T) {
	pg := testenv.StoppablePostgres(t)
	d := deps{kafka: testenv.NewKafka(t), registry: testenv.NewRegistry(t).URL(), dbURL: pg.DSN("postgres")}
	s := startOn(t, d, func(c *config.Config) { c.BreakerTimeout = 500 * time.Millisecond })
	down := kafkaOutage(d.kafka)
	down.Store(true)
	pg.Stop()
	_, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: seqEvent(tenantA, 0)})
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "both unavailable") {
		t.Fatalf("publish with Kafka and PostgreSQL down: %v, want Unavailable saying both", err)
	}
	code, rep := readyz(t, s)
	if code != http.StatusServiceUnavailable || rep.Status != "unavailable" {
		t.Errorf("/readyz with both down: %d %+v, want 503 unavailable", code, rep)
	}
	pg.Start()
	var resp *eventgwv1.PublishResponse
	waitFor(t, 30*time.Second, "a publish queued once PostgreSQL is back", func() bool {
		resp, err = s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: seqEvent(tenantA, 0)})
		return err == nil
	})
	if !resp.GetResult().GetQueued() {
		t.Fatalf("publish with Kafka down: %v, want queued", resp)
	}
	down.Store(false)
	waitFor(t, 60*time.Second, "the queue to drain", func() bool {
		return dbCount(t, d.dbURL, `SELECT count(*) FROM publish_queue`) == 0
	})
	checkSeqOrder(t, testenv.ConsumeAll(t, d.kafka.Brokers, "healthtech.patient.events"), map[string]int{tenantA: 1})
}

// TestPublishStreamKeepsOrderAcrossOutage: Kafka fails in the middle of a pipelined
// PublishStream; requests in flight to Kafka when it failed are queued, and the ones
// after them wait their turn, so on Kafka each tenant's events are still in order.
func TestPublishStreamKeepsOrderAcrossOutage(t *testing.T) {
	s := startSidecar(t, func(c *config.Config) { c.BreakerTimeout = 500 * time.Millisecond })
	tenants := []string{tenantA, "0b7c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5b", "1c7c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5c"}
	down := kafkaOutage(s.kafka)
	next := map[string]int{}
	for _, tn := range tenants { // the topic exists before the stream starts
		if _, err := s.events.Publish(callCtx(t), &eventgwv1.PublishRequest{Event: seqEvent(tn, 0)}); err != nil {
			t.Fatal(err)
		}
		next[tn] = 1
	}
	st, err := s.events.PublishStream(callCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	const requests = 60
	recvd := make(chan error, 1)
	queued := 0
	go func() {
		for range requests {
			resp, err := st.Recv()
			if err != nil {
				recvd <- err
				return
			}
			for _, r := range resp.GetResults() {
				if r.GetResult() == nil {
					recvd <- fmt.Errorf("request %d: %v", resp.GetRequestId(), r.GetError())
					return
				}
				if r.GetResult().GetQueued() {
					queued++
				}
			}
		}
		recvd <- nil
	}()
	for req := range requests {
		if req == 20 {
			down.Store(true)
		}
		evs := make([]*eventgwv1.Event, 0, len(tenants))
		for _, tn := range tenants {
			evs = append(evs, seqEvent(tn, next[tn]))
			next[tn]++
		}
		if err := st.Send(&eventgwv1.PublishStreamRequest{RequestId: uint64(req), Events: evs}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := <-recvd; err != nil {
		t.Fatal(err)
	}
	_ = st.CloseSend()
	if queued == 0 || queued == requests*len(tenants) {
		t.Fatalf("%d of %d events queued: the outage did not start mid-stream", queued, requests*len(tenants))
	}
	down.Store(false)
	waitFor(t, 60*time.Second, "the queue to drain", func() bool {
		return dbCount(t, s.dbURL, `SELECT count(*) FROM publish_queue`) == 0
	})
	dups := checkSeqOrder(t, testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.patient.events"), next)
	t.Logf("%d of %d events queued; %d duplicates on Kafka (in flight when the connection dropped)", queued, requests*len(tenants), dups)
}
