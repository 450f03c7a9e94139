-- Version 3: faster dashboards at volume.
-- agg_day rows with key_id = -1 (store::ALL_KEYS) and model '' hold each day's totals over every
-- key and model, so a 90-day trend reads 90 rows. Every other reader of agg_day names a real key.
INSERT INTO agg_day (day, key_id, model, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16)
SELECT day, -1, '',
       SUM(calls),
       SUM(successes),
       SUM(failures),
       SUM(prompt_tokens),
       SUM(completion_tokens),
       SUM(cache_read_tokens),
       SUM(cache_creation_tokens),
       SUM(reasoning_tokens),
       SUM(total_tokens),
       SUM(duration_ms),
       SUM(l0),
       SUM(l1),
       SUM(l2),
       SUM(l3),
       SUM(l4),
       SUM(l5),
       SUM(l6),
       SUM(l7),
       SUM(l8),
       SUM(l9),
       SUM(l10),
       SUM(l11),
       SUM(l12),
       SUM(l13),
       SUM(l14),
       SUM(l15),
       SUM(l16)
FROM agg_day WHERE key_id <> -1 GROUP BY day;

-- Logs filtered by status class (2xx, 4xx, …), newest first, straight from an index.
CREATE INDEX calls_status_class ON calls ((status / 100), id);
