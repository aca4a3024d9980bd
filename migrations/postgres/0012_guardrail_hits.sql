-- What a tenant's prompt guardrails found in a request (issue 18): detector and count,
-- `email=2,keywords:codenames=1`, never the matched text. NULL: nothing found (or no policy).
ALTER TABLE usage_events ADD COLUMN guardrails TEXT;
