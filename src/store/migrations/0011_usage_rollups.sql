-- token-console schema: usage rollups by every dimension, so that GET /api/console/usage reads
-- rollup rows, never `calls`. Value columns as in the aggregate tables (l0..l16 the latency
-- histogram), cost_nanos and unpriced_calls included.

-- One dimension at a time (dim: key, model, client, provider, source or endpoint; value: its
-- value, a key as its id in text), per UTC hour and per local day: a few rows an hour whatever
-- the volume, for a breakdown by one dimension (and time) over any window.
CREATE ROLLUP TABLE dim_hour (hour {int}, dim TEXT, value TEXT);

CREATE ROLLUP TABLE dim_day (day {int}, dim TEXT, value TEXT);

-- Every dimension but the end user, per local day: for a breakdown by two of them (or by one,
-- filtered by another). Their combinations are fewer than calls, by day; by hour they would
-- approach one row per call.
CREATE ROLLUP TABLE usage_day (day {int}, key_id {int}, model TEXT, client TEXT, provider TEXT, source TEXT, endpoint TEXT);

-- Per end user ('' = none named) and key, per local day (an hourly table would hold about a row
-- per call when users are many). A day admits at most console.usage_user_cap users; the calls of
-- later ones are kept under '(other)' (store::OTHER_USERS).
CREATE ROLLUP TABLE user_day (day {int}, user_id TEXT, key_id {int});

-- How many users each local day admitted to user_day (the cap's counter, locked while admitting).
CREATE TABLE usage_user_count (
    day   {int} PRIMARY KEY,
    users {int} NOT NULL
);

-- Calls recorded before this version: their key and model are known, their other dimensions not
-- (client, provider and endpoint '', source 'gateway', no user).
INSERT INTO dim_hour (hour, dim, value, {agg_names})
SELECT hour, d.dim, CASE d.dim WHEN 'key' THEN CAST(key_id AS TEXT) WHEN 'model' THEN model
    WHEN 'source' THEN 'gateway' ELSE '' END, {agg_sums}
FROM agg_hour CROSS JOIN (SELECT 'key' AS dim UNION ALL SELECT 'model' UNION ALL SELECT 'client'
    UNION ALL SELECT 'provider' UNION ALL SELECT 'source' UNION ALL SELECT 'endpoint') d GROUP BY 1, 2, 3;
INSERT INTO dim_day (day, dim, value, {agg_names})
SELECT day, d.dim, CASE d.dim WHEN 'key' THEN CAST(key_id AS TEXT) WHEN 'model' THEN model
    WHEN 'source' THEN 'gateway' ELSE '' END, {agg_sums}
FROM agg_day CROSS JOIN (SELECT 'key' AS dim UNION ALL SELECT 'model' UNION ALL SELECT 'client'
    UNION ALL SELECT 'provider' UNION ALL SELECT 'source' UNION ALL SELECT 'endpoint') d WHERE key_id <> -1 GROUP BY 1, 2, 3;
INSERT INTO usage_day (day, key_id, model, client, provider, source, endpoint, {agg_names})
SELECT day, key_id, model, '', '', 'gateway', '', {agg_sums}
FROM agg_day WHERE key_id <> -1 GROUP BY day, key_id, model;
INSERT INTO user_day (day, user_id, key_id, {agg_names})
SELECT day, '', key_id, {agg_sums}
FROM agg_day WHERE key_id <> -1 GROUP BY day, key_id;
