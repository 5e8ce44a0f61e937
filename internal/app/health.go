package app

import (
	"context"
	"time"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/server"
)

// healthEvery is how often the gRPC health statuses are brought in line with /readyz.
const healthEvery = time.Second

// runHealth keeps gRPC health in step with /readyz, per service, until ctx ends:
//   - "" (the server) and EventService: SERVING while publishes can be accepted, as
//     /readyz answers 200 (Kafka up, or PostgreSQL up to queue them);
//   - EventStoreService, DeadLetterService and SagaService: SERVING while PostgreSQL
//     answers and its breaker is not open (their calls need it).
//
// On shutdown server.SetServing(false) makes every service NOT_SERVING for good.
func (a *App) runHealth(ctx context.Context) {
	r := a.readiness()
	tick := time.NewTicker(healthEvery)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		rep := r.Report(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		publish := rep.Status != "unavailable"
		pg := rep.Dependencies["postgres"]
		store := pg.OK && pg.Breaker != "open"
		server.SetHealth(a.health, map[string]bool{
			"": publish,
			eventgwv1.EventService_ServiceDesc.ServiceName:      publish,
			eventgwv1.EventStoreService_ServiceDesc.ServiceName: store,
			eventgwv1.DeadLetterService_ServiceDesc.ServiceName: store,
			eventgwv1.SagaService_ServiceDesc.ServiceName:       store,
		})
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
