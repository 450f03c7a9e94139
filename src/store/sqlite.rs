//! The SQLite backend: WAL mode, versioned migrations, a few read connections, one batch writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row, Transaction};

use super::{
    Aggregate, CallKind, DayTotal, KeyPatch, KeyRow, Lease, LogQuery, NewKey, StatusFilter,
    StoreError, UsageFilter, ALL_KEYS, GLOBAL_SCOPE,
};
use crate::usage::{CallRecord, LoggedCall, TokenUsage, COUNT_TOKENS_PATH, LATENCY_BUCKETS};

/// Versioned migrations; `PRAGMA user_version` holds how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_init.sql"),
    include_str!("migrations/sqlite/0002_instances.sql"),
    include_str!("migrations/sqlite/0003_rollups.sql"),
    include_str!("migrations/sqlite/0004_clients.sql"),
    include_str!("migrations/sqlite/0005_budget_leases.sql"),
    include_str!("migrations/sqlite/0006_fit_max_tokens.sql"),
];
const READERS: usize = 4;
pub(super) const MS_PER_HOUR: i64 = 3_600_000;

/// The aggregate tables' value columns, in [`Aggregate`] order.
pub(super) const AGG_COLUMNS: [&str; 11 + LATENCY_BUCKETS] = [
    "calls",
    "successes",
    "failures",
    "prompt_tokens",
    "completion_tokens",
    "cache_read_tokens",
    "cache_creation_tokens",
    "reasoning_tokens",
    "total_tokens",
    "duration_ms",
    "l0",
    "l1",
    "l2",
    "l3",
    "l4",
    "l5",
    "l6",
    "l7",
    "l8",
    "l9",
    "l10",
    "l11",
    "l12",
    "l13",
    "l14",
    "l15",
    "l16",
    "count_tokens",
];

/// The value columns.
pub(super) fn agg_columns() -> impl Iterator<Item = &'static str> + Clone {
    AGG_COLUMNS.iter().copied()
}

