-- token-console schema for PostgreSQL, version 1: the same tables as SQLite's version 1.
-- Every timestamp is UTC milliseconds since the Unix epoch.

CREATE TABLE api_keys (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL DEFAULT '',
    key_hash       BYTEA   NOT NULL UNIQUE,   -- SHA-256 of the full key; the key itself is never stored
    display        TEXT    NOT NULL,          -- sk-tc-AbCd…wxyz
    created_at     BIGINT  NOT NULL,
    last_used      BIGINT,
    enabled        BOOLEAN NOT NULL DEFAULT TRUE,
    token_limit    BIGINT,
    rpm_limit      BIGINT,
    allowed_models TEXT,                      -- JSON array of glob patterns, NULL = all
    expires_at     BIGINT,
    deleted_at     BIGINT                     -- deleted keys stay so that their history keeps its name
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE deleted_at IS NULL;

-- Raw call records, trimmed to the newest console.max_logs rows.
CREATE TABLE calls (
    id                    BIGSERIAL PRIMARY KEY,
    ts                    BIGINT  NOT NULL,
    method                TEXT    NOT NULL,
    endpoint              TEXT    NOT NULL,
    status                INTEGER NOT NULL,
    model                 TEXT    NOT NULL,
    key_id                BIGINT,
    key_name              TEXT,
    prompt_tokens         BIGINT  NOT NULL,
    completion_tokens     BIGINT  NOT NULL,
    cache_read_tokens     BIGINT  NOT NULL,
    cache_creation_tokens BIGINT  NOT NULL,
    reasoning_tokens      BIGINT  NOT NULL,
    total_tokens          BIGINT  NOT NULL,
    duration_ms           BIGINT  NOT NULL,
    ttft_ms               BIGINT,
    stream                BOOLEAN NOT NULL,
    estimated             BOOLEAN NOT NULL,
    error                 TEXT
);
CREATE INDEX calls_key_id ON calls(key_id, id);
CREATE INDEX calls_model ON calls(model, id);
CREATE INDEX calls_status ON calls(status, id);
CREATE INDEX calls_ts ON calls(ts);

-- Aggregates, kept forever regardless of trimming. key_id 0 stands for calls without a valid key.
-- l0..l16 are the latency histogram's buckets (see usage::LATENCY_BOUNDS_MS).
CREATE TABLE agg_hour (
    hour BIGINT NOT NULL,    -- UTC hours since the epoch
    key_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    calls BIGINT NOT NULL, successes BIGINT NOT NULL, failures BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL, cache_creation_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL, total_tokens BIGINT NOT NULL, duration_ms BIGINT NOT NULL,
    l0 BIGINT NOT NULL, l1 BIGINT NOT NULL, l2 BIGINT NOT NULL, l3 BIGINT NOT NULL,
    l4 BIGINT NOT NULL, l5 BIGINT NOT NULL, l6 BIGINT NOT NULL, l7 BIGINT NOT NULL,
    l8 BIGINT NOT NULL, l9 BIGINT NOT NULL, l10 BIGINT NOT NULL, l11 BIGINT NOT NULL,
    l12 BIGINT NOT NULL, l13 BIGINT NOT NULL, l14 BIGINT NOT NULL, l15 BIGINT NOT NULL,
    l16 BIGINT NOT NULL,
    PRIMARY KEY (hour, key_id, model)
);

CREATE TABLE agg_day (
    day BIGINT NOT NULL,     -- local date in the configured time zone, as YYYYMMDD
    key_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    calls BIGINT NOT NULL, successes BIGINT NOT NULL, failures BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL, cache_creation_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL, total_tokens BIGINT NOT NULL, duration_ms BIGINT NOT NULL,
    l0 BIGINT NOT NULL, l1 BIGINT NOT NULL, l2 BIGINT NOT NULL, l3 BIGINT NOT NULL,
    l4 BIGINT NOT NULL, l5 BIGINT NOT NULL, l6 BIGINT NOT NULL, l7 BIGINT NOT NULL,
    l8 BIGINT NOT NULL, l9 BIGINT NOT NULL, l10 BIGINT NOT NULL, l11 BIGINT NOT NULL,
    l12 BIGINT NOT NULL, l13 BIGINT NOT NULL, l14 BIGINT NOT NULL, l15 BIGINT NOT NULL,
    l16 BIGINT NOT NULL,
    PRIMARY KEY (day, key_id, model)
);
CREATE INDEX agg_day_key ON agg_day(key_id, day);

CREATE TABLE agg_total (
    key_id BIGINT NOT NULL,
    model TEXT NOT NULL,
    calls BIGINT NOT NULL, successes BIGINT NOT NULL, failures BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL, cache_creation_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL, total_tokens BIGINT NOT NULL, duration_ms BIGINT NOT NULL,
    l0 BIGINT NOT NULL, l1 BIGINT NOT NULL, l2 BIGINT NOT NULL, l3 BIGINT NOT NULL,
    l4 BIGINT NOT NULL, l5 BIGINT NOT NULL, l6 BIGINT NOT NULL, l7 BIGINT NOT NULL,
    l8 BIGINT NOT NULL, l9 BIGINT NOT NULL, l10 BIGINT NOT NULL, l11 BIGINT NOT NULL,
    l12 BIGINT NOT NULL, l13 BIGINT NOT NULL, l14 BIGINT NOT NULL, l15 BIGINT NOT NULL,
    l16 BIGINT NOT NULL,
    PRIMARY KEY (key_id, model)
);

-- Settings the data depends on (e.g. the time zone agg_day was bucketed in).
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
