package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// FaultTarget is a sidecar under fault injection as the fault suite sees it: from
// outside, through its gRPC API, its /metrics, the PostgreSQL database it uses and a
// plain Kafka consumer.
type FaultTarget struct {
	Conn        *grpc.ClientConn
	MetricsURL  string // http://host:port/metrics
	DatabaseURL string
	Brokers     []string
	// TopicPrefix is --topic-prefix (default healthtech).
	TopicPrefix string
}

// LoadOptions shapes the steady load of a Load.
type LoadOptions struct {
	// Callers of each kind, each with its own tenant: Publish (one event a call),
	// PublishBatch (8 events a call), PublishStream (4 events a request, one request in
	// flight on a stream kept open), AppendEvents (1 to 3 events a call on one of its 3
	// aggregates, expected version exact).
	Publishers, Batchers, Streamers, Appenders int
	// Sagas starts sagas of a two-step workflow (one caller) and runs a worker that
	// completes every task.
	Sagas bool
	// PublishType is the type of the published events (default appointment.booked);
	// their payload is {"w": caller, "seq": n}.
	PublishType string
	// Pace is the pause between two calls of a caller (default 10 ms; 50 ms after a
	// failure).
	Pace time.Duration
	// CallTimeout is each call's deadline (default 10 s).
	CallTimeout time.Duration
}

// pubRecord is what the callers know of one published event.
type pubRecord struct {
	tenant   string
	seq      int
	failures int // attempts answered with an error: their outcome is unknown
	acked    bool
	queued   bool
}

type appRecord struct {
	agg     string
	version int64
}

// Load drives steady load through a sidecar and records every answer. Callers retry
// a call that failed with the same event ids (appends: the same request), as a client
// should; an event whose attempts all failed when the load stops is "unknown".
type Load struct {
	t      testing.TB
	target FaultTarget
	opt    LoadOptions
	events eventgwv1.EventServiceClient
	store  eventgwv1.EventStoreServiceClient
	sagas  eventgwv1.SagaServiceClient

	stopped      atomic.Bool
	wg           sync.WaitGroup
	workerCtx    context.Context
	workerCancel context.CancelFunc
	workerDone   chan struct{}
	okCalls      atomic.Int64
	queuedNow    atomic.Int64

	mu         sync.Mutex
	pub        map[string]*pubRecord
	app        map[string]appRecord
	aggs       map[string]bool
	sagaIDs    map[string]bool
	sagaTenant string
	workflow   string
	actions    []string
	calls, ok  int
	failed     map[codes.Code]int
	allowed    map[codes.Code]bool
	unexpected int
	direct     int
	queued     int
	appended   int
	partitions map[int32]bool // of events published directly
}

// StartLoad starts the callers.
func StartLoad(t testing.TB, target FaultTarget, opt LoadOptions) *Load {
	t.Helper()
	if opt.PublishType == "" {
		opt.PublishType = "appointment.booked"
	}
	if opt.Pace == 0 {
		opt.Pace = 10 * time.Millisecond
	}
	if opt.CallTimeout == 0 {
		opt.CallTimeout = 10 * time.Second
	}
	if target.TopicPrefix == "" {
		target.TopicPrefix = "healthtech"
	}
	l := &Load{
		t: t, target: target, opt: opt,
		events: eventgwv1.NewEventServiceClient(target.Conn),
		store:  eventgwv1.NewEventStoreServiceClient(target.Conn),
		sagas:  eventgwv1.NewSagaServiceClient(target.Conn),
		pub:    map[string]*pubRecord{}, app: map[string]appRecord{}, aggs: map[string]bool{},
		sagaIDs: map[string]bool{}, failed: map[codes.Code]int{}, allowed: map[codes.Code]bool{},
		partitions: map[int32]bool{},
		workerDone: make(chan struct{}),
	}
	l.workerCtx, l.workerCancel = context.WithCancel(context.Background())
	w := 0
	for _, k := range []struct {
		n    int
		kind string
		size int
	}{{opt.Publishers, "publish", 1}, {opt.Batchers, "batch", 8}, {opt.Streamers, "stream", 4}} {
		for range k.n {
			l.wg.Add(1)
			go l.publisher(k.kind, k.size, w)
			w++
		}
	}
	for range opt.Appenders {
		l.wg.Add(1)
		go l.appender()
	}
	if opt.Sagas {
		l.setupSagas()
		l.wg.Add(1)
		go l.sagaStarter()
		go l.sagaWorker()
	} else {
		close(l.workerDone)
	}
	t.Cleanup(func() {
		l.Stop()
		l.workerCancel()
		<-l.workerDone
	})
	return l
}

