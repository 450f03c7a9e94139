//! Every query of the store, written once for both databases over [`Db`]: keys, call records and
//! their aggregates, the budget ledgers and the instances sharing them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::row::{from_columns, Columns, FromColumns};
use super::sql::{Bulk, Db, Lock, Param, Row, Ty, AGG_COLUMNS};
use super::{
    Aggregate, AlertRow, CallKind, CallMatch, DayScope, DayTotal, Delivery, Dim, DimValue,
    HourUsage, KeyPatch, KeyRow, Lease, LedgerRow, LogQuery, NewAlert, NewKey, StatusFilter,
    StoreError, UsageFilter, UsageGroup, UsageOrder, UsageQuery, WindowUsage, ALL_KEYS,
    GLOBAL_SCOPE, OTHER_USERS,
};
use crate::usage::{CallRecord, LoggedCall, TokenUsage, COUNT_TOKENS_PATH, LATENCY_BUCKETS};

pub use super::sql::to_i64;

/// Milliseconds in an hour: `agg_hour.hour` is UTC hours since the epoch.
pub const MS_PER_HOUR: i64 = 3_600_000;

/// The dimensions of a row of `agg_hour` or `agg_day`: (hour or day, key id, model).
pub type Dims = (i64, i64, String);

/// A timestamp as stored: UTC milliseconds since the epoch.
pub fn ms(ts: jiff::Timestamp) -> i64 {
    ts.as_millisecond()
}

/// A stored timestamp read back.
pub fn from_ms(v: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(v).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The local date of `ts` in `tz` as YYYYMMDD.
pub fn local_day(ts: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> i64 {
    let date = ts.to_zoned(tz.clone()).date();
    i64::from(date.year()) * 10_000 + i64::from(date.month()) * 100 + i64::from(date.day())
}

/// Conditions joined by `AND`, with the values they bind numbered in order.
#[derive(Default)]
struct Conditions<'a> {
    sql: Vec<String>,
    params: Vec<Param<'a>>,
}

impl<'a> Conditions<'a> {
    /// Binds a value; returns its placeholder (`$N`).
    fn bind(&mut self, value: impl Into<Param<'a>>) -> String {
        self.params.push(value.into());
        format!("${}", self.params.len())
    }

    /// Adds `column op $N`.
    fn compare(&mut self, column: &str, op: &str, value: impl Into<Param<'a>>) {
        let n = self.bind(value);
        self.sql.push(format!("{column} {op} {n}"));
    }

    /// Limits `hour` (UTC hours since the epoch) to the hours that overlap `[from, to)`.
    fn hours(&mut self, from: Option<jiff::Timestamp>, to: Option<jiff::Timestamp>) {
        if let Some(from) = from {
            self.compare("hour", ">=", ms(from).div_euclid(MS_PER_HOUR));
        }
        if let Some(to) = to {
            let end = (ms(to) + MS_PER_HOUR - 1).div_euclid(MS_PER_HOUR);
            self.compare("hour", "<", end);
        }
    }

    /// ` WHERE a AND b`, or nothing.
    fn clause(&self) -> String {
        if self.sql.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.sql.join(" AND "))
        }
    }
}

// --- Keys -----------------------------------------------------------------------------------

const KEY_SELECT: &str = "SELECT id, name, description, key_hash, display, created_at, last_used,
    enabled, token_limit, rpm_limit, allowed_models, expires_at, deleted_at IS NOT NULL, version,
    fit_max_tokens, limit_period, cost_limit_nanos FROM api_keys";

from_columns!(KeyRow {
    id,
    name,
    description,
    hash,
    display,
    created_at,
    last_used,
    enabled,
    token_limit,
    rpm_limit,
    allowed_models,
    expires_at,
    deleted,
    version,
    fit_max_tokens,
    limit_period,
    cost_limit_nanos
});

async fn select_key(db: &mut impl Db, id: i64) -> Result<Option<KeyRow>, StoreError> {
    db.fetch_opt(&format!("{KEY_SELECT} WHERE id = $1"), &[id.into()])
        .await
}

/// A key's hash; one of another length (never written) reads as zeros.
impl FromColumns for [u8; 32] {
    fn take(c: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(c.next::<Vec<u8>>()?.try_into().unwrap_or([0; 32]))
    }
}

