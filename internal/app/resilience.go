package app

import (
	"crypto/rand"
	"encoding/hex"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/config"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/resilience"
)

// Breakers are the sidecar's circuit breakers, one per outbound dependency.
type Breakers struct {
	Kafka *resilience.Breaker
}

func newBreakers(cfg config.Config, reg prometheus.Registerer, log *zap.Logger) *Breakers {
	m := resilience.NewMetrics(reg)
	s := cfg.BreakerSettings()
	return &Breakers{
		Kafka: resilience.NewBreaker("kafka", cfg.ServiceName, s, publish.ClassifyKafka, m, log),
	}
}

// All lists the breakers for /readyz.
func (b *Breakers) All() []*resilience.Breaker { return []*resilience.Breaker{b.Kafka} }

// instanceName names this process's rows in publish_queue: the service and a random
// suffix (a restarted sidecar is a new instance; rows of earlier runs are waited for
// through the queue's starting position).
func instanceName(service string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return service + "/" + hex.EncodeToString(b[:])
}
