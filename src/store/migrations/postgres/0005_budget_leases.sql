-- token-console schema for PostgreSQL: budget leases per instance.

-- The part of each budget ledger row (`budgets.taken`) that an instance holds and has not used
-- yet. When an instance stops noting that it is alive, a live instance gives its rows back to the
-- ledger, so the tokens a killed instance held become available again.
CREATE TABLE budget_leases (
    instance TEXT   NOT NULL,
    scope    BIGINT NOT NULL,
    held     BIGINT NOT NULL,
    PRIMARY KEY (instance, scope)
);
