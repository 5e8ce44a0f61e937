package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/devstack"
)

// The saga suite's settings.
const (
	// sagaWorkers is how many PollTasks streams (worker processes, in a deployment) the
	// bench attaches, each with sagaInFlight tasks at most and sagaAnswerers goroutines
	// answering them.
	sagaWorkers   = 4
	sagaInFlight  = 128
	sagaAnswerers = sagaInFlight
	// sagaOpen is how many sagas the throughput scenario keeps running at once.
	sagaOpen = 256
	// sagaWarmup runs before each scenario's measured window.
	sagaWarmup = time.Second
)

// sagaResult is one scenario of the saga suite.
type sagaResult struct {
	Result // Events: sagas completed in the window; P50/P99: dispatch latency
	Tasks  int64
	// Sidecar is the saga sidecar's CPU time over the window (the whole bench process
	// in the in-process layout); Postgres the cluster's (every backend); Bench the
	// bench process's (workers, load, kfake).
	Sidecar, Postgres, Bench time.Duration
	Offered                  float64 // the paced rate (0: closed loop)
	// Handoff is the p50/p99 from a step's CompleteTask being sent to the next step's
	// task reaching a worker (the commit included).
	Handoff   [2]time.Duration
	inProcess bool
}

// sagaBench is the saga sidecar and the bench's workers attached to it.
type sagaBench struct {
	side    *sidecarProc
	conns   []*grpc.ClientConn
	clients []eventgwv1.SagaServiceClient
	pgDir   string

	measuring atomic.Bool
	completed atomic.Int64 // sagas whose last step was answered while measuring
	tasks     atomic.Int64
	errors    atomic.Int64
	lat       latencies
	handoff   latencies
	sent      sync.Map                      // saga id → time.Time its last step answer was sent
	open      atomic.Pointer[chan struct{}] // a slot per running saga (closed loop); set per scenario
	tenant    string
}

// sagaSuite measures the guide's four-step admission workflow through a sidecar of its
// own (own database, so that it is the only relay and saga engine there): sagas
// completed per second with workers attached, dispatch latency (task ready → worker
// has it) and CPU per saga, flat out and at a fixed rate.
func (e *env) sagaSuite(ctx context.Context, o Options) ([]sagaResult, error) {
	const db = "bench_saga"
	if err := devstack.CreateDatabase(ctx, e.stack.Postgres.DSN("postgres"), db); err != nil {
		return nil, err
	}
	cfg := e.cfg
	cfg.DatabaseURL = e.stack.Postgres.DSN(db)
	cfg.ServiceName = "bench-saga"
	if strings.HasPrefix(cfg.GRPCAddr, "unix://") {
		cfg.GRPCAddr = "unix://" + filepath.Join(e.dir, "saga.sock")
	}
	if o.SidecarPprof != "" {
		// The bench's main sidecar serves pprof at --sidecar-pprof-addr: this one at
		// the next port.
		host, port, _ := strings.Cut(o.SidecarPprof, ":")
		n, _ := strconv.Atoi(port)
		o.SidecarPprof = host + ":" + strconv.Itoa(n+1)
		fmt.Fprintf(os2(), "  saga sidecar pprof: http://%s/debug/pprof/\n", o.SidecarPprof)
	}
	side, err := startSidecar(ctx, o, cfg, e.dir, "saga-sidecar")
	if err != nil {
		return nil, fmt.Errorf("saga sidecar: %w", err)
	}
	defer side.stop()
	b := &sagaBench{side: side, pgDir: e.stack.Postgres.Dir(), tenant: tenants[0]}
	for range sagaWorkers {
		c, err := grpc.NewClient(side.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		defer c.Close()
		b.conns = append(b.conns, c)
		b.clients = append(b.clients, eventgwv1.NewSagaServiceClient(c))
	}
	if _, err := b.clients[0].RegisterWorkflow(ctx, &eventgwv1.RegisterWorkflowRequest{Workflow: benchAdmission()}); err != nil {
		return nil, err
	}
	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stopWorkers(); wg.Wait() }()
	for i := range sagaWorkers {
		ready := make(chan error, 1)
		wg.Add(1)
		go func() { defer wg.Done(); b.worker(wctx, i, ready) }()
		if err := <-ready; err != nil {
			return nil, err
		}
	}
	rate := float64(o.SagaRate)
	var rs []sagaResult
	for _, sc := range []struct {
		name string
		rate float64
	}{
		{fmt.Sprintf("4-step admission, %d sagas open, flat out", sagaOpen), 0},
		{fmt.Sprintf("4-step admission at %.0f sagas/s", rate), rate},
		{fmt.Sprintf("4-step admission at %.0f sagas/s", rate/3), rate / 3},
	} {
		if o.Only != "" && !strings.Contains(sc.name, o.Only) {
			continue
		}
		r, err := b.scenario(ctx, o.Duration, sc.rate)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sc.name, err)
		}
		r.Name, r.inProcess = sc.name, side.pid == 0
		fmt.Fprintf(os2(), "  %-44s %8.0f sagas/s  dispatch p50 %-9v p99 %-9v sidecar %.2f ms/saga  errors %d\n",
			r.Name, r.Rate(), r.P50, r.P99, perSaga(r.Sidecar, r.Events), r.Errors)
		rs = append(rs, r)
	}
	return rs, nil
}

