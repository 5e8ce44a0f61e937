package saga

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/eventgw/eventgw/internal/store"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// sim runs a saga through the Machine alone, applying each change to in-memory rows as
// the store would, and writes down every transition.
type sim struct {
	t     *testing.T
	def   *Definition
	now   time.Time
	seq   int
	saga  store.SagaRow
	steps map[int]store.SagaStepRow
	out   strings.Builder
}

func newSim(t *testing.T, def *Definition) *sim {
	t.Helper()
	if err := def.Normalize(); err != nil {
		t.Fatal(err)
	}
	return &sim{t: t, def: def, now: time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC), steps: map[int]store.SagaStepRow{}}
}

func (s *sim) machine() *Machine {
	return &Machine{
		Def: s.def, Now: s.now, Rand: func() float64 { return 0.5 }, Service: "test",
		NewTaskID:  func() string { s.seq++; return fmt.Sprintf("task-%d", s.seq) },
		NewEventID: func() string { s.seq++; return fmt.Sprintf("event-%d", s.seq) },
	}
}

func (s *sim) rows() []store.SagaStepRow {
	out := make([]store.SagaStepRow, 0, len(s.steps))
	for _, r := range s.steps {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// live answers the step holding the saga's live task.
func (s *sim) live() *store.SagaStepRow {
	for _, r := range s.rows() {
		if r.TaskState != "" {
			return &r
		}
	}
	return nil
}

func (s *sim) apply(op string, ch Change, err error) {
	fmt.Fprintf(&s.out, "%s\n", op)
	if err != nil {
		fmt.Fprintf(&s.out, "  refused: %v\n\n", err)
		return
	}
	if ch.NoOp {
		fmt.Fprintf(&s.out, "  no change\n\n")
		return
	}
	s.saga = ch.Saga
	for _, r := range ch.Steps {
		s.steps[r.Index] = r
	}
	for _, e := range ch.Events {
		var d map[string]any
		if err := json.Unmarshal(e.Data, &d); err != nil {
			s.t.Fatal(err)
		}
		fmt.Fprintf(&s.out, "  event %-22s", e.Type)
		for _, k := range []string{"step_id", "kind", "attempt", "error_type", "will_retry", "next_attempt_at", "reason", "state"} {
			if v, ok := d[k]; ok {
				fmt.Fprintf(&s.out, " %s=%v", k, v)
			}
		}
		s.out.WriteString("\n")
	}
	for _, r := range ch.Ready {
		fmt.Fprintf(&s.out, "  ready %s in %v\n", r.Queue, r.At.Sub(s.now))
	}
	sg := &s.saga
	fmt.Fprintf(&s.out, "  saga %s step %d", sg.State, sg.CurrentStep)
	if sg.CancelRequested {
		s.out.WriteString(" cancel_requested")
	}
	if sg.ErrorType != "" {
		fmt.Fprintf(&s.out, " error %s %q failed_step %d", sg.ErrorType, sg.ErrorMessage, sg.FailedStep)
	}
	if ch.Ended != "" {
		fmt.Fprintf(&s.out, " ENDED %s", ch.Ended)
	}
	s.out.WriteString("\n")
	for _, r := range s.rows() {
		fmt.Fprintf(&s.out, "    %d %-19s attempt %d comp %d", r.Index, r.Status, r.Attempt, r.CompAttempt)
		if r.TaskState != "" {
			fmt.Fprintf(&s.out, " task %s %s %s", r.TaskID, r.TaskState, r.Queue)
		}
		if r.Output != nil {
			fmt.Fprintf(&s.out, " output %s", r.Output)
		}
		s.out.WriteString("\n")
	}
	s.out.WriteString("\n")
}

func (s *sim) start(ctx string) {
	ch := s.machine().Start(store.SagaRow{ID: "saga-1", TenantID: "tenant-1", WorkflowID: s.def.WorkflowID, WorkflowVersion: 1, Context: []byte(ctx)})
	s.apply("start "+ctx, ch, nil)
}

// claim leases the live task, as store.Claim does.
func (s *sim) claim() {
	r := s.live()
	if r == nil || r.TaskState != store.TaskReady {
		s.t.Fatalf("claim: no ready task")
	}
	if r.ReadyAt.After(s.now) {
		s.now = r.ReadyAt // the backoff passes
	}
	r.TaskState, r.WorkerID = store.TaskLeased, "w"
	r.Deadline = s.now.Add(time.Duration(r.TimeoutMS) * time.Millisecond)
	if r.TaskKind == KindAction && r.StartedAt.IsZero() {
		r.StartedAt = s.now
	}
	s.steps[r.Index] = *r
}

func (s *sim) answer(op string, a Answer) {
	s.now = s.now.Add(time.Second)
	r := s.live()
	if a.TaskID == "" && r != nil {
		a.TaskID = r.TaskID
	}
	if a.Outcome == TimedOut && r != nil {
		s.now = r.Deadline
	}
	ch, err := s.machine().Answer(s.saga, s.rows(), a)
	s.apply(op, ch, err)
}

// run plays ops: claim, ok[:json], fail, fail!, timeout, cancel, late.
func (s *sim) run(ops ...string) {
	for _, op := range ops {
		name, arg, _ := strings.Cut(op, ":")
		switch name {
		case "claim":
			s.claim()
		case "ok":
			if arg == "" {
				arg = "{}"
			}
			s.answer("complete "+arg, Answer{Outcome: Completed, Output: []byte(arg)})
		case "fail":
			s.answer("fail (retryable)", Answer{Outcome: Failed, ErrorType: "Busy", ErrorMessage: "try later"})
		case "fail!":
			s.answer("fail (non-retryable)", Answer{Outcome: Failed, ErrorType: "Rejected", ErrorMessage: "no", NonRetryable: true})
		case "timeout":
			s.answer("timeout", Answer{Outcome: TimedOut})
		case "late":
			s.answer("late answer to task-1", Answer{TaskID: "task-1", Outcome: Completed, Output: []byte("{}")})
		case "cancel":
			s.now = s.now.Add(time.Second)
			ch, err := s.machine().Cancel(s.saga, s.rows(), "patient left")
			s.apply("cancel", ch, err)
		default:
			s.t.Fatalf("unknown op %q", op)
		}
	}
}

func admissionDef() *Definition {
	return &Definition{
		WorkflowID: "patient-admission", EnableCompensation: true,
		Steps: []Step{
			{ID: "check-bed-availability", Action: "check_beds", Compensation: "release_bed_hold", TimeoutSeconds: 30},
			{ID: "create-admission", Action: "create_admission", Compensation: "cancel_admission"},
			{ID: "assign-bed", Action: "assign_bed", Compensation: "unassign_bed"},
			{ID: "notify-ward", Action: "notify_ward_staff"},
		},
	}
}

// TestTransitionsGolden plays scenarios through the state machine and compares every
// transition (events, tasks made ready, the saga's and steps' rows) with
// testdata/<scenario>.golden. Run with -update to accept a change.
func TestTransitionsGolden(t *testing.T) {
	noComp := func() *Definition { d := admissionDef(); d.EnableCompensation = false; return d }
	cases := []struct {
		name string
		def  func() *Definition
		ops  []string
	}{
		{"admission_completed", admissionDef, []string{
			"claim", `ok:{"bed_id":"b-7"}`, "claim", `ok:{"admission_id":"a-1"}`, "claim", `ok:{"assignment_id":"x"}`, "claim", "ok", "late",
		}},
		{"admission_step3_fails", admissionDef, []string{
			"claim", `ok:{"bed_id":"b-7"}`, "claim", `ok:{"admission_id":"a-1"}`, "claim", "fail!", "claim", "ok", "claim", "ok", "claim", "ok",
		}},
		{"retry_then_complete", admissionDef, []string{"claim", "fail", "claim", "fail", "claim", `ok:{"bed_id":"b-7"}`}},
		{"retries_exhausted", admissionDef, []string{"claim", "ok", "claim", "fail", "claim", "timeout", "claim", "fail", "claim", "ok"}},
		{"compensation_retried_then_fails", admissionDef, []string{"claim", "ok", "claim", "ok", "claim", "fail!", "claim", "ok", "claim", "fail", "claim", "timeout", "claim", "fail"}},
		{"compensation_non_retryable", admissionDef, []string{"claim", "ok", "claim", "fail!", "claim", "fail!"}},
		{"cancel_waiting_first_attempt", admissionDef, []string{"claim", `ok:{"bed_id":"b-7"}`, "cancel", "claim", "ok", "cancel"}},
		{"cancel_during_backoff", admissionDef, []string{"claim", "ok", "claim", "fail", "cancel", "claim", "ok", "claim", "ok"}},
		{"cancel_running_then_complete", admissionDef, []string{"claim", "ok", "claim", "cancel", "cancel", `ok:{"admission_id":"a-1"}`, "claim", "ok", "claim", "ok"}},
		{"cancel_running_then_fail", admissionDef, []string{"claim", "ok", "claim", "cancel", "fail", "claim", "ok", "claim", "ok"}},
		{"cancel_while_compensating", admissionDef, []string{"claim", "ok", "claim", "fail!", "cancel"}},
		{"cancel_ended", admissionDef, []string{"claim", "fail!", "claim", "ok", "cancel"}},
		{"no_compensation_fails", noComp, []string{"claim", "ok", "claim", "fail!"}},
		{"no_compensation_cancel_running", noComp, []string{"claim", "ok", "claim", "cancel", "ok"}},
		{"no_compensation_cancel_waiting", noComp, []string{"claim", "ok", "cancel"}},
		{"first_step_fails_no_compensation_ran", func() *Definition {
			d := admissionDef()
			d.Steps[0].Compensation = ""
			return d
		}, []string{"claim", "fail!"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newSim(t, c.def())
			s.start(`{"patient_id":"p-123","ward_id":"w-4"}`)
			s.run(c.ops...)
			path := filepath.Join("testdata", c.name+".golden")
			got := s.out.String()
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
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
			if got != string(want) {
				t.Errorf("transitions differ from %s (run with -update to accept):\n--- got ---\n%s", path, got)
			}
		})
	}
}

// TestOneLiveTask: in every scenario state short of the end, exactly one step holds a
// live task (the invariant that keeps a saga from being forgotten); once ended, none.
func TestOneLiveTask(t *testing.T) {
	for _, ops := range [][]string{
		{"claim", "ok", "claim", "fail", "claim", "timeout", "claim", "fail!", "claim", "fail", "claim", "ok"},
		{"claim", "ok", "claim", "cancel", "ok", "claim", "ok", "claim", "ok"},
		{"claim", "ok", "claim", "ok", "claim", "ok", "claim", "ok"},
	} {
		s := newSim(t, admissionDef())
		s.start(`{}`)
		for _, op := range ops {
			s.run(op)
			live := 0
			for _, r := range s.steps {
				if r.TaskState != "" {
					live++
				}
			}
			if want := map[bool]int{true: 0, false: 1}[Ended(s.saga.State)]; live != want {
				t.Fatalf("after %v: %d live tasks in state %s\n%s", op, live, s.saga.State, s.out.String())
			}
		}
	}
}

func TestBackoff(t *testing.T) {
	j := 0.2
	p := RetryPolicy{InitialBackoffMS: 1000, Multiplier: 2, MaxBackoffMS: 5000, Jitter: &j}
	for _, c := range []struct {
		n    int
		r    float64
		want time.Duration
	}{
		{1, 0.5, time.Second},
		{2, 0.5, 2 * time.Second},
		{3, 0.5, 4 * time.Second},
		{4, 0.5, 5 * time.Second},
		{1, 0, 800 * time.Millisecond},
		{1, 0.999999, 1200 * time.Millisecond},
		{10, 0, 4 * time.Second},
	} {
		if got := p.Backoff(c.n, c.r).Round(time.Millisecond); got != c.want {
			t.Errorf("retry %d, r %v: %v, want %v", c.n, c.r, got, c.want)
		}
	}
}

func TestNormalizeAndCanonical(t *testing.T) {
	a, b := admissionDef(), admissionDef()
	b.Steps[0].Retry = RetryPolicy{MaxAttempts: DefaultMaxAttempts, InitialBackoffMS: DefaultInitialBackoffMS}
	b.Steps[1].TimeoutSeconds = DefaultTimeoutSeconds
	a.Steps[2].Input = []byte(`{"b":1, "a":[1,2]}`)
	b.Steps[2].Input = []byte(`{"a":[1,2],"b":1}`)
	for _, d := range []*Definition{a, b} {
		if err := d.Normalize(); err != nil {
			t.Fatal(err)
		}
	}
	_, da, err := a.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	_, db, _ := b.Canonical()
	if string(da) != string(db) {
		t.Error("definitions equal but for spelled-out defaults and key order have different digests")
	}
	b.Steps[3].Name = "Notify the ward"
	_, dc, _ := b.Canonical()
	if string(dc) == string(db) {
		t.Error("a changed step name kept the digest")
	}
	bad := admissionDef()
	bad.Steps[1].ID = bad.Steps[0].ID
	var err2 interface{ Error() string }
	if err2 = bad.Normalize(); err2 == nil || !strings.HasPrefix(err2.Error(), "workflow.steps[1].step_id:") {
		t.Errorf("duplicate step id: %v", err2)
	}
}

func TestMergeObjects(t *testing.T) {
	got, err := mergeObjects([]byte(`{"a":1,"b":{"x":1}}`), []byte(`{"b":{"y":2},"c":"3"}`))
	if err != nil || string(got) != `{"a":1,"b":{"y":2},"c":"3"}` {
		t.Errorf("merge: %s %v", got, err)
	}
	if _, err := mergeObjects([]byte(`{}`), []byte(`[1]`)); err == nil {
		t.Error("an array output was merged")
	}
}
