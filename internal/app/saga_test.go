package app_test

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/testenv"
)

var updateGolden = flag.Bool("update", false, "rewrite the saga golden files under testdata/")

// transcript is what a saga did, without ids and times: the tasks its workers got (in
// order, with their inputs), its history and its steps. It is compared with a golden
// file.
func transcript(sg *eventgwv1.Saga, calls []call) string {
	var b strings.Builder
	fmt.Fprintf(&b, "saga %s v%d: %s", sg.GetWorkflowId(), sg.GetWorkflowVersion(), sg.GetSagaState())
	if sg.GetErrorType() != "" {
		fmt.Fprintf(&b, " (%s: %s; failed step %q)", sg.GetErrorType(), sg.GetErrorMessage(), sg.GetFailedStep())
	}
	ctxJSON, _ := json.Marshal(sg.GetContext().AsMap())
	fmt.Fprintf(&b, "\ncontext %s\n\ntasks:\n", ctxJSON)
	for _, c := range calls {
		in, _ := json.Marshal(c.Input)
		fmt.Fprintf(&b, "  %-12s %-22s %-22s attempt %d input %s\n", kindWord(c.Kind), c.StepID, c.Action, c.Attempt, in)
	}
	b.WriteString("\nhistory:\n")
	for _, h := range sg.GetHistory() {
		fmt.Fprintf(&b, "  %2d %-22s %-22s %-12s attempt %d", h.GetSequence(), h.GetEventType(), h.GetStepId(), kindWord(h.GetKind()), h.GetAttempt())
		if h.GetErrorType() != "" {
			fmt.Fprintf(&b, " %s", h.GetErrorType())
		}
		if h.GetEventType() == "saga.step_failed" {
			fmt.Fprintf(&b, " will_retry=%v", h.GetWillRetry())
		}
		fmt.Fprintf(&b, " -> %s\n", strings.TrimPrefix(h.GetState().String(), "SAGA_STATE_"))
	}
	b.WriteString("\nsteps:\n")
	for _, st := range sg.GetSteps() {
		out := ""
		if st.GetOutput() != nil {
			o, _ := json.Marshal(st.GetOutput().AsMap())
			out = " output " + string(o)
		}
		fmt.Fprintf(&b, "  %-22s %-34s attempts %d compensation attempts %d%s", st.GetStepId(), st.GetStatus(), st.GetAttempts(), st.GetCompensationAttempts(), out)
		if st.GetErrorType() != "" {
			fmt.Fprintf(&b, " error %s", st.GetErrorType())
		}
		b.WriteString("\n")
	}
	return b.String()
}

func kindWord(k eventgwv1.TaskKind) string {
	switch k {
	case eventgwv1.TaskKind_TASK_KIND_ACTION:
		return "action"
	case eventgwv1.TaskKind_TASK_KIND_COMPENSATION:
		return "compensation"
	case eventgwv1.TaskKind_TASK_KIND_UNSPECIFIED:
	}
	return "-"
}

// golden compares got with testdata/saga/<name>.golden (-update rewrites it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "saga", name+".golden")
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from %s (run with -update to accept):\n--- got ---\n%s--- want ---\n%s", name, path, got, want)
	}
}

// admissionHandler runs the guide's actions: check_beds answers a bed id,
// create_admission an admission id (from the context, which holds bed_id by then),
// assign_bed fails when failAssign is set.
func admissionHandler(failAssign bool) func(c call) reply {
	return func(c call) reply {
		switch {
		case strings.HasPrefix(c.Action, "check_beds"):
			return reply{output: map[string]any{"bed_id": "bed-" + fmt.Sprint(c.Input["ward_id"]) + "-7"}}
		case strings.HasPrefix(c.Action, "create_admission"):
			return reply{output: map[string]any{"admission_id": "adm-for-" + fmt.Sprint(c.Context["bed_id"])}}
		case strings.HasPrefix(c.Action, "assign_bed"):
			if failAssign {
				return reply{errType: "BedAlreadyTaken", errMsg: "the bed was given to someone else", nonRetryable: true}
			}
			return reply{output: map[string]any{"assignment_id": "asg-1"}}
		case strings.HasPrefix(c.Action, "notify_ward_staff"):
			return reply{output: map[string]any{"notified": true}}
		default:
			return reply{output: map[string]any{}} // compensations
		}
	}
}