// Allow declares gRPC codes a call may fail with during this fault (the guarantee
// allows them: Unavailable while PostgreSQL is down, for instance). Any other failure
// fails the test.
func (l *Load) Allow(cs ...codes.Code) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cs {
		l.allowed[c] = true
	}
}

// OKCalls is how many calls have succeeded so far.
func (l *Load) OKCalls() int64 { return l.okCalls.Load() }

// Queued is how many published events were answered queued so far.
func (l *Load) Queued() int64 { return l.queuedNow.Load() }

// Partitions lists the partitions events were published to directly so far.
func (l *Load) Partitions() []int32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int32, 0, len(l.partitions))
	for p := range l.partitions {
		out = append(out, p)
	}
	return out
}

// Acknowledged lists the ids of the published events answered success so far.
func (l *Load) Acknowledged() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, p := range l.pub {
		if p.acked {
			out = append(out, id)
		}
	}
	return out
}

// PublishTopic is the topic of the published events.
func (l *Load) PublishTopic() string {
	return l.target.TopicPrefix + "." + domain(l.opt.PublishType) + ".events"
}

// WaitProgress waits until n more calls have succeeded.
func (l *Load) WaitProgress(n int64, within time.Duration) {
	l.t.Helper()
	if l.stopped.Load() {
		return // stopped by AwaitRecovery
	}
	want := l.okCalls.Load() + n
	Eventually(l.t, within, fmt.Sprintf("%d more successful calls", n), func() bool { return l.okCalls.Load() >= want })
}

// Stop stops the callers (each finishes its call in progress); the saga worker keeps
// completing tasks until Finish.
func (l *Load) Stop() {
	if l.stopped.CompareAndSwap(false, true) {
		l.wg.Wait()
	}
}

func (l *Load) pause(failed bool) {
	d := l.opt.Pace
	if failed {
		d = max(d, 50*time.Millisecond)
	}
	time.Sleep(d)
}

// record counts a call: ok, or failed with code (kind names the call in the error of
// a code the fault does not allow).
func (l *Load) record(kind string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls++
	if err == nil {
		l.ok++
		l.okCalls.Add(1)
		return
	}
	c := status.Code(err)
	l.failed[c]++
	if !l.allowed[c] {
		l.unexpected++
		if l.unexpected <= 5 {
			l.t.Errorf("%s failed with %v, which this fault does not allow: %v", kind, c, err)
		}
	}
}

func (l *Load) publisher(kind string, size, w int) {
	defer l.wg.Done()
	tenant := uuid.NewString()
	seq := 0
	var pending []*eventgwv1.Event
	var st *pubStream
	defer func() {
		if st != nil {
			st.cancel()
		}
	}()
	for !l.stopped.Load() {
		// Retries first, in order, then new events.
		for len(pending) < size {
			ev := &eventgwv1.Event{
				EventId: uuid.NewString(), EventType: l.opt.PublishType, TenantId: tenant,
				Data: &eventgwv1.Event_PayloadJson{PayloadJson: fmt.Appendf(nil, `{"w":%d,"seq":%d}`, w, seq)},
			}
			l.mu.Lock()
			l.pub[ev.EventId] = &pubRecord{tenant: tenant, seq: seq}
			l.mu.Unlock()
			seq++
			pending = append(pending, ev)
		}
		results, err := l.sendPublish(kind, &st, pending)
		var retry []*eventgwv1.Event
		l.mu.Lock()
		for i, ev := range pending {
			r := l.pub[ev.EventId]
			if res := results[i]; res != nil {
				r.acked, r.queued = true, res.GetQueued()
				if r.queued {
					l.queued++
					l.queuedNow.Add(1)
				} else {
					l.direct++
					l.partitions[res.GetPartition()] = true
				}
				continue
			}
			r.failures++
			retry = append(retry, ev)
		}
		l.mu.Unlock()
		if err == nil && len(retry) > 0 {
			err = status.Error(codes.Unknown, "an event failed without a code")
		}
		l.record(kind, err)
		pending = retry
		l.pause(err != nil)
	}
}

