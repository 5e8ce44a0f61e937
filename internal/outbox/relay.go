package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/cenkalti/backoff/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eventgw/eventgw/internal/event"
	"github.com/eventgw/eventgw/internal/publish"
	"github.com/eventgw/eventgw/internal/store"
)

// Shards is the number of outbox shards.
const Shards = 16

const (
	lockNamespace = 1162302258 // advisory lock namespace of shard ownership
	channel       = "eventgw_outbox"
	batchSize     = 500
)

// Relay publishes the outbox shards this sidecar owns.
type Relay struct {
	pool *pgxpool.Pool
	pub  *publish.Publisher
	log  *zap.Logger

	kicks [Shards]chan struct{}

	mu    sync.Mutex
	owned map[int]context.CancelFunc

	backlog   prometheus.Gauge
	published prometheus.Counter
	lag       prometheus.Histogram
	ownedG    prometheus.Gauge
	// PollInterval is the fallback poll of owned shards (and the ownership check).
	PollInterval time.Duration
}

// New builds a relay; register its metrics on reg.
func New(pool *pgxpool.Pool, pub *publish.Publisher, reg prometheus.Registerer, log *zap.Logger) *Relay {
	r := &Relay{
		pool: pool, pub: pub, log: log.Named("outbox"), owned: map[int]context.CancelFunc{},
		PollInterval: time.Second,
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_backlog_events", Help: "Appended events not yet acknowledged by Kafka (whole database).",
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_published_total", Help: "Outbox events published to Kafka by this sidecar.",
		}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "outbox_publish_lag_seconds", Help: "Time from an event's commit to Kafka's acknowledgement.",
			Buckets: []float64{.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1, 5, 30, 120},
		}),
		ownedG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_shards_owned", Help: "Outbox shards this sidecar publishes.",
		}),
	}
	for i := range r.kicks {
		r.kicks[i] = make(chan struct{}, 1)
	}
	reg.MustRegister(r.backlog, r.published, r.lag, r.ownedG)
	return r
}

// Kick wakes the worker of shard, if this sidecar owns it (called after an append commits).
func (r *Relay) Kick(shard int16) {
	select {
	case r.kicks[int(shard)%Shards] <- struct{}{}:
	default:
	}
}

// Run owns, listens and publishes until ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); r.listen(ctx) }()
	go func() { defer wg.Done(); r.own(ctx) }()
	go func() { defer wg.Done(); r.measureBacklog(ctx) }()
	wg.Wait()
	return nil
}

func (r *Relay) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
}

func (r *Relay) listen(ctx context.Context) {
	l := &pgxlisten.Listener{
		Connect:        r.connect,
		ReconnectDelay: time.Second,
		LogError: func(_ context.Context, err error) {
			if ctx.Err() == nil {
				r.log.Warn("outbox listener", zap.Error(err))
			}
		},
	}
	l.Handle(channel, pgxlisten.HandlerFunc(func(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
		if shard, err := strconv.Atoi(n.Payload); err == nil && shard >= 0 {
			r.Kick(int16(shard))
		}
		return nil
	}))
	_ = l.Listen(ctx)
}

// own keeps a dedicated connection holding the shard locks: it takes free shards and,
// if the connection breaks, stops every worker at once (the locks went with it).
func (r *Relay) own(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 200*time.Millisecond, 5*time.Second
	for ctx.Err() == nil {
		err := r.ownOnce(ctx)
		r.stopAll()
		if ctx.Err() != nil {
			return
		}
		d := bo.NextBackOff()
		r.log.Warn("outbox shard lock connection lost; retrying", zap.Error(err), zap.Duration("in", d))
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

func (r *Relay) ownOnce(ctx context.Context) error {
	conn, err := r.connect(ctx)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	t := time.NewTicker(r.PollInterval)
	defer t.Stop()
	for {
		if err := r.takeShards(ctx, conn); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (r *Relay) takeShards(ctx context.Context, conn *pgx.Conn) error {
	for shard := range Shards {
		r.mu.Lock()
		_, mine := r.owned[shard]
		r.mu.Unlock()
		if mine {
			continue
		}
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, lockNamespace, shard).Scan(&got); err != nil {
			return err
		}
		if got {
			r.start(ctx, shard)
		}
	}
	// A cheap round trip proves the connection (and so the locks) are still there.
	_, err := conn.Exec(ctx, `SELECT 1`)
	return err
}

func (r *Relay) start(ctx context.Context, shard int) {
	wctx, cancel := context.WithCancel(ctx)
	r.mu.Lock()
	r.owned[shard] = cancel
	r.ownedG.Set(float64(len(r.owned)))
	r.mu.Unlock()
	r.log.Debug("owning outbox shard", zap.Int("shard", shard))
	go r.work(wctx, shard)
}

func (r *Relay) stopAll() {
	r.mu.Lock()
	for s, cancel := range r.owned {
		cancel()
		delete(r.owned, s)
	}
	r.ownedG.Set(0)
	r.mu.Unlock()
}

// Owned reports how many shards this sidecar owns.
func (r *Relay) Owned() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.owned)
}

func (r *Relay) work(ctx context.Context, shard int) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval = 100*time.Millisecond, 10*time.Second
	poll := time.NewTicker(r.PollInterval)
	defer poll.Stop()
	for {
		n, err := r.drain(ctx, shard)
		var wait <-chan time.Time
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d := bo.NextBackOff()
			r.log.Warn("outbox publish failed; will retry", zap.Int("shard", shard), zap.Error(err), zap.Duration("in", d))
			wait = time.After(d)
		} else {
			bo.Reset()
			if n > 0 {
				continue // more may be waiting
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
		case <-r.kicks[shard]:
			if wait != nil { // during backoff a kick does not hurry a retry
				select {
				case <-ctx.Done():
					return
				case <-wait:
				}
			}
		case <-poll.C:
		}
	}
}

