package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// TestPollTasksEndsOnShutdown: when a sidecar shuts down, its PollTasks streams end at
// once with Unavailable "shutting down" (they do not hold the graceful stop until the
// grace period cuts them off), and no task is lost: the worker keeps the tasks it held
// and may answer them through another sidecar; a held task it never answers times out
// and is redelivered to a worker of the other sidecar; the task it had no room for goes
// to that worker too. Every saga completes, each task answered once.
func TestPollTasksEndsOnShutdown(t *testing.T) {
	d := newDeps(t)
	a := startOn(t, d, nil)
	b := startOn(t, d, nil)
	clientA, clientB := eventgwv1.NewSagaServiceClient(a.conn), eventgwv1.NewSagaServiceClient(b.conn)
	register(t, clientA, steps("shut-wf", "shut", 1, 4, &eventgwv1.RetryPolicy{MaxAttempts: 5, InitialBackoffMs: 100}))
	tenant := uuid.NewString()

	// Worker 1 on A holds two tasks and answers none yet.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := clientA.PollTasks(ctx, &eventgwv1.PollTasksRequest{WorkerId: "w1", Actions: []string{"shut.do1"}, MaxInFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 3 {
		ids = append(ids, startSaga(t, clientA, "shut-wf", tenant, nil).GetSagaId())
	}
	var held []*eventgwv1.Task
	for len(held) < 2 {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("worker 1: %v", err)
		}
		held = append(held, r.GetTasks()...)
	}

	a.shutdown()
	var end error
	for end == nil {
		// Only a held task that timed out meanwhile (a slow shutdown) could come
		// again; worker 1 holds it too.
		_, end = stream.Recv()
	}
	if st := status.Convert(end); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "shutting down") {
		t.Fatalf("worker 1's stream ended with %v, want Unavailable saying the sidecar is shutting down", end)
	}

	// Worker 1 answers its first task through B (its lease holds); worker 2 on B gets
	// the task nobody took, and the other held one once its lease expired.
	if _, err := clientB.CompleteTask(callCtx(t), &eventgwv1.CompleteTaskRequest{TaskId: held[0].GetTaskId()}); err != nil {
		t.Fatalf("worker 1 answering through B: %v", err)
	}
	w2 := startWorker(t, b.conn, workerOpts{id: "w2", actions: []string{"shut.do1"}}, func(call) reply { return reply{output: map[string]any{}} })
	for _, id := range ids {
		waitSaga(t, clientB, tenant, id, eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	}
	got := map[string]int{}
	for _, c := range w2.allCalls() {
		got[c.SagaID]++
		if c.SagaID == held[1].GetSagaId() && c.Attempt < 2 {
			t.Errorf("the expired task came back as attempt %d, want a retry", c.Attempt)
		}
	}
	for _, id := range ids {
		want := 1
		if id == held[0].GetSagaId() {
			want = 0 // answered by worker 1 through B
		}
		if got[id] != want {
			t.Errorf("worker 2 got %d tasks of saga %s, want %d (all: %v)", got[id], id, want, got)
		}
	}
}
