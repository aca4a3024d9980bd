-- Prompt guardrails (issue 18): a tenant's policy (JSON; NULL: none).
ALTER TABLE tenants ADD COLUMN guardrails TEXT;
