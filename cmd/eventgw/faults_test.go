//go:build faults

package main

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/eventgw/eventgw/internal/testenv"
)

// TestFaultSidecarKilled is the fault suite's (issue 8; see internal/app/faults_test.go)
// sidecar fault: `eventgw serve` is killed with SIGKILL under steady load (publishes,
// appends, sagas) and started again on the same ports, database and Kafka, as an
// orchestrator would restart it. Calls in flight and calls while it is gone fail with
// Unavailable and are retried by the callers with the same ids. Afterwards every
// publish answered success is on Kafka (a retried one may be there twice: its first
// attempt's outcome was unknown), every acknowledged append is stored and every stored
// event relayed (what the dead relay had sent but not recorded comes again), and every
// saga completes.
func TestFaultSidecarKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the binary; run without -short")
	}
	k := testenv.NewKafka(t)
	reg := testenv.NewRegistry(t)
	db := testenv.NewDatabase(t)
	bin := buildBinary(t)
	grpcAddr, httpAddr := freeAddr(t), freeAddr(t)
	args := []string{"--kafka-brokers", strings.Join(k.Brokers, ","), "--schema-registry-url", reg.URL(), "--database-url", db,
		"--grpc-addr", grpcAddr, "--http-addr", httpAddr, "--breaker-timeout", "1s"}
	first := startServe(t, bin, args...)
	tg := testenv.FaultTarget{Conn: dial(t, grpcAddr), MetricsURL: "http://" + httpAddr + "/metrics", DatabaseURL: db, Brokers: k.Brokers}
	l := testenv.StartLoad(t, tg, testenv.LoadOptions{Publishers: 2, Batchers: 1, Streamers: 1, Appenders: 2, Sagas: true})
	l.Allow(codes.Unavailable)
	l.WaitProgress(100, 60*time.Second)

	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-first.exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("the sidecar exited with %v, want killed", err)
	}
	second := startServe(t, bin, args...)
	defer second.stop(t)
	end := time.Now()
	rec := l.AwaitRecovery(end, tg.Top(t), nil)
	l.WaitProgress(50, 30*time.Second)
	row := l.Finish("sidecar killed (SIGKILL) and restarted on the same data", rec)
	fmt.Printf("\nFault table (cmd/eventgw):\n\n%s\n", testenv.FaultTable([]testenv.FaultRow{row}))
	if t.Failed() {
		t.Logf("killed sidecar's log (last 4 KiB):\n%s", tailText(first.logText(), 4096))
		t.Logf("new sidecar's log (last 4 KiB):\n%s", tailText(second.logText(), 4096))
	}
}

// freeAddr is a free 127.0.0.1 port, for a sidecar started again on the same address.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func tailText(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
