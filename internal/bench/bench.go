package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/app"
	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/devstack"
	gwevent "github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
)

// tenants are the partition keys the events spread over (gateway and direct alike), as
// a platform's many tenants would.
var tenants = func() []string {
	out := make([]string, 64)
	for i := range out {
		out[i] = benchTenant(i)
	}
	return out
}()

// benchTenant is the i-th tenant id of the bench's key space.
func benchTenant(i int) string { return fmt.Sprintf("6f1c2a9e-8d1b-4a4e-9f0e-%012x", i) }

var tenantSeq atomic.Uint64

func nextTenant() string { return tenants[tenantSeq.Add(1)%uint64(len(tenants))] }

// Options are the bench flags.
type Options struct {
	Duration time.Duration
	Sizes    string
	Only     string
	Suite    string
	Unix     bool
	// Layout: "cross" (the sidecar is its own `eventgw serve` process, as in a pod) or
	// "in-process" (one process: for profiling the whole path).
	Layout string
	// SidecarPprof, when set, is the sidecar process's --pprof-addr.
	SidecarPprof string
	// SidecarEnv are KEY=VALUE settings added to the sidecar process's environment
	// (cross-process layout), such as GOMAXPROCS or GOGC, to compare runtime settings.
	SidecarEnv []string
	// AggregateEvents and ReplayEvents size the LoadAggregate and ReplayEvents data.
	AggregateEvents int
	ReplayEvents    int
	// SubscribeEvents is how many events the subscribe suite pre-loads and drains.
	SubscribeEvents int
	// SubscribeKeys is how many tenant keys the pre-loaded events spread over (key
	// order allows one unacknowledged delivery per key).
	SubscribeKeys int
	// SagaRate is the paced rate (sagas per second) of the saga suite's latency
	// scenario.
	SagaRate int
	// CPUProfile, when set, is where a CPU profile of the run is written.
	CPUProfile string
}

// Result is one measured scenario.
type Result struct {
	Name     string
	Size     int
	Events   int64
	Elapsed  time.Duration
	P50, P99 time.Duration
	Errors   int64
	// The sidecar's CPU time over the scenario, its peak RSS during it and its RSS after
	// it (cross-process layout: the sidecar process alone; in-process: the whole process).
	SideCPU           time.Duration
	SidePeak, SideRSS int64
}

// Rate is events per second.
func (r Result) Rate() float64 { return float64(r.Events) / r.Elapsed.Seconds() }

// Main runs `eventgw bench`.
func Main(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o Options
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "how long each scenario runs")
	fs.StringVar(&o.Sizes, "sizes", "200,1024", "payload sizes in bytes, comma-separated")
	fs.StringVar(&o.Only, "only", "", "run only scenarios whose name contains this")
	fs.StringVar(&o.Suite, "suite", "all", "which suite: publish, store, subscribe, saga, fallback or all")
	fs.BoolVar(&o.Unix, "unix", false, "reach the sidecar over a unix socket instead of 127.0.0.1 TCP")
	fs.StringVar(&o.Layout, "layout", "cross", "cross: the sidecar runs as its own `eventgw serve` process (its CPU and RSS are measured from /proc); in-process: sidecar, load and Kafka in one process (for profiling with --cpuprofile)")
	fs.StringVar(&o.SidecarPprof, "sidecar-pprof-addr", "", "with --layout cross: serve the sidecar process's pprof here (loopback), to profile it under load")
	fs.Func("sidecar-env", "with --layout cross: KEY=VALUE added to the sidecar process's environment (repeatable), such as GOMAXPROCS=1", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", v)
		}
		o.SidecarEnv = append(o.SidecarEnv, v)
		return nil
	})
	fs.IntVar(&o.AggregateEvents, "aggregate-events", 10000, "events of the aggregates LoadAggregate is measured on (a multiple of 100)")
	fs.IntVar(&o.ReplayEvents, "replay-events", 100000, "events of the tenant ReplayEvents is measured on (a multiple of 100)")
	fs.IntVar(&o.SubscribeEvents, "subscribe-events", 200000, "events the subscribe suite pre-loads and drains")
	fs.IntVar(&o.SubscribeKeys, "subscribe-keys", 64, "tenant keys the subscribe suite's pre-loaded events spread over")
	fs.IntVar(&o.SagaRate, "saga-rate", 300, "sagas per second of the saga suite's paced scenario")
	fs.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.AggregateEvents < 100 || o.AggregateEvents%100 != 0 || o.ReplayEvents < 100 || o.ReplayEvents%100 != 0 {
		fmt.Fprintln(os.Stderr, "bench: --aggregate-events and --replay-events must be multiples of 100")
		return 2
	}
	if o.Layout != "cross" && o.Layout != "in-process" {
		fmt.Fprintln(os.Stderr, "bench: --layout must be cross or in-process")
		return 2
	}
	if o.Suite != "all" && o.Suite != "publish" && o.Suite != "store" && o.Suite != "subscribe" && o.Suite != "saga" && o.Suite != "fallback" {
		fmt.Fprintln(os.Stderr, "bench: --suite must be publish, store, subscribe, saga, fallback or all")
		return 2
	}
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	if _, err := run(o, out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	return 0
}