type pubStream struct {
	s      eventgwv1.EventService_PublishStreamClient
	cancel context.CancelFunc
	next   uint64
}

// sendPublish publishes evs with one call of kind; results[i] is nil when event i
// failed, and err is the call's failure (or the first event's).
func (l *Load) sendPublish(kind string, st **pubStream, evs []*eventgwv1.Event) ([]*eventgwv1.PublishResult, error) {
	results := make([]*eventgwv1.PublishResult, len(evs))
	ctx, cancel := context.WithTimeout(context.Background(), l.opt.CallTimeout)
	defer cancel()
	switch kind {
	case "publish":
		resp, err := l.events.Publish(ctx, &eventgwv1.PublishRequest{Event: evs[0]})
		if err != nil {
			return results, err
		}
		results[0] = resp.GetResult()
		return results, nil
	case "batch":
		resp, err := l.events.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: evs})
		if err != nil {
			return results, err
		}
		return eventResults(results, resp.GetResults())
	}
	if *st == nil {
		sctx, scancel := context.WithCancel(context.Background())
		s, err := l.events.PublishStream(sctx)
		if err != nil {
			scancel()
			return results, err
		}
		*st = &pubStream{s: s, cancel: scancel}
	}
	p := *st
	p.next++
	timer := time.AfterFunc(l.opt.CallTimeout, p.cancel)
	err := p.s.Send(&eventgwv1.PublishStreamRequest{RequestId: p.next, Events: evs})
	var resp *eventgwv1.PublishStreamResponse
	if err == nil || errors.Is(err, io.EOF) {
		// After io.EOF from Send, Recv has the stream's status.
		resp, err = p.s.Recv()
	}
	if !timer.Stop() && err != nil {
		err = status.Error(codes.DeadlineExceeded, "no answer on the stream within the call timeout")
	}
	if err != nil {
		p.cancel()
		*st = nil
		return results, err
	}
	if e := resp.GetError(); e != nil {
		return results, status.Error(codes.Code(e.GetCode()), e.GetMessage())
	}
	return eventResults(results, resp.GetResults())
}

func eventResults(results []*eventgwv1.PublishResult, rs []*eventgwv1.EventResult) ([]*eventgwv1.PublishResult, error) {
	if len(rs) != len(results) {
		return results, status.Errorf(codes.Unknown, "%d results for %d events", len(rs), len(results))
	}
	var first error
	for i, r := range rs {
		if e := r.GetError(); e != nil {
			if first == nil {
				first = status.Error(codes.Code(e.GetCode()), e.GetMessage())
			}
			continue
		}
		results[i] = r.GetResult()
	}
	return results, first
}

func (l *Load) appender() {
	defer l.wg.Done()
	tenant := uuid.NewString()
	aggs := []string{uuid.NewString(), uuid.NewString(), uuid.NewString()}
	l.mu.Lock()
	for _, a := range aggs {
		l.aggs[a] = true
	}
	l.mu.Unlock()
	versions := map[string]int64{}
	var pending *eventgwv1.AppendEventsRequest
	for i := 0; !l.stopped.Load(); i++ {
		if pending == nil {
			agg := aggs[i%len(aggs)]
			evs := make([]*eventgwv1.NewEvent, 1+i%3)
			for j := range evs {
				evs[j] = &eventgwv1.NewEvent{EventId: uuid.NewString(), EventType: "patient.updated",
					Body: &eventgwv1.NewEvent_DataJson{DataJson: fmt.Appendf(nil, `{"i":%d}`, i)}}
			}
			pending = &eventgwv1.AppendEventsRequest{
				TenantId: tenant, AggregateType: "Patient", AggregateId: agg, Events: evs,
				ExpectedVersion: &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_Exact{Exact: versions[agg]}},
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.opt.CallTimeout)
		resp, err := l.store.AppendEvents(ctx, pending)
		cancel()
		l.record("AppendEvents", err)
		if err == nil {
			n := int64(len(pending.GetEvents()))
			l.mu.Lock()
			for j, e := range pending.GetEvents() {
				l.app[e.GetEventId()] = appRecord{agg: pending.GetAggregateId(), version: resp.GetVersion() - n + int64(j) + 1}
			}
			l.appended += int(n)
			l.mu.Unlock()
			versions[pending.GetAggregateId()] = resp.GetVersion()
			pending = nil
		} else if cur, ok := versionConflict(err); ok {
			// A retry with the same event ids is answered as the first attempt was; a
			// conflict means it was not.
			l.t.Errorf("append retried with the same event ids was refused as a version conflict (current %d): %v", cur, err)
			versions[pending.GetAggregateId()] = cur
			pending = nil
		}
		l.pause(err != nil)
	}
}

