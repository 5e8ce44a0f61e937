package config

import (
	"fmt"
	"sort"
	"time"
)

// batchEventAllowance is the room a request has for each event of a full batch (its
// envelope and a typical payload) in the default --max-request-bytes.
const batchEventAllowance = 2 << 10

// RequestBytes is the largest gRPC request message: --max-request-bytes, or by default
// room for one event at --max-event-bytes plus a full --max-batch of 2 KiB events.
func (c *Config) RequestBytes() int {
	if c.MaxRequestBytes > 0 {
		return c.MaxRequestBytes
	}
	return c.MaxEventBytes + c.MaxBatch*batchEventAllowance
}

// validateBounds checks the memory bounds and caps against each other: every budget
// must hold at least one request of the largest size, or nothing could pass it.
func (c *Config) validateBounds() []error {
	var errs []error
	req := c.RequestBytes()
	positive := map[string]int{
		"--grpc-max-connections": c.GRPCMaxConnections, "--grpc-max-concurrent-streams": c.GRPCMaxConcurrentStreams,
		"--append-queue-bytes": c.AppendQueueBytes, "--max-topics": c.MaxTopics, "--max-event-types": c.MaxEventTypes,
		"--metrics-max-services": c.MetricsMaxServices, "--metrics-max-event-types": c.MetricsMaxEventTypes,
		"--metrics-max-subscriptions": c.MetricsMaxSubscriptions,
	}
	for _, name := range sortedKeys(positive) {
		if positive[name] < 1 {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	atLeast := []struct {
		name string
		v    int
	}{
		{"--publish-stream-budget-bytes", c.PublishStreamBudgetBytes},
		{"--publish-budget-bytes", c.PublishBudgetBytes},
		{"--unary-budget-bytes", c.UnaryBudgetBytes},
		{"--grpc-max-receiving-bytes", c.GRPCMaxReceivingBytes},
	}
	for _, b := range atLeast {
		if b.v < req {
			errs = append(errs, fmt.Errorf("%s (%d) must be at least the largest request, %d bytes (--max-request-bytes)", b.name, b.v, req))
		}
	}
	if c.PublishBudgetBytes < c.PublishStreamBudgetBytes {
		errs = append(errs, fmt.Errorf("--publish-budget-bytes must be at least --publish-stream-budget-bytes"))
	}
	if c.GRPCRecvTimeout < time.Second {
		errs = append(errs, fmt.Errorf("--grpc-recv-timeout must be at least 1s"))
	}
	return errs
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
