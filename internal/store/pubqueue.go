package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/resilience"
)

// QueuedRecord is a Kafka record kept in publish_queue while Kafka is unreachable.
type QueuedRecord struct {
	Position  int64 // set when read back
	EventID   string
	EventType string
	Source    string
	Topic     string
	Key       []byte // nil: no key
	Value     []byte
	Headers   []RecordHeader
	QueuedAt  time.Time // set when read back
}

// PublishQueue is the durable publish fallback (publish_queue). Enqueue commits the
// rows of concurrent callers together, one writer at a time: rows of this process are
// positioned in the order they were accepted, and a caller returns only once its rows
// are committed.
type PublishQueue struct {
	pool    *pgxpool.Pool
	breaker *resilience.Breaker
	origin  string
	reqs    chan *enqueueReq
	stop    chan struct{}
	done    chan struct{}
	closed  sync.Once
}

type enqueueReq struct {
	ctx  context.Context
	recs []QueuedRecord
	err  chan error
}

// maxQueueRows bounds one group commit.
const maxQueueRows = 8192

// NewPublishQueue builds the queue of this process; origin names it (rows it queued
// carry it, see PendingSince).
func NewPublishQueue(pool *pgxpool.Pool, origin string, opts ...Option) *PublishQueue {
	q := &PublishQueue{
		pool: pool, breaker: buildOptions(opts).breaker, origin: origin, reqs: make(chan *enqueueReq, 1024),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	go q.writer()
	return q
}

// Origin is the name this process's rows carry.
func (q *PublishQueue) Origin() string { return q.origin }

// ErrQueueClosed is returned by Enqueue after Close.
var ErrQueueClosed = errors.New("publish queue is closed")

// Enqueue stores recs durably; nil means they are committed.
func (q *PublishQueue) Enqueue(ctx context.Context, recs []QueuedRecord) error {
	return q.Submit(ctx, recs)()
}

// Submit hands recs to the writer now (rows submitted one after another are positioned
// in that order) and answers a function that waits for their outcome: nil once they
// are committed. The rows may be written even if ctx ends after Submit returned, so the
// wait does not give up on ctx.
func (q *PublishQueue) Submit(ctx context.Context, recs []QueuedRecord) (wait func() error) {
	r := &enqueueReq{ctx: ctx, recs: recs, err: make(chan error, 1)}
	select {
	case q.reqs <- r:
	case <-ctx.Done():
		err := ctx.Err()
		return func() error { return err }
	case <-q.stop:
		return func() error { return ErrQueueClosed }
	}
	return func() error {
		select {
		case err := <-r.err:
			return err
		case <-q.done:
			select {
			case err := <-r.err:
				return err
			default:
				return ErrQueueClosed
			}
		}
	}
}

// Close stops the writer; requests handed to it are answered first.
func (q *PublishQueue) Close() error {
	q.closed.Do(func() { close(q.stop) })
	<-q.done
	return nil
}

func (q *PublishQueue) writer() {
	defer close(q.done)
	var batch []*enqueueReq
	var rows [][]any
	for {
		batch, rows = batch[:0], rows[:0]
		select {
		case r := <-q.reqs:
			batch = append(batch, r)
		case <-q.stop:
			// Requests already handed over still get an answer.
			for {
				select {
				case r := <-q.reqs:
					r.err <- ErrQueueClosed
				default:
					return
				}
			}
		}
		n := len(batch[0].recs)
	gather:
		for n < maxQueueRows {
			select {
			case r := <-q.reqs:
				batch = append(batch, r)
				n += len(r.recs)
			default:
				break gather
			}
		}
		live := batch[:0]
		for _, r := range batch {
			if err := r.ctx.Err(); err != nil {
				r.err <- err // not written: the caller may retry
				continue
			}
			start, bad := len(rows), error(nil)
			for i := range r.recs {
				row, err := queueRow(q.origin, &r.recs[i])
				if err != nil {
					bad = err
					break
				}
				rows = append(rows, row)
			}
			if bad != nil {
				clear(rows[start:])
				rows = rows[:start]
				r.err <- bad
				continue
			}
			live = append(live, r)
		}
		if len(live) == 0 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := Do(ctx, q.breaker, ReadWrite, "queue events in postgres", func(ctx context.Context) error {
			_, err := q.pool.CopyFrom(ctx, pgx.Identifier{"publish_queue"},
				[]string{"origin", "event_id", "event_type", "source", "topic", "record_key", "record_value", "record_headers"},
				pgx.CopyFromRows(rows))
			return err
		})
		cancel()
		for _, r := range live {
			r.err <- err
		}
		clear(rows)
	}
}

func queueRow(origin string, r *QueuedRecord) ([]any, error) {
	id, err := uuid.Parse(r.EventID)
	if err != nil {
		return nil, fmt.Errorf("queue event: event id %q is not a UUID", r.EventID)
	}
	return []any{origin, id, r.EventType, r.Source, r.Topic, r.Key, r.Value, EncodeHeaders(r.Headers)}, nil
}

// EncodeHeaders packs headers as publish_queue.record_headers stores them.
func EncodeHeaders(hs []RecordHeader) []byte {
	n := binary.MaxVarintLen64
	for _, h := range hs {
		n += 2*binary.MaxVarintLen64 + len(h.Key) + len(h.Value)
	}
	b := make([]byte, 0, n)
	b = binary.AppendUvarint(b, uint64(len(hs)))
	for _, h := range hs {
		b = binary.AppendUvarint(b, uint64(len(h.Key)))
		b = append(b, h.Key...)
		b = binary.AppendUvarint(b, uint64(len(h.Value)))
		b = append(b, h.Value...)
	}
	return b
}

// DecodeHeaders reverses EncodeHeaders.
func DecodeHeaders(b []byte) ([]RecordHeader, error) {
	bad := errors.New("publish_queue.record_headers is malformed")
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, bad
	}
	b = b[k:]
	hs := make([]RecordHeader, 0, n)
	for range n {
		var parts [2][]byte
		for j := range parts {
			l, k := binary.Uvarint(b)
			if k <= 0 || l > uint64(len(b)-k) {
				return nil, bad
			}
			parts[j] = b[k : k+int(l)]
			b = b[k+int(l):]
		}
		hs = append(hs, RecordHeader{Key: string(parts[0]), Value: parts[1]})
	}
	return hs, nil
}

