-- +goose Up
-- Publishes accepted while Kafka was unreachable (or its breaker open), kept durably
-- until the relay publishes them. Each row is the Kafka record exactly as it would have
-- been sent (Avro bytes and CloudEvents headers included). A sidecar queues all its
-- publishes while any of its rows remain, so that per partition key they reach Kafka
-- in the order they were accepted.
CREATE TABLE publish_queue (
    position   BIGSERIAL PRIMARY KEY,
    origin     TEXT NOT NULL,
    event_id   UUID NOT NULL,
    event_type VARCHAR(255) NOT NULL,
    source     VARCHAR(255) NOT NULL,
    topic      VARCHAR(249) NOT NULL,
    record_key BYTEA,
    record_value BYTEA NOT NULL,
    -- uvarint count, then per header uvarint key length, key, uvarint value length, value.
    record_headers BYTEA NOT NULL,
    queued_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
);
CREATE INDEX publish_queue_origin_idx ON publish_queue (origin, position);


-- Relay fencing: the relay holding the advisory lock renews its lease here on the lock's
-- connection; a relay taking over waits until the previous lease has run out, and a
-- relay publishes only within its own lease.
ALTER TABLE outbox_cursor ADD COLUMN lease_until TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT '-infinity';
