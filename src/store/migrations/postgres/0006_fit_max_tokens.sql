-- token-console schema for PostgreSQL: keys may lower a call's max_tokens to what is left of a
-- budget.

-- TRUE: a call whose reservation (prompt bound + max_tokens) does not fit in what is left of the
-- key's budget (or the global one) is forwarded with its max_tokens lowered to what is left,
-- instead of being refused. FALSE (the default): refused as before.
ALTER TABLE api_keys ADD COLUMN fit_max_tokens BOOLEAN NOT NULL DEFAULT FALSE;
