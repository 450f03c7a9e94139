//! The PostgreSQL backend: one database shared by several gateway instances, a small connection
//! pool, versioned migrations applied under an advisory lock, and batch writes that send each
//! column as one array (`UNNEST`) so a batch costs a handful of round trips whatever its size.
//!
//! TLS to PostgreSQL is not supported yet: connections are plain TCP (or a Unix socket), so the
//! database should be on the same host or a private network.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, NoTls, Row};

use super::sqlite::{
    add_day_rollups, agg_columns, aggregate_from, aggregate_values, apply_patch, from_ms, group,
    like_pattern, local_day, ms, to_i64, Dims, MS_PER_HOUR,
};
use super::{
    Aggregate, CallKind, DayTotal, KeyPatch, KeyRow, Lease, LogQuery, NewKey, StatusFilter,
    StoreError, UsageFilter, ALL_KEYS, GLOBAL_SCOPE,
};
use crate::config::ServiceUrl;
use crate::usage::{CallRecord, LoggedCall, TokenUsage, COUNT_TOKENS_PATH, LATENCY_BUCKETS};

/// Versioned migrations; `schema_migrations` lists the applied ones.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_instances.sql"),
    include_str!("migrations/postgres/0003_rollups.sql"),
    include_str!("migrations/postgres/0004_clients.sql"),
    include_str!("migrations/postgres/0005_budget_leases.sql"),
    include_str!("migrations/postgres/0006_fit_max_tokens.sql"),
];
/// Most pooled connections per instance (readers, key changes, ledger and the batch writer).
const POOL_SIZE: usize = 16;
/// Longest wait of a pooled connection for a row or table lock before its statement fails (and
/// the recorder retries the batch, reporting itself degraded meanwhile).
const LOCK_TIMEOUT_MS: u64 = 5_000;
/// Advisory lock held while migrating, so instances starting together migrate one at a time.
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e00_0001;
/// Advisory lock held while changing keys, so key versions become visible in order.
const KEYS_LOCK: i64 = 0x746f_6b65_6e00_0002;
/// Advisory lock held while instances register.
const INSTANCES_LOCK: i64 = 0x746f_6b65_6e00_0003;

/// A PostgreSQL error with its detail (the server's message, or the connection's cause).
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if db.code() == &SqlState::LOCK_NOT_AVAILABLE => format!(
            "the database is locked: a table stayed locked by another session for {LOCK_TIMEOUT_MS} ms ({})",
            db.message()
        ),
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
        other => StoreError::Pool(other.to_string()),
    }
}

