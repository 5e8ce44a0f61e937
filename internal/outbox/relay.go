package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/cenkalti/backoff/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/redact"
	"github.com/eventgw/eventgw/internal/store"
)

const (
	lockNamespace = 1162302258 // advisory lock (namespace, 0) elects the relay
	channel       = "eventgw_outbox"
	batchSize     = 500
)

// Relay publishes the outbox when this sidecar holds the relay lock.
type Relay struct {
	pool *pgxpool.Pool
	pub  *publish.Publisher
	log  *zap.Logger

	owner  atomic.Bool
	lease  atomic.Int64  // unix nanoseconds: this relay may publish until then
	wake   chan struct{} // new events (this sidecar is the relay)
	nwake  chan struct{} // new events to announce to the relay elsewhere
	cursor int64         // used by the work goroutine only
	// probing: the last publish failed, so rounds send one event until one is
	// acknowledged. A batch in flight when Kafka comes back could otherwise land in
	// part: sarama fails a message whose retries are spent while later ones of its
	// partition still go through, and the resend would put the earlier event after them.
	probing atomic.Bool

	backlog   prometheus.Gauge
	published prometheus.Counter
	lag       prometheus.Histogram
	ownerG    prometheus.Gauge
	queue     queueMetrics
	// PollInterval is the fallback poll (and the lock check).
	PollInterval time.Duration
	// Tracer, when set, makes relay spans (tracing.go).
	Tracer trace.Tracer
}

// New builds a relay; its metrics are registered on reg.
func New(pool *pgxpool.Pool, pub *publish.Publisher, reg prometheus.Registerer, log *zap.Logger) *Relay {
	r := &Relay{
		pool: pool, pub: pub, log: log.Named("outbox"),
		wake: make(chan struct{}, 1), nwake: make(chan struct{}, 1),
		PollInterval: time.Second,
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_backlog_events", Help: "Appended events Kafka has not acknowledged yet (whole database).",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_published_total", Help: "Appended events this sidecar published to Kafka.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "outbox_publish_lag_seconds", Help: "Time from an event's append to Kafka's acknowledgement.",
			Buckets: []float64{.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 5, 30, 120},
		}),
		ownerG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_active", Help: "1 when this sidecar is the one publishing the outbox.",
		}),
	}
	reg.MustRegister(r.backlog, r.published, r.lag, r.ownerG)
	r.queue = newQueueMetrics(reg)
	return r
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Kick says that an append committed: the relay wakes, here or (by NOTIFY) elsewhere.
func (r *Relay) Kick() {
	if r.owner.Load() {
		signal(r.wake)
		return
	}
	signal(r.nwake)
}

// Active reports whether this sidecar is the relay.
func (r *Relay) Active() bool { return r.owner.Load() }

// Run elects, listens and publishes until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){r.listen, r.elect, r.measureBacklog, r.work, r.notifier} {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	wg.Wait()
	return nil
}

func (r *Relay) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
}

// notifier tells the relay elsewhere about new events: one NOTIFY at a time, covering
// every append meanwhile.
func (r *Relay) notifier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.nwake:
		}
		if r.owner.Load() {
			continue
		}
		if _, err := r.pool.Exec(ctx, `SELECT pg_notify($1, '')`, channel); err != nil && ctx.Err() == nil {
			r.log.Debug("outbox notify failed (the relay polls anyway)", redact.Error(err))
		}
	}
}

func (r *Relay) listen(ctx context.Context) {
	l := &pgxlisten.Listener{
		Connect:        r.connect,
		ReconnectDelay: time.Second,
		LogError: func(_ context.Context, err error) {
			if ctx.Err() == nil {
				r.log.Warn("outbox listener", redact.Error(err))
			}
		},
	}
	l.Handle(channel, pgxlisten.HandlerFunc(func(context.Context, *pgconn.Notification, *pgx.Conn) error {
		if r.owner.Load() {
			signal(r.wake)
		}
		return nil
	}))
	_ = l.Listen(ctx)
}

