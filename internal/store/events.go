package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Expected-version forms of an append.
const (
	ExpectAny      int64 = -1
	ExpectNoStream int64 = -2
)

// NewEvent is an event to append. Data and Metadata are JSON objects.
type NewEvent struct {
	ID         string
	Type       string
	Data       []byte
	Metadata   []byte
	OccurredAt time.Time
}

// AppendRequest appends events to one aggregate.
type AppendRequest struct {
	TenantID      string
	AggregateType string
	AggregateID   string
	// Expected is the exact version (0: must not exist), ExpectAny or ExpectNoStream.
	Expected int64
	Events   []NewEvent
}

// AppendResult is the aggregate's new version and each event's global position.
type AppendResult struct {
	Version   int64
	Positions []int64
	// Duplicate: the events were already stored; nothing was written.
	Duplicate bool
	// PrevVersion is the version before the append (undefined for duplicates).
	PrevVersion int64
}

// StoredEvent is an event as stored.
type StoredEvent struct {
	EventID       string
	TenantID      string
	AggregateType string
	AggregateID   string
	Version       int64
	Type          string
	Data          []byte
	Metadata      []byte
	OccurredAt    time.Time
	RecordedAt    time.Time
	Position      int64
}

// Events is the event store on PostgreSQL.
type Events struct {
	pool   *pgxpool.Pool
	shards int
}

// NewEvents uses pool; appended events go to outbox shard hash(aggregate id) mod shards.
func NewEvents(pool *pgxpool.Pool, shards int) *Events {
	return &Events{pool: pool, shards: shards}
}

// Shard is the outbox shard of an aggregate.
func Shard(aggregateID string, shards int) int16 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(aggregateID))
	return int16(h.Sum32() % uint32(shards))
}

