package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eventgw/eventgw/internal/config"
)

// devSidecar is `eventgw serve --dev` run as a process, on free ports.
type devSidecar struct {
	cmd      *exec.Cmd
	grpc     string
	brokers  []string
	registry string
	logs     *strings.Builder
	mu       *sync.Mutex
	exited   chan error
}

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "eventgw")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func startDev(t *testing.T, bin, dataDir string) *devSidecar {
	t.Helper()
	return startServe(t, bin, "--dev", "--dev-kafka-ports", "0,0,0", "--dev-registry-addr", "127.0.0.1:0",
		"--dev-postgres-port", "0", "--data-dir", dataDir)
}

// startServe runs `eventgw serve` with args on free gRPC and HTTP ports and waits until
// it says it is ready.
func startServe(t *testing.T, bin string, args ...string) *devSidecar {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"}, args...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &devSidecar{cmd: cmd, logs: &strings.Builder{}, mu: &sync.Mutex{}, exited: make(chan error, 1)}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // a no-op once it has exited
	ready := make(chan map[string]any, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			d.mu.Lock()
			d.logs.WriteString(line + "\n")
			d.mu.Unlock()
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "eventgw is ready" {
				ready <- m
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		d.exited <- cmd.Wait()
	}()
	select {
	case m := <-ready:
		d.grpc = m["grpc_listening"].(string)
		for _, b := range m["kafka_brokers"].([]any) {
			d.brokers = append(d.brokers, b.(string))
		}
		d.registry = m["schema_registry"].(string)
	case err := <-d.exited:
		t.Fatalf("eventgw exited before ready: %v\n%s", err, d.logText())
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("eventgw not ready in 2 minutes\n%s", d.logText())
	}
	return d
}

func (d *devSidecar) logText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// stop sends SIGTERM and expects a clean exit.
func (d *devSidecar) stop(t *testing.T) {
	t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.exited:
		if err != nil {
			t.Errorf("eventgw exited with %v after SIGTERM\n%s", err, d.logText())
		}
	case <-time.After(time.Minute):
		_ = d.cmd.Process.Kill()
		t.Fatal("eventgw did not stop within a minute of SIGTERM")
	}
}

func grpcurlBin(t *testing.T) string {
	t.Helper()
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "eventgw-test-bin")
	bin := filepath.Join(dir, "grpcurl")
	if _, err := os.Stat(bin); err == nil {
		return dir
	}
	cmd := exec.Command("go", "install", "github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3")
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install grpcurl: %v\n%s", err, out)
	}
	return dir
}

// walkthrough returns the README's walkthrough, one shell script.
func walkthrough(t *testing.T) string { return readmeBlock(t, "walkthrough") }

// readmeBlock returns the bash of the README between <!-- name:start --> and
// <!-- name:end -->.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- "+name+":start -->")
	body, _, ok2 := strings.Cut(rest, "<!-- "+name+":end -->")
	if !ok || !ok2 {
		t.Fatalf("README has no %s markers", name)
	}
	var script strings.Builder
	for _, m := range regexp.MustCompile("(?s)```bash\n(.*?)```").FindAllStringSubmatch(body, -1) {
		script.WriteString(m[1])
	}
	if script.Len() == 0 {
		t.Fatalf("%s has no bash block", name)
	}
	return script.String()
}

func dataDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "eventgw-dev-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the postgres user must reach it
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// TestREADMEWalkthrough runs the README's grpcurl walkthrough, as written, against
// `eventgw serve --dev`; restarts it on the same data folder (schemas come back and
// the registry is re-seeded); and checks SIGTERM stops it cleanly.
func TestREADMEWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds grpcurl and the binary; run without -short")
	}
	if _, err := exec.LookPath("kcat"); err != nil {
		t.Fatal("kcat is needed (the README uses it): run `make deps` or apt-get install kcat")
	}
	bin := buildBinary(t)
	tools := grpcurlBin(t)
	dir := dataDir(t)
	d := startDev(t, bin, dir)

	script := walkthrough(t)
	script = strings.ReplaceAll(script, "127.0.0.1:50051", d.grpc)
	script = strings.ReplaceAll(script, "127.0.0.1:19092", d.brokers[0])
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walkthrough failed: %v\n%s\n--- sidecar log ---\n%s", err, out, d.logText())
	}
	o := string(out)
	for _, want := range []string{
		"eventgw.v1.EventService", "grpc.health.v1.Health",
		`"subject": "healthtech.patient.events-patient.created"`,
		`"topic": "healthtech.patient.events"`,
		`"topic": "healthtech.appointment.events"`,
		"ce_type=appointment.booked", "ce_tenantid=6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a",
		`"appointment_id":"a-2"`, "ce_type=patient.created", "ce_source=prm-service",
		`"version": "2"`, `"phone": "+47 555 0100"`, `"first_name": "John"`, `"eventsFolded": "2"`,
		`"eventType": "patient.contact_changed"`,
	} {
		if !strings.Contains(o, want) {
			t.Errorf("walkthrough output lacks %q\n%s", want, o)
		}
	}
	subscribeWalkthrough(t, d, tools)
	if strings.Contains(d.logText(), "Jane Doe") || strings.Contains(d.logText(), "john@example.com") {
		t.Error("a payload reached the sidecar's log")
	}
	d.stop(t)
	if _, err := os.Stat(filepath.Join(dir, "pg", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PostgreSQL still running after the sidecar stopped (postmaster.pid: %v)", err)
	}

	// Restart on the same data: the schema is remembered and re-registered with the
	// new (empty) dev registry, so Avro publishing works at once.
	d = startDev(t, bin, dir)
	defer d.stop(t)
	env := append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"))
	run := func(args ...string) string {
		c := exec.CommandContext(context.Background(), filepath.Join(tools, "grpcurl"), args...)
		c.Env = env
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run("-plaintext", "-d", "{}", d.grpc, "eventgw.v1.EventService/ListSchemas"); !strings.Contains(out, `"eventType": "patient.created"`) {
		t.Fatalf("schema not remembered after restart:\n%s", out)
	}
	out2 := run("-plaintext", "-d", `{"event":{"event_type":"patient.created","tenant_id":"6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a","payload":{"patient_id":"p","name":"n","date_of_birth":"d"}}}`,
		d.grpc, "eventgw.v1.EventService/Publish")
	if !strings.Contains(out2, `"topic": "healthtech.patient.events"`) {
		t.Fatalf("publish after restart:\n%s", out2)
	}
	if !strings.Contains(d.logText(), `"msg":"re-seeded schemas into the registry","schemas":1`) {
		t.Errorf("the registry was not re-seeded:\n%s", d.logText())
	}
}

// subscribeWalkthrough runs the README's two-terminal subscribe walkthrough: the
// Subscribe of "terminal 2" in the background, then "terminal 1" with the delivery ids
// it printed pasted in.
func subscribeWalkthrough(t *testing.T, d *devSidecar, tools string) {
	t.Helper()
	env := append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	term2 := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c",
		strings.ReplaceAll(readmeBlock(t, "subscribe-terminal2"), "127.0.0.1:50051", d.grpc))
	term2.Env = env
	out := &syncBuffer{}
	term2.Stdout, term2.Stderr = out, out
	if err := term2.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = term2.Process.Kill(); _ = term2.Wait() }()
	idRe := regexp.MustCompile(`"deliveryId": "([^"]+)"`)
	deadline := time.Now().Add(60 * time.Second)
	waitOut := func(n int) {
		for len(idRe.FindAllStringSubmatch(out.String(), -1)) < n {
			if time.Now().After(deadline) {
				t.Fatalf("terminal 2 printed fewer than %d deliveries in 60 s:\n%s\n--- sidecar log ---\n%s", n, out.String(), d.logText())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitOut(2)
	got := out.String()
	if strings.Contains(got, "patient.contact_changed") {
		t.Errorf("the aggregate's second event was delivered before its first was finished:\n%s", got)
	}
	for _, want := range []string{`"assignment"`, `"eventType": "patient.created"`, `"name": "Jane Doe"`,
		`"eventType": "patient.registered"`, `"attempt": 1`} {
		if !strings.Contains(got, want) {
			t.Errorf("terminal 2 lacks %s:\n%s", want, got)
		}
	}
	ids := idRe.FindAllStringSubmatch(got, -1)
	script := readmeBlock(t, "subscribe-terminal1")
	script = strings.Replace(script, "paste the deliveryId of the first delivery", ids[0][1], 1)
	script = strings.Replace(script, "paste the deliveryId of the second delivery", ids[1][1], 1)
	script = strings.ReplaceAll(script, "127.0.0.1:50051", d.grpc)
	term1 := exec.Command("bash", "-euo", "pipefail", "-c", script)
	term1.Env = env
	o1, err := term1.CombinedOutput()
	if err != nil {
		t.Fatalf("terminal 1 failed: %v\n%s\n--- sidecar log ---\n%s", err, o1, d.logText())
	}
	waitOut(3)
	if !strings.Contains(out.String(), `"eventType": "patient.contact_changed"`) {
		t.Errorf("terminal 2 did not get the aggregate's second event:\n%s", out.String())
	}
	for _, want := range []string{`"acked": 1`, `"nacked": 1`, `"errorType": "ValidationError"`, `"errorMessage": "no ward given"`,
		`"subscription": "fhir-service"`, `"dlqTopic": "healthtech.dlq.patient"`} {
		if !strings.Contains(string(o1), want) {
			t.Errorf("terminal 1 lacks %s:\n%s", want, o1)
		}
	}
}

// syncBuffer is a bytes.Buffer safe to write from a process and read from a test.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestHelpDocumentsEveryFlag: `eventgw --help` lists every serve flag with its text.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	bin := buildBinary(t)
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	var cfg config.Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !strings.Contains(string(out), "-"+f.Name) || !strings.Contains(string(out), f.Usage) {
			t.Errorf("--help does not document -%s", f.Name)
		}
	})
	if n < 20 || !strings.Contains(string(out), "EVENTGW_") {
		t.Errorf("help covers %d flags and must explain EVENTGW_ variables:\n%s", n, out)
	}
}
