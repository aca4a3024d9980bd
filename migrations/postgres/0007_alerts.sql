-- Budget and balance alerts (issue 17): a tenant's thresholds and destinations, each alert
-- subject's level (so that an alert fires once per crossing, across nodes), and the log of
-- deliveries.
CREATE TABLE alert_settings (
    tenant_id BIGINT PRIMARY KEY REFERENCES tenants(id),
    balance_below_nano BIGINT,
    balance_days BIGINT,
    quota_percents TEXT NOT NULL DEFAULT '[]',
    emails TEXT NOT NULL DEFAULT '[]',
    webhook_url TEXT,
    webhook_secret TEXT,
    enabled BIGINT NOT NULL DEFAULT 1,
    updated_at BIGINT NOT NULL
);
CREATE TABLE alert_state (
    tenant_id BIGINT NOT NULL,
    subject TEXT NOT NULL,
    level BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, subject)
);
CREATE TABLE alert_deliveries (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    alert_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX alert_deliveries_tenant ON alert_deliveries(tenant_id, id);
