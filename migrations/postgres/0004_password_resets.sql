-- Password resets (issue 16): a single-use token per request, emailed to the user or shown to
-- their tenant admin; using it sets the password and ends the user's console sessions.
CREATE TABLE password_resets (
    token_hash BYTEA PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX password_resets_user ON password_resets(user_id);

-- The routing-savings page reads only routed calls (`model: "auto"`): without this index it
-- scanned every call of the range (seconds for a tenant with a million calls a month).
CREATE INDEX usage_events_routed ON usage_events(tenant_id, ts_ms) WHERE route_tier IS NOT NULL;
