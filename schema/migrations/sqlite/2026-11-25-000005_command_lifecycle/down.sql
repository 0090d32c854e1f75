DROP INDEX commands_status_idx;
DROP INDEX commands_device_status_idx;
ALTER TABLE commands DROP COLUMN confirm_deadline;
ALTER TABLE commands DROP COLUMN confirm_previous;
ALTER TABLE commands DROP COLUMN expires_at;
ALTER TABLE commands DROP COLUMN progress_message;
ALTER TABLE commands DROP COLUMN progress;
