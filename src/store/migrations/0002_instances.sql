-- token-console schema, version 2: several instances on one database.

-- Every change made through a console gives the key the next version, so that other instances
-- can poll for changes (`version > last seen`) and honour them within a second.
ALTER TABLE api_keys ADD COLUMN version {int} NOT NULL DEFAULT 0;
UPDATE api_keys SET version = id;
CREATE INDEX api_keys_version ON api_keys(version);

-- The budget ledger: per budget (scope 0 = the global budget, else a key id) the tokens used or
-- leased to an instance. Instances lease slices of what is left and give back what they did not
-- use, so no request waits for this table. A row is built from agg_total when first needed.
CREATE TABLE budgets (
    scope {int} PRIMARY KEY,
    taken {int} NOT NULL
);

-- Instances alive on this database (heartbeat in UTC milliseconds).
CREATE TABLE instances (
    id      TEXT PRIMARY KEY,
    seen_ms {int} NOT NULL
){without_rowid};
