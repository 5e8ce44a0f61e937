package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/cenkalti/backoff/v5"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/schema"
	"github.com/eventgw/eventgw/internal/server"
	"github.com/eventgw/eventgw/internal/store"
)

// Breakers are the sidecar's circuit breakers, one per outbound dependency.
type Breakers struct {
	Kafka    *resilience.Breaker
	Postgres *resilience.Breaker
	Registry *resilience.Breaker
}

func newBreakers(cfg config.Config, reg prometheus.Registerer, log *zap.Logger) *Breakers {
	m := resilience.NewMetrics(reg)
	s := cfg.BreakerSettings()
	return &Breakers{
		Kafka:    resilience.NewBreaker("kafka", cfg.ServiceName, s, publish.ClassifyKafka, m, log),
		Postgres: store.NewBreaker(cfg.ServiceName, s, m, log),
		Registry: schema.NewBreaker(cfg.ServiceName, s, m, log),
	}
}

// All lists the breakers for /readyz.
func (b *Breakers) All() []*resilience.Breaker {
	return []*resilience.Breaker{b.Kafka, b.Postgres, b.Registry}
}

// instanceName names this process's rows in publish_queue: the service and a random
// suffix (a restarted sidecar is a new instance; rows of earlier runs are waited for
// through the queue's starting position).
func instanceName(service string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return service + "/" + hex.EncodeToString(b[:])
}

// connectKafka connects to Kafka and gives the producer and the topic admin their
// client. It fails while no broker answers.
func (a *App) connectKafka() error {
	a.kafkaMu.Lock()
	defer a.kafkaMu.Unlock()
	if a.kafka != nil {
		return nil
	}
	client, err := sarama.NewClient(a.brokers, a.kcfg)
	if err != nil {
		return fmt.Errorf("kafka brokers %s are unreachable: %w", strings.Join(a.brokers, ","), err)
	}
	if err := a.topics.Attach(client); err != nil {
		_ = client.Close()
		return err
	}
	if err := a.Producer.Attach(client); err != nil {
		_ = client.Close()
		return err
	}
	a.kafka = client
	return nil
}

// keepConnectingKafka retries connectKafka with backoff until it works or ctx ends.
func (a *App) keepConnectingKafka(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 500*time.Millisecond, 15*time.Second
	for a.kafkaClient() == nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo.NextBackOff()):
		}
		if err := a.connectKafka(); err == nil {
			a.log.Info("connected to Kafka", zap.Strings("brokers", a.brokers))
		}
	}
}

func (a *App) kafkaClient() sarama.Client {
	a.kafkaMu.Lock()
	defer a.kafkaMu.Unlock()
	return a.kafka
}

func (a *App) closeKafka() error {
	if c := a.kafkaClient(); c != nil {
		return c.Close()
	}
	return nil
}

// readiness is what /readyz reports: each dependency with its breaker, and whether
// publishes are being queued. The sidecar can take work ("degraded", HTTP 200) as long
// as publishes can be accepted: with Kafka down they are queued in PostgreSQL; with
// PostgreSQL down publishing to Kafka still works, unless publishes are being queued.
func (a *App) readiness() server.Readiness {
	state := func(b *resilience.Breaker) func() string { return func() string { return b.State().String() } }
	return server.Readiness{
		Checks: []server.ReadyCheck{
			{Name: "postgres", Breaker: state(a.Breakers.Postgres), Check: a.Pool.Ping},
			{Name: "kafka", Breaker: state(a.Breakers.Kafka), Check: func(context.Context) error {
				c := a.kafkaClient()
				if c == nil {
					return kafka.ErrNotConnected
				}
				// A metadata request, not Controller(): that answers the broker it has
				// cached without asking Kafka anything, so a stopped cluster looked up.
				_, err := c.RefreshController()
				return err
			}},
			{Name: "schema-registry", Breaker: state(a.Breakers.Registry), Check: a.Schemas.Ping},
		},
		// Publishes need Kafka, or PostgreSQL while they are being queued.
		Ready: func(failed map[string]bool) bool {
			return !failed["postgres"] || (!failed["kafka"] && !a.Fallback.Queued())
		},
		Notes: func() map[string]any {
			mode := "direct to Kafka"
			if a.Fallback.Queued() {
				mode = "queued in PostgreSQL until Kafka is back"
			}
			notes := map[string]any{"publish": mode}
			if n := a.Schemas.Unseeded(); n > 0 {
				notes["schemas_not_yet_in_registry"] = n
			}
			return notes
		},
	}
}
