package app_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// workerRecord is a task a worker process ran, as it reports it on stdout.
type workerRecord struct {
	PID      int       `json:"pid"`
	Saga     string    `json:"saga"`
	Step     string    `json:"step"`
	Attempt  int32     `json:"attempt"`
	Start    time.Time `json:"start"`
	Sent     time.Time `json:"sent"` // CompleteTask called
	End      time.Time `json:"end"`  // and answered
	Accepted bool      `json:"accepted"`
}

const workerAddrEnv = "EVENTGW_TEST_SAGA_WORKER_ADDR"

// TestSagaWorkerProcess is not a test: it is the worker process that
// TestSagaWorkersInTwoProcesses runs (this test binary again, with the sidecar's
// address in EVENTGW_TEST_SAGA_WORKER_ADDR). It runs the actions given in
// EVENTGW_TEST_SAGA_WORKER_ACTIONS and prints a JSON line per task until its stdin
// closes.
func TestSagaWorkerProcess(t *testing.T) {
	addr := os.Getenv(workerAddrEnv)
	if addr == "" {
		t.Skip("the worker process of TestSagaWorkersInTwoProcesses")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); cancel() }()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := eventgwv1.NewSagaServiceClient(conn)
	stream, err := client.PollTasks(ctx, &eventgwv1.PollTasksRequest{
		WorkerId: "proc-" + strconv.Itoa(os.Getpid()), Actions: strings.Split(os.Getenv("EVENTGW_TEST_SAGA_WORKER_ACTIONS"), ","),
		MaxInFlight: 4, PayloadAsJson: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		out = json.NewEncoder(os.Stdout)
		wg  sync.WaitGroup
	)
	defer wg.Wait()
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		for _, task := range resp.GetTasks() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rec := workerRecord{PID: os.Getpid(), Saga: task.GetSagaId(), Step: task.GetStepId(), Attempt: task.GetAttempt(), Start: time.Now()}
				time.Sleep(5 * time.Millisecond)
				rec.Sent = time.Now()
				_, err := client.CompleteTask(ctx, &eventgwv1.CompleteTaskRequest{
					TaskId: task.GetTaskId(),
					Result: &eventgwv1.CompleteTaskRequest_OutputJson{OutputJson: []byte(`{"` + task.GetStepId() + `_by":` + strconv.Itoa(os.Getpid()) + `}`)},
				})
				rec.End, rec.Accepted = time.Now(), err == nil
				mu.Lock()
				_ = out.Encode(rec)
				mu.Unlock()
			}()
		}
	}
}

// TestSagaWorkersInTwoProcesses: two worker processes poll the same actions; the
// sagas' tasks are shared between them, each step runs once, and each saga's steps
// run in order although consecutive steps run in different processes.
func TestSagaWorkersInTwoProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes; run without -short")
	}
	env := newSagaEnv(t)
	client := env.client
	wf := steps("procs-wf", "procs", 4, 10, nil)
	register(t, client, wf)
	actions, _ := actionsOf(wf)

	type proc struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		recs  []workerRecord
		done  chan struct{}
	}
	var procs []*proc
	for range 2 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSagaWorkerProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), workerAddrEnv+"="+env.s.app.GRPCAddr(), "EVENTGW_TEST_SAGA_WORKER_ACTIONS="+strings.Join(actions, ","))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		p := &proc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
		go func() {
			defer close(p.done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				var r workerRecord
				if json.Unmarshal(sc.Bytes(), &r) == nil && r.Saga != "" {
					p.recs = append(p.recs, r)
				}
			}
		}()
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		procs = append(procs, p)
	}

	tenant := "0c7d1f4e-0000-4000-8000-000000000002"
	var ids []string
	for i := range 40 {
		ids = append(ids, startSaga(t, client, "procs-wf", tenant, map[string]any{"n": i}).GetSagaId())
	}
	for _, id := range ids {
		waitSaga(t, client, tenant, id, eventgwv1.SagaState_SAGA_STATE_COMPLETED, 60*time.Second)
	}
	for _, p := range procs {
		_ = p.stdin.Close()
		<-p.done
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("worker process: %v", err)
		}
	}

	byStep := map[string][]workerRecord{}
	for _, p := range procs {
		if len(p.recs) == 0 {
			t.Errorf("worker process %d ran no task", p.cmd.Process.Pid)
		}
		for _, r := range p.recs {
			byStep[r.Saga+"/"+r.Step] = append(byStep[r.Saga+"/"+r.Step], r)
		}
	}
	crossed := 0
	for _, id := range ids {
		var prev *workerRecord
		for i := 1; i <= 4; i++ {
			rs := byStep[id+"/s"+strconv.Itoa(i)]
			if len(rs) != 1 || !rs[0].Accepted || rs[0].Attempt != 1 {
				t.Errorf("saga %s step s%d ran %d times: %+v", id, i, len(rs), rs)
				continue
			}
			if prev != nil {
				if rs[0].Start.Before(prev.Sent) {
					t.Errorf("saga %s: step s%d started before step s%d was answered", id, i, i-1)
				}
				if rs[0].PID != prev.PID {
					crossed++
				}
			}
			prev = &rs[0]
		}
	}
	t.Logf("processes ran %d and %d tasks; %d step hand-offs crossed processes", len(procs[0].recs), len(procs[1].recs), crossed)
}
