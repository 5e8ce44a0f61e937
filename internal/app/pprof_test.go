package app_test

import (
	"strings"
	"testing"

	"github.com/eventgw/eventgw/internal/config"
)

// TestPprofOptIn: profiles are served only with --pprof-addr, on that loopback address,
// not on the metrics port.
func TestPprofOptIn(t *testing.T) {
	d := newDeps(t)
	off := startOn(t, d, nil)
	if off.app.PprofAddr() != "" {
		t.Fatal("pprof served without --pprof-addr")
	}
	if body := httpGet(t, "http://"+off.app.HTTPAddr()+"/debug/pprof/"); strings.Contains(body, "goroutine") {
		t.Fatal("the metrics port serves pprof")
	}
	on := startOn(t, d, func(c *config.Config) { c.PprofAddr = "127.0.0.1:0" })
	if !strings.HasPrefix(on.app.PprofAddr(), "127.0.0.1:") {
		t.Fatalf("pprof address %q", on.app.PprofAddr())
	}
	if body := httpGet(t, "http://"+on.app.PprofAddr()+"/debug/pprof/"); !strings.Contains(body, "goroutine") {
		t.Fatalf("pprof index: %.200q", body)
	}
}
