-- Version 7: the cost of calls in money, exact integers of nano-dollars (10⁻⁹ USD).

-- A call's cost (NULL: no price known for its model) and how it was found: 'priced' (from
-- reported tokens), 'estimated' (from the gateway's token estimate) or 'unpriced'. Calls
-- recorded before this version have no cost until `token-console reprice` prices them.
ALTER TABLE calls ADD COLUMN cost_nanos {int};
ALTER TABLE calls ADD COLUMN cost_status TEXT NOT NULL DEFAULT 'unpriced';
UPDATE calls SET cost_nanos = 0, cost_status = 'priced' WHERE total_tokens = 0;

-- Aggregates: the summed cost of their priced calls, and how many calls had no price. Older
-- rows that spent tokens count as unpriced until repriced.
ALTER TABLE agg_hour ADD COLUMN cost_nanos {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_hour ADD COLUMN unpriced_calls {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_day ADD COLUMN cost_nanos {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_day ADD COLUMN unpriced_calls {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_total ADD COLUMN cost_nanos {int} NOT NULL DEFAULT 0;
ALTER TABLE agg_total ADD COLUMN unpriced_calls {int} NOT NULL DEFAULT 0;
UPDATE agg_hour SET unpriced_calls = calls WHERE total_tokens > 0;
UPDATE agg_day SET unpriced_calls = calls WHERE total_tokens > 0 AND key_id <> -1;
UPDATE agg_day SET unpriced_calls = (SELECT COALESCE(SUM(d.unpriced_calls), 0) FROM agg_day d
                                     WHERE d.day = agg_day.day AND d.key_id <> -1)
WHERE key_id = -1;
UPDATE agg_total SET unpriced_calls = calls WHERE total_tokens > 0;