func versionConflict(err error) (int64, bool) {
	for _, d := range status.Convert(err).Details() {
		if vc, ok := d.(*eventgwv1.VersionConflict); ok {
			return vc.GetCurrentVersion(), true
		}
	}
	return 0, false
}

func (l *Load) setupSagas() {
	l.t.Helper()
	suffix := strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	l.workflow = "fault-" + suffix
	l.actions = []string{"fault_a_" + suffix, "fault_b_" + suffix}
	l.sagaTenant = uuid.NewString()
	retry := &eventgwv1.RetryPolicy{MaxAttempts: 100, InitialBackoffMs: 100, MaxBackoffMs: 1000}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := l.sagas.RegisterWorkflow(ctx, &eventgwv1.RegisterWorkflowRequest{Workflow: &eventgwv1.WorkflowDefinition{
		WorkflowId: l.workflow, Name: "fault suite",
		Steps: []*eventgwv1.WorkflowStep{
			{StepId: "a", Action: l.actions[0], TimeoutSeconds: 3, Retry: retry},
			{StepId: "b", Action: l.actions[1], TimeoutSeconds: 3, Retry: retry},
		},
	}})
	if err != nil {
		l.t.Fatalf("register the fault suite's workflow: %v", err)
	}
}

func (l *Load) sagaStarter() {
	defer l.wg.Done()
	key := ""
	for !l.stopped.Load() {
		if key == "" {
			key = uuid.NewString()
		}
		ctx, cancel := context.WithTimeout(context.Background(), l.opt.CallTimeout)
		resp, err := l.sagas.StartSaga(ctx, &eventgwv1.StartSagaRequest{
			WorkflowId: l.workflow, TenantId: l.sagaTenant, IdempotencyKey: key,
			InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: []byte(`{"n":1}`)},
		})
		cancel()
		l.record("StartSaga", err)
		if err == nil {
			l.mu.Lock()
			l.sagaIDs[resp.GetSaga().GetSagaId()] = true
			l.mu.Unlock()
			key = ""
		}
		time.Sleep(max(10*l.opt.Pace, 50*time.Millisecond))
	}
}

// sagaWorker completes every task of the workflow. An answer that fails is dropped:
// the task times out and is given again. A stream that ends is opened again.
func (l *Load) sagaWorker() {
	defer close(l.workerDone)
	for l.workerCtx.Err() == nil {
		stream, err := l.sagas.PollTasks(l.workerCtx, &eventgwv1.PollTasksRequest{
			WorkerId: "fault-suite", Actions: l.actions, MaxInFlight: 32, PayloadAsJson: true,
		})
		for err == nil {
			var resp *eventgwv1.PollTasksResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			for _, task := range resp.GetTasks() {
				ctx, cancel := context.WithTimeout(l.workerCtx, l.opt.CallTimeout)
				_, cerr := l.sagas.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{
					TaskId: task.GetTaskId(), Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`{}`)},
				})
				cancel()
				if l.workerCtx.Err() != nil {
					return
				}
				// FailedPrecondition: the task timed out meanwhile and was given again.
				if status.Code(cerr) == codes.FailedPrecondition {
					cerr = nil
				}
				l.record("CompleteTask", cerr)
			}
		}
		select {
		case <-l.workerCtx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// sqlQuery runs f on a new connection to the sidecar's database (a few seconds at
// most: PostgreSQL may be down).
func (tg FaultTarget) sqlQuery(f func(ctx context.Context, conn *pgx.Conn) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, tg.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return f(ctx, conn)
}

func (tg FaultTarget) count(sql string, args ...any) (int64, error) {
	var n int64
	err := tg.sqlQuery(func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, sql, args...).Scan(&n)
	})
	return n, err
}

