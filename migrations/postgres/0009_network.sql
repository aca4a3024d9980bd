-- Network allow-lists (issue 18): the client networks a key, or every key of a tenant, may be
-- used from (a JSON array of CIDRs; NULL: anywhere).
ALTER TABLE api_keys ADD COLUMN allowed_cidrs TEXT;
ALTER TABLE tenants ADD COLUMN allowed_cidrs TEXT;