// ReadQueuedAfter reads up to limit queued records after position after, in position
// order.
func ReadQueuedAfter(ctx context.Context, pool *pgxpool.Pool, after int64, limit int) (out []QueuedRecord, err error) {
	err = Do(ctx, nil, ReadOnly, "read publish queue", func(ctx context.Context) error {
		out, err = readQueued(ctx, pool, after, limit)
		return err
	})
	return out, err
}

func readQueued(ctx context.Context, pool *pgxpool.Pool, after int64, limit int) ([]QueuedRecord, error) {
	rows, err := pool.Query(ctx, `SELECT position, event_id, event_type, source, topic, record_key, record_value, record_headers, queued_at
		FROM publish_queue WHERE position > $1 ORDER BY position LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read publish queue: %w", err)
	}
	defer rows.Close()
	var out []QueuedRecord
	for rows.Next() {
		var r QueuedRecord
		var id uuid.UUID
		var hdr []byte
		if err := rows.Scan(&r.Position, (*[16]byte)(&id), &r.EventType, &r.Source, &r.Topic, &r.Key, &r.Value, &hdr, &r.QueuedAt); err != nil {
			return nil, fmt.Errorf("read publish queue: %w", err)
		}
		r.EventID = id.String()
		if r.Headers, err = DecodeHeaders(hdr); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read publish queue: %w", err)
	}
	return out, nil
}

// DeleteQueued removes published records.
func DeleteQueued(ctx context.Context, pool *pgxpool.Pool, positions []int64) error {
	if len(positions) == 0 {
		return nil
	}
	return Do(ctx, nil, ReadWrite, "delete published queue rows", func(ctx context.Context) error {
		_, err := pool.Exec(ctx, `DELETE FROM publish_queue WHERE position = ANY($1)`, positions)
		return err
	})
}

// MaxQueuedPosition is the highest position in publish_queue (0 when empty).
func MaxQueuedPosition(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var top int64
	err := Do(ctx, nil, ReadOnly, "read publish queue", func(ctx context.Context) error {
		return pool.QueryRow(ctx, `SELECT coalesce(max(position), 0) FROM publish_queue`).Scan(&top)
	})
	return top, err
}

// PendingSince reports whether rows of origin, or rows at or below upTo (rows queued
// before this process started), are still queued.
func (q *PublishQueue) PendingSince(ctx context.Context, upTo int64) (bool, error) {
	n, err := q.PendingCount(ctx, upTo, 1)
	return n > 0, err
}

// PendingCount counts, up to limit, the rows PendingSince looks for.
func (q *PublishQueue) PendingCount(ctx context.Context, upTo int64, limit int) (int, error) {
	var n int
	err := Do(ctx, q.breaker, ReadOnly, "read publish queue", func(ctx context.Context) error {
		return q.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM publish_queue
			WHERE origin = $1 OR position <= $2 LIMIT $3) s`, q.origin, upTo, limit).Scan(&n)
	})
	return n, err
}

// QueueBacklog is the number of queued records and the age of the oldest.
func QueueBacklog(ctx context.Context, pool *pgxpool.Pool) (n int64, oldest time.Duration, err error) {
	var at *time.Time
	if err = Do(ctx, nil, ReadOnly, "read publish queue", func(ctx context.Context) error {
		return pool.QueryRow(ctx, `SELECT count(*), min(queued_at) FROM publish_queue`).Scan(&n, &at)
	}); err != nil {
		return 0, 0, err
	}
	if at != nil {
		oldest = time.Since(*at)
	}
	return n, oldest, nil
}
