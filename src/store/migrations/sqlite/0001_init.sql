-- token-console schema, version 1. Every timestamp is UTC milliseconds since the Unix epoch.

CREATE TABLE api_keys (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL DEFAULT '',
    key_hash       BLOB    NOT NULL UNIQUE,   -- SHA-256 of the full key; the key itself is never stored
    display        TEXT    NOT NULL,          -- sk-tc-AbCd…wxyz
    created_at     INTEGER NOT NULL,
    last_used      INTEGER,
    enabled        INTEGER NOT NULL DEFAULT 1,
    token_limit    INTEGER,
    rpm_limit      INTEGER,
    allowed_models TEXT,                      -- JSON array of glob patterns, NULL = all
    expires_at     INTEGER,
    deleted_at     INTEGER                    -- deleted keys stay so that their history keeps its name
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE deleted_at IS NULL;

-- Raw call records, trimmed to the newest console.max_logs rows.
CREATE TABLE calls (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    ts                    INTEGER NOT NULL,
    method                TEXT    NOT NULL,
    endpoint              TEXT    NOT NULL,
    status                INTEGER NOT NULL,
    model                 TEXT    NOT NULL,
    key_id                INTEGER,
    key_name              TEXT,
    prompt_tokens         INTEGER NOT NULL,
    completion_tokens     INTEGER NOT NULL,
    cache_read_tokens     INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens      INTEGER NOT NULL,
    total_tokens          INTEGER NOT NULL,
    duration_ms           INTEGER NOT NULL,
    ttft_ms               INTEGER,
    stream                INTEGER NOT NULL,
    estimated             INTEGER NOT NULL,
    error                 TEXT
);
CREATE INDEX calls_key_id ON calls(key_id, id);
CREATE INDEX calls_model ON calls(model, id);
CREATE INDEX calls_status ON calls(status, id);
CREATE INDEX calls_ts ON calls(ts);

-- Aggregates, kept forever regardless of trimming. key_id 0 stands for calls without a valid key.
-- l0..l16 are the latency histogram's buckets (see usage::LATENCY_BOUNDS_MS).
CREATE TABLE agg_hour (
    hour INTEGER NOT NULL,   -- UTC hours since the epoch
    key_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
    l0 INTEGER NOT NULL, l1 INTEGER NOT NULL, l2 INTEGER NOT NULL, l3 INTEGER NOT NULL,
    l4 INTEGER NOT NULL, l5 INTEGER NOT NULL, l6 INTEGER NOT NULL, l7 INTEGER NOT NULL,
    l8 INTEGER NOT NULL, l9 INTEGER NOT NULL, l10 INTEGER NOT NULL, l11 INTEGER NOT NULL,
    l12 INTEGER NOT NULL, l13 INTEGER NOT NULL, l14 INTEGER NOT NULL, l15 INTEGER NOT NULL,
    l16 INTEGER NOT NULL,
    PRIMARY KEY (hour, key_id, model)
) WITHOUT ROWID;

CREATE TABLE agg_day (
    day INTEGER NOT NULL,    -- local date in the configured time zone, as YYYYMMDD
    key_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
    l0 INTEGER NOT NULL, l1 INTEGER NOT NULL, l2 INTEGER NOT NULL, l3 INTEGER NOT NULL,
    l4 INTEGER NOT NULL, l5 INTEGER NOT NULL, l6 INTEGER NOT NULL, l7 INTEGER NOT NULL,
    l8 INTEGER NOT NULL, l9 INTEGER NOT NULL, l10 INTEGER NOT NULL, l11 INTEGER NOT NULL,
    l12 INTEGER NOT NULL, l13 INTEGER NOT NULL, l14 INTEGER NOT NULL, l15 INTEGER NOT NULL,
    l16 INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, model)
) WITHOUT ROWID;
CREATE INDEX agg_day_key ON agg_day(key_id, day);

CREATE TABLE agg_total (
    key_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    calls INTEGER NOT NULL, successes INTEGER NOT NULL, failures INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL, cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL, total_tokens INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
    l0 INTEGER NOT NULL, l1 INTEGER NOT NULL, l2 INTEGER NOT NULL, l3 INTEGER NOT NULL,
    l4 INTEGER NOT NULL, l5 INTEGER NOT NULL, l6 INTEGER NOT NULL, l7 INTEGER NOT NULL,
    l8 INTEGER NOT NULL, l9 INTEGER NOT NULL, l10 INTEGER NOT NULL, l11 INTEGER NOT NULL,
    l12 INTEGER NOT NULL, l13 INTEGER NOT NULL, l14 INTEGER NOT NULL, l15 INTEGER NOT NULL,
    l16 INTEGER NOT NULL,
    PRIMARY KEY (key_id, model)
) WITHOUT ROWID;

-- Settings the data depends on (e.g. the time zone agg_day was bucketed in).
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