/// An RPM limit, saturating.
impl FromColumns for Option<u32> {
    fn take(c: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(c.next::<Option<u64>>()?
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    }
}

/// Allowed model patterns, stored as a JSON array (anything else reads as all models).
impl FromColumns for Option<Vec<String>> {
    fn take(c: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(c.next::<Option<String>>()?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }
}

/// A budget period by its name (an unknown name reads as none).
impl FromColumns for Option<crate::clock::Period> {
    fn take(c: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(c.next::<Option<String>>()?
            .and_then(|name| crate::clock::Period::parse(&name)))
    }
}

/// A broken uniqueness constraint on the key's name becomes [`StoreError::NameTaken`].
fn name_taken<T>(result: Result<T, StoreError>, name: &str) -> Result<T, StoreError> {
    match result {
        Err(e) if e.is_unique_violation() => Err(StoreError::NameTaken(name.to_owned())),
        other => other,
    }
}

/// Inserts a key unless its name is taken or `max_keys` live keys exist.
pub async fn insert_key(
    db: &mut impl Db,
    key: &NewKey,
    max_keys: u64,
) -> Result<KeyRow, StoreError> {
    db.lock(Lock::Keys).await?;
    let live: u64 = db
        .fetch_value(
            "SELECT COUNT(*) FROM api_keys WHERE deleted_at IS NULL",
            &[],
        )
        .await?;
    if live >= max_keys {
        return Err(StoreError::KeyLimit(max_keys));
    }
    let inserted = db
        .fetch_value(
            "INSERT INTO api_keys (name, description, key_hash, display, created_at, limit_period,
             version)
             VALUES ($1, $2, $3, $4, $5, $6, (SELECT COALESCE(MAX(version), 0) + 1 FROM api_keys))
             RETURNING id",
            &[
                key.name.as_str().into(),
                key.description.as_str().into(),
                key.hash.as_slice().into(),
                key.display.as_str().into(),
                ms(key.created_at).into(),
                key.limit_period.map(crate::clock::Period::name).into(),
            ],
        )
        .await;
    let id = name_taken(inserted, &key.name)?;
    select_key(db, id)
        .await?
        .ok_or(StoreError::Task("inserted key vanished".into()))
}

/// All keys, deleted ones included, oldest first.
pub async fn list_keys(db: &mut impl Db) -> Result<Vec<KeyRow>, StoreError> {
    db.fetch(&format!("{KEY_SELECT} ORDER BY id"), &[]).await
}

/// Keys changed after `version`, in the order of their changes.
pub async fn keys_changed_since(db: &mut impl Db, version: i64) -> Result<Vec<KeyRow>, StoreError> {
    let sql = format!("{KEY_SELECT} WHERE version > $1 ORDER BY version");
    db.fetch(&sql, &[version.into()]).await
}

fn apply_patch(key: &mut KeyRow, patch: &KeyPatch) {
    fn set<T>(field: &mut T, value: Option<T>) {
        if let Some(value) = value {
            *field = value;
        }
    }
    let patch = patch.clone();
    set(&mut key.name, patch.name);
    set(&mut key.description, patch.description);
    set(&mut key.enabled, patch.enabled);
    set(&mut key.token_limit, patch.token_limit);
    set(&mut key.rpm_limit, patch.rpm_limit);
    set(&mut key.allowed_models, patch.allowed_models);
    set(&mut key.expires_at, patch.expires_at);
    set(&mut key.fit_max_tokens, patch.fit_max_tokens);
    set(&mut key.limit_period, patch.limit_period);
    set(&mut key.cost_limit_nanos, patch.cost_limit_nanos);
}

/// Applies a patch to a live key; `None` when there is no such live key.
pub async fn update_key(
    db: &mut impl Db,
    id: i64,
    patch: &KeyPatch,
) -> Result<Option<KeyRow>, StoreError> {
    db.lock(Lock::Keys).await?;
    let Some(mut key) = select_key(db, id).await?.filter(|k| !k.deleted) else {
        return Ok(None);
    };
    let was_limited = key.token_limit.is_some();
    let was_cost_limited = key.cost_limit_nanos.is_some();
    let old_period = key.limit_period;
    apply_patch(&mut key, patch);
    let allowed = key
        .allowed_models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
    let updated = db
        .execute(
            "UPDATE api_keys SET name = $2, description = $3, enabled = $4, token_limit = $5,
             rpm_limit = $6, allowed_models = $7, expires_at = $8, fit_max_tokens = $9,
             limit_period = $10, cost_limit_nanos = $11,
             version = (SELECT MAX(version) + 1 FROM api_keys) WHERE id = $1",
            &[
                id.into(),
                key.name.as_str().into(),
                key.description.as_str().into(),
                key.enabled.into(),
                key.token_limit.into(),
                key.rpm_limit.map(i64::from).into(),
                allowed.into(),
                key.expires_at.map(ms).into(),
                key.fit_max_tokens.into(),
                key.limit_period.map(crate::clock::Period::name).into(),
                key.cost_limit_nanos.into(),
            ],
        )
        .await;
    name_taken(updated, &key.name)?;
    // Unlimited budgets are not charged to the ledger: a later limit starts from the recorded
    // usage again.
    for (cleared, unit) in [
        (was_limited && key.token_limit.is_none(), super::UNIT_TOKENS),
        (
            was_cost_limited && key.cost_limit_nanos.is_none(),
            super::UNIT_NANO_USD,
        ),
    ] {
        if cleared {
            db.execute(
                "DELETE FROM budgets WHERE scope = $1 AND unit = $2",
                &[id.into(), unit.into()],
            )
            .await?;
        }
    }
    if old_period != key.limit_period {
        // Rows of the other periods are no longer charged: should the period come back, its row
        // starts from the recorded usage again.
        let period = key.limit_period.map_or(0, crate::clock::Period::code);
        db.execute(
            "DELETE FROM budgets WHERE scope = $1 AND period <> $2",
            &[id.into(), period.into()],
        )
        .await?;
    }
    select_key(db, id)
        .await?
        .ok_or(StoreError::Task("updated key vanished".into()))
        .map(Some)
}

/// Marks a live key deleted; `false` when there is no such live key.
pub async fn delete_key(db: &mut impl Db, id: i64) -> Result<bool, StoreError> {
    db.lock(Lock::Keys).await?;
    let changed = db
        .execute(
            "UPDATE api_keys SET deleted_at = $2, enabled = FALSE,
             version = (SELECT MAX(version) + 1 FROM api_keys)
             WHERE id = $1 AND deleted_at IS NULL",
            &[id.into(), ms(jiff::Timestamp::now()).into()],
        )
        .await?;
    db.execute("DELETE FROM budgets WHERE scope = $1", &[id.into()])
        .await?;
    Ok(changed == 1)
}

// --- Usage ----------------------------------------------------------------------------------

/// `CAST(COALESCE(SUM(calls), 0) AS BIGINT), …` in [`Aggregate`] order.
fn agg_sums() -> String {
    AGG_COLUMNS
        .iter()
        .map(|c| format!("CAST(COALESCE(SUM({c}), 0) AS BIGINT)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An [`Aggregate`] from its columns in [`AGG_COLUMNS`] order.
impl FromColumns for Aggregate {
    fn take(c: &mut Columns<'_>) -> Result<Self, StoreError> {
        let (calls, successes, failures) = c.next()?;
        let (prompt, completion, cache_read, cache_creation, reasoning) = c.next()?;
        let (total, duration_ms) = c.next()?;
        let mut latency = [0u64; LATENCY_BUCKETS];
        for slot in &mut latency {
            *slot = c.next()?;
        }
        let (count_tokens, cost_nanos, unpriced_calls) = c.next()?;
        Ok(Aggregate {
            calls,
            successes,
            failures,
            tokens: TokenUsage {
                prompt,
                completion,
                cache_read,
                cache_creation,
                reasoning,
                total,
            },
            duration_ms,
            latency,
            count_tokens,
            cost_nanos,
            unpriced_calls,
        })
    }
}

/// Reads an [`Aggregate`] from `row`, its columns in [`AGG_COLUMNS`] order from `start`.
pub fn read_aggregate(row: &Row, start: usize) -> Result<Aggregate, StoreError> {
    Columns::at(row, start).next()
}

/// The values of an [`Aggregate`] in [`AGG_COLUMNS`] order.
fn aggregate_values(agg: &Aggregate) -> impl Iterator<Item = Param<'static>> {
    [agg.calls, agg.successes, agg.failures]
        .into_iter()
        .chain(agg.tokens.counts())
        .chain([agg.duration_ms])
        .chain(agg.latency)
        .chain([agg.count_tokens, agg.cost_nanos, agg.unpriced_calls])
        .map(Param::from)
}

/// Aggregates per model of the calls the filter selects.
pub async fn usage_by_model(
    db: &mut impl Db,
    filter: &UsageFilter,
) -> Result<Vec<(String, Aggregate)>, StoreError> {
    let mut conditions = Conditions::default();
    let table = if filter.from.is_some() || filter.to.is_some() {
        conditions.hours(filter.from, filter.to);
        "agg_hour"
    } else {
        "agg_total"
    };
    if let Some(key_id) = filter.key_id {
        conditions.compare("key_id", "=", key_id);
    }
    let sql = format!(
        "SELECT model, {} FROM {table}{} GROUP BY model ORDER BY model {{binary}}",
        agg_sums(),
        conditions.clause()
    );
    db.fetch(&sql, &conditions.params).await
}

/// All-time aggregates per key id (0 = calls without a key).
pub async fn usage_by_key(db: &mut impl Db) -> Result<HashMap<i64, Aggregate>, StoreError> {
    let sql = format!(
        "SELECT key_id, {} FROM agg_total GROUP BY key_id",
        agg_sums()
    );
    let rows: Vec<(i64, Aggregate)> = db.fetch(&sql, &[]).await?;
    Ok(rows.into_iter().collect())
}

/// All-time aggregate of one key (zero when it made no call).
pub async fn usage_of_key(db: &mut impl Db, key_id: i64) -> Result<Aggregate, StoreError> {
    let sql = format!(
        "SELECT {} FROM agg_total WHERE key_id = $1 GROUP BY key_id",
        agg_sums()
    );
    Ok(db
        .fetch_opt(&sql, &[key_id.into()])
        .await?
        .unwrap_or_default())
}

/// Tokens and nano-dollars per key id on local days from `first_day` on; every key's under
/// [`GLOBAL_SCOPE`].
pub async fn usage_since_day(
    db: &mut impl Db,
    first_day: i64,
) -> Result<HashMap<i64, (u64, u64)>, StoreError> {
    let rows: Vec<(i64, u64, u64)> = db
        .fetch(
            "SELECT key_id, CAST(SUM(total_tokens) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT)
             FROM agg_day WHERE day >= $1 GROUP BY key_id",
            &[first_day.into()],
        )
        .await?;
    let scope = |key_id| match key_id {
        ALL_KEYS => Some(GLOBAL_SCOPE),
        GLOBAL_SCOPE => None,
        id => Some(id),
    };
    Ok(rows
        .into_iter()
        .filter_map(|(key_id, tokens, cost)| Some((scope(key_id)?, (tokens, cost))))
        .collect())
}

/// Calls and tokens per local day in `[first_day, last_day]`, days with calls only: of every
/// call, of one key's (`agg_day`), or of one source's (`dim_day`, its `source` rows).
pub async fn usage_by_day(
    db: &mut impl Db,
    scope: &DayScope,
    first_day: i64,
    last_day: i64,
) -> Result<Vec<DayTotal>, StoreError> {
    let (table, scope): (&str, Param) = match scope {
        DayScope::Source(source) => (
            "dim_day WHERE dim = 'source' AND value = $1",
            source.as_str().into(),
        ),
        DayScope::Key(key_id) => ("agg_day WHERE key_id = $1", (*key_id).into()),
        DayScope::All => ("agg_day WHERE key_id = $1", ALL_KEYS.into()),
    };
    let sql = format!(
        "SELECT day, CAST(SUM(calls) AS BIGINT), CAST(SUM(total_tokens) AS BIGINT),
         CAST(SUM(cost_nanos) AS BIGINT)
         FROM {table} AND day BETWEEN $2 AND $3 GROUP BY day ORDER BY day"
    );
    db.fetch(&sql, &[scope, first_day.into(), last_day.into()])
        .await
}
from_columns!(DayTotal {
    day,
    calls,
    tokens,
    cost_nanos
});

/// Tokens per key from `from_hour` on, with each key's first hour with calls. Read from
/// `dim_hour`'s key rows (a row per hour and key), not `agg_hour` (one per hour, key and model:
/// at 10M calls over 90 days a week of it is ~170k rows, which made every `/stats` take 70 ms).
pub async fn usage_since_hour(
    db: &mut impl Db,
    from_hour: i64,
) -> Result<Vec<WindowUsage>, StoreError> {
    db.fetch(
        "SELECT CAST(value AS BIGINT), MIN(hour), CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT)
         FROM dim_hour WHERE hour >= $1 AND dim = 'key' AND calls > 0
         GROUP BY value ORDER BY 1",
        &[from_hour.into()],
    )
    .await
}
from_columns!(WindowUsage {
    key_id,
    first_hour,
    tokens
});

/// The rows of `agg_hour` from `from_hour` on (of one key, or all) of the key × model pairs with
/// calls at or after `active_from`, by key, model and hour.
pub async fn hourly_usage(
    db: &mut impl Db,
    from_hour: i64,
    active_from: i64,
    key_id: Option<i64>,
) -> Result<Vec<HourUsage>, StoreError> {
    let mut c = Conditions::default();
    c.compare("hour", ">=", from_hour);
    c.sql.push("calls > 0".to_owned());
    let active = c.bind(active_from);
    c.sql.push(format!(
        "(key_id, model) IN (SELECT key_id, model FROM agg_hour WHERE hour >= {active} AND calls > 0)"
    ));
    if let Some(key_id) = key_id {
        c.compare("key_id", "=", key_id);
    }
    // Grouped, so that the rows stay one per hour, key and model should the table gain
    // dimensions.
    let sql = format!(
        "SELECT hour, key_id, model, CAST(SUM(calls) AS BIGINT), CAST(SUM(failures) AS BIGINT),
         CAST(SUM(total_tokens) AS BIGINT) FROM agg_hour{} GROUP BY hour, key_id, model
         ORDER BY key_id, model {{binary}}, hour",
        c.clause()
    );
    db.fetch(&sql, &c.params).await
}
from_columns!(HourUsage {
    hour,
    key_id,
    model,
    calls,
    failures,
    tokens
});

// --- Alerts ---------------------------------------------------------------------------------

/// Stores an alert and its deliveries unless one with its `dedup` exists (the unique constraint
/// decides between instances): `Some(id)` when this call stored it.
pub async fn claim_alert(db: &mut impl Db, alert: &NewAlert) -> Result<Option<i64>, StoreError> {
    let inserted: Option<(i64,)> = db
        .fetch_opt(
            "INSERT INTO alerts (dedup, rule, event, key_id, subject, period, message, payload,
             created_at, instance) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (dedup) DO NOTHING RETURNING id",
            &[
                alert.dedup.as_str().into(),
                alert.heading.rule.as_str().into(),
                alert.heading.event.as_str().into(),
                alert.heading.key_id.into(),
                alert.heading.subject.as_str().into(),
                alert.heading.period.as_str().into(),
                alert.heading.message.as_str().into(),
                alert.payload.as_str().into(),
                ms(alert.created_at).into(),
                alert.instance.as_str().into(),
            ],
        )
        .await?;
    let Some((id,)) = inserted else {
        return Ok(None);
    };
    for delivery in &alert.deliveries {
        db.execute(
            "INSERT INTO alert_deliveries (alert_id, target, kind, status, attempts, http_status,
             error, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &delivery_params(id, delivery),
        )
        .await?;
    }
    Ok(Some(id))
}

/// A delivery's columns as `$1`…`$8`: alert id, target, kind, status, attempts, HTTP status,
/// error, changed at.
fn delivery_params(alert_id: i64, delivery: &Delivery) -> [Param<'_>; 8] {
    [
        alert_id.into(),
        delivery.target.as_str().into(),
        delivery.kind.as_str().into(),
        delivery.status.as_str().into(),
        i64::from(delivery.attempts).into(),
        delivery.http_status.map(i64::from).into(),
        delivery.error.as_deref().into(),
        ms(delivery.updated_at).into(),
    ]
}

/// Notes the outcome of a delivery.
pub async fn update_delivery(
    db: &mut impl Db,
    alert_id: i64,
    delivery: &Delivery,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE alert_deliveries SET kind = $3, status = $4, attempts = $5, http_status = $6,
         error = $7, updated_at = $8 WHERE alert_id = $1 AND target = $2",
        &delivery_params(alert_id, delivery),
    )
    .await?;
    Ok(())
}

from_columns!(Delivery {
    target,
    kind,
    status,
    attempts,
    http_status,
    error,
    updated_at
});
from_columns!(super::AlertHeading {
    rule,
    event,
    key_id,
    subject,
    period,
    message
});
from_columns!(NewAlert {
    dedup,
    heading,
    payload,
    created_at,
    instance;
    deliveries: Vec::new()
});
from_columns!(AlertRow { id, alert });

/// The newest `limit` alerts with their deliveries, newest first.
pub async fn alerts(db: &mut impl Db, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
    let mut alerts: Vec<AlertRow> = db
        .fetch(
            "SELECT id, dedup, rule, event, key_id, subject, period, message, payload, created_at,
             instance FROM alerts ORDER BY id DESC LIMIT $1",
            &[i64::from(limit).into()],
        )
        .await?;
    let Some(oldest) = alerts.last().map(|a| a.id) else {
        return Ok(alerts);
    };
    let deliveries: Vec<(i64, Delivery)> = db
        .fetch(
            "SELECT alert_id, target, kind, status, attempts, http_status, error, updated_at
             FROM alert_deliveries WHERE alert_id >= $1 ORDER BY alert_id, target {binary}",
            &[oldest.into()],
        )
        .await?;
    let mut by_alert: HashMap<i64, Vec<Delivery>> = HashMap::new();
    for (id, delivery) in deliveries {
        by_alert.entry(id).or_default().push(delivery);
    }
    for alert in &mut alerts {
        alert.alert.deliveries = by_alert.remove(&alert.id).unwrap_or_default();
    }
    Ok(alerts)
}

/// Takes over deliveries still `pending` and unchanged since `stale_before` (their instance died
/// or stopped while delivering): each is marked as changed `now`, under the condition that it is
/// still stale, so of several instances exactly one takes each. Returns the deliveries taken,
/// with their alert's id and payload.
pub async fn take_stale_deliveries(
    db: &mut impl Db,
    stale_before: jiff::Timestamp,
    now: jiff::Timestamp,
) -> Result<Vec<(i64, String, Delivery)>, StoreError> {
    let rows: Vec<(i64, Delivery, String)> = db
        .fetch(
            "SELECT d.alert_id, d.target, d.kind, d.status, d.attempts, d.http_status, d.error,
             d.updated_at, a.payload FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
             WHERE d.status = 'pending' AND d.updated_at < $1 ORDER BY d.alert_id LIMIT 100",
            &[ms(stale_before).into()],
        )
        .await?;
    let mut taken = Vec::new();
    for (alert_id, mut delivery, payload) in rows {
        let changed = db
            .execute(
                "UPDATE alert_deliveries SET updated_at = $3
                 WHERE alert_id = $1 AND target = $2 AND status = 'pending' AND updated_at < $4",
                &[
                    alert_id.into(),
                    delivery.target.as_str().into(),
                    ms(now).into(),
                    ms(stale_before).into(),
                ],
            )
            .await?;
        if changed == 1 {
            delivery.updated_at = now;
            taken.push((alert_id, payload, delivery));
        }
    }
    Ok(taken)
}

/// Deletes alerts of `rules` raised before `before`, with their deliveries.
pub async fn prune_alerts(
    db: &mut impl Db,
    before: jiff::Timestamp,
    rules: &[String],
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for rule in rules {
        let params = [ms(before).into(), rule.as_str().into()];
        db.execute(
            "DELETE FROM alert_deliveries WHERE alert_id IN
             (SELECT id FROM alerts WHERE created_at < $1 AND rule = $2)",
            &params,
        )
        .await?;
        removed += db
            .execute(
                "DELETE FROM alerts WHERE created_at < $1 AND rule = $2",
                &params,
            )
            .await?;
    }
    Ok(removed)
}

// --- Call records ---------------------------------------------------------------------------

const CALL_COLUMNS: [(&str, Ty); 29] = [
    ("id", Ty::BigInt),
    ("ts", Ty::BigInt),
    ("method", Ty::Text),
    ("endpoint", Ty::Text),
    ("status", Ty::Int),
    ("model", Ty::Text),
    ("key_id", Ty::BigInt),
    ("key_name", Ty::Text),
    ("prompt_tokens", Ty::BigInt),
    ("completion_tokens", Ty::BigInt),
    ("cache_read_tokens", Ty::BigInt),
    ("cache_creation_tokens", Ty::BigInt),
    ("reasoning_tokens", Ty::BigInt),
    ("total_tokens", Ty::BigInt),
    ("duration_ms", Ty::BigInt),
    ("ttft_ms", Ty::BigInt),
    ("stream", Ty::Bool),
    ("estimated", Ty::Bool),
    ("error", Ty::Text),
    ("client", Ty::Text),
    ("session_id", Ty::Text),
    ("user_id", Ty::Text),
    ("provider", Ty::Text),
    ("source", Ty::Text),
    ("cost_nanos", Ty::BigInt),
    ("cost_status", Ty::Text),
    ("alias", Ty::Text),
    ("reasoning_effort", Ty::Text),
    ("service_tier", Ty::Text),
];

fn column_names<T>(columns: &[(&str, T)]) -> String {
    columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

from_columns!(TokenUsage {
    prompt,
    completion,
    cache_read,
    cache_creation,
    reasoning,
    total
});

from_columns!(CallRecord {
    ts,
    method,
    endpoint,
    status,
    model,
    key_id,
    key_name,
    tokens,
    duration_ms,
    ttft_ms,
    stream,
    estimated,
    error,
    client,
    session_id,
    user,
    provider,
    source,
    cost_nanos,
    cost_status,
    alias,
    reasoning_effort,
    service_tier;
    answer: Default::default(),
    ingest: None
});

/// A cost status by its stored spelling.
impl FromColumns for crate::pricing::CostStatus {
    fn take(c: &mut Columns<'_>) -> Result<Self, StoreError> {
        Ok(Self::parse(&c.next::<String>()?))
    }
}
from_columns!(LoggedCall { id, call });

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn log_conditions(query: &LogQuery) -> Conditions<'_> {
    let mut c = Conditions::default();
    if let Some(q) = &query.q {
        // Case-insensitive for ASCII, as SQLite's LIKE is.
        let n = c.bind(like_pattern(q));
        c.sql.push(format!(
            "(endpoint {{ilike}} {n} ESCAPE '\\' OR model {{ilike}} {n} ESCAPE '\\' \
             OR method {{ilike}} {n} ESCAPE '\\' OR CAST(status AS TEXT) LIKE {n} ESCAPE '\\')"
        ));
    }
    match query.status {
        Some(StatusFilter::Exact(code)) => c.compare("status", "=", i64::from(code)),
        // Matches the index on (status / 100, id): rows of the class come newest first.
        Some(StatusFilter::Class(class)) => c.compare("status / 100", "=", i64::from(class)),
        None => {}
    }
    if let Some(since) = query.since {
        c.compare("ts", ">=", ms(since));
    }
    if let Some(until) = query.until {
        c.compare("ts", "<", ms(until));
    }
    if let Some(before_id) = query.before_id {
        c.compare("id", "<", before_id);
    }
    match query.kind {
        Some(CallKind::Call) => c.compare("endpoint", "<>", COUNT_TOKENS_PATH),
        Some(CallKind::CountTokens) => c.compare("endpoint", "=", COUNT_TOKENS_PATH),
        None => {}
    }
    for m in &query.matches {
        match m {
            CallMatch::Method(method) => {
                let n = c.bind(method.as_str());
                c.sql.push(format!("lower(method) = lower({n})"));
            }
            CallMatch::Model(model) => c.compare("model", "=", model.as_str()),
            CallMatch::Key(key_id) => c.compare("key_id", "=", *key_id),
            CallMatch::Client(client) => c.compare("client", "=", client.as_str()),
            CallMatch::Session(id) => c.compare("session_id", "=", id.as_str()),
            CallMatch::Source(source) => c.compare("source", "=", source.as_str()),
        }
    }
    c
}

/// Raw call records, newest first.
pub async fn logs(db: &mut impl Db, query: &LogQuery) -> Result<Vec<LoggedCall>, StoreError> {
    let mut c = log_conditions(query);
    let limit = c.bind(i64::from(query.limit));
    let sql = format!(
        "SELECT {} FROM calls{} ORDER BY id DESC LIMIT {limit}",
        column_names(&CALL_COLUMNS),
        c.clause()
    );
    db.fetch(&sql, &c.params).await
}

fn call_values<'a>(id: i64, call: &'a CallRecord) -> Vec<Param<'a>> {
    let mut row: Vec<Param<'a>> = vec![
        id.into(),
        ms(call.ts).into(),
        call.method.as_str().into(),
        call.endpoint.as_str().into(),
        i64::from(call.status).into(),
        call.model.as_str().into(),
        call.key_id.into(),
        call.key_name.as_deref().into(),
    ];
    row.extend(call.tokens.counts().into_iter().map(Param::from));
    row.push(call.duration_ms.into());
    row.extend([
        call.ttft_ms.into(),
        call.stream.into(),
        call.estimated.into(),
        call.error.as_deref().into(),
        call.client.as_str().into(),
        call.session_id.as_deref().into(),
        call.user.as_deref().into(),
        call.provider.as_str().into(),
        call.source.as_str().into(),
        call.cost_nanos.into(),
        call.cost_status.as_str().into(),
        call.alias.as_deref().into(),
        call.reasoning_effort.as_deref().into(),
        call.service_tier.as_deref().into(),
    ]);
    row
}