// benchAdmission is the guide's patient-admission workflow.
func benchAdmission() *eventgwv1.WorkflowDefinition {
	return &eventgwv1.WorkflowDefinition{
		WorkflowId: "bench-admission", Name: "Patient Admission Workflow", EnableCompensation: true,
		Steps: []*eventgwv1.WorkflowStep{
			{StepId: "check-bed-availability", Action: "check_beds", CompensationAction: "release_bed_hold", TimeoutSeconds: 30},
			{StepId: "create-admission", Action: "create_admission", CompensationAction: "cancel_admission"},
			{StepId: "assign-bed", Action: "assign_bed", CompensationAction: "unassign_bed"},
			{StepId: "notify-ward", Action: "notify_ward_staff"},
		},
	}
}

var benchOutputs = map[string][]byte{
	"check_beds":        []byte(`{"bed_id":"bed-12-7"}`),
	"create_admission":  []byte(`{"admission_id":"adm-4711"}`),
	"assign_bed":        []byte(`{"assignment_id":"asg-99"}`),
	"notify_ward_staff": []byte(`{"notified":true}`),
}

// worker is one PollTasks stream: tasks are answered at once (CompleteTask) by a pool
// of goroutines; the last step's answer completes the saga.
func (b *sagaBench) worker(ctx context.Context, i int, ready chan<- error) {
	client := b.clients[i%len(b.clients)]
	stream, err := client.PollTasks(ctx, &eventgwv1.PollTasksRequest{
		WorkerId: "bench-" + strconv.Itoa(i), Actions: []string{"check_beds", "create_admission", "assign_bed", "notify_ward_staff"},
		Compensations: []string{"release_bed_hold", "cancel_admission", "unassign_bed"}, MaxInFlight: sagaInFlight, PayloadAsJson: true,
	})
	ready <- err
	if err != nil {
		return
	}
	tasks := make(chan *eventgwv1.Task, sagaInFlight)
	var wg sync.WaitGroup
	defer func() { close(tasks); wg.Wait() }()
	for range sagaAnswerers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range tasks {
				if t.GetAction() != "notify_ward_staff" {
					b.sent.Store(t.GetSagaId(), time.Now())
				}
				_, err := client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{
					TaskId: t.GetTaskId(),
					Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: benchOutputs[t.GetAction()]},
				})
				switch {
				case err != nil && ctx.Err() == nil:
					b.errors.Add(1)
				case err == nil && t.GetAction() == "notify_ward_staff":
					if b.measuring.Load() {
						b.completed.Add(1)
					}
					select {
					case <-b.slots():
					default:
					}
				}
			}
		}()
	}
	var local, hand []time.Duration
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		now := time.Now()
		local, hand = local[:0], hand[:0]
		for _, t := range resp.GetTasks() {
			if b.measuring.Load() {
				local = append(local, now.Sub(t.GetReadyAt().AsTime()))
				if t.GetAction() != "check_beds" {
					if at, ok := b.sent.LoadAndDelete(t.GetSagaId()); ok {
						hand = append(hand, now.Sub(at.(time.Time)))
					}
				}
			}
			tasks <- t
		}
		if len(local) > 0 {
			b.tasks.Add(int64(len(local)))
			b.lat.add(local)
			b.handoff.add(hand)
		}
	}
}

// slots is the running scenario's slot channel (nil, which blocks, before the first).
func (b *sagaBench) slots() chan struct{} {
	if p := b.open.Load(); p != nil {
		return *p
	}
	return nil
}

