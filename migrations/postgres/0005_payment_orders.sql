-- Online payment orders (issue 17): money a tenant admin pays through a provider (Stripe,
-- Alipay, WeChat Pay), credited once, from a verified notification, with the order's id as the
-- top-up's idempotency key.
CREATE TABLE payment_orders (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    provider TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    promo_code TEXT,
    state TEXT NOT NULL,
    provider_ref TEXT,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    paid_at BIGINT,
    late BIGINT NOT NULL DEFAULT 0,
    entry_id TEXT
);
CREATE INDEX payment_orders_tenant ON payment_orders(tenant_id, id);
CREATE UNIQUE INDEX payment_orders_ref ON payment_orders(provider, provider_ref);
