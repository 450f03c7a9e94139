//! The store: the only module that knows SQL. Keys, raw call records, their aggregates, and the
//! shared ledgers that let several gateway instances behave as one.
//!
//! [`Store`] is the one interface the rest of the program uses. Its queries are written once
//! ([`queries`], over the [`sql::Db`] trait) and run on either backend: SQLite (embedded, one
//! machine) or PostgreSQL (shared by several instances); the backend modules know connections,
//! not queries. SQLite's blocking work runs on tokio's blocking pool and PostgreSQL's is
//! asynchronous, so no request handler ever blocks a runtime thread on the database. The
//! recorder's batch writes go through [`BatchWriter`], which owns its own connection (SQLite) or
//! borrows one from the pool (PostgreSQL).

mod postgres;
mod queries;
mod schema;
mod sql;
mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

pub use queries::{hex, local_day};

use crate::config::DatabaseUrl;
use crate::usage::{CallRecord, LoggedCall, TokenUsage, LATENCY_BUCKETS};

/// The scope of the global budget in the budget ledger; key budgets use the key's id.
pub const GLOBAL_SCOPE: i64 = 0;

/// `key_id` of the rollup rows of `agg_day`: each day's totals over every key and model, kept
/// beside the per key × model rows so that a 90-day trend reads 90 rows, not 90 × keys × models.
/// Every other reader of `agg_day` filters on one real key id.
pub const ALL_KEYS: i64 = -1;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened (path, permissions).
    #[error("cannot open the database at {path}: {reason}")]
    Open {
        /// Where.
        path: String,
        /// Why, and what to do.
        reason: String,
    },
    /// A live key already has this name.
    #[error("a key named \"{0}\" already exists")]
    NameTaken(String),
    /// `console.max_keys` live keys exist already.
    #[error("the key limit ({0}) is reached")]
    KeyLimit(u64),
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL reported an error.
    #[error("database error: {}", postgres::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("cannot get a database connection: {0}")]
    Pool(String),
    /// A blocking task failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// A row did not have the shape its query promised.
    #[error("unexpected data in the database: {0}")]
    Decode(String),
}

impl StoreError {
    /// Whether the database refused a change because it broke a uniqueness constraint.
    fn is_unique_violation(&self) -> bool {
        match self {
            Self::Database(e) => sqlite::is_unique_violation(e),
            Self::Postgres(e) => postgres::is_unique_violation(e),
            _ => false,
        }
    }
}

/// An API key as stored (the full key is never stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Row id.
    pub id: i64,
    /// Unique among live keys.
    pub name: String,
    /// Free text.
    pub description: String,
    /// SHA-256 of the full key.
    pub hash: [u8; 32],
    /// Display form, e.g. `sk-tc-AbCd…wxyz`.
    pub display: String,
    /// Creation time.
    pub created_at: jiff::Timestamp,
    /// Last call made with it.
    pub last_used: Option<jiff::Timestamp>,
    /// Disabled keys are refused with 403.
    pub enabled: bool,
    /// Token budget of the key; `None` is unlimited.
    pub token_limit: Option<u64>,
    /// Requests per minute; `None` is unlimited.
    pub rpm_limit: Option<u32>,
    /// Glob patterns of the models it may use; `None` is all.
    pub allowed_models: Option<Vec<String>>,
    /// After this instant the key is refused with 403.
    pub expires_at: Option<jiff::Timestamp>,
    /// Whether a call whose `max_tokens` does not fit in what is left of a budget is sent with
    /// its `max_tokens` lowered to what is left instead of being refused.
    pub fit_max_tokens: bool,
    /// Deleted keys are kept so their history keeps its name.
    pub deleted: bool,
    /// Grows with every change made through any instance's console (see
    /// [`Store::keys_changed_since`]).
    pub version: i64,
}

/// A key to insert.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Name (already validated).
    pub name: String,
    /// Description.
    pub description: String,
    /// SHA-256 of the full key.
    pub hash: [u8; 32],
    /// Display form.
    pub display: String,
    /// Creation time.
    pub created_at: jiff::Timestamp,
}

