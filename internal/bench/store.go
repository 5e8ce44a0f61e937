package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
)

// eventData is ~400 bytes of JSON, the size PERF-NOTES measured PostgreSQL with.
var eventData = payloadJSON(400)

var anyVersion = &eventgwv1.ExpectedVersion{Kind: &eventgwv1.ExpectedVersion_Any{Any: &emptypb.Empty{}}}

type storeEnv struct {
	*env
	pool  *pgxpool.Pool
	store eventgwv1.EventStoreServiceClient
	// noSnap is a second sidecar on the same database with automatic snapshots off.
	noSnap eventgwv1.EventStoreServiceClient
}

func (e *env) storeSuite(ctx context.Context, o Options) ([]Result, error) {
	pool, err := pgxpool.New(ctx, e.dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	// Raw baseline table: the same columns and indexes as stored_events.
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench_raw_events (LIKE stored_events INCLUDING ALL)`); err != nil {
		return nil, err
	}
	cfg := e.cfg
	cfg.SnapshotEvery = 0
	cfg.GRPCAddr = "127.0.0.1:0"
	nosnap, err := startSidecar(ctx, e.opts, cfg, e.dir, "sidecar-no-snapshots")
	if err != nil {
		return nil, err
	}
	defer nosnap.stop()
	conn, err := grpc.NewClient(nosnap.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	se := &storeEnv{env: e, pool: pool, store: eventgwv1.NewEventStoreServiceClient(e.conns[0]), noSnap: eventgwv1.NewEventStoreServiceClient(conn)}

	var rs []Result
	add := func(name string, r Result, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		r.Name = name
		rs = append(rs, r)
		fmt.Fprintf(os2(), "  %-48s %10.0f ev/s  p50 %-9v p99 %-9v errors %d\n", name, r.Rate(), r.P50, r.P99, r.Errors)
		return nil
	}
	type sc struct {
		name string
		fn   func() (Result, error)
	}
	d := o.Duration
	for _, s := range []sc{
		{"raw pgx INSERT 1 row/tx, 1 conn", func() (Result, error) { return se.rawInsert(d, 1, 1) }},
		{"gateway AppendEvents 1 event, 1 caller", func() (Result, error) { return se.appendLoop(d, 1, 1) }},
		{"raw pgx INSERT 1 row/tx, 16 conns", func() (Result, error) { return se.rawInsert(d, 16, 1) }},
		{"gateway AppendEvents 1 event, 16 callers", func() (Result, error) { return se.appendLoop(d, 16, 1) }},
		{"raw pgx INSERT 100 rows/tx, 1 conn", func() (Result, error) { return se.rawInsert(d, 1, 100) }},
		{"gateway AppendEvents 100 events, 1 caller", func() (Result, error) { return se.appendLoop(d, 1, 100) }},
		{"gateway AppendEvents 100 events, 4 callers", func() (Result, error) { return se.appendLoop(d, 4, 100) }},
		{"outbox append-to-Kafka latency, 1 caller", func() (Result, error) { return se.outboxLatency(d) }},
	} {
		if o.Only != "" && !strings.Contains(s.name, o.Only) {
			continue
		}
		r, err := s.fn()
		if err := add(s.name, r, err); err != nil {
			return nil, err
		}
	}
	if o.Only == "" || strings.Contains("load replay", o.Only) {
		more, err := se.loadAndReplay(ctx, d, o.AggregateEvents, o.ReplayEvents)
		if err != nil {
			return nil, err
		}
		for _, r := range more {
			if err := add(r.Name, r, nil); err != nil {
				return nil, err
			}
		}
	}
	return rs, nil
}

func os2() io.Writer { return os.Stderr }

func newEvents(n int) []*eventgwv1.NewEvent {
	evs := make([]*eventgwv1.NewEvent, n)
	for i := range evs {
		evs[i] = &eventgwv1.NewEvent{EventType: "benchstore.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: eventData}}
	}
	return evs
}

// appendLoop: callers each append to their own aggregates (a new one every 1000 events).
func (se *storeEnv) appendLoop(d time.Duration, callers, per int) (Result, error) {
	evs := newEvents(per)
	return loop(d, callers, func(lat *[]time.Duration) (int64, int64) {
		t := time.Now()
		_, err := se.store.AppendEvents(context.Background(), &eventgwv1.AppendEventsRequest{
			TenantId: nextTenant(), AggregateType: "Bench", AggregateId: uuid.NewString(),
			ExpectedVersion: anyVersion, Events: evs,
		})
		*lat = append(*lat, time.Since(t))
		if err != nil {
			return 0, int64(per)
		}
		return int64(per), 0
	}), nil
}

// rawInsert is the baseline: plain INSERTs of the same rows, one transaction each.
func (se *storeEnv) rawInsert(d time.Duration, conns, per int) (Result, error) {
	var pos atomic.Int64
	pos.Store(time.Now().UnixNano())
	return loop(d, conns, func(lat *[]time.Duration) (int64, int64) {
		agg := uuid.New()
		t := time.Now()
		var err error
		if per == 1 {
			_, err = se.pool.Exec(context.Background(), `INSERT INTO bench_raw_events (event_id, tenant_id, aggregate_type, aggregate_id, version,
				event_type, event_data, occurred_at, metadata, position) VALUES ($1, $2, 'Bench', $3, 1, 'bench.updated', $4, now(), '{}', $5)`,
				uuid.New(), nextTenant(), agg, string(eventData), pos.Add(1))
		} else {
			var sb strings.Builder
			args := make([]any, 0, per*3+2)
			args = append(args, nextTenant(), agg)
			sb.WriteString(`INSERT INTO bench_raw_events (event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, event_data, occurred_at, metadata, position) VALUES `)
			for i := range per {
				if i > 0 {
					sb.WriteByte(',')
				}
				n := len(args)
				fmt.Fprintf(&sb, "($%d, $1, 'Bench', $2, %d, 'bench.updated', $%d, now(), '{}', $%d)", n+1, i+1, n+2, n+3)
				args = append(args, uuid.New(), string(eventData), pos.Add(1))
			}
			_, err = se.pool.Exec(context.Background(), sb.String(), args...)
		}
		*lat = append(*lat, time.Since(t))
		if err != nil {
			return 0, int64(per)
		}
		return int64(per), 0
	}), nil
}

// outboxLatency appends one event at a time and measures until a Kafka consumer has it.
func (se *storeEnv) outboxLatency(d time.Duration) (Result, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(se.brokers...), kgo.ConsumeTopics("healthtech.benchstore.events"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()), kgo.FetchMaxWait(50*time.Millisecond))
	if err != nil {
		return Result{}, err
	}
	defer cl.Close()
	var mu sync.Mutex
	sent := map[string]time.Time{}
	arrived := make(chan time.Duration, 1<<16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Make sure the topic exists and the consumer is positioned before measuring.
	evs := newEvents(1)
	if _, err := se.store.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
		TenantId: nextTenant(), AggregateType: "Bench",
		AggregateId: uuid.NewString(), ExpectedVersion: anyVersion, Events: evs,
	}); err != nil {
		return Result{}, err
	}
	time.Sleep(500 * time.Millisecond)
	go func() {
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			now := time.Now()
			fs.EachRecord(func(r *kgo.Record) {
				for _, h := range r.Headers {
					if h.Key == "ce_id" {
						mu.Lock()
						if t0, ok := sent[string(h.Value)]; ok {
							arrived <- now.Sub(t0)
							delete(sent, string(h.Value))
						}
						mu.Unlock()
					}
				}
			})
		}
	}()
	var res Result
	var lat []time.Duration
	start := time.Now()
	for time.Since(start) < d {
		id := uuid.NewString()
		ev := &eventgwv1.NewEvent{EventId: id, EventType: "benchstore.updated", Body: &eventgwv1.NewEvent_DataJson{DataJson: eventData}}
		mu.Lock()
		sent[id] = time.Now()
		mu.Unlock()
		if _, err := se.store.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
			TenantId: nextTenant(), AggregateType: "Bench",
			AggregateId: uuid.NewString(), ExpectedVersion: anyVersion, Events: []*eventgwv1.NewEvent{ev},
		}); err != nil {
			res.Errors++
			continue
		}
		select {
		case l := <-arrived:
			lat = append(lat, l)
			res.Events++
		case <-time.After(5 * time.Second):
			return Result{}, errors.New("an appended event did not reach Kafka within 5s")
		}
	}
	res.Elapsed = time.Since(start)
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50 = lat[len(lat)/2].Round(time.Microsecond)
		res.P99 = lat[len(lat)*99/100].Round(time.Microsecond)
	}
	return res, nil
}

// loadAndReplay builds two aggregates of aggEvents events (one with snapshots every 100,
// one without) and a tenant with replayEvents events, then measures LoadAggregate, the
// raw read of the aggregate's events, and ReplayEvents against a raw ordered SELECT.
func (se *storeEnv) loadAndReplay(ctx context.Context, d time.Duration, aggEvents, replayEvents int) ([]Result, error) {
	tenant := uuid.NewString()
	withSnap, noSnap := uuid.NewString(), uuid.NewString()
	for _, agg := range []string{withSnap, noSnap} {
		client := se.store
		if agg == noSnap {
			client = se.noSnap
		}
		for v := 0; v < aggEvents; v += 100 {
			if _, err := client.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
				TenantId: tenant, AggregateType: "Bench", AggregateId: agg,
				ExpectedVersion: anyVersion, Events: newEvents(100),
			}); err != nil {
				return nil, err
			}
		}
	}
	// Wait for the automatic snapshot at the last version.
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := se.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenant, AggregateId: withSnap, Raw: true})
		if err != nil {
			return nil, err
		}
		if l.GetSnapshotVersion() == int64(aggEvents) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no snapshot at %d (latest %d)", aggEvents, l.GetSnapshotVersion())
		}
		time.Sleep(100 * time.Millisecond)
	}
	var out []Result
	timed := func(name string, n int, events int64, fn func() error) error {
		var lat []time.Duration
		start := time.Now()
		for i := 0; i < n && time.Since(start) < d; i++ {
			t := time.Now()
			if err := fn(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			lat = append(lat, time.Since(t))
		}
		r := Result{Name: name, Events: events * int64(len(lat)), Elapsed: time.Since(start)}
		slices.Sort(lat)
		r.P50, r.P99 = lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond)
		out = append(out, r)
		return nil
	}
	if err := timed("gateway LoadAggregate, snapshots every 100", 2000, 1, func() error {
		_, err := se.store.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenant, AggregateId: withSnap})
		return err
	}); err != nil {
		return nil, err
	}
	if err := timed("gateway LoadAggregate, no snapshot", 50, 1, func() error {
		_, err := se.noSnap.LoadAggregate(ctx, &eventgwv1.LoadAggregateRequest{TenantId: tenant, AggregateId: noSnap})
		return err
	}); err != nil {
		return nil, err
	}
	if err := timed("raw pgx read all events of one aggregate", 50, 1, func() error {
		rows, err := se.pool.Query(ctx, `SELECT event_id, version, event_type, event_data, occurred_at FROM stored_events WHERE aggregate_id = $1 ORDER BY version`, noSnap)
		if err != nil {
			return err
		}
		var n int
		for rows.Next() {
			n++
		}
		rows.Close()
		if n != aggEvents {
			return fmt.Errorf("%d rows", n)
		}
		return rows.Err()
	}); err != nil {
		return nil, err
	}
	// Replay: a tenant with 100,000 events.
	rtenant := uuid.NewString()
	for i := 0; i < replayEvents/100; i++ {
		if _, err := se.store.AppendEvents(ctx, &eventgwv1.AppendEventsRequest{
			TenantId: rtenant, AggregateType: "Bench", AggregateId: uuid.NewString(),
			ExpectedVersion: anyVersion, Events: newEvents(100),
		}); err != nil {
			return nil, err
		}
	}
	re := int64(replayEvents)
	if err := timed("gateway ReplayEvents, data_as_json", 20, re, func() error {
		st, err := se.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: rtenant, DataAsJson: true})
		if err != nil {
			return err
		}
		n := 0
		for {
			r, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			n += len(r.GetEvents())
		}
		if n != replayEvents {
			return fmt.Errorf("replayed %d events", n)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := timed("gateway ReplayEvents, Struct", 5, re, func() error {
		st, err := se.store.ReplayEvents(ctx, &eventgwv1.ReplayEventsRequest{TenantId: rtenant})
		if err != nil {
			return err
		}
		for {
			if _, err := st.Recv(); errors.Is(err, io.EOF) {
				return nil
			} else if err != nil {
				return err
			}
		}
	}); err != nil {
		return nil, err
	}
	if err := timed("raw pgx SELECT the same events in position order", 20, re, func() error {
		rows, err := se.pool.Query(ctx, `SELECT event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, event_data, metadata, occurred_at, recorded_at, position
			FROM stored_events WHERE tenant_id = $1 ORDER BY position`, rtenant)
		if err != nil {
			return err
		}
		defer rows.Close()
		n := 0
		var vals [11]any
		for rows.Next() {
			ptrs := []any{&vals[0], &vals[1], &vals[2], &vals[3], &vals[4], &vals[5], &vals[6], &vals[7], &vals[8], &vals[9], &vals[10]}
			if err := rows.Scan(ptrs...); err != nil {
				return err
			}
			n++
		}
		if n != replayEvents {
			return fmt.Errorf("%d rows", n)
		}
		return rows.Err()
	}); err != nil {
		return nil, err
	}
	return out, nil
}

func reportStore(out io.Writer, rs []Result) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "event store scenario\tevents/s\tp50\tp99\terrors\tvs raw pgx\t")
	find := func(name string) *Result {
		for i := range rs {
			if rs[i].Name == name {
				return &rs[i]
			}
		}
		return nil
	}
	for _, r := range rs {
		ratio := "-"
		var base *Result
		switch {
		case strings.HasPrefix(r.Name, "gateway AppendEvents 1 event, 1 caller"):
			base = find("raw pgx INSERT 1 row/tx, 1 conn")
		case strings.HasPrefix(r.Name, "gateway AppendEvents 1 event, 16"):
			base = find("raw pgx INSERT 1 row/tx, 16 conns")
		case strings.HasPrefix(r.Name, "gateway AppendEvents 100 events"):
			base = find("raw pgx INSERT 100 rows/tx, 1 conn")
		case strings.HasPrefix(r.Name, "gateway ReplayEvents"):
			base = find("raw pgx SELECT the same events in position order")
		}
		if base != nil {
			ratio = fmt.Sprintf("%.2fx", r.Rate()/base.Rate())
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%v\t%v\t%d\t%s\t\n", r.Name, r.Rate(), r.P50, r.P99, r.Errors, ratio)
	}
	_ = tw.Flush()
	fmt.Fprintln(out, "\nLoadAggregate and the raw read: events/s column is loads/s; p50/p99 per load. Outbox: time from")
	fmt.Fprintln(out, "AppendEvents returning to a Kafka consumer receiving the event.")
}
