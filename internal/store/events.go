package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventgw/eventgw/internal/resilience"
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
	pool    *pgxpool.Pool
	breaker *resilience.Breaker
}

// NewEvents uses pool.
func NewEvents(pool *pgxpool.Pool, opts ...Option) *Events {
	return &Events{pool: pool, breaker: buildOptions(opts).breaker}
}

// appendSQL appends in one statement (one round trip, its own transaction): it reads the
// aggregate's latest event (owner, type, version), and inserts the events only when the
// tenant, the type and the expected version match; otherwise it inserts nothing and
// answers what it found. A concurrent append of the same version fails on the UNIQUE
// (aggregate_id, version) index. $4: >= 0 exact version, -1 any, -2 no stream.
const appendSQL = `WITH chk AS (
	SELECT coalesce(c.version, 0)::bigint AS v, c.tenant_id AS t, c.aggregate_type AS typ
	  FROM (SELECT 1) one LEFT JOIN LATERAL (
	       SELECT version, tenant_id, aggregate_type FROM stored_events
	        WHERE aggregate_id = $3::uuid ORDER BY version DESC LIMIT 1) c ON true
), ins AS (
	INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version,
	                           event_type, event_data, occurred_at, metadata, position)
	SELECT u.id, $1::uuid, $2::varchar, $3::uuid, chk.v + u.ord, u.typ, u.dat::jsonb, u.occ, u.meta::jsonb,
	       (pg_current_xact_id()::text::bigint << 10) + u.ord - 1
	  FROM chk, unnest($5::uuid[], $6::varchar[], $7::text[], $8::text[], $9::timestamptz[])
	       WITH ORDINALITY AS u(id, typ, dat, meta, occ, ord)
	 WHERE (chk.t IS NULL OR (chk.t = $1::uuid AND chk.typ = $2::varchar))
	   AND ($4::bigint = -1 OR chk.v = $4::bigint OR ($4::bigint = -2 AND chk.v = 0))
	RETURNING position
)
SELECT chk.v, chk.t, chk.typ, ARRAY(SELECT position FROM ins ORDER BY position) FROM chk`

// appendRow is what appendSQL (and each row of appendManySQL) answers.
type appendRow struct {
	cur       int64
	owner     *uuid.UUID
	aggType   *string
	positions []int64
}

// outcome turns an answer into the append's result or error.
func (s *Events) outcome(ctx context.Context, req *AppendRequest, r *appendRow) (AppendResult, error) {
	if len(r.positions) > 0 {
		return AppendResult{Version: r.cur + int64(len(req.Events)), Positions: r.positions, PrevVersion: r.cur}, nil
	}
	// Nothing inserted. A retry of an append that succeeded is answered its original
	// result, whatever the aggregate's version is now.
	if res, found, err := s.duplicate(ctx, *req, eventIDs(req)); found || err != nil {
		return res, err
	}
	switch {
	case r.owner != nil && r.owner.String() != req.TenantID:
		return AppendResult{}, ErrNotFound
	case r.aggType != nil && *r.aggType != req.AggregateType:
		return AppendResult{}, &TypeMismatchError{Stored: *r.aggType}
	}
	return AppendResult{}, s.conflict(*req, r.cur)
}

func eventIDs(req *AppendRequest) []string {
	ids := make([]string, len(req.Events))
	for i := range req.Events {
		ids[i] = req.Events[i].ID
	}
	return ids
}

// Append appends req's events atomically with consecutive versions, in a statement and
// transaction of its own. The rows are the outbox: the relay publishes them once
// committed.
func (s *Events) Append(ctx context.Context, req AppendRequest) (res AppendResult, err error) {
	err = Do(ctx, s.breaker, ReadWrite, "append", func(ctx context.Context) error {
		res, err = s.append(ctx, req)
		return err
	})
	return res, err
}

