-- +goose Up
-- The event store: the guide's stored_events, aggregate_snapshots and failed_events, plus
-- what the guarantees need.
--
-- Global position. position = (xid8 of the appending transaction << 10) + index of the
-- event in its append (an append holds at most 1000 events). Every append first takes a
-- transaction-level advisory lock on its aggregate, before anything assigns it an xid,
-- so (1) within an aggregate, position order is version order, and (2) a reader that
-- reads only positions below pg_snapshot_xmin(pg_current_snapshot()) << 10 sees only
-- finished transactions: nothing can later commit below what it has read (gap-safe,
-- with no "skip gaps after N seconds" timer). Positions are unique and increasing, not
-- dense.

-- One row per aggregate: its owner (tenant), type and current version.
CREATE TABLE aggregates (
    aggregate_id   UUID PRIMARY KEY,
    tenant_id      UUID NOT NULL,
    aggregate_type VARCHAR(100) NOT NULL,
    version        INTEGER NOT NULL,
    created_at     TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    updated_at     TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);

CREATE TABLE stored_events (
    event_id       UUID PRIMARY KEY,
    tenant_id      UUID NOT NULL,
    aggregate_type VARCHAR(100) NOT NULL,
    aggregate_id   UUID NOT NULL,
    version        INTEGER NOT NULL,
    event_type     VARCHAR(100) NOT NULL,
    event_data     JSONB NOT NULL,
    occurred_at    TIMESTAMP WITH TIME ZONE NOT NULL,
    metadata       JSONB DEFAULT '{}'::jsonb,
    position       BIGINT NOT NULL,
    recorded_at    TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    UNIQUE (aggregate_id, version)
);
CREATE UNIQUE INDEX stored_events_position_idx ON stored_events (position);
-- Replay is always per tenant, in position order.
CREATE INDEX stored_events_tenant_position_idx ON stored_events (tenant_id, position);

CREATE TABLE aggregate_snapshots (
    id             UUID PRIMARY KEY,
    tenant_id      UUID NOT NULL,
    aggregate_type VARCHAR(100) NOT NULL,
    aggregate_id   UUID NOT NULL,
    version        INTEGER NOT NULL,
    state          JSONB NOT NULL,
    created_at     TIMESTAMP WITH TIME ZONE NOT NULL
);
CREATE UNIQUE INDEX aggregate_snapshots_aggregate_version_idx ON aggregate_snapshots (aggregate_id, version DESC);

