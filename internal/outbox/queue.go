package outbox

import (
	"context"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/store"
)

// queueBatch is how many queued publishes one round sends.
const queueBatch = 2000

// queueMetrics describe the publish fallback's queue as the relay drains it.
type queueMetrics struct {
	backlog   prometheus.Gauge
	published prometheus.Counter
}

func newQueueMetrics(reg prometheus.Registerer) queueMetrics {
	m := queueMetrics{
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "publish_queue_backlog_events", Help: "Publishes queued in PostgreSQL while Kafka was unavailable, not yet on Kafka (whole database).",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "publish_queue_published_total", Help: "Queued publishes this sidecar's relay published to Kafka.",
		}),
	}
	reg.MustRegister(m.backlog, m.published)
	return m
}

// drainQueue publishes up to queueBatch queued publishes in position order and deletes
// those acknowledged: the longest acknowledged prefix, so that a failure resends what
// follows it (per partition key nothing overtakes an earlier event).
func (r *Relay) drainQueue(ctx context.Context) (int, error) {
	recs, err := store.ReadQueued(ctx, r.pool, queueBatch)
	if err != nil || len(recs) == 0 {
		return 0, err
	}
	now := time.Now()
	evs := make([]event.Event, len(recs))
	msgs := make([]*sarama.ProducerMessage, len(recs))
	backing := make([]sarama.ProducerMessage, len(recs))
	for i := range recs {
		q := &recs[i]
		evs[i] = event.Event{ID: q.EventID, Type: q.EventType, Source: q.Source}
		m := &backing[i]
		m.Topic, m.Value = q.Topic, sarama.ByteEncoder(q.Value)
		if q.Key != nil {
			m.Key = sarama.ByteEncoder(q.Key)
		}
		m.Headers = make([]sarama.RecordHeader, len(q.Headers))
		for h, hd := range q.Headers {
			m.Headers[h] = sarama.RecordHeader{Key: []byte(hd.Key), Value: hd.Value}
		}
		msgs[i] = m
	}
	pctx, cancel, ok := r.batchContext(ctx)
	if !ok {
		return 0, errLeaseShort
	}
	defer cancel()
	pending, err := r.pub.SendDirect(pctx, evs, msgs, now)
	if err != nil {
		return 0, err
	}
	outs := pending.Wait(pctx)
	n := 0
	for n < len(outs) && outs[n].Err == nil {
		n++
	}
	positions := make([]int64, n)
	for i := range positions {
		positions[i] = recs[i].Position
	}
	if err := store.DeleteQueued(ctx, r.pool, positions); err != nil {
		return 0, err
	}
	r.queue.published.Add(float64(n))
	if n < len(outs) {
		return n, outs[n].Err
	}
	return n, nil
}
