package app

import (
	"context"
	"sync"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/metrics"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/saga"
	"github.com/eventgw/eventgw/internal/server"
	"github.com/eventgw/eventgw/internal/store"
)

// sagaEngines holds each built App's saga engine (App has no field for it; this file
// owns the saga wiring).
var sagaEngines sync.Map // *App → *saga.Engine

// buildSagas builds the saga engine and the SagaService. Saga events are stored_events
// rows written in each state change's transaction; the outbox relay publishes them to
// <prefix>.saga.events (so --domains, when set, must include "saga").
//
// PollTasks streams never end by themselves: Run ends them when it shuts down
// (shutdownSagas), before the gRPC graceful stop, which would otherwise wait for them
// for the whole grace period. When ctx is the process's signal context (it has no
// deadline: `eventgw serve`), its end — SIGTERM or SIGINT — ends them at once too.
// Workers reconnect to another sidecar and keep the tasks they hold (their leases
// stay); tasks pushed to a stream and never sent are given back at once.
func (a *App) buildSagas(ctx context.Context, _ *publish.Publisher, _ *metrics.Metrics) (eventgwv1.SagaServiceServer, error) {
	e := saga.New(saga.Config{
		Store: store.NewSagas(a.Pool, store.WithBreaker(a.Breakers.Postgres)), Metrics: metrics.NewSaga(a.Registry), Log: a.log,
		Service: a.cfg.ServiceName, Kick: a.Relay.Kick, Tenants: a.tenants,
	})
	sagaEngines.Store(a, e)
	a.closer.push(func() error { sagaEngines.Delete(a); return nil })
	if _, bounded := ctx.Deadline(); !bounded {
		context.AfterFunc(ctx, e.Shutdown)
	}
	return server.NewSagaService(e), nil
}

// shutdownSagas ends every PollTasks stream with Unavailable ("the sidecar is shutting
// down: reconnect to poll tasks"); the engine's background work (the timeout sweeper
// among it) goes on until runSagas' context ends.
func (a *App) shutdownSagas() {
	if v, ok := sagaEngines.Load(a); ok {
		v.(*saga.Engine).Shutdown()
	}
}

// runSagas runs the saga engine's background work (NOTIFY listener and sender, timeout
// sweeper, pending-tasks gauge) until ctx ends; then it ends the PollTasks streams.
func (a *App) runSagas(ctx context.Context) error {
	v, ok := sagaEngines.Load(a)
	if !ok {
		return nil
	}
	e := v.(*saga.Engine)
	defer e.Shutdown()
	return e.Run(ctx)
}
