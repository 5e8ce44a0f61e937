package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kmsg"

	eventgwv1 "github.com/eventgw/eventgw/gen/eventgw/v1"
	"github.com/eventgw/eventgw/internal/store"
)

// fallbackSuite measures publishing while Kafka is down (events queued in PostgreSQL)
// beside raw pgx inserts of the same rows, then the rate at which the relay drains the
// queue once Kafka is back.
func (e *env) fallbackSuite(ctx context.Context, o Options) ([]subResult, error) {
	pool, err := pgxpool.New(ctx, e.dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS bench_raw_queue (LIKE publish_queue INCLUDING ALL)`); err != nil {
		return nil, err
	}
	defer func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS bench_raw_queue`) }()
	if err := e.freshTopic(ctx); err != nil {
		return nil, err
	}
	defer e.dropTopic()
	row := e.rawQueueRow()
	d := o.Duration
	var rs []subResult
	run := func(name string, drain bool, fn func() (Result, error)) error {
		if o.Only != "" && !strings.Contains(name, o.Only) {
			return nil
		}
		u := startUsage()
		r, err := fn()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		sr := subResult{Result: r, drain: drain}
		u.finish(&sr)
		sr.Name = name
		rs = append(rs, sr)
		fmt.Fprintf(os2(), "  %-52s %10.0f ev/s  p50 %-9v p99 %-9v errors %d\n", name, r.Rate(), r.P50, r.P99, r.Errors)
		return nil
	}
	if err := run("raw pgx INSERT 1 row/tx, 16 conns", false, func() (Result, error) { return rawQueueInsert(pool, d, 16, 1, row) }); err != nil {
		return nil, err
	}
	if err := run("raw pgx CopyFrom 100 rows/tx, 1 conn", false, func() (Result, error) { return rawQueueInsert(pool, d, 1, 100, row) }); err != nil {
		return nil, err
	}

	// Kafka down: every produce request fails.
	var down atomic.Bool
	down.Store(true)
	cluster := e.stack.Kafka
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if down.Load() {
			return nil, errors.New("bench: Kafka down"), true
		}
		return nil, nil, false
	})
	defer down.Store(false)
	// The first publish finds Kafka down (after the producer's retries) and switches the
	// sidecar to queueing.
	resp, err := e.events.Publish(ctx, &eventgwv1.PublishRequest{Event: e.event(200, false)})
	if err != nil || !resp.GetResult().GetQueued() {
		return nil, fmt.Errorf("with Kafka down the first publish was not queued: %v %v", resp, err)
	}
	before := queueRows(ctx, pool)
	if err := run("gateway Publish queued, 16 callers, payload_json", false, func() (Result, error) { return e.publish(d, 200, 16, false) }); err != nil {
		return nil, err
	}
	if err := run("gateway PublishStream queued 100/req, payload_json", false, func() (Result, error) { return e.streams(d, 200, 100, 16, false, 1) }); err != nil {
		return nil, err
	}
	queued := queueRows(ctx, pool) - before
	var published int64
	for _, r := range rs {
		if strings.HasPrefix(r.Name, "gateway") {
			published += r.Events
		}
	}
	fmt.Fprintf(os2(), "  %d events answered, %d rows queued meanwhile\n", published, queued)
	if queued < published {
		return nil, fmt.Errorf("%d events answered success but only %d rows were queued", published, queued)
	}

	// Kafka back: the relay drains the queue.
	name := "relay drains the queue once Kafka is back"
	if o.Only == "" || strings.Contains(name, o.Only) {
		total := queueRows(ctx, pool)
		u := startUsage()
		restored := time.Now()
		down.Store(false)
		var first time.Time
		for {
			n := queueRows(ctx, pool)
			if first.IsZero() && n < total {
				first = time.Now()
			}
			if n == 0 {
				break
			}
			if time.Since(restored) > 5*time.Minute {
				return nil, fmt.Errorf("%s: %d rows left after 5 minutes", name, n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		r := subResult{Result: Result{Name: name, Events: total, Elapsed: time.Since(first)}, drain: true}
		u.finish(&r)
		rs = append(rs, r)
		fmt.Fprintf(os2(), "  %-52s %10.0f ev/s  (%d events; the relay's first round came %v after Kafka was back)\n",
			name, r.Rate(), total, first.Sub(restored).Round(time.Millisecond))
	}
	return rs, nil
}

func queueRows(ctx context.Context, pool *pgxpool.Pool) int64 {
	var n int64
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM publish_queue`).Scan(&n)
	return n
}

// rawQueueRow is a publish_queue row as the gateway writes it for a 200 B event.
func (e *env) rawQueueRow() []any {
	hdr := store.EncodeHeaders([]store.RecordHeader{
		{Key: "ce_specversion", Value: []byte("1.0")}, {Key: "ce_id", Value: []byte(uuid.NewString())},
		{Key: "ce_type", Value: []byte(e.domain + ".measured")}, {Key: "ce_source", Value: []byte("bench")},
		{Key: "ce_time", Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
		{Key: "ce_tenantid", Value: []byte(tenants[0])}, {Key: "content-type", Value: []byte("application/json")},
	})
	return []any{"bench/raw", uuid.New(), e.domain + ".measured", "bench", e.topic(), []byte(tenants[0]), payloadJSON(200), hdr}
}

var queueCols = []string{"origin", "event_id", "event_type", "source", "topic", "record_key", "record_value", "record_headers"}

// rawQueueInsert writes rows like the gateway's queue rows straight with pgx: one row
// per INSERT and commit from each of conns connections, or per rows of CopyFrom.
func rawQueueInsert(pool *pgxpool.Pool, d time.Duration, conns, per int, row []any) (Result, error) {
	return loop(d, conns, func(lat *[]time.Duration) (int64, int64) {
		t := time.Now()
		var err error
		if per == 1 {
			_, err = pool.Exec(context.Background(), `INSERT INTO bench_raw_queue (origin, event_id, event_type, source, topic, record_key, record_value, record_headers)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, row[0], uuid.New(), row[2], row[3], row[4], row[5], row[6], row[7])
		} else {
			rows := make([][]any, per)
			for i := range rows {
				r := append([]any(nil), row...)
				r[1] = uuid.New()
				rows[i] = r
			}
			_, err = pool.CopyFrom(context.Background(), pgx.Identifier{"bench_raw_queue"}, queueCols, pgx.CopyFromRows(rows))
		}
		*lat = append(*lat, time.Since(t))
		if err != nil {
			return 0, int64(per)
		}
		return int64(per), 0
	}), nil
}