// Append appends req's events atomically with consecutive versions, and writes them to
// the outbox in the same transaction (one round trip: see eventgw_append).
func (s *Events) Append(ctx context.Context, req AppendRequest) (AppendResult, error) {
	n := len(req.Events)
	ids := make([]string, n)
	types := make([]string, n)
	data := make([]string, n)
	meta := make([]string, n)
	occurred := make([]time.Time, n)
	for i, e := range req.Events {
		ids[i], types[i], data[i], occurred[i] = e.ID, e.Type, string(e.Data), e.OccurredAt
		meta[i] = "{}"
		if len(e.Metadata) > 0 {
			meta[i] = string(e.Metadata)
		}
	}
	var res AppendResult
	err := s.pool.QueryRow(ctx, `SELECT new_version, positions, duplicate FROM eventgw_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
		req.TenantID, req.AggregateType, req.AggregateID, req.Expected, ids, types, data, meta, occurred,
		Shard(req.AggregateID, s.shards)).Scan(&res.Version, &res.Positions, &res.Duplicate)
	if err != nil {
		return AppendResult{}, appendErr(err, req)
	}
	res.PrevVersion = res.Version - int64(n)
	return res, nil
}

func appendErr(err error, req AppendRequest) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return fmt.Errorf("append: %w", err)
	}
	switch pgErr.Code {
	case "EG001":
		cur, _ := strconv.ParseInt(pgErr.Detail, 10, 64)
		exp := strconv.FormatInt(req.Expected, 10)
		if req.Expected == ExpectNoStream {
			exp = "no stream"
		}
		return &ConflictError{AggregateID: req.AggregateID, Current: cur, Expected: exp}
	case "EG002":
		return ErrNotFound
	case "EG003", "23505": // 23505: a racing append stored the same event id elsewhere
		return ErrEventIDTaken
	case "EG004":
		return &TypeMismatchError{Stored: pgErr.Detail}
	case "EG005":
		return ErrPartialDuplicate
	}
	return fmt.Errorf("append: %w", err)
}

const eventColumns = `event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, event_data, metadata, occurred_at, recorded_at, position`

func scanEvent(rows pgx.Rows, e *StoredEvent) error {
	var id, tenant, agg uuid.UUID
	var version int32
	if err := rows.Scan(&id, &tenant, &e.AggregateType, &agg, &version, &e.Type, &e.Data, &e.Metadata, &e.OccurredAt, &e.RecordedAt, &e.Position); err != nil {
		return err
	}
	e.EventID, e.TenantID, e.AggregateID, e.Version = id.String(), tenant.String(), agg.String(), int64(version)
	return nil
}

// ReadAggregate calls fn with pages of the aggregate's events from version from on, in
// version order. It answers ErrNotFound when the tenant has no such aggregate.
func (s *Events) ReadAggregate(ctx context.Context, tenantID, aggregateID string, from int64, page int, fn func([]StoredEvent) error) error {
	if _, _, err := s.aggregate(ctx, tenantID, aggregateID); err != nil {
		return err
	}
	if from < 1 {
		from = 1
	}
	for {
		batch, err := s.events(ctx, `SELECT `+eventColumns+` FROM stored_events
			WHERE aggregate_id = $1 AND tenant_id = $2 AND version >= $3 ORDER BY version LIMIT $4`,
			aggregateID, tenantID, from, page)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		if err := fn(batch); err != nil {
			return err
		}
		if len(batch) < page {
			return nil
		}
		from = batch[len(batch)-1].Version + 1
	}
}

func (s *Events) events(ctx context.Context, sql string, args ...any) ([]StoredEvent, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	defer rows.Close()
	var out []StoredEvent
	for rows.Next() {
		out = append(out, StoredEvent{})
		if err := scanEvent(rows, &out[len(out)-1]); err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	return out, nil
}

// aggregate returns the aggregate's type and version, or ErrNotFound.
func (s *Events) aggregate(ctx context.Context, tenantID, aggregateID string) (string, int64, error) {
	var typ string
	var version int32
	err := s.pool.QueryRow(ctx, `SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = $1 AND tenant_id = $2`,
		aggregateID, tenantID).Scan(&typ, &version)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", 0, ErrNotFound
	}
	if err != nil {
		return "", 0, fmt.Errorf("read aggregate: %w", err)
	}
	return typ, int64(version), nil
}

// Snapshot is a stored aggregate state.
type Snapshot struct {
	ID      string
	Version int64
	State   []byte
}

// Loaded is an aggregate as LoadAggregate answers it.
type Loaded struct {
	AggregateType string
	Version       int64
	Snapshot      *Snapshot
	// Tail are the events after the snapshot (all events without one).
	Tail []StoredEvent
}

// Load reads the latest snapshot and the events after it in one round trip, from one
// repeatable-read snapshot (so a snapshot saved meanwhile cannot hide events).
func (s *Events) Load(ctx context.Context, tenantID, aggregateID string) (*Loaded, error) {
	b := &pgx.Batch{}
	b.Queue(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`)
	b.Queue(`SELECT aggregate_type, version FROM aggregates WHERE aggregate_id = $1 AND tenant_id = $2`, aggregateID, tenantID)
	b.Queue(`SELECT id, version, state FROM aggregate_snapshots WHERE aggregate_id = $1 AND tenant_id = $2 ORDER BY version DESC LIMIT 1`, aggregateID, tenantID)
	b.Queue(`SELECT `+eventColumns+` FROM stored_events WHERE aggregate_id = $1 AND tenant_id = $2
		AND version > coalesce((SELECT max(version) FROM aggregate_snapshots WHERE aggregate_id = $1 AND tenant_id = $2), 0)
		ORDER BY version`, aggregateID, tenantID)
	b.Queue(`COMMIT`)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("load aggregate: %w", err)
	}
	l := &Loaded{}
	var version int32
	if err := br.QueryRow().Scan(&l.AggregateType, &version); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("load aggregate: %w", err)
	}
	l.Version = int64(version)
	var snap Snapshot
	var sid uuid.UUID
	var sv int32
	switch err := br.QueryRow().Scan(&sid, &sv, &snap.State); {
	case err == nil:
		snap.ID, snap.Version = sid.String(), int64(sv)
		l.Snapshot = &snap
	case errors.Is(err, pgx.ErrNoRows):
	default:
		return nil, fmt.Errorf("load snapshot: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("load events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		l.Tail = append(l.Tail, StoredEvent{})
		if err := scanEvent(rows, &l.Tail[len(l.Tail)-1]); err != nil {
			return nil, fmt.Errorf("load events: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load events: %w", err)
	}
	rows.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("load aggregate: %w", err)
	}
	return l, nil
}

