-- +goose Up
-- The event store: the guide's stored_events, aggregate_snapshots and failed_events, plus
-- what the guarantees need.
--
-- Global position. position = (xid8 of the appending transaction << 10) + index of the
-- event in its append (an append holds at most 1000 events). So:
-- (1) a reader that reads only positions below pg_snapshot_xmin(pg_current_snapshot())
--     << 10 sees only finished transactions: nothing can later commit below what it has
--     read (gap-safe, with no "skip gaps after N seconds" timer);
-- (2) within an aggregate, position order is version order: an append is one statement
--     in its own transaction, and it can only insert version v+1 once version v is
--     committed and visible to it (the UNIQUE (aggregate_id, version) index turns a race
--     into an error), so its xid is assigned after v's transaction ended.
-- Positions are unique and increasing, not dense.

-- An aggregate is its events: its owner (tenant), type and current version are those of
-- its latest event, found through the UNIQUE (aggregate_id, version) index.
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

-- Transactional outbox. The appended rows themselves are the outbox (written in the
-- append's transaction); the relay publishes them in position order and records here
-- how far Kafka has acknowledged. It reads below pg_snapshot_xmin like replay does, so
-- an event committing late with a lower position is never passed over. (A separate
-- outbox table would double the rows every append writes and add a delete per event.)
CREATE TABLE outbox_cursor (
    id         SMALLINT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    position   BIGINT NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);
INSERT INTO outbox_cursor (position) VALUES (0);