/// Adds `groups` (aggregates keyed by integer dimensions and a model) to the rows of `table`,
/// whose key is `int_dims` then `model` (see [`upsert_rollups`]).
pub async fn upsert_aggregates(
    db: &mut impl Db,
    table: &str,
    int_dims: &[&str],
    groups: impl IntoIterator<Item = (Vec<i64>, String, Aggregate)>,
) -> Result<(), StoreError> {
    let groups = groups
        .into_iter()
        .map(|(ints, model, agg)| ((ints, vec![model]), agg));
    upsert_rollups(db, table, int_dims, &["model"], groups).await
}

/// The key of a rollup row: its integer dimensions, then its text ones.
pub type RollupKey = (Vec<i64>, Vec<String>);

/// Adds `groups` to the rows of `table`, whose key is `int_dims` then `text_dims`. Rows are
/// written in the order of their keys, so that writers of several instances lock shared rows in
/// the same order and cannot deadlock.
pub async fn upsert_rollups(
    db: &mut impl Db,
    table: &str,
    int_dims: &[&str],
    text_dims: &[&str],
    groups: impl IntoIterator<Item = (RollupKey, Aggregate)>,
) -> Result<(), StoreError> {
    let groups = groups
        .into_iter()
        .map(|(key, agg)| (key, (Vec::new(), agg)));
    upsert_labelled(db, (table, int_dims, text_dims, &[]), groups).await
}