/// `SUM(calls)::BIGINT, …` in [`Aggregate`] order.
fn agg_sums() -> String {
    agg_columns()
        .map(|c| format!("COALESCE(SUM({c}), 0)::BIGINT"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_aggregate(row: &Row, start: usize) -> Result<Aggregate, tokio_postgres::Error> {
    aggregate_from(|i| {
        Ok(row
            .try_get::<_, Option<i64>>(start + i)?
            .unwrap_or(0)
            .max(0) as u64)
    })
}

/// `INSERT … SELECT * FROM UNNEST(arrays) ON CONFLICT DO UPDATE` adding to the aggregate rows of
/// `table`, keyed by `dims` (all `BIGINT` but the last, `model`).
fn upsert_sql(table: &str, dims: &[&str]) -> String {
    let columns: Vec<String> = dims
        .iter()
        .map(|d| (*d).to_owned())
        .chain(agg_columns().map(str::to_owned))
        .collect();
    let arrays = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = if c == "model" { "TEXT" } else { "BIGINT" };
            format!("${}::{ty}[]", i + 1)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let updates = agg_columns()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({}) SELECT * FROM UNNEST({arrays}) ON CONFLICT ({}) DO UPDATE SET {updates}",
        columns.join(", "),
        dims.join(", ")
    )
}

/// Rows for [`upsert_sql`]: integer dimensions, the model, and the aggregate.
struct AggRows {
    ints: Vec<Vec<i64>>,
    models: Vec<String>,
    values: Vec<Vec<i64>>,
}

impl AggRows {
    /// Collects rows sorted by their dimensions, so that concurrent writers lock rows in the same
    /// order and cannot deadlock.
    fn new(int_dims: usize, mut rows: Vec<(Vec<i64>, String, Aggregate)>) -> Self {
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut out = Self {
            ints: (0..int_dims)
                .map(|_| Vec::with_capacity(rows.len()))
                .collect(),
            models: Vec::with_capacity(rows.len()),
            values: (0..11 + LATENCY_BUCKETS)
                .map(|_| Vec::with_capacity(rows.len()))
                .collect(),
        };
        for (ints, model, agg) in rows {
            for (column, v) in out.ints.iter_mut().zip(ints) {
                column.push(v);
            }
            out.models.push(model);
            for (column, v) in out.values.iter_mut().zip(aggregate_values(&agg)) {
                column.push(v);
            }
        }
        out
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3 + self.values.len());
        for column in &self.ints {
            params.push(column);
        }
        params.push(&self.models);
        for column in &self.values {
            params.push(column);
        }
        params
    }
}

fn dims_rows(groups: HashMap<Dims, Aggregate>) -> Vec<(Vec<i64>, String, Aggregate)> {
    groups
        .into_iter()
        .map(|((a, b, model), agg)| (vec![a, b], model, agg))
        .collect()
}

async fn upsert(client: &impl GenericClient, sql: &str, rows: &AggRows) -> Result<(), StoreError> {
    if rows.models.is_empty() {
        return Ok(());
    }
    client.execute(sql, &rows.params()).await?;
    Ok(())
}

/// Applies pending migrations and re-buckets `agg_day` when the time zone changed, all in one
/// transaction under an advisory lock: instances starting together on an empty database wait for
/// the first one and then find nothing left to do.
async fn migrate(
    client: &mut tokio_postgres::Client,
    tz: &jiff::tz::TimeZone,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let applied = usize::try_from(applied).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Task(format!(
            "the database has schema version {applied}, newer than this program knows ({}); upgrade token-console",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.batch_execute(sql).await?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &ms(jiff::Timestamp::now())],
        )
        .await?;
    }
    rebucket_days(&tx, tz).await?;
    tx.commit().await?;
    Ok(())
}

