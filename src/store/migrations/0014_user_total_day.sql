-- token-console schema: usage per end user and local day, every key together, for GET /usage by
-- user and day (or user alone) when the query does not name a key: a row per user and day, where
-- user_day has one per user, day and key. Its rows are user_day's summed over keys: the same
-- users, the same console.usage_user_cap and '(other)' (the recorder admits a user to both at once).
CREATE ROLLUP TABLE user_total_day (day {int}, user_id TEXT);

-- The rows are the groups of group_by=user,day: ordered by tokens (the default), the largest are
-- read first and the read stops at the limit, however many days and users the window holds (see
-- queries::usage). The other orders sort the window's rows: an index each would cost the recorder
-- as much again (every batch moves the entries of the rows it adds to).
-- (No index on user_id: SQLite would read a whole index of it in user order for group_by=user,
-- one table seek per entry, instead of the window's days by the primary key: 230 ms for 7 days
-- at 10M calls where the primary key takes 9 ms.)
CREATE INDEX user_total_day_tokens ON user_total_day (total_tokens);

INSERT INTO user_total_day (day, user_id, {agg_names})
SELECT day, user_id, {agg_sums} FROM user_day GROUP BY day, user_id;