/// A rollup table: its name, integer and text key columns, and the text columns that keep the
/// last value written (labels).
type RollupTable<'a> = (&'a str, &'a [&'a str], &'a [&'a str], &'a [&'a str]);

/// [`upsert_rollups`] for a table with labels: each group's labels replace the row's.
async fn upsert_labelled(
    db: &mut impl Db,
    (table, int_dims, text_dims, labels): RollupTable<'_>,
    groups: impl IntoIterator<Item = (RollupKey, (Vec<String>, Aggregate))>,
) -> Result<(), StoreError> {
    let mut groups: Vec<_> = groups.into_iter().collect();
    if groups.is_empty() {
        return Ok(());
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    // A table's statement depends on its name only: each aggregate table has fixed dimensions.
    let keys = || -> String {
        let keys: Vec<&str> = int_dims.iter().chain(text_dims).copied().collect();
        keys.join(", ")
    };
    let insert = super::sql::memo("aggregate insert", table, || {
        let columns: Vec<&str> = int_dims
            .iter()
            .chain(text_dims)
            .chain(labels)
            .chain(&AGG_COLUMNS)
            .copied()
            .collect();
        format!("INSERT INTO {table} ({})", columns.join(", "))
    });
    let tail = super::sql::memo("aggregate upsert", table, || {
        let updates = labels
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .chain(
                AGG_COLUMNS
                    .iter()
                    .map(|c| format!("{c} = {table}.{c} + excluded.{c}")),
            )
            .collect::<Vec<_>>()
            .join(", ");
        format!("ON CONFLICT ({}) DO UPDATE SET {updates}", keys())
    });
    let mut types = vec![Ty::BigInt; int_dims.len()];
    types.extend(vec![Ty::Text; text_dims.len() + labels.len()]);
    types.extend([Ty::BigInt; AGG_COLUMNS.len()]);
    let bulk = Bulk {
        insert,
        types,
        rows: groups
            .into_iter()
            .map(|((ints, texts), (labels, agg))| {
                let mut row: Vec<Param<'static>> = ints.into_iter().map(Param::from).collect();
                row.extend(texts.into_iter().chain(labels).map(Param::from));
                row.extend(aggregate_values(&agg));
                row
            })
            .collect(),
        tail,
    };
    db.insert(&bulk).await
}

pub fn with_dims(
    groups: HashMap<Dims, Aggregate>,
) -> impl Iterator<Item = (Vec<i64>, String, Aggregate)> {
    groups
        .into_iter()
        .map(|((a, b, model), agg)| (vec![a, b], model, agg))
}

/// Adds the [`ALL_KEYS`] rollup row of each day to per key × model day aggregates.
pub fn add_day_rollups(days: &mut HashMap<Dims, Aggregate>) {
    let mut rollups: HashMap<i64, Aggregate> = HashMap::new();
    for ((day, _, _), agg) in days.iter() {
        rollups.entry(*day).or_default().add(agg);
    }
    for (day, agg) in rollups {
        days.insert((day, ALL_KEYS, String::new()), agg);
    }
}

/// A batch summed per hour, per local day (with each day's rollup row) and in all, each per
/// key × model; per hour and day by every dimension ([`Rollups`]); and the latest call of each
/// key.
struct Grouped {
    hours: HashMap<Dims, Aggregate>,
    days: HashMap<Dims, Aggregate>,
    totals: HashMap<(i64, String), Aggregate>,
    rollups: Rollups,
    last_used: HashMap<i64, i64>,
}

/// A batch summed into the rows of `dim_hour`, `dim_day`, `usage_day`, `user_day` and
/// `user_total_day`.
#[derive(Default)]
struct Rollups {
    dim_hour: HashMap<RollupKey, Aggregate>,
    dim_day: HashMap<RollupKey, Aggregate>,
    usage_day: HashMap<RollupKey, Aggregate>,
    user_day: HashMap<RollupKey, Aggregate>,
    user_total_day: HashMap<RollupKey, Aggregate>,
}

/// The text dimensions of `usage_day`, after its day and key.
const USAGE_TEXT_DIMS: [&str; 5] = ["model", "client", "provider", "source", "endpoint"];
/// The text dimension of `user_day` and `user_total_day`, after their day (and key).
const USER_TEXT_DIMS: [&str; 1] = ["user_id"];
/// The text dimensions of `dim_hour` and `dim_day`, after their hour or day.
const DIM_TEXT_DIMS: [&str; 2] = ["dim", "value"];

/// The dimensions `dim_hour` and `dim_day` keep, by their name in the `dim` column.
const ONE_DIMS: [Dim; 6] = [
    Dim::Key,
    Dim::Model,
    Dim::Client,
    Dim::Provider,
    Dim::Source,
    Dim::Endpoint,
];

/// A call's value of one of [`ONE_DIMS`], as `dim_hour` and `dim_day` keep it.
fn one_dim_value(call: &CallRecord, dim: Dim) -> String {
    match dim {
        Dim::Key => call.key_id.unwrap_or(0).to_string(),
        Dim::Model => call.model.clone(),
        Dim::Client => call.client.clone(),
        Dim::Provider => call.provider.clone(),
        Dim::Source => call.source.clone(),
        _ => call.endpoint.clone(),
    }
}

impl Rollups {
    /// Adds one call, recorded under the end user `user` (after the day's cap).
    fn add(&mut self, call: &CallRecord, agg: &Aggregate, (hour, day): (i64, i64), user: &str) {
        let key_id = call.key_id.unwrap_or(0);
        for dim in ONE_DIMS {
            let texts = vec![dim.name().to_owned(), one_dim_value(call, dim)];
            for (table, bucket) in [(&mut self.dim_hour, hour), (&mut self.dim_day, day)] {
                table
                    .entry((vec![bucket], texts.clone()))
                    .or_default()
                    .add(agg);
            }
        }
        let dims = vec![
            call.model.clone(),
            call.client.clone(),
            call.provider.clone(),
            call.source.clone(),
            call.endpoint.clone(),
        ];
        self.usage_day
            .entry((vec![day, key_id], dims))
            .or_default()
            .add(agg);
        self.user_day
            .entry((vec![day, key_id], vec![user.to_owned()]))
            .or_default()
            .add(agg);
        self.user_total_day
            .entry((vec![day], vec![user.to_owned()]))
            .or_default()
            .add(agg);
    }

    async fn write(self, db: &mut impl Db) -> Result<(), StoreError> {
        let tables = [
            ("dim_hour", &["hour"][..], &DIM_TEXT_DIMS[..], self.dim_hour),
            ("dim_day", &["day"][..], &DIM_TEXT_DIMS[..], self.dim_day),
            (
                "usage_day",
                &["day", "key_id"][..],
                &USAGE_TEXT_DIMS[..],
                self.usage_day,
            ),
            (
                "user_day",
                &["day", "key_id"][..],
                &USER_TEXT_DIMS[..],
                self.user_day,
            ),
            (
                "user_total_day",
                &["day"][..],
                &USER_TEXT_DIMS[..],
                self.user_total_day,
            ),
        ];
        for (table, ints, texts, rows) in tables {
            upsert_rollups(db, table, ints, texts, rows).await?;
        }
        Ok(())
    }
}

fn group(records: &[CallRecord], users: &[&str], tz: &jiff::tz::TimeZone) -> Grouped {
    let mut g = Grouped {
        hours: HashMap::new(),
        days: HashMap::new(),
        totals: HashMap::new(),
        rollups: Rollups::default(),
        last_used: HashMap::new(),
    };
    for (call, user) in records.iter().zip(users) {
        let agg = Aggregate::of(call);
        let key_id = call.key_id.unwrap_or(0);
        let hour = ms(call.ts).div_euclid(MS_PER_HOUR);
        let day = local_day(call.ts, tz);
        let model = || call.model.clone();
        g.hours
            .entry((hour, key_id, model()))
            .or_default()
            .add(&agg);
        g.days.entry((day, key_id, model())).or_default().add(&agg);
        g.days
            .entry((day, ALL_KEYS, String::new()))
            .or_default()
            .add(&agg);
        g.totals.entry((key_id, model())).or_default().add(&agg);
        g.rollups.add(call, &agg, (hour, day), user);
        if let Some(id) = call.key_id {
            let seen = g.last_used.entry(id).or_insert(i64::MIN);
            *seen = (*seen).max(ms(call.ts));
        }
    }
    g
}

/// Writes the records, their aggregates and rollups and the keys' `last_used`, trims the raw
/// log to `max_logs`, and returns the records with their new ids, and the end users admitted to
/// days' rollups (for [`KnownUsers::remember`] once committed). Runs in the caller's transaction.
/// An ingested record whose de-duplication key is already stored (by this instance or another,
/// now or before a restart) is left out: it is not in the returned list.
pub async fn write_batch(
    db: &mut impl Db,
    records: &[CallRecord],
    tz: &jiff::tz::TimeZone,
    max_logs: u64,
    known: &KnownUsers,
) -> Result<(Vec<LoggedCall>, Vec<(i64, String)>), StoreError> {
    if records.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let ids = db.call_ids(records.len()).await?;
    let deduplicated: Vec<CallRecord>;
    let (ids, records) = if records.iter().any(|r| r.ingest.is_some()) {
        let (ids, kept) = keep_new(db, ids, records).await?;
        deduplicated = kept.into_iter().cloned().collect();
        (ids, deduplicated.as_slice())
    } else {
        (ids, records)
    };
    // Before any aggregate row: the cap's counters are the first rollup rows a writer locks.
    let admission = admit_users(db, records, tz, known).await?;
    let logged = write_calls(db, ids, records, tz, max_logs, &admission).await?;
    Ok((logged, admission.admitted))
}

/// The records (with their ids) that are not ingested ones already stored: each ingested
/// record's key goes into `ingest_keys` unless it is there, and the ids whose key went in are
/// read back. Two writers with one key: the second waits for the first's commit (the unique
/// index), then leaves its copy out.
async fn keep_new<'r>(
    db: &mut impl Db,
    ids: Vec<i64>,
    records: &'r [CallRecord],
) -> Result<(Vec<i64>, Vec<&'r CallRecord>), StoreError> {
    let mut keys: Vec<(String, i64)> = ids
        .iter()
        .zip(records)
        .filter_map(|(id, r)| r.ingest.as_ref().map(|i| (hex(&i.dedup_key), *id)))
        .collect();
    // Rows in key order: writers of several instances lock them in one order.
    keys.sort();
    let (first, last) = (
        keys.iter().map(|k| k.1).min().unwrap_or(0),
        keys.iter().map(|k| k.1).max().unwrap_or(0),
    );
    let bulk = Bulk {
        insert: "INSERT INTO ingest_keys (dedup_key, call_id)".into(),
        types: vec![Ty::Text, Ty::BigInt],
        rows: keys
            .into_iter()
            .map(|(key, id)| vec![Param::from(key), Param::from(id)])
            .collect(),
        tail: "ON CONFLICT (dedup_key) DO NOTHING".into(),
    };
    db.insert(&bulk).await?;
    let stored: HashSet<i64> = db
        .fetch::<(i64,)>(
            "SELECT call_id FROM ingest_keys WHERE call_id BETWEEN $1 AND $2",
            &[first.into(), last.into()],
        )
        .await?
        .into_iter()
        .map(|(id,)| id)
        .collect();
    Ok(ids
        .into_iter()
        .zip(records)
        .filter(|(id, r)| r.ingest.is_none() || stored.contains(id))
        .unzip())
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// De-duplication keys kept: those of the newest this many calls (a record delivered again
/// after so many newer calls were stored would be stored twice).
pub const INGEST_KEYS_KEPT: i64 = 1_000_000;

async fn write_calls(
    db: &mut impl Db,
    ids: Vec<i64>,
    records: &[CallRecord],
    tz: &jiff::tz::TimeZone,
    max_logs: u64,
    admission: &Admission,
) -> Result<Vec<LoggedCall>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let calls = Bulk {
        insert: super::sql::memo("calls insert", "", || {
            format!("INSERT INTO calls ({})", column_names(&CALL_COLUMNS))
        }),
        types: CALL_COLUMNS.iter().map(|(_, ty)| *ty).collect(),
        rows: ids
            .iter()
            .zip(records)
            .map(|(id, call)| call_values(*id, call))
            .collect(),
        tail: "".into(),
    };
    db.insert(&calls).await?;
    upsert_source_aggregates(db, records, tz).await?;
    upsert_source_hours(db, records).await?;
    let g = group(records, &admission.labels(records), tz);
    upsert_aggregates(db, "agg_hour", &["hour", "key_id"], with_dims(g.hours)).await?;
    upsert_aggregates(db, "agg_day", &["day", "key_id"], with_dims(g.days)).await?;
    let totals = g
        .totals
        .into_iter()
        .map(|((key_id, model), agg)| (vec![key_id], model, agg));
    upsert_aggregates(db, "agg_total", &["key_id"], totals).await?;
    g.rollups.write(db).await?;
    let mut last_used: Vec<(i64, i64)> = g.last_used.into_iter().collect();
    last_used.sort_unstable();
    for (key_id, ts) in last_used {
        db.execute(
            "UPDATE api_keys SET last_used = {greatest}(COALESCE(last_used, 0), $2) WHERE id = $1",
            &[key_id.into(), ts.into()],
        )
        .await?;
    }
    if let Some(last) = ids.last() {
        // Several writers: every row at least max_logs ids older than this batch's newest goes,
        // whoever wrote it.
        let threshold = last - to_i64(max_logs);
        if threshold > 0 {
            db.execute("DELETE FROM calls WHERE id <= $1", &[threshold.into()])
                .await?;
        }
        if records.iter().any(|r| r.ingest.is_some()) && last % 64 == 0 {
            // Now and then, not every batch: the index makes it cheap, but not free.
            db.execute(
                "DELETE FROM ingest_keys WHERE call_id <= $1",
                &[(last - INGEST_KEYS_KEPT).into()],
            )
            .await?;
        }
    }
    let logged = ids
        .into_iter()
        .zip(records)
        .map(|(id, call)| LoggedCall {
            id,
            call: call.clone(),
        })
        .collect();
    Ok(logged)
}