/// Rebuilds `agg_day` from `agg_hour` when the configured time zone changed since it was built.
async fn rebucket_days(
    tx: &tokio_postgres::Transaction<'_>,
    tz: &jiff::tz::TimeZone,
) -> Result<(), StoreError> {
    let name = tz.iana_name().unwrap_or("fixed").to_owned();
    let stored: Option<String> = tx
        .query_opt("SELECT value FROM meta WHERE name = 'timezone'", &[])
        .await?
        .map(|r| r.get(0));
    if stored.as_deref() == Some(name.as_str()) {
        return Ok(());
    }
    if stored.is_some() {
        tx.execute("DELETE FROM agg_day", &[]).await?;
        let sql = format!(
            "SELECT hour, key_id, model, {} FROM agg_hour",
            agg_columns().collect::<Vec<_>>().join(", ")
        );
        let mut days: HashMap<Dims, Aggregate> = HashMap::new();
        for row in tx.query(&sql, &[]).await? {
            let hour: i64 = row.try_get(0)?;
            let day = local_day(from_ms(hour * MS_PER_HOUR), tz);
            let agg = read_aggregate(&row, 3)?;
            days.entry((day, row.try_get(1)?, row.try_get(2)?))
                .or_default()
                .add(&agg);
        }
        add_day_rollups(&mut days);
        let rows = AggRows::new(2, dims_rows(days));
        upsert(
            tx,
            &upsert_sql("agg_day", &["day", "key_id", "model"]),
            &rows,
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO meta (name, value) VALUES ('timezone', $1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        &[&name],
    )
    .await?;
    Ok(())
}

/// The PostgreSQL store: a pool of connections shared by readers, key changes and the writer.
pub struct PgStore {
    pool: Pool,
    timezone: jiff::tz::TimeZone,
}

impl PgStore {
    /// Connects, migrates (on a thread of its own, so it may be called from async code), and
    /// builds the pool.
    pub fn open(url: &ServiceUrl, timezone: jiff::tz::TimeZone) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            path: url.redacted(),
            reason,
        };
        let mut config: tokio_postgres::Config = url.expose().parse().map_err(|_| {
            open_error(
                "not a valid PostgreSQL URL; use postgres://user:password@host:5432/database"
                    .into(),
            )
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("token-console");
        }
        let migrate_config = config.clone();
        let zone = timezone.clone();
        let migrated = std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<(), StoreError> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| StoreError::Task(e.to_string()))?;
                    runtime.block_on(async move {
                        let (mut client, connection) = migrate_config
                            .connect(NoTls)
                            .await
                            .map_err(|e| StoreError::Open {
                                path: String::new(),
                                reason: describe(&e),
                            })?;
                        let driver = tokio::spawn(connection);
                        let result = migrate(&mut client, &zone).await;
                        drop(client);
                        let _ = driver.await;
                        result
                    })
                })
                .join()
                .map_err(|_| StoreError::Task("the migration thread panicked".into()))?
        });
        match migrated {
            Err(StoreError::Open { reason, .. }) => {
                return Err(open_error(format!(
                    "{reason}; check that PostgreSQL runs, the database exists and database_url is right"
                )))
            }
            other => other?,
        }
        let options = format!(
            "{} -c lock_timeout={LOCK_TIMEOUT_MS}",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(10)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Self { pool, timezone })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// A batch writer that borrows a pooled connection for each batch.
    pub fn batch_writer(&self, max_logs: u64) -> PgBatchWriter {
        PgBatchWriter {
            pool: self.pool.clone(),
            timezone: self.timezone.clone(),
            max_logs: to_i64(max_logs),
            upsert_hour: upsert_sql("agg_hour", &["hour", "key_id", "model"]),
            upsert_day: upsert_sql("agg_day", &["day", "key_id", "model"]),
            upsert_total: upsert_sql("agg_total", &["key_id", "model"]),
        }
    }

    pub async fn insert_key(&self, key: &NewKey, max_keys: u64) -> Result<KeyRow, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        let live: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM api_keys WHERE deleted_at IS NULL",
                &[],
            )
            .await?
            .get(0);
        if live.max(0) as u64 >= max_keys {
            return Err(StoreError::KeyLimit(max_keys));
        }
        let inserted = tx
            .query_one(
                "INSERT INTO api_keys (name, description, key_hash, display, created_at, version)
                 VALUES ($1, $2, $3, $4, $5, (SELECT COALESCE(MAX(version), 0) + 1 FROM api_keys))
                 RETURNING id",
                &[
                    &key.name,
                    &key.description,
                    &key.hash.as_slice(),
                    &key.display,
                    &ms(key.created_at),
                ],
            )
            .await;
        let id: i64 = name_conflict(inserted, &key.name)?.get(0);
        let row = select_key(&*tx, id)
            .await?
            .ok_or(StoreError::Task("inserted key vanished".into()))?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{KEY_SELECT} ORDER BY id"))
            .await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter().map(read_key).collect()
    }

    pub async fn keys_changed_since(&self, version: i64) -> Result<Vec<KeyRow>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{KEY_SELECT} WHERE version > $1 ORDER BY version"))
            .await?;
        let rows = client.query(&stmt, &[&version]).await?;
        rows.iter().map(read_key).collect()
    }

    pub async fn update_key(
        &self,
        id: i64,
        patch: &KeyPatch,
    ) -> Result<Option<KeyRow>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        let Some(mut key) = select_key(&*tx, id).await?.filter(|k| !k.deleted) else {
            return Ok(None);
        };
        let was_limited = key.token_limit.is_some();
        apply_patch(&mut key, patch);
        let allowed = key
            .allowed_models
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
        let updated = tx
            .execute(
                "UPDATE api_keys SET name = $2, description = $3, enabled = $4, token_limit = $5,
                 rpm_limit = $6, allowed_models = $7, expires_at = $8, fit_max_tokens = $9,
                 version = (SELECT MAX(version) + 1 FROM api_keys) WHERE id = $1",
                &[
                    &id,
                    &key.name,
                    &key.description,
                    &key.enabled,
                    &key.token_limit.map(to_i64),
                    &key.rpm_limit.map(i64::from),
                    &allowed,
                    &key.expires_at.map(ms),
                    &key.fit_max_tokens,
                ],
            )
            .await;
        name_conflict(updated, &key.name)?;
        if was_limited && key.token_limit.is_none() {
            // Unlimited keys are not charged to the ledger: a later limit starts from the
            // recorded usage again.
            tx.execute("DELETE FROM budgets WHERE scope = $1", &[&id])
                .await?;
        }
        let key = select_key(&*tx, id)
            .await?
            .ok_or(StoreError::Task("updated key vanished".into()))?;
        tx.commit().await?;
        Ok(Some(key))
    }

    pub async fn delete_key(&self, id: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
            .await?;
        let changed = tx
            .execute(
                "UPDATE api_keys SET deleted_at = $2, enabled = FALSE,
                 version = (SELECT MAX(version) + 1 FROM api_keys)
                 WHERE id = $1 AND deleted_at IS NULL",
                &[&id, &ms(jiff::Timestamp::now())],
            )
            .await?;
        tx.execute("DELETE FROM budgets WHERE scope = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    pub async fn usage_by_model(
        &self,
        filter: &UsageFilter,
    ) -> Result<Vec<(String, Aggregate)>, StoreError> {
        let mut sql = format!("SELECT model, {} FROM ", agg_sums());
        let mut values: Vec<i64> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        if filter.from.is_some() || filter.to.is_some() {
            sql.push_str("agg_hour");
            if let Some(from) = filter.from {
                values.push(ms(from).div_euclid(MS_PER_HOUR));
                conditions.push(format!("hour >= ${}", values.len()));
            }
            if let Some(to) = filter.to {
                values.push((ms(to) + MS_PER_HOUR - 1).div_euclid(MS_PER_HOUR));
                conditions.push(format!("hour < ${}", values.len()));
            }
        } else {
            sql.push_str("agg_total");
        }
        if let Some(key_id) = filter.key_id {
            values.push(key_id);
            conditions.push(format!("key_id = ${}", values.len()));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        // Byte order, as SQLite sorts: the same list whatever the database's collation.
        sql.push_str(" GROUP BY model ORDER BY model COLLATE \"C\"");
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&stmt, &params).await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<_, String>(0)?, read_aggregate(row, 1)?)))
            .collect()
    }

    pub async fn usage_by_key(&self) -> Result<HashMap<i64, Aggregate>, StoreError> {
        let sql = format!(
            "SELECT key_id, {} FROM agg_total GROUP BY key_id",
            agg_sums()
        );
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let rows = client.query(&stmt, &[]).await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<_, i64>(0)?, read_aggregate(row, 1)?)))
            .collect()
    }

    pub async fn usage_by_day(
        &self,
        key_id: Option<i64>,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<DayTotal>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT day, SUM(calls)::BIGINT, SUM(total_tokens)::BIGINT FROM agg_day
                 WHERE key_id = $1 AND day BETWEEN $2 AND $3 GROUP BY day ORDER BY day",
            )
            .await?;
        let key = key_id.unwrap_or(ALL_KEYS);
        let rows = client.query(&stmt, &[&key, &first_day, &last_day]).await?;
        rows.iter()
            .map(|row| {
                Ok(DayTotal {
                    day: row.try_get(0)?,
                    calls: row.try_get::<_, i64>(1)?.max(0) as u64,
                    tokens: row.try_get::<_, i64>(2)?.max(0) as u64,
                })
            })
            .collect()
    }

    pub async fn logs(&self, query: &LogQuery) -> Result<Vec<LoggedCall>, StoreError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut bind = |value: Box<dyn ToSql + Sync + Send>| {
            params.push(value);
            params.len()
        };
        if let Some(q) = &query.q {
            // SQLite's LIKE ignores ASCII case; ILIKE does the same here.
            let n = bind(Box::new(like_pattern(q)));
            conditions.push(format!(
                "(endpoint ILIKE ${n} ESCAPE '\\' OR model ILIKE ${n} ESCAPE '\\' OR method ILIKE ${n} ESCAPE '\\' OR status::TEXT LIKE ${n} ESCAPE '\\')"
            ));
        }
        if let Some(method) = &query.method {
            let n = bind(Box::new(method.clone()));
            conditions.push(format!("lower(method) = lower(${n})"));
        }
        match query.status {
            Some(StatusFilter::Exact(code)) => {
                let n = bind(Box::new(i32::from(code)));
                conditions.push(format!("status = ${n}"));
            }
            Some(StatusFilter::Class(class)) => {
                // Matches the index on (status / 100, id): rows of the class come newest first.
                let class = bind(Box::new(i32::from(class)));
                conditions.push(format!("status / 100 = ${class}"));
            }
            None => {}
        }
        if let Some(model) = &query.model {
            let n = bind(Box::new(model.clone()));
            conditions.push(format!("model = ${n}"));
        }
        if let Some(key_id) = query.key_id {
            let n = bind(Box::new(key_id));
            conditions.push(format!("key_id = ${n}"));
        }
        if let Some(since) = query.since {
            let n = bind(Box::new(ms(since)));
            conditions.push(format!("ts >= ${n}"));
        }
        if let Some(until) = query.until {
            let n = bind(Box::new(ms(until)));
            conditions.push(format!("ts < ${n}"));
        }
        if let Some(before_id) = query.before_id {
            let n = bind(Box::new(before_id));
            conditions.push(format!("id < ${n}"));
        }
        if let Some(kind) = query.kind {
            let n = bind(Box::new(COUNT_TOKENS_PATH.to_owned()));
            let op = match kind {
                CallKind::Call => "<>",
                CallKind::CountTokens => "=",
            };
            conditions.push(format!("endpoint {op} ${n}"));
        }
        if let Some(client) = &query.client {
            let n = bind(Box::new(client.clone()));
            conditions.push(format!("client = ${n}"));
        }
        if let Some(session_id) = &query.session_id {
            let n = bind(Box::new(session_id.clone()));
            conditions.push(format!("session_id = ${n}"));
        }
        let limit = bind(Box::new(i64::from(query.limit)));
        let mut sql = CALL_SELECT.to_owned();
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${limit}"));
        let client = self.client().await?;
        let stmt = client.prepare_cached(&sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client.query(&stmt, &refs).await?;
        rows.iter().map(read_call).collect()
    }

    pub async fn lease(
        &self,
        instance: &str,
        scope: i64,
        limit: u64,
        need: u64,
        want: u64,
    ) -> Result<Lease, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let select = "SELECT taken FROM budgets WHERE scope = $1 FOR UPDATE";
        let taken: i64 = match tx.query_opt(select, &[&scope]).await? {
            Some(row) => row.try_get(0)?,
            None => {
                tx.execute(
                    "INSERT INTO budgets (scope, taken)
                     SELECT $1::BIGINT, COALESCE(SUM(total_tokens), 0)::BIGINT FROM agg_total
                     WHERE $1::BIGINT = $2::BIGINT OR key_id = $1::BIGINT
                     ON CONFLICT (scope) DO NOTHING",
                    &[&scope, &GLOBAL_SCOPE],
                )
                .await?;
                tx.query_one(select, &[&scope]).await?.try_get(0)?
            }
        };
        let lease = super::grant(limit, taken.max(0) as u64, need, want);
        if lease.granted > 0 {
            tx.execute(
                "UPDATE budgets SET taken = taken + $2 WHERE scope = $1",
                &[&scope, &to_i64(lease.granted)],
            )
            .await?;
            tx.execute(
                "INSERT INTO budget_leases (instance, scope, held) VALUES ($1, $2, $3)
                 ON CONFLICT (instance, scope) DO UPDATE
                 SET held = budget_leases.held + excluded.held",
                &[&instance, &scope, &to_i64(lease.granted)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(lease)
    }

    pub async fn adjust_budgets(
        &self,
        instance: &str,
        deltas: &[(i64, i64, i64)],
    ) -> Result<(), StoreError> {
        let mut sorted = deltas.to_vec();
        sorted.sort_unstable();
        let scopes: Vec<i64> = sorted.iter().map(|d| d.0).collect();
        let taken: Vec<i64> = sorted.iter().map(|d| d.1).collect();
        let held: Vec<i64> = sorted.iter().map(|d| d.2).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE budgets b SET taken = GREATEST(0, b.taken + d.delta)
             FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS d(scope, delta)
             WHERE b.scope = d.scope AND d.delta <> 0",
            &[&scopes, &taken],
        )
        .await?;
        // Held tokens only ever grow through `lease`: the changes here give back or use them.
        tx.execute(
            "UPDATE budget_leases l SET held = GREATEST(0, l.held + d.delta)
             FROM UNNEST($2::BIGINT[], $3::BIGINT[]) AS d(scope, delta)
             WHERE l.instance = $1 AND l.scope = d.scope AND d.delta <> 0",
            &[&instance, &scopes, &held],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn reap_instances(&self, stale_ms: i64) -> Result<u64, StoreError> {
        let now = ms(jiff::Timestamp::now());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "DELETE FROM instances WHERE seen_ms < $1",
            &[&(now - stale_ms)],
        )
        .await?;
        let returned: i64 = tx
            .query_one(
                "WITH dead AS (
                     DELETE FROM budget_leases l
                     WHERE NOT EXISTS (SELECT 1 FROM instances i WHERE i.id = l.instance)
                     RETURNING scope, held
                 ), sums AS (
                     SELECT scope, SUM(held)::BIGINT AS held FROM dead GROUP BY scope
                 ), given AS (
                     UPDATE budgets b SET taken = GREATEST(0, b.taken - sums.held)
                     FROM sums WHERE b.scope = sums.scope
                     RETURNING sums.held
                 )
                 SELECT COALESCE(SUM(held), 0)::BIGINT FROM given",
                &[],
            )
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(returned.max(0) as u64)
    }

    pub async fn register_instance(&self, id: String, stale_ms: i64) -> Result<u64, StoreError> {
        let now = ms(jiff::Timestamp::now());
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&INSTANCES_LOCK])
            .await?;
        tx.execute(
            "DELETE FROM instances WHERE seen_ms < $1",
            &[&(now - stale_ms)],
        )
        .await?;
        let others: i64 = tx
            .query_one("SELECT COUNT(*) FROM instances WHERE id <> $1", &[&id])
            .await?
            .try_get(0)?;
        if others == 0 {
            tx.execute("DELETE FROM budgets", &[]).await?;
            tx.execute("DELETE FROM budget_leases", &[]).await?;
        }
        tx.execute(
            "INSERT INTO instances (id, seen_ms) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
            &[&id, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(others.max(0) as u64)
    }

    pub async fn heartbeat(&self, id: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO instances (id, seen_ms) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms",
                &[&id, &ms(jiff::Timestamp::now())],
            )
            .await?;
        Ok(())
    }

    pub async fn deployment_id(&self, candidate: String) -> Result<String, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (name, value) VALUES ('deployment', $1) ON CONFLICT (name) DO NOTHING",
                &[&candidate],
            )
            .await?;
        Ok(client
            .query_one("SELECT value FROM meta WHERE name = 'deployment'", &[])
            .await?
            .try_get(0)?)
    }

    pub async fn unregister_instance(&self, id: String) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM instances WHERE id = $1", &[&id])
            .await?;
        Ok(())
    }
}

