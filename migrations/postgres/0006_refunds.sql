-- Refunds of paid orders (issue 17): what each order brought (top-up and promotion bonus), what
-- was refunded, and each refund with the credits it debited.
ALTER TABLE payment_orders ADD COLUMN credited_nano BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payment_orders ADD COLUMN refunded_minor BIGINT NOT NULL DEFAULT 0;
UPDATE payment_orders SET credited_nano =
    COALESCE((SELECT amount FROM ledger_entries WHERE ledger_entries.id = payment_orders.entry_id), 0);
CREATE TABLE payment_refunds (
    id BIGSERIAL PRIMARY KEY,
    order_id BIGINT NOT NULL REFERENCES payment_orders(id),
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    amount_minor BIGINT NOT NULL,
    debit_nano BIGINT NOT NULL,
    state TEXT NOT NULL,
    provider_ref TEXT,
    reason TEXT,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX payment_refunds_order ON payment_refunds(order_id);
