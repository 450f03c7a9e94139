-- token-console schema: what a call asked for besides its model.

-- The model name the client asked for when it was mapped to another (CLIProxyAPI's `alias`),
-- at most 256 bytes; NULL when none.
ALTER TABLE calls ADD COLUMN alias TEXT;
-- The reasoning effort asked for (OpenAI's `reasoning_effort` / `reasoning.effort`, CLIProxyAPI's
-- `reasoning_effort`), at most 32 bytes; NULL when none.
ALTER TABLE calls ADD COLUMN reasoning_effort TEXT;
-- The service tier asked for (`service_tier` of OpenAI, Anthropic and CLIProxyAPI), at most 32
-- bytes; NULL when none.
ALTER TABLE calls ADD COLUMN service_tier TEXT;

-- The source names the push endpoint admitted: a name not configured under `sources:` is added
-- on its first push while fewer than console.push_source_cap such names are here; later names
-- are refused. Filled with the sources stored so far.
CREATE TABLE push_sources (
    name       TEXT  NOT NULL PRIMARY KEY,
    first_seen {int} NOT NULL
){without_rowid};
INSERT INTO push_sources (name, first_seen)
SELECT DISTINCT value, 0 FROM dim_day WHERE dim = 'source' AND value <> 'gateway';
