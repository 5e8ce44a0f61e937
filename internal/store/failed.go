package store

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/resilience"
	"github.com/eventgw/eventgw/internal/validate"
)

// RecordHeader is one header of a Kafka record, kept in failed_events.record_headers.
type RecordHeader struct {
	Key   string
	Value []byte
}

// FailedEvent is a failed_events row: the guide's columns, where the event was
// consumed, and the record as it was on Kafka.
type FailedEvent struct {
	ID        string
	TenantID  string
	EventID   string
	EventType string
	// Payload is the event_payload JSON object.
	Payload      []byte
	ErrorType    string
	ErrorMessage string
	RetryCount   int32
	FailedAt     time.Time
	Retried      bool
	Resolved     bool

	// Subscription, Topic, Partition and Offset say where the event was consumed
	// ("", "", -1, -1 for an event dead-lettered by SendToDeadLetter).
	Subscription string
	Topic        string
	Partition    int32
	Offset       int64
	DLQTopic     string
	// The record as it was on Kafka (nil Key/Value: a null key/value). HasRecord is
	// false for a row that holds none (record_headers NULL: a row not written by the
	// dead-letter writer); RecordKey, RecordValue and RecordHeaders are only read by
	// Retryable.
	HasRecord        bool
	RecordKey        []byte
	RecordValue      []byte
	RecordHeaders    []RecordHeader
	RetriesPublished int32
	RetriedAt        *time.Time
	ResolvedAt       *time.Time
}

// FailedEvents is the failed_events table.
type FailedEvents struct {
	pool    *pgxpool.Pool
	breaker *resilience.Breaker
}

// NewFailedEvents uses pool.
func NewFailedEvents(pool *pgxpool.Pool, opts ...Option) *FailedEvents {
	return &FailedEvents{pool: pool, breaker: buildOptions(opts).breaker}
}

// storedHeader is a header in record_headers: {"k": key, "v": base64(value)}.
type storedHeader struct {
	K string `json:"k"`
	V []byte `json:"v"`
}

// encodeHeaders is the record_headers JSON of hs (in their order).
func encodeHeaders(hs []RecordHeader) ([]byte, error) {
	out := make([]storedHeader, len(hs))
	for i, h := range hs {
		out[i] = storedHeader{K: h.Key, V: h.Value}
	}
	return json.Marshal(out)
}

func decodeHeaders(b []byte) ([]RecordHeader, error) {
	var in []storedHeader
	if err := json.Unmarshal(b, &in); err != nil {
		return nil, err
	}
	out := make([]RecordHeader, len(in))
	for i, h := range in {
		out[i] = RecordHeader{Key: h.K, Value: h.V}
	}
	return out, nil
}

const insertFailedSQL = `INSERT INTO failed_events (id, tenant_id, event_id, event_type, event_payload,
	error_type, error_message, retry_count, failed_at, subscription, topic, kafka_partition, kafka_offset,
	dlq_topic, record_key, record_value, record_headers)
VALUES ($1::uuid, $2::uuid, $3::uuid, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17::jsonb)
ON CONFLICT (id) DO NOTHING`

// Insert stores e (Retried, Resolved, RetriesPublished and the times other than
// FailedAt are ignored: a new row is neither). A row with e.ID already stored is left
// as it is and inserted is false: dead-lettering the same consumed record again (the
// hand-off retried after a crash) keeps one row.
func (f *FailedEvents) Insert(ctx context.Context, e *FailedEvent) (inserted bool, err error) {
	headers, err := encodeHeaders(e.RecordHeaders)
	if err != nil {
		return false, fmt.Errorf("failed event %s: encode record headers: %w", e.ID, err)
	}
	err = Do(ctx, f.breaker, ReadWrite, "insert failed event", func(ctx context.Context) error {
		tag, err := f.pool.Exec(ctx, insertFailedSQL, e.ID, e.TenantID, e.EventID, e.EventType, e.Payload,
			e.ErrorType, e.ErrorMessage, e.RetryCount, e.FailedAt, e.Subscription, e.Topic, e.Partition, e.Offset,
			e.DLQTopic, e.RecordKey, e.RecordValue, headers)
		inserted = tag.RowsAffected() == 1
		return err
	})
	if err != nil {
		return false, err
	}
	return inserted, nil
}

