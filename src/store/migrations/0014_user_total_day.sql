-- token-console schema: usage per end user and local day, every key together, for GET /usage by
-- user and day (or user alone) when the query does not name a key: a row per user and day, where
-- user_day has one per user, day and key. Its rows are user_day's summed over keys: the same
-- users, the same console.usage_user_cap and '(other)' (the recorder admits a user to both at once).
-- Version 14 (13: another branch's columns of `calls`; see schema::MIGRATIONS).
CREATE TABLE user_total_day (
    day {int} NOT NULL,
    user_id TEXT NOT NULL,
    {aggregates}
    count_tokens {int} NOT NULL DEFAULT 0,
    cost_nanos {int} NOT NULL DEFAULT 0,
    unpriced_calls {int} NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id)
){without_rowid};

-- The rows are the groups of group_by=user,day: ordered by tokens (the default), the largest are
-- read first and the read stops at the limit, however many days and users the window holds (see
-- queries::usage). The other orders sort the window's rows: an index each would cost the recorder
-- as much again (every batch moves the entries of the rows it adds to).
-- (No index on user_id: SQLite would read a whole index of it in user order for group_by=user,
-- one table seek per entry, instead of the window's days by the primary key: 230 ms for 7 days
-- at 10M calls where the primary key takes 9 ms.)
CREATE INDEX user_total_day_tokens ON user_total_day (total_tokens);

INSERT INTO user_total_day (day, user_id, calls, successes, failures, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, duration_ms, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16, count_tokens, cost_nanos, unpriced_calls)
SELECT day, user_id, SUM(calls), SUM(successes), SUM(failures), SUM(prompt_tokens), SUM(completion_tokens), SUM(cache_read_tokens), SUM(cache_creation_tokens), SUM(reasoning_tokens), SUM(total_tokens), SUM(duration_ms), SUM(l0), SUM(l1), SUM(l2), SUM(l3), SUM(l4), SUM(l5), SUM(l6), SUM(l7), SUM(l8), SUM(l9), SUM(l10), SUM(l11), SUM(l12), SUM(l13), SUM(l14), SUM(l15), SUM(l16), SUM(count_tokens), SUM(cost_nanos), SUM(unpriced_calls)
FROM user_day GROUP BY day, user_id;
