-- token-console schema: alerts and their deliveries.

-- One row per alert raised. `dedup` names the rule, its subject and its period
-- (`budget_80|key:7|total|limit=1000`); it is unique, so when several instances evaluate the
-- same rule at once, exactly one of them inserts the row, and only that one delivers it.
CREATE TABLE alerts (
    id         {id},
    dedup      TEXT  NOT NULL UNIQUE,
    rule       TEXT  NOT NULL,
    event      TEXT  NOT NULL,
    key_id     {int},
    subject    TEXT  NOT NULL,
    period     TEXT  NOT NULL,
    message    TEXT  NOT NULL,
    payload    TEXT  NOT NULL,            -- the generic webhook's JSON, as sent
    created_at {int} NOT NULL,
    instance   TEXT  NOT NULL             -- the instance that raised and delivers it
);
CREATE INDEX alerts_created ON alerts(created_at);

-- One row per alert and target: pending until the last try, then sent, failed or skipped.
CREATE TABLE alert_deliveries (
    alert_id    {int} NOT NULL,
    target      TEXT  NOT NULL,
    kind        TEXT  NOT NULL,
    status      TEXT  NOT NULL,
    attempts    {int} NOT NULL,
    http_status {int},
    error       TEXT,
    updated_at  {int} NOT NULL,
    PRIMARY KEY (alert_id, target)
){without_rowid};
