package publish

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/kafka"
	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/store"
)

// Fallback keeps publishing durable while Kafka is unreachable: events go to
// PostgreSQL's publish_queue and are answered "queued"; the outbox relay publishes
// them when Kafka is back.
//
// Per partition key, events reach Kafka in the order they were accepted: once one
// event of this sidecar is queued, every later one is queued too, until the relay has
// published all of this sidecar's rows (and those left by an earlier run of it) and the
// Kafka breaker is no longer open. Only then does publishing go to Kafka directly again.
type Fallback struct {
	queue   *store.PublishQueue
	breaker *resilience.Breaker
	log     *zap.Logger

	// mu: queued-mode enqueues hold it shared until their rows are committed; leaving
	// queued mode holds it exclusively, so that no row is committed after the last
	// check that none is left.
	mu       sync.RWMutex
	queued   atomic.Bool
	startTop int64 // rows at or below it were queued before this process started
	kick     chan struct{}

	queuedTotal prometheus.Counter
	mode        prometheus.Gauge

	// OnQueued, when set, is called after rows are committed (to wake the relay).
	OnQueued func()
}

// NewFallback builds the fallback. startTop is the highest publish_queue position when
// the sidecar started: while such rows remain, it queues (they may hold earlier events
// of the same keys).
func NewFallback(q *store.PublishQueue, breaker *resilience.Breaker, startTop int64, reg prometheus.Registerer, log *zap.Logger) *Fallback {
	f := &Fallback{
		queue: q, breaker: breaker, log: log.Named("fallback"), startTop: startTop,
		kick: make(chan struct{}, 1),
		queuedTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "event_publish_queued_total",
			Help: "Events accepted while Kafka was unavailable and stored in PostgreSQL's publish_queue.",
		}),
		mode: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "event_publish_queued_mode",
			Help: "1 while this sidecar queues publishes in PostgreSQL (Kafka unavailable, or its queued events not yet all published).",
		}),
	}
	reg.MustRegister(f.queuedTotal, f.mode)
	if startTop > 0 {
		f.enter("events queued by an earlier run are not all published yet")
	}
	return f
}

// Queued reports whether publishes are being queued now.
func (f *Fallback) Queued() bool { return f.queued.Load() }

func (f *Fallback) enter(reason string) {
	if f.queued.CompareAndSwap(false, true) {
		f.mode.Set(1)
		f.log.Warn("publishing to PostgreSQL's queue until Kafka is back", zap.String("reason", reason))
	}
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run leaves queued mode when it may: this sidecar's queued rows are all published
// and the Kafka breaker is not open. Under steady load a just-committed row is always
// there, so once the backlog is small (switchRows) new publishes are held back for a
// moment (switchWait at most) while the relay publishes the rest; if it does not, they
// are queued again and the switch is tried later.
func (f *Fallback) Run(ctx context.Context) error {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var notBefore time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-f.kick:
			continue
		}
		if !f.queued.Load() || f.breaker.State() == resilience.Open || time.Now().Before(notBefore) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		n, err := f.queue.PendingCount(cctx, f.startTop, switchRows+1)
		cancel()
		if err != nil || n > switchRows {
			continue
		}
		f.mu.Lock() // new publishes wait; those being queued finish first
		if f.OnQueued != nil {
			f.OnQueued() // the relay: publish what is left now
		}
		deadline := time.Now().Add(switchWait)
		for {
			cctx, cancel = context.WithTimeout(ctx, time.Second)
			pending, err := f.queue.PendingSince(cctx, f.startTop)
			cancel()
			if err == nil && !pending {
				f.queued.Store(false)
				f.startTop = 0
				f.mode.Set(0)
				f.log.Info("queued events all published: publishing to Kafka directly again")
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				notBefore = time.Now().Add(2 * time.Second)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		f.mu.Unlock()
	}
}

// Leaving queued mode: at most switchRows rows left, new publishes held at most
// switchWait while the relay publishes them.
const (
	switchRows = 2000
	switchWait = 2 * time.Second
)

// ErrNotQueued: Kafka did not take the event and PostgreSQL could not queue it either
// (errors.Is matches it on such an outcome's error).
var ErrNotQueued = errors.New("kafka is unavailable and the event could not be queued in PostgreSQL either")

// errBothDown answers a publish that neither Kafka nor PostgreSQL took.
type errBothDown struct{ kafka, pg error }

func (e *errBothDown) Error() string        { return ErrNotQueued.Error() }
func (e *errBothDown) Is(target error) bool { return target == ErrNotQueued }
func (e *errBothDown) Unwrap() []error      { return []error{e.kafka, e.pg} }
func (e *errBothDown) Retriable() bool      { return true }

// toRecords turns encoded messages into queue rows.
func toRecords(events []event.Event, msgs []*sarama.ProducerMessage, idx []int) ([]store.QueuedRecord, error) {
	recs := make([]store.QueuedRecord, len(idx))
	for j, i := range idx {
		m := msgs[i]
		r := &recs[j]
		r.EventID, r.EventType, r.Source, r.Topic = events[i].ID, events[i].Type, events[i].Source, m.Topic
		if m.Key != nil {
			k, err := m.Key.Encode()
			if err != nil {
				return nil, err
			}
			r.Key = k
		}
		v, err := m.Value.Encode()
		if err != nil {
			return nil, err
		}
		r.Value = v
		r.Headers = make([]store.RecordHeader, len(m.Headers))
		for h := range m.Headers {
			r.Headers[h] = store.RecordHeader{Key: string(m.Headers[h].Key), Value: m.Headers[h].Value}
		}
	}
	return recs, nil
}

// submit hands events idx of msgs to the queue's writer (in call order) and answers the
// wait for their commit; f.mu must be held shared until that wait returns.
func (f *Fallback) submit(ctx context.Context, events []event.Event, msgs []*sarama.ProducerMessage, idx []int) func() error {
	recs, err := toRecords(events, msgs, idx)
	if err != nil {
		return func() error { return err }
	}
	wait := f.queue.Submit(ctx, recs)
	return func() error {
		if err := wait(); err != nil {
			return err
		}
		f.queuedTotal.Add(float64(len(idx)))
		if f.OnQueued != nil {
			f.OnQueued()
		}
		return nil
	}
}

// ClassifyKafka is the Kafka breaker's classifier: Kafka's unavailability (broker,
// network, timeout) is a failure; a refused message is an answer.
func ClassifyKafka(err error) resilience.Outcome {
	switch {
	case err == nil:
		return resilience.Success
	case errors.Is(err, context.Canceled):
		return resilience.Ignore
	case kafkaDown(err):
		return resilience.Failure
	}
	return resilience.Success
}

// kafkaDown reports whether a Kafka outcome says Kafka is unavailable (so that the
// event may be queued) rather than that the event is refused.
func kafkaDown(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, kafka.ErrClosed) {
		return false
	}
	return kafka.Unavailable(err) || errors.Is(err, context.DeadlineExceeded)
}
