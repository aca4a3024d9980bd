-- The console and admin API v2 (issue 16): invitations can be revoked; users sign in to the
-- console with a password (argon2id PHC string) and are locked out after repeated failures;
-- console sessions are rows, so that any node of a fleet can answer a signed-in browser and a
-- sign-out or a disabled user ends the session everywhere.
ALTER TABLE invites ADD COLUMN revoked_at BIGINT;
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;

-- `user_id` NULL: the operator.
CREATE TABLE console_sessions (
    token_hash BYTEA PRIMARY KEY,
    user_id BIGINT REFERENCES users(id),
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions(user_id);
