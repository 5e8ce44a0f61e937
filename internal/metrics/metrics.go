// Package metrics defines the gateway's Prometheus metrics with the guide's names
// (unprefixed, so its PromQL works), registered on an injected Registerer.
package metrics

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the guide's metrics. Every one has a service label: the source service
// of the event (or the sidecar's --service-name).
type Metrics struct {
	Published       *prometheus.CounterVec
	PublishDuration *prometheus.HistogramVec
	PublishErrors   *prometheus.CounterVec
}

// New registers the metrics on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "event_published_total",
			Help: "Events acknowledged by Kafka.",
		}, []string{"service", "event_type"}),
		PublishDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "event_publish_duration_seconds",
			Help:    "Time from a publish call's arrival to Kafka's acknowledgement of all its events.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"service"}),
		PublishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "event_publish_errors_total",
			Help: "Events not published, by reason (invalid, unavailable, timeout).",
		}, []string{"service", "event_type", "reason"}),
	}
	reg.MustRegister(m.Published, m.PublishDuration, m.PublishErrors)
	return m
}
