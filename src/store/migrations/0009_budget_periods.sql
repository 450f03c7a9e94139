-- token-console schema: budgets that start again from nothing every day, week or month, and
-- money budgets.

-- How often the key's limits reset: 'day', 'week', 'month', or NULL (never).
ALTER TABLE api_keys ADD COLUMN limit_period TEXT;
-- The key's money budget in nano-dollars (10⁻⁹ USD) of priced calls; NULL: unlimited.
ALTER TABLE api_keys ADD COLUMN cost_limit_nanos {int};

-- The budget ledger gets a row per budget, unit and period, so that a call is charged to the
-- period it was admitted in. `unit` 0 counts tokens, 1 nano-dollars; `period` 0 never resets (its
-- `period_start` is 0), else 1 day, 2 week, 3 month, from `period_start` (UTC milliseconds).
-- The rows and leases kept so far are token budgets that never reset.
CREATE TABLE budget_rows (
    scope        {int} NOT NULL,
    unit         {int} NOT NULL,
    period       {int} NOT NULL,
    period_start {int} NOT NULL,
    taken        {int} NOT NULL,
    PRIMARY KEY (scope, unit, period, period_start)
){without_rowid};
INSERT INTO budget_rows (scope, unit, period, period_start, taken)
    SELECT scope, 0, 0, 0, taken FROM budgets;
DROP TABLE budgets;
ALTER TABLE budget_rows RENAME TO budgets;

CREATE TABLE budget_row_leases (
    instance     TEXT  NOT NULL,
    scope        {int} NOT NULL,
    unit         {int} NOT NULL,
    period       {int} NOT NULL,
    period_start {int} NOT NULL,
    held         {int} NOT NULL,
    PRIMARY KEY (instance, scope, unit, period, period_start)
){without_rowid};
INSERT INTO budget_row_leases (instance, scope, unit, period, period_start, held)
    SELECT instance, scope, 0, 0, 0, held FROM budget_leases;
DROP TABLE budget_leases;
ALTER TABLE budget_row_leases RENAME TO budget_leases;
