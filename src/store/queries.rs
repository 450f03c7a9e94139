//! Every query of the store, written once for both databases over [`Db`]: keys, call records and
//! their aggregates, the budget ledgers and the instances sharing them.

use std::collections::HashMap;

use super::sql::{Bulk, Db, Lock, Param, Row, Ty, AGG_COLUMNS};
use super::{
    Aggregate, CallKind, DayTotal, KeyPatch, KeyRow, Lease, LogQuery, NewKey, StatusFilter,
    StoreError, UsageFilter, ALL_KEYS, GLOBAL_SCOPE,
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
    enabled, token_limit, rpm_limit, allowed_models, expires_at, deleted_at, version,
    fit_max_tokens FROM api_keys";

fn read_key(row: &Row) -> Result<KeyRow, StoreError> {
    let mut hash = [0u8; 32];
    let stored = row.bytes(3)?;
    if stored.len() == 32 {
        hash.copy_from_slice(stored);
    }
    Ok(KeyRow {
        id: row.int(0)?,
        name: row.text(1)?,
        description: row.text(2)?,
        hash,
        display: row.text(4)?,
        created_at: from_ms(row.int(5)?),
        last_used: row.opt_int(6)?.map(from_ms),
        enabled: row.bool(7)?,
        token_limit: row.opt_int(8)?.map(|v| v.max(0) as u64),
        rpm_limit: row
            .opt_int(9)?
            .map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX)),
        allowed_models: row
            .opt_text(10)?
            .and_then(|text| serde_json::from_str(&text).ok()),
        expires_at: row.opt_int(11)?.map(from_ms),
        deleted: row.opt_int(12)?.is_some(),
        version: row.int(13)?,
        fit_max_tokens: row.bool(14)?,
    })
}

async fn select_key(db: &mut impl Db, id: i64) -> Result<Option<KeyRow>, StoreError> {
    let sql = format!("{KEY_SELECT} WHERE id = $1");
    db.query_opt(&sql, &[id.into()])
        .await?
        .as_ref()
        .map(read_key)
        .transpose()
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
    let live = db
        .query_one(
            "SELECT COUNT(*) FROM api_keys WHERE deleted_at IS NULL",
            &[],
        )
        .await?
        .count(0)?;
    if live >= max_keys {
        return Err(StoreError::KeyLimit(max_keys));
    }
    let inserted = db
        .query_one(
            "INSERT INTO api_keys (name, description, key_hash, display, created_at, version)
             VALUES ($1, $2, $3, $4, $5, (SELECT COALESCE(MAX(version), 0) + 1 FROM api_keys))
             RETURNING id",
            &[
                key.name.as_str().into(),
                key.description.as_str().into(),
                key.hash.as_slice().into(),
                key.display.as_str().into(),
                ms(key.created_at).into(),
            ],
        )
        .await;
    let id = name_taken(inserted, &key.name)?.int(0)?;
    select_key(db, id)
        .await?
        .ok_or(StoreError::Task("inserted key vanished".into()))
}

/// All keys, deleted ones included, oldest first.
pub async fn list_keys(db: &mut impl Db) -> Result<Vec<KeyRow>, StoreError> {
    let rows = db.query(&format!("{KEY_SELECT} ORDER BY id"), &[]).await?;
    rows.iter().map(read_key).collect()
}