/// Changes to a key; `None` leaves a field as it is, `Some(None)` clears an optional limit.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Token limit.
    pub token_limit: Option<Option<u64>>,
    /// Requests-per-minute limit.
    pub rpm_limit: Option<Option<u32>>,
    /// Allowed model patterns.
    pub allowed_models: Option<Option<Vec<String>>>,
    /// Expiry.
    pub expires_at: Option<Option<jiff::Timestamp>>,
    /// Lower `max_tokens` to what is left of a budget instead of refusing.
    pub fit_max_tokens: Option<bool>,
}

/// Summed figures of many calls, as the aggregate tables keep them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// Calls.
    pub calls: u64,
    /// 2xx calls.
    pub successes: u64,
    /// Other calls.
    pub failures: u64,
    /// Token sums.
    pub tokens: TokenUsage,
    /// Summed durations in milliseconds.
    pub duration_ms: u64,
    /// Latency histogram (see [`crate::usage::LATENCY_BOUNDS_MS`]).
    pub latency: [u64; LATENCY_BUCKETS],
    /// `count_tokens` calls, counted apart: they are not in any other field.
    pub count_tokens: u64,
}

impl Aggregate {
    /// The aggregate of a single call; a `count_tokens` call counts only in `count_tokens`.
    pub fn of(call: &CallRecord) -> Self {
        if call.is_count_tokens() {
            return Self {
                count_tokens: 1,
                ..Self::default()
            };
        }
        let mut latency = [0; LATENCY_BUCKETS];
        latency[crate::usage::latency_bucket(call.duration_ms)] = 1;
        let success = call.is_success();
        Self {
            calls: 1,
            successes: u64::from(success),
            failures: u64::from(!success),
            tokens: call.tokens,
            duration_ms: call.duration_ms,
            latency,
            count_tokens: 0,
        }
    }

    /// Adds another aggregate into this one.
    pub fn add(&mut self, other: &Self) {
        self.calls += other.calls;
        self.successes += other.successes;
        self.failures += other.failures;
        self.tokens.prompt += other.tokens.prompt;
        self.tokens.completion += other.tokens.completion;
        self.tokens.cache_read += other.tokens.cache_read;
        self.tokens.cache_creation += other.tokens.cache_creation;
        self.tokens.reasoning += other.tokens.reasoning;
        self.tokens.total += other.tokens.total;
        self.duration_ms += other.duration_ms;
        self.count_tokens += other.count_tokens;
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a += b;
        }
    }
}

/// Which calls a statistic covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageFilter {
    /// Only this key's calls.
    pub key_id: Option<i64>,
    /// Calls at or after this instant (rounded down to the hour).
    pub from: Option<jiff::Timestamp>,
    /// Calls before this instant (rounded up to the hour).
    pub to: Option<jiff::Timestamp>,
}

/// Calls and tokens of one local day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotal {
    /// Local date as YYYYMMDD.
    pub day: i64,
    /// Calls that day.
    pub calls: u64,
    /// Total tokens that day.
    pub tokens: u64,
}

/// A status filter of the logs: one code or a class such as `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Exactly this status.
    Exact(u16),
    /// The class N of Nxx (1–5).
    Class(u16),
}

/// A page of raw call records, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Most rows returned.
    pub limit: u32,
    /// Substring of the endpoint or model.
    pub q: Option<String>,
    /// HTTP method, exact (case-insensitive).
    pub method: Option<String>,
    /// Status code or class.
    pub status: Option<StatusFilter>,
    /// Model, exact.
    pub model: Option<String>,
    /// Key id.
    pub key_id: Option<i64>,
    /// Calls at or after this instant.
    pub since: Option<jiff::Timestamp>,
    /// Calls before this instant.
    pub until: Option<jiff::Timestamp>,
    /// Rows with a smaller id only (the next page).
    pub before_id: Option<i64>,
    /// Calls or `count_tokens` calls only.
    pub kind: Option<CallKind>,
    /// Client family, exact (see [`crate::usage::client_family`]).
    pub client: Option<String>,
    /// Session id, exact.
    pub session_id: Option<String>,
    /// Source (`gateway` or a usage source's name), exact.
    pub source: Option<String>,
}