fn name_conflict<T>(result: Result<T, tokio_postgres::Error>, name: &str) -> Result<T, StoreError> {
    match result {
        Ok(value) => Ok(value),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(StoreError::NameTaken(name.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

const KEY_SELECT: &str = "SELECT id, name, description, key_hash, display, created_at, last_used,
    enabled, token_limit, rpm_limit, allowed_models, expires_at, deleted_at, version,
    fit_max_tokens FROM api_keys";

async fn select_key(client: &impl GenericClient, id: i64) -> Result<Option<KeyRow>, StoreError> {
    let row = client
        .query_opt(&format!("{KEY_SELECT} WHERE id = $1"), &[&id])
        .await?;
    row.as_ref().map(read_key).transpose()
}

fn read_key(row: &Row) -> Result<KeyRow, StoreError> {
    let hash_bytes: Vec<u8> = row.try_get(3)?;
    let mut hash = [0u8; 32];
    if hash_bytes.len() == 32 {
        hash.copy_from_slice(&hash_bytes);
    }
    let allowed: Option<String> = row.try_get(10)?;
    Ok(KeyRow {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        description: row.try_get(2)?,
        hash,
        display: row.try_get(4)?,
        created_at: from_ms(row.try_get(5)?),
        last_used: row.try_get::<_, Option<i64>>(6)?.map(from_ms),
        enabled: row.try_get(7)?,
        token_limit: row.try_get::<_, Option<i64>>(8)?.map(|v| v.max(0) as u64),
        rpm_limit: row
            .try_get::<_, Option<i64>>(9)?
            .map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX)),
        allowed_models: allowed.and_then(|text| serde_json::from_str(&text).ok()),
        expires_at: row.try_get::<_, Option<i64>>(11)?.map(from_ms),
        deleted: row.try_get::<_, Option<i64>>(12)?.is_some(),
        version: row.try_get(13)?,
        fit_max_tokens: row.try_get(14)?,
    })
}

const CALL_SELECT: &str = "SELECT id, ts, method, endpoint, status, model, key_id, key_name,
    prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens, reasoning_tokens,
    total_tokens, duration_ms, ttft_ms, stream, estimated, error, client, session_id FROM calls";

fn read_call(row: &Row) -> Result<LoggedCall, StoreError> {
    let count = |i: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(row.try_get::<_, i64>(i)?.max(0) as u64)
    };
    Ok(LoggedCall {
        id: row.try_get(0)?,
        call: CallRecord {
            ts: from_ms(row.try_get(1)?),
            method: row.try_get(2)?,
            endpoint: row.try_get(3)?,
            status: u16::try_from(row.try_get::<_, i32>(4)?).unwrap_or(0),
            model: row.try_get(5)?,
            key_id: row.try_get(6)?,
            key_name: row.try_get(7)?,
            tokens: TokenUsage {
                prompt: count(8)?,
                completion: count(9)?,
                cache_read: count(10)?,
                cache_creation: count(11)?,
                reasoning: count(12)?,
                total: count(13)?,
            },
            duration_ms: count(14)?,
            ttft_ms: row.try_get::<_, Option<i64>>(15)?.map(|v| v.max(0) as u64),
            stream: row.try_get(16)?,
            estimated: row.try_get(17)?,
            error: row.try_get(18)?,
            client: row.try_get(19)?,
            session_id: row.try_get(20)?,
            answer: Default::default(),
        },
    })
}

/// Writes batches of call records with their aggregates in one transaction.
pub struct PgBatchWriter {
    pool: Pool,
    timezone: jiff::tz::TimeZone,
    max_logs: i64,
    upsert_hour: String,
    upsert_day: String,
    upsert_total: String,
}

/// The columns of a batch of calls, one array each.
#[derive(Default)]
struct CallColumns {
    id: Vec<i64>,
    ts: Vec<i64>,
    method: Vec<String>,
    endpoint: Vec<String>,
    status: Vec<i32>,
    model: Vec<String>,
    key_id: Vec<Option<i64>>,
    key_name: Vec<Option<String>>,
    tokens: [Vec<i64>; 6],
    duration_ms: Vec<i64>,
    ttft_ms: Vec<Option<i64>>,
    stream: Vec<bool>,
    estimated: Vec<bool>,
    error: Vec<Option<String>>,
    client: Vec<String>,
    session_id: Vec<Option<String>>,
}

impl CallColumns {
    fn new(ids: &[i64], records: &[CallRecord]) -> Self {
        let mut c = Self::default();
        for (id, call) in ids.iter().zip(records) {
            let t = &call.tokens;
            c.id.push(*id);
            c.ts.push(ms(call.ts));
            c.method.push(call.method.clone());
            c.endpoint.push(call.endpoint.clone());
            c.status.push(i32::from(call.status));
            c.model.push(call.model.clone());
            c.key_id.push(call.key_id);
            c.key_name.push(call.key_name.clone());
            let counts = [
                t.prompt,
                t.completion,
                t.cache_read,
                t.cache_creation,
                t.reasoning,
                t.total,
            ];
            for (column, v) in c.tokens.iter_mut().zip(counts) {
                column.push(to_i64(v));
            }
            c.duration_ms.push(to_i64(call.duration_ms));
            c.ttft_ms.push(call.ttft_ms.map(to_i64));
            c.stream.push(call.stream);
            c.estimated.push(call.estimated);
            c.error.push(call.error.clone());
            c.client.push(call.client.clone());
            c.session_id.push(call.session_id.clone());
        }
        c
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![
            &self.id,
            &self.ts,
            &self.method,
            &self.endpoint,
            &self.status,
            &self.model,
            &self.key_id,
            &self.key_name,
        ];
        for column in &self.tokens {
            p.push(column);
        }
        p.extend([
            &self.duration_ms as &(dyn ToSql + Sync),
            &self.ttft_ms,
            &self.stream,
            &self.estimated,
            &self.error,
            &self.client,
            &self.session_id,
        ]);
        p
    }
}

const INSERT_CALLS: &str = "INSERT INTO calls (id, ts, method, endpoint, status, model, key_id,
    key_name, prompt_tokens, completion_tokens, cache_read_tokens, cache_creation_tokens,
    reasoning_tokens, total_tokens, duration_ms, ttft_ms, stream, estimated, error, client,
    session_id)
    SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::INTEGER[],
    $6::TEXT[], $7::BIGINT[], $8::TEXT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[],
    $12::BIGINT[], $13::BIGINT[], $14::BIGINT[], $15::BIGINT[], $16::BIGINT[], $17::BOOLEAN[],
    $18::BOOLEAN[], $19::TEXT[], $20::TEXT[], $21::TEXT[])";