func (s *Events) append(ctx context.Context, req AppendRequest) (AppendResult, error) {
	n := len(req.Events)
	ids := eventIDs(&req)
	types := make([]string, n)
	data := make([]string, n)
	meta := make([]string, n)
	occurred := make([]time.Time, n)
	for i, e := range req.Events {
		types[i], data[i], occurred[i] = e.Type, string(e.Data), e.OccurredAt
		meta[i] = "{}"
		if len(e.Metadata) > 0 {
			meta[i] = string(e.Metadata)
		}
	}
	for attempt := 0; ; attempt++ {
		var r appendRow
		err := s.pool.QueryRow(ctx, appendSQL, req.TenantID, req.AggregateType, req.AggregateID, req.Expected,
			ids, types, data, meta, occurred).Scan(&r.cur, &r.owner, &r.aggType, &r.positions)
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			return s.outcome(ctx, &req, &r)
		case errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "stored_events_pkey":
			res, _, err := s.duplicate(ctx, req, ids)
			return res, err
		case errors.As(err, &pgErr) && pgErr.Code == "23505":
			// A concurrent append took the version. With "any" that is no conflict: retry.
			if req.Expected == ExpectAny && attempt < 50 {
				continue
			}
			_, v, err := s.aggregate(ctx, req.TenantID, req.AggregateID)
			if err != nil {
				return AppendResult{}, err
			}
			return AppendResult{}, s.conflict(req, v)
		default:
			return AppendResult{}, fmt.Errorf("append: %w", err)
		}
	}
}

// appendManySQL appends to several distinct aggregates in one statement (group commit):
// the checks of appendSQL per append, one INSERT for the events of every append that
// passes, and per append what was found and the positions it got. Appends are given
// sorted by aggregate id, so two concurrent statements take index locks in one order.
const appendManySQL = `WITH a AS (
	SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::uuid[], $4::bigint[])
	       WITH ORDINALITY AS a(tenant, agg_type, agg, expected, ai)
), chk AS (
	SELECT a.*, coalesce(c.version, 0)::bigint AS v, c.tenant_id AS t, c.aggregate_type AS typ
	  FROM a LEFT JOIN LATERAL (
	       SELECT version, tenant_id, aggregate_type FROM stored_events e
	        WHERE e.aggregate_id = a.agg ORDER BY e.version DESC LIMIT 1) c ON true
), ok AS (
	SELECT * FROM chk
	 WHERE (t IS NULL OR (t = tenant AND typ = agg_type))
	   AND (expected = -1 OR v = expected OR (expected = -2 AND v = 0))
), ev AS (
	SELECT u.*, row_number() OVER (PARTITION BY u.ai ORDER BY u.ord) AS seq
	  FROM unnest($5::bigint[], $6::uuid[], $7::varchar[], $8::text[], $9::text[], $10::timestamptz[])
	       WITH ORDINALITY AS u(ai, id, typ, dat, meta, occ, ord)
), ins AS (
	INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version,
	                           event_type, event_data, occurred_at, metadata, position)
	SELECT ev.id, ok.tenant, ok.agg_type, ok.agg, ok.v + ev.seq, ev.typ, ev.dat::jsonb, ev.occ, ev.meta::jsonb,
	       (pg_current_xact_id()::text::bigint << 10) + ev.ord - 1
	  FROM ev JOIN ok ON ok.ai = ev.ai
	RETURNING aggregate_id, position
)
SELECT chk.ai, chk.v, chk.t, chk.typ,
       ARRAY(SELECT position FROM ins WHERE ins.aggregate_id = chk.agg ORDER BY position)
  FROM chk ORDER BY chk.ai`

// AppendMany appends to distinct aggregates in one statement and one transaction; each
// append gets its own outcome. When the statement fails as a whole (a unique violation:
// a re-sent event id, or a race with another sidecar), every append runs again alone.
func (s *Events) AppendMany(ctx context.Context, reqs []*AppendRequest) ([]AppendResult, []error) {
	var results []AppendResult
	var errs []error
	err := Do(ctx, s.breaker, ReadWrite, "append", func(ctx context.Context) error {
		results, errs = s.appendMany(ctx, reqs)
		// For the breaker: PostgreSQL's failure if any append met one, else the first
		// refusal (an answer).
		var first error
		for _, err := range errs {
			var ue *UnavailableError
			if errors.As(classify(ctx, ReadWrite, "append", err), &ue) {
				return err
			}
			if first == nil {
				first = err
			}
		}
		return first
	})
	if errs == nil { // refused by the breaker
		results, errs = make([]AppendResult, len(reqs)), make([]error, len(reqs))
		for i := range errs {
			errs[i] = err
		}
		return results, errs
	}
	for i := range errs {
		errs[i] = classify(ctx, ReadWrite, "append", errs[i])
	}
	return results, errs
}

