-- The audit trail (issue 18): every change made through the admin API or the console,
-- append-only, each entry chained to the previous by its hash.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    tenant_id BIGINT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    status BIGINT NOT NULL,
    entry TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log(tenant_id, seq);
