package app

import (
	"context"
	"time"

	"github.com/eventgw/eventgw/internal/tracing"
)

// tenantSet is the tenant allow-list as a set (nil: any tenant).
func tenantSet(ids []string) map[string]bool {
	if len(ids) == 0 {
		return nil
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// startTracing sets the tracer: exporting over OTLP with --otlp-endpoint, else the
// global provider's (a no-op unless a program set one). The exporter is flushed last
// at shutdown.
func (a *App) startTracing(ctx context.Context) error {
	tp, shutdown, err := tracing.Provider(ctx, a.cfg.OTLPEndpoint, a.cfg.OTLPInsecure, a.cfg.ServiceName)
	if err != nil {
		return err
	}
	a.closer.push(func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return shutdown(sctx)
	})
	a.tracer = tp.Tracer(tracing.Instrumentation)
	return nil
}