// elect keeps a dedicated connection that holds (or waits to take) the relay lock; if
// it breaks, this sidecar stops relaying at once (the lock went with it).
func (r *Relay) elect(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 200*time.Millisecond, 5*time.Second
	for ctx.Err() == nil {
		err := r.electOnce(ctx)
		r.owner.Store(false)
		r.ownerG.Set(0)
		if ctx.Err() != nil {
			return
		}
		d := bo.NextBackOff()
		r.log.Warn("outbox relay lock connection lost; retrying", redact.Error(err), zap.Duration("in", d))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// Leadership is fenced by a lease: the relay holding the lock renews lease_until on the
// lock's connection every leaseRenew; it starts a batch only with at least
// leaseMinLeft of its lease left, and the batch's deadline is the lease's end. A relay
// that takes the lock over waits until the previous lease has ended, plus
// leaseStraggler for messages the producer may still be retrying. So a relay that
// loses its connection (and with it the lock) has stopped publishing before another
// starts.
const (
	leaseTTL       = 2 * time.Second
	leaseRenew     = 500 * time.Millisecond
	leaseMinLeft   = 750 * time.Millisecond
	leaseStraggler = time.Second
)

func (r *Relay) electOnce(ctx context.Context) error {
	conn, err := r.connect(ctx)
	if err != nil {
		return err
	}
	held := false
	defer func() {
		r.owner.Store(false)
		r.lease.Store(0)
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if held && ctx.Err() != nil {
			// Stopping cleanly: whatever this relay sent is acknowledged or abandoned, so
			// the next relay need not wait out the lease.
			_, _ = conn.Exec(cctx, `UPDATE outbox_cursor SET lease_until = now() WHERE id = 1`)
		}
		_ = conn.Close(cctx)
		cancel()
	}()
	var activeAt time.Time
	for {
		wait := r.PollInterval
		if held {
			sent := time.Now()
			if _, err := conn.Exec(ctx, `UPDATE outbox_cursor SET lease_until = now() + make_interval(secs => $1) WHERE id = 1`,
				leaseTTL.Seconds()); err != nil {
				return err
			}
			r.lease.Store(sent.Add(leaseTTL).UnixNano())
			if !r.owner.Load() && !time.Now().Before(activeAt) {
				r.log.Info("this sidecar now publishes the outbox")
				r.owner.Store(true)
				r.ownerG.Set(1)
				signal(r.wake)
			}
			wait = min(leaseRenew, wait)
		} else {
			var got bool
			var left float64
			if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, 0),
				extract(epoch FROM greatest((SELECT lease_until FROM outbox_cursor WHERE id = 1), now()) - now())::float8`,
				lockNamespace).Scan(&got, &left); err != nil {
				return err
			}
			if got {
				held = true
				activeAt = time.Now()
				if left > 0 {
					d := time.Duration(left*float64(time.Second)) + leaseStraggler
					activeAt = activeAt.Add(d)
					r.log.Info("took the outbox relay lock; waiting for the previous relay's lease to end", zap.Duration("for", d))
				}
				continue // renew at once
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// LeaseLeft is how long this relay may still publish (0 or less: it may not).
func (r *Relay) LeaseLeft() time.Duration {
	if !r.owner.Load() {
		return 0
	}
	return time.Until(time.Unix(0, r.lease.Load()))
}

// batchContext bounds one publish batch by the lease; ok is false when too little of
// it is left to start one.
func (r *Relay) batchContext(ctx context.Context) (context.Context, context.CancelFunc, bool) {
	left := r.LeaseLeft()
	if left < leaseMinLeft {
		return nil, nil, false
	}
	c, cancel := context.WithTimeout(ctx, left)
	return c, cancel, true
}

// errLeaseShort: the lease is not renewed in time to start a batch.
var errLeaseShort = errors.New("outbox relay lease too short to publish (lock connection slow or lost)")

// work publishes whenever woken (or every PollInterval) while this sidecar is the relay.
func (r *Relay) work(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 100*time.Millisecond, 10*time.Second
	poll := time.NewTicker(r.PollInterval)
	defer poll.Stop()
	wasOwner := false
	blockedSince := time.Time{}
	for {
		var wait <-chan time.Time
		owner := r.owner.Load()
		if owner && !wasOwner {
			// Taking over: start from the recorded cursor.
			if err := r.pool.QueryRow(ctx, `SELECT position FROM outbox_cursor WHERE id = 1`).Scan(&r.cursor); err != nil {
				owner = false
				wait = time.After(bo.NextBackOff())
			}
		}
		wasOwner = owner
		if owner {
			n, blocked, err := r.drain(ctx)
			if err == nil {
				// Then the publishes queued while Kafka was unavailable.
				var qn int
				qn, err = r.drainQueue(ctx)
				switch {
				case qn >= queueBatch:
					n = max(n, batchSize)
				case n == 0:
					n = qn
				}
			}
			switch {
			case err != nil && ctx.Err() != nil:
				return
			case err != nil:
				d := bo.NextBackOff()
				r.log.Warn("outbox publish failed; will retry", redact.Error(err), zap.Duration("in", d))
				wait = time.After(d)
			case n >= batchSize:
				bo.Reset()
				blockedSince = time.Time{}
				continue // more are waiting
			case n > 0:
				// A partial batch: let appends accumulate for a moment rather than
				// running a round per append under load.
				bo.Reset()
				blockedSince = time.Time{}
				wait = time.After(time.Millisecond)
			case blocked:
				// Committed events wait behind a transaction still running with a lower
				// position: look again shortly rather than at the next poll.
				if blockedSince.IsZero() {
					blockedSince = time.Now()
				} else if time.Since(blockedSince) > 10*time.Second {
					r.log.Warn("outbox held back by a long-running transaction", zap.Duration("for", time.Since(blockedSince)))
					blockedSince = time.Now()
				}
				wait = time.After(2 * time.Millisecond)
			default:
				bo.Reset()
				blockedSince = time.Time{}
			}
		}
		if wait != nil {
			select {
			case <-ctx.Done():
				return
			case <-wait:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-poll.C:
		}
	}
}

// drain publishes up to one batch after the cursor. blocked reports committed events
// waiting behind a still-running transaction.
func (r *Relay) drain(ctx context.Context) (n int, blocked bool, err error) {
	rows, err := r.pool.Query(ctx, `WITH b AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 10 AS bound)
		SELECT e.event_id, e.tenant_id, e.aggregate_type, e.aggregate_id, e.version,
		       e.event_type, e.event_data, e.metadata, e.occurred_at, e.recorded_at, e.position
		  FROM stored_events e, b
		 WHERE e.position > $1 AND e.position < b.bound
		 ORDER BY e.position LIMIT $2`, r.cursor, r.roundSize(batchSize))
	if err != nil {
		return 0, false, fmt.Errorf("read outbox: %w", err)
	}
	var evs []store.StoredEvent
	for rows.Next() {
		var e store.StoredEvent
		var id, tenant, agg uuid.UUID
		var version int32
		if err := rows.Scan((*[16]byte)(&id), (*[16]byte)(&tenant), &e.AggregateType, (*[16]byte)(&agg), &version, &e.Type, &e.Data, &e.Metadata, &e.OccurredAt, &e.RecordedAt, &e.Position); err != nil {
			rows.Close()
			return 0, false, fmt.Errorf("read outbox: %w", err)
		}
		e.EventID, e.TenantID, e.AggregateID, e.Version = id.String(), tenant.String(), agg.String(), int64(version)
		evs = append(evs, e)
	}
	if err := rows.Err(); err != nil {
		return 0, false, fmt.Errorf("read outbox: %w", err)
	}
	if len(evs) == 0 {
		var top int64
		if err := r.pool.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM stored_events`).Scan(&top); err != nil {
			return 0, false, fmt.Errorf("read outbox: %w", err)
		}
		return 0, top > r.cursor, nil
	}
	upto, err := r.publish(ctx, evs)
	if upto > r.cursor {
		// Losing this update in a crash only publishes these events again (at least
		// once), so its commit need not wait for the WAL flush.
		b := &pgx.Batch{}
		b.Queue(`BEGIN`)
		b.Queue(`SET LOCAL synchronous_commit = off`)
		b.Queue(`UPDATE outbox_cursor SET position = $1, updated_at = now() WHERE id = 1 AND position < $1`, upto)
		b.Queue(`COMMIT`)
		if uerr := r.pool.SendBatch(ctx, b).Close(); uerr != nil {
			return 0, false, fmt.Errorf("record outbox cursor: %w", uerr)
		}
		for i := range evs {
			if evs[i].Position > upto {
				break
			}
			n++
		}
		r.cursor = upto
		r.published.Add(float64(n))
	}
	return n, false, err
}