/// A kind filter of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Every call but `count_tokens` ones.
    Call,
    /// `count_tokens` calls only.
    CountTokens,
}

/// Ingested usage of one credential or client key of a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUsage {
    /// The source's name.
    pub source: String,
    /// The credential's `auth_index`, or the hex SHA-256 of the client key.
    pub ident: String,
    /// Masked credential or the key's display form.
    pub label: String,
    /// Summed figures.
    pub usage: Aggregate,
}

/// How the budget ledger answered a request for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Tokens handed to this instance (0 when fewer than the need were left).
    pub granted: u64,
    /// Tokens left in the budget after the grant.
    pub remaining: u64,
}

/// What a lease of `want` tokens (at least `need`) gets from a budget of `limit` of which `taken`
/// are used or leased: as much as is left up to `want`, or nothing when less than `need` is left.
pub(crate) fn grant(limit: u64, taken: u64, need: u64, want: u64) -> Lease {
    let available = limit.saturating_sub(taken);
    if available < need {
        return Lease {
            granted: 0,
            remaining: available,
        };
    }
    let granted = want.max(need).min(available);
    Lease {
        granted,
        remaining: available - granted,
    }
}

/// The store used by the whole program.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    timezone: jiff::tz::TimeZone,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Arc<sqlite::SqliteStore>),
    Postgres(Arc<postgres::PgStore>),
}

/// Writes batches of call records with their aggregates, for the recorder.
pub struct BatchWriter {
    connection: WriterConnection,
    timezone: jiff::tz::TimeZone,
    max_logs: u64,
}

enum WriterConnection {
    /// SQLite: synchronous, on the recorder's own thread (which is not a runtime worker).
    Sqlite(rusqlite::Connection),
    /// PostgreSQL: asynchronous, on a pooled connection per batch.
    Postgres(Arc<postgres::PgStore>),
}

impl BatchWriter {
    /// Writes the records, their aggregates and the keys' `last_used` in one transaction, trims
    /// the raw log to `max_logs`, and returns the records with their new ids.
    pub async fn write(&mut self, records: &[CallRecord]) -> Result<Vec<LoggedCall>, StoreError> {
        let (tz, max_logs) = (&self.timezone, self.max_logs);
        match &mut self.connection {
            WriterConnection::Sqlite(conn) => sqlite::in_transaction(conn, |db| {
                sql::now(queries::write_batch(db, records, tz, max_logs))
            }),
            WriterConnection::Postgres(pg) => {
                let mut client = pg.client().await?;
                let tx = client.transaction().await?;
                let logged =
                    queries::write_batch(&mut postgres::PgDb::new(&tx), records, tz, max_logs)
                        .await?;
                tx.commit().await?;
                Ok(logged)
            }
        }
    }
}

/// Runs blocking store work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Runs `queries::$op(db, args…)` on whichever backend the store has: on a read connection
/// (`read`) or in a write transaction (`write`). Arguments are moved in (SQLite runs the query on
/// the blocking pool); a `&` before one passes it by reference.
macro_rules! run {
    ($mode:ident, $self:ident, $op:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(backend) => {
                let backend = backend.clone();
                blocking(move || backend.$mode(|db| sql::now(queries::$op(db, $($arg),*)))).await
            }
            Backend::Postgres(backend) => on_postgres!($mode, backend, $op($($arg),*)),
        }
    };
}

