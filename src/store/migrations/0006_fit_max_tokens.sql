-- token-console schema: keys may lower a call's max_tokens to what is left of a budget.

-- True: a call whose reservation (prompt bound + max_tokens) does not fit in what is left of the
-- key's budget (or the global one) is forwarded with its max_tokens lowered to what is left,
-- instead of being refused. False (the default): refused as before.
ALTER TABLE api_keys ADD COLUMN fit_max_tokens {bool} NOT NULL DEFAULT {false};
