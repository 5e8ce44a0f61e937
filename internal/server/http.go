package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyCheck reports whether a dependency is usable.
type ReadyCheck struct {
	Name  string
	Check func(context.Context) error
	// Breaker, when set, is the dependency's circuit breaker state ("closed", "open",
	// "half-open").
	Breaker func() string
}

// Readiness is what /readyz reports.
type Readiness struct {
	Checks []ReadyCheck
	// Ready decides, from the dependencies that failed their check, whether the sidecar
	// can take work (HTTP 200) or not (503).
	Ready func(failed map[string]bool) bool
	// Notes adds fields to the report (for example the publish fallback's mode).
	Notes func() map[string]any
}

// DependencyReport is one dependency in /readyz.
type DependencyReport struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	Breaker string `json:"breaker,omitempty"`
}

// ReadyReport is the /readyz body.
type ReadyReport struct {
	// Status: "ready" (every dependency answers), "degraded" (some do not, but the
	// sidecar still takes work, e.g. publishes are queued in PostgreSQL while Kafka is
	// down) or "unavailable".
	Status       string                      `json:"status"`
	Dependencies map[string]DependencyReport `json:"dependencies"`
	Notes        map[string]any              `json:"notes,omitempty"`
}

// NewHTTP serves /metrics, /healthz (the process is up: it stays 200 while a
// dependency is down, so that Kubernetes does not restart the sidecar for it) and
// /readyz (each dependency and its breaker as JSON; 503 only when the sidecar can take
// no work). Errors are named by class, never with driver text.
func NewHTTP(gatherer prometheus.Gatherer, r Readiness) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), 3*time.Second)
		defer cancel()
		rep := r.report(ctx)
		w.Header().Set("Content-Type", "application/json")
		if rep.Status == "unavailable" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
}

// Report checks every dependency now, as /readyz does.
func (r Readiness) Report(ctx context.Context) ReadyReport { return r.report(ctx) }

func (r Readiness) report(ctx context.Context) ReadyReport {
	rep := ReadyReport{Dependencies: make(map[string]DependencyReport, len(r.Checks))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	failed := map[string]bool{}
	for _, c := range r.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := checkWithin(ctx, c.Check)
			d := DependencyReport{OK: err == nil}
			if err != nil {
				d.Error = "unreachable"
				if errors.Is(err, context.DeadlineExceeded) {
					d.Error = "no answer within the check's time"
				}
			}
			if c.Breaker != nil {
				d.Breaker = c.Breaker()
			}
			mu.Lock()
			rep.Dependencies[c.Name] = d
			if err != nil {
				failed[c.Name] = true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	switch {
	case len(failed) == 0:
		rep.Status = "ready"
	case r.Ready == nil || r.Ready(failed):
		rep.Status = "degraded"
	default:
		rep.Status = "unavailable"
	}
	if r.Notes != nil {
		rep.Notes = r.Notes()
	}
	return rep
}

// checkWithin runs check, giving up when ctx ends (a client library that does not
// take a context may keep its goroutine a little longer).
func checkWithin(ctx context.Context, check func(context.Context) error) error {
	ch := make(chan error, 1)
	go func() { ch <- check(ctx) }()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
