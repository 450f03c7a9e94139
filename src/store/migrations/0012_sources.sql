-- token-console schema: usage ingested from sources (CLIProxyAPI, the push endpoint).

-- One row per ingested record, under the hex SHA-256 of what identifies it: a record is stored once
-- whichever instance, restart or retry delivers it again. `call_id` is the call it became; the
-- oldest rows go once INGEST_KEYS_KEPT newer calls exist (the horizon of de-duplication).
CREATE TABLE ingest_keys (
    dedup_key TEXT  NOT NULL PRIMARY KEY,
    call_id   {int}  NOT NULL
){without_rowid};
CREATE INDEX ingest_keys_call ON ingest_keys (call_id);

-- Ingested usage per local day, source, and credential (dim 'credential', ident = auth_index)
-- or client key (dim 'client_key', ident = hex SHA-256 of the key). `label` is the masked
-- credential or the key's display form, as last seen.
CREATE ROLLUP TABLE agg_source (day {int}, source TEXT, dim TEXT, ident TEXT; label TEXT);

-- Which instance consumes each source (CLIProxyAPI's queue is destructive: one reader at a
-- time). A holder renews its row; an expired row may be taken by another instance.
CREATE TABLE source_leases (
    source     TEXT  NOT NULL PRIMARY KEY,
    holder     TEXT  NOT NULL,
    expires_at {int} NOT NULL
){without_rowid};

-- Every call (the gateway's too, source 'gateway') per UTC hour, source and model: the
-- dashboard's figures of one source.
CREATE ROLLUP TABLE agg_source_hour (hour {int}, source TEXT, model TEXT);
