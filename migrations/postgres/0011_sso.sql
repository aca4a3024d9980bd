-- Console single sign-on (issue 18): a tenant's OpenID Connect settings (JSON; NULL: none), the
-- provider's subject a user is linked to, and sign-ins in flight (each used once, 10 minutes).
ALTER TABLE tenants ADD COLUMN sso TEXT;
ALTER TABLE users ADD COLUMN sso_subject TEXT;
CREATE TABLE sso_flows (
    state_hash BYTEA PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    next TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sso_flows_expiry ON sso_flows(expires_at);