func reportFallback(out io.Writer, rs []subResult) {
	var rawOne, rawBatch float64
	for _, r := range rs {
		switch r.Name {
		case "raw pgx INSERT 1 row/tx, 16 conns":
			rawOne = r.Rate()
		case "raw pgx CopyFrom 100 rows/tx, 1 conn":
			rawBatch = r.Rate()
		}
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "publish fallback scenario\tevents\tevents/s\tp50\tp99\terrors\tvs raw 1 row/tx\tvs raw batched\tCPU s/1k ev\tpeak RSS MB\ttarget\t")
	for _, r := range rs {
		vsOne, vsBatch, target := "-", "-", "-"
		if strings.HasPrefix(r.Name, "gateway") {
			if rawOne > 0 {
				vsOne = fmt.Sprintf("%.2fx", r.Rate()/rawOne)
			}
			if rawBatch > 0 {
				vsBatch = fmt.Sprintf("%.2fx", r.Rate()/rawBatch)
				target = "≥0.80x raw batched: " + metOrNot(r.Rate() >= 0.8*rawBatch)
			}
		}
		if r.drain {
			target = "≥50000/s: " + metOrNot(r.Rate() >= 50000)
		}
		perK, rss := "-", "-"
		if r.Events > 0 {
			perK = fmt.Sprintf("%.3f", r.CPU.Seconds()/float64(r.Events)*1000)
		}
		if r.PeakRSS > 0 {
			rss = fmt.Sprintf("%d", r.PeakRSS>>20)
		}
		p50, p99 := fmt.Sprint(r.P50), fmt.Sprint(r.P99)
		if r.drain {
			p50, p99 = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t\n", r.Name, r.Events, r.Rate(), p50, p99, r.Errors, vsOne, vsBatch, perK, rss, target)
	}
	_ = tw.Flush()
	fmt.Fprint(out, `
Kafka down: every produce request fails (kfake control), so the gateway answers from
PostgreSQL's publish_queue (one group-commit writer: COPY of what all callers brought
meanwhile, one commit). Raw rows are the same shape (200 B value, CloudEvents headers)
written by pgx straight into a copy of the table. Drain: from the relay's first round
after Kafka is back until the queue is empty (2,000 rows per round: read, produce, wait
for acks, delete). CPU and RSS are the whole bench process (sidecar, client, kfake,
PostgreSQL client side; PostgreSQL's own server processes are not counted).
`)
}
