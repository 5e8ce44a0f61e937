-- +goose Up
-- Sagas: the guide's workflow engine. Every state change of a saga is one transaction
-- that first locks the saga's row (so changes of one saga are serialized and its
-- events get consecutive sequence numbers), then writes its steps, the saga and its
-- events. Saga events are rows of stored_events (aggregate_type 'Saga', aggregate_id
-- the saga id) written in that same transaction: the outbox relay publishes them to
-- <prefix>.saga.events.

-- Workflow definitions, versioned. definition is the normalized definition (defaults
-- filled in) as JSON; digest is its SHA-256, so that re-registering an identical
-- definition is recognized and changes nothing.
CREATE TABLE saga_workflows (
    workflow_id VARCHAR(100) NOT NULL,
    version     INTEGER      NOT NULL,
    definition  JSONB        NOT NULL,
    digest      BYTEA        NOT NULL,
    created_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version)
);

-- One row per saga. current_step is the index of the step running or being
-- compensated. context is the start context with each completed step's output laid
-- over it. A running saga always has exactly one live task (a saga_steps row with
-- task_state set) until it ends: that is what keeps a saga from being forgotten.
CREATE TABLE sagas (
    saga_id          UUID PRIMARY KEY,
    tenant_id        UUID         NOT NULL,
    workflow_id      VARCHAR(100) NOT NULL,
    workflow_version INTEGER      NOT NULL,
    state            VARCHAR(16)  NOT NULL,
    current_step     INTEGER      NOT NULL,
    context          JSONB        NOT NULL,
    idempotency_key  VARCHAR(255),
    cancel_requested BOOLEAN      NOT NULL DEFAULT false,
    error_type       VARCHAR(100) NOT NULL DEFAULT '',
    error_message    TEXT         NOT NULL DEFAULT '',
    failed_step      INTEGER,
    created_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    updated_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    ended_at         TIMESTAMP WITH TIME ZONE,
    FOREIGN KEY (workflow_id, workflow_version) REFERENCES saga_workflows (workflow_id, version)
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX sagas_idempotency_idx ON sagas (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- ListSagas: per tenant, newest first, paged by (created_at, saga_id).
CREATE INDEX sagas_tenant_created_idx ON sagas (tenant_id, created_at DESC, saga_id DESC);
CREATE INDEX sagas_tenant_state_idx ON sagas (tenant_id, state, created_at DESC, saga_id DESC);

-- One row per step a saga reached (inserted when the step is first scheduled). The
-- step's live task, if any, is in the row: task_id is its lease token (a new random
-- one per attempt, so an answer to an attempt that timed out or was taken back matches
-- nothing), task_state 'ready' (claimable once ready_at has passed) or 'leased' (held
-- by a worker until deadline), queue 'a/<action>' or 'c/<compensation>'.
CREATE TABLE saga_steps (
    saga_id           UUID     NOT NULL REFERENCES sagas (saga_id) ON DELETE CASCADE,
    step_index        SMALLINT NOT NULL,
    status            VARCHAR(24) NOT NULL,
    attempt           INTEGER  NOT NULL DEFAULT 0,
    comp_attempt      INTEGER  NOT NULL DEFAULT 0,
    task_id           UUID,
    task_state        VARCHAR(8),
    task_kind         SMALLINT NOT NULL DEFAULT 0,
    queue             VARCHAR(110),
    timeout_ms        INTEGER  NOT NULL,
    ready_at          TIMESTAMP WITH TIME ZONE,
    deadline          TIMESTAMP WITH TIME ZONE,
    worker_id         VARCHAR(255),
    output            JSONB,
    error_type        VARCHAR(100) NOT NULL DEFAULT '',
    error_message     TEXT NOT NULL DEFAULT '',
    scheduled_at      TIMESTAMP WITH TIME ZONE,
    started_at        TIMESTAMP WITH TIME ZONE,
    finished_at       TIMESTAMP WITH TIME ZONE,
    comp_scheduled_at TIMESTAMP WITH TIME ZONE,
    compensated_at    TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (saga_id, step_index)
) WITH (fillfactor = 80);
CREATE UNIQUE INDEX saga_steps_task_idx ON saga_steps (task_id);
-- Claims: ready tasks of the worker's queues, oldest first (FOR UPDATE SKIP LOCKED).
CREATE INDEX saga_steps_ready_idx ON saga_steps (queue, ready_at) WHERE task_state = 'ready';
-- Timeouts: leased tasks by deadline (every sidecar's sweeper).
CREATE INDEX saga_steps_leased_idx ON saga_steps (deadline) WHERE task_state = 'leased';
