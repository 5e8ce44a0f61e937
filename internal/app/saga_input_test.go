package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// TestSagaHostileInput drives SagaService with ids in uppercase and with JSON that
// could be stored but not read back. Ids in any case name the same tenant, saga and
// task (the saga is found, cancelled and answered through them, and is shown with
// lowercase ids); hostile JSON is refused with InvalidArgument naming the field, and
// neither the refusals nor the log quote it; the saga the refused calls aimed at goes
// on normally.
func TestSagaHostileInput(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	ctx := callCtx(t)
	const canary = "PHI-CANARY-8830"
	register(t, client, steps("hostile-wf", "hostile", 2, 30, nil))

	upperTenant := strings.ToUpper(tenantA)
	resp, err := client.StartSaga(ctx, &eventgwv1.StartSagaRequest{
		WorkflowId: "hostile-wf", TenantId: upperTenant, IdempotencyKey: "k-1",
		InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: []byte(`{"patient":"p-1"}`)},
	})
	if err != nil {
		t.Fatal(err)
	}
	sg := resp.GetSaga()
	if sg.GetTenantId() != tenantA {
		t.Errorf("saga tenant %q, want the canonical %q", sg.GetTenantId(), tenantA)
	}
	// The same key with the tenant in lowercase is the same tenant: the first saga.
	again, err := client.StartSaga(ctx, &eventgwv1.StartSagaRequest{WorkflowId: "hostile-wf", TenantId: tenantA, IdempotencyKey: "k-1"})
	if err != nil || again.GetCreated() || again.GetSaga().GetSagaId() != sg.GetSagaId() {
		t.Fatalf("second start with the key, tenant in lowercase: %v created=%v %v", again.GetSaga().GetSagaId(), again.GetCreated(), err)
	}
	if got, err := client.GetSaga(ctx, &eventgwv1.GetSagaRequest{TenantId: upperTenant, SagaId: strings.ToUpper(sg.GetSagaId())}); err != nil || got.GetSaga().GetSagaId() != sg.GetSagaId() {
		t.Fatalf("GetSaga with uppercase ids: %v", err)
	}
	if l, err := client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: upperTenant, WorkflowId: "hostile-wf"}); err != nil || len(l.GetSagas()) != 1 {
		t.Fatalf("ListSagas with an uppercase tenant: %v %v", l, err)
	}

	// A worker that answers in uppercase: the answer matches its live task.
	tasks := make(chan *eventgwv1.Task, 4)
	pctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.PollTasks(pctx, &eventgwv1.PollTasksRequest{
		Actions: []string{"hostile.do1", "hostile.do2"}, Compensations: []string{"hostile.undo1", "hostile.undo2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			for _, task := range r.GetTasks() {
				tasks <- task
			}
		}
	}()
	next := func() *eventgwv1.Task {
		select {
		case task := <-tasks:
			return task
		case <-time.After(30 * time.Second):
			t.Fatal("no task")
			return nil
		}
	}
	task := next()
	hostile := []struct {
		name  string
		req   *eventgwv1.CompleteTaskRequest
		field string
	}{
		{"nested 65 deep", &eventgwv1.CompleteTaskRequest{Result: &eventgwv1.CompleteTaskRequest_OutputJson{
			OutputJson: []byte(strings.Repeat(`{"`+canary+`":`, 65) + "1" + strings.Repeat("}", 65)),
		}}, "output_json"},
		{"1e400", &eventgwv1.CompleteTaskRequest{Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`{"` + canary + `":1e400}`)}}, "output_json"},
		{"invalid UTF-8", &eventgwv1.CompleteTaskRequest{Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte("{\"k\":\"" + canary + "\xff\"}")}}, "output_json"},
		{"U+0000", &eventgwv1.CompleteTaskRequest{Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`{"k":"` + canary + `\u0000"}`)}}, "output_json"},
	}
	for _, h := range hostile {
		h.req.TaskId = task.GetTaskId()
		_, err := client.CompleteTask(ctx, h.req)
		expectInvalid(t, "CompleteTask "+h.name, err, h.field)
		if strings.Contains(status.Convert(err).Message(), canary) {
			t.Errorf("CompleteTask %s: the message quotes the output", h.name)
		}
	}
	for _, tenant := range []string{"00000000-0000-0000-0000-000000000000", "{" + tenantA + "}"} {
		_, err := client.StartSaga(ctx, &eventgwv1.StartSagaRequest{WorkflowId: "hostile-wf", TenantId: tenant})
		expectInvalid(t, "StartSaga tenant "+tenant, err, "tenant_id")
	}
	// The refused answers changed nothing: the task still answers, in uppercase.
	if _, err := client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{
		TaskId: strings.ToUpper(task.GetTaskId()),
		Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`{"bed":"b-7"}`)},
	}); err != nil {
		t.Fatalf("CompleteTask with an uppercase task id: %v", err)
	}
	task = next()
	if task.GetStepId() != "s2" || task.GetInput().GetFields()["bed"].GetStringValue() != "b-7" {
		t.Fatalf("second task %s with input %v", task.GetStepId(), task.GetInput())
	}
	if _, err := client.FailTask(ctx, &eventgwv1.FailTaskRequest{TaskId: strings.ToUpper(task.GetTaskId()), ErrorType: "Denied", NonRetryable: true}); err != nil {
		t.Fatalf("FailTask with an uppercase task id: %v", err)
	}
	// s2 failed: s2's then s1's compensations run.
	for range 2 {
		c := next()
		if _, err := client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{TaskId: c.GetTaskId()}); status.Code(err) != codes.OK {
			t.Fatalf("compensation %s: %v", c.GetAction(), err)
		}
	}
	waitSaga(t, client, tenantA, sg.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPENSATED, 30*time.Second)
	if strings.Contains(env.s.logs.String(), canary) {
		t.Error("hostile input reached the log")
	}
}
