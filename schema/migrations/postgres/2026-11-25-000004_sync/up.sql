-- Production records synced from edge agents (`POST /api/v1/sync`), one table per kind. The
-- id is the record id the agent chose; a second delivery of it is a duplicate and is ignored.
CREATE TABLE aggregated_bottles (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    company_id  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL
);
CREATE TABLE aggregated_batches (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    company_id  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL
);
CREATE TABLE aggregated_pallets (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    company_id  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL
);
CREATE TABLE aggregated_batch_fixations (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    company_id  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    received_at TIMESTAMP NOT NULL
);

-- What is still to be pushed to the OKTO cloud, written in the same transaction as the
-- aggregated row so that nothing accepted from an edge can miss the cloud.
CREATE TABLE cloud_sync_queue (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    company_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_error      TEXT,
    created_at      TIMESTAMP NOT NULL
);
CREATE INDEX cloud_sync_queue_state_next_idx ON cloud_sync_queue (state, next_attempt_at);
