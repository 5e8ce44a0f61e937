package app_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// admission is the guide's patient-admission workflow. Action names carry suffix, so
// that tests sharing a database do not take each other's tasks.
func admission(id, suffix string) *eventgwv1.WorkflowDefinition {
	return &eventgwv1.WorkflowDefinition{
		WorkflowId: id, Name: "Patient Admission Workflow", Description: "Complete patient admission process",
		EnableCompensation: true,
		Steps: []*eventgwv1.WorkflowStep{
			{StepId: "check-bed-availability", Name: "Check Bed Availability", Action: "check_beds" + suffix, CompensationAction: "release_bed_hold" + suffix, TimeoutSeconds: 30},
			{StepId: "create-admission", Name: "Create Admission Record", Action: "create_admission" + suffix, CompensationAction: "cancel_admission" + suffix},
			{StepId: "assign-bed", Name: "Assign Bed to Patient", Action: "assign_bed" + suffix, CompensationAction: "unassign_bed" + suffix},
			{StepId: "notify-ward", Name: "Notify Ward Staff", Action: "notify_ward_staff" + suffix},
		},
	}
}

func actionsOf(w *eventgwv1.WorkflowDefinition) (actions, comps []string) {
	for _, s := range w.GetSteps() {
		actions = append(actions, s.GetAction())
		if c := s.GetCompensationAction(); c != "" {
			comps = append(comps, c)
		}
	}
	return actions, comps
}

// call is one task a test worker received.
type call struct {
	TaskID   string
	SagaID   string
	TenantID string
	StepID   string
	Action   string
	Kind     eventgwv1.TaskKind
	Attempt  int32
	Input    map[string]any
	Context  map[string]any
	ReadyAt  time.Time
	Deadline time.Time
	Received time.Time
}

// reply is how a test worker answers a task.
type reply struct {
	output       map[string]any
	errType      string
	errMsg       string
	nonRetryable bool
	// hold: do not answer (the task times out).
	hold bool
}

// worker is a PollTasks stream that answers tasks with a handler and records them.
type worker struct {
	t      *testing.T
	cancel context.CancelFunc
	done   chan error
	client eventgwv1.SagaServiceClient

	mu    sync.Mutex
	calls []call
}

type workerOpts struct {
	id            string
	actions       []string
	compensations []string
	maxInFlight   int32
	asJSON        bool
}

// startWorker polls tasks on conn; handle answers each (in its own goroutine).
func startWorker(t *testing.T, conn *grpc.ClientConn, o workerOpts, handle func(c call) reply) *worker {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	client := eventgwv1.NewSagaServiceClient(conn)
	stream, err := client.PollTasks(ctx, &eventgwv1.PollTasksRequest{
		WorkerId: o.id, Actions: o.actions, Compensations: o.compensations, MaxInFlight: o.maxInFlight, PayloadAsJson: o.asJSON,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &worker{t: t, cancel: cancel, done: make(chan error, 1), client: client}
	var handlers sync.WaitGroup
	go func() {
		defer handlers.Wait()
		for {
			resp, err := stream.Recv()
			if err != nil {
				w.done <- err
				return
			}
			for _, task := range resp.GetTasks() {
				c := toCall(t, task)
				w.mu.Lock()
				w.calls = append(w.calls, c)
				w.mu.Unlock()
				handlers.Add(1)
				go func() {
					defer handlers.Done()
					w.answer(ctx, c, handle(c))
				}()
			}
		}
	}()
	t.Cleanup(w.stop)
	return w
}

// stop ends the stream (before the sidecar stops: an open stream holds its graceful
// stop).
func (w *worker) stop() {
	w.cancel()
	select {
	case err := <-w.done:
		_ = err // the stream's end, whatever it says
	case <-time.After(10 * time.Second):
		w.t.Error("worker stream did not end")
	}
}

func (w *worker) answer(ctx context.Context, c call, r reply) {
	if r.hold {
		return
	}
	var err error
	if r.errType != "" {
		_, err = w.client.FailTask(ctx, &eventgwv1.FailTaskRequest{TaskId: c.TaskID, ErrorType: r.errType, ErrorMessage: r.errMsg, NonRetryable: r.nonRetryable})
	} else {
		out, serr := structpb.NewStruct(r.output)
		if serr != nil {
			w.t.Error(serr)
			return
		}
		_, err = w.client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{TaskId: c.TaskID, Result: &eventgwv1.CompleteTaskRequest_Output{Output: out}})
	}
	if err != nil && ctx.Err() == nil && status.Code(err) != codes.Canceled {
		w.t.Errorf("answer to %s %s: %v", c.Action, c.TaskID, err)
	}
}

func toCall(t *testing.T, task *eventgwv1.Task) call {
	c := call{
		TaskID: task.GetTaskId(), SagaID: task.GetSagaId(), TenantID: task.GetTenantId(), StepID: task.GetStepId(),
		Action: task.GetAction(), Kind: task.GetKind(), Attempt: task.GetAttempt(),
		ReadyAt: task.GetReadyAt().AsTime(), Deadline: task.GetDeadline().AsTime(), Received: time.Now(),
	}
	if task.GetContextJson() != nil {
		if err := json.Unmarshal(task.GetContextJson(), &c.Context); err != nil {
			t.Errorf("context_json: %v", err)
		}
		if err := json.Unmarshal(task.GetInputJson(), &c.Input); err != nil {
			t.Errorf("input_json: %v", err)
		}
	} else {
		c.Context, c.Input = task.GetContext().AsMap(), task.GetInput().AsMap()
	}
	return c
}

// callsOf answers the calls of saga id, in the order received.
func (w *worker) callsOf(sagaID string) []call {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []call
	for _, c := range w.calls {
		if c.SagaID == sagaID {
			out = append(out, c)
		}
	}
	return out
}

func (w *worker) allCalls() []call {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.calls)
}