// --- End users in the rollups -----------------------------------------------------------------

/// Most days whose admitted users a writer remembers (the newest ones: today and the days
/// before it, which late calls still reach).
const KNOWN_DAYS: usize = 3;

/// The cap on each local day's distinct end users, and the users recent days admitted as far as
/// this writer has seen (other writers admit users too: one not known here is looked up).
pub struct KnownUsers {
    cap: u64,
    days: BTreeMap<i64, HashSet<String>>,
}

impl KnownUsers {
    /// Nothing known yet; at most `cap` users a day.
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            days: BTreeMap::new(),
        }
    }

    fn knows(&self, day: i64, user: &str) -> bool {
        self.days
            .get(&day)
            .is_some_and(|users| users.contains(user))
    }

    /// Notes users that committed batches admitted; forgets all but the newest days.
    pub fn remember(&mut self, admitted: Vec<(i64, String)>) {
        for (day, user) in admitted {
            self.days.entry(day).or_default().insert(user);
        }
        while self.days.len() > KNOWN_DAYS {
            self.days.pop_first();
        }
    }
}

/// Which end users of a batch its days' rollups keep apart.
struct Admission {
    /// The local day of each record.
    days: Vec<i64>,
    /// Users this batch found admitted or admitted itself, per day.
    admitted: Vec<(i64, String)>,
    /// Users beyond their day's cap, recorded as [`OTHER_USERS`].
    folded: HashSet<(i64, String)>,
}

impl Admission {
    /// The end user each record is rolled up under: `''` when it named none.
    fn labels<'a>(&'a self, records: &'a [CallRecord]) -> Vec<&'a str> {
        records
            .iter()
            .zip(&self.days)
            .map(|(call, &day)| match call.user.as_deref() {
                Some(user) if self.folded.contains(&(day, user.to_owned())) => OTHER_USERS,
                Some(user) => user,
                None => "",
            })
            .collect()
    }
}

/// Decides, for each end user of the batch that this writer does not know to be admitted to the
/// day of its call, whether the day admits it: yes if it already did (another batch, another
/// instance), else while the day has admitted fewer than the cap. Each day's counter row is
/// locked first, in the order of days, so concurrent writers decide one after the other.
async fn admit_users(
    db: &mut impl Db,
    records: &[CallRecord],
    tz: &jiff::tz::TimeZone,
    known: &KnownUsers,
) -> Result<Admission, StoreError> {
    let days: Vec<i64> = records.iter().map(|c| local_day(c.ts, tz)).collect();
    let mut pending: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (call, &day) in records.iter().zip(&days) {
        let Some(user) = call.user.as_deref() else {
            continue;
        };
        if user.is_empty() || user == OTHER_USERS || known.knows(day, user) {
            continue;
        }
        if seen.insert((day, user)) {
            pending.entry(day).or_default().push(user);
        }
    }
    let mut admission = Admission {
        days,
        admitted: Vec::new(),
        folded: HashSet::new(),
    };
    for (day, users) in pending {
        admit_day(db, day, &users, known.cap, &mut admission).await?;
    }
    Ok(admission)
}

/// [`admit_users`] for one day's users, in the order they came.
async fn admit_day(
    db: &mut impl Db,
    day: i64,
    users: &[&str],
    cap: u64,
    admission: &mut Admission,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO usage_user_count (day, users) VALUES ($1, 0) ON CONFLICT (day) DO NOTHING",
        &[day.into()],
    )
    .await?;
    let count: u64 = db
        .fetch_value(
            "SELECT users FROM usage_user_count WHERE day = $1 {for_update}",
            &[day.into()],
        )
        .await?;
    let mut added = 0u64;
    for &user in users {
        let exists = db
            .fetch_opt::<(i64,)>(
                "SELECT 1 FROM user_day WHERE day = $1 AND user_id = $2 LIMIT 1",
                &[day.into(), user.into()],
            )
            .await?
            .is_some();
        if exists || count + added < cap {
            added += u64::from(!exists);
            admission.admitted.push((day, user.to_owned()));
        } else {
            admission.folded.insert((day, user.to_owned()));
        }
    }
    if added > 0 {
        db.execute(
            "UPDATE usage_user_count SET users = users + $2 WHERE day = $1",
            &[day.into(), added.into()],
        )
        .await?;
    }
    Ok(())
}

/// Rebuilds `dim_day` from `dim_hour` in the time zone `tz`. (`usage_day` and `user_day` have
/// no hourly rows to be rebuilt from: they keep the days of the zone they were recorded in.)
pub async fn rebucket_rollups(db: &mut impl Db, tz: &jiff::tz::TimeZone) -> Result<(), StoreError> {
    db.execute("DELETE FROM dim_day", &[]).await?;
    let sql = format!(
        "SELECT hour, dim, value, {} FROM dim_hour",
        AGG_COLUMNS.join(", ")
    );
    let mut days: HashMap<RollupKey, Aggregate> = HashMap::new();
    let rows: Vec<(i64, String, String, Aggregate)> = db.fetch(&sql, &[]).await?;
    for (hour, dim, value, agg) in rows {
        let day = local_day(from_ms(hour * MS_PER_HOUR), tz);
        days.entry((vec![day], vec![dim, value]))
            .or_default()
            .add(&agg);
    }
    upsert_rollups(db, "dim_day", &["day"], &DIM_TEXT_DIMS, days).await
}

