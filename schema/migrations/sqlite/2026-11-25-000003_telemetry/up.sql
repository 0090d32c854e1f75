-- The latest status a device reported, kept on its row for the device list and detail.
ALTER TABLE devices ADD COLUMN connection_mode TEXT;
ALTER TABLE devices ADD COLUMN boot_id TEXT;
ALTER TABLE devices ADD COLUMN run_id TEXT;
ALTER TABLE devices ADD COLUMN metrics TEXT;
ALTER TABLE devices ADD COLUMN status_at TIMESTAMP;

-- Log lines devices send, written in batches; pruned by the retention job.
CREATE TABLE device_logs (
    id        TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    ts        TIMESTAMP NOT NULL,
    level     TEXT NOT NULL,
    line      TEXT NOT NULL
);
CREATE INDEX device_logs_device_ts_idx ON device_logs (device_id, ts);
CREATE INDEX device_logs_ts_idx ON device_logs (ts);

-- scan, print and alert events, written in batches; pruned by the retention job.
CREATE TABLE device_events (
    id         TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    ts         TIMESTAMP NOT NULL,
    event_type TEXT NOT NULL,
    payload    TEXT NOT NULL
);
CREATE INDEX device_events_device_ts_idx ON device_events (device_id, ts);
CREATE INDEX device_events_ts_idx ON device_events (ts);

CREATE TABLE device_groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT,
    created_at  TIMESTAMP NOT NULL,
    updated_at  TIMESTAMP NOT NULL
);

CREATE TABLE device_group_members (
    group_id  TEXT NOT NULL REFERENCES device_groups (id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX device_group_members_device_idx ON device_group_members (device_id);
CREATE INDEX devices_company_idx ON devices (company_id);
CREATE INDEX devices_line_idx ON devices (production_line_id);
