-- token-console schema: usage rollups by every dimension, so that GET /api/console/usage reads
-- rollup rows, never `calls`. Value columns as in the aggregate tables (l0..l16 the latency
-- histogram), cost_nanos and unpriced_calls included.

-- One dimension at a time (dim: key, model, client, provider, source or endpoint; value: its
-- value, a key as its id in text), per UTC hour and per local day: a few rows an hour whatever
-- the volume, for a breakdown by one dimension (and time) over any window.
CREATE TABLE dim_hour (
    hour {int} NOT NULL,
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    {aggregates}
    count_tokens {int} NOT NULL DEFAULT 0,
    cost_nanos {int} NOT NULL DEFAULT 0,
    unpriced_calls {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, dim, value)
){without_rowid};

CREATE TABLE dim_day (
    day {int} NOT NULL,
    dim TEXT NOT NULL,
    value TEXT NOT NULL,
    {aggregates}
    count_tokens {int} NOT NULL DEFAULT 0,
    cost_nanos {int} NOT NULL DEFAULT 0,
    unpriced_calls {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (day, dim, value)
){without_rowid};

-- Every dimension but the end user, per local day: for a breakdown by two of them (or by one,
-- filtered by another). Their combinations are fewer than calls, by day; by hour they would
-- approach one row per call.
CREATE TABLE usage_day (
    day {int} NOT NULL,
    key_id {int} NOT NULL,
    model TEXT NOT NULL,
    client TEXT NOT NULL,
    provider TEXT NOT NULL,
    source TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    {aggregates}
    count_tokens {int} NOT NULL DEFAULT 0,
    cost_nanos {int} NOT NULL DEFAULT 0,
    unpriced_calls {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_id, model, client, provider, source, endpoint)
){without_rowid};

-- Per end user ('' = none named) and key, per local day (an hourly table would hold about a row
-- per call when users are many). A day admits at most console.usage_user_cap users; the calls of
-- later ones are kept under '(other)' (store::OTHER_USERS).
CREATE TABLE user_day (
    day {int} NOT NULL,
    user_id TEXT NOT NULL,
    key_id {int} NOT NULL,
    {aggregates}
    count_tokens {int} NOT NULL DEFAULT 0,
    cost_nanos {int} NOT NULL DEFAULT 0,
    unpriced_calls {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id, key_id)
){without_rowid};

-- How many users each local day admitted to user_day (the cap's counter, locked while admitting).
CREATE TABLE usage_user_count (
    day   {int} PRIMARY KEY,
    users {int} NOT NULL
);

-- Calls recorded before this version: their key and model are known, their other dimensions not
-- (client, provider and endpoint '', source 'gateway', no user).
INSERT INTO dim_hour (hour, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT hour, 'key', CAST(key_id AS TEXT), SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_hour GROUP BY hour, key_id;
INSERT INTO dim_hour (hour, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT hour, 'model', model, SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_hour GROUP BY hour, model;
INSERT INTO dim_hour (hour, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT hour, 'client', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_hour GROUP BY hour;
INSERT INTO dim_hour (hour, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT hour, 'provider', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_hour GROUP BY hour;
INSERT INTO dim_hour (hour, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT hour, 'source', 'gateway', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_hour GROUP BY hour;
INSERT INTO dim_hour (hour, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT hour, 'endpoint', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_hour GROUP BY hour;
INSERT INTO dim_day (day, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, 'key', CAST(key_id AS TEXT), SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day, key_id;
INSERT INTO dim_day (day, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, 'model', model, SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day, model;
INSERT INTO dim_day (day, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, 'client', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day;
INSERT INTO dim_day (day, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, 'provider', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day;
INSERT INTO dim_day (day, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, 'source', 'gateway', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day;
INSERT INTO dim_day (day, dim, value, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, 'endpoint', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day;
INSERT INTO usage_day (day, key_id, model, client, provider, source, endpoint, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, key_id, model, '', '', 'gateway', '', SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day, key_id, model;
INSERT INTO user_day (day, user_id, key_id, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, '', key_id, SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM agg_day WHERE key_id <> -1 GROUP BY day, key_id;