// TestSagaAdmission runs the guide's patient-admission workflow through the sidecar:
// the happy path ends COMPLETED with each output laid over the context; when step 3
// fails, unassign_bed, cancel_admission and release_bed_hold run in that order, each
// with its step's output, and the saga ends COMPENSATED. Its events reach
// healthtech.saga.events in order, keyed by the saga id, and another service follows
// them with Subscribe.
func TestSagaAdmission(t *testing.T) {
	s := startSidecar(t, nil)
	client := eventgwv1.NewSagaServiceClient(s.conn)
	wf := admission("patient-admission", "")
	if r := register(t, client, wf); r.GetVersion() != 1 || !r.GetCreated() {
		t.Fatalf("first registration: %v", r)
	}
	ctxData := map[string]any{"patient_id": "p-123", "ward_id": "w-4"}

	t.Run("completes", func(t *testing.T) {
		actions, comps := actionsOf(wf)
		w := startWorker(t, s.conn, workerOpts{id: "admission-worker", actions: actions, compensations: comps}, admissionHandler(false))
		started := startSaga(t, client, "patient-admission", tenantA, ctxData)
		if started.GetSagaState() != eventgwv1.SagaState_SAGA_STATE_RUNNING || started.GetWorkflowVersion() != 1 {
			t.Fatalf("StartSaga answered %v", started)
		}
		sg := waitSaga(t, client, tenantA, started.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
		calls := w.callsOf(sg.GetSagaId())
		if got := actionNames(calls); !slices.Equal(got, []string{"check_beds", "create_admission", "assign_bed", "notify_ward_staff"}) {
			t.Fatalf("actions ran %v", got)
		}
		if got := sg.GetContext().AsMap(); got["bed_id"] != "bed-w-4-7" || got["admission_id"] != "adm-for-bed-w-4-7" || got["patient_id"] != "p-123" {
			t.Errorf("final context %v", got)
		}
		for _, c := range calls {
			if c.TenantID != tenantA || c.Kind != eventgwv1.TaskKind_TASK_KIND_ACTION || c.Attempt != 1 {
				t.Errorf("task %+v", c)
			}
		}
		golden(t, "admission_completed", transcript(sg, calls))

		// Its events on Kafka: key and subject the saga id, versions 1..n in order.
		want := historyTypes(sg)
		var got []string
		eventually(t, 30*time.Second, "saga events in Kafka", func() bool {
			got = got[:0]
			for _, r := range testenv.ConsumeAll(t, s.kafka.Brokers, "healthtech.saga.events") {
				if subj, _ := header(r, "ce_subject"); subj == sg.GetSagaId() {
					if string(r.Key) != sg.GetSagaId() {
						t.Fatalf("saga event keyed %q", r.Key)
					}
					if tid, _ := header(r, "ce_tenantid"); tid != tenantA {
						t.Fatalf("saga event of tenant %q", tid)
					}
					if v, _ := header(r, "ce_aggregateversion"); v != fmt.Sprint(len(got)+1) {
						t.Fatalf("saga event version %s at position %d", v, len(got)+1)
					}
					typ, _ := header(r, "ce_type")
					got = append(got, typ)
				}
			}
			return len(got) == len(want)
		})
		if !slices.Equal(got, want) {
			t.Errorf("Kafka has %v, history says %v", got, want)
		}

		// Another service follows the saga with Subscribe (domain "saga").
		u := subscribeTo(t, s, &eventgwv1.SubscribeRequest{
			Subscription: "admission-follower", Topics: []string{"saga"},
			StartPosition: eventgwv1.StartPosition_START_POSITION_EARLIEST, PayloadAsJson: true,
		})
		var followed []string
		for len(followed) < len(want) {
			d := u.next(1, 30*time.Second)[0]
			if d.GetSubject() == sg.GetSagaId() {
				followed = append(followed, d.GetEventType())
				if d.GetEventType() == "saga.step_completed" && len(followed) == 2 {
					var ev struct {
						Output map[string]any `json:"output"`
					}
					if err := json.Unmarshal(d.GetPayloadJson(), &ev); err != nil || ev.Output["bed_id"] != "bed-w-4-7" {
						t.Errorf("check_beds' step_completed event lacks its output: %s (%v)", d.GetPayloadJson(), err)
					}
				}
			}
			if _, err := s.events.Ack(callCtx(t), &eventgwv1.AckRequest{Subscription: "admission-follower", DeliveryIds: []string{d.GetDeliveryId()}}); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(followed, want) {
			t.Errorf("Subscribe delivered %v, history says %v", followed, want)
		}
	})

	t.Run("step 3 fails and is compensated", func(t *testing.T) {
		actions, comps := actionsOf(wf)
		w := startWorker(t, s.conn, workerOpts{id: "admission-worker", actions: actions, compensations: comps, asJSON: true}, admissionHandler(true))
		started := startSaga(t, client, "patient-admission", tenantA, ctxData)
		sg := waitSaga(t, client, tenantA, started.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPENSATED, 30*time.Second)
		calls := w.callsOf(sg.GetSagaId())
		if got := actionNames(calls); !slices.Equal(got, []string{
			"check_beds", "create_admission", "assign_bed", "unassign_bed", "cancel_admission", "release_bed_hold",
		}) {
			t.Fatalf("tasks ran %v", got)
		}
		// Each compensation gets its step's output (the failed step's own: none).
		comp := calls[3:]
		if len(comp[0].Input) != 0 || comp[1].Input["admission_id"] != "adm-for-bed-w-4-7" || comp[2].Input["bed_id"] != "bed-w-4-7" {
			t.Errorf("compensation inputs: %v / %v / %v", comp[0].Input, comp[1].Input, comp[2].Input)
		}
		for _, c := range comp {
			if c.Kind != eventgwv1.TaskKind_TASK_KIND_COMPENSATION {
				t.Errorf("%s came as %s", c.Action, c.Kind)
			}
		}
		if sg.GetErrorType() != "BedAlreadyTaken" || sg.GetFailedStep() != "assign-bed" {
			t.Errorf("saga error %q, failed step %q", sg.GetErrorType(), sg.GetFailedStep())
		}
		golden(t, "admission_compensated", transcript(sg, calls))
	})
}

// sagaEnv is one sidecar shared by the saga subtests (each uses its own tenant and
// action names).
type sagaEnv struct {
	s      *sidecar
	client eventgwv1.SagaServiceClient
}

func newSagaEnv(t *testing.T) *sagaEnv {
	s := startSidecar(t, nil)
	return &sagaEnv{s: s, client: eventgwv1.NewSagaServiceClient(s.conn)}
}

// oneStep is a workflow whose steps run actions named prefix.<n>, each compensated
// by prefix.undo<n>.
func steps(id, prefix string, n int, timeout int32, retry *eventgwv1.RetryPolicy) *eventgwv1.WorkflowDefinition {
	w := &eventgwv1.WorkflowDefinition{WorkflowId: id, EnableCompensation: true}
	for i := 1; i <= n; i++ {
		w.Steps = append(w.Steps, &eventgwv1.WorkflowStep{
			StepId: fmt.Sprintf("s%d", i), Action: fmt.Sprintf("%s.do%d", prefix, i), CompensationAction: fmt.Sprintf("%s.undo%d", prefix, i),
			TimeoutSeconds: timeout, Retry: retry,
		})
	}
	return w
}

func jitter(j float64) *float64 { return &j }

// TestSagaRetriesTimeoutsAndCompensationFailure: a step failing twice (retryable) is
// retried after its backoff and completes; a late answer to an attempt that timed out
// is refused and changes nothing; a step that times out on its last attempt is
// compensated; a compensation that keeps failing ends the saga FAILED with its reason.
func TestSagaRetriesTimeoutsAndCompensationFailure(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client

	t.Run("retries with backoff", func(t *testing.T) {
		tenant := uuid.NewString()
		wf := steps("retry-wf", "retry", 2, 0, &eventgwv1.RetryPolicy{MaxAttempts: 3, InitialBackoffMs: 200, BackoffMultiplier: 2, Jitter: jitter(0.1)})
		register(t, client, wf)
		actions, comps := actionsOf(wf)
		var failures atomic.Int32
		w := startWorker(t, env.s.conn, workerOpts{actions: actions, compensations: comps}, func(c call) reply {
			if c.Action == "retry.do1" && failures.Add(1) <= 2 {
				return reply{errType: "BedServiceBusy", errMsg: "try again"}
			}
			return reply{output: map[string]any{"done": c.Action}}
		})
		sg := waitSaga(t, client, tenant, startSaga(t, client, "retry-wf", tenant, nil).GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
		calls := w.callsOf(sg.GetSagaId())
		if len(calls) != 4 || calls[0].Attempt != 1 || calls[1].Attempt != 2 || calls[2].Attempt != 3 || calls[3].Action != "retry.do2" {
			t.Fatalf("tasks %v", calls)
		}
		// Each retry waited at least its backoff (200 ms, then 400 ms, less 10% jitter)
		// after the failure before it was ready again, by the database's clock.
		hist := sg.GetHistory()
		for i, wantMin := range []time.Duration{180 * time.Millisecond, 360 * time.Millisecond} {
			failed := hist[1+i]
			if failed.GetEventType() != "saga.step_failed" || !failed.GetWillRetry() {
				t.Fatalf("history[%d] = %v", 1+i, failed)
			}
			if gap := calls[1+i].ReadyAt.Sub(failed.GetTime().AsTime()); gap < wantMin {
				t.Errorf("retry %d was ready %v after the failure, want at least %v", i+1, gap, wantMin)
			}
		}
		if st := sg.GetSteps()[0]; st.GetAttempts() != 3 || st.GetErrorType() != "BedServiceBusy" || st.GetStatus() != eventgwv1.StepStatus_STEP_STATUS_COMPLETED {
			t.Errorf("step 1: %v", st)
		}
		golden(t, "retried", transcript(sg, calls))
	})

	t.Run("timeout, then late answer refused", func(t *testing.T) {
		tenant := uuid.NewString()
		wf := steps("timeout-wf", "timeout", 2, 1, &eventgwv1.RetryPolicy{MaxAttempts: 2, InitialBackoffMs: 1})
		register(t, client, wf)
		actions, comps := actionsOf(wf)
		w := startWorker(t, env.s.conn, workerOpts{actions: actions, compensations: comps}, func(c call) reply {
			if c.Action == "timeout.do1" && c.Attempt == 1 {
				return reply{hold: true} // times out
			}
			return reply{output: map[string]any{"attempt": c.Attempt}}
		})
		sg := waitSaga(t, client, tenant, startSaga(t, client, "timeout-wf", tenant, nil).GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
		calls := w.callsOf(sg.GetSagaId())
		first := calls[0]
		if first.Attempt != 1 || calls[1].Attempt != 2 || calls[1].StepID != "s1" {
			t.Fatalf("tasks %v", calls)
		}
		if !calls[1].Received.After(first.Deadline) && !calls[1].ReadyAt.After(first.Deadline) {
			t.Errorf("attempt 2 was ready at %v, before attempt 1's deadline %v", calls[1].ReadyAt, first.Deadline)
		}
		before := getSaga(t, client, tenant, sg.GetSagaId())
		_, err := client.CompleteTask(callCtx(t), &eventgwv1.CompleteTaskRequest{
			TaskId: first.TaskID,
			Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`{"late":true}`)},
		})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("late CompleteTask: %v, want FailedPrecondition", err)
		}
		_, err = client.FailTask(callCtx(t), &eventgwv1.FailTaskRequest{TaskId: first.TaskID, ErrorType: "Late"})
		if status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("late FailTask: %v, want FailedPrecondition", err)
		}
		after := getSaga(t, client, tenant, sg.GetSagaId())
		if len(after.GetHistory()) != len(before.GetHistory()) || after.GetContext().AsMap()["late"] != nil ||
			!after.GetUpdatedAt().AsTime().Equal(before.GetUpdatedAt().AsTime()) {
			t.Errorf("a late answer changed the saga")
		}
		golden(t, "timed_out_then_retried", transcript(after, calls))
	})

	t.Run("last attempt times out: compensated", func(t *testing.T) {
		tenant := uuid.NewString()
		wf := steps("timeout-comp-wf", "tcomp", 2, 1, &eventgwv1.RetryPolicy{MaxAttempts: 1})
		register(t, client, wf)
		actions, comps := actionsOf(wf)
		w := startWorker(t, env.s.conn, workerOpts{actions: actions, compensations: comps}, func(c call) reply {
			if c.Action == "tcomp.do2" {
				return reply{hold: true}
			}
			return reply{output: map[string]any{"by": c.Action}}
		})
		sg := waitSaga(t, client, tenant, startSaga(t, client, "timeout-comp-wf", tenant, nil).GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPENSATED, 30*time.Second)
		if sg.GetErrorType() != "timeout" || sg.GetFailedStep() != "s2" {
			t.Errorf("saga error %q at %q", sg.GetErrorType(), sg.GetFailedStep())
		}
		golden(t, "timed_out_compensated", transcript(sg, w.callsOf(sg.GetSagaId())))
	})

	t.Run("failing compensation ends FAILED", func(t *testing.T) {
		tenant := uuid.NewString()
		wf := steps("compfail-wf", "cfail", 3, 0, &eventgwv1.RetryPolicy{MaxAttempts: 2, InitialBackoffMs: 10})
		register(t, client, wf)
		actions, comps := actionsOf(wf)
		w := startWorker(t, env.s.conn, workerOpts{actions: actions, compensations: comps}, func(c call) reply {
			switch c.Action {
			case "cfail.do3":
				return reply{errType: "Rejected", errMsg: "ward closed", nonRetryable: true}
			case "cfail.undo2":
				return reply{errType: "LedgerDown", errMsg: "cannot reach the admissions ledger"}
			}
			return reply{output: map[string]any{"by": c.Action}}
		})
		sg := waitSaga(t, client, tenant, startSaga(t, client, "compfail-wf", tenant, nil).GetSagaId(), eventgwv1.SagaState_SAGA_STATE_FAILED, 30*time.Second)
		if sg.GetErrorType() != "LedgerDown" || sg.GetFailedStep() != "s2" || !strings.Contains(sg.GetErrorMessage(), "cfail.undo2") {
			t.Errorf("saga error %q %q at %q", sg.GetErrorType(), sg.GetErrorMessage(), sg.GetFailedStep())
		}
		calls := w.callsOf(sg.GetSagaId())
		if got := actionNames(calls); !slices.Equal(got, []string{"cfail.do1", "cfail.do2", "cfail.do3", "cfail.undo3", "cfail.undo2", "cfail.undo2"}) {
			t.Errorf("tasks %v (undo1 must not run after undo2 failed)", got)
		}
		golden(t, "compensation_failed", transcript(sg, calls))
	})
}