/// Keys changed after `version`, in the order of their changes.
pub async fn keys_changed_since(db: &mut impl Db, version: i64) -> Result<Vec<KeyRow>, StoreError> {
    let sql = format!("{KEY_SELECT} WHERE version > $1 ORDER BY version");
    let rows = db.query(&sql, &[version.into()]).await?;
    rows.iter().map(read_key).collect()
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
    apply_patch(&mut key, patch);
    let allowed = key
        .allowed_models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
    let updated = db
        .execute(
            "UPDATE api_keys SET name = $2, description = $3, enabled = $4, token_limit = $5,
             rpm_limit = $6, allowed_models = $7, expires_at = $8, fit_max_tokens = $9,
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
            ],
        )
        .await;
    name_taken(updated, &key.name)?;
    if was_limited && key.token_limit.is_none() {
        // Unlimited keys are not charged to the ledger: a later limit starts from the recorded
        // usage again.
        db.execute("DELETE FROM budgets WHERE scope = $1", &[id.into()])
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

/// Reads an [`Aggregate`] from `row`, its columns in [`AGG_COLUMNS`] order from `start`.
pub fn read_aggregate(row: &Row, start: usize) -> Result<Aggregate, StoreError> {
    let get = |i: usize| row.count(start + i);
    let mut latency = [0u64; LATENCY_BUCKETS];
    for (i, slot) in latency.iter_mut().enumerate() {
        *slot = get(10 + i)?;
    }
    Ok(Aggregate {
        calls: get(0)?,
        successes: get(1)?,
        failures: get(2)?,
        tokens: TokenUsage {
            prompt: get(3)?,
            completion: get(4)?,
            cache_read: get(5)?,
            cache_creation: get(6)?,
            reasoning: get(7)?,
            total: get(8)?,
        },
        duration_ms: get(9)?,
        latency,
        count_tokens: get(10 + LATENCY_BUCKETS)?,
    })
}

/// The values of an [`Aggregate`] in [`AGG_COLUMNS`] order.
fn aggregate_values(agg: &Aggregate) -> impl Iterator<Item = Param<'static>> {
    [agg.calls, agg.successes, agg.failures]
        .into_iter()
        .chain(agg.tokens.counts())
        .chain([agg.duration_ms])
        .chain(agg.latency)
        .chain([agg.count_tokens])
        .map(Param::from)
}

/// Aggregates per model of the calls the filter selects.
pub async fn usage_by_model(
    db: &mut impl Db,
    filter: &UsageFilter,
) -> Result<Vec<(String, Aggregate)>, StoreError> {
    let mut conditions = Conditions::default();
    let table = if filter.from.is_some() || filter.to.is_some() {
        if let Some(from) = filter.from {
            conditions.compare("hour", ">=", ms(from).div_euclid(MS_PER_HOUR));
        }
        if let Some(to) = filter.to {
            let hour = (ms(to) + MS_PER_HOUR - 1).div_euclid(MS_PER_HOUR);
            conditions.compare("hour", "<", hour);
        }
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
    let rows = db.query(&sql, &conditions.params).await?;
    rows.iter()
        .map(|row| Ok((row.text(0)?, read_aggregate(row, 1)?)))
        .collect()
}

/// All-time aggregates per key id (0 = calls without a key).
pub async fn usage_by_key(db: &mut impl Db) -> Result<HashMap<i64, Aggregate>, StoreError> {
    let sql = format!(
        "SELECT key_id, {} FROM agg_total GROUP BY key_id",
        agg_sums()
    );
    let rows = db.query(&sql, &[]).await?;
    rows.iter()
        .map(|row| Ok((row.int(0)?, read_aggregate(row, 1)?)))
        .collect()
}

/// All-time aggregate of one key (zero when it made no call).
pub async fn usage_of_key(db: &mut impl Db, key_id: i64) -> Result<Aggregate, StoreError> {
    let sql = format!(
        "SELECT key_id, {} FROM agg_total WHERE key_id = $1 GROUP BY key_id",
        agg_sums()
    );
    let rows = db.query(&sql, &[key_id.into()]).await?;
    match rows.first() {
        Some(row) => read_aggregate(row, 1),
        None => Ok(Aggregate::default()),
    }
}

/// Calls and tokens per local day in `[first_day, last_day]`, days with calls only.
pub async fn usage_by_day(
    db: &mut impl Db,
    key_id: Option<i64>,
    first_day: i64,
    last_day: i64,
) -> Result<Vec<DayTotal>, StoreError> {
    let rows = db
        .query(
            "SELECT day, CAST(SUM(calls) AS BIGINT), CAST(SUM(total_tokens) AS BIGINT)
             FROM agg_day WHERE key_id = $1 AND day BETWEEN $2 AND $3 GROUP BY day ORDER BY day",
            &[
                key_id.unwrap_or(ALL_KEYS).into(),
                first_day.into(),
                last_day.into(),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DayTotal {
                day: row.int(0)?,
                calls: row.count(1)?,
                tokens: row.count(2)?,
            })
        })
        .collect()
}

