-- Logged-out user tokens, kept until they would have expired anyway, then pruned.
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    subject    TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP NOT NULL
);
CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);

-- Every user token carries the version current when it was issued; disabling a user, changing
-- a password or a role bumps it, which revokes all of that user's earlier tokens at once.
ALTER TABLE users ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;

CREATE INDEX audit_log_actor_idx ON audit_log (actor);
CREATE INDEX audit_log_action_idx ON audit_log (action);
CREATE INDEX audit_log_target_idx ON audit_log (target);
