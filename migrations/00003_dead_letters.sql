-- +goose Up
-- Dead letters of subscriptions. The guide's failed_events columns stay as they are;
-- these say where the event was consumed and keep the record as it was on Kafka, so
-- that RetryFailedEvents can publish it again unchanged (Avro bytes and all).
ALTER TABLE failed_events
    ADD COLUMN subscription      VARCHAR(255) NOT NULL DEFAULT '',
    ADD COLUMN topic             VARCHAR(249) NOT NULL DEFAULT '',
    ADD COLUMN kafka_partition   INTEGER NOT NULL DEFAULT -1,
    ADD COLUMN kafka_offset      BIGINT NOT NULL DEFAULT -1,
    ADD COLUMN dlq_topic         VARCHAR(249) NOT NULL DEFAULT '',
    ADD COLUMN record_key        BYTEA,
    ADD COLUMN record_value      BYTEA,
    -- [{"k": "ce_id", "v": "<base64>"}, ...] in record order.
    ADD COLUMN record_headers    JSONB,
    ADD COLUMN retries_published INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN retried_at        TIMESTAMP WITH TIME ZONE,
    ADD COLUMN resolved_at       TIMESTAMP WITH TIME ZONE;
-- Listing is per tenant, newest first, paged by (failed_at, id).
CREATE INDEX failed_events_tenant_failed_idx ON failed_events (tenant_id, failed_at DESC, id DESC);