type env struct {
	events  eventgwv1.EventServiceClient
	brokers []string
	conns   []*grpc.ClientConn
	dbURL   string
	stack   *devstack.Stack
	cfg     config.Config
	side    *sidecarProc
	opts    Options
	dir     string
	// domain of the running scenario: its events go to healthtech.<domain>.events.
	domain string
	seq    int
}

func (e *env) topic() string { return "healthtech." + e.domain + ".events" }

// freshTopic gives the next scenario a topic of its own, created by the gateway (so
// direct producers write to the same settings) and empty.
func (e *env) freshTopic(ctx context.Context) error {
	e.seq++
	e.domain = "bench" + strconv.Itoa(e.seq)
	if _, err := e.events.Publish(ctx, &eventgwv1.PublishRequest{Event: e.event(200, false)}); err != nil {
		return fmt.Errorf("create the scenario's topic: %w", err)
	}
	return nil
}

// dropTopic deletes the scenario's topic, freeing what kfake holds of it.
func (e *env) dropTopic() {
	cl, err := sarama.NewClient(e.brokers, sarama.NewConfig())
	if err != nil {
		return
	}
	defer cl.Close()
	adm, err := sarama.NewClusterAdminFromClient(cl)
	if err != nil {
		return
	}
	_ = adm.DeleteTopic(e.topic())
	runtime.GC()
}