// TestSagaStartIsIdempotentAndVersioned: a second StartSaga with the same key and
// tenant answers the first saga; identical definitions keep their version, changed
// ones get a new one, and a running saga keeps the version it started with.
func TestSagaStartIsIdempotentAndVersioned(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	ctx := callCtx(t)
	wf := steps("idem-wf", "idem", 2, 0, nil)
	register(t, client, wf)
	if r := register(t, client, wf); r.GetVersion() != 1 || r.GetCreated() {
		t.Fatalf("identical re-registration: %v", r)
	}
	start := func(tenant, key, workflow string) (*eventgwv1.StartSagaResponse, error) {
		return client.StartSaga(ctx, &eventgwv1.StartSagaRequest{
			WorkflowId: workflow, TenantId: tenant, IdempotencyKey: key,
			InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: []byte(`{"n":1}`)},
		})
	}
	a, err := start(tenantA, "admit-p-123-2026-11-01", "idem-wf")
	if err != nil || !a.GetCreated() {
		t.Fatalf("first start: %v %v", a, err)
	}
	b, err := start(tenantA, "admit-p-123-2026-11-01", "idem-wf")
	if err != nil || b.GetCreated() || b.GetSaga().GetSagaId() != a.GetSaga().GetSagaId() {
		t.Fatalf("second start answered %v %v, want the first saga", b, err)
	}
	register(t, client, steps("other-wf", "other", 1, 0, nil))
	if _, err := start(tenantA, "admit-p-123-2026-11-01", "other-wf"); status.Code(err) != codes.AlreadyExists {
		t.Errorf("same key, other workflow: %v, want AlreadyExists", err)
	}
	other := uuid.NewString()
	c, err := start(other, "admit-p-123-2026-11-01", "idem-wf")
	if err != nil || !c.GetCreated() || c.GetSaga().GetSagaId() == a.GetSaga().GetSagaId() {
		t.Fatalf("same key, other tenant: %v %v", c, err)
	}
	list, err := client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantA, WorkflowId: "idem-wf"})
	if err != nil || len(list.GetSagas()) != 1 {
		t.Fatalf("tenant A has %d idem-wf sagas (%v), want 1", len(list.GetSagas()), err)
	}

	// Version 2 has a third step; the saga started on version 1 keeps two.
	v2 := steps("idem-wf", "idem", 3, 0, nil)
	if r := register(t, client, v2); r.GetVersion() != 2 || !r.GetCreated() {
		t.Fatalf("changed definition: %v", r)
	}
	actions, comps := actionsOf(v2)
	w := startWorker(t, env.s.conn, workerOpts{actions: actions, compensations: comps}, func(c call) reply { return reply{output: map[string]any{}} })
	old := waitSaga(t, client, tenantA, a.GetSaga().GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	if old.GetWorkflowVersion() != 1 || len(old.GetSteps()) != 2 || len(w.callsOf(old.GetSagaId())) != 2 {
		t.Errorf("the version-1 saga ran %d steps of version %d", len(w.callsOf(old.GetSagaId())), old.GetWorkflowVersion())
	}
	d, err := start(tenantA, "", "idem-wf")
	if err != nil {
		t.Fatal(err)
	}
	neu := waitSaga(t, client, tenantA, d.GetSaga().GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	if neu.GetWorkflowVersion() != 2 || len(w.callsOf(neu.GetSagaId())) != 3 {
		t.Errorf("a new saga ran %d steps of version %d", len(w.callsOf(neu.GetSagaId())), neu.GetWorkflowVersion())
	}
	waitSaga(t, client, other, c.GetSaga().GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
}

// TestSagaCancel: a saga waiting for a worker is cancelled at once and its completed
// steps compensated, ending CANCELLED; a saga whose step a worker is running is
// compensated once that step answers (the step included); cancelling again changes
// nothing, and an ended saga cannot be cancelled.
func TestSagaCancel(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	ctx := callCtx(t)

	t.Run("waiting step", func(t *testing.T) {
		tenant := uuid.NewString()
		wf := steps("cancel-wf", "cancel", 3, 0, nil)
		register(t, client, wf)
		// No worker runs cancel.do2: the saga waits there.
		w := startWorker(t, env.s.conn, workerOpts{actions: []string{"cancel.do1"}, compensations: []string{"cancel.undo1", "cancel.undo2"}},
			func(c call) reply { return reply{output: map[string]any{"by": c.Action}} })
		sg := startSaga(t, client, "cancel-wf", tenant, nil)
		eventually(t, 30*time.Second, "step 1 completes", func() bool {
			return getSaga(t, client, tenant, sg.GetSagaId()).GetSteps()[0].GetStatus() == eventgwv1.StepStatus_STEP_STATUS_COMPLETED
		})
		resp, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenant, SagaId: sg.GetSagaId(), Reason: "patient went home"})
		if err != nil {
			t.Fatal(err)
		}
		if st := resp.GetSaga().GetSagaState(); st != eventgwv1.SagaState_SAGA_STATE_COMPENSATING || !resp.GetSaga().GetCancelRequested() {
			t.Fatalf("CancelSaga answered %v", resp.GetSaga())
		}
		done := waitSaga(t, client, tenant, sg.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_CANCELLED, 30*time.Second)
		if _, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenant, SagaId: sg.GetSagaId()}); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("cancelling an ended saga: %v, want FailedPrecondition", err)
		}
		golden(t, "cancelled_waiting", transcript(done, w.callsOf(sg.GetSagaId())))
	})

	t.Run("running step", func(t *testing.T) {
		tenant := uuid.NewString()
		wf := steps("cancel-run-wf", "crun", 3, 0, nil)
		register(t, client, wf)
		release := make(chan struct{})
		actions, comps := actionsOf(wf)
		w := startWorker(t, env.s.conn, workerOpts{actions: actions, compensations: comps}, func(c call) reply {
			if c.Action == "crun.do2" {
				<-release // the step is running when the saga is cancelled
			}
			return reply{output: map[string]any{"by": c.Action}}
		})
		sg := startSaga(t, client, "cancel-run-wf", tenant, nil)
		eventually(t, 30*time.Second, "step 2 runs", func() bool { return len(w.callsOf(sg.GetSagaId())) == 2 })
		resp, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenant, SagaId: sg.GetSagaId()})
		if err != nil || resp.GetSaga().GetSagaState() != eventgwv1.SagaState_SAGA_STATE_COMPENSATING {
			t.Fatalf("CancelSaga: %v %v", resp, err)
		}
		again, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenant, SagaId: sg.GetSagaId()})
		if err != nil || again.GetSaga().GetSagaState() != eventgwv1.SagaState_SAGA_STATE_COMPENSATING {
			t.Fatalf("second CancelSaga: %v %v", again, err)
		}
		close(release)
		done := waitSaga(t, client, tenant, sg.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_CANCELLED, 30*time.Second)
		calls := w.callsOf(sg.GetSagaId())
		if got := actionNames(calls); !slices.Equal(got, []string{"crun.do1", "crun.do2", "crun.undo2", "crun.undo1"}) {
			t.Errorf("tasks %v", got)
		}
		if calls[2].Input["by"] != "crun.do2" {
			t.Errorf("undo2 got %v, want step 2's output", calls[2].Input)
		}
		golden(t, "cancelled_running", transcript(done, calls))
	})
}