CREATE TABLE failed_events (
    id             UUID PRIMARY KEY,
    tenant_id      UUID NOT NULL,
    event_id       UUID NOT NULL,
    event_type     VARCHAR(100) NOT NULL,
    event_payload  JSONB NOT NULL,
    error_type     VARCHAR(255) NOT NULL,
    error_message  TEXT,
    retry_count    INTEGER NOT NULL DEFAULT 0,
    failed_at      TIMESTAMP WITH TIME ZONE NOT NULL,
    retried        BOOLEAN NOT NULL DEFAULT FALSE,
    resolved       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX failed_events_tenant_idx ON failed_events (tenant_id, failed_at DESC) WHERE NOT resolved;

-- Transactional outbox: one row per appended event, written in the append's transaction,
-- deleted once Kafka acknowledged it. shard = hash(aggregate id) mod the shard count;
-- one sidecar at a time owns a shard (advisory lock) and publishes it in position order.
CREATE TABLE event_outbox (
    position BIGINT PRIMARY KEY,
    shard    SMALLINT NOT NULL
);
CREATE INDEX event_outbox_shard_position_idx ON event_outbox (shard, position);

-- eventgw_append appends events to one aggregate in one round trip. p_expected: >= 0
-- the exact current version (0: must not exist), -1 any, -2 no stream. Errors:
-- EG001 version conflict (DETAIL: current version), EG002 aggregate of another tenant,
-- EG003 an event id stored on another aggregate, EG004 aggregate type differs,
-- EG005 some (not all) of the event ids already stored.
-- +goose StatementBegin
CREATE FUNCTION eventgw_append(
    p_tenant uuid, p_aggregate_type varchar, p_aggregate_id uuid, p_expected bigint,
    p_ids uuid[], p_types varchar[], p_data text[], p_metadata text[], p_occurred timestamptz[],
    p_shard smallint)
RETURNS TABLE (new_version bigint, positions bigint[], duplicate boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_exists  boolean;
    v_tenant  uuid;
    v_type    varchar;
    v_version bigint := 0;
    v_n       integer := cardinality(p_ids);
    v_mine    integer;
    v_other   integer;
    v_base    bigint;
BEGIN
    -- Serialize appends to this aggregate before anything assigns this transaction an xid.
    PERFORM pg_advisory_xact_lock(1162302257, hashtext(p_aggregate_id::text));

    SELECT a.tenant_id, a.aggregate_type, a.version INTO v_tenant, v_type, v_version
      FROM aggregates a WHERE a.aggregate_id = p_aggregate_id;
    v_exists := FOUND;
    v_version := coalesce(v_version, 0);
    IF v_exists AND v_tenant <> p_tenant THEN
        RAISE EXCEPTION 'aggregate not found' USING ERRCODE = 'EG002';
    END IF;

    -- Idempotency: the same event ids again answer the original result.
    SELECT count(*) FILTER (WHERE e.aggregate_id = p_aggregate_id),
           count(*) FILTER (WHERE e.aggregate_id <> p_aggregate_id)
      INTO v_mine, v_other
      FROM stored_events e WHERE e.event_id = ANY (p_ids);
    IF v_other > 0 THEN
        RAISE EXCEPTION 'event id stored on another aggregate' USING ERRCODE = 'EG003';
    END IF;
    IF v_mine = v_n THEN
        RETURN QUERY SELECT
            (SELECT max(e.version)::bigint FROM stored_events e WHERE e.event_id = ANY (p_ids)),
            ARRAY(SELECT e.position FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
                  JOIN stored_events e ON e.event_id = u.id ORDER BY u.ord),
            true;
        RETURN;
    ELSIF v_mine > 0 THEN
        RAISE EXCEPTION 'some event ids already stored' USING ERRCODE = 'EG005';
    END IF;

    IF (p_expected = -2 AND v_exists) OR (p_expected >= 0 AND p_expected <> v_version) THEN
        RAISE EXCEPTION 'version conflict' USING ERRCODE = 'EG001', DETAIL = v_version::text;
    END IF;
    IF v_exists AND v_type <> p_aggregate_type THEN
        RAISE EXCEPTION 'aggregate type differs' USING ERRCODE = 'EG004', DETAIL = v_type;
    END IF;

    v_base := pg_current_xact_id()::text::bigint << 10;
    IF v_exists THEN
        UPDATE aggregates SET version = v_version + v_n, updated_at = now()
         WHERE aggregate_id = p_aggregate_id;
    ELSE
        INSERT INTO aggregates (aggregate_id, tenant_id, aggregate_type, version)
        VALUES (p_aggregate_id, p_tenant, p_aggregate_type, v_n);
    END IF;
    INSERT INTO stored_events (event_id, tenant_id, aggregate_type, aggregate_id, version,
                               event_type, event_data, occurred_at, metadata, position)
    SELECT u.id, p_tenant, p_aggregate_type, p_aggregate_id, v_version + u.ord,
           u.typ, u.dat::jsonb, u.occ, u.meta::jsonb, v_base + u.ord - 1
      FROM unnest(p_ids, p_types, p_data, p_metadata, p_occurred)
           WITH ORDINALITY AS u(id, typ, dat, meta, occ, ord);
    INSERT INTO event_outbox (position, shard)
    SELECT v_base + g, p_shard FROM generate_series(0, v_n - 1) AS g;
    PERFORM pg_notify('eventgw_outbox', p_shard::text);
    RETURN QUERY SELECT v_version + v_n, ARRAY(SELECT v_base + g FROM generate_series(0, v_n - 1) AS g), false;
END
$$;
-- +goose StatementEnd
