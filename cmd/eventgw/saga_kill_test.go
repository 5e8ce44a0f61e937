package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/testenv"
)

// execution is one task as a test worker ran it: from receipt to its answer (or to the
// moment its worker died).
type execution struct {
	saga, step string
	kind       eventgwv1.TaskKind
	attempt    int32
	worker     string
	start, end time.Time
	sent       bool // CompleteTask was called
	accepted   bool // and answered OK
}

// killWorker is a saga worker attached to one sidecar. When that sidecar dies the
// worker dies with it (as the application container of the pod would): it answers
// nothing more.
type killWorker struct {
	name   string
	conn   *grpc.ClientConn
	client eventgwv1.SagaServiceClient
	dead   atomic.Bool
	busy   atomic.Int32

	mu   *sync.Mutex
	runs *[]execution
}

func (w *killWorker) run(ctx context.Context, t *testing.T, actions, comps []string, work time.Duration) {
	stream, err := w.client.PollTasks(ctx, &eventgwv1.PollTasksRequest{WorkerId: w.name, Actions: actions, Compensations: comps, MaxInFlight: 8})
	if err != nil {
		t.Errorf("%s: PollTasks: %v", w.name, err)
		return
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		resp, err := stream.Recv()
		if err != nil {
			return // the sidecar died (or the test ended)
		}
		for _, task := range resp.GetTasks() {
			wg.Add(1)
			w.busy.Add(1)
			go func() {
				defer wg.Done()
				defer w.busy.Add(-1)
				ex := execution{saga: task.GetSagaId(), step: task.GetStepId(), kind: task.GetKind(), attempt: task.GetAttempt(), worker: w.name, start: time.Now()}
				time.Sleep(work)
				out, _ := structpb.NewStruct(map[string]any{task.GetStepId(): w.name})
				if ex.sent = !w.dead.Load(); ex.sent {
					_, err := w.client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{TaskId: task.GetTaskId(), Result: &eventgwv1.CompleteTaskRequest_Output{Output: out}})
					ex.accepted = err == nil
				}
				ex.end = time.Now()
				w.mu.Lock()
				*w.runs = append(*w.runs, ex)
				w.mu.Unlock()
			}()
		}
	}
}

