package app

import (
	"context"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/publish"
)

// buildSagas builds the SagaService (issue 10). Until it exists, the service answers
// Unimplemented.
func (a *App) buildSagas(_ context.Context, _ *publish.Publisher, _ *metrics.Metrics) (eventgwv1.SagaServiceServer, error) {
	return nil, nil
}

// runSagas runs the saga engine's background work (timeouts, leases) until ctx ends.
func (a *App) runSagas(_ context.Context) error { return nil }
