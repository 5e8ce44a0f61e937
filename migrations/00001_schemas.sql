-- +goose Up
-- Avro schemas registered through the gateway. The registry is the source of truth for
-- ids; this table lets the sidecar re-seed a registry that forgot them (the dev registry
-- keeps nothing) and lists schemas without a registry round trip.
CREATE TABLE event_schemas (
    subject       VARCHAR(255) NOT NULL,
    version       INTEGER      NOT NULL,
    event_type    VARCHAR(100) NOT NULL,
    schema_id     INTEGER      NOT NULL,
    schema        TEXT         NOT NULL,
    registered_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);
CREATE INDEX event_schemas_event_type_idx ON event_schemas (event_type, version DESC);
