package store_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventgw/eventgw/internal/store"
)

// insertReady inserts n sagas of workflow wf whose first task (queue) is ready.
func insertReady(t *testing.T, s *store.Sagas, wf string, n int, queue string, timeoutMS int) []string {
	t.Helper()
	var tasks []string
	for range n {
		sg := &store.SagaRow{
			ID: uuid.Must(uuid.NewV7()).String(), TenantID: uuid.NewString(), WorkflowID: wf, WorkflowVersion: 1,
			State: "RUNNING", Context: []byte(`{"k":1}`),
		}
		first := &store.SagaStepRow{Status: "RUNNING", TaskID: uuid.NewString(), Queue: queue, TimeoutMS: timeoutMS}
		ins, err := s.InsertSaga(context.Background(), sg, first, []store.SagaEvent{{ID: uuid.NewString(), Type: "saga.started", Data: []byte(`{}`)}})
		if err != nil || !ins.Created {
			t.Fatalf("insert saga: %+v %v", ins, err)
		}
		tasks = append(tasks, first.TaskID)
	}
	return tasks
}

func registerWF(t *testing.T, s *store.Sagas, id, def string) (int32, bool) {
	t.Helper()
	sum := sha256.Sum256([]byte(def))
	v, created, err := s.RegisterWorkflow(context.Background(), id, []byte(def), sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return v, created
}

// TestSagaClaimsNeverShareATask: eight workers claiming at once (FOR UPDATE SKIP LOCKED)
// lease every ready task exactly once, only tasks of their queues, each with its
// deadline; the next claim finds none.
func TestSagaClaimsNeverShareATask(t *testing.T) {
	pool := newPool(t)
	s := store.NewSagas(pool)
	registerWF(t, s, "wf", `{"v":1}`)
	want := map[string]bool{}
	for _, id := range insertReady(t, s, "wf", 120, "a/do", 30000) {
		want[id] = true
	}
	other := insertReady(t, s, "wf", 20, "a/other", 30000)
	var (
		mu  sync.Mutex
		got = map[string]int{}
		wg  sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				claimed, _, err := s.Claim(context.Background(), []string{"a/do"}, 7, fmt.Sprintf("w%d", w))
				if err != nil {
					t.Error(err)
					return
				}
				if len(claimed) == 0 {
					return
				}
				mu.Lock()
				for _, c := range claimed {
					got[c.TaskID]++
					if c.Queue != "a/do" || c.Attempt != 1 || !c.Deadline.After(c.ReadyAt) || string(c.Context) != `{"k": 1}` {
						t.Errorf("claimed %+v", c)
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for id := range want {
		if got[id] != 1 {
			t.Errorf("task %s claimed %d times", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d tasks claimed, %d were ready in the queue", len(got), len(want))
	}
	still, err := s.StillLeased(context.Background(), append(other, keys(want)[:3]...))
	if err != nil || len(still) != 3 {
		t.Errorf("StillLeased: %v %v (the other queue's tasks are not leased)", still, err)
	}
	claimed, next, err := s.Claim(context.Background(), []string{"a/do"}, 10, "late")
	if err != nil || len(claimed) != 0 || next != store.NoneWaiting {
		t.Errorf("claim after all were leased: %d tasks, next %v, %v", len(claimed), next, err)
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestSagaLeasesExpireAndRelease: a lease past its deadline is reported by Expired (by
// the database's clock); a released task is ready again under a new id.
func TestSagaLeasesExpireAndRelease(t *testing.T) {
	pool := newPool(t)
	s := store.NewSagas(pool)
	ctx := context.Background()
	registerWF(t, s, "wf", `{}`)
	ids := insertReady(t, s, "wf", 2, "a/x", 200)
	claimed, _, err := s.Claim(ctx, []string{"a/x"}, 2, "w")
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	expired, next, err := s.Expired(ctx, 10)
	if err != nil || len(expired) != 0 || next <= 0 || next > 200*time.Millisecond {
		t.Fatalf("before the deadline: expired %v, next in %v, %v", expired, next, err)
	}
	if err := s.Release(ctx, []string{ids[1]}); err != nil {
		t.Fatal(err)
	}
	if still, _ := s.StillLeased(ctx, ids); still[ids[1]] {
		t.Error("a released task is still leased")
	}
	again, _, err := s.Claim(ctx, []string{"a/x"}, 2, "w2")
	if err != nil || len(again) != 1 || again[0].TaskID == ids[1] {
		t.Fatalf("claim after release: %+v %v (want one task under a new id)", again, err)
	}
	for {
		expired, _, err = s.Expired(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(expired) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if expired[0] != ids[0] || slices.Contains(expired, ids[1]) {
		t.Errorf("expired %v: want %s first, and never the released task's old id %s", expired, ids[0], ids[1])
	}
}

// TestSagaWorkflowVersions: registering the same digest again changes nothing;
// concurrent registrations of changes get distinct versions; starting a saga on a
// version that is no longer the latest inserts nothing and says which is.
func TestSagaWorkflowVersions(t *testing.T) {
	pool := newPool(t)
	s := store.NewSagas(pool)
	if v, created := registerWF(t, s, "wf", `{"a":1}`); v != 1 || !created {
		t.Fatalf("first: %d %v", v, created)
	}
	if v, created := registerWF(t, s, "wf", `{"a":1}`); v != 1 || created {
		t.Fatalf("same again: %d %v", v, created)
	}
	var wg sync.WaitGroup
	versions := make([]int32, 6)
	for i := range versions {
		wg.Add(1)
		go func() { defer wg.Done(); versions[i], _ = registerWF(t, s, "wf", fmt.Sprintf(`{"a":%d}`, i+10)) }()
	}
	wg.Wait()
	seen := map[int32]bool{}
	for _, v := range versions {
		if v < 2 || v > 7 || seen[v] {
			t.Errorf("versions %v: each change must get its own version", versions)
		}
		seen[v] = true
	}
	sg := &store.SagaRow{ID: uuid.NewString(), TenantID: uuid.NewString(), WorkflowID: "wf", WorkflowVersion: 1, State: "RUNNING", Context: []byte(`{}`)}
	ins, err := s.InsertSaga(context.Background(), sg, &store.SagaStepRow{Status: "RUNNING", TaskID: uuid.NewString(), Queue: "a/x", TimeoutMS: 1000}, nil)
	if err != nil || ins.Created || !ins.Stale || ins.Latest != 7 {
		t.Errorf("start on version 1: %+v %v", ins, err)
	}
	sg.WorkflowID = "nope"
	if _, err := s.InsertSaga(context.Background(), sg, &store.SagaStepRow{Status: "RUNNING", TaskID: uuid.NewString(), Queue: "a/x"}, nil); !errors.Is(err, store.ErrWorkflowNotFound) {
		t.Errorf("start of an unknown workflow: %v", err)
	}
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM sagas`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d sagas written (%v)", n, err)
	}
}

// TestSagaGroupWrites: several sagas inserted by one statement, then changed in one
// transaction (LockByTasks, one write): each gets its rows and its events, numbered
// from its own latest; a task id that is not live is left out; a repeated idempotency
// key answers the saga that holds it.
func TestSagaGroupWrites(t *testing.T) {
	pool := newPool(t)
	s := store.NewSagas(pool)
	ctx := context.Background()
	registerWF(t, s, "wf", `{}`)
	tenant := uuid.NewString()
	var ns []store.NewSaga
	for i := range 3 {
		ns = append(ns, store.NewSaga{
			Saga:   &store.SagaRow{ID: uuid.NewString(), TenantID: tenant, WorkflowID: "wf", WorkflowVersion: 1, State: "RUNNING", Context: []byte(`{}`), IdempotencyKey: fmt.Sprint("key-", i)},
			First:  &store.SagaStepRow{Status: "RUNNING", TaskID: uuid.NewString(), Queue: "a/x", TimeoutMS: 1000},
			Events: []store.SagaEvent{{ID: uuid.NewString(), Type: "saga.started", Data: []byte(`{}`)}},
		})
	}
	res, err := s.InsertSagas(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !r.Created || r.Err != nil || r.Saga.ID != ns[i].Saga.ID {
			t.Fatalf("saga %d: %+v", i, r)
		}
	}
	again, err := s.InsertSagas(ctx, []store.NewSaga{{
		Saga:  &store.SagaRow{ID: uuid.NewString(), TenantID: tenant, WorkflowID: "wf", WorkflowVersion: 1, State: "RUNNING", Context: []byte(`{}`), IdempotencyKey: "key-1"},
		First: &store.SagaStepRow{Status: "RUNNING", TaskID: uuid.NewString(), Queue: "a/x", TimeoutMS: 1000},
	}})
	if err != nil || again[0].Created || again[0].Saga.ID != ns[1].Saga.ID {
		t.Fatalf("repeated key: %+v %v", again, err)
	}
	tx, err := s.LockByTasks(ctx, []string{ns[0].First.TaskID, ns[2].First.TaskID, uuid.NewString()})
	if err != nil {
		t.Fatal(err)
	}
	if len(tx.Sagas) != 2 || tx.Sagas[0].ID > tx.Sagas[1].ID {
		t.Fatalf("locked %d sagas (in id order?): %+v", len(tx.Sagas), tx.Sagas)
	}
	var ws []store.SagaWrite
	for i := range tx.Sagas {
		sg := tx.Sagas[i]
		sg.State, sg.Context = "COMPLETED", []byte(`{"done":true}`)
		st := tx.Steps[sg.ID][0]
		st.Status, st.TaskID, st.TaskState, st.Queue, st.Output = "COMPLETED", "", "", "", []byte(`{"x":1}`)
		ws = append(ws, store.SagaWrite{Saga: &sg, Steps: []store.SagaStepRow{st}, At: tx.Now, Events: []store.SagaEvent{
			{ID: uuid.NewString(), Type: "saga.step_completed", Data: []byte(`{}`)},
			{ID: uuid.NewString(), Type: "saga.completed", Data: []byte(`{}`)},
		}})
	}
	if err := tx.Commit(ctx, ws); err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 2} {
		sg, steps, hist, err := s.GetSaga(ctx, tenant, ns[i].Saga.ID)
		if err != nil {
			t.Fatal(err)
		}
		if sg.State != "COMPLETED" || steps[0].Status != "COMPLETED" || steps[0].TaskID != "" || len(hist) != 3 ||
			hist[1].Sequence != 2 || hist[2].Type != "saga.completed" {
			t.Errorf("saga %d after the group write: %s, steps %+v, history %+v", i, sg.State, steps, hist)
		}
	}
	if sg, _, _, _ := s.GetSaga(ctx, tenant, ns[1].Saga.ID); sg.State != "RUNNING" {
		t.Errorf("a saga outside the batch changed: %s", sg.State)
	}
}
