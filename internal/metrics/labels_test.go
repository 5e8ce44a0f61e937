package metrics

import (
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Label values chosen by callers are kept up to the limit and folded into "other"
// past it, also when they arrive concurrently.
func TestLabelCapFoldsPastTheLimit(t *testing.T) {
	c := NewLabelCap(10)
	var wg sync.WaitGroup
	kept := make([]map[string]bool, 8)
	for g := range kept {
		kept[g] = map[string]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				if v := c.Value(fmt.Sprintf("svc-%d", i)); v != Other {
					kept[g][v] = true
				}
			}
		}()
	}
	wg.Wait()
	all := map[string]bool{}
	for _, k := range kept {
		for v := range k {
			all[v] = true
		}
	}
	if len(all) != 10 || c.Len() != 10 {
		t.Errorf("%d distinct values kept (Len %d), want 10", len(all), c.Len())
	}
	for v := range all {
		if c.Value(v) != v {
			t.Errorf("kept value %q later folded", v)
		}
	}
	if c.Value(Other) != Other {
		t.Error("other is not other")
	}
}

// The guide's metrics count at most the configured number of series per label.
func TestMetricsLabelLimits(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.SetLabelLimits(2, 3, 1)
	for i := range 20 {
		m.Published.WithLabelValues(m.Service(fmt.Sprintf("svc%d", i%5)), m.EventType(fmt.Sprintf("patient.t%d", i))).Inc()
		m.Processing.WithLabelValues("eventgw", m.Subscription(fmt.Sprintf("sub%d", i))).Observe(1)
	}
	// At most (2 services + other) x (3 types + other) series.
	if n := testutil.CollectAndCount(m.Published); n > 3*4 {
		t.Errorf("event_published_total has %d series", n)
	}
	if got := testutil.ToFloat64(m.Published.WithLabelValues(Other, Other)); got == 0 {
		t.Error("nothing counted under other")
	}
	if n := testutil.CollectAndCount(m.Processing); n != 2 {
		t.Errorf("event_processing_duration_seconds has %d series, want 2 (one subscription and other)", n)
	}
}

// PublishFor answers the series of the capped labels, and remembers only pairs of
// kept values: callers naming ever new services or types grow neither the series nor
// the cache.
func TestPublishForKeepsTheLabelCaps(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.SetLabelLimits(2, 3, 1)
	for i := range 50 {
		for j := range 50 {
			m.PublishFor(fmt.Sprintf("svc-%d", i), fmt.Sprintf("d.type-%d", j)).Published.Inc()
		}
	}
	m.PublishFor("svc-0", "d.type-0").Duration.Observe(1)
	if n := testutil.CollectAndCount(m.Published); n != (2+1)*(3+1) {
		t.Errorf("event_published_total has %d series, want (2 services + other) × (3 types + other)", n)
	}
	if got := testutil.ToFloat64(m.Published.WithLabelValues("svc-0", "d.type-0")); got != 1 {
		t.Errorf("svc-0/d.type-0 counted %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Published.WithLabelValues(Other, Other)); got != 48*47 {
		t.Errorf("other/other counted %v, want %d", got, 48*47)
	}
	m.seriesMu.RLock()
	n := len(m.series)
	m.seriesMu.RUnlock()
	if n != 2*3 {
		t.Errorf("the cache holds %d pairs, want only the 6 of kept values", n)
	}
}