// TestSagaBadInputAndTenants: bad requests are refused with InvalidArgument naming
// the field, and write nothing; a tenant never sees or changes another's sagas.
func TestSagaBadInputAndTenants(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	ctx := callCtx(t)
	good := func() *eventgwv1.WorkflowDefinition { return steps("bad-wf", "bad", 2, 5, nil) }
	wfCases := []struct {
		name  string
		edit  func(w *eventgwv1.WorkflowDefinition)
		field string
	}{
		{"no steps", func(w *eventgwv1.WorkflowDefinition) { w.Steps = nil }, "workflow.steps"},
		{"duplicate step ids", func(w *eventgwv1.WorkflowDefinition) { w.Steps[1].StepId = w.Steps[0].StepId }, "workflow.steps[1].step_id"},
		{"empty action", func(w *eventgwv1.WorkflowDefinition) { w.Steps[1].Action = "" }, "workflow.steps[1].action"},
		{"negative timeout", func(w *eventgwv1.WorkflowDefinition) { w.Steps[0].TimeoutSeconds = -1 }, "workflow.steps[0].timeout_seconds"},
		{"no workflow id", func(w *eventgwv1.WorkflowDefinition) { w.WorkflowId = "" }, "workflow.workflow_id"},
		{"bad workflow id", func(w *eventgwv1.WorkflowDefinition) { w.WorkflowId = "a b" }, "workflow.workflow_id"},
		{"bad action", func(w *eventgwv1.WorkflowDefinition) { w.Steps[0].Action = "rm -rf" }, "workflow.steps[0].action"},
		{"too many attempts", func(w *eventgwv1.WorkflowDefinition) { w.Steps[0].Retry = &eventgwv1.RetryPolicy{MaxAttempts: 101} }, "workflow.steps[0].retry.max_attempts"},
		{"jitter over 1", func(w *eventgwv1.WorkflowDefinition) { w.Steps[0].Retry = &eventgwv1.RetryPolicy{Jitter: jitter(1.5)} }, "workflow.steps[0].retry.jitter"},
		{"multiplier below 1", func(w *eventgwv1.WorkflowDefinition) {
			w.Steps[0].Retry = &eventgwv1.RetryPolicy{BackoffMultiplier: 0.5}
		}, "workflow.steps[0].retry.backoff_multiplier"},
		{"huge timeout", func(w *eventgwv1.WorkflowDefinition) { w.Steps[0].TimeoutSeconds = 100000 }, "workflow.steps[0].timeout_seconds"},
	}
	for _, c := range wfCases {
		w := good()
		c.edit(w)
		_, err := client.RegisterWorkflow(ctx, &eventgwv1.RegisterWorkflowRequest{Workflow: w})
		expectInvalid(t, "RegisterWorkflow "+c.name, err, c.field)
	}
	if _, err := client.RegisterWorkflow(ctx, &eventgwv1.RegisterWorkflowRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("RegisterWorkflow without a workflow: %v", err)
	}
	if _, err := client.StartSaga(ctx, &eventgwv1.StartSagaRequest{WorkflowId: "bad-wf", TenantId: tenantA}); status.Code(err) != codes.NotFound {
		t.Errorf("StartSaga of an unregistered workflow: %v, want NotFound", err)
	}
	register(t, client, good())
	big := strings.Repeat("x", 300<<10)
	startCases := []struct {
		name  string
		req   *eventgwv1.StartSagaRequest
		field string
	}{
		{"bad tenant", &eventgwv1.StartSagaRequest{WorkflowId: "bad-wf", TenantId: "tenant-1"}, "tenant_id"},
		{"no workflow", &eventgwv1.StartSagaRequest{TenantId: tenantA}, "workflow_id"},
		{"context not an object", &eventgwv1.StartSagaRequest{
			WorkflowId: "bad-wf", TenantId: tenantA,
			InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: []byte(`[1]`)},
		}, "context_json"},
		{"context too big", &eventgwv1.StartSagaRequest{
			WorkflowId: "bad-wf", TenantId: tenantA,
			InitialContext: &eventgwv1.StartSagaRequest_ContextJson{ContextJson: []byte(`{"x":"` + big + `"}`)},
		}, "context_json"},
		{"key with control characters", &eventgwv1.StartSagaRequest{WorkflowId: "bad-wf", TenantId: tenantA, IdempotencyKey: "a\x00b"}, "idempotency_key"},
		{"key too long", &eventgwv1.StartSagaRequest{WorkflowId: "bad-wf", TenantId: tenantA, IdempotencyKey: strings.Repeat("k", 256)}, "idempotency_key"},
	}
	for _, c := range startCases {
		_, err := client.StartSaga(ctx, c.req)
		expectInvalid(t, "StartSaga "+c.name, err, c.field)
	}
	if l, err := client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantA}); err != nil || len(l.GetSagas()) != 0 {
		t.Errorf("bad starts wrote sagas: %v %v", l, err)
	}
	_, err := client.GetSaga(ctx, &eventgwv1.GetSagaRequest{TenantId: tenantA, SagaId: "1"})
	expectInvalid(t, "GetSaga bad id", err, "saga_id")
	_, err = client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantA, PageSize: 5000})
	expectInvalid(t, "ListSagas page size", err, "page_size")
	_, err = client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantA, PageToken: "nope"})
	expectInvalid(t, "ListSagas page token", err, "page_token")
	_, err = client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantA, States: []eventgwv1.SagaState{eventgwv1.SagaState_SAGA_STATE_UNSPECIFIED}})
	expectInvalid(t, "ListSagas state", err, "states[0]")
	_, err = client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{TaskId: "x"})
	expectInvalid(t, "CompleteTask bad id", err, "task_id")
	_, err = client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{TaskId: uuid.NewString(), Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`"s"`)}})
	expectInvalid(t, "CompleteTask output", err, "output_json")
	_, err = client.FailTask(ctx, &eventgwv1.FailTaskRequest{TaskId: uuid.NewString()})
	expectInvalid(t, "FailTask no type", err, "error_type")
	_, err = client.FailTask(ctx, &eventgwv1.FailTaskRequest{TaskId: uuid.NewString(), ErrorType: "E", ErrorMessage: strings.Repeat("m", 5000)})
	expectInvalid(t, "FailTask long message", err, "error_message")
	if _, err := client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{TaskId: uuid.NewString()}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("CompleteTask of an unknown task: %v, want FailedPrecondition", err)
	}
	for _, c := range []struct {
		req   *eventgwv1.PollTasksRequest
		field string
	}{
		{&eventgwv1.PollTasksRequest{}, "actions"},
		{&eventgwv1.PollTasksRequest{Actions: []string{"ok", "not ok"}}, "actions[1]"},
		{&eventgwv1.PollTasksRequest{Compensations: []string{""}}, "compensations[0]"},
		{&eventgwv1.PollTasksRequest{Actions: []string{"a"}, MaxInFlight: 1001}, "max_in_flight"},
		{&eventgwv1.PollTasksRequest{Actions: []string{"a"}, WorkerId: "w\n1"}, "worker_id"},
	} {
		st, err := client.PollTasks(ctx, c.req)
		if err == nil {
			_, err = st.Recv()
		}
		expectInvalid(t, "PollTasks", err, c.field)
	}

	// Tenants: B neither sees nor cancels A's saga.
	sg := startSaga(t, client, "bad-wf", tenantA, map[string]any{"patient_id": "p-1"})
	tenantB := uuid.NewString()
	if _, err := client.GetSaga(ctx, &eventgwv1.GetSagaRequest{TenantId: tenantB, SagaId: sg.GetSagaId()}); status.Code(err) != codes.NotFound {
		t.Errorf("GetSaga of another tenant's saga: %v, want NotFound", err)
	}
	if _, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenantB, SagaId: sg.GetSagaId()}); status.Code(err) != codes.NotFound {
		t.Errorf("CancelSaga of another tenant's saga: %v, want NotFound", err)
	}
	if l, err := client.ListSagas(ctx, &eventgwv1.ListSagasRequest{TenantId: tenantB}); err != nil || len(l.GetSagas()) != 0 {
		t.Errorf("tenant B lists %v %v", l, err)
	}
	if got := getSaga(t, client, tenantA, sg.GetSagaId()); got.GetSagaState() != eventgwv1.SagaState_SAGA_STATE_RUNNING {
		t.Errorf("A's saga is %s", got.GetSagaState())
	}
	if _, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenantA, SagaId: sg.GetSagaId()}); err != nil {
		t.Fatal(err)
	}
	waitSaga(t, client, tenantA, sg.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_CANCELLED, 10*time.Second)
}