// --- Call records ---------------------------------------------------------------------------

const CALL_COLUMNS: [(&str, Ty); 24] = [
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
];

fn column_names<T>(columns: &[(&str, T)]) -> String {
    columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_call(row: &Row) -> Result<LoggedCall, StoreError> {
    Ok(LoggedCall {
        id: row.int(0)?,
        call: CallRecord {
            ts: from_ms(row.int(1)?),
            method: row.text(2)?,
            endpoint: row.text(3)?,
            status: u16::try_from(row.int(4)?).unwrap_or(0),
            model: row.text(5)?,
            key_id: row.opt_int(6)?,
            key_name: row.opt_text(7)?,
            tokens: TokenUsage {
                prompt: row.count(8)?,
                completion: row.count(9)?,
                cache_read: row.count(10)?,
                cache_creation: row.count(11)?,
                reasoning: row.count(12)?,
                total: row.count(13)?,
            },
            duration_ms: row.count(14)?,
            ttft_ms: row.opt_int(15)?.map(|v| v.max(0) as u64),
            stream: row.bool(16)?,
            estimated: row.bool(17)?,
            error: row.opt_text(18)?,
            client: row.text(19)?,
            session_id: row.opt_text(20)?,
            user: row.opt_text(21)?,
            provider: row.text(22)?,
            source: row.text(23)?,
            answer: Default::default(),
            ingest: None,
        },
    })
}

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
    if let Some(method) = &query.method {
        let n = c.bind(method.as_str());
        c.sql.push(format!("lower(method) = lower({n})"));
    }
    match query.status {
        Some(StatusFilter::Exact(code)) => c.compare("status", "=", i64::from(code)),
        // Matches the index on (status / 100, id): rows of the class come newest first.
        Some(StatusFilter::Class(class)) => c.compare("status / 100", "=", i64::from(class)),
        None => {}
    }
    if let Some(model) = &query.model {
        c.compare("model", "=", model.as_str());
    }
    if let Some(key_id) = query.key_id {
        c.compare("key_id", "=", key_id);
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
    if let Some(client) = &query.client {
        c.compare("client", "=", client.as_str());
    }
    if let Some(session_id) = &query.session_id {
        c.compare("session_id", "=", session_id.as_str());
    }
    if let Some(source) = &query.source {
        c.compare("source", "=", source.as_str());
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
    let rows = db.query(&sql, &c.params).await?;
    rows.iter().map(read_call).collect()
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
    ]);
    row
}

