-- Charts (issue 21): each device's numeric status metrics as a time series, rolled up by the
-- janitor into minute and hour buckets, and the online devices per bucket. Times are epoch
-- milliseconds (BIGINT): a bucket is plain integer arithmetic, the same SQL on both backends.

-- One row per numeric metric of a status frame; kept `metrics_raw_retention_hours`. The key is
-- the table itself (WITHOUT ROWID), so a status delivered twice is stored once.
CREATE TABLE metric_samples (
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric    TEXT NOT NULL,
    ts        BIGINT NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, metric, ts)
) WITHOUT ROWID;
-- The rollup and the retention read by time alone.
CREATE INDEX metric_samples_ts_idx ON metric_samples (ts);

-- Minute and hour buckets: `bucket` is the bucket's first millisecond; the sum (not the
-- average) is kept so that hours are summed exactly from minutes.
CREATE TABLE metric_minutes (
    device_id    TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric       TEXT NOT NULL,
    bucket       BIGINT NOT NULL,
    min_value    DOUBLE PRECISION NOT NULL,
    max_value    DOUBLE PRECISION NOT NULL,
    sum_value    DOUBLE PRECISION NOT NULL,
    sample_count BIGINT NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) WITHOUT ROWID;
CREATE INDEX metric_minutes_bucket_idx ON metric_minutes (bucket);

CREATE TABLE metric_hours (
    device_id    TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    metric       TEXT NOT NULL,
    bucket       BIGINT NOT NULL,
    min_value    DOUBLE PRECISION NOT NULL,
    max_value    DOUBLE PRECISION NOT NULL,
    sum_value    DOUBLE PRECISION NOT NULL,
    sample_count BIGINT NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
) WITHOUT ROWID;
CREATE INDEX metric_hours_bucket_idx ON metric_hours (bucket);

-- Devices that sent a status in each minute and hour, counted by the same rollup.
CREATE TABLE online_minutes (
    bucket  BIGINT PRIMARY KEY NOT NULL,
    devices BIGINT NOT NULL
);
CREATE TABLE online_hours (
    bucket  BIGINT PRIMARY KEY NOT NULL,
    devices BIGINT NOT NULL
);

-- The counters read the rows already stored, by time; these indexes keep that a range scan.
CREATE INDEX aggregated_batches_created_idx ON aggregated_batches (created_at);
CREATE INDEX aggregated_pallets_created_idx ON aggregated_pallets (created_at);
CREATE INDEX commands_created_idx ON commands (created_at);
CREATE INDEX firmware_deployment_devices_updated_idx ON firmware_deployment_devices (updated_at);

-- The production counters' source: scans (valid or not) and prints from device events, batches
-- and pallets from synced records, each with its device's line and company and its minute. The
-- minute is the one thing each dialect spells its own way, so it is computed here and the
-- server's queries stay one text. A scan's payload is `{"code":…,"valid":…}` with `valid` last.
CREATE VIEW production_events AS
    SELECT e.device_id AS device_id, d.company_id AS company_id,
           d.production_line_id AS production_line_id,
           CASE WHEN e.event_type = 'print' THEN 'print'
                WHEN e.payload LIKE '%"valid":true}' THEN 'scan_valid'
                ELSE 'scan_invalid' END AS kind,
           e.ts AS ts,
           (CAST(strftime('%s', e.ts) AS INTEGER) / 60) * 60000 AS minute
    FROM device_events e JOIN devices d ON d.id = e.device_id
    WHERE e.event_type IN ('scan', 'print')
    UNION ALL
    SELECT b.device_id, b.company_id, d.production_line_id, 'batch', b.created_at,
           (CAST(strftime('%s', b.created_at) AS INTEGER) / 60) * 60000
    FROM aggregated_batches b LEFT JOIN devices d ON d.id = b.device_id
    UNION ALL
    SELECT p.device_id, p.company_id, d.production_line_id, 'pallet', p.created_at,
           (CAST(strftime('%s', p.created_at) AS INTEGER) / 60) * 60000
    FROM aggregated_pallets p LEFT JOIN devices d ON d.id = p.device_id;

-- Commands by the minute they were created, with the state they are in now.
CREATE VIEW command_minutes AS
    SELECT c.status AS status, c.created_at AS ts,
           (CAST(strftime('%s', c.created_at) AS INTEGER) / 60) * 60000 AS minute
    FROM commands c;

-- Deployment targets by the minute of their last change, with the state it left them in.
CREATE VIEW deployment_device_minutes AS
    SELECT t.status AS status, t.updated_at AS ts,
           (CAST(strftime('%s', t.updated_at) AS INTEGER) / 60) * 60000 AS minute
    FROM firmware_deployment_devices t;
