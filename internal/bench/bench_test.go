package bench

import (
	"bytes"
	"testing"
)

// TestBenchSmoke runs every scenario of `make bench` for a moment on small data, so the
// bench tool cannot rot: each must move events, with no errors. It runs in one process:
// the cross-process layout starts the eventgw binary, which a test binary is not.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a whole stack; run without -short")
	}
	var out bytes.Buffer
	rs, err := run(Options{Duration: 150e6, Sizes: "200", Suite: "all", Layout: "in-process", AggregateEvents: 300, ReplayEvents: 500, SubscribeEvents: 3000}, &out)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	if len(rs) < 20 {
		t.Fatalf("%d scenarios measured, want every one:\n%s", len(rs), out.String())
	}
	for _, r := range rs {
		if r.Events == 0 || r.Errors != 0 || r.Elapsed <= 0 {
			t.Errorf("%s: %d events, %d errors in %v", r.Name, r.Events, r.Errors, r.Elapsed)
		}
	}
}
