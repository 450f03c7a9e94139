-- Version 4: one meaning of tokens across protocols; count_tokens apart; clients and sessions.

-- prompt_tokens is now every input token the provider processed. OpenAI's prompt_tokens (and the
-- Responses API's input_tokens) always included cached tokens; Anthropic's input_tokens excludes
-- cache reads and writes, which are stored apart, so Anthropic rows get them added (and their
-- total with them). Raw rows are told apart by their endpoint. Aggregates are kept per key and
-- model, not per endpoint: cache writes are only ever reported by Anthropic, so they are added
-- everywhere; cache reads are added on the rows of models called on /v1/messages (in the raw
-- rows still kept) or named claude-*.
CREATE TEMP TABLE migration_anthropic_models AS
    SELECT DISTINCT model FROM calls WHERE endpoint = '/v1/messages'
    UNION SELECT DISTINCT model FROM agg_total WHERE model LIKE 'claude%';

-- The budget ledgers first, while agg_total still holds the old figures.
UPDATE budgets SET taken = taken + (
    SELECT COALESCE(SUM(cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END), 0)
    FROM agg_total WHERE budgets.scope = 0 OR agg_total.key_id = budgets.scope);

UPDATE calls SET
    prompt_tokens = prompt_tokens + cache_read_tokens + cache_creation_tokens,
    total_tokens = total_tokens + cache_read_tokens + cache_creation_tokens
WHERE endpoint = '/v1/messages';

UPDATE agg_hour SET
    prompt_tokens = prompt_tokens + cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END,
    total_tokens = total_tokens + cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END;
UPDATE agg_total SET
    prompt_tokens = prompt_tokens + cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END,
    total_tokens = total_tokens + cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END;
UPDATE agg_day SET
    prompt_tokens = prompt_tokens + cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END,
    total_tokens = total_tokens + cache_creation_tokens + CASE WHEN model IN
        (SELECT model FROM migration_anthropic_models) THEN cache_read_tokens ELSE 0 END
WHERE key_id <> -1;
-- Each day's rollup row (key_id -1) is the sum of that day's other rows.
UPDATE agg_day SET
    prompt_tokens = (SELECT COALESCE(SUM(d.prompt_tokens), 0) FROM agg_day d
                     WHERE d.day = agg_day.day AND d.key_id <> -1),
    total_tokens = (SELECT COALESCE(SUM(d.total_tokens), 0) FROM agg_day d
                    WHERE d.day = agg_day.day AND d.key_id <> -1)
WHERE key_id = -1;
DROP TABLE migration_anthropic_models;

-- count_tokens calls spend nothing and are not calls: aggregates count them apart from now on.
ALTER TABLE agg_hour ADD COLUMN count_tokens {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_day ADD COLUMN count_tokens {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_total ADD COLUMN count_tokens {int} NOT NULL DEFAULT 0;

-- The client family (from User-Agent; '' when none was sent) and the session id it sent.
ALTER TABLE calls ADD COLUMN client TEXT NOT NULL DEFAULT '';
ALTER TABLE calls ADD COLUMN session_id TEXT;
CREATE INDEX calls_client ON calls(client, id);
CREATE INDEX calls_session ON calls(session_id, id) WHERE session_id IS NOT NULL;
-- The log list filtered by endpoint (count_tokens calls shown apart).
CREATE INDEX calls_endpoint ON calls(endpoint, id);