func actionNames(cs []call) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Action
	}
	return out
}

// waitSaga polls GetSaga until the saga is in state (or fails the test).
func waitSaga(t *testing.T, client eventgwv1.SagaServiceClient, tenant, id string, state eventgwv1.SagaState, within time.Duration) *eventgwv1.Saga {
	t.Helper()
	var last *eventgwv1.Saga
	eventually(t, within, "saga "+id+" reaches "+state.String(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.GetSaga(ctx, &eventgwv1.GetSagaRequest{TenantId: tenant, SagaId: id})
		if err != nil {
			t.Fatalf("GetSaga: %v", err)
		}
		last = resp.GetSaga()
		if s := last.GetSagaState(); s != state && s != eventgwv1.SagaState_SAGA_STATE_RUNNING && s != eventgwv1.SagaState_SAGA_STATE_COMPENSATING {
			t.Fatalf("saga %s ended %s (%s: %s), want %s", id, s, last.GetErrorType(), last.GetErrorMessage(), state)
		}
		return last.GetSagaState() == state
	})
	return last
}

func getSaga(t *testing.T, client eventgwv1.SagaServiceClient, tenant, id string) *eventgwv1.Saga {
	t.Helper()
	resp, err := client.GetSaga(callCtx(t), &eventgwv1.GetSagaRequest{TenantId: tenant, SagaId: id})
	if err != nil {
		t.Fatalf("GetSaga: %v", err)
	}
	return resp.GetSaga()
}

func startSaga(t *testing.T, client eventgwv1.SagaServiceClient, workflow, tenant string, ctxData map[string]any) *eventgwv1.Saga {
	t.Helper()
	st, err := structpb.NewStruct(ctxData)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.StartSaga(callCtx(t), &eventgwv1.StartSagaRequest{
		WorkflowId: workflow, TenantId: tenant, InitialContext: &eventgwv1.StartSagaRequest_Context{Context: st},
	})
	if err != nil {
		t.Fatalf("StartSaga: %v", err)
	}
	return resp.GetSaga()
}

func register(t *testing.T, client eventgwv1.SagaServiceClient, w *eventgwv1.WorkflowDefinition) *eventgwv1.RegisterWorkflowResponse {
	t.Helper()
	resp, err := client.RegisterWorkflow(callCtx(t), &eventgwv1.RegisterWorkflowRequest{Workflow: w})
	if err != nil {
		t.Fatalf("RegisterWorkflow %s: %v", w.GetWorkflowId(), err)
	}
	return resp
}

// historyTypes is the event types of a saga's history, in order.
func historyTypes(sg *eventgwv1.Saga) []string {
	out := make([]string, len(sg.GetHistory()))
	for i, h := range sg.GetHistory() {
		out[i] = h.GetEventType()
	}
	return out
}