func (s *Events) appendMany(ctx context.Context, reqs []*AppendRequest) ([]AppendResult, []error) {
	results := make([]AppendResult, len(reqs))
	errs := make([]error, len(reqs))
	var (
		tenants, aggTypes, aggs []string
		expected                []int64
		ai                      []int64
		ids, types, data, meta  []string
		occurred                []time.Time
	)
	for i, r := range reqs {
		tenants = append(tenants, r.TenantID)
		aggTypes = append(aggTypes, r.AggregateType)
		aggs = append(aggs, r.AggregateID)
		expected = append(expected, r.Expected)
		for _, e := range r.Events {
			ai = append(ai, int64(i+1))
			ids = append(ids, e.ID)
			types = append(types, e.Type)
			data = append(data, string(e.Data))
			m := "{}"
			if len(e.Metadata) > 0 {
				m = string(e.Metadata)
			}
			meta = append(meta, m)
			occurred = append(occurred, e.OccurredAt)
		}
	}
	rows, err := s.pool.Query(ctx, appendManySQL, tenants, aggTypes, aggs, expected, ai, ids, types, data, meta, occurred)
	found := make([]appendRow, len(reqs))
	if err == nil {
		n := 0
		for rows.Next() {
			var idx int64
			r := &appendRow{}
			if err = rows.Scan(&idx, &r.cur, &r.owner, &r.aggType, &r.positions); err != nil {
				break
			}
			if idx >= 1 && int(idx) <= len(found) {
				found[idx-1] = *r
				n++
			}
		}
		rows.Close()
		if err == nil {
			err = rows.Err()
		}
		if err == nil && n != len(reqs) {
			err = fmt.Errorf("append: %d answers for %d appends", n, len(reqs))
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			for i := range errs {
				errs[i] = fmt.Errorf("append: %w", err)
			}
			return results, errs
		}
		for i, r := range reqs {
			results[i], errs[i] = s.append(ctx, *r)
		}
		return results, errs
	}
	for i, r := range reqs {
		results[i], errs[i] = s.outcome(ctx, r, &found[i])
	}
	return results, errs
}

func (s *Events) conflict(req AppendRequest, cur int64) error {
	exp := strconv.FormatInt(req.Expected, 10)
	if req.Expected == ExpectNoStream {
		exp = "no stream"
	}
	return &ConflictError{AggregateID: req.AggregateID, Current: cur, Expected: exp}
}

