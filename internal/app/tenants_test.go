package app_test

import (
	"io"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/config"
)

func wantDenied(t *testing.T, what string, err error) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("%s for another tenant: %v, want PERMISSION_DENIED", what, err)
	}
}

func patientEvent(tenant string) *eventgwv1.Event {
	return &eventgwv1.Event{EventType: "patient.created", TenantId: tenant, Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"x":1}`)}}
}

// TestTenantAllowList: a sidecar with --tenants=A refuses every call naming tenant B
// with PERMISSION_DENIED and writes nothing for it (checked on Kafka and through a
// sidecar without the list on the same stack), while calls for A work; Subscribe
// skips B's events (committed, never delivered); PollTasks never hands out B's tasks,
// which a worker of a sidecar that serves B takes.
func TestTenantAllowList(t *testing.T) {
	d := newDeps(t)
	r := startOn(t, d, func(c *config.Config) { c.Tenants = tenantA; c.ServiceName = "restricted" })
	u := startOn(t, d, func(c *config.Config) { c.ServiceName = "open" })
	const topic = "healthtech.patient.events"
	ctx := callCtx(t)

	// EventService: publishing.
	_, err := r.events.Publish(ctx, &eventgwv1.PublishRequest{Event: patientEvent(tenantB)})
	wantDenied(t, "Publish", err)
	_, err = r.events.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: []*eventgwv1.Event{patientEvent(tenantA), patientEvent(tenantB)}})
	wantDenied(t, "PublishBatch with one event of B", err)
	if n := topicCount(t, d.kafka.Brokers, topic); n != 0 {
		t.Fatalf("%d events reached Kafka from refused publishes", n)
	}
	ps, err := r.events.PublishStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, tenant := range []string{tenantA, tenantB} {
		if err := ps.Send(&eventgwv1.PublishStreamRequest{RequestId: uint64(i), Events: []*eventgwv1.Event{patientEvent(tenant)}}); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	first, err := ps.Recv()
	if err != nil || first.GetError() != nil || first.GetResults()[0].GetError() != nil {
		t.Fatalf("PublishStream request for A: %v %v", first, err)
	}
	_, err = ps.Recv()
	wantDenied(t, "PublishStream request", err)
	if _, err := r.events.Publish(ctx, &eventgwv1.PublishRequest{Event: patientEvent(tenantA)}); err != nil {
		t.Fatalf("Publish for A: %v", err)
	}
	if n := topicCount(t, d.kafka.Brokers, topic); n != 2 {
		t.Fatalf("Kafka holds %d events, want the 2 of tenant A", n)
	}

	// EventStoreService: B's aggregate, written through the open sidecar.
	aggB := uuid.NewString()
	if _, err := u.store.AppendEvents(ctx, appendReq(tenantB, aggB, noStream, newEv(t, "patient.created", map[string]any{"x": 1.0}))); err != nil {
		t.Fatal(err)
	}
	_, err = r.store.AppendEvents(ctx, appendReq(tenantB, aggB, anyVersion, newEv(t, "patient.updated", map[string]any{"x": 2.0})))
	wantDenied(t, "AppendEvents", err)
	if evs := readAll(t, u, tenantB, aggB); len(evs) != 1 {
		t.Errorf("B's aggregate holds %d events after a refused append, want 1", len(evs))
	}
	rs, err := r.store.ReadAggregate(ctx, &eventgwv1.ReadAggregateRequest{TenantId: tenantB, AggregateId: aggB})
	if err == nil {
		_, err = rs.Recv()
	}
	wantDenied(t, "ReadAggregate", err)
	_, err = r.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenantB, AggregateId: aggB})
	wantDenied(t, "LoadAggregate", err)
	_, err = r.store.SaveSnapshot(ctx, &eventgwv1.SaveSnapshotRequest{TenantId: tenantB, AggregateId: aggB, Version: 1, State: mustStruct(t, map[string]any{"x": 1.0})})
	wantDenied(t, "SaveSnapshot", err)
	rp, err := r.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: tenantB})
	if err == nil {
		_, err = rp.Recv()
	}
	wantDenied(t, "ReplayEvents", err)
	aggA := uuid.NewString()
	if _, err := r.store.AppendEvents(ctx, appendReq(tenantA, aggA, noStream, newEv(t, "patient.created", map[string]any{"x": 1.0}))); err != nil {
		t.Fatalf("AppendEvents for A: %v", err)
	}
	if evs := readAll(t, r, tenantA, aggA); len(evs) != 1 {
		t.Errorf("A's aggregate read back %d events, want 1", len(evs))
	}

	// DeadLetterService.
	dr, du := eventgwv1.NewDeadLetterServiceClient(r.conn), eventgwv1.NewDeadLetterServiceClient(u.conn)
	_, err = dr.SendToDeadLetter(ctx, &eventgwv1.SendToDeadLetterRequest{Event: patientEvent(tenantB), ErrorType: "Test"})
	wantDenied(t, "SendToDeadLetter", err)
	sent, err := du.SendToDeadLetter(ctx, &eventgwv1.SendToDeadLetterRequest{Event: patientEvent(tenantB), ErrorType: "Test"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = dr.ListFailedEvents(ctx, &eventgwv1.ListFailedEventsRequest{TenantId: tenantB})
	wantDenied(t, "ListFailedEvents", err)
	_, err = dr.RetryFailedEvents(ctx, &eventgwv1.RetryFailedEventsRequest{TenantId: tenantB, Ids: []string{sent.GetId()}})
	wantDenied(t, "RetryFailedEvents", err)
	_, err = dr.ResolveFailedEvent(ctx, &eventgwv1.ResolveFailedEventRequest{TenantId: tenantB, Id: sent.GetId()})
	wantDenied(t, "ResolveFailedEvent", err)
	list, err := du.ListFailedEvents(ctx, &eventgwv1.ListFailedEventsRequest{TenantId: tenantB})
	if err != nil || len(list.GetFailedEvents()) != 1 || list.GetFailedEvents()[0].GetRetried() || list.GetFailedEvents()[0].GetResolved() {
		t.Errorf("B's failed events after refused calls: %v, %v; want the one, neither retried nor resolved", list, err)
	}
	if _, err := dr.ListFailedEvents(ctx, &eventgwv1.ListFailedEventsRequest{TenantId: tenantA}); err != nil {
		t.Errorf("ListFailedEvents for A: %v", err)
	}

	// SagaService.
	sr, su := eventgwv1.NewSagaServiceClient(r.conn), eventgwv1.NewSagaServiceClient(u.conn)
	wf := &eventgwv1.WorkflowDefinition{WorkflowId: "tenant-check", Name: "Tenant check", Steps: []*eventgwv1.WorkflowStep{
		{StepId: "one", Name: "One", Action: "tenant_check_one", TimeoutSeconds: 60},
	}}
	register(t, sr, wf)
	_, err = sr.StartSaga(ctx, &eventgwv1.StartSagaRequest{WorkflowId: wf.GetWorkflowId(), TenantId: tenantB})
	wantDenied(t, "StartSaga", err)
	if l, err := su.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantB}); err != nil || len(l.GetSagas()) != 0 {
		t.Fatalf("B's sagas after a refused start: %v, %v", l, err)
	}
	ok := func(c call) reply { return reply{output: map[string]any{"done": true}} }
	wr := startWorker(t, r.conn, workerOpts{id: "restricted-worker", actions: []string{"tenant_check_one"}}, ok)
	// B's saga is started first (its task is the oldest), through the open sidecar,
	// which has no worker: the restricted sidecar's worker is the only one polling.
	sagaB := startSaga(t, su, wf.GetWorkflowId(), tenantB, map[string]any{})
	_, err = sr.GetSaga(ctx, &eventgwv1.GetSagaRequest{TenantId: tenantB, SagaId: sagaB.GetSagaId()})
	wantDenied(t, "GetSaga", err)
	_, err = sr.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantB})
	wantDenied(t, "ListSagas", err)
	_, err = sr.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenantB, SagaId: sagaB.GetSagaId()})
	wantDenied(t, "CancelSaga", err)
	// A's saga, also started through the open sidecar, reaches the restricted worker by
	// a claim, which skips B's older task.
	sagaA := startSaga(t, su, wf.GetWorkflowId(), tenantA, map[string]any{})
	waitSaga(t, su, tenantA, sagaA.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	if st := getSaga(t, su, tenantB, sagaB.GetSagaId()); st.GetSteps()[0].GetWorkerId() != "" || st.GetSteps()[0].GetStartedAt() != nil || st.GetCancelRequested() {
		t.Fatalf("B's saga after A's completed: step taken by %q at %v, cancel requested %v; want its task untaken",
			st.GetSteps()[0].GetWorkerId(), st.GetSteps()[0].GetStartedAt(), st.GetCancelRequested())
	}
	startWorker(t, u.conn, workerOpts{id: "open-worker", actions: []string{"tenant_check_one"}}, ok)
	waitSaga(t, su, tenantB, sagaB.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	for _, c := range wr.allCalls() {
		if c.TenantID != tenantA {
			t.Errorf("the restricted worker got a task of tenant %s", c.TenantID)
		}
	}

	// Subscribe: B's events are committed without being delivered.
	sub := subscribeTo(t, r, &eventgwv1.SubscribeRequest{
		Subscription: "tenant-filter", Topics: []string{"patient"}, StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST,
		Ordering: eventgwv1.Ordering_ORDERING_NONE,
	})
	sub.waitAssigned(12)
	evs := []*eventgwv1.Event{patientEvent(tenantB), patientEvent(tenantA), patientEvent(tenantB), patientEvent(tenantB)}
	if _, err := u.events.PublishBatch(ctx, &eventgwv1.PublishBatchRequest{Events: evs}); err != nil {
		t.Fatal(err)
	}
	// Kafka: the 2 publishes and the append of A, B's append (outbox), then these 4.
	end := int64(2 + 2 + len(evs))
	eventually(t, 20*time.Second, "every event in Kafka", func() bool { return topicCount(t, d.kafka.Brokers, topic) == end })
	got := sub.next(4, 20*time.Second) // A's two publishes, A's append, A's one of the batch
	for _, dl := range got {
		if dl.GetTenantId() != tenantA {
			t.Fatalf("delivered an event of tenant %s", dl.GetTenantId())
		}
	}
	r.ack(t, "tenant-filter", got)
	eventually(t, 20*time.Second, "B's events committed too", func() bool {
		c, e := committed(t, d.kafka.Brokers, "tenant-filter", topic)
		return c == e && e == end
	})
	if more := pending(sub.deliveries); len(more) != 0 {
		t.Fatalf("%d more deliveries, of tenant %s", len(more), more[0].GetTenantId())
	}
}