// run measures the suites o selects, prints the report to out and answers the results.
func run(o Options, out io.Writer) (results []Result, err error) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "eventgw-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)
	stack, err := devstack.Start(ctx, devstack.Options{KafkaPorts: []int{0, 0, 0}, RegistryAddr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		return nil, err
	}
	defer stack.Close()
	// Interrupted (Ctrl-C, SIGTERM): stop the private PostgreSQL and remove its folder
	// rather than leave them behind.
	sigs, finished := make(chan os.Signal, 1), make(chan struct{})
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer func() { signal.Stop(sigs); close(finished) }()
	go func() {
		select {
		case <-sigs:
			fmt.Fprintln(os.Stderr, "bench: interrupted; stopping the dev stack")
			_ = stack.Close()
			_ = os.RemoveAll(dir)
			os.Exit(130)
		case <-finished:
		}
	}()
	var cfg config.Config
	cfs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(cfs)
	_ = cfs.Parse(nil)
	cfg.GRPCAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	if o.Unix {
		cfg.GRPCAddr = "unix://" + dir + "/eventgw.sock"
	}
	cfg.KafkaBrokers = strings.Join(stack.Brokers(), ",")
	cfg.SchemaRegistryURL = stack.RegistryURL
	cfg.DatabaseURL = stack.DatabaseURL
	sc, err := startSidecar(ctx, o, cfg, dir, "sidecar")
	if err != nil {
		return nil, err
	}
	defer sc.stop()

	e := &env{brokers: stack.Brokers(), dbURL: stack.DatabaseURL, stack: stack, cfg: cfg, side: sc, opts: o, dir: dir}
	// Several connections, as several app processes or a pooled client would have.
	for range 4 {
		c, err := grpc.NewClient(sc.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		e.conns = append(e.conns, c)
		defer c.Close()
	}
	e.events = eventgwv1.NewEventServiceClient(e.conns[0])
	// Create the topic before measuring.

	fmt.Fprintf(out, "eventgw bench: %d cores (GOMAXPROCS %d), %s, kfake 3 brokers in this process, %v per scenario\n\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), o.Duration)
	var pubResults []Result
	for _, sz := range strings.Split(o.Sizes, ",") {
		if o.Suite != "all" && o.Suite != "publish" {
			break
		}
		size, err := strconv.Atoi(strings.TrimSpace(sz))
		if err != nil {
			return nil, fmt.Errorf("--sizes: %w", err)
		}
		for _, sc := range scenarios(e, size) {
			if o.Only != "" && !strings.Contains(sc.name, o.Only) {
				continue
			}
			if err := e.freshTopic(ctx); err != nil {
				return nil, err
			}
			e.side.resetPeak()
			u0 := e.side.usage()
			r, err := sc.run(o.Duration)
			u1 := e.side.usage()
			r.SideCPU, r.SidePeak, r.SideRSS = u1.cpu-u0.cpu, u1.hwm, u1.rss
			e.dropTopic()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", sc.name, err)
			}
			r.Name, r.Size = sc.name, size
			pubResults = append(pubResults, r)
			fmt.Fprintf(os.Stderr, "  %-42s %6d B  %10.0f ev/s  p50 %-9v p99 %-9v errors %d  sidecar %s µs/ev, RSS %d MB\n",
				r.Name, size, r.Rate(), r.P50, r.P99, r.Errors, perEvent(r), r.SideRSS>>20)
		}
	}
	if len(pubResults) > 0 {
		report(out, pubResults, o.Layout)
	}
	results = append(results, pubResults...)
	// The store suite runs second: it leaves events in Kafka and PostgreSQL that the
	// publish scenarios should not have to carry.
	if o.Suite == "store" || o.Suite == "all" {
		if len(pubResults) > 0 {
			fmt.Fprintln(out)
		}
		rs, err := e.storeSuite(ctx, o)
		if err != nil {
			return nil, err
		}
		reportStore(out, rs)
		results = append(results, rs...)
	}
	if o.Suite == "subscribe" || o.Suite == "all" {
		if len(results) > 0 {
			fmt.Fprintln(out)
		}
		rs, err := e.subscribeSuite(ctx, o)
		if err != nil {
			return nil, err
		}
		reportSubscribe(out, rs, subCap(o.Duration), cmp.Or(max(o.SubscribeKeys, 0), len(tenants)))
		for _, r := range rs {
			results = append(results, r.Result)
		}
	}
	if o.Suite == "saga" || o.Suite == "all" {
		if len(results) > 0 {
			fmt.Fprintln(out)
		}
		if o.SagaRate <= 0 {
			o.SagaRate = 300
		}
		rs, err := e.sagaSuite(ctx, o)
		if err != nil {
			return nil, err
		}
		reportSaga(out, rs, o.SagaRate)
		for _, r := range rs {
			results = append(results, r.Result)
		}
	}
	// Last: it takes Kafka down and leaves the queue empty when it is done.
	if o.Suite == "fallback" || o.Suite == "all" {
		if len(results) > 0 {
			fmt.Fprintln(out)
		}
		rs, err := e.fallbackSuite(ctx, o)
		if err != nil {
			return nil, err
		}
		reportFallback(out, rs)
		for _, r := range rs {
			results = append(results, r.Result)
		}
	}
	return results, nil
}

type scenario struct {
	name string
	run  func(d time.Duration) (Result, error)
}

func scenarios(e *env, size int) []scenario {
	return []scenario{
		{"direct sarama SyncProducer, 1 caller", func(d time.Duration) (Result, error) { return e.syncDirect(d, size, 1) }},
		{"direct sarama SyncProducer, 64 callers", func(d time.Duration) (Result, error) { return e.syncDirect(d, size, 64) }},
		{"direct sarama AsyncProducer", func(d time.Duration) (Result, error) { return e.asyncDirect(d, size, false) }},
		{"direct sarama AsyncProducer, CloudEvents headers", func(d time.Duration) (Result, error) { return e.asyncDirect(d, size, true) }},
		{"gateway Publish, 1 caller, payload_json", func(d time.Duration) (Result, error) { return e.publish(d, size, 1, false) }},
		{"gateway Publish, 1 caller, Struct", func(d time.Duration) (Result, error) { return e.publish(d, size, 1, true) }},
		{"gateway Publish, 64 callers, payload_json", func(d time.Duration) (Result, error) { return e.publish(d, size, 64, false) }},
		{"gateway Publish, 64 callers, Struct", func(d time.Duration) (Result, error) { return e.publish(d, size, 64, true) }},
		{"gateway PublishBatch 100, 16 callers, payload_json", func(d time.Duration) (Result, error) { return e.batch(d, size, 100, 16, false) }},
		{"gateway PublishBatch 100, 16 callers, Struct", func(d time.Duration) (Result, error) { return e.batch(d, size, 100, 16, true) }},
		{"gateway PublishStream 100/req, payload_json", func(d time.Duration) (Result, error) { return e.streams(d, size, 100, 16, false, 1) }},
		{"gateway PublishStream 100/req, Struct", func(d time.Duration) (Result, error) { return e.streams(d, size, 100, 16, true, 1) }},
		{"gateway 4 PublishStreams 100/req, payload_json", func(d time.Duration) (Result, error) { return e.streams(d, size, 100, 8, false, 4) }},
		{"gateway PublishStream 1/req, payload_json", func(d time.Duration) (Result, error) { return e.streams(d, size, 1, 2000, false, 1) }},
	}
}

// payloadJSON is a JSON object of about size bytes.
func payloadJSON(size int) []byte {
	base := `{"patient_id":"1d2c3b4a-5e6f-4a8b-9c0d-1e2f3a4b5c6d","name":"Jane Doe","date_of_birth":"1990-04-01","note":""}`
	pad := size - len(base)
	if pad < 0 {
		pad = 0
	}
	return []byte(strings.Replace(base, `"note":""`, `"note":"`+strings.Repeat("x", pad)+`"`, 1))
}

// event is an event of the running scenario's domain (each scenario has its own topic,
// deleted after it, so that no scenario pays for the data of the ones before).
func (e *env) event(size int, asStruct bool) *eventgwv1.Event {
	ev := &eventgwv1.Event{EventType: e.domain + ".measured", TenantId: nextTenant(), SourceService: "bench"}
	raw := payloadJSON(size)
	if asStruct {
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		s, _ := structpb.NewStruct(m)
		ev.Data = &eventgwv1.Event_Payload{Payload: s}
	} else {
		ev.Data = &eventgwv1.Event_PayloadJson{PayloadJson: raw}
	}
	return ev
}

// latencies collects per-call durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(ds []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, ds...)
	l.mu.Unlock()
}

