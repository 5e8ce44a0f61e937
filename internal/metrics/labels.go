package metrics

import (
	"sync"
	"sync/atomic"
)

// Other is the label value that every value past a LabelCap's limit is counted under.
const Other = "other"

// Default limits of the label values taken from requests (see Metrics.SetLabelLimits).
const (
	DefaultMaxServices      = 16
	DefaultMaxEventTypes    = 200
	DefaultMaxSubscriptions = 64
)

// LabelCap bounds the distinct values of a label that callers choose (a source
// service, an event type, a subscription name): the first Max values seen are kept as
// they are, every later new value is folded into Other. So a caller cannot make the
// sidecar keep an unbounded number of series (each one is memory in the process and in
// Prometheus).
type LabelCap struct {
	max  int
	seen sync.Map // value → struct{}
	n    atomic.Int64
	mu   sync.Mutex // serialises admissions, so that n never passes max
}

// NewLabelCap keeps at most max distinct values (max < 1 folds every value).
func NewLabelCap(max int) *LabelCap { return &LabelCap{max: max} }

// Value is v when v is one of the kept values or there is room for it, else Other.
func (c *LabelCap) Value(v string) string {
	if v == Other {
		return v
	}
	if _, ok := c.seen.Load(v); ok {
		return v
	}
	if int(c.n.Load()) >= c.max {
		return Other
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen.Load(v); ok {
		return v
	}
	if int(c.n.Load()) >= c.max {
		return Other
	}
	c.seen.Store(v, struct{}{})
	c.n.Add(1)
	return v
}

// Len is the number of distinct values kept.
func (c *LabelCap) Len() int { return int(c.n.Load()) }
