package outbox

import (
	"context"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/store"
)

// queueBatch is how many queued publishes one round sends.
const queueBatch = 4000

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

// drainQueue publishes queued publishes in position order, queueBatch at a time, until
// none is left, and deletes those acknowledged: of each batch the longest acknowledged
// prefix, so that a failure resends what follows it (per partition key nothing
// overtakes an earlier event). Reading the next batch, waiting for Kafka's
// acknowledgements and deleting the previous batch overlap.
//
// Within one round the batches are read after a cursor: a row committed late below it
// (by another sidecar's writer; a sidecar commits its own rows in position order) is
// picked up by the next round, which starts from the beginning again.
func (r *Relay) drainQueue(ctx context.Context) (int, error) {
	type read struct {
		recs []store.QueuedRecord
		err  error
	}
	limit := r.roundSize(queueBatch)
	fetch := func(after int64) chan read {
		ch := make(chan read, 1)
		go func() {
			recs, err := store.ReadQueuedAfter(ctx, r.pool, after, limit)
			ch <- read{recs, err}
		}()
		return ch
	}
	deletes := make(chan []int64, 2)
	deleted := make(chan error, 1)
	go func() {
		var first error
		for positions := range deletes {
			if first != nil {
				continue
			}
			if err := store.DeleteQueued(ctx, r.pool, positions); err != nil {
				first = err
			}
		}
		deleted <- first
	}()
	finish := func(n int, err error) (int, error) {
		close(deletes)
		if derr := <-deleted; derr != nil && err == nil {
			err = derr
		}
		return n, err
	}
	total := 0
	next := fetch(0)
	for {
		got := <-next
		if got.err != nil || len(got.recs) == 0 {
			return finish(total, got.err)
		}
		recs := got.recs
		if len(recs) == limit && limit > 1 {
			next = fetch(recs[len(recs)-1].Position)
		} else {
			next = nil
		}
		n, err := r.publishQueued(ctx, recs)
		if n > 0 {
			positions := make([]int64, n)
			for i := range positions {
				positions[i] = recs[i].Position
			}
			deletes <- positions
			total += n
			r.queue.published.Add(float64(n))
		}
		if err != nil || next == nil {
			if next != nil {
				<-next
			}
			return finish(total, err)
		}
	}
}

// publishQueued sends recs in order and answers how many, from the first, Kafka
// acknowledged, and the first failure.
func (r *Relay) publishQueued(ctx context.Context, recs []store.QueuedRecord) (int, error) {
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
		r.noteOutcome(err)
		return 0, err
	}
	outs := pending.Wait(pctx)
	n := 0
	for n < len(outs) && outs[n].Err == nil {
		n++
	}
	if n < len(outs) {
		r.noteOutcome(outs[n].Err)
		settle(pending)
		return n, outs[n].Err
	}
	r.noteOutcome(nil)
	return n, nil
}

// settle waits, after a failed batch, until none of its events can still reach Kafka, so
// that the retry's copies are not overtaken by late originals (per key order).
// If they are still unresolved after producerSettle, the retry goes ahead (it may then
// duplicate them; consumers deduplicate by event id).
func settle(p *publish.Pending) { p.Quiet(producerSettle) }

// producerSettle bounds that wait: the producer's retries and a request's read timeout.
const producerSettle = 45 * time.Second

// roundSize is how many events a round may send: n, or one while probing (see
// Relay.probing).
func (r *Relay) roundSize(n int) int {
	if r.probing.Load() {
		return 1
	}
	return n
}

// noteOutcome records whether a round's publish failed (probing) or succeeded.
func (r *Relay) noteOutcome(err error) {
	r.probing.Store(err != nil)
}