func (l *latencies) fill(r *Result) {
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	r.P50 = l.d[len(l.d)/2].Round(time.Microsecond)
	r.P99 = l.d[len(l.d)*99/100].Round(time.Microsecond)
}

// loop runs fn on n goroutines for d; fn returns events done and an error count.
func loop(d time.Duration, n int, fn func(lat *[]time.Duration) (int64, int64)) Result {
	var (
		events, errs atomic.Int64
		lat          latencies
		wg           sync.WaitGroup
		stop         atomic.Bool
	)
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 1024)
			for !stop.Load() {
				ev, er := fn(&local)
				events.Add(ev)
				errs.Add(er)
			}
			lat.add(local)
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	r := Result{Events: events.Load(), Errors: errs.Load(), Elapsed: time.Since(start)}
	lat.fill(&r)
	return r
}

func (e *env) client(i int) eventgwv1.EventServiceClient {
	return eventgwv1.NewEventServiceClient(e.conns[i%len(e.conns)])
}

func (e *env) publish(d time.Duration, size, callers int, asStruct bool) (Result, error) {
	evs := make([]*eventgwv1.Event, len(tenants))
	for i := range evs {
		evs[i] = e.event(size, asStruct)
	}
	var n atomic.Int64
	return loop(d, callers, func(lat *[]time.Duration) (int64, int64) {
		i := int(n.Add(1))
		c := e.client(i)
		t := time.Now()
		_, err := c.Publish(context.Background(), &eventgwv1.PublishRequest{Event: evs[i%len(evs)]})
		*lat = append(*lat, time.Since(t))
		if err != nil {
			return 0, 1
		}
		return 1, 0
	}), nil
}

func (e *env) batch(d time.Duration, size, per, callers int, asStruct bool) (Result, error) {
	evs := make([]*eventgwv1.Event, per)
	for i := range evs {
		evs[i] = e.event(size, asStruct)
	}
	var n atomic.Int64
	return loop(d, callers, func(lat *[]time.Duration) (int64, int64) {
		c := e.client(int(n.Add(1)))
		t := time.Now()
		resp, err := c.PublishBatch(context.Background(), &eventgwv1.PublishBatchRequest{Events: evs})
		*lat = append(*lat, time.Since(t))
		if err != nil {
			return 0, int64(per)
		}
		var ok, bad int64
		for _, r := range resp.GetResults() {
			if r.GetResult() != nil {
				ok++
			} else {
				bad++
			}
		}
		return ok, bad
	}), nil
}

