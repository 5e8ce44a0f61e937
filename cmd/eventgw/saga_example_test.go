package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSagaNodeWorkerExample runs the README's "Sagas" block, as written, against
// `eventgw serve --dev` (what `make run` starts): it installs the Node example's
// packages (npm ci) and runs examples/node-worker/admission.js, a worker written with
// nothing but gRPC stubs. One admission completes; the other fails at its third step
// and is compensated in reverse order. Then ListSagas (grpcurl) shows both.
func TestSagaNodeWorkerExample(t *testing.T) {
	if testing.Short() {
		t.Skip("installs npm packages and runs the binary; run without -short")
	}
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed (make deps installs it): the Node example cannot run", tool)
		}
	}
	bin := buildBinary(t)
	tools := grpcurlBin(t)
	d := startDev(t, bin, dataDir(t))
	defer d.stop(t)

	script := strings.ReplaceAll(readmeBlock(t, "saga-node"), "127.0.0.1:50051", d.grpc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "PATH="+tools+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's saga block failed: %v\n%s\n--- sidecar log ---\n%s", err, out, d.logText())
	}
	o := string(out)
	for _, want := range []string{
		"workflow patient-admission version 1 registered",
		"(p-123, ward-4): SAGA_STATE_COMPLETED",
		"ran: check_beds -> create_admission -> assign_bed -> notify_ward_staff",
		"(p-456, ward-full): SAGA_STATE_COMPENSATED",
		"ran: check_beds -> create_admission -> assign_bed -> unassign_bed -> cancel_admission -> release_bed_hold",
		`reason: NonRetryable: step "assign-bed" failed: the bed was given to someone else`,
		`"sagaState": "SAGA_STATE_COMPENSATED"`, `"sagaState": "SAGA_STATE_COMPLETED"`,
	} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q\n%s", want, o)
		}
	}
	if logs := d.logText(); strings.Contains(logs, "given to someone else") || strings.Contains(logs, "p-456") {
		t.Error("a saga's context or a worker's error message reached the sidecar's log")
	}
}