// Top is the highest position in stored_events now: once the outbox cursor has
// reached it, every event stored so far is on Kafka.
func (tg FaultTarget) Top(t testing.TB) int64 {
	t.Helper()
	var top int64
	Eventually(t, 60*time.Second, "reading the highest stored position", func() bool {
		var err error
		top, err = tg.count(`SELECT coalesce(max(position), 0) FROM stored_events`)
		return err == nil
	})
	return top
}

// Metrics reads /metrics: sample name (with labels) → value.
func (tg FaultTarget) Metrics() (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, tg.MetricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

// Breakers answers the circuit breakers' states by dependency (0 closed, 1 open, 2
// half-open).
func (tg FaultTarget) Breakers() (map[string]float64, error) {
	m, err := tg.Metrics()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for k, v := range m {
		if rest, ok := strings.CutPrefix(k, `circuit_breaker_state{`); ok {
			dep := rest
			if i := strings.Index(rest, `dependency="`); i >= 0 {
				dep = rest[i+len(`dependency="`):]
				dep = dep[:strings.IndexByte(dep, '"')]
			}
			out[dep] = v
		}
	}
	return out, nil
}

// notRecovered says what is not back to normal yet ("" when everything is): a circuit
// breaker not closed, publishes still being queued, rows left in publish_queue, or the
// outbox relay not yet up to position top.
func (tg FaultTarget) notRecovered(top int64) string {
	m, err := tg.Metrics()
	if err != nil {
		return "metrics: " + err.Error()
	}
	var open []string
	for k, v := range m {
		if strings.HasPrefix(k, "circuit_breaker_state{") && v != 0 {
			open = append(open, k)
		}
	}
	if len(open) > 0 {
		sort.Strings(open)
		return "breakers not closed: " + strings.Join(open, ", ")
	}
	var queued, cursor int64
	err = tg.sqlQuery(func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM publish_queue), (SELECT position FROM outbox_cursor WHERE id = 1)`).Scan(&queued, &cursor)
	})
	switch {
	case err != nil:
		return "postgres: " + err.Error()
	case m["event_publish_queued_mode"] != 0:
		return fmt.Sprintf("publishes are still answered queued (%d rows in publish_queue)", queued)
	case queued > 0:
		return fmt.Sprintf("%d rows left in publish_queue", queued)
	case cursor < top:
		return fmt.Sprintf("outbox relayed up to position %d of %d", cursor, top)
	}
	return ""
}

// RecoveryUnderLoad is how long AwaitRecovery waits for a sidecar to get back to normal
// while the callers go on, before it says so and stops them.
const RecoveryUnderLoad = 30 * time.Second

// Recovery is how long a sidecar took to get back to normal after a fault ended.
type Recovery struct {
	After time.Duration
	// UnderLoad: it recovered while the callers went on; false: only once they stopped.
	UnderLoad bool
}

// AwaitRecovery waits until the sidecar is back to normal after a fault that ended at
// end: every breaker closed, publishing directly again with publish_queue empty, and the
// outbox relayed up to top (see Top, read when the fault ended). extra, when set, must
// hold too (it may act, as a caller retrying would). A sidecar that is not back within
// RecoveryUnderLoad while the callers go on fails the test; then the callers are
// stopped and it must recover without them.
func (l *Load) AwaitRecovery(end time.Time, top int64, extra func() bool) Recovery {
	l.t.Helper()
	why, last := "", time.Now()
	recovered := func() bool {
		why = l.target.notRecovered(top)
		if why == "" && extra != nil && !extra() {
			why = "the fault's own condition"
		}
		if why != "" && time.Since(last) >= 5*time.Second {
			l.t.Logf("%v after the fault: %s", time.Since(end).Round(time.Second), why)
			last = time.Now()
		}
		return why == ""
	}
	for deadline := time.Now().Add(RecoveryUnderLoad); !recovered(); time.Sleep(25 * time.Millisecond) {
		if time.Now().After(deadline) {
			l.t.Errorf("not back to normal %v after the fault ended, with the callers going on: %s", RecoveryUnderLoad, why)
			l.Stop()
			Eventually(l.t, 90*time.Second, "the sidecar to recover once the callers stopped", recovered, func() string { return why })
			return Recovery{After: time.Since(end)}
		}
	}
	return Recovery{After: time.Since(end), UnderLoad: true}
}

// Eventually polls cond every 25 ms until it holds, and fails the test after within;
// detail, when given, explains what was still missing.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool, detail ...func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			for _, d := range detail {
				msg += ": " + d()
			}
			t.Fatalf("timed out after %v waiting for %s%s", within, what, msg)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// FaultRow is one fault's line of the table.
type FaultRow struct {
	Fault string
	// Calls made and succeeded (RPCs; a PublishStream request counts as one); Failed by
	// gRPC code.
	Calls, OK int
	Failed    map[codes.Code]int
	// Events answered success: published to Kafka directly, queued in PostgreSQL,
	// appended to the event store; sagas started.
	Direct, Queued, Appended, Sagas int
	// Unknown: events whose every attempt failed when the load stopped (never
	// acknowledged; they may or may not be on Kafka).
	Unknown int
	// Lost: acknowledged events missing from Kafka (or appends missing from
	// PostgreSQL). Must be 0.
	Lost int
	// Dups: extra copies on Kafka of an event id, by cause: a caller's retry after a
	// failed call, the sidecar's own re-send of a queued or appended event (at least
	// once), a subscriber's redelivery of an unacknowledged delivery.
	Dups map[string]int
	// Stuck: sagas not COMPLETED.
	Stuck int
	// Recovery: from the end of the fault until breakers closed and backlogs empty.
	Recovery Recovery
}

// FaultTableHeader is the header of FaultTable's output.
const FaultTableHeader = "| fault | calls | ok | failed (code × calls) | events direct / queued / appended | sagas | unknown | lost | duplicates | stuck sagas | recovery |\n" +
	"|---|---:|---:|---|---|---:|---:|---:|---|---:|---:|\n"

// FaultTable formats rows as a Markdown table.
func FaultTable(rows []FaultRow) string {
	var b strings.Builder
	b.WriteString(FaultTableHeader)
	for _, r := range rows {
		b.WriteString(r.String())
	}
	return b.String()
}

func (r FaultRow) String() string {
	var failed []string
	for c, n := range r.Failed {
		failed = append(failed, fmt.Sprintf("%v × %d", c, n))
	}
	sort.Strings(failed)
	if len(failed) == 0 {
		failed = []string{"0"}
	}
	var dups []string
	total := 0
	for cause, n := range r.Dups {
		if n > 0 {
			dups = append(dups, fmt.Sprintf("%d %s", n, cause))
			total += n
		}
	}
	sort.Strings(dups)
	d := "0"
	if total > 0 {
		d = fmt.Sprintf("%d (%s)", total, strings.Join(dups, ", "))
	}
	rec := fmt.Sprintf("%.1f s", r.Recovery.After.Seconds())
	if !r.Recovery.UnderLoad {
		rec = fmt.Sprintf("none in %v under load; %s once it stopped", RecoveryUnderLoad, rec)
	}
	return fmt.Sprintf("| %s | %d | %d | %s | %d / %d / %d | %d | %d | %d | %s | %d | %s |\n",
		r.Fault, r.Calls, r.OK, strings.Join(failed, ", "), r.Direct, r.Queued, r.Appended, r.Sagas,
		r.Unknown, r.Lost, d, r.Stuck, rec)
}

// Finish stops the load, waits until everything acknowledged has been relayed, and
// checks, with a plain Kafka consumer and SQL:
//   - every publish answered success (directly or queued) is on Kafka; duplicates are
//     counted, and allowed only where the guarantee is at least once (a caller's retry
//     after a failed call, a queued event the sidecar re-sent); one answered as
//     published directly at its first attempt must be there exactly once;
//   - per tenant (the partition key), the first copies are in the order of the calls;
//   - every acknowledged append is stored at its version, no aggregate has a gap, and
//     every stored event (sagas' included) is on Kafka, in version order per aggregate;
//   - every saga started completes (none stuck).
//
// It fails the test for any violation and answers the fault's row.
func (l *Load) Finish(fault string, recovery Recovery) FaultRow {
	l.t.Helper()
	l.Stop()
	tg := l.target
	why := ""
	drained := func() bool { why = tg.notRecovered(tg.Top(l.t)); return why == "" }
	Eventually(l.t, 90*time.Second, "the backlog to drain after the load stopped", drained, func() string { return why })
	row := FaultRow{Fault: fault, Recovery: recovery, Dups: map[string]int{}, Failed: map[codes.Code]int{}}

	if l.opt.Sagas {
		row.Sagas, row.Stuck = l.checkSagas()
		Eventually(l.t, 60*time.Second, "the saga events to drain", drained, func() string { return why })
	}
	l.workerCancel()
	<-l.workerDone

	l.mu.Lock()
	defer l.mu.Unlock()
	row.Calls, row.OK, row.Direct, row.Queued, row.Appended = l.calls, l.ok, l.direct, l.queued, l.appended
	for c, n := range l.failed {
		row.Failed[c] = n
	}
	l.checkPublished(&row)
	l.checkStored(&row)
	return row
}

func (l *Load) checkPublished(row *FaultRow) {
	if len(l.pub) == 0 {
		return
	}
	topic := l.PublishTopic()
	copies := map[string]int{}
	last := map[string]int{} // tenant → seq of its last first copy
	outOfOrder := 0
	for _, r := range ConsumeAll(l.t, l.target.Brokers, topic) {
		id := headerValue(r.Headers, "ce_id")
		p, ours := l.pub[id]
		copies[id]++
		if !ours || copies[id] > 1 {
			continue
		}
		if prev, seen := last[p.tenant]; seen && p.seq <= prev {
			outOfOrder++
			if outOfOrder <= 5 {
				l.t.Errorf("tenant %s: seq %d on Kafka after seq %d (partition %d offset %d)", p.tenant, p.seq, prev, r.Partition, r.Offset)
			}
		}
		last[p.tenant] = p.seq
	}
	for id, p := range l.pub {
		n := copies[id]
		if !p.acked {
			row.Unknown++
			if n > 1 {
				row.Dups["retry"] += n - 1
			}
			continue
		}
		switch {
		case n == 0:
			row.Lost++
			if row.Lost <= 5 {
				l.t.Errorf("event %s (tenant %s seq %d) was answered %s but is not on Kafka", id, p.tenant, p.seq, answered(p))
			}
		case n > 1 && p.failures > 0:
			row.Dups["retry"] += n - 1
		case n > 1 && p.queued:
			row.Dups["re-sent"] += n - 1
		case n > 1:
			l.t.Errorf("event %s was answered published directly at its first attempt, and is on Kafka %d times", id, n)
			row.Dups["NOT ALLOWED"] += n - 1
		}
	}
	if outOfOrder > 0 {
		l.t.Errorf("%d events reached Kafka out of call order for their key", outOfOrder)
	}
}

func answered(p *pubRecord) string {
	if p.queued {
		return "queued"
	}
	return "published"
}

func (l *Load) checkStored(row *FaultRow) {
	type stored struct {
		agg     string
		version int64
	}
	byID := map[string]stored{}
	top := map[string]int64{}
	count := map[string]int64{}
	domains := map[string]bool{}
	err := l.target.sqlQuery(func(ctx context.Context, conn *pgx.Conn) error {
		rows, err := conn.Query(ctx, `SELECT event_id::text, aggregate_id::text, version, event_type FROM stored_events`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s stored
			var id, typ string
			if err := rows.Scan(&id, &s.agg, &s.version, &typ); err != nil {
				return err
			}
			byID[id] = s
			top[s.agg] = max(top[s.agg], s.version)
			count[s.agg]++
			domains[domain(typ)] = true
		}
		return rows.Err()
	})
	if err != nil {
		l.t.Fatalf("read stored_events: %v", err)
	}
	for id, a := range l.app {
		if s, ok := byID[id]; !ok || s != (stored(a)) {
			row.Lost++
			l.t.Errorf("appended event %s (aggregate %s version %d) was acknowledged but is stored as %+v (found %v)", id, a.agg, a.version, s, ok)
		}
	}
	for agg, n := range count {
		if n != top[agg] {
			l.t.Errorf("aggregate %s: %d events stored up to version %d (a gap)", agg, n, top[agg])
		}
	}
	copies := map[string]int{}
	seen := map[string]int64{} // aggregate → last version first seen on Kafka
	outOfOrder := 0
	trace := map[string][]string{} // aggregate → its records, for the message of an order violation
	bad := map[string]bool{}
	defer func() {
		if outOfOrder > 0 {
			l.t.Errorf("%d stored events reached Kafka before an earlier version of their aggregate (first copies, %d aggregates)", outOfOrder, len(bad))
		}
		n := 0
		for agg := range bad {
			if n++; n > 2 {
				break
			}
			tr := trace[agg]
			if len(tr) > 60 {
				tr = append(tr[:60:60], "…")
			}
			l.t.Logf("aggregate %s on Kafka (version@partition/offset#copy): %s", agg, strings.Join(tr, " "))
		}
	}()
	for d := range domains {
		for _, r := range ConsumeAll(l.t, l.target.Brokers, l.target.TopicPrefix+"."+d+".events") {
			id := headerValue(r.Headers, "ce_id")
			s, ok := byID[id]
			if !ok {
				continue
			}
			copies[id]++
			trace[s.agg] = append(trace[s.agg], fmt.Sprintf("%d@%d/%d#%d", s.version, r.Partition, r.Offset, copies[id]))
			if copies[id] > 1 {
				continue
			}
			if s.version != seen[s.agg]+1 {
				bad[s.agg] = true
				if outOfOrder++; outOfOrder <= 5 {
					l.t.Errorf("aggregate %s: version %d reached Kafka after version %d (partition %d offset %d)", s.agg, s.version, seen[s.agg], r.Partition, r.Offset)
				}
			}
			seen[s.agg] = s.version
		}
	}
	missing := 0
	for id := range byID {
		switch n := copies[id]; {
		case n == 0:
			missing++
			if missing <= 5 {
				l.t.Errorf("stored event %s (aggregate %s version %d) is not on Kafka", id, byID[id].agg, byID[id].version)
			}
		case n > 1:
			row.Dups["relayed again"] += n - 1
		}
	}
	row.Lost += missing
}

// checkSagas waits until every saga started has ended and answers how many were
// started and how many did not complete.
func (l *Load) checkSagas() (started, stuck int) {
	l.mu.Lock()
	ids := make([]string, 0, len(l.sagaIDs))
	for id := range l.sagaIDs {
		ids = append(ids, id)
	}
	l.mu.Unlock()
	state := map[string]string{}
	read := func() bool {
		clear(state)
		err := l.target.sqlQuery(func(ctx context.Context, conn *pgx.Conn) error {
			rows, err := conn.Query(ctx, `SELECT saga_id::text, state FROM sagas WHERE tenant_id = $1`, l.sagaTenant)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var id, st string
				if err := rows.Scan(&id, &st); err != nil {
					return err
				}
				state[id] = st
			}
			return rows.Err()
		})
		if err != nil {
			return false
		}
		for _, id := range ids {
			if st := state[id]; st == "RUNNING" || st == "COMPENSATING" || st == "" {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(90 * time.Second)
	for !read() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for _, id := range ids {
		if st := state[id]; st != "COMPLETED" {
			stuck++
			if stuck <= 5 {
				l.t.Errorf("saga %s is %q, want COMPLETED (a worker completes every task)", id, st)
			}
		}
	}
	return len(ids), stuck
}

func domain(eventType string) string {
	d, _, _ := strings.Cut(eventType, ".")
	return d
}

func headerValue(hs []kgo.RecordHeader, key string) string {
	for _, h := range hs {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