// duplicate answers a re-sent append: found is false when none of the ids is stored;
// otherwise the original result when every id is stored on this aggregate, or an error.
func (s *Events) duplicate(ctx context.Context, req AppendRequest, ids []string) (AppendResult, bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT event_id, aggregate_id, tenant_id, version, position
		FROM stored_events WHERE event_id = ANY ($1::uuid[])`, ids)
	if err != nil {
		return AppendResult{}, false, fmt.Errorf("append: %w", err)
	}
	type found struct{ version, position int64 }
	byID := map[string]found{}
	other := false
	for rows.Next() {
		var id, agg, tenant uuid.UUID
		var version int32
		var pos int64
		if err := rows.Scan(&id, &agg, &tenant, &version, &pos); err != nil {
			rows.Close()
			return AppendResult{}, false, fmt.Errorf("append: %w", err)
		}
		if agg.String() != req.AggregateID || tenant.String() != req.TenantID {
			other = true
		}
		byID[id.String()] = found{int64(version), pos}
	}
	if err := rows.Err(); err != nil {
		return AppendResult{}, false, fmt.Errorf("append: %w", err)
	}
	switch {
	case len(byID) == 0:
		return AppendResult{}, false, nil
	case other:
		return AppendResult{}, true, ErrEventIDTaken
	case len(byID) != len(ids):
		return AppendResult{}, true, ErrPartialDuplicate
	}
	res := AppendResult{Duplicate: true, Positions: make([]int64, len(ids))}
	for i, id := range ids {
		f := byID[id]
		res.Positions[i] = f.position
		res.Version = max(res.Version, f.version)
	}
	return res, true, nil
}

const eventColumns = `event_id, tenant_id, aggregate_type, aggregate_id, version, event_type, event_data, metadata, occurred_at, recorded_at, position`

func scanEvent(rows pgx.Rows, e *StoredEvent) error {
	var id, tenant, agg uuid.UUID
	var version int32
	// As [16]byte, pgx copies the binary value; as uuid.UUID (an sql.Scanner) it would
	// format and parse text.
	if err := rows.Scan((*[16]byte)(&id), (*[16]byte)(&tenant), &e.AggregateType, (*[16]byte)(&agg), &version, &e.Type, &e.Data, &e.Metadata, &e.OccurredAt, &e.RecordedAt, &e.Position); err != nil {
		return err
	}
	e.EventID, e.TenantID, e.AggregateID, e.Version = id.String(), tenant.String(), agg.String(), int64(version)
	return nil
}

// PageLimit bounds the pages of events ReadAggregate and Replay read: at most Rows
// events, and no more events once the page holds Bytes (EventBytes) or more; a single
// event larger than Bytes makes a page alone. Bytes 0: rows only. The next page starts
// after the last event of the previous one, so a page cut by bytes loses nothing.
//
// Bytes bound the memory a page holds (Bytes plus one event) and, through the caller,
// the size of the message it makes: a page of Rows events of --max-event-bytes each
// would otherwise be far over any gRPC message limit.
type PageLimit struct {
	Rows  int
	Bytes int
}

// eventOverhead is what an event's fixed fields (ids, version, times, position) count
// for a page's bytes.
const eventOverhead = 128

// EventBytes is what an event counts for a page's byte bound: its data, metadata and
// names, and its fixed fields.
func EventBytes(e *StoredEvent) int {
	return len(e.Data) + len(e.Metadata) + len(e.Type) + len(e.AggregateType) + eventOverhead
}

// ReadAggregate calls fn with pages of the aggregate's events from version from on, in
// version order, page events at a time. It answers ErrNotFound when the tenant has no
// such aggregate.
func (s *Events) ReadAggregate(ctx context.Context, tenantID, aggregateID string, from int64, page int, fn func([]StoredEvent) error) error {
	return s.ReadAggregatePages(ctx, tenantID, aggregateID, from, PageLimit{Rows: page}, fn)
}

// ReadAggregatePages is ReadAggregate with pages bounded by lim (rows and bytes).
func (s *Events) ReadAggregatePages(ctx context.Context, tenantID, aggregateID string, from int64, lim PageLimit, fn func([]StoredEvent) error) error {
	if err := Do(ctx, s.breaker, ReadOnly, "read aggregate", func(ctx context.Context) error {
		_, _, err := s.aggregate(ctx, tenantID, aggregateID)
		return err
	}); err != nil {
		return err
	}
	if from < 1 {
		from = 1
	}
	return paged(lim, func(prev []StoredEvent, rows int) ([]StoredEvent, bool, error) {
		if prev != nil {
			from = prev[len(prev)-1].Version + 1
		}
		// The tenant owns the aggregate (checked above): all its events are the tenant's.
		return s.events(ctx, lim.Bytes, `SELECT `+eventColumns+` FROM stored_events
			WHERE aggregate_id = $1 AND version >= $2 ORDER BY version LIMIT $3`,
			aggregateID, from, rows)
	}, fn)
}

// firstPageRows is the row limit of a first page bounded by bytes: pages grow from it
// while they are neither full of bytes nor short (so a page of big events does not
// read lim.Rows of them only to drop all but the first few).
const firstPageRows = 64

// paged calls fn with each page next reads, until a page comes back short. next gets the
// previous page (nil at first) and the most rows to read, and answers the page and
// whether it was cut by lim.Bytes (not the end, however short). The row limit adapts
// when lim.Bytes is set: it doubles after a full page, and after a cut one it becomes a
// little more than the rows that fitted, so that few rows are read past the cut.
func paged(lim PageLimit, next func(prev []StoredEvent, rows int) ([]StoredEvent, bool, error), fn func([]StoredEvent) error) error {
	var prev []StoredEvent
	rows := lim.Rows
	if lim.Bytes > 0 {
		rows = min(rows, firstPageRows)
	}
	for {
		batch, cut, err := next(prev, rows)
		if err != nil || len(batch) == 0 {
			return err
		}
		if err := fn(batch); err != nil {
			return err
		}
		switch {
		case cut:
			rows = min(lim.Rows, len(batch)+len(batch)/2+1)
		case len(batch) < rows:
			return nil
		default:
			rows = min(lim.Rows, 2*rows)
		}
		prev = batch
	}
}

// events reads one page of events, as a store call of its own (the pages' consumer
// works between calls, outside the breaker).
func (s *Events) events(ctx context.Context, maxBytes int, sql string, args ...any) (out []StoredEvent, cut bool, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "read events", func(ctx context.Context) error {
		out, cut, err = s.readEvents(ctx, maxBytes, sql, args...)
		return err
	})
	return out, cut, err
}

// readEvents reads the rows of sql; with maxBytes > 0 it stops once they hold maxBytes
// (EventBytes) or more, and reports the page cut.
func (s *Events) readEvents(ctx context.Context, maxBytes int, sql string, args ...any) ([]StoredEvent, bool, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, false, fmt.Errorf("read events: %w", err)
	}
	defer rows.Close()
	var out []StoredEvent
	size, cut := 0, false
	for !cut && rows.Next() {
		out = append(out, StoredEvent{})
		e := &out[len(out)-1]
		if err := scanEvent(rows, e); err != nil {
			return nil, false, fmt.Errorf("read events: %w", err)
		}
		size += EventBytes(e)
		cut = maxBytes > 0 && size >= maxBytes
	}
	rows.Close() // the rows after a cut are read and dropped
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read events: %w", err)
	}
	return out, cut, nil
}

// latestSQL reads an aggregate's latest event through the (aggregate_id, version) index;
// the tenant is compared by the caller, so that no plan prefers the tenant index.
const latestSQL = `SELECT aggregate_type, version, tenant_id FROM stored_events WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1`

// aggregate returns the aggregate's type and version, or ErrNotFound (also when another
// tenant owns it).
func (s *Events) aggregate(ctx context.Context, tenantID, aggregateID string) (string, int64, error) {
	var typ string
	var version int32
	var owner uuid.UUID
	err := s.pool.QueryRow(ctx, latestSQL, aggregateID).Scan(&typ, &version, &owner)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && owner.String() != tenantID) {
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
func (s *Events) Load(ctx context.Context, tenantID, aggregateID string) (l *Loaded, err error) {
	err = Do(ctx, s.breaker, ReadOnly, "load aggregate", func(ctx context.Context) error {
		l, err = s.load(ctx, tenantID, aggregateID)
		return err
	})
	return l, err
}

func (s *Events) load(ctx context.Context, tenantID, aggregateID string) (*Loaded, error) {
	b := &pgx.Batch{}
	b.Queue(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`)
	b.Queue(latestSQL, aggregateID)
	b.Queue(`SELECT id, version, state FROM aggregate_snapshots WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1`, aggregateID)
	b.Queue(`SELECT `+eventColumns+` FROM stored_events WHERE aggregate_id = $1
		AND version > coalesce((SELECT max(version) FROM aggregate_snapshots WHERE aggregate_id = $1), 0)
		ORDER BY version`, aggregateID)
	b.Queue(`COMMIT`)
	br := s.pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return nil, fmt.Errorf("load aggregate: %w", err)
	}
	l := &Loaded{}
	var version int32
	var owner uuid.UUID
	if err := br.QueryRow().Scan(&l.AggregateType, &version, &owner); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("load aggregate: %w", err)
	}
	if owner.String() != tenantID {
		return nil, ErrNotFound
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

// SaveSnapshot stores state at version. It is refused (ErrSnapshotVersion) when the
// aggregate has no such version or a snapshot at that version or later exists.
func (s *Events) SaveSnapshot(ctx context.Context, tenantID, aggregateID string, version int64, state []byte) (string, error) {
	return s.saveSnapshot(ctx, tenantID, aggregateID, version, state, false)
}

const saveSnapshotSQL = `INSERT INTO aggregate_snapshots (id, tenant_id, aggregate_type, aggregate_id, version, state, created_at)
	SELECT $1, e.tenant_id, e.aggregate_type, e.aggregate_id, $4, $5::jsonb, now()
	  FROM stored_events e
	 WHERE e.aggregate_id = $2 AND e.tenant_id = $3 AND e.version = $4
	   AND NOT EXISTS (SELECT 1 FROM aggregate_snapshots s WHERE s.aggregate_id = $2 AND s.version >= $4)
	ON CONFLICT DO NOTHING`

// saveSnapshot saves a snapshot. lazy commits without waiting for the WAL flush: for
// automatic snapshots, whose loss in a crash only means folding a longer tail (the
// events they derive from are already durable), and whose flush would otherwise queue
// in front of the appends' own.
func (s *Events) saveSnapshot(ctx context.Context, tenantID, aggregateID string, version int64, state []byte, lazy bool) (id string, err error) {
	err = Do(ctx, s.breaker, ReadWrite, "save snapshot", func(ctx context.Context) error {
		id, err = s.insertSnapshot(ctx, tenantID, aggregateID, version, state, lazy)
		return err
	})
	return id, err
}

func (s *Events) insertSnapshot(ctx context.Context, tenantID, aggregateID string, version int64, state []byte, lazy bool) (string, error) {
	id := uuid.Must(uuid.NewV7())
	var tag pgconn.CommandTag
	var err error
	if lazy {
		b := &pgx.Batch{}
		b.Queue(`BEGIN`)
		b.Queue(`SET LOCAL synchronous_commit = off`)
		b.Queue(saveSnapshotSQL, id, aggregateID, tenantID, version, string(state)).Exec(func(t pgconn.CommandTag) error {
			tag = t
			return nil
		})
		b.Queue(`COMMIT`)
		err = s.pool.SendBatch(ctx, b).Close()
	} else {
		tag, err = s.pool.Exec(ctx, saveSnapshotSQL, id, aggregateID, tenantID, version, string(state))
	}
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
	return s.ReplayPages(ctx, f, PageLimit{Rows: page}, fn)
}

// ReplayPages is Replay with pages bounded by lim (rows and bytes).
func (s *Events) ReplayPages(ctx context.Context, f ReplayFilter, lim PageLimit, fn func([]StoredEvent) error) error {
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
	return paged(lim, func(prev []StoredEvent, rows int) ([]StoredEvent, bool, error) {
		if prev != nil {
			sent += int64(len(prev))
			after = prev[len(prev)-1].Position
		}
		limit := int64(rows)
		if f.Limit > 0 && f.Limit-sent < limit {
			limit = f.Limit - sent
		}
		if limit <= 0 {
			return nil, false, nil
		}
		return s.events(ctx, lim.Bytes, `SELECT `+eventColumns+` FROM stored_events
			WHERE tenant_id = $1 AND position > $2
			  AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 10)
			  AND ($3::timestamptz IS NULL OR occurred_at >= $3)
			  AND ($4::timestamptz IS NULL OR occurred_at < $4)
			  AND ($5::varchar[] IS NULL OR event_type = ANY ($5))
			  AND ($6::varchar IS NULL OR aggregate_type = $6)
			ORDER BY position LIMIT $7`,
			f.TenantID, after, from, to, types, aggType, limit)
	}, fn)
}