// --- Usage by any dimension ---------------------------------------------------------------------

/// The rollup column of a dimension: its API name but for the two ids.
fn dim_column(dim: Dim) -> &'static str {
    match dim {
        Dim::Key => "key_id",
        Dim::User => "user_id",
        other => other.name(),
    }
}

/// Whether `ts` is absent or the start of its local day.
fn at_midnight(ts: Option<jiff::Timestamp>, tz: &jiff::tz::TimeZone) -> bool {
    ts.is_none_or(|ts| {
        let zoned = ts.to_zoned(tz.clone());
        zoned.start_of_day().is_ok_and(|start| start == zoned)
    })
}

/// A breakdown of usage from the rollups: `user_total_day` when the query names the end user but
/// not the key, `user_day` when it names both; `agg_total` or `agg_day` when it names the key and
/// the model (all time, or by day or window); `dim_hour` or `dim_day` when it names one other
/// dimension at most (grouped or filtered) —
/// hourly when grouped by hour or when `from`/`to` cut a local day; else `usage_day`. The daily
/// tables widen `from` and `to` to whole local days.
pub async fn usage(
    db: &mut impl Db,
    query: &UsageQuery,
    tz: &jiff::tz::TimeZone,
) -> Result<Vec<UsageGroup>, StoreError> {
    let mut named: Vec<Dim> = query
        .dims()
        .filter(|d| !matches!(d, Dim::Day | Dim::Hour))
        .collect();
    named.dedup();
    named.sort_by_key(|d| d.name());
    named.dedup();
    // With no dimension but time, any one dimension's rows sum to every call: `source` has fewest.
    let one = (!query.reads_users() && named.len() <= 1)
        .then(|| named.first().copied().unwrap_or(Dim::Source));
    let whole_days = at_midnight(query.from, tz) && at_midnight(query.to, tz);
    let hourly = one.is_some()
        && (query.group_by.contains(&Dim::Hour)
            || !(query.group_by.contains(&Dim::Day) || whole_days));
    // Key and model (by day or in all) are what the first aggregate tables keep: a row per key,
    // model (and day), where `usage_day` keeps one per every dimension's values.
    let key_model = one.is_none()
        && !query.reads_users()
        && named == [Dim::Key, Dim::Model]
        && !query.dims().any(|d| d == Dim::Hour);
    let all_time =
        query.from.is_none() && query.to.is_none() && !query.group_by.contains(&Dim::Day);
    let table = match (one, hourly) {
        (Some(_), true) => "dim_hour",
        (Some(_), false) => "dim_day",
        (None, _) if key_model && all_time => "agg_total",
        (None, _) if key_model => "agg_day",
        (None, _) if query.reads_users() && !query.dims().any(|d| d == Dim::Key) => {
            "user_total_day"
        }
        (None, _) if query.reads_users() => "user_day",
        (None, _) => "usage_day",
    };
    // Grouped by user and day, each row of `user_total_day` is a group: they are ranked without
    // grouping. Ordered by tokens, the window's days are compared as `+day`, which no index
    // answers: SQLite would otherwise read the window by the primary key and sort every row of
    // it, where reading the index of tokens (which holds the groups' keys) from its largest stops
    // at the limit.
    let rows_are_groups = table == "user_total_day"
        && query.group_by.contains(&Dim::User)
        && query.group_by.contains(&Dim::Day);
    let day = if rows_are_groups && query.order == UsageOrder::Tokens {
        "+day"
    } else {
        "day"
    };
    let column = |d: Dim| match one {
        Some(o) if o == d => "value",
        _ => dim_column(d),
    };
    let mut c = Conditions::default();
    if let Some(o) = one {
        c.compare("dim", "=", o.name());
    }
    if table == "agg_day" {
        // Not the rows that sum each day's keys.
        c.compare("key_id", "<>", ALL_KEYS);
    }
    if hourly {
        c.hours(query.from, query.to);
    } else {
        if let Some(from) = query.from {
            c.compare(day, ">=", local_day(from, tz));
        }
        if let Some(to) = query.to {
            let last = to
                .checked_sub(jiff::SignedDuration::from_millis(1))
                .unwrap_or(to);
            c.compare(day, "<=", local_day(last, tz));
        }
    }
    if let Some(key_id) = query.key_id {
        match one {
            Some(Dim::Key) => c.compare("value", "=", key_id.to_string()),
            _ => c.compare("key_id", "=", key_id),
        }
    }
    for (dim, value) in &query.filters {
        c.compare(column(*dim), "=", value.as_str());
    }
    let groups: Vec<&str> = query.group_by.iter().map(|d| column(*d)).collect();
    let order_column = match query.order {
        UsageOrder::Tokens => "total_tokens",
        UsageOrder::Calls => "calls",
        UsageOrder::Errors => "failures",
        UsageOrder::Cost => "cost_nanos",
    };
    let order = if rows_are_groups {
        order_column.to_owned()
    } else {
        format!("SUM({order_column})")
    };
    let ties: Vec<String> = query
        .group_by
        .iter()
        .map(|d| match column(*d) {
            col @ ("key_id" | "day" | "hour") => col.to_owned(),
            col => format!("{col} {{binary}}"),
        })
        .collect();
    let keys_as_text = one == Some(Dim::Key);
    if !query.reads_users() {
        // The other rollups' groups are few: one pass sums and orders them.
        let limit = c.bind(i64::from(query.limit));
        let sql = format!(
            "SELECT {groups}, {sums} FROM {table}{filter} GROUP BY {groups}
             ORDER BY {order} DESC, {ties} LIMIT {limit}",
            groups = groups.join(", "),
            sums = agg_sums(),
            filter = c.clause(),
            ties = ties.join(", "),
        );
        let rows = db.query(&sql, &c.params).await?;
        return rows
            .iter()
            .map(|row| usage_group(row, &query.group_by, keys_as_text))
            .collect();
    }
    // End users are many: the groups are ranked by the one value they are ordered by (summing
    // every value column of every row in the window costs ten times as much), then summed in
    // full only for the rows of the groups kept.
    let mut rank = Conditions {
        sql: c.sql.clone(),
        params: c.params.clone(),
    };
    let limit = rank.bind(i64::from(query.limit));
    let grouping = if rows_are_groups {
        String::new()
    } else {
        format!(" GROUP BY {}", groups.join(", "))
    };
    let ranked = db
        .query(
            &format!(
                "SELECT {groups} FROM {table}{filter}{grouping}
                 ORDER BY {order} DESC, {ties} LIMIT {limit}",
                groups = groups.join(", "),
                filter = rank.clause(),
                ties = ties.join(", "),
            ),
            &rank.params,
        )
        .await?;
    let keys = ranked
        .iter()
        .map(|row| group_values(row, &query.group_by, keys_as_text))
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    for (i, dim) in query.group_by.iter().enumerate() {
        let distinct: BTreeSet<_> = keys.iter().map(|k| k[i].clone()).collect();
        let marks: Vec<String> = distinct
            .into_iter()
            .map(|v| match v {
                DimValue::Int(v) => c.bind(v),
                DimValue::Text(v) => c.bind(v),
            })
            .collect();
        c.sql
            .push(format!("{} IN ({})", column(*dim), marks.join(", ")));
    }
    let sql = format!(
        "SELECT {groups}, {sums} FROM {table}{filter} GROUP BY {groups}",
        groups = groups.join(", "),
        sums = agg_sums(),
        filter = c.clause(),
    );
    let mut sums: HashMap<Vec<DimValue>, Aggregate> = HashMap::new();
    for row in db.query(&sql, &c.params).await? {
        let UsageGroup { values, agg } = usage_group(&row, &query.group_by, keys_as_text)?;
        sums.insert(values, agg);
    }
    Ok(keys
        .into_iter()
        .map(|values| {
            let agg = sums.get(&values).copied().unwrap_or_default();
            UsageGroup { values, agg }
        })
        .collect())
}

/// A row of `group_by`'s values followed by the aggregate columns.
fn usage_group(row: &Row, group_by: &[Dim], keys_as_text: bool) -> Result<UsageGroup, StoreError> {
    Ok(UsageGroup {
        values: group_values(row, group_by, keys_as_text)?,
        agg: read_aggregate(row, group_by.len())?,
    })
}

/// The values of `group_by` at the start of a row (a key id written as text in `dim_*`).
fn group_values(
    row: &Row,
    group_by: &[Dim],
    keys_as_text: bool,
) -> Result<Vec<DimValue>, StoreError> {
    group_by
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Key if keys_as_text => {
                let text = row.text(i)?;
                text.parse()
                    .map(DimValue::Int)
                    .map_err(|_| StoreError::Decode(format!("key id {text:?} in dim rollups")))
            }
            Dim::Key | Dim::Day | Dim::Hour => row.int(i).map(DimValue::Int),
            _ => row.text(i).map(DimValue::Text),
        })
        .collect()
}

// --- Ingested usage -------------------------------------------------------------------------

/// Adds the ingested records of a batch to `agg_source`, per local day, source, and credential
/// or client key (labelled with the masked credential or the key's display form, as last seen).
async fn upsert_source_aggregates(
    db: &mut impl Db,
    records: &[CallRecord],
    tz: &jiff::tz::TimeZone,
) -> Result<(), StoreError> {
    let mut groups: HashMap<RollupKey, (Vec<String>, Aggregate)> = HashMap::new();
    for call in records {
        let Some(ingest) = &call.ingest else { continue };
        let day = local_day(call.ts, tz);
        let agg = Aggregate::of(call);
        let mut add = |dim: &str, ident: String, label: &str| {
            let texts = vec![call.source.clone(), dim.to_owned(), ident];
            let entry = groups.entry((vec![day], texts)).or_default();
            entry.0 = vec![label.to_owned()];
            entry.1.add(&agg);
        };
        add(
            "credential",
            ingest.credential.clone(),
            &ingest.credential_label,
        );
        if let Some(hash) = &ingest.client_key_hash {
            add("client_key", hex(hash), &ingest.client_key_display);
        }
    }
    let table = (
        "agg_source",
        &["day"][..],
        &["source", "dim", "ident"][..],
        &["label"][..],
    );
    upsert_labelled(db, table, groups).await
}