impl PgBatchWriter {
    /// Writes the records, their aggregates and the keys' `last_used` in one transaction, trims
    /// the raw log to `max_logs`, and returns the records with their new ids. Rows are locked in
    /// a fixed order, so writers of several instances never deadlock on shared aggregates.
    pub async fn write(&mut self, records: &[CallRecord]) -> Result<Vec<LoggedCall>, StoreError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await?;
        let count = i64::try_from(records.len()).unwrap_or(i64::MAX);
        let mut ids: Vec<i64> = tx
            .query(
                "SELECT nextval('calls_id_seq') FROM generate_series(1, $1::BIGINT)",
                &[&count],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        ids.sort_unstable();
        let columns = CallColumns::new(&ids, records);
        let insert = tx.prepare_cached(INSERT_CALLS).await?;
        tx.execute(&insert, &columns.params()).await?;

        let (hours, days, totals, last_used) = group(records, &self.timezone);
        let hours = AggRows::new(2, dims_rows(hours));
        let days = AggRows::new(2, dims_rows(days));
        let totals = AggRows::new(
            1,
            totals
                .into_iter()
                .map(|((key_id, model), agg)| (vec![key_id], model, agg))
                .collect(),
        );
        for (sql, rows) in [
            (&self.upsert_hour, &hours),
            (&self.upsert_day, &days),
            (&self.upsert_total, &totals),
        ] {
            if !rows.models.is_empty() {
                let stmt = tx.prepare_cached(sql).await?;
                tx.execute(&stmt, &rows.params()).await?;
            }
        }
        if !last_used.is_empty() {
            let mut pairs: Vec<(i64, i64)> = last_used.into_iter().collect();
            pairs.sort_unstable();
            let (key_ids, times): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
            let stmt = tx
                .prepare_cached(
                    "UPDATE api_keys k SET last_used = GREATEST(COALESCE(k.last_used, 0), v.ts)
                     FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS v(id, ts) WHERE k.id = v.id",
                )
                .await?;
            tx.execute(&stmt, &[&key_ids, &times]).await?;
        }
        if let Some(last) = ids.last() {
            // Several writers: every row at least max_logs ids older than this batch's newest
            // goes, whoever wrote it.
            let threshold = last - self.max_logs;
            if threshold > 0 {
                let stmt = tx
                    .prepare_cached("DELETE FROM calls WHERE id <= $1")
                    .await?;
                tx.execute(&stmt, &[&threshold]).await?;
            }
        }
        tx.commit().await?;
        Ok(ids
            .into_iter()
            .zip(records)
            .map(|(id, call)| LoggedCall {
                id,
                call: call.clone(),
            })
            .collect())
    }
}