// FailedFilter selects a page of a tenant's failed events.
type FailedFilter struct {
	// TenantID is required.
	TenantID string
	// EventType and Subscription, when not empty, must match exactly.
	EventType    string
	Subscription string
	// IncludeResolved lists resolved rows too.
	IncludeResolved bool
	// FailedAfter (inclusive) and FailedBefore (exclusive) bound failed_at; zero is
	// unbounded.
	FailedAfter  time.Time
	FailedBefore time.Time
	// PageSize is the most rows answered (the caller bounds it).
	PageSize int
	// PageToken is the previous page's next token ("" for the first page).
	PageToken string
}

// listColumns are the columns List answers (not the stored record).
const listColumns = `id, tenant_id, event_id, event_type, event_payload, error_type, coalesce(error_message, ''),
	retry_count, failed_at, retried, resolved, subscription, topic, kafka_partition, kafka_offset, dlq_topic,
	retries_published, retried_at, resolved_at`

func scanListed(row pgx.Row, e *FailedEvent) error {
	return row.Scan(&e.ID, &e.TenantID, &e.EventID, &e.EventType, &e.Payload, &e.ErrorType, &e.ErrorMessage,
		&e.RetryCount, &e.FailedAt, &e.Retried, &e.Resolved, &e.Subscription, &e.Topic, &e.Partition, &e.Offset,
		&e.DLQTopic, &e.RetriesPublished, &e.RetriedAt, &e.ResolvedAt)
}

// List answers a page of a tenant's failed events, newest first (failed_at, then id,
// descending), and the token of the next page ("" after the last one).
//
// Paging is by keyset: the token is the (failed_at, id) of the page's last row and the
// next page starts strictly after it, so rows dead-lettered while a client pages (they
// are newer) neither shift pages nor repeat rows, and the read costs the same on page
// 1000 as on page 1 (the (tenant_id, failed_at DESC, id DESC) index). A malformed token
// is a *validate.Error.
func (f *FailedEvents) List(ctx context.Context, flt FailedFilter) ([]FailedEvent, string, error) {
	if flt.PageSize <= 0 {
		return nil, "", validate.Errorf("page_size", "must be positive")
	}
	var sb strings.Builder
	args := []any{flt.TenantID}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	sb.WriteString(`SELECT ` + listColumns + ` FROM failed_events WHERE tenant_id = $1::uuid`)
	if flt.EventType != "" {
		sb.WriteString(` AND event_type = ` + arg(flt.EventType))
	}
	if flt.Subscription != "" {
		sb.WriteString(` AND subscription = ` + arg(flt.Subscription))
	}
	if !flt.IncludeResolved {
		sb.WriteString(` AND NOT resolved`)
	}
	if !flt.FailedAfter.IsZero() {
		sb.WriteString(` AND failed_at >= ` + arg(flt.FailedAfter) + `::timestamptz`)
	}
	if !flt.FailedBefore.IsZero() {
		sb.WriteString(` AND failed_at < ` + arg(flt.FailedBefore) + `::timestamptz`)
	}
	if flt.PageToken != "" {
		at, id, err := decodePageToken(flt.PageToken)
		if err != nil {
			return nil, "", err
		}
		sb.WriteString(` AND (failed_at, id) < (` + arg(at) + `::timestamptz, ` + arg(id) + `::uuid)`)
	}
	// One row more than the page says whether there is a next page.
	sb.WriteString(` ORDER BY failed_at DESC, id DESC LIMIT ` + arg(flt.PageSize+1))

	var out []FailedEvent
	if err := Do(ctx, f.breaker, ReadOnly, "list failed events", func(ctx context.Context) error {
		rows, err := f.pool.Query(ctx, sb.String(), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		out = make([]FailedEvent, 0, min(flt.PageSize+1, 128))
		for rows.Next() {
			var e FailedEvent
			if err := scanListed(rows, &e); err != nil {
				return err
			}
			out = append(out, e)
		}
		return rows.Err()
	}); err != nil {
		return nil, "", err
	}
	if len(out) <= flt.PageSize {
		return out, "", nil
	}
	out = out[:flt.PageSize]
	last := &out[len(out)-1]
	return out, encodePageToken(last.FailedAt, last.ID), nil
}

// Page tokens: base64url of a version byte, failed_at in Unix microseconds (PostgreSQL's
// precision, so the bound is exact) and the row id.
const pageTokenV1 = 1

func encodePageToken(at time.Time, id string) string {
	b := make([]byte, 1, 25)
	b[0] = pageTokenV1
	b = binary.BigEndian.AppendUint64(b, uint64(at.UnixMicro()))
	u := uuid.MustParse(id)
	b = append(b, u[:]...)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodePageToken(tok string) (time.Time, string, error) {
	bad := validate.Errorf("page_token", "is not a next_page_token of ListFailedEvents")
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || len(b) != 25 || b[0] != pageTokenV1 {
		return time.Time{}, "", bad
	}
	u, err := uuid.FromBytes(b[9:])
	if err != nil {
		return time.Time{}, "", bad
	}
	return time.UnixMicro(int64(binary.BigEndian.Uint64(b[1:9]))).UTC(), u.String(), nil
}

// Retryable answers the rows ids name for tenant, in the order of ids, with their
// stored records. It fails with ErrFailedEventNotFound when an id names no row of
// tenant (another tenant's row included), else with ErrFailedEventResolved when one
// is resolved: either way the caller must publish nothing.
func (f *FailedEvents) Retryable(ctx context.Context, tenant string, ids []string) (out []FailedEvent, err error) {
	err = Do(ctx, f.breaker, ReadOnly, "read failed events", func(ctx context.Context) error {
		out, err = f.retryable(ctx, tenant, ids)
		return err
	})
	return out, err
}

func (f *FailedEvents) retryable(ctx context.Context, tenant string, ids []string) ([]FailedEvent, error) {
	rows, err := f.pool.Query(ctx, `SELECT `+listColumns+`, record_key, record_value, record_headers
		FROM failed_events WHERE tenant_id = $1::uuid AND id = ANY($2::uuid[])`, tenant, ids)
	if err != nil {
		return nil, fmt.Errorf("read failed events: %w", err)
	}
	defer rows.Close()
	byID := make(map[string]*FailedEvent, len(ids))
	for rows.Next() {
		e := &FailedEvent{}
		var headers []byte
		if err := rows.Scan(&e.ID, &e.TenantID, &e.EventID, &e.EventType, &e.Payload, &e.ErrorType, &e.ErrorMessage,
			&e.RetryCount, &e.FailedAt, &e.Retried, &e.Resolved, &e.Subscription, &e.Topic, &e.Partition, &e.Offset,
			&e.DLQTopic, &e.RetriesPublished, &e.RetriedAt, &e.ResolvedAt,
			&e.RecordKey, &e.RecordValue, &headers); err != nil {
			return nil, fmt.Errorf("read failed events: %w", err)
		}
		if headers != nil {
			e.HasRecord = true
			if e.RecordHeaders, err = decodeHeaders(headers); err != nil {
				return nil, fmt.Errorf("failed event %s: record_headers: %w", e.ID, err)
			}
		}
		byID[e.ID] = e
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read failed events: %w", err)
	}
	out := make([]FailedEvent, len(ids))
	for i, id := range ids {
		e, ok := byID[canonicalUUID(id)]
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrFailedEventNotFound, id)
		}
		out[i] = *e
	}
	for i := range out {
		if out[i].Resolved {
			return nil, fmt.Errorf("%w: %s", ErrFailedEventResolved, ids[i])
		}
	}
	return out, nil
}

