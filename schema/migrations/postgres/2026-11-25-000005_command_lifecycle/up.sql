-- Progress, queueing for offline devices, and confirmation of restarts and reboots.
ALTER TABLE commands ADD COLUMN progress BIGINT;
ALTER TABLE commands ADD COLUMN progress_message TEXT;
ALTER TABLE commands ADD COLUMN expires_at TIMESTAMP;
-- The run id (restart_service) or boot id (reboot_os) the device had when the command was
-- sent; the command is CONFIRMED once the device reports a different one.
ALTER TABLE commands ADD COLUMN confirm_previous TEXT;
ALTER TABLE commands ADD COLUMN confirm_deadline TIMESTAMP;
CREATE INDEX commands_device_status_idx ON commands (device_id, status);
CREATE INDEX commands_status_idx ON commands (status);