func expectInvalid(t *testing.T, what string, err error, field string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Errorf("%s: %v, want InvalidArgument", what, err)
		return
	}
	if !strings.HasPrefix(st.Message(), field+":") {
		t.Errorf("%s: %q does not name %s", what, st.Message(), field)
	}
}

// TestSagaListFilters: ListSagas filters by workflow, state and creation time, and
// pages newest first without repeating or skipping a saga.
func TestSagaListFilters(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	ctx := callCtx(t)
	tenant := uuid.NewString()
	register(t, client, steps("list-a", "lista", 1, 0, nil))
	register(t, client, steps("list-b", "listb", 1, 0, nil))
	var ids []string
	for i := range 7 {
		wfID := "list-a"
		if i%2 == 1 {
			wfID = "list-b"
		}
		ids = append(ids, startSaga(t, client, wfID, tenant, map[string]any{"i": i}).GetSagaId())
	}
	mid := time.Now()
	time.Sleep(5 * time.Millisecond) // created_at has microseconds: keep the bound between sagas
	for range 3 {
		ids = append(ids, startSaga(t, client, "list-a", tenant, nil).GetSagaId())
	}
	// Complete list-b's sagas.
	startWorker(t, env.s.conn, workerOpts{actions: []string{"listb.do1"}}, func(call) reply { return reply{output: map[string]any{}} })
	for i := 1; i < 7; i += 2 {
		waitSaga(t, client, tenant, ids[i], eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	}
	list := func(req *eventgwv1.ListSagasRequest) []string {
		req.TenantId = tenant
		var out []string
		for {
			resp, err := client.ListSagas(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range resp.GetSagas() {
				if s.GetContext() != nil || s.GetSteps() != nil {
					t.Error("ListSagas carries context or steps")
				}
				out = append(out, s.GetSagaId())
			}
			if resp.GetNextPageToken() == "" {
				return out
			}
			req.PageToken = resp.GetNextPageToken()
		}
	}
	reversed := slices.Clone(ids)
	slices.Reverse(reversed)
	if got := list(&eventgwv1.ListSagasRequest{PageSize: 3}); !slices.Equal(got, reversed) {
		t.Errorf("paged list %v, want %v", got, reversed)
	}
	var wantB []string
	for i := 5; i >= 1; i -= 2 {
		wantB = append(wantB, ids[i])
	}
	if got := list(&eventgwv1.ListSagasRequest{WorkflowId: "list-b", PageSize: 2}); !slices.Equal(got, wantB) {
		t.Errorf("list-b: %v, want %v", got, wantB)
	}
	if got := list(&eventgwv1.ListSagasRequest{States: []eventgwv1.SagaState{eventgwv1.SagaState_SAGA_STATE_COMPLETED}}); !slices.Equal(got, wantB) {
		t.Errorf("COMPLETED: %v, want %v", got, wantB)
	}
	if got := list(&eventgwv1.ListSagasRequest{CreatedAfter: timestamppb.New(mid)}); !slices.Equal(got, reversed[:3]) {
		t.Errorf("created after: %v, want %v", got, reversed[:3])
	}
	if got := list(&eventgwv1.ListSagasRequest{CreatedBefore: timestamppb.New(mid), States: []eventgwv1.SagaState{eventgwv1.SagaState_SAGA_STATE_RUNNING}}); len(got) != 4 {
		t.Errorf("running before mid: %v", got)
	}
	// The running ones are cancelled: nothing is left waiting.
	for _, id := range list(&eventgwv1.ListSagasRequest{States: []eventgwv1.SagaState{eventgwv1.SagaState_SAGA_STATE_RUNNING}}) {
		if _, err := client.CancelSaga(ctx, &eventgwv1.CancelSagaRequest{TenantId: tenant, SagaId: id}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSagaNoHealthDataInLogs: contexts, outputs and worker error messages never reach
// the sidecar's log, also when sagas fail.
func TestSagaNoHealthDataInLogs(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	wf := steps("phi-wf", "phi", 2, 1, &eventgwv1.RetryPolicy{MaxAttempts: 1})
	wf.EnableCompensation = false
	register(t, client, wf)
	startWorker(t, env.s.conn, workerOpts{actions: []string{"phi.do1", "phi.do2"}}, func(c call) reply {
		if c.Action == "phi.do2" {
			return reply{errType: "Denied", errMsg: "Jane Doe has diagnosis J45", nonRetryable: true}
		}
		return reply{output: map[string]any{"mrn": "MRN-778899"}}
	})
	sg := startSaga(t, client, "phi-wf", tenantA, map[string]any{"patient_name": "Jane Doe", "dob": "1990-04-01"})
	done := waitSaga(t, client, tenantA, sg.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_FAILED, 30*time.Second)
	if !strings.Contains(done.GetErrorMessage(), "J45") {
		t.Errorf("the operator does not see the error: %q", done.GetErrorMessage())
	}
	logs := env.s.logs.String()
	for _, phi := range []string{"Jane Doe", "J45", "MRN-778899", "1990-04-01"} {
		if strings.Contains(logs, phi) {
			t.Errorf("%q reached the log", phi)
		}
	}
	if !strings.Contains(logs, sg.GetSagaId()) {
		t.Error("the failed saga's id is not logged")
	}
}

// TestSagaMetrics: the guide-style saga metrics, with the service label.
func TestSagaMetrics(t *testing.T) {
	env := newSagaEnv(t)
	client := env.client
	register(t, client, steps("metric-wf", "metric", 1, 0, nil))
	sg := startSaga(t, client, "metric-wf", tenantA, nil)
	body := ""
	eventually(t, 15*time.Second, "saga_tasks_pending counts the waiting task", func() bool {
		body = httpGet(t, "http://"+env.s.app.HTTPAddr()+"/metrics")
		return strings.Contains(body, `saga_tasks_pending{action="metric.do1",service="eventgw"} 1`)
	})
	startWorker(t, env.s.conn, workerOpts{actions: []string{"metric.do1"}}, func(call) reply { return reply{output: map[string]any{}} })
	waitSaga(t, client, tenantA, sg.GetSagaId(), eventgwv1.SagaState_SAGA_STATE_COMPLETED, 30*time.Second)
	body = httpGet(t, "http://"+env.s.app.HTTPAddr()+"/metrics")
	for _, want := range []string{
		`saga_started_total{service="eventgw",workflow="metric-wf"} 1`,
		`saga_completed_total{service="eventgw",state="COMPLETED",workflow="metric-wf"} 1`,
		`saga_step_duration_seconds_count{action="metric.do1",service="eventgw"} 1`,
		`saga_task_dispatch_seconds_count{service="eventgw"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