// canonicalUUID is id as PostgreSQL prints it (lowercase), or id itself.
func canonicalUUID(id string) string {
	if u, err := uuid.Parse(id); err == nil {
		return u.String()
	}
	return id
}

// MarkRetried records that the rows ids name (of tenant) were published again:
// retried is set, retries_published counts one more and retried_at is now.
func (f *FailedEvents) MarkRetried(ctx context.Context, tenant string, ids []string) error {
	return Do(ctx, f.breaker, ReadWrite, "mark failed events retried", func(ctx context.Context) error {
		_, err := f.pool.Exec(ctx, `UPDATE failed_events
			SET retried = true, retries_published = retries_published + 1, retried_at = now()
			WHERE tenant_id = $1::uuid AND id = ANY($2::uuid[])`, tenant, ids)
		return err
	})
}

// Resolve marks tenant's row id resolved. Resolving a resolved row again succeeds and
// keeps its first resolved_at. ErrFailedEventNotFound when tenant has no such row.
func (f *FailedEvents) Resolve(ctx context.Context, tenant, id string) error {
	return Do(ctx, f.breaker, ReadWrite, "resolve failed event", func(ctx context.Context) error {
		tag, err := f.pool.Exec(ctx, `UPDATE failed_events
			SET resolved = true, resolved_at = coalesce(resolved_at, now())
			WHERE tenant_id = $1::uuid AND id = $2::uuid`, tenant, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: %s", ErrFailedEventNotFound, id)
		}
		return nil
	})
}
