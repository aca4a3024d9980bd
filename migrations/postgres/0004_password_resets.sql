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

-- Routed calls (`model: "auto"`) by tier in the roll-ups: dimension 6 what they were charged,
-- dimension 7 what the strongest tier would have cost. The routing-savings page read every
-- routed call of its range (0.6 s for 300,000); it reads a few dozen roll-up rows now.
INSERT INTO usage_rollup (tenant_id, dim, period, bucket, value, requests, errors, prompt_tokens,
        cached_tokens, completion_tokens, reasoning_tokens, cost_nano, cache_write_tokens)
    SELECT tenant_id, d.dim, p.period, (ts_ms / 1000 / p.period) * p.period, route_tier, COUNT(*), 0, 0, 0, 0, 0,
           SUM(CASE d.dim WHEN 6 THEN cost_nano ELSE COALESCE(baseline_cost_nano, cost_nano) END), 0
    FROM usage_events, (VALUES (6), (7)) AS d(dim), (VALUES (3600), (86400)) AS p(period)
    WHERE route_tier IS NOT NULL AND tenant_id IS NOT NULL
    GROUP BY tenant_id, d.dim, p.period, 4, route_tier;
