//! The store: the only module that knows SQL. Keys, raw call records and their aggregates.
//!
//! [`Store`] is the one interface the rest of the program uses; it dispatches to a backend
//! (SQLite today). Its async methods run the blocking database work on tokio's blocking pool, so
//! no request handler ever blocks a runtime thread on the database. The recorder's batch writes
//! go through [`BatchWriter`], which owns its own connection on the recorder's thread.

mod sqlite;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::DatabaseUrl;
use crate::usage::{CallRecord, LoggedCall, TokenUsage, LATENCY_BUCKETS};

pub use sqlite::SqliteBatchWriter as BatchWriter;

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
    /// A blocking task failed.
    #[error("store task failed: {0}")]
    Task(String),
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
    /// Deleted keys are kept so their history keeps its name.
    pub deleted: bool,
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
}

impl Aggregate {
    /// The aggregate of a single call.
    pub fn of(call: &CallRecord) -> Self {
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
}

/// The store used by the whole program.
#[derive(Clone)]
pub struct Store {
    backend: Arc<sqlite::SqliteStore>,
}

/// Runs blocking store work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(url: &DatabaseUrl, timezone: jiff::tz::TimeZone) -> Result<Self, StoreError> {
        let DatabaseUrl::Sqlite(path) = url;
        Ok(Self {
            backend: Arc::new(sqlite::SqliteStore::open(path, timezone)?),
        })
    }

    /// A writer for the recorder's thread, with its own connection.
    pub fn batch_writer(&self, max_logs: u64) -> Result<BatchWriter, StoreError> {
        self.backend.batch_writer(max_logs)
    }

    /// Inserts a key unless its name is taken or `max_keys` live keys exist.
    pub async fn insert_key(&self, key: NewKey, max_keys: u64) -> Result<KeyRow, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.insert_key(&key, max_keys)).await
    }

    /// All keys, deleted ones included, oldest first.
    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.list_keys()).await
    }

    /// Applies a patch to a live key; `None` when there is no such live key.
    pub async fn update_key(&self, id: i64, patch: KeyPatch) -> Result<Option<KeyRow>, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.update_key(id, &patch)).await
    }

    /// Marks a live key deleted; `false` when there is no such live key.
    pub async fn delete_key(&self, id: i64) -> Result<bool, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.delete_key(id)).await
    }

    /// Aggregates per model of the calls the filter selects.
    pub async fn usage_by_model(
        &self,
        filter: UsageFilter,
    ) -> Result<Vec<(String, Aggregate)>, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.usage_by_model(&filter)).await
    }

    /// All-time aggregates per key id (0 = calls without a key).
    pub async fn usage_by_key(&self) -> Result<HashMap<i64, Aggregate>, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.usage_by_key()).await
    }

    /// Calls and tokens per local day in `[first_day, last_day]` (YYYYMMDD), days with calls only.
    pub async fn usage_by_day(
        &self,
        key_id: Option<i64>,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<DayTotal>, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.usage_by_day(key_id, first_day, last_day)).await
    }

    /// Raw call records, newest first.
    pub async fn logs(&self, query: LogQuery) -> Result<Vec<LoggedCall>, StoreError> {
        let backend = self.backend.clone();
        blocking(move || backend.logs(&query)).await
    }
}

#[cfg(test)]
mod tests;