/// Adds every call of a batch to `agg_source_hour`, per UTC hour, source and model.
async fn upsert_source_hours(db: &mut impl Db, records: &[CallRecord]) -> Result<(), StoreError> {
    let mut groups: HashMap<RollupKey, Aggregate> = HashMap::new();
    for call in records {
        let hour = ms(call.ts).div_euclid(MS_PER_HOUR);
        groups
            .entry((vec![hour], vec![call.source.clone(), call.model.clone()]))
            .or_default()
            .add(&Aggregate::of(call));
    }
    upsert_rollups(
        db,
        "agg_source_hour",
        &["hour"],
        &["source", "model"],
        groups,
    )
    .await
}

/// Aggregates per model of one source's calls, within the filter's hours.
pub async fn usage_by_model_of_source(
    db: &mut impl Db,
    source: &str,
    filter: &UsageFilter,
) -> Result<Vec<(String, Aggregate)>, StoreError> {
    let mut c = Conditions::default();
    c.compare("source", "=", source);
    c.hours(filter.from, filter.to);
    let sql = format!(
        "SELECT model, {} FROM agg_source_hour{} GROUP BY model ORDER BY model {{binary}}",
        agg_sums(),
        c.clause()
    );
    db.fetch(&sql, &c.params).await
}

/// Ingested usage per source and credential (`dim` = `credential`) or client key
/// (`client_key`), over the local days `[first_day, last_day]`, most tokens first.
pub async fn source_usage(
    db: &mut impl Db,
    dim: &str,
    source: Option<&str>,
    first_day: i64,
    last_day: i64,
) -> Result<Vec<super::SourceUsage>, StoreError> {
    let mut c = Conditions::default();
    c.compare("dim", "=", dim);
    c.compare("day", ">=", first_day);
    c.compare("day", "<=", last_day);
    if let Some(source) = source {
        c.compare("source", "=", source);
    }
    let sql = format!(
        "SELECT source, ident, MAX(label), {} FROM agg_source{} GROUP BY source, ident \
         ORDER BY 12 DESC, source {{binary}}, ident {{binary}} LIMIT 1000",
        agg_sums(),
        c.clause()
    );
    db.fetch(&sql, &c.params).await
}
from_columns!(super::SourceUsage {
    source,
    ident,
    label,
    usage
});

/// Admits `name` as a push source (see [`super::Store::admit_push_source`]); a new name is
/// admitted under a lock, so that instances admitting together do not pass the cap.
pub async fn admit_push_source(
    db: &mut impl Db,
    name: &str,
    configured: &[String],
    cap: u64,
    now: i64,
) -> Result<super::PushSource, StoreError> {
    let known = "SELECT name FROM push_sources WHERE name = $1";
    if db
        .fetch_opt::<(String,)>(known, &[name.into()])
        .await?
        .is_some()
    {
        return Ok(super::PushSource::Admitted);
    }
    db.lock(Lock::PushSources).await?;
    if db
        .fetch_opt::<(String,)>(known, &[name.into()])
        .await?
        .is_some()
    {
        return Ok(super::PushSource::Admitted);
    }
    let names: Vec<(String,)> = db
        .fetch("SELECT name FROM push_sources ORDER BY name {binary}", &[])
        .await?;
    let taken: Vec<String> = names
        .into_iter()
        .map(|(n,)| n)
        .filter(|n| !configured.contains(n))
        .collect();
    if taken.len() as u64 >= cap {
        return Ok(super::PushSource::Full(taken));
    }
    db.execute(
        "INSERT INTO push_sources (name, first_seen) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[name.into(), now.into()],
    )
    .await?;
    Ok(super::PushSource::Admitted)
}

/// Takes or renews the lease of `source` for `holder` until `expires_at` (ms): succeeds when
/// nobody holds it, `holder` does, or the holder's lease ran out before `now`.
pub async fn take_source_lease(
    db: &mut impl Db,
    source: &str,
    holder: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, StoreError> {
    let changed = db
        .execute(
            "INSERT INTO source_leases (source, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (source) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE source_leases.holder = excluded.holder OR source_leases.expires_at < $4",
            &[source.into(), holder.into(), expires_at.into(), now.into()],
        )
        .await?;
    Ok(changed == 1)
}

/// Gives the lease of `source` up, if `holder` has it.
pub async fn release_source_lease(
    db: &mut impl Db,
    source: &str,
    holder: &str,
) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM source_leases WHERE source = $1 AND holder = $2",
        &[source.into(), holder.into()],
    )
    .await?;
    Ok(())
}

// --- Budget ledgers and instances -----------------------------------------------------------

/// `WHERE` of one ledger row, its columns as `$1`…`$4`.
const LEDGER_ROW: &str = "scope = $1 AND unit = $2 AND period = $3 AND period_start = $4";

fn row_params(row: &LedgerRow) -> Vec<Param<'static>> {
    vec![
        row.scope.into(),
        row.unit.into(),
        row.period.into(),
        row.start_ms.into(),
    ]
}

/// The usage recorded under a ledger row's budget in its period: all time from `agg_total` for
/// a budget that never resets, else from the period's first local day on in `agg_day`.
async fn recorded_use(db: &mut impl Db, row: &LedgerRow) -> Result<u64, StoreError> {
    let column = if row.unit == super::UNIT_NANO_USD {
        "cost_nanos"
    } else {
        "total_tokens"
    };
    if row.period == 0 {
        return db
            .fetch_value(
                &format!(
                    "SELECT CAST(COALESCE(SUM({column}), 0) AS BIGINT) FROM agg_total
                     WHERE CAST($1 AS BIGINT) = CAST($2 AS BIGINT) OR key_id = $1"
                ),
                &[row.scope.into(), GLOBAL_SCOPE.into()],
            )
            .await;
    }
    let key_id = if row.scope == GLOBAL_SCOPE {
        ALL_KEYS
    } else {
        row.scope
    };
    db.fetch_value(
        &format!(
            "SELECT CAST(COALESCE(SUM({column}), 0) AS BIGINT) FROM agg_day
             WHERE key_id = $1 AND day BETWEEN $2 AND $3"
        ),
        &[key_id.into(), row.first_day.into(), row.last_day.into()],
    )
    .await
}

/// Leases tokens of a budget to `instance` (see [`super::Store::lease`]).
pub async fn lease(
    db: &mut impl Db,
    instance: &str,
    row: LedgerRow,
    limit: u64,
    need: u64,
    want: u64,
) -> Result<Lease, StoreError> {
    let select = format!("SELECT taken FROM budgets WHERE {LEDGER_ROW} {{for_update}}");
    let taken = match db.fetch_opt::<(u64,)>(&select, &row_params(&row)).await? {
        Some((taken,)) => taken,
        None => {
            let used = recorded_use(db, &row).await?;
            let mut params = row_params(&row);
            params.push(used.into());
            db.execute(
                "INSERT INTO budgets (scope, unit, period, period_start, taken)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &params,
            )
            .await?;
            db.fetch_value(&select, &row_params(&row)).await?
        }
    };
    let lease = super::grant(limit, taken, need, want);
    if lease.granted > 0 {
        let mut params = row_params(&row);
        params.push(lease.granted.into());
        db.execute(
            &format!("UPDATE budgets SET taken = taken + $5 WHERE {LEDGER_ROW}"),
            &params,
        )
        .await?;
        let mut params = vec![instance.into()];
        params.extend(row_params(&row));
        params.push(lease.granted.into());
        db.execute(
            "INSERT INTO budget_leases (instance, scope, unit, period, period_start, held)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (instance, scope, unit, period, period_start)
             DO UPDATE SET held = budget_leases.held + excluded.held",
            &params,
        )
        .await?;
    }
    Ok(lease)
}

/// Applies `(row, taken, held)` changes of `instance` (see [`super::Store::adjust_budgets`]),
/// in the order of their rows.
pub async fn adjust_budgets(
    db: &mut impl Db,
    instance: &str,
    deltas: &[(LedgerRow, i64, i64)],
) -> Result<(), StoreError> {
    let mut sorted = deltas.to_vec();
    sorted.sort_unstable();
    for (row, taken, _) in sorted.iter().filter(|d| d.1 != 0) {
        let mut params = row_params(row);
        params.push((*taken).into());
        db.execute(
            &format!("UPDATE budgets SET taken = {{greatest}}(0, taken + $5) WHERE {LEDGER_ROW}"),
            &params,
        )
        .await?;
    }
    // Held tokens only ever grow through `lease`: the changes here give back or use them.
    for (row, _, held) in sorted.iter().filter(|d| d.2 != 0) {
        let mut params = row_params(row);
        params.push((*held).into());
        params.push(instance.into());
        db.execute(
            &format!(
                "UPDATE budget_leases SET held = {{greatest}}(0, held + $5)
                 WHERE instance = $6 AND {LEDGER_ROW}"
            ),
            &params,
        )
        .await?;
    }
    db.execute(
        "DELETE FROM budget_leases WHERE instance = $1 AND held = 0",
        &[instance.into()],
    )
    .await?;
    Ok(())
}

/// Forgets ledger rows of periods that started before `before` (see
/// [`super::Store::prune_budgets`]).
pub async fn prune_budgets(db: &mut impl Db, before: i64) -> Result<(), StoreError> {
    for table in ["budgets", "budget_leases"] {
        db.execute(
            &format!("DELETE FROM {table} WHERE period <> 0 AND period_start < $1"),
            &[before.into()],
        )
        .await?;
    }
    Ok(())
}

/// Takes the instances lock and forgets the instances not seen for `stale_ms`.
async fn forget_stale(db: &mut impl Db, stale_ms: i64) -> Result<(), StoreError> {
    db.lock(Lock::Instances).await?;
    let since = ms(jiff::Timestamp::now()) - stale_ms;
    db.execute("DELETE FROM instances WHERE seen_ms < $1", &[since.into()])
        .await?;
    Ok(())
}