// publish sends evs in order and answers the position up to which every event was
// acknowledged (or dead-lettered), and the first failure.
func (r *Relay) publish(ctx context.Context, evs []store.StoredEvent) (upto int64, err error) {
	now := time.Now()
	var spans []trace.Span // of pubEvents, nil for those without a trace context
	failedFrom := 0
	defer func() { endRelay(spans, failedFrom, err) }()
	pubEvents := make([]event.Event, 0, len(evs))
	msgs := make([]*sarama.ProducerMessage, 0, len(evs))
	idx := make([]int, 0, len(evs))
	for i := range evs {
		ev := ToEvent(&evs[i])
		span := r.traceRelay(ctx, &ev)
		m, err := r.pub.Encode(&ev, now)
		if err != nil {
			endRelay([]trace.Span{span}, 0, err)
			// It passed these checks when appended; its schema changed since. It must
			// not block the outbox: it goes to failed_events.
			if derr := r.deadLetter(ctx, &evs[i], err); derr != nil {
				return r.cursor, derr
			}
			continue
		}
		spans = append(spans, span)
		pubEvents = append(pubEvents, ev)
		msgs = append(msgs, m)
		idx = append(idx, i)
	}
	upto = evs[len(evs)-1].Position
	if len(msgs) == 0 {
		return upto, nil
	}
	pctx, cancel, ok := r.batchContext(ctx)
	if !ok {
		return r.cursor, errLeaseShort
	}
	defer cancel()
	pending, err := r.pub.SendDirect(pctx, pubEvents, msgs, now)
	if err != nil {
		r.noteOutcome(err)
		return r.cursor, err
	}
	for i, o := range pending.Wait(pctx) {
		if o.Err != nil {
			failedFrom = i
			r.noteOutcome(o.Err)
			settle(pending)
			// Everything before this event is acknowledged; it and what follows are
			// published again on the retry.
			upto = r.cursor
			if k := idx[i]; k > 0 {
				upto = evs[k-1].Position
			}
			return upto, o.Err
		}
		r.lag.Observe(time.Since(evs[idx[i]].RecordedAt).Seconds())
	}
	r.noteOutcome(nil)
	return upto, nil
}

