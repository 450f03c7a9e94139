-- token-console schema, version 1. Every timestamp is UTC milliseconds since the Unix epoch.
-- One text for both databases: the words in braces become each dialect's types (store::schema).

CREATE TABLE api_keys (
    id             {id},
    name           TEXT    NOT NULL,
    description    TEXT    NOT NULL DEFAULT '',
    key_hash       {blob}  NOT NULL UNIQUE,   -- SHA-256 of the full key; the key itself is never stored
    display        TEXT    NOT NULL,          -- sk-tc-AbCd…wxyz
    created_at     {int} NOT NULL,
    last_used      {int},
    enabled        {bool} NOT NULL DEFAULT {true},
    token_limit    {int},
    rpm_limit      {int},
    allowed_models TEXT,                      -- JSON array of glob patterns, NULL = all
    expires_at     {int},
    deleted_at     {int}                    -- deleted keys stay so that their history keeps its name
);
CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE deleted_at IS NULL;

-- Raw call records, trimmed to the newest console.max_logs rows.
CREATE TABLE calls (
    id                    {id},
    ts                    {int} NOT NULL,
    method                TEXT    NOT NULL,
    endpoint              TEXT    NOT NULL,
    status                INTEGER NOT NULL,
    model                 TEXT    NOT NULL,
    key_id                {int},
    key_name              TEXT,
    prompt_tokens         {int} NOT NULL,
    completion_tokens     {int} NOT NULL,
    cache_read_tokens     {int} NOT NULL,
    cache_creation_tokens {int} NOT NULL,
    reasoning_tokens      {int} NOT NULL,
    total_tokens          {int} NOT NULL,
    duration_ms           {int} NOT NULL,
    ttft_ms               {int},
    stream                {bool}   NOT NULL,
    estimated             {bool}   NOT NULL,
    error                 TEXT
);
CREATE INDEX calls_key_id ON calls(key_id, id);
CREATE INDEX calls_model ON calls(model, id);
CREATE INDEX calls_status ON calls(status, id);
CREATE INDEX calls_ts ON calls(ts);

-- Aggregates, kept forever regardless of trimming. key_id 0 stands for calls without a valid key.
-- l0..l16 are the latency histogram's buckets (see usage::LATENCY_BOUNDS_MS).
CREATE TABLE agg_hour (
    hour {int} NOT NULL,   -- UTC hours since the epoch
    key_id {int} NOT NULL,
    model TEXT NOT NULL,
    {aggregates}
    PRIMARY KEY (hour, key_id, model)
){without_rowid};

CREATE TABLE agg_day (
    day {int} NOT NULL,    -- local date in the configured time zone, as YYYYMMDD
    key_id {int} NOT NULL,
    model TEXT NOT NULL,
    {aggregates}
    PRIMARY KEY (day, key_id, model)
){without_rowid};
CREATE INDEX agg_day_key ON agg_day(key_id, day);

CREATE TABLE agg_total (
    key_id {int} NOT NULL,
    model TEXT NOT NULL,
    {aggregates}
    PRIMARY KEY (key_id, model)
){without_rowid};

-- Settings the data depends on (e.g. the time zone agg_day was bucketed in).
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
){without_rowid};