// streams runs n PublishStreams at once (on separate connections) and adds them up.
func (e *env) streams(d time.Duration, size, per, window int, asStruct bool, n int) (Result, error) {
	results := make([]Result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = e.stream(e.client(i), d, size, per, window, asStruct)
		}()
	}
	wg.Wait()
	var total Result
	for i, r := range results {
		if errs[i] != nil {
			return Result{}, errs[i]
		}
		total.Events += r.Events
		total.Errors += r.Errors
		total.Elapsed = max(total.Elapsed, r.Elapsed)
		total.P50, total.P99 = max(total.P50, r.P50), max(total.P99, r.P99)
	}
	return total, nil
}

// stream keeps window requests in flight on one PublishStream.
func (e *env) stream(client eventgwv1.EventServiceClient, d time.Duration, size, per, window int, asStruct bool) (Result, error) {
	evs := make([]*eventgwv1.Event, per)
	for i := range evs {
		evs[i] = e.event(size, asStruct)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := client.PublishStream(ctx)
	if err != nil {
		return Result{}, err
	}
	tokens := make(chan struct{}, window)
	sent := make(map[uint64]time.Time, window)
	var mu sync.Mutex
	var stop atomic.Bool
	start := time.Now()
	sendDone := make(chan error, 1)
	go func() {
		for id := uint64(1); !stop.Load(); id++ {
			tokens <- struct{}{}
			mu.Lock()
			sent[id] = time.Now()
			mu.Unlock()
			if err := st.Send(&eventgwv1.PublishStreamRequest{RequestId: id, Events: evs}); err != nil {
				sendDone <- err
				return
			}
		}
		sendDone <- st.CloseSend()
	}()
	go func() { time.Sleep(d); stop.Store(true) }()
	var (
		res Result
		lat latencies
		ds  []time.Duration
	)
	for {
		resp, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return Result{}, err
		}
		<-tokens
		mu.Lock()
		t0 := sent[resp.GetRequestId()]
		delete(sent, resp.GetRequestId())
		mu.Unlock()
		ds = append(ds, time.Since(t0))
		for _, r := range resp.GetResults() {
			if r.GetResult() != nil {
				res.Events++
			} else {
				res.Errors++
			}
		}
		if resp.GetError() != nil {
			res.Errors += int64(per)
		}
	}
	res.Elapsed = time.Since(start)
	if err := <-sendDone; err != nil {
		return Result{}, err
	}
	lat.add(ds)
	lat.fill(&res)
	return res, nil
}

func (e *env) saramaClient() (sarama.Client, error) {
	return sarama.NewClient(e.brokers, kafka.ProducerConfig("bench-direct", kafka.MaxMessageBytes(1<<20)))
}

func (e *env) message(size int) *sarama.ProducerMessage {
	return &sarama.ProducerMessage{
		Topic: e.topic(), Key: sarama.StringEncoder(nextTenant()),
		Value: sarama.ByteEncoder(payloadJSON(size)),
	}
}

func (e *env) syncDirect(d time.Duration, size, callers int) (Result, error) {
	cl, err := e.saramaClient()
	if err != nil {
		return Result{}, err
	}
	defer cl.Close()
	sp, err := sarama.NewSyncProducerFromClient(cl)
	if err != nil {
		return Result{}, err
	}
	defer sp.Close()
	return loop(d, callers, func(lat *[]time.Duration) (int64, int64) {
		m := e.message(size)
		t := time.Now()
		_, _, err := sp.SendMessage(m)
		*lat = append(*lat, time.Since(t))
		if err != nil {
			return 0, 1
		}
		return 1, 0
	}), nil
}