/// Forgets instances not seen for `stale_ms`, gives what they held back to the ledgers, and
/// returns the tokens given back.
pub async fn reap_instances(db: &mut impl Db, stale_ms: i64) -> Result<u64, StoreError> {
    forget_stale(db, stale_ms).await?;
    let dead: Vec<((i64, i64, i64, i64), u64)> = db
        .fetch(
            "SELECT scope, unit, period, period_start, CAST(SUM(held) AS BIGINT)
             FROM budget_leases WHERE instance NOT IN (SELECT id FROM instances)
             GROUP BY scope, unit, period, period_start ORDER BY scope, unit, period, period_start",
            &[],
        )
        .await?;
    let mut returned = 0u64;
    for ((scope, unit, period, period_start), held) in dead {
        let params: Vec<Param> = vec![
            scope.into(),
            unit.into(),
            period.into(),
            period_start.into(),
            held.into(),
        ];
        let changed = db
            .execute(
                &format!(
                    "UPDATE budgets SET taken = {{greatest}}(0, taken - $5) WHERE {LEDGER_ROW}"
                ),
                &params,
            )
            .await?;
        if changed > 0 {
            returned = returned.saturating_add(held);
        }
    }
    db.execute(
        "DELETE FROM budget_leases WHERE instance NOT IN (SELECT id FROM instances)",
        &[],
    )
    .await?;
    Ok(returned)
}

/// Registers an instance; alone, it rebuilds the ledgers from recorded usage. Returns how many
/// other instances are alive.
pub async fn register_instance(
    db: &mut impl Db,
    id: &str,
    stale_ms: i64,
) -> Result<u64, StoreError> {
    forget_stale(db, stale_ms).await?;
    let others: u64 = db
        .fetch_value(
            "SELECT COUNT(*) FROM instances WHERE id <> $1",
            &[id.into()],
        )
        .await?;
    if others == 0 {
        db.execute("DELETE FROM budgets", &[]).await?;
        db.execute("DELETE FROM budget_leases", &[]).await?;
    }
    heartbeat(db, id).await?;
    Ok(others)
}

/// Notes that an instance is alive.
pub async fn heartbeat(db: &mut impl Db, id: &str) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO instances (id, seen_ms) VALUES ($1, $2)
         ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
        &[id.into(), ms(jiff::Timestamp::now()).into()],
    )
    .await?;
    Ok(())
}

/// Removes an instance.
pub async fn unregister_instance(db: &mut impl Db, id: &str) -> Result<(), StoreError> {
    db.execute("DELETE FROM instances WHERE id = $1", &[id.into()])
        .await?;
    Ok(())
}

/// The deployment's identity: `candidate` unless one was made up before.
pub async fn deployment_id(db: &mut impl Db, candidate: &str) -> Result<String, StoreError> {
    db.execute(
        "INSERT INTO meta (name, value) VALUES ('deployment', $1) ON CONFLICT (name) DO NOTHING",
        &[candidate.into()],
    )
    .await?;
    db.fetch_value("SELECT value FROM meta WHERE name = 'deployment'", &[])
        .await
}

// --- Repricing -----------------------------------------------------------------------------

/// The first and last hour (UTC hours since the epoch) of `agg_hour` rows at or after
/// `from_hour`; `None` when there are none.
pub async fn hour_span(db: &mut impl Db, from_hour: i64) -> Result<Option<(i64, i64)>, StoreError> {
    let span: Option<(Option<i64>, Option<i64>)> = db
        .fetch_opt(
            "SELECT MIN(hour), MAX(hour) FROM agg_hour WHERE hour >= $1",
            &[from_hour.into()],
        )
        .await?;
    Ok(span.and_then(|(first, last)| first.zip(last)))
}

/// One `agg_hour` row as repricing reads it.
struct HourRow {
    dims: Dims,
    calls: u64,
    tokens: TokenUsage,
    cost_nanos: u64,
    unpriced_calls: u64,
}
from_columns!(HourRow {
    dims,
    calls,
    tokens,
    cost_nanos,
    unpriced_calls
});

/// A stored call as repricing reads it.
struct PricedCall {
    id: i64,
    ts: jiff::Timestamp,
    model: String,
    key_id: Option<i64>,
    endpoint: String,
    tokens: TokenUsage,
    estimated: bool,
    cost_nanos: Option<u64>,
    cost_status: String,
}
from_columns!(PricedCall {
    id,
    ts,
    model,
    key_id,
    endpoint,
    tokens,
    estimated,
    cost_nanos,
    cost_status
});

/// The raw calls of one `agg_hour` row, repriced: how many, their cost, how many unpriced.
#[derive(Default)]
struct RawSums {
    calls: u64,
    cost_nanos: u64,
    unpriced_calls: u64,
}

/// Recomputes the cost of the calls in hours `[first, end)` with `pricer`: the raw rows still
/// kept, then the aggregates. An `agg_hour` row whose raw calls are all still kept gets their
/// exact sum; one whose raw calls were trimmed (`max_logs`) is priced from its summed tokens at
/// its hour's start (exact for flat prices, up to half a nano-dollar of rounding per call;
/// long-context tiers and prices changing within the hour are not seen). `agg_day` and
/// `agg_total` get the same changes. Changes are added (`+ delta`), so calls recorded meanwhile
/// keep their own cost. Runs in the caller's transaction.
pub async fn reprice_hours(
    db: &mut impl Db,
    first: i64,
    end: i64,
    tz: &jiff::tz::TimeZone,
    pricer: &super::Pricer,
) -> Result<super::Repriced, StoreError> {
    let hours = read_hour_rows(db, first, end).await?;
    let (raw, calls_changed) = reprice_calls(db, first, end, pricer).await?;
    let mut changes: HashMap<(&'static str, Vec<i64>, String), (i64, i64)> = HashMap::new();
    let mut done = super::Repriced {
        calls_changed,
        ..super::Repriced::default()
    };
    for row in hours {
        let (hour, key_id, model) = row.dims.clone();
        let (cost, unpriced) = match raw.get(&row.dims) {
            Some(sums) if sums.calls == row.calls => {
                done.exact_rows += 1;
                (sums.cost_nanos, sums.unpriced_calls)
            }
            _ => {
                done.approximate_rows += 1;
                let start = from_ms(hour * MS_PER_HOUR);
                match pricer(&model, start, &row.tokens, false) {
                    (Some(nanos), _) => (nanos, 0),
                    (None, _) => (0, row.calls),
                }
            }
        };
        let delta = (
            to_i64(cost) - to_i64(row.cost_nanos),
            to_i64(unpriced) - to_i64(row.unpriced_calls),
        );
        if delta == (0, 0) {
            continue;
        }
        done.cost_delta += delta.0;
        let day = local_day(from_ms(hour * MS_PER_HOUR), tz);
        for target in [
            ("agg_hour", vec![hour, key_id], model.clone()),
            ("agg_day", vec![day, key_id], model.clone()),
            ("agg_day", vec![day, ALL_KEYS], String::new()),
            ("agg_total", vec![key_id], model),
        ] {
            let sum = changes.entry(target).or_default();
            sum.0 += delta.0;
            sum.1 += delta.1;
        }
    }
    let mut changes: Vec<_> = changes.into_iter().collect();
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    for ((table, ints, model), (cost, unpriced)) in changes {
        let dims = match table {
            "agg_hour" => "hour = $3 AND key_id = $4",
            "agg_day" => "day = $3 AND key_id = $4",
            _ => "key_id = $3",
        };
        let sql = format!(
            "UPDATE {table} SET cost_nanos = {{greatest}}(0, cost_nanos + $1),
             unpriced_calls = {{greatest}}(0, unpriced_calls + $2)
             WHERE {dims} AND model = ${}",
            ints.len() + 3
        );
        let mut params: Vec<Param> = vec![cost.into(), unpriced.into()];
        params.extend(ints.into_iter().map(Param::from));
        params.push(model.into());
        db.execute(&sql, &params).await?;
    }
    Ok(done)
}

async fn read_hour_rows(
    db: &mut impl Db,
    first: i64,
    end: i64,
) -> Result<Vec<HourRow>, StoreError> {
    db.fetch(
        "SELECT hour, key_id, model, calls, prompt_tokens, completion_tokens,
         cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens,
         cost_nanos, unpriced_calls FROM agg_hour WHERE hour >= $1 AND hour < $2
         ORDER BY hour, key_id, model {for_update}",
        &[first.into(), end.into()],
    )
    .await
}

/// Reprices the raw calls of hours `[first, end)`, updating those whose cost changed; returns
/// their sums per `agg_hour` row (`count_tokens` calls left out, as the aggregates count them
/// apart) and how many rows changed.
async fn reprice_calls(
    db: &mut impl Db,
    first: i64,
    end: i64,
    pricer: &super::Pricer,
) -> Result<(HashMap<Dims, RawSums>, u64), StoreError> {
    let rows: Vec<PricedCall> = db
        .fetch(
            "SELECT id, ts, model, key_id, endpoint, prompt_tokens, completion_tokens,
             cache_read_tokens, cache_creation_tokens, reasoning_tokens, total_tokens, estimated,
             cost_nanos, cost_status FROM calls WHERE ts >= $1 AND ts < $2",
            &[(first * MS_PER_HOUR).into(), (end * MS_PER_HOUR).into()],
        )
        .await?;
    let mut sums: HashMap<Dims, RawSums> = HashMap::new();
    let mut changed = 0u64;
    for call in rows {
        let (cost, status) = pricer(&call.model, call.ts, &call.tokens, call.estimated);
        if (call.cost_nanos, status.as_str()) != (cost, call.cost_status.as_str()) {
            db.execute(
                "UPDATE calls SET cost_nanos = $2, cost_status = $3 WHERE id = $1",
                &[call.id.into(), cost.into(), status.as_str().into()],
            )
            .await?;
            changed += 1;
        }
        if call.endpoint == COUNT_TOKENS_PATH {
            continue;
        }
        let hour = ms(call.ts).div_euclid(MS_PER_HOUR);
        let dims = (hour, call.key_id.unwrap_or(0), call.model);
        let sum = sums.entry(dims).or_default();
        sum.calls += 1;
        sum.cost_nanos += cost.unwrap_or(0);
        sum.unpriced_calls += u64::from(cost.is_none());
    }
    Ok((sums, changed))
}