func (r *Relay) deadLetter(ctx context.Context, e *store.StoredEvent, cause error) error {
	r.log.Error("appended event can no longer be published; moved to failed_events",
		zap.String("event_id", e.EventID), zap.String("event_type", e.Type), redact.Error(cause))
	_, err := r.pool.Exec(ctx, `INSERT INTO failed_events (id, tenant_id, event_id, event_type, event_payload, error_type, error_message, failed_at)
		VALUES ($1, $2, $3, $4, $5::jsonb, 'outbox_encode', $6, now())`,
		uuid.Must(uuid.NewV7()), e.TenantID, e.EventID, e.Type, string(e.Data), redact.Describe(cause))
	if err != nil {
		return fmt.Errorf("dead-letter event %s: %w", e.EventID, err)
	}
	return nil
}

// ToEvent turns a stored event into the event published for it: key and ce_subject
// the aggregate id, plus aggregate type and version headers; its metadata as
// event.SetStoredMetadata maps it.
func ToEvent(e *store.StoredEvent) event.Event {
	ev := event.Event{
		ID: e.EventID, Type: e.Type, TenantID: e.TenantID, PayloadJSON: e.Data,
		Subject: e.AggregateID, PartitionKey: e.AggregateID, Time: e.OccurredAt,
		Extra: []event.Header{
			{Key: "ce_aggregatetype", Value: e.AggregateType},
			{Key: "ce_aggregateversion", Value: strconv.FormatInt(e.Version, 10)},
		},
	}
	var meta map[string]string
	if len(e.Metadata) > 2 && json.Unmarshal(e.Metadata, &meta) == nil {
		ev.SetStoredMetadata(meta)
	}
	return ev
}

func (r *Relay) measureBacklog(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		var n int64
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := r.pool.QueryRow(qctx, `SELECT count(*) FROM stored_events WHERE position > (SELECT position FROM outbox_cursor WHERE id = 1)`).Scan(&n)
		var queued int64
		if err == nil {
			queued, _, err = store.QueueBacklog(qctx, r.pool)
		}
		cancel()
		if err == nil {
			r.backlog.Set(float64(n))
			r.queue.backlog.Set(float64(queued))
		} else if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			r.log.Debug("outbox backlog", redact.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