/// The PostgreSQL half of [`run!`]: a pooled connection, in a transaction for `write`.
macro_rules! on_postgres {
    (read, $backend:ident, $op:ident ( $($arg:expr),* )) => {{
        let client = $backend.client().await?;
        queries::$op(&mut postgres::PgDb::new(&client), $($arg),*).await
    }};
    (write, $backend:ident, $op:ident ( $($arg:expr),* )) => {{
        let mut client = $backend.client().await?;
        let tx = client.transaction().await?;
        let out = queries::$op(&mut postgres::PgDb::new(&tx), $($arg),*).await?;
        tx.commit().await?;
        Ok(out)
    }};
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations. Several instances
    /// may open one PostgreSQL database at once: migrations are serialised by an advisory lock.
    pub fn open(url: &DatabaseUrl, timezone: jiff::tz::TimeZone) -> Result<Self, StoreError> {
        let backend = match url {
            DatabaseUrl::Sqlite(path) => {
                Backend::Sqlite(Arc::new(sqlite::SqliteStore::open(path, &timezone)?))
            }
            DatabaseUrl::Postgres(url) => {
                Backend::Postgres(Arc::new(postgres::PgStore::open(url, &timezone)?))
            }
        };
        Ok(Self { backend, timezone })
    }

    /// Which backend this is, for messages: `sqlite` or `postgres`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// A writer for the recorder.
    pub fn batch_writer(&self, max_logs: u64) -> Result<BatchWriter, StoreError> {
        let connection = match &self.backend {
            Backend::Sqlite(backend) => WriterConnection::Sqlite(backend.connection()?),
            Backend::Postgres(backend) => WriterConnection::Postgres(backend.clone()),
        };
        Ok(BatchWriter {
            connection,
            timezone: self.timezone.clone(),
            max_logs,
        })
    }

    /// Inserts a key unless its name is taken or `max_keys` live keys exist.
    pub async fn insert_key(&self, key: NewKey, max_keys: u64) -> Result<KeyRow, StoreError> {
        run!(write, self, insert_key(&key, max_keys))
    }

    /// All keys, deleted ones included, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        run!(read, self, list_keys())
    }

    /// Keys changed (created, edited or deleted) after `version`, in the order of their changes.
    pub async fn keys_changed_since(&self, version: i64) -> Result<Vec<KeyRow>, StoreError> {
        run!(read, self, keys_changed_since(version))
    }

    /// Applies a patch to a live key; `None` when there is no such live key.
    pub async fn update_key(&self, id: i64, patch: KeyPatch) -> Result<Option<KeyRow>, StoreError> {
        run!(write, self, update_key(id, &patch))
    }

    /// Marks a live key deleted; `false` when there is no such live key.
    pub async fn delete_key(&self, id: i64) -> Result<bool, StoreError> {
        run!(write, self, delete_key(id))
    }

    /// Aggregates per model of the calls the filter selects.
    pub async fn usage_by_model(
        &self,
        filter: UsageFilter,
    ) -> Result<Vec<(String, Aggregate)>, StoreError> {
        run!(read, self, usage_by_model(&filter))
    }

    /// Aggregates per model of one source's calls (`gateway` or a usage source's name) within
    /// the filter's hours (its `key_id` is not used).
    pub async fn usage_by_model_of_source(
        &self,
        source: String,
        filter: UsageFilter,
    ) -> Result<Vec<(String, Aggregate)>, StoreError> {
        run!(read, self, usage_by_model_of_source(&source, &filter))
    }

    /// All-time aggregates per key id (0 = calls without a key).
    pub async fn usage_by_key(&self) -> Result<HashMap<i64, Aggregate>, StoreError> {
        run!(read, self, usage_by_key())
    }

    /// All-time aggregate of one key.
    pub async fn usage_of_key(&self, key_id: i64) -> Result<Aggregate, StoreError> {
        run!(read, self, usage_of_key(key_id))
    }

    /// Calls and tokens per local day in `[first_day, last_day]` (YYYYMMDD), days with calls only.
    pub async fn usage_by_day(
        &self,
        key_id: Option<i64>,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<DayTotal>, StoreError> {
        run!(read, self, usage_by_day(key_id, first_day, last_day))
    }

    /// Raw call records, newest first.
    pub async fn logs(&self, query: LogQuery) -> Result<Vec<LoggedCall>, StoreError> {
        run!(read, self, logs(&query))
    }

    /// Leases tokens of a budget (`scope` 0 is the global budget, else a key id) to this
    /// instance: `want` tokens, or fewer but at least `need`, out of what `limit` leaves after
    /// every token used or leased so far; nothing when fewer than `need` are left. The ledger row
    /// is created on first use from the recorded usage.
    /// The grant is noted as held by `instance` (`budget_leases`), so that it returns to the
    /// ledger if the instance dies ([`Store::reap_instances`]).
    pub async fn lease(
        &self,
        instance: String,
        scope: i64,
        limit: u64,
        need: u64,
        want: u64,
    ) -> Result<Lease, StoreError> {
        run!(write, self, lease(&instance, scope, limit, need, want))
    }

    /// Applies changes of `instance` to budget ledgers, one `(scope, taken, held)` per budget:
    /// `taken` is added to the ledger row (negative: unused leases given back; positive: calls
    /// that used more than they reserved), `held` (never positive) to what the instance holds.
    pub async fn adjust_budgets(
        &self,
        instance: String,
        deltas: Vec<(i64, i64, i64)>,
    ) -> Result<(), StoreError> {
        run!(write, self, adjust_budgets(&instance, &deltas))
    }

    /// Forgets the instances not seen for `stale_ms` and gives the budget slices they held back
    /// to the ledgers; returns the tokens given back.
    pub async fn reap_instances(&self, stale_ms: i64) -> Result<u64, StoreError> {
        run!(write, self, reap_instances(stale_ms))
    }

    /// Registers this instance. When no other instance has been seen for `stale_ms`, the budget
    /// ledgers are rebuilt from the recorded usage: leases held by instances that died are
    /// forgotten. Returns how many other instances are alive.
    pub async fn register_instance(&self, id: String, stale_ms: i64) -> Result<u64, StoreError> {
        run!(write, self, register_instance(&id, stale_ms))
    }

    /// Notes that this instance is alive.
    pub async fn heartbeat(&self, id: String) -> Result<(), StoreError> {
        run!(write, self, heartbeat(&id))
    }

    /// The identity of this deployment (the database), made up when first asked: a namespace for
    /// what instances share outside the database, such as RPM windows in Redis.
    pub async fn deployment_id(&self) -> Result<String, StoreError> {
        let mut bytes = [0u8; 8];
        rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes)
            .map_err(|e| StoreError::Task(format!("the OS random source failed: {e}")))?;
        let candidate: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        run!(write, self, deployment_id(&candidate))
    }

    /// Ingested usage per credential (`dim` = `credential`) or client key (`client_key`) of
    /// each source (or one), over the local days `[first_day, last_day]` (YYYYMMDD).
    pub async fn source_usage(
        &self,
        dim: &'static str,
        source: Option<String>,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<SourceUsage>, StoreError> {
        run!(
            read,
            self,
            source_usage(dim, source.as_deref(), first_day, last_day)
        )
    }

    /// Takes or renews the lease of a source for `ttl_ms`; `false` while another holder's lease
    /// runs.
    pub async fn take_source_lease(
        &self,
        source: String,
        holder: String,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = jiff::Timestamp::now().as_millisecond();
        run!(
            write,
            self,
            take_source_lease(&source, &holder, now, now + ttl_ms)
        )
    }

    /// Gives a source's lease up (on shutdown), so another instance takes over at once.
    pub async fn release_source_lease(
        &self,
        source: String,
        holder: String,
    ) -> Result<(), StoreError> {
        run!(write, self, release_source_lease(&source, &holder))
    }

    /// Removes this instance on shutdown.
    pub async fn unregister_instance(&self, id: String) -> Result<(), StoreError> {
        run!(write, self, unregister_instance(&id))
    }
}

#[cfg(test)]
#[path = "../../tests/e2e/common/scratch.rs"]
mod scratch;
#[cfg(test)]
mod tests;
