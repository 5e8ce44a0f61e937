package config

import (
	"flag"
	"strings"
	"testing"
)

func TestEnvOverridesAndValidation(t *testing.T) {
	t.Setenv("EVENTGW_GRPC_ADDR", "unix:///tmp/x.sock")
	t.Setenv("EVENTGW_MAX_BATCH", "7")
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c.Register(fs)
	if err := Parse(fs, []string{"--max-batch=9"}); err != nil {
		t.Fatal(err)
	}
	if c.GRPCAddr != "unix:///tmp/x.sock" {
		t.Errorf("env not applied: %q", c.GRPCAddr)
	}
	if c.MaxBatch != 9 {
		t.Errorf("flag must win over env: %d", c.MaxBatch)
	}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "--kafka-brokers") || !strings.Contains(err.Error(), "--dev") {
		t.Errorf("missing dependencies not reported clearly: %v", err)
	}
	c.Dev = true
	if err := c.Validate(); err != nil {
		t.Errorf("dev config invalid: %v", err)
	}
	c.Routes = "nonsense"
	if err := c.Validate(); err == nil {
		t.Error("bad --routes accepted")
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:secret@h:5432/db":           "postgres://u:xxxxx@h:5432/db",
		"postgres://u@h/db?password=secret":       "postgres://u@h/db?password=xxxxx",
		"host=h user=u password=secret dbname=db": "host=h user=u password=xxxxx dbname=db",
	} {
		if got := RedactURL(in); got != want || strings.Contains(got, "secret") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPprofAndBreakerSettingsValidated(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c.Register(fs)
	if err := Parse(fs, []string{"--dev"}); err != nil {
		t.Fatal(err)
	}
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true, "localhost:6060": true, "[::1]:6060": true,
		"0.0.0.0:6060": false, ":6060": false, "10.0.0.5:6060": false, "nonsense": false,
	} {
		c.PprofAddr = addr
		err := c.Validate()
		if (err == nil) != ok {
			t.Errorf("--pprof-addr %q: %v", addr, err)
		}
	}
	c.PprofAddr = ""
	c.BreakerHalfOpenMaxRequests = 1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--breaker-") {
		t.Errorf("half-open max requests below the success threshold accepted: %v", err)
	}
}