// TestSagaSidecarKilledMidSaga runs sagas through two `eventgw serve` processes on one
// database, each with its own worker, and SIGKILLs one of them (and so its worker)
// while its worker holds tasks. The other sidecar finishes every saga: the dead
// worker's leases expire and its tasks time out there and are run again, no step is
// completed twice, no task was running at two workers at once, and every saga's events
// reach Kafka in order.
func TestSagaSidecarKilledMidSaga(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the binary; run without -short")
	}
	k := testenv.NewKafka(t)
	reg := testenv.NewRegistry(t)
	db := testenv.NewDatabase(t)
	bin := buildBinary(t)
	args := []string{"--kafka-brokers", strings.Join(k.Brokers, ","), "--schema-registry-url", reg.URL(), "--database-url", db}
	a := startServe(t, bin, args...)
	b := startServe(t, bin, args...)
	defer b.stop(t)
	connA, connB := dial(t, a.grpc), dial(t, b.grpc)
	clientA, clientB := eventgwv1.NewSagaServiceClient(connA), eventgwv1.NewSagaServiceClient(connB)

	wf := &eventgwv1.WorkflowDefinition{WorkflowId: "kill-admission", EnableCompensation: true}
	var actions, comps []string
	for i := 1; i <= 4; i++ {
		wf.Steps = append(wf.Steps, &eventgwv1.WorkflowStep{
			StepId: "s" + strconv.Itoa(i), Action: "kill.do" + strconv.Itoa(i), CompensationAction: "kill.undo" + strconv.Itoa(i),
			TimeoutSeconds: 2, Retry: &eventgwv1.RetryPolicy{MaxAttempts: 5, InitialBackoffMs: 50},
		})
		actions, comps = append(actions, "kill.do"+strconv.Itoa(i)), append(comps, "kill.undo"+strconv.Itoa(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := clientA.RegisterWorkflow(ctx, &eventgwv1.RegisterWorkflowRequest{Workflow: wf}); err != nil {
		t.Fatal(err)
	}

	var (
		mu   sync.Mutex
		runs []execution
	)
	wA := &killWorker{name: "worker-a", conn: connA, client: clientA, mu: &mu, runs: &runs}
	wB := &killWorker{name: "worker-b", conn: connB, client: clientB, mu: &mu, runs: &runs}
	var wg sync.WaitGroup
	wctx, wcancel := context.WithCancel(ctx)
	defer func() { wcancel(); wg.Wait() }()
	wg.Add(2)
	go func() { defer wg.Done(); wA.run(wctx, t, actions, comps, 150*time.Millisecond) }()
	go func() { defer wg.Done(); wB.run(wctx, t, actions, comps, 20*time.Millisecond) }()

	tenant := uuid.NewString()
	var sagas []string
	start := func(c eventgwv1.SagaServiceClient, n int) {
		for range n {
			r, err := c.StartSaga(ctx, &eventgwv1.StartSagaRequest{WorkflowId: "kill-admission", TenantId: tenant})
			if err != nil {
				t.Fatalf("StartSaga: %v\n--- sidecar A ---\n%s\n--- sidecar B ---\n%s", err, tailString(a.logText(), 6000), tailString(b.logText(), 6000))
			}
			sagas = append(sagas, r.GetSaga().GetSagaId())
		}
	}
	start(clientA, 20)
	start(clientB, 20)
	// Kill A while its worker runs tasks: they are leased to it and will never be
	// answered.
	deadline := time.Now().Add(30 * time.Second)
	for wA.busy.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	held := wA.busy.Load()
	wA.dead.Store(true)
	killedAt := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-a.exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("sidecar A exited with %v, want killed", err)
	}
	t.Logf("killed sidecar A while its worker ran %d tasks", held)
	if held == 0 {
		t.Fatal("worker A held no task when its sidecar was killed")
	}
	start(clientB, 20)

	// B finishes every saga.
	done := map[string]*eventgwv1.Saga{}
	finishBy := time.Now().Add(60 * time.Second)
	for len(done) < len(sagas) {
		if time.Now().After(finishBy) {
			t.Fatalf("%d of %d sagas completed within 60 s of the kill", len(done), len(sagas))
		}
		for _, id := range sagas {
			if done[id] != nil {
				continue
			}
			r, err := clientB.GetSaga(ctx, &eventgwv1.GetSagaRequest{TenantId: tenant, SagaId: id})
			if err != nil {
				t.Fatal(err)
			}
			switch r.GetSaga().GetSagaState() {
			case eventgwv1.SagaState_SAGA_STATE_COMPLETED:
				done[id] = r.GetSaga()
			case eventgwv1.SagaState_SAGA_STATE_RUNNING:
			default:
				t.Fatalf("saga %s ended %s: %s %s", id, r.GetSaga().GetSagaState(), r.GetSaga().GetErrorType(), r.GetSaga().GetErrorMessage())
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	wcancel()
	wg.Wait()

	// Each step completed exactly once. A CompleteTask the killed sidecar never
	// answered may or may not have committed: it counts as "unknown".
	mu.Lock()
	defer mu.Unlock()
	accepted, unknown := map[string]int{}, map[string]int{}
	byTask := map[string][]execution{}
	abandoned := 0
	for _, ex := range runs {
		key := ex.saga + "/" + ex.step + "/" + ex.kind.String()
		switch {
		case ex.accepted:
			accepted[key]++
		case ex.sent && ex.worker == "worker-a":
			unknown[key]++
		case !ex.sent:
			abandoned++
		}
		if ex.worker == "worker-a" && ex.end.After(killedAt) {
			ex.end = killedAt // its worker died with the sidecar
		}
		byTask[key] = append(byTask[key], ex)
	}
	timedOut := 0
	for _, id := range sagas {
		sg := done[id]
		for _, st := range sg.GetSteps() {
			key := id + "/" + st.GetStepId() + "/" + eventgwv1.TaskKind_TASK_KIND_ACTION.String()
			if accepted[key] > 1 || accepted[key]+unknown[key] < 1 {
				t.Errorf("saga %s step %s: %d completions accepted (%d unknown)", id, st.GetStepId(), accepted[key], unknown[key])
			}
			if st.GetErrorType() == "timeout" {
				timedOut++
			}
		}
		// Nothing ran twice at once: attempts of a step never overlap.
		for _, st := range sg.GetSteps() {
			exs := byTask[id+"/"+st.GetStepId()+"/"+eventgwv1.TaskKind_TASK_KIND_ACTION.String()]
			for i := range exs {
				for j := i + 1; j < len(exs); j++ {
					if exs[i].start.Before(exs[j].end) && exs[j].start.Before(exs[i].end) {
						t.Errorf("saga %s step %s: attempts %d (%s) and %d (%s) ran at the same time", id, st.GetStepId(),
							exs[i].attempt, exs[i].worker, exs[j].attempt, exs[j].worker)
					}
				}
			}
		}
	}
	if abandoned == 0 || timedOut < abandoned {
		t.Errorf("%d steps timed out; the %d tasks the dead worker left unanswered must have", timedOut, abandoned)
	}
	t.Logf("%d sagas completed; %d steps timed out after the kill and ran again on sidecar B", len(sagas), timedOut)

	// Every saga's events reach Kafka, each sequence number in order (at least once).
	pg, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close(ctx)
	eventuallyCmd(t, 30*time.Second, "the outbox drained", func() bool {
		var backlog int64
		if err := pg.QueryRow(ctx, `SELECT count(*) FROM stored_events WHERE position > (SELECT position FROM outbox_cursor)`).Scan(&backlog); err != nil {
			t.Fatal(err)
		}
		return backlog == 0
	})
	seen := map[string]int{}
	for _, r := range testenv.ConsumeAll(t, k.Brokers, "healthtech.saga.events") {
		id, v := header(r, "ce_subject"), header(r, "ce_aggregateversion")
		n, _ := strconv.Atoi(v)
		switch {
		case n == seen[id]+1:
			seen[id] = n
		case n <= seen[id]: // sent again by the relay that took over
		default:
			t.Errorf("saga %s: event %d reached Kafka before event %d", id, n, seen[id]+1)
		}
	}
	for _, id := range sagas {
		if want := len(done[id].GetHistory()); seen[id] != want {
			t.Errorf("saga %s: Kafka has events 1..%d of %d", id, seen[id], want)
		}
	}
	if t.Failed() {
		t.Logf("killed sidecar's log:\n%s", tailString(a.logText(), 8000))
	}
}

func eventuallyCmd(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