// drain publishes up to one batch of the shard; it answers how many it deleted.
func (r *Relay) drain(ctx context.Context, shard int) (int, error) {
	rows, err := r.pool.Query(ctx, `SELECT e.event_id, e.tenant_id, e.aggregate_type, e.aggregate_id, e.version,
		e.event_type, e.event_data, e.metadata, e.occurred_at, e.recorded_at, e.position
		FROM event_outbox o JOIN stored_events e ON e.position = o.position
		WHERE o.shard = $1 ORDER BY o.position LIMIT $2`, shard, batchSize)
	if err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	var evs []store.StoredEvent
	for rows.Next() {
		var e store.StoredEvent
		var id, tenant, agg uuid.UUID
		var version int32
		if err := rows.Scan(&id, &tenant, &e.AggregateType, &agg, &version, &e.Type, &e.Data, &e.Metadata, &e.OccurredAt, &e.RecordedAt, &e.Position); err != nil {
			rows.Close()
			return 0, fmt.Errorf("read outbox: %w", err)
		}
		e.EventID, e.TenantID, e.AggregateID, e.Version = id.String(), tenant.String(), agg.String(), int64(version)
		evs = append(evs, e)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("read outbox: %w", err)
	}
	if len(evs) == 0 {
		return 0, nil
	}
	now := time.Now()
	pubEvents := make([]event.Event, 0, len(evs))
	msgs := make([]*sarama.ProducerMessage, 0, len(evs))
	positions := make([]int64, 0, len(evs))
	recorded := make([]time.Time, 0, len(evs))
	var poison []store.StoredEvent
	var poisonErrs []error
	for i := range evs {
		ev := ToEvent(&evs[i])
		m, err := r.pub.Encode(&ev, now)
		if err != nil {
			poison, poisonErrs = append(poison, evs[i]), append(poisonErrs, err)
			continue
		}
		pubEvents = append(pubEvents, ev)
		msgs = append(msgs, m)
		positions = append(positions, evs[i].Position)
		recorded = append(recorded, evs[i].RecordedAt)
	}
	var done []int64
	var firstErr error
	if len(msgs) > 0 {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		pending, err := r.pub.Send(pctx, pubEvents, msgs, now)
		if err != nil {
			cancel()
			return 0, err
		}
		outs := pending.Wait(pctx)
		cancel()
		for i, o := range outs {
			if o.Err != nil {
				if firstErr == nil {
					firstErr = o.Err
				}
				continue
			}
			done = append(done, positions[i])
			r.lag.Observe(time.Since(recorded[i]).Seconds())
		}
	}
	if len(poison) > 0 {
		if err := r.deadLetter(ctx, poison, poisonErrs); err != nil {
			return 0, err
		}
	}
	if len(done) > 0 {
		// The delete may be lost in a crash: the events are then published again (at
		// least once), so it need not wait for its WAL flush.
		b := &pgx.Batch{}
		b.Queue(`BEGIN`)
		b.Queue(`SET LOCAL synchronous_commit = off`)
		b.Queue(`DELETE FROM event_outbox WHERE position = ANY ($1)`, done)
		b.Queue(`COMMIT`)
		if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
			return 0, fmt.Errorf("delete published outbox rows: %w", err)
		}
		r.published.Add(float64(len(done)))
	}
	if firstErr != nil {
		return len(done), firstErr
	}
	return len(done) + len(poison), nil
}

// deadLetter moves events that can no longer be encoded (their schema changed since
// they were stored) to failed_events, out of the outbox, so they do not block the shard.
func (r *Relay) deadLetter(ctx context.Context, evs []store.StoredEvent, errs []error) error {
	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("dead-letter outbox events: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	for i, e := range evs {
		r.log.Error("outbox event cannot be published; moved to failed_events",
			zap.String("event_id", e.EventID), zap.String("event_type", e.Type), zap.Error(errs[i]))
		if _, err := tx.Exec(ctx, `INSERT INTO failed_events (id, tenant_id, event_id, event_type, event_payload, error_type, error_message, failed_at)
			VALUES ($1, $2, $3, $4, $5::jsonb, 'outbox_encode', $6, now())`,
			uuid.Must(uuid.NewV7()), e.TenantID, e.EventID, e.Type, string(e.Data), errs[i].Error()); err != nil {
			return fmt.Errorf("dead-letter outbox events: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM event_outbox WHERE position = $1`, e.Position); err != nil {
			return fmt.Errorf("dead-letter outbox events: %w", err)
		}
	}
	return tx.Commit(ctx)
}

// ToEvent turns a stored event into the event published for it: key and ce_subject
// the aggregate id, plus aggregate type and version headers; well-known metadata keys
// fill the envelope, other keys become ce_<key> extensions.
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
		for k, v := range meta {
			switch k {
			case "correlation_id":
				ev.CorrelationID = v
			case "causation_id":
				ev.CausationID = v
			case "user_id", "source_user_id":
				ev.UserID = v
			case "source_service":
				ev.Source = v
			default:
				if ev.Metadata == nil {
					ev.Metadata = map[string]string{}
				}
				ev.Metadata[strings.ReplaceAll(k, "_", "")] = v
			}
		}
	}
	return ev
}

func (r *Relay) measureBacklog(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		var n int64
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := r.pool.QueryRow(qctx, `SELECT count(*) FROM event_outbox`).Scan(&n)
		cancel()
		if err == nil {
			r.backlog.Set(float64(n))
		} else if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
			r.log.Debug("outbox backlog", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