/// `SUM(calls), SUM(successes), …` in [`Aggregate`] order.
fn agg_sums() -> String {
    agg_columns()
        .map(|c| format!("SUM({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds an [`Aggregate`] from its columns in [`AGG_COLUMNS`] order, read by `get(index)`;
/// shared by both backends.
pub(super) fn aggregate_from<E>(get: impl Fn(usize) -> Result<u64, E>) -> Result<Aggregate, E> {
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

/// Reads an [`Aggregate`] from `row` starting at column `start`.
fn read_aggregate(row: &Row<'_>, start: usize) -> rusqlite::Result<Aggregate> {
    aggregate_from(|i| Ok(row.get::<_, Option<i64>>(start + i)?.unwrap_or(0).max(0) as u64))
}

/// The values of an [`Aggregate`] in column order.
pub(super) fn aggregate_values(agg: &Aggregate) -> Vec<i64> {
    let t = &agg.tokens;
    let mut values = vec![
        agg.calls,
        agg.successes,
        agg.failures,
        t.prompt,
        t.completion,
        t.cache_read,
        t.cache_creation,
        t.reasoning,
        t.total,
        agg.duration_ms,
    ];
    values.extend_from_slice(&agg.latency);
    values.push(agg.count_tokens);
    values.into_iter().map(to_i64).collect()
}

pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn ms(ts: jiff::Timestamp) -> i64 {
    ts.as_millisecond()
}

pub(crate) fn from_ms(v: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(v).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// The local date of `ts` in `tz` as YYYYMMDD.
pub(crate) fn local_day(ts: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> i64 {
    let date = ts.to_zoned(tz.clone()).date();
    i64::from(date.year()) * 10_000 + i64::from(date.month()) * 100 + i64::from(date.day())
}

/// `INSERT … ON CONFLICT DO UPDATE` adding to an aggregate row of `table` keyed by `dims`.
fn upsert_sql(table: &str, dims: &[&str]) -> String {
    let columns: Vec<String> = dims
        .iter()
        .map(|d| (*d).to_owned())
        .chain(agg_columns().map(str::to_owned))
        .collect();
    let placeholders = vec!["?"; columns.len()].join(", ");
    let updates = agg_columns()
        .map(|c| format!("{c} = {c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({}) VALUES ({placeholders}) ON CONFLICT ({}) DO UPDATE SET {updates}",
        columns.join(", "),
        dims.join(", ")
    )
}

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        reason: format!("{e}; check that the directory is writable or set database_url"),
    })?;
    configure(&conn).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        reason: format!("{e}; check that the file is writable and not used by another program"),
    })?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let applied: usize = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Task(format!(
            "the database has schema version {applied}, newer than this program knows ({}); upgrade token-console",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Adds the [`ALL_KEYS`] rollup row of each day to per key × model day aggregates.
pub(super) fn add_day_rollups(days: &mut HashMap<Dims, Aggregate>) {
    let mut rollups: HashMap<i64, Aggregate> = HashMap::new();
    for ((day, _, _), agg) in days.iter() {
        rollups.entry(*day).or_default().add(agg);
    }
    for (day, agg) in rollups {
        days.insert((day, ALL_KEYS, String::new()), agg);
    }
}

/// Rebuilds `agg_day` from `agg_hour` when the configured time zone changed since it was built.
fn rebucket_days(conn: &mut Connection, tz: &jiff::tz::TimeZone) -> Result<(), StoreError> {
    let name = tz.iana_name().unwrap_or("fixed").to_owned();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let stored: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE name = 'timezone'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if stored.as_deref() == Some(name.as_str()) {
        return Ok(());
    }
    if stored.is_some() {
        tx.execute("DELETE FROM agg_day", [])?;
        let mut days: HashMap<(i64, i64, String), Aggregate> = HashMap::new();
        {
            let sql = format!(
                "SELECT hour, key_id, model, {} FROM agg_hour",
                agg_columns().collect::<Vec<_>>().join(", ")
            );
            let mut stmt = tx.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let hour: i64 = row.get(0)?;
                let day = local_day(from_ms(hour * MS_PER_HOUR), tz);
                let agg = read_aggregate(row, 3)?;
                days.entry((day, row.get(1)?, row.get(2)?))
                    .or_default()
                    .add(&agg);
            }
        }
        add_day_rollups(&mut days);
        let sql = upsert_sql("agg_day", &["day", "key_id", "model"]);
        upsert(&tx, &sql, three_dims(&days))?;
    }
    tx.execute(
        "INSERT INTO meta (name, value) VALUES ('timezone', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [&name],
    )?;
    tx.commit()?;
    Ok(())
}

/// The SQLite store: one connection for key changes, a few for reads.
pub struct SqliteStore {
    path: PathBuf,
    timezone: jiff::tz::TimeZone,
    admin: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens the file (creating its directory), migrates it, and opens the read connections.
    pub fn open(path: &Path, timezone: jiff::tz::TimeZone) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                reason: format!(
                    "cannot create directory {}: {e}; make it writable or set database_url to a writable path",
                    dir.display()
                ),
            })?;
        }
        let mut admin = open_connection(path)?;
        migrate(&mut admin)?;
        rebucket_days(&mut admin, &timezone)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_owned(),
            timezone,
            admin: Mutex::new(admin),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        for conn in &self.readers {
            if let Ok(guard) = conn.try_lock() {
                return guard;
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[i])
    }

    /// A batch writer with its own connection.
    pub fn batch_writer(&self, max_logs: u64) -> Result<SqliteBatchWriter, StoreError> {
        Ok(SqliteBatchWriter {
            conn: open_connection(&self.path)?,
            timezone: self.timezone.clone(),
            max_logs: to_i64(max_logs),
            upsert_hour: upsert_sql("agg_hour", &["hour", "key_id", "model"]),
            upsert_day: upsert_sql("agg_day", &["day", "key_id", "model"]),
            upsert_total: upsert_sql("agg_total", &["key_id", "model"]),
        })
    }

    pub fn insert_key(&self, key: &NewKey, max_keys: u64) -> Result<KeyRow, StoreError> {
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let live: i64 = tx.query_row(
            "SELECT COUNT(*) FROM api_keys WHERE deleted_at IS NULL",
            [],
            |r| r.get(0),
        )?;
        if live as u64 >= max_keys {
            return Err(StoreError::KeyLimit(max_keys));
        }
        let inserted = tx.execute(
            "INSERT INTO api_keys (name, description, key_hash, display, created_at, version)
             VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(version), 0) + 1 FROM api_keys))",
            params![
                key.name,
                key.description,
                key.hash.as_slice(),
                key.display,
                ms(key.created_at)
            ],
        );
        map_name_conflict(inserted, &key.name)?;
        let id = tx.last_insert_rowid();
        let row = select_key(&tx, id)?.ok_or(StoreError::Task("inserted key vanished".into()))?;
        tx.commit()?;
        Ok(row)
    }

    pub fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!("{KEY_SELECT} ORDER BY id"))?;
        let rows = stmt.query_map([], read_key)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn update_key(&self, id: i64, patch: &KeyPatch) -> Result<Option<KeyRow>, StoreError> {
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(mut key) = select_key(&tx, id)?.filter(|k| !k.deleted) else {
            return Ok(None);
        };
        let was_limited = key.token_limit.is_some();
        apply_patch(&mut key, patch);
        let allowed = key
            .allowed_models
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
        let updated = tx.execute(
            "UPDATE api_keys SET name = ?2, description = ?3, enabled = ?4, token_limit = ?5,
             rpm_limit = ?6, allowed_models = ?7, expires_at = ?8, fit_max_tokens = ?9,
             version = (SELECT MAX(version) + 1 FROM api_keys) WHERE id = ?1",
            params![
                id,
                key.name,
                key.description,
                key.enabled,
                key.token_limit.map(to_i64),
                key.rpm_limit,
                allowed,
                key.expires_at.map(ms),
                key.fit_max_tokens
            ],
        );
        map_name_conflict(updated, &key.name)?;
        if was_limited && key.token_limit.is_none() {
            // Unlimited keys are not charged to the ledger: a later limit starts from the
            // recorded usage again.
            tx.execute("DELETE FROM budgets WHERE scope = ?1", [id])?;
        }
        let key = select_key(&tx, id)?.ok_or(StoreError::Task("updated key vanished".into()))?;
        tx.commit()?;
        Ok(Some(key))
    }

    pub fn delete_key(&self, id: i64) -> Result<bool, StoreError> {
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = tx.execute(
            "UPDATE api_keys SET deleted_at = ?2, enabled = 0,
             version = (SELECT MAX(version) + 1 FROM api_keys)
             WHERE id = ?1 AND deleted_at IS NULL",
            params![id, ms(jiff::Timestamp::now())],
        )?;
        tx.execute("DELETE FROM budgets WHERE scope = ?1", [id])?;
        tx.commit()?;
        Ok(changed == 1)
    }

    pub fn keys_changed_since(&self, version: i64) -> Result<Vec<KeyRow>, StoreError> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("{KEY_SELECT} WHERE version > ?1 ORDER BY version"))?;
        let rows = stmt.query_map([version], read_key)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn lease(
        &self,
        instance: &str,
        scope: i64,
        limit: u64,
        need: u64,
        want: u64,
    ) -> Result<Lease, StoreError> {
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken: Option<i64> = tx
            .query_row("SELECT taken FROM budgets WHERE scope = ?1", [scope], |r| {
                r.get(0)
            })
            .optional()?;
        let taken = match taken {
            Some(taken) => taken,
            None => {
                let used: i64 = tx.query_row(
                    "SELECT COALESCE(SUM(total_tokens), 0) FROM agg_total
                     WHERE ?1 = ?2 OR key_id = ?1",
                    params![scope, GLOBAL_SCOPE],
                    |r| r.get(0),
                )?;
                tx.execute(
                    "INSERT INTO budgets (scope, taken) VALUES (?1, ?2)",
                    params![scope, used],
                )?;
                used
            }
        };
        let lease = super::grant(limit, taken.max(0) as u64, need, want);
        if lease.granted > 0 {
            tx.execute(
                "UPDATE budgets SET taken = taken + ?2 WHERE scope = ?1",
                params![scope, to_i64(lease.granted)],
            )?;
            tx.execute(
                "INSERT INTO budget_leases (instance, scope, held) VALUES (?1, ?2, ?3)
                 ON CONFLICT (instance, scope) DO UPDATE SET held = held + excluded.held",
                params![instance, scope, to_i64(lease.granted)],
            )?;
        }
        tx.commit()?;
        Ok(lease)
    }

    pub fn adjust_budgets(
        &self,
        instance: &str,
        deltas: &[(i64, i64, i64)],
    ) -> Result<(), StoreError> {
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut taken = tx
                .prepare_cached("UPDATE budgets SET taken = MAX(0, taken + ?2) WHERE scope = ?1")?;
            let mut held = tx.prepare_cached(
                "UPDATE budget_leases SET held = MAX(0, held + ?3) WHERE instance = ?1 AND scope = ?2",
            )?;
            for &(scope, taken_delta, held_delta) in deltas {
                if taken_delta != 0 {
                    taken.execute(params![scope, taken_delta])?;
                }
                if held_delta != 0 {
                    held.execute(params![instance, scope, held_delta])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn reap_instances(&self, stale_ms: i64) -> Result<u64, StoreError> {
        let now = ms(jiff::Timestamp::now());
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM instances WHERE seen_ms < ?1", [now - stale_ms])?;
        let dead: Vec<(i64, i64)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT scope, SUM(held) FROM budget_leases
                 WHERE instance NOT IN (SELECT id FROM instances) GROUP BY scope",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut returned = 0u64;
        for (scope, held) in dead {
            let changed = tx.execute(
                "UPDATE budgets SET taken = MAX(0, taken - ?2) WHERE scope = ?1",
                params![scope, held],
            )?;
            if changed > 0 {
                returned = returned.saturating_add(held.max(0) as u64);
            }
        }
        tx.execute(
            "DELETE FROM budget_leases WHERE instance NOT IN (SELECT id FROM instances)",
            [],
        )?;
        tx.commit()?;
        Ok(returned)
    }

    pub fn register_instance(&self, id: String, stale_ms: i64) -> Result<u64, StoreError> {
        let now = ms(jiff::Timestamp::now());
        let mut conn = lock(&self.admin);
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM instances WHERE seen_ms < ?1", [now - stale_ms])?;
        let others: i64 = tx.query_row(
            "SELECT COUNT(*) FROM instances WHERE id <> ?1",
            [&id],
            |r| r.get(0),
        )?;
        if others == 0 {
            tx.execute("DELETE FROM budgets", [])?;
            tx.execute("DELETE FROM budget_leases", [])?;
        }
        tx.execute(
            "INSERT INTO instances (id, seen_ms) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
            params![id, now],
        )?;
        tx.commit()?;
        Ok(others.max(0) as u64)
    }

    pub fn heartbeat(&self, id: String) -> Result<(), StoreError> {
        let conn = lock(&self.admin);
        conn.execute(
            "INSERT INTO instances (id, seen_ms) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
            params![id, ms(jiff::Timestamp::now())],
        )?;
        Ok(())
    }

    pub fn deployment_id(&self, candidate: String) -> Result<String, StoreError> {
        let conn = lock(&self.admin);
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('deployment', ?1) ON CONFLICT (name) DO NOTHING",
            [candidate],
        )?;
        Ok(conn.query_row(
            "SELECT value FROM meta WHERE name = 'deployment'",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn unregister_instance(&self, id: String) -> Result<(), StoreError> {
        let conn = lock(&self.admin);
        conn.execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn usage_by_model(
        &self,
        filter: &UsageFilter,
    ) -> Result<Vec<(String, Aggregate)>, StoreError> {
        let mut sql = format!("SELECT model, {} FROM ", agg_sums());
        let mut values: Vec<Value> = Vec::new();
        let mut conditions: Vec<&str> = Vec::new();
        if filter.from.is_some() || filter.to.is_some() {
            sql.push_str("agg_hour");
            if let Some(from) = filter.from {
                conditions.push("hour >= ?");
                values.push(ms(from).div_euclid(MS_PER_HOUR).into());
            }
            if let Some(to) = filter.to {
                conditions.push("hour < ?");
                values.push((ms(to) + MS_PER_HOUR - 1).div_euclid(MS_PER_HOUR).into());
            }
        } else {
            sql.push_str("agg_total");
        }
        if let Some(key_id) = filter.key_id {
            conditions.push("key_id = ?");
            values.push(key_id.into());
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" GROUP BY model ORDER BY model");
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(values), |row| {
            Ok((row.get::<_, String>(0)?, read_aggregate(row, 1)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn usage_by_key(&self) -> Result<HashMap<i64, Aggregate>, StoreError> {
        let sql = format!(
            "SELECT key_id, {} FROM agg_total GROUP BY key_id",
            agg_sums()
        );
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, read_aggregate(row, 1)?))
        })?;
        Ok(rows.collect::<Result<HashMap<_, _>, _>>()?)
    }

    pub fn usage_by_day(
        &self,
        key_id: Option<i64>,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<DayTotal>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT day, SUM(calls), SUM(total_tokens) FROM agg_day
             WHERE key_id = ?1 AND day BETWEEN ?2 AND ?3 GROUP BY day ORDER BY day",
        )?;
        let key = key_id.unwrap_or(ALL_KEYS);
        let rows = stmt.query_map(params![key, first_day, last_day], |row| {
            Ok(DayTotal {
                day: row.get(0)?,
                calls: row.get::<_, i64>(1)?.max(0) as u64,
                tokens: row.get::<_, i64>(2)?.max(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn logs(&self, query: &LogQuery) -> Result<Vec<LoggedCall>, StoreError> {
        let (conditions, mut values) = log_conditions(query);
        let mut sql = CALL_SELECT.to_owned();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        values.push(i64::from(query.limit).into());
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(values), read_call)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

pub(super) fn apply_patch(key: &mut KeyRow, patch: &KeyPatch) {
    if let Some(name) = &patch.name {
        key.name = name.clone();
    }
    if let Some(description) = &patch.description {
        key.description = description.clone();
    }
    if let Some(enabled) = patch.enabled {
        key.enabled = enabled;
    }
    if let Some(limit) = patch.token_limit {
        key.token_limit = limit;
    }
    if let Some(limit) = patch.rpm_limit {
        key.rpm_limit = limit;
    }
    if let Some(models) = &patch.allowed_models {
        key.allowed_models = models.clone();
    }
    if let Some(expires_at) = patch.expires_at {
        key.expires_at = expires_at;
    }
    if let Some(fit) = patch.fit_max_tokens {
        key.fit_max_tokens = fit;
    }
}

fn map_name_conflict(result: rusqlite::Result<usize>, name: &str) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(StoreError::NameTaken(name.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

const KEY_SELECT: &str = "SELECT id, name, description, key_hash, display, created_at, last_used,
    enabled, token_limit, rpm_limit, allowed_models, expires_at, deleted_at, version,
    fit_max_tokens FROM api_keys";

fn select_key(tx: &Transaction<'_>, id: i64) -> Result<Option<KeyRow>, StoreError> {
    Ok(tx
        .query_row(&format!("{KEY_SELECT} WHERE id = ?1"), [id], read_key)
        .optional()?)
}

fn read_key(row: &Row<'_>) -> rusqlite::Result<KeyRow> {
    let hash_bytes: Vec<u8> = row.get(3)?;
    let mut hash = [0u8; 32];
    if hash_bytes.len() == 32 {
        hash.copy_from_slice(&hash_bytes);
    }
    let allowed: Option<String> = row.get(10)?;
    Ok(KeyRow {
        id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        hash,
        display: row.get(4)?,
        created_at: from_ms(row.get(5)?),
        last_used: row.get::<_, Option<i64>>(6)?.map(from_ms),
        enabled: row.get(7)?,
        token_limit: row.get::<_, Option<i64>>(8)?.map(|v| v.max(0) as u64),
        rpm_limit: row.get(9)?,
        allowed_models: allowed.and_then(|text| serde_json::from_str(&text).ok()),
        expires_at: row.get::<_, Option<i64>>(11)?.map(from_ms),
        deleted: row.get::<_, Option<i64>>(12)?.is_some(),
        version: row.get(13)?,
        fit_max_tokens: row.get(14)?,
    })
}

const CALL_SELECT: &str = "SELECT id, ts, method, endpoint, status, model, key_id, key_name,
    prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens,
    total_tokens, duration_ms, ttft_ms, stream, estimated, error, client, session_id FROM calls";

fn read_call(row: &Row<'_>) -> rusqlite::Result<LoggedCall> {
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(LoggedCall {
        id: row.get(0)?,
        call: CallRecord {
            ts: from_ms(row.get(1)?),
            method: row.get(2)?,
            endpoint: row.get(3)?,
            status: row.get(4)?,
            model: row.get(5)?,
            key_id: row.get(6)?,
            key_name: row.get(7)?,
            tokens: TokenUsage {
                prompt: count(8)?,
                completion: count(9)?,
                cache_read: count(10)?,
                cache_creation: count(11)?,
                reasoning: count(12)?,
                total: count(13)?,
            },
            duration_ms: count(14)?,
            ttft_ms: row.get::<_, Option<i64>>(15)?.map(|v| v.max(0) as u64),
            stream: row.get(16)?,
            estimated: row.get(17)?,
            error: row.get(18)?,
            client: row.get(19)?,
            session_id: row.get(20)?,
            answer: Default::default(),
        },
    })
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(super) fn like_pattern(text: &str) -> String {
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

fn log_conditions(query: &LogQuery) -> (Vec<&'static str>, Vec<Value>) {
    let mut conditions = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(q) = &query.q {
        conditions.push(
            "(endpoint LIKE ?1 ESCAPE '\\' OR model LIKE ?1 ESCAPE '\\' OR method LIKE ?1 ESCAPE '\\' OR CAST(status AS TEXT) LIKE ?1 ESCAPE '\\')",
        );
        values.push(like_pattern(q).into());
    }
    if let Some(method) = &query.method {
        conditions.push("method = ? COLLATE NOCASE");
        values.push(method.clone().into());
    }
    match query.status {
        Some(StatusFilter::Exact(code)) => {
            conditions.push("status = ?");
            values.push(i64::from(code).into());
        }
        Some(StatusFilter::Class(class)) => {
            // Matches the index on (status / 100, id): rows of the class come newest first.
            conditions.push("status / 100 = ?");
            values.push(i64::from(class).into());
        }
        None => {}
    }
    if let Some(model) = &query.model {
        conditions.push("model = ?");
        values.push(model.clone().into());
    }
    if let Some(key_id) = query.key_id {
        conditions.push("key_id = ?");
        values.push(key_id.into());
    }
    if let Some(since) = query.since {
        conditions.push("ts >= ?");
        values.push(ms(since).into());
    }
    if let Some(until) = query.until {
        conditions.push("ts < ?");
        values.push(ms(until).into());
    }
    if let Some(before_id) = query.before_id {
        conditions.push("id < ?");
        values.push(before_id.into());
    }
    match query.kind {
        Some(CallKind::Call) => {
            conditions.push("endpoint <> ?");
            values.push(COUNT_TOKENS_PATH.to_owned().into());
        }
        Some(CallKind::CountTokens) => {
            conditions.push("endpoint = ?");
            values.push(COUNT_TOKENS_PATH.to_owned().into());
        }
        None => {}
    }
    if let Some(client) = &query.client {
        conditions.push("client = ?");
        values.push(client.clone().into());
    }
    if let Some(session_id) = &query.session_id {
        conditions.push("session_id = ?");
        values.push(session_id.clone().into());
    }
    // The q filter comes first and uses `?1` four times; SQLite numbers each later bare `?` one
    // past the largest number used so far, so the other values follow in order.
    (conditions, values)
}

/// Writes batches of call records with their aggregates, on the recorder's thread.
pub struct SqliteBatchWriter {
    conn: Connection,
    timezone: jiff::tz::TimeZone,
    max_logs: i64,
    upsert_hour: String,
    upsert_day: String,
    upsert_total: String,
}

pub(super) type Dims = (i64, i64, String);

impl SqliteBatchWriter {
    /// Writes the records, their aggregates and the keys' `last_used` in one transaction, trims
    /// the raw log to `max_logs`, and returns the records with their new ids.
    pub fn write(&mut self, records: &[CallRecord]) -> Result<Vec<LoggedCall>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let logged = insert_calls(&tx, records)?;
        let (hours, days, totals, last_used) = group(records, &self.timezone);
        upsert(&tx, &self.upsert_hour, three_dims(&hours))?;
        upsert(&tx, &self.upsert_day, three_dims(&days))?;
        let total_rows = totals
            .iter()
            .map(|((key_id, model), agg)| (vec![(*key_id).into(), model.clone().into()], agg));
        upsert(&tx, &self.upsert_total, total_rows)?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE api_keys SET last_used = MAX(COALESCE(last_used, 0), ?2) WHERE id = ?1",
            )?;
            for (key_id, ts) in &last_used {
                stmt.execute(params![key_id, ts])?;
            }
        }
        if let Some(last) = logged.last() {
            let threshold = last.id - self.max_logs;
            if threshold > 0 {
                tx.prepare_cached("DELETE FROM calls WHERE id <= ?1")?
                    .execute([threshold])?;
            }
        }
        tx.commit()?;
        Ok(logged)
    }
}

fn insert_calls(
    tx: &Transaction<'_>,
    records: &[CallRecord],
) -> Result<Vec<LoggedCall>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO calls (ts, method, endpoint, status, model, key_id, key_name, prompt_tokens,
         completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens,
         total_tokens, duration_ms, ttft_ms, stream, estimated, error, client, session_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
         ?19, ?20)",
    )?;
    let mut logged = Vec::with_capacity(records.len());
    for call in records {
        let t = &call.tokens;
        stmt.execute(params![
            ms(call.ts),
            call.method,
            call.endpoint,
            call.status,
            call.model,
            call.key_id,
            call.key_name,
            to_i64(t.prompt),
            to_i64(t.completion),
            to_i64(t.cache_read),
            to_i64(t.cache_creation),
            to_i64(t.reasoning),
            to_i64(t.total),
            to_i64(call.duration_ms),
            call.ttft_ms.map(to_i64),
            call.stream,
            call.estimated,
            call.error,
            call.client,
            call.session_id,
        ])?;
        logged.push(LoggedCall {
            id: tx.last_insert_rowid(),
            call: call.clone(),
        });
    }
    Ok(logged)
}

pub(super) type Grouped = (
    HashMap<Dims, Aggregate>,
    HashMap<Dims, Aggregate>,
    HashMap<(i64, String), Aggregate>,
    HashMap<i64, i64>,
);

/// Sums a batch per hour, per local day and in all, each per key × model.
pub(super) fn group(records: &[CallRecord], tz: &jiff::tz::TimeZone) -> Grouped {
    let mut hours: HashMap<Dims, Aggregate> = HashMap::new();
    let mut days: HashMap<Dims, Aggregate> = HashMap::new();
    let mut totals: HashMap<(i64, String), Aggregate> = HashMap::new();
    let mut last_used: HashMap<i64, i64> = HashMap::new();
    for call in records {
        let agg = Aggregate::of(call);
        let key_id = call.key_id.unwrap_or(0);
        let hour = ms(call.ts).div_euclid(MS_PER_HOUR);
        let day = local_day(call.ts, tz);
        hours
            .entry((hour, key_id, call.model.clone()))
            .or_default()
            .add(&agg);
        days.entry((day, key_id, call.model.clone()))
            .or_default()
            .add(&agg);
        days.entry((day, ALL_KEYS, String::new()))
            .or_default()
            .add(&agg);
        totals
            .entry((key_id, call.model.clone()))
            .or_default()
            .add(&agg);
        if let Some(id) = call.key_id {
            let seen = last_used.entry(id).or_insert(i64::MIN);
            *seen = (*seen).max(ms(call.ts));
        }
    }
    (hours, days, totals, last_used)
}

fn three_dims(groups: &HashMap<Dims, Aggregate>) -> impl Iterator<Item = (Vec<Value>, &Aggregate)> {
    groups
        .iter()
        .map(|((a, b, model), agg)| (vec![(*a).into(), (*b).into(), model.clone().into()], agg))
}

/// Adds each aggregate to its row (identified by the dimension values) with `sql`.
fn upsert<'a>(
    tx: &Transaction<'_>,
    sql: &str,
    rows: impl Iterator<Item = (Vec<Value>, &'a Aggregate)>,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(sql)?;
    for (mut values, agg) in rows {
        values.extend(aggregate_values(agg).into_iter().map(Value::from));
        stmt.execute(params_from_iter(values))?;
    }
    Ok(())
}
