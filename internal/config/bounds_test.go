package config

import (
	"flag"
	"strings"
	"testing"
)

func devConfig(t *testing.T, args ...string) Config {
	t.Helper()
	var c Config
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	c.Register(fs)
	if err := Parse(fs, append([]string{"--dev"}, args...)); err != nil {
		t.Fatal(err)
	}
	return c
}

// The largest gRPC message follows --max-event-bytes and --max-batch unless
// --max-request-bytes overrides it, and every budget must hold one such message.
func TestRequestBytesAndBudgets(t *testing.T) {
	c := devConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if got, want := c.RequestBytes(), 1<<20+1000*2048; got != want {
		t.Errorf("default largest request %d, want %d", got, want)
	}
	c = devConfig(t, "--max-event-bytes=65536", "--max-batch=100")
	if got, want := c.RequestBytes(), 65536+100*2048; got != want {
		t.Errorf("largest request %d, want %d", got, want)
	}
	c = devConfig(t, "--max-request-bytes=8000000")
	if got := c.RequestBytes(); got != 8000000 {
		t.Errorf("--max-request-bytes not used: %d", got)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--max-request-bytes=1000"}, "--max-request-bytes"},
		{[]string{"--publish-stream-budget-bytes=1048576"}, "--publish-stream-budget-bytes"},
		{[]string{"--publish-budget-bytes=8388608"}, "--publish-budget-bytes"},
		{[]string{"--unary-budget-bytes=0"}, "--unary-budget-bytes"},
		{[]string{"--grpc-max-receiving-bytes=100"}, "--grpc-max-receiving-bytes"},
		{[]string{"--grpc-max-connections=0"}, "--grpc-max-connections"},
		{[]string{"--max-topics=0"}, "--max-topics"},
		{[]string{"--grpc-recv-timeout=10ms"}, "--grpc-recv-timeout"},
		{[]string{"--metrics-max-event-types=0"}, "--metrics-max-event-types"},
	} {
		c := devConfig(t, tc.args...)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error naming %s", tc.args, err, tc.want)
		}
	}
}