/// Adds `groups` (aggregates keyed by integer dimensions and a model) to the rows of `table`,
/// whose key is `int_dims` then `model`. Rows are written in the order of their keys, so that
/// writers of several instances lock shared rows in the same order and cannot deadlock.
pub async fn upsert_aggregates(
    db: &mut impl Db,
    table: &str,
    int_dims: &[&str],
    groups: impl IntoIterator<Item = (Vec<i64>, String, Aggregate)>,
) -> Result<(), StoreError> {
    let mut groups: Vec<_> = groups.into_iter().collect();
    if groups.is_empty() {
        return Ok(());
    }
    groups.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    // A table's statement depends on its name only: each aggregate table has fixed dimensions.
    let keys = || -> String {
        let keys: Vec<&str> = int_dims.iter().copied().chain(["model"]).collect();
        keys.join(", ")
    };
    let insert = super::sql::memo("aggregate insert", table, || {
        format!(
            "INSERT INTO {table} ({}, {})",
            keys(),
            AGG_COLUMNS.join(", ")
        )
    });
    let tail = super::sql::memo("aggregate upsert", table, || {
        let updates = AGG_COLUMNS
            .iter()
            .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("ON CONFLICT ({}) DO UPDATE SET {updates}", keys())
    });
    let mut types = vec![Ty::BigInt; int_dims.len()];
    types.push(Ty::Text);
    types.extend([Ty::BigInt; AGG_COLUMNS.len()]);
    let bulk = Bulk {
        insert,
        types,
        rows: groups
            .into_iter()
            .map(|(ints, model, agg)| {
                let mut row: Vec<Param<'static>> = ints.into_iter().map(Param::from).collect();
                row.push(model.into());
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
/// key × model, and the latest call of each key.
struct Grouped {
    hours: HashMap<Dims, Aggregate>,
    days: HashMap<Dims, Aggregate>,
    totals: HashMap<(i64, String), Aggregate>,
    last_used: HashMap<i64, i64>,
}

fn group(records: &[CallRecord], tz: &jiff::tz::TimeZone) -> Grouped {
    let mut g = Grouped {
        hours: HashMap::new(),
        days: HashMap::new(),
        totals: HashMap::new(),
        last_used: HashMap::new(),
    };
    for call in records {
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
        if let Some(id) = call.key_id {
            let seen = g.last_used.entry(id).or_insert(i64::MIN);
            *seen = (*seen).max(ms(call.ts));
        }
    }
    g
}

/// Writes the records, their aggregates and the keys' `last_used`, trims the raw log to
/// `max_logs`, and returns the records with their new ids. Runs in the caller's transaction.
/// An ingested record whose de-duplication key is already stored (by this instance or another,
/// now or before a restart) is left out: it is not in the returned list.
pub async fn write_batch(
    db: &mut impl Db,
    records: &[CallRecord],
    tz: &jiff::tz::TimeZone,
    max_logs: u64,
) -> Result<Vec<LoggedCall>, StoreError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let ids = db.call_ids(records.len()).await?;
    if records.iter().any(|r| r.ingest.is_some()) {
        let (ids, kept) = keep_new(db, ids, records).await?;
        let kept: Vec<CallRecord> = kept.into_iter().cloned().collect();
        return write_calls(db, ids, &kept, tz, max_logs).await;
    }
    write_calls(db, ids, records, tz, max_logs).await
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
    let rows = db
        .query(
            "SELECT call_id FROM ingest_keys WHERE call_id BETWEEN $1 AND $2",
            &[first.into(), last.into()],
        )
        .await?;
    let stored: std::collections::HashSet<i64> =
        rows.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
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
    let g = group(records, tz);
    upsert_aggregates(db, "agg_hour", &["hour", "key_id"], with_dims(g.hours)).await?;
    upsert_aggregates(db, "agg_day", &["day", "key_id"], with_dims(g.days)).await?;
    let totals = g
        .totals
        .into_iter()
        .map(|((key_id, model), agg)| (vec![key_id], model, agg));
    upsert_aggregates(db, "agg_total", &["key_id"], totals).await?;
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
    Ok(ids
        .into_iter()
        .zip(records)
        .map(|(id, call)| LoggedCall {
            id,
            call: call.clone(),
        })
        .collect())
}

// --- Ingested usage -------------------------------------------------------------------------

/// Adds the ingested records of a batch to `agg_source`, per local day, source, and credential
/// or client key.
async fn upsert_source_aggregates(
    db: &mut impl Db,
    records: &[CallRecord],
    tz: &jiff::tz::TimeZone,
) -> Result<(), StoreError> {
    type Ident = (i64, String, &'static str, String);
    let mut groups: HashMap<Ident, (String, Aggregate)> = HashMap::new();
    for call in records {
        let Some(ingest) = &call.ingest else { continue };
        let day = local_day(call.ts, tz);
        let agg = Aggregate::of(call);
        let mut add = |dim: &'static str, ident: String, label: &str| {
            let entry = groups
                .entry((day, call.source.clone(), dim, ident))
                .or_insert_with(|| (String::new(), Aggregate::default()));
            entry.0 = label.to_owned();
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
    if groups.is_empty() {
        return Ok(());
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let insert = super::sql::memo("aggregate insert", "agg_source", || {
        format!(
            "INSERT INTO agg_source (day, source, dim, ident, label, {})",
            AGG_COLUMNS.join(", ")
        )
    });
    let tail = super::sql::memo("aggregate upsert", "agg_source", || {
        let updates = AGG_COLUMNS
            .iter()
            .map(|c| format!("{c} = agg_source.{c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "ON CONFLICT (day, source, dim, ident) DO UPDATE SET label = excluded.label, {updates}"
        )
    });
    let mut types = vec![Ty::BigInt, Ty::Text, Ty::Text, Ty::Text, Ty::Text];
    types.extend([Ty::BigInt; AGG_COLUMNS.len()]);
    let bulk = Bulk {
        insert,
        types,
        rows: groups
            .into_iter()
            .map(|((day, source, dim, ident), (label, agg))| {
                let mut row: Vec<Param<'static>> = vec![
                    day.into(),
                    source.into(),
                    dim.into(),
                    ident.into(),
                    label.into(),
                ];
                row.extend(aggregate_values(&agg));
                row
            })
            .collect(),
        tail,
    };
    db.insert(&bulk).await
}

/// Adds every call of a batch to `agg_source_hour`, per UTC hour, source and model.
async fn upsert_source_hours(db: &mut impl Db, records: &[CallRecord]) -> Result<(), StoreError> {
    let mut groups: HashMap<(i64, &str, &str), Aggregate> = HashMap::new();
    for call in records {
        let hour = ms(call.ts).div_euclid(MS_PER_HOUR);
        groups
            .entry((hour, call.source.as_str(), call.model.as_str()))
            .or_default()
            .add(&Aggregate::of(call));
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    let insert = super::sql::memo("aggregate insert", "agg_source_hour", || {
        format!(
            "INSERT INTO agg_source_hour (hour, source, model, {})",
            AGG_COLUMNS.join(", ")
        )
    });
    let tail = super::sql::memo("aggregate upsert", "agg_source_hour", || {
        let updates = AGG_COLUMNS
            .iter()
            .map(|c| format!("{c} = agg_source_hour.{c} + excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("ON CONFLICT (hour, source, model) DO UPDATE SET {updates}")
    });
    let mut types = vec![Ty::BigInt, Ty::Text, Ty::Text];
    types.extend([Ty::BigInt; AGG_COLUMNS.len()]);
    let bulk = Bulk {
        insert,
        types,
        rows: groups
            .into_iter()
            .map(|((hour, source, model), agg)| {
                let mut row: Vec<Param<'static>> = vec![
                    hour.into(),
                    source.to_owned().into(),
                    model.to_owned().into(),
                ];
                row.extend(aggregate_values(&agg));
                row
            })
            .collect(),
        tail,
    };
    db.insert(&bulk).await
}

/// Aggregates per model of one source's calls, within the filter's hours.
pub async fn usage_by_model_of_source(
    db: &mut impl Db,
    source: &str,
    filter: &UsageFilter,
) -> Result<Vec<(String, Aggregate)>, StoreError> {
    let mut c = Conditions::default();
    c.compare("source", "=", source);
    if let Some(from) = filter.from {
        c.compare("hour", ">=", ms(from).div_euclid(MS_PER_HOUR));
    }
    if let Some(to) = filter.to {
        c.compare(
            "hour",
            "<",
            (ms(to) + MS_PER_HOUR - 1).div_euclid(MS_PER_HOUR),
        );
    }
    let sql = format!(
        "SELECT model, {} FROM agg_source_hour{} GROUP BY model ORDER BY model {{binary}}",
        agg_sums(),
        c.clause()
    );
    let rows = db.query(&sql, &c.params).await?;
    rows.iter()
        .map(|row| Ok((row.text(0)?, read_aggregate(row, 1)?)))
        .collect()
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
    let rows = db.query(&sql, &c.params).await?;
    rows.iter()
        .map(|row| {
            Ok(super::SourceUsage {
                source: row.text(0)?,
                ident: row.text(1)?,
                label: row.text(2)?,
                usage: read_aggregate(row, 3)?,
            })
        })
        .collect()
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

/// Leases tokens of a budget to `instance` (see [`super::Store::lease`]).
pub async fn lease(
    db: &mut impl Db,
    instance: &str,
    scope: i64,
    limit: u64,
    need: u64,
    want: u64,
) -> Result<Lease, StoreError> {
    let select = "SELECT taken FROM budgets WHERE scope = $1 {for_update}";
    let taken = match db.query_opt(select, &[scope.into()]).await? {
        Some(row) => row.count(0)?,
        None => {
            db.execute(
                "INSERT INTO budgets (scope, taken)
                 SELECT CAST($1 AS BIGINT), CAST(COALESCE(SUM(total_tokens), 0) AS BIGINT)
                 FROM agg_total WHERE CAST($1 AS BIGINT) = CAST($2 AS BIGINT) OR key_id = $1
                 ON CONFLICT (scope) DO NOTHING",
                &[scope.into(), GLOBAL_SCOPE.into()],
            )
            .await?;
            db.query_one(select, &[scope.into()]).await?.count(0)?
        }
    };
    let lease = super::grant(limit, taken, need, want);
    if lease.granted > 0 {
        db.execute(
            "UPDATE budgets SET taken = taken + $2 WHERE scope = $1",
            &[scope.into(), lease.granted.into()],
        )
        .await?;
        db.execute(
            "INSERT INTO budget_leases (instance, scope, held) VALUES ($1, $2, $3)
             ON CONFLICT (instance, scope) DO UPDATE SET held = budget_leases.held + excluded.held",
            &[instance.into(), scope.into(), lease.granted.into()],
        )
        .await?;
    }
    Ok(lease)
}

/// Applies `(scope, taken, held)` changes of `instance` (see [`super::Store::adjust_budgets`]),
/// in the order of their scopes.
pub async fn adjust_budgets(
    db: &mut impl Db,
    instance: &str,
    deltas: &[(i64, i64, i64)],
) -> Result<(), StoreError> {
    let mut sorted = deltas.to_vec();
    sorted.sort_unstable();
    for &(scope, taken, _) in sorted.iter().filter(|d| d.1 != 0) {
        db.execute(
            "UPDATE budgets SET taken = {greatest}(0, taken + $2) WHERE scope = $1",
            &[scope.into(), taken.into()],
        )
        .await?;
    }
    // Held tokens only ever grow through `lease`: the changes here give back or use them.
    for &(scope, _, held) in sorted.iter().filter(|d| d.2 != 0) {
        db.execute(
            "UPDATE budget_leases SET held = {greatest}(0, held + $3)
             WHERE instance = $1 AND scope = $2",
            &[instance.into(), scope.into(), held.into()],
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
    let dead = db
        .query(
            "SELECT scope, CAST(SUM(held) AS BIGINT) FROM budget_leases
             WHERE instance NOT IN (SELECT id FROM instances) GROUP BY scope ORDER BY scope",
            &[],
        )
        .await?;
    let mut returned = 0u64;
    for row in dead {
        let held = row.count(1)?;
        let changed = db
            .execute(
                "UPDATE budgets SET taken = {greatest}(0, taken - $2) WHERE scope = $1",
                &[row.int(0)?.into(), held.into()],
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
    let others = db
        .query_one(
            "SELECT COUNT(*) FROM instances WHERE id <> $1",
            &[id.into()],
        )
        .await?
        .count(0)?;
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
    db.query_one("SELECT value FROM meta WHERE name = 'deployment'", &[])
        .await?
        .text(0)
}
