-- Firmware deployments (`POST /api/v1/firmware/deployments`): one row per deployment and one
-- per target device. The release is named by id and its version copied, so the history stays
-- readable after a release is deleted (which is refused while a deployment still needs it).
CREATE TABLE firmware_deployments (
    id                        TEXT PRIMARY KEY,
    release_id                TEXT NOT NULL,
    version                   TEXT NOT NULL,
    status                    TEXT NOT NULL,
    paused_reason             TEXT,
    wave_size                 INTEGER NOT NULL,
    current_wave              INTEGER NOT NULL,
    waves                     INTEGER NOT NULL,
    max_concurrent_downloads  INTEGER,
    failure_threshold_percent INTEGER NOT NULL,
    soak_secs                 INTEGER NOT NULL,
    allow_downgrade           BOOLEAN NOT NULL DEFAULT 0,
    created_by                TEXT,
    created_at                TIMESTAMP NOT NULL,
    updated_at                TIMESTAMP NOT NULL
);
CREATE INDEX firmware_deployments_status ON firmware_deployments (status);
CREATE INDEX firmware_deployments_release ON firmware_deployments (release_id);

-- A device's part in a deployment. `command_id` is the update_firmware command in flight;
-- `run_id` is the device's run id when it came back on the new version, so a crash-restart
-- during the soak shows as a new one; `verified_at` is set when the soak passed.
CREATE TABLE firmware_deployment_devices (
    deployment_id TEXT NOT NULL REFERENCES firmware_deployments (id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL,
    wave          INTEGER NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT,
    command_id    TEXT,
    run_id        TEXT,
    soak_until    TIMESTAMP,
    verified_at   TIMESTAMP,
    updated_at    TIMESTAMP NOT NULL,
    PRIMARY KEY (deployment_id, device_id)
);
CREATE INDEX firmware_deployment_devices_device ON firmware_deployment_devices (device_id, status);
