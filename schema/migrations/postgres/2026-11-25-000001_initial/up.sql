-- Users of the REST API and the dashboard. Passwords are argon2id PHC strings.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL
);

-- Edge agents and OTA boards. token_id is the jti of the one device JWT that is valid now;
-- issuing a new token replaces it, which revokes the old one.
CREATE TABLE devices (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    company_id         TEXT,
    production_line_id TEXT,
    status             TEXT NOT NULL,
    version            TEXT,
    last_seen          TIMESTAMP,
    remote_addr        TEXT,
    token_id           TEXT,
    created_at         TIMESTAMP NOT NULL,
    updated_at         TIMESTAMP NOT NULL
);
CREATE INDEX devices_status_idx ON devices (status);

-- Every dispatched command and its outcome.
CREATE TABLE commands (
    id           TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    command_type TEXT NOT NULL,
    payload      TEXT NOT NULL,
    status       TEXT NOT NULL,
    success      BOOLEAN,
    output       TEXT,
    data         TEXT,
    issued_by    TEXT,
    timeout_ms   BIGINT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    sent_at      TIMESTAMP,
    completed_at TIMESTAMP
);
CREATE INDEX commands_device_created_idx ON commands (device_id, created_at);

-- Append-only record of privileged calls; rows are written before the action takes effect.
CREATE TABLE audit_log (
    id      TEXT PRIMARY KEY,
    ts      TIMESTAMP NOT NULL,
    actor   TEXT,
    role    TEXT,
    action  TEXT NOT NULL,
    target  TEXT,
    params  TEXT,
    source  TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_log_ts_idx ON audit_log (ts);
