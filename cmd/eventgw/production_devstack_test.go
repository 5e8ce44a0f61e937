package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// TestDevstackSharedBySidecars runs `eventgw devstack` as a process, reads the EVENTGW_*
// settings it prints, connects to its Kafka (3 brokers), registry and PostgreSQL, then
// runs two `eventgw serve` processes (no --dev) for two services on those settings:
// both publish, and both events land in the one Kafka. SIGTERM stops the devstack
// cleanly, PostgreSQL with it.
func TestDevstackSharedBySidecars(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three processes; run without -short")
	}
	bin := buildBinary(t)
	dir := dataDir(t)
	cmd := exec.Command(bin, "devstack", "--dev-kafka-ports", "0,0,0", "--dev-registry-addr", "127.0.0.1:0",
		"--dev-postgres-port", "0", "--data-dir", dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	settings := map[string]string{}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(2 * time.Minute)
	for len(settings) < 3 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("devstack ended before printing its settings:\n%s", stderr.String())
			}
			k, v, found := strings.Cut(l, "=")
			if !found || !strings.HasPrefix(k, "EVENTGW_") {
				t.Fatalf("stdout line %q is not an EVENTGW_ setting", l)
			}
			settings[k] = v
		case <-deadline:
			t.Fatalf("devstack not ready in 2 minutes:\n%s", stderr.String())
		}
	}
	brokers := strings.Split(settings["EVENTGW_KAFKA_BROKERS"], ",")
	// stderr is written before stdout but copied from its own pipe: give it a moment.
	for _, want := range []string{"Kafka brokers", "Schema Registry", "PostgreSQL", settings["EVENTGW_SCHEMA_REGISTRY_URL"]} {
		until := time.Now().Add(10 * time.Second)
		for !strings.Contains(stderr.String(), want) && time.Now().Before(until) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("devstack's stderr does not say %q:\n%s", want, stderr.String())
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kc, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	meta, err := kadm.NewClient(kc).BrokerMetadata(ctx)
	if err != nil || len(meta.Brokers) != 3 {
		t.Fatalf("Kafka at %v: %d brokers, %v", brokers, len(meta.Brokers), err)
	}
	res, err := http.Get(settings["EVENTGW_SCHEMA_REGISTRY_URL"] + "/subjects")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		t.Fatalf("registry /subjects: %s %s", res.Status, body)
	}
	conn, err := pgx.Connect(ctx, settings["EVENTGW_DATABASE_URL"])
	if err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1: %v", err)
	}
	conn.Close(ctx)

	// Two sidecars, one per service, on the shared stack.
	for k, v := range settings {
		t.Setenv(k, v)
	}
	var sidecars []*devSidecar
	for _, svc := range []string{"prm-service", "fhir-service"} {
		d := startServe(t, bin, "--service-name", svc)
		sidecars = append(sidecars, d)
		if _, err := eventgwv1.NewEventServiceClient(dial(t, d.grpc)).Publish(ctx, &eventgwv1.PublishRequest{Event: &eventgwv1.Event{
			EventType: "patient.created", TenantId: "6f1c2a9e-8d1b-4a4e-9f0e-2b9c1d3e4f5a",
			Data: &eventgwv1.Event_PayloadJson{PayloadJson: []byte(`{"patient_id":"p"}`)},
		}}); err != nil {
			t.Fatalf("publish through %s's sidecar: %v\n%s", svc, err, d.logText())
		}
	}
	cc, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("healthtech.patient.events"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var sources []string
	for len(sources) < 2 && ctx.Err() == nil {
		cc.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == "ce_source" {
					sources = append(sources, string(h.Value))
				}
			}
		})
	}
	slices.Sort(sources)
	if !slices.Equal(sources, []string{"fhir-service", "prm-service"}) {
		t.Errorf("events in the shared Kafka come from %v, want both sidecars'", sources)
	}
	for _, d := range sidecars {
		d.stop(t)
	}

	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() {
		for l := range lines { // drain stdout until it closes
			_ = l
		}
		done <- cmd.Wait()
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("devstack exited with %v after SIGTERM\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("devstack did not stop within a minute of SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(dir, "pg", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PostgreSQL still running after devstack stopped (postmaster.pid: %v)", err)
	}
}
