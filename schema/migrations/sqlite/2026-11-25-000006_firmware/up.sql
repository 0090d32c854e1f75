-- Firmware releases (`POST /api/v1/firmware/releases`). The artifact lives in
-- `<data dir>/firmware/<stored_name>`; the row is written only after the file is complete, so
-- a row always names a whole file. (project, version, filename) identifies a release.
CREATE TABLE firmware_releases (
    id                   TEXT PRIMARY KEY,
    project              TEXT NOT NULL,
    version              TEXT NOT NULL,
    channel              TEXT NOT NULL,
    filename             TEXT NOT NULL,
    stored_name          TEXT NOT NULL UNIQUE,
    size_bytes           BIGINT NOT NULL,
    sha256               TEXT NOT NULL,
    signature_base64     TEXT,
    signature_expires_at TIMESTAMP,
    uploaded_by          TEXT,
    created_at           TIMESTAMP NOT NULL,
    UNIQUE (project, version, filename)
);
CREATE INDEX firmware_releases_project ON firmware_releases (project, created_at);