// Fold folds l into its current state: the snapshot's state, then each event's data
// applied as an RFC 7386 merge patch.
func Fold(l *Loaded) (map[string]any, error) {
	var state any = map[string]any{}
	if l.Snapshot != nil {
		if err := json.Unmarshal(l.Snapshot.State, &state); err != nil {
			return nil, fmt.Errorf("snapshot state: %w", err)
		}
	}
	for i := range l.Tail {
		var patch any
		if err := json.Unmarshal(l.Tail[i].Data, &patch); err != nil {
			return nil, fmt.Errorf("event %s data: %w", l.Tail[i].EventID, err)
		}
		state = MergePatch(state, patch)
	}
	m, ok := state.(map[string]any)
	if !ok {
		m = map[string]any{}
	}
	return m, nil
}

// SaveSnapshot stores state at version. It is refused (ErrSnapshotVersion) when the
// aggregate has no such version or a snapshot at that version or later exists.
func (s *Events) SaveSnapshot(ctx context.Context, tenantID, aggregateID string, version int64, state []byte) (string, error) {
	id := uuid.Must(uuid.NewV7())
	tag, err := s.pool.Exec(ctx, `INSERT INTO aggregate_snapshots (id, tenant_id, aggregate_type, aggregate_id, version, state, created_at)
		SELECT $1, a.tenant_id, a.aggregate_type, a.aggregate_id, $4, $5::jsonb, now()
		  FROM aggregates a
		 WHERE a.aggregate_id = $2 AND a.tenant_id = $3 AND a.version >= $4 AND $4 > 0
		   AND NOT EXISTS (SELECT 1 FROM aggregate_snapshots s WHERE s.aggregate_id = $2 AND s.version >= $4)
		ON CONFLICT DO NOTHING`, id, aggregateID, tenantID, version, string(state))
	if err != nil {
		return "", fmt.Errorf("save snapshot: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return id.String(), nil
	}
	if _, cur, err := s.aggregate(ctx, tenantID, aggregateID); err != nil {
		return "", err
	} else if version > cur || version < 1 {
		return "", fmt.Errorf("%w: the aggregate has versions 1 to %d", ErrSnapshotVersion, cur)
	}
	return "", fmt.Errorf("%w: a snapshot at version %d or later exists", ErrSnapshotVersion, version)
}

// ReplayFilter selects events to replay.
type ReplayFilter struct {
	TenantID      string
	From, To      time.Time
	EventTypes    []string
	AggregateType string
	AfterPosition int64
	Limit         int64
}

// Replay calls fn with pages of the tenant's events in global order. It reads only
// positions below the oldest transaction still running (pg_snapshot_xmin), so an event
// that commits later can never have a position below one already delivered.
func (s *Events) Replay(ctx context.Context, f ReplayFilter, page int, fn func([]StoredEvent) error) error {
	after := f.AfterPosition
	var sent int64
	var types []string
	if len(f.EventTypes) > 0 {
		types = f.EventTypes
	}
	var from, to *time.Time
	if !f.From.IsZero() {
		from = &f.From
	}
	if !f.To.IsZero() {
		to = &f.To
	}
	var aggType *string
	if f.AggregateType != "" {
		aggType = &f.AggregateType
	}
	for {
		limit := int64(page)
		if f.Limit > 0 && f.Limit-sent < limit {
			limit = f.Limit - sent
		}
		if limit <= 0 {
			return nil
		}
		batch, err := s.events(ctx, `SELECT `+eventColumns+` FROM stored_events
			WHERE tenant_id = $1 AND position > $2
			  AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 10)
			  AND ($3::timestamptz IS NULL OR occurred_at >= $3)
			  AND ($4::timestamptz IS NULL OR occurred_at < $4)
			  AND ($5::varchar[] IS NULL OR event_type = ANY ($5))
			  AND ($6::varchar IS NULL OR aggregate_type = $6)
			ORDER BY position LIMIT $7`,
			f.TenantID, after, from, to, types, aggType, limit)
		if err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		if err := fn(batch); err != nil {
			return err
		}
		sent += int64(len(batch))
		after = batch[len(batch)-1].Position
		if int64(len(batch)) < limit {
			return nil
		}
	}
}
