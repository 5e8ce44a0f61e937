// Package metrics defines the gateway's Prometheus metrics with the guide's names
// (unprefixed, so its PromQL works), registered on an injected Registerer.
package metrics

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the guide's metrics. Every one has a service label: the source service
// of the event (or the sidecar's --service-name).
type Metrics struct {
	Published       *prometheus.CounterVec
	PublishDuration *prometheus.HistogramVec
	PublishErrors   *prometheus.CounterVec

	// Consumed counts deliveries acknowledged (service, subscription, topic).
	Consumed *prometheus.CounterVec
	// Processing is the time from a delivery to its ack (service, subscription).
	Processing *prometheus.HistogramVec
	// Lag is the messages of a partition not yet committed by a subscription
	// (service, subscription, topic, partition).
	Lag *prometheus.GaugeVec
	// DLQMessages counts events written to a dead-letter topic (service, topic: the
	// DLQ topic).
	DLQMessages *prometheus.CounterVec
	// DLQRetries counts failed events published again (service, topic: the original).
	DLQRetries *prometheus.CounterVec

	// The label values taken from requests, each bounded (past the limit: "other").
	services, eventTypes, subscriptions *LabelCap

	// series caches PublishFor's answers.
	seriesMu sync.RWMutex
	series   map[[2]string]PublishSeries
}

// SetLabelLimits bounds the distinct values of the labels that requests choose: the
// service (an event's source_service), the event type and the subscription. Values past
// a limit are counted under "other". Call it before the metrics are used.
func (m *Metrics) SetLabelLimits(services, eventTypes, subscriptions int) {
	m.services, m.eventTypes, m.subscriptions = NewLabelCap(services), NewLabelCap(eventTypes), NewLabelCap(subscriptions)
	m.seriesMu.Lock()
	m.series = map[[2]string]PublishSeries{}
	m.seriesMu.Unlock()
}

// Service is the service label for a source service named by a request.
func (m *Metrics) Service(s string) string { return m.services.Value(s) }

// EventType is the event_type label for an event type named by a request.
func (m *Metrics) EventType(t string) string { return m.eventTypes.Value(t) }

// Subscription is the subscription label for a subscription named by a request.
func (m *Metrics) Subscription(s string) string { return m.subscriptions.Value(s) }

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
		Consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "event_consumed_total",
			Help: "Deliveries acknowledged by subscribers.",
		}, []string{"service", "subscription", "topic"}),
		Processing: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "event_processing_duration_seconds",
			Help:    "Time from a delivery to its acknowledgement.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"service", "subscription"}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "consumer_lag_messages",
			Help: "Messages of a partition after the subscription's committed offset (high watermark minus committed).",
		}, []string{"service", "subscription", "topic", "partition"}),
		DLQMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dlq_messages_total",
			Help: "Events written to a dead-letter topic.",
		}, []string{"service", "topic"}),
		DLQRetries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dlq_retries_total",
			Help: "Failed events published again to their original topic.",
		}, []string{"service", "topic"}),
	}
	reg.MustRegister(m.Published, m.PublishDuration, m.PublishErrors,
		m.Consumed, m.Processing, m.Lag, m.DLQMessages, m.DLQRetries)
	m.SetLabelLimits(DefaultMaxServices, DefaultMaxEventTypes, DefaultMaxSubscriptions)
	return m
}

// PublishSeries are the series a publish of one service and event type counts in.
type PublishSeries struct {
	Published prometheus.Counter
	Duration  prometheus.Observer
}

// maxPublishSeries bounds the cache of PublishFor (the label caps bound it too: only
// kept values are cached).
const maxPublishSeries = 4096

// PublishFor answers the published counter and the publish duration of a source
// service and an event type as named by a request (each label bounded as Service and
// EventType bound it), resolved once per pair: a publish then costs no label lookup.
func (m *Metrics) PublishFor(service, eventType string) PublishSeries {
	key := [2]string{service, eventType}
	m.seriesMu.RLock()
	s, ok := m.series[key]
	m.seriesMu.RUnlock()
	if ok {
		return s
	}
	svc, typ := m.Service(service), m.EventType(eventType)
	s = PublishSeries{Published: m.Published.WithLabelValues(svc, typ), Duration: m.PublishDuration.WithLabelValues(svc)}
	if svc != Other && typ != Other { // callers' other values are not remembered
		m.seriesMu.Lock()
		if len(m.series) < maxPublishSeries {
			m.series[key] = s
		}
		m.seriesMu.Unlock()
	}
	return s
}