// scenario starts sagas for a warm-up and then d (closed loop with sagaOpen sagas
// running when rate is 0, else rate sagas per second), and waits for the started ones
// to finish.
func (b *sagaBench) scenario(ctx context.Context, d time.Duration, rate float64) (sagaResult, error) {
	d = max(d, time.Second) // a four-step saga takes several round trips: measure at least 1 s
	slots := make(chan struct{}, sagaOpen)
	b.open.Store(&slots)
	b.completed.Store(0)
	b.tasks.Store(0)
	b.errors.Store(0)
	for _, l := range []*latencies{&b.lat, &b.handoff} {
		l.mu.Lock()
		l.d = l.d[:0]
		l.mu.Unlock()
	}
	var started atomic.Int64
	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	start := func(i int) {
		_, err := b.clients[i%len(b.clients)].StartSaga(sctx, &eventgwv1.StartSagaRequest{
			WorkflowId: "bench-admission", TenantId: b.tenant,
			InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: []byte(`{"patient_id":"p-123","ward_id":"w-12"}`)},
		})
		if err != nil {
			if sctx.Err() == nil {
				b.errors.Add(1)
			}
			return
		}
		started.Add(1)
	}
	if rate <= 0 {
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for sctx.Err() == nil {
					select {
					case slots <- struct{}{}:
					case <-sctx.Done():
						return
					}
					start(i)
				}
			}()
		}
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			const tick = 10 * time.Millisecond
			t := time.NewTicker(tick)
			defer t.Stop()
			due, i := 0.0, 0
			for {
				select {
				case <-sctx.Done():
					return
				case <-t.C:
				}
				for due += rate * tick.Seconds(); due >= 1; due-- {
					i++
					wg.Add(1)
					go func(i int) { defer wg.Done(); start(i) }(i)
				}
			}
		}()
	}
	time.Sleep(sagaWarmup)
	pg0, side0, self0 := pgCPU(b.pgDir), b.side.usage().cpu, cpuTime()
	b.measuring.Store(true)
	t0 := time.Now()
	time.Sleep(d)
	// On a machine so loaded that no saga completed within d (a short smoke run), the
	// window goes on until one does: the rate stays completions over the window.
	for b.completed.Load() == 0 && time.Since(t0) < d+30*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	b.measuring.Store(false)
	elapsed := time.Since(t0)
	pg1, side1, self1 := pgCPU(b.pgDir), b.side.usage().cpu, cpuTime()
	stop()
	wg.Wait()
	// Let the sagas started finish before the next scenario.
	drainBy := time.Now().Add(60 * time.Second)
	for {
		resp, err := b.clients[0].ListSagas(ctx, &eventgwv1.ListSagasRequest{
			TenantId: b.tenant, PageSize: 1,
			States: []eventgwv1.SagaState{eventgwv1.SagaState_SAGA_STATE_RUNNING},
		})
		if err != nil {
			return sagaResult{}, err
		}
		if len(resp.GetSagas()) == 0 {
			break
		}
		if time.Now().After(drainBy) {
			return sagaResult{}, errors.New("sagas still running a minute after the scenario")
		}
		time.Sleep(50 * time.Millisecond)
	}
	r := sagaResult{
		Result: Result{Events: b.completed.Load(), Elapsed: elapsed, Errors: b.errors.Load()},
		Tasks:  b.tasks.Load(), Sidecar: side1 - side0, Postgres: pg1 - pg0, Bench: self1 - self0, Offered: rate,
	}
	b.lat.mu.Lock()
	b.lat.fill(&r.Result)
	b.lat.mu.Unlock()
	var h Result
	b.handoff.mu.Lock()
	b.handoff.fill(&h)
	b.handoff.mu.Unlock()
	r.Handoff = [2]time.Duration{h.P50, h.P99}
	return r, nil
}

// pgCPU is the CPU time of the PostgreSQL cluster in dir: its postmaster and every
// process it started (from /proc).
func pgCPU(dir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(st), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(st)[i+1:])
		if len(f) < 13 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); pid != pm && ppid != pm {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(ut+stime) * clockTick
	}
	return total
}

func perSaga(d time.Duration, sagas int64) float64 {
	if sagas == 0 {
		return 0
	}
	return float64(d.Microseconds()) / 1000 / float64(sagas)
}

func reportSaga(out io.Writer, rs []sagaResult, rate int) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "saga scenario\tsagas\tsagas/s\ttasks/s\tdispatch p50\tdispatch p99\thandoff p50\thandoff p99\terrors\tsidecar ms/saga\tpostgres ms/saga\tbench ms/saga\ttarget\t")
	inProcess := false
	for _, r := range rs {
		inProcess = inProcess || r.inProcess
		target := "≥300/s: " + metOrNot(r.Rate() >= 300)
		if r.Offered > 0 {
			target = "p99 < 20ms: " + metOrNot(r.P99 > 0 && r.P99 < 20*time.Millisecond)
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.0f\t%v\t%v\t%v\t%v\t%d\t%.2f\t%.2f\t%.2f\t%s\t\n", r.Name, r.Events, r.Rate(),
			float64(r.Tasks)/r.Elapsed.Seconds(), r.P50, r.P99, r.Handoff[0], r.Handoff[1], r.Errors, perSaga(r.Sidecar, r.Events),
			perSaga(r.Postgres, r.Events), perSaga(r.Bench, r.Events), target)
	}
	_ = tw.Flush()
	where := "the sidecar is its own `eventgw serve` process (CPU from /proc/<pid>/stat)"
	if inProcess {
		where = "in-process layout: \"sidecar\" CPU is the whole bench process"
	}
	fmt.Fprintf(out, `
The guide's four-step patient-admission workflow through a sidecar of its own database
(%s), %d PollTasks streams (max_in_flight %d, payload_as_json) answering every task at
once with CompleteTask, and StartSaga callers: flat out with %d sagas running at once, then
paced at %d sagas/s and at a third of that. sagas/s: sagas whose last step was answered in the window (after a
%v warm-up). Dispatch: from the task becoming ready (its ready_at: when the change that
made it due committed) to the worker receiving it. Handoff: from a worker sending a
step's CompleteTask to a worker receiving the next step's task (the state change and
its commit included). CPU per saga over the
window: the sidecar's, the PostgreSQL cluster's (all its processes) and the bench
process's (workers, StartSaga callers and kfake). Every saga writes 6 events, published
to healthtech.saga.events by the sidecar's outbox relay.
`, where, sagaWorkers, sagaInFlight, sagaOpen, rate, sagaWarmup)
}
