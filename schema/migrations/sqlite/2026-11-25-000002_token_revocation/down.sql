DROP INDEX audit_log_target_idx;
DROP INDEX audit_log_action_idx;
DROP INDEX audit_log_actor_idx;
ALTER TABLE users DROP COLUMN token_version;
DROP TABLE revoked_tokens;
