-- token-console schema: budget leases per instance.

-- The part of each budget ledger row (`budgets.taken`) that an instance holds and has not used
-- yet. When an instance stops noting that it is alive, a live instance gives its rows back to the
-- ledger. (One instance on SQLite keeps its ledger in memory; the table serves shared ledgers.)
CREATE TABLE budget_leases (
    instance TEXT    NOT NULL,
    scope    {int} NOT NULL,
    held     {int} NOT NULL,
    PRIMARY KEY (instance, scope)
){without_rowid};