// asyncDirect floods a direct AsyncProducer; withHeaders writes the same records the
// gateway writes (a fresh event id and the CloudEvents envelope per event), which is
// what an application doing the gateway's job with raw sarama would send.
func (e *env) asyncDirect(d time.Duration, size int, withHeaders bool) (Result, error) {
	cl, err := e.saramaClient()
	if err != nil {
		return Result{}, err
	}
	defer cl.Close()
	ap, err := sarama.NewAsyncProducerFromClient(cl)
	if err != nil {
		return Result{}, err
	}
	var res Result
	var wg sync.WaitGroup
	wg.Add(2)
	var ok, bad atomic.Int64
	go func() {
		defer wg.Done()
		for range ap.Successes() {
			ok.Add(1)
		}
	}()
	go func() {
		defer wg.Done()
		for pe := range ap.Errors() {
			if bad.Add(1) == 1 {
				fmt.Fprintln(os.Stderr, "  first direct async error:", pe.Err)
			}
		}
	}()
	start := time.Now()
	deadline := start.Add(d)
	value := sarama.ByteEncoder(payloadJSON(size))
	for i := 0; ; i++ {
		if i%256 == 0 && time.Now().After(deadline) {
			break
		}
		m := &sarama.ProducerMessage{Topic: e.topic(), Key: sarama.StringEncoder(nextTenant()), Value: value}
		if withHeaders {
			id, _ := uuid.NewV7()
			ev := gwevent.Event{
				ID: id.String(), Type: e.domain + ".measured", TenantID: string(m.Key.(sarama.StringEncoder)),
				Source: "bench", CorrelationID: id.String(), Time: time.Now(),
			}
			m.Headers = ev.Headers("")
		}
		ap.Input() <- m
	}
	ap.AsyncClose()
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.Events, res.Errors = ok.Load(), bad.Load()
	return res, nil
}

func report(out io.Writer, rs []Result, layout string) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tpayload\tevents/s\tp50\tp99\terrors\tvs direct\tsidecar CPU µs/ev\tsidecar peak RSS MB\tRSS after MB\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%d B\t%.0f\t%v\t%v\t%d\t%s\t%s\t%d\t%d\t\n", r.Name, r.Size, r.Rate(), r.P50, r.P99, r.Errors, ratio(r, rs),
			perEvent(r), r.SidePeak>>20, r.SideRSS>>20)
	}
	_ = tw.Flush()
	if layout == "cross" {
		fmt.Fprintln(out, "\nLayout: the sidecar is its own `eventgw serve` process; Kafka (kfake), the registry and")
		fmt.Fprintln(out, "PostgreSQL run in the bench process with the load, as pods share a cluster. Sidecar CPU")
		fmt.Fprintln(out, "is its /proc/<pid>/stat utime+stime over the scenario (10 ms ticks) per event; for the")
		fmt.Fprintln(out, "direct scenarios it is the idle sidecar's.")
	} else {
		fmt.Fprintln(out, "\nLayout: in-process (sidecar, load and kfake in one process): sidecar CPU is the whole process's.")
	}
	fmt.Fprintln(out, "\nvs direct: throughput ratio against the direct AsyncProducer (batched and streamed; in brackets")
	fmt.Fprintln(out, "against the AsyncProducer writing the same CloudEvents records), or against")
	fmt.Fprintln(out, "the SyncProducer with as many callers (Publish); for Publish with 1 caller, also the p99 added.")
}

// perEvent is the sidecar's CPU per event of r in µs.
func perEvent(r Result) string {
	if r.Events == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(r.SideCPU.Microseconds())/float64(r.Events))
}

func ratio(r Result, rs []Result) string {
	find := func(name string) *Result {
		for i := range rs {
			if rs[i].Name == name && rs[i].Size == r.Size {
				return &rs[i]
			}
		}
		return nil
	}
	switch {
	case strings.Contains(r.Name, "PublishBatch"), strings.Contains(r.Name, "PublishStream"):
		b, h := find("direct sarama AsyncProducer"), find("direct sarama AsyncProducer, CloudEvents headers")
		if b != nil && h != nil {
			return fmt.Sprintf("%.2fx async (%.2fx same records)", r.Rate()/b.Rate(), r.Rate()/h.Rate())
		}
	case strings.HasPrefix(r.Name, "gateway Publish, 1 caller"):
		if b := find("direct sarama SyncProducer, 1 caller"); b != nil {
			return fmt.Sprintf("%.2fx sync, p99 +%v", r.Rate()/b.Rate(), (r.P99 - b.P99).Round(time.Microsecond))
		}
	case strings.HasPrefix(r.Name, "gateway Publish, 64 callers"):
		if b := find("direct sarama SyncProducer, 64 callers"); b != nil {
			return fmt.Sprintf("%.2fx sync", r.Rate()/b.Rate())
		}
	}
	return "-"
}

// startApp builds and runs a sidecar; stop shuts it down and waits for it.
func startApp(ctx context.Context, cfg config.Config) (*app.App, func(), error) {
	a, err := app.Build(ctx, cfg, zap.NewNop())
	if err != nil {
		return nil, nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	return a, func() {
		cancel()
		if err := <-done; err != nil {
			fmt.Fprintln(os.Stderr, "bench: sidecar stopped with", err)
		}
	}, nil
}
