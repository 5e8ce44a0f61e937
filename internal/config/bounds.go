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
	if c.SubscribeMaxHeldBytes < 1 || c.SubscribeBudgetBytes < int64(c.SubscribeMaxHeldBytes) {
		errs = append(errs, fmt.Errorf("--subscribe-budget-bytes (%d) must be at least --subscribe-max-held-bytes (%d), which must be positive", c.SubscribeBudgetBytes, c.SubscribeMaxHeldBytes))
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

// The per-item terms of the peak-memory formula (README "Memory"), measured on Go 1.26
// with grpc-go 1.85 and rounded up.
const (
	// MemBase is the sidecar at rest: the Go runtime, the Kafka and PostgreSQL
	// clients, caches of schemas, topics and metric series at their limits.
	MemBase = 48 << 20
	// MemPerConn is one gRPC connection: its read and write buffers, HTTP/2 framer and
	// HPACK tables, and its goroutines.
	MemPerConn = 160 << 10
	// MemPerStream is one gRPC call: its flow-control window (64 KiB a client may send
	// that is not read yet), its answers queued for a client that does not read them
	// (64 KiB), its headers (16 KiB), its handler goroutines and state.
	MemPerStream = 176 << 10
	// MemPerSeries is one metric series (labels, value, buckets' share).
	MemPerSeries = 2 << 10
)

// MemoryTerm is one term of the peak-memory formula.
type MemoryTerm struct {
	Name  string
	Bytes int64
}

// PeakHeap is the bound on the sidecar's live heap that the settings give, with
// subscribeStreams Subscribe streams open, and its terms (README "Memory"). The Go heap
// in use can reach twice the live heap between collections: run the sidecar with
// GOMEMLIMIT set to this bound (or a little more) to keep the heap itself under it.
func (c *Config) PeakHeap(subscribeStreams int) (int64, []MemoryTerm) {
	conns, streams := int64(c.GRPCMaxConnections), int64(c.GRPCMaxConcurrentStreams)
	terms := []MemoryTerm{
		{"base", MemBase},
		{"connections: --grpc-max-connections × 160 KiB", conns * MemPerConn},
		{"calls: --grpc-max-connections × --grpc-max-concurrent-streams × 176 KiB", conns * streams * MemPerStream},
		{"request messages being received: --grpc-max-receiving-bytes", int64(c.GRPCMaxReceivingBytes)},
		{"unary requests being handled: --unary-budget-bytes", int64(c.UnaryBudgetBytes)},
		{"PublishStream requests not answered: --publish-budget-bytes", int64(c.PublishBudgetBytes)},
		{"appends waiting to be written: --append-queue-bytes", int64(c.AppendQueueBytes)},
		{"publish metric series: (--metrics-max-services+1) × (--metrics-max-event-types+1) × 5 series", int64(c.MetricsMaxServices+1) * int64(c.MetricsMaxEventTypes+1) * 5 * MemPerSeries},
		{"Subscribe streams: min(streams × --subscribe-max-held-bytes, --subscribe-budget-bytes)", min(int64(subscribeStreams)*int64(c.SubscribeMaxHeldBytes), c.SubscribeBudgetBytes)},
	}
	var total int64
	for _, t := range terms {
		total += t.Bytes
	}
	return total, terms
}
