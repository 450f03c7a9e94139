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
mod row;
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

/// The unit of a token budget's ledger rows.
pub const UNIT_TOKENS: i64 = 0;
/// The unit of a money budget's ledger rows: nano-dollars (10⁻⁹ USD) of priced calls.
pub const UNIT_NANO_USD: i64 = 1;

/// One row of the budget ledger: a budget (`scope`: [`GLOBAL_SCOPE`] or a key id), the unit it
/// counts, and the period its figures belong to — a budget that resets has a row per period, so a
/// call is charged to the period it was admitted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerRow {
    /// The global budget or a key id.
    pub scope: i64,
    /// What it counts ([`UNIT_TOKENS`] or [`UNIT_NANO_USD`]).
    pub unit: i64,
    /// 0 for a budget that never resets, else [`crate::clock::Period::code`].
    pub period: i64,
    /// The period's first instant in UTC milliseconds (0 for a budget that never resets).
    pub start_ms: i64,
    /// The period's first local day (YYYYMMDD, as `agg_day` buckets days), 0 for a budget that
    /// never resets: the row is built from the usage recorded from then until `last_day`.
    pub first_day: i64,
    /// The period's last local day (YYYYMMDD), 0 for a budget that never resets.
    pub last_day: i64,
}

impl LedgerRow {
    /// The row of a token budget that never resets.
    pub fn tokens(scope: i64) -> Self {
        Self {
            scope,
            unit: UNIT_TOKENS,
            period: 0,
            start_ms: 0,
            first_day: 0,
            last_day: 0,
        }
    }
}

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
    /// Money budget of the key in nano-dollars; `None` is unlimited.
    pub cost_limit_nanos: Option<u64>,
    /// Requests per minute; `None` is unlimited.
    pub rpm_limit: Option<u32>,
    /// Glob patterns of the models it may use; `None` is all.
    pub allowed_models: Option<Vec<String>>,
    /// After this instant the key is refused with 403.
    pub expires_at: Option<jiff::Timestamp>,
    /// Whether a call whose `max_tokens` does not fit in what is left of a budget is sent with
    /// its `max_tokens` lowered to what is left instead of being refused.
    pub fit_max_tokens: bool,
    /// How often the key's limit starts again from nothing; `None`: never.
    pub limit_period: Option<crate::clock::Period>,
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
    /// How often its limit resets.
    pub limit_period: Option<crate::clock::Period>,
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
    /// Money limit in nano-dollars.
    pub cost_limit_nanos: Option<Option<u64>>,
    /// Requests-per-minute limit.
    pub rpm_limit: Option<Option<u32>>,
    /// Allowed model patterns.
    pub allowed_models: Option<Option<Vec<String>>>,
    /// Expiry.
    pub expires_at: Option<Option<jiff::Timestamp>>,
    /// Lower `max_tokens` to what is left of a budget instead of refusing.
    pub fit_max_tokens: Option<bool>,
    /// How often the limit resets.
    pub limit_period: Option<Option<crate::clock::Period>>,
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
    /// Summed cost of the priced calls, in nano-dollars.
    pub cost_nanos: u64,
    /// Calls that spent tokens on a model without a price (not in `cost_nanos`).
    pub unpriced_calls: u64,
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
            cost_nanos: call.cost_nanos.unwrap_or(0),
            unpriced_calls: u64::from(call.cost_nanos.is_none()),
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
        self.cost_nanos += other.cost_nanos;
        self.unpriced_calls += other.unpriced_calls;
        for (a, b) in self.latency.iter_mut().zip(other.latency.iter()) {
            *a += b;
        }
    }
}

/// What a call costs: `(model, when, tokens, estimated)` → its cost in nano-dollars (`None`:
/// no price) and status. Repricing hands the price book to the store as one of these.
pub type Pricer = Arc<
    dyn Fn(&str, jiff::Timestamp, &TokenUsage, bool) -> (Option<u64>, crate::pricing::CostStatus)
        + Send
        + Sync,
>;

/// What repricing a span of hours changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repriced {
    /// Raw call rows whose cost changed.
    pub calls_changed: u64,
    /// `agg_hour` rows summed exactly from their raw calls.
    pub exact_rows: u64,
    /// `agg_hour` rows priced from their summed tokens (their raw calls were trimmed).
    pub approximate_rows: u64,
    /// Change of the total cost, nano-dollars.
    pub cost_delta: i64,
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
    /// Cost of the priced calls that day, nano-dollars.
    pub cost_nanos: u64,
}

/// Whose calls a day's totals count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayScope {
    /// Every call.
    All,
    /// One key's calls.
    Key(i64),
    /// One source's calls (`gateway` or a usage source's name).
    Source(String),
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
    /// Rows with a smaller id only (the next page).
    pub before_id: Option<i64>,
    /// Calls at or after this instant.
    pub since: Option<jiff::Timestamp>,
    /// Calls before this instant.
    pub until: Option<jiff::Timestamp>,
    /// Substring of the endpoint, model, method or status.
    pub q: Option<String>,
    /// Status code or class.
    pub status: Option<StatusFilter>,
    /// Calls or `count_tokens` calls only.
    pub kind: Option<CallKind>,
    /// Fields the calls must have, all of them.
    pub matches: Vec<CallMatch>,
}

/// A field a call of the logs must have. The store tests it in SQL, the live log in memory
/// ([`CallMatch::holds`]): both read this one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallMatch {
    /// HTTP method, case-insensitive.
    Method(String),
    /// Model, exact.
    Model(String),
    /// Key id.
    Key(i64),
    /// Client family, exact (see [`crate::usage::client_family`]).
    Client(String),
    /// Session id, exact.
    Session(String),
    /// Source (`gateway` or a usage source's name), exact.
    Source(String),
}

impl CallMatch {
    /// Whether `call` has the field.
    pub fn holds(&self, call: &CallRecord) -> bool {
        match self {
            CallMatch::Method(m) => m.eq_ignore_ascii_case(&call.method),
            CallMatch::Model(m) => *m == call.model,
            CallMatch::Key(k) => call.key_id == Some(*k),
            CallMatch::Client(c) => *c == call.client,
            CallMatch::Session(s) => call.session_id.as_ref() == Some(s),
            CallMatch::Source(s) => *s == call.source,
        }
    }
}

/// A kind filter of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Every call but `count_tokens` ones.
    Call,
    /// `count_tokens` calls only.
    CountTokens,
}

/// What an alert is about, as stored and as `GET /api/console/alerts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AlertHeading {
    /// The rule that raised it (`budget_80`, `forecast`, `anomaly`, `recorder_degraded`).
    pub rule: String,
    /// The event as the payload names it (`threshold_crossed`, `budget_crossed`,
    /// `projected_limit_exceeded`, `anomaly_detected`, `recorder_degraded`).
    pub event: String,
    /// The key it is about, if any.
    pub key_id: Option<i64>,
    /// What it is about (`global`, `key:7`, `key:7/gpt-4o`, `instance:…`).
    pub subject: String,
    /// The period it holds for (`total` for all-time budgets, a day, an episode).
    pub period: String,
    /// One line for people.
    pub message: String,
}

/// An alert to raise once: stored only if no alert with its `dedup` exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    /// Rule, subject and period: unique among alerts.
    pub dedup: String,
    /// What it is about.
    pub heading: AlertHeading,
    /// The generic webhook's JSON.
    pub payload: String,
    /// When it was raised.
    pub created_at: jiff::Timestamp,
    /// The instance that raised it.
    pub instance: String,
    /// One delivery per target, with its first status (`pending` or `skipped`).
    pub deliveries: Vec<Delivery>,
}

/// The state of one alert's delivery to one target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The target's name.
    pub target: String,
    /// The target's kind (`webhook`, `slack`, …).
    pub kind: String,
    /// `pending`, `sent`, `failed` or `skipped`.
    pub status: String,
    /// Tries made.
    pub attempts: u32,
    /// The HTTP status of the last answer, if one came.
    pub http_status: Option<u16>,
    /// Why the last try failed, or why the delivery was skipped.
    pub error: Option<String>,
    /// When this row last changed.
    #[serde(serialize_with = "crate::clock::serialize_rfc3339")]
    #[schema(value_type = String)]
    pub updated_at: jiff::Timestamp,
}

/// A stored alert with its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// Row id.
    pub id: i64,
    /// The alert as raised (its `deliveries` as they stand now).
    pub alert: NewAlert,
}

/// One row of `agg_hour`, reduced to what anomaly detection reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HourUsage {
    /// UTC hours since the epoch.
    pub hour: i64,
    /// Key id (0: no key).
    pub key_id: i64,
    /// Model.
    pub model: String,
    /// Calls.
    pub calls: u64,
    /// Non-2xx calls.
    pub failures: u64,
    /// Total tokens.
    pub tokens: u64,
}

/// Tokens a key spent since an hour, and the first hour of that span it made calls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUsage {
    /// Key id (0: no key).
    pub key_id: i64,
    /// The first hour (UTC hours since the epoch) with calls.
    pub first_hour: i64,
    /// Total tokens.
    pub tokens: u64,
}

/// The end user under which a day's rollups keep the calls of users beyond its cap.
pub const OTHER_USERS: &str = "(other)";
/// Default of `console.usage_user_cap`: distinct end users a local day's rollups keep apart.
pub const DEFAULT_USER_CAP: u64 = 10_000;

/// A dimension usage is grouped or filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The key id (0: calls without a valid key).
    Key,
    /// The model (`(unrouted)` for calls no provider serves).
    Model,
    /// The end user (`''`: none named; [`OTHER_USERS`]: beyond the day's cap).
    User,
    /// The client family.
    Client,
    /// The configured provider that served the call.
    Provider,
    /// Where the record came from (`gateway`, or an ingested source).
    Source,
    /// The request path.
    Endpoint,
    /// The local day (YYYYMMDD).
    Day,
    /// The UTC hour (hours since the epoch).
    Hour,
}

impl Dim {
    /// Every dimension, in the order the API documents them.
    pub const ALL: [Dim; 9] = [
        Dim::Key,
        Dim::Model,
        Dim::User,
        Dim::Client,
        Dim::Provider,
        Dim::Source,
        Dim::Endpoint,
        Dim::Day,
        Dim::Hour,
    ];

    /// The dimension's name in the API.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Key => "key",
            Dim::Model => "model",
            Dim::User => "user",
            Dim::Client => "client",
            Dim::Provider => "provider",
            Dim::Source => "source",
            Dim::Endpoint => "endpoint",
            Dim::Day => "day",
            Dim::Hour => "hour",
        }
    }

    /// The dimension of an API name.
    pub fn parse(name: &str) -> Option<Dim> {
        Dim::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether the per-user rollups keep this dimension (the others keep every one but the user).
    pub fn with_users(self) -> bool {
        matches!(self, Dim::Key | Dim::User | Dim::Day)
    }
}

/// What usage is ordered by (largest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageOrder {
    /// Total tokens.
    #[default]
    Tokens,
    /// Calls.
    Calls,
    /// Failed calls.
    Errors,
    /// Cost of the priced calls.
    Cost,
}

/// A breakdown of usage: one row per value (or pair of values) of `group_by`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// One or two dimensions, at most one of them `day` or `hour` (see [`UsageQuery::check`]).
    pub group_by: Vec<Dim>,
    /// Calls at or after this instant (rounded down to its hour; to its local day when grouped
    /// by day or read from a daily rollup: see `queries::usage`).
    pub from: Option<jiff::Timestamp>,
    /// Calls before this instant (rounded up to its hour, or to its local day as `from` is).
    pub to: Option<jiff::Timestamp>,
    /// Only this key's calls.
    pub key_id: Option<i64>,
    /// Exact values of the other dimensions (`Dim::Key`, `Day` and `Hour` excluded).
    pub filters: Vec<(Dim, String)>,
    /// Order of the rows.
    pub order: UsageOrder,
    /// Most rows.
    pub limit: u32,
}

impl UsageQuery {
    /// The dimensions the query names, grouped or filtered.
    fn dims(&self) -> impl Iterator<Item = Dim> + '_ {
        self.group_by
            .iter()
            .copied()
            .chain(self.key_id.map(|_| Dim::Key))
            .chain(self.filters.iter().map(|f| f.0))
    }

    /// Whether the per-user rollups answer it.
    pub fn reads_users(&self) -> bool {
        self.dims().any(|d| d == Dim::User)
    }

    /// Why the rollups cannot answer the query, if they cannot: `group_by` must name one or two
    /// distinct dimensions, not both `day` and `hour`; `hour` goes with one other dimension at
    /// most (grouped or filtered), and the end user only with the key and the day.
    pub fn check(&self) -> Result<(), String> {
        let n = self.group_by.len();
        if n == 0 || n > 2 {
            return Err(format!("group_by names one or two dimensions; got {n}"));
        }
        if n == 2 && self.group_by[0] == self.group_by[1] {
            return Err("group_by names the same dimension twice".into());
        }
        if self.group_by.contains(&Dim::Day) && self.group_by.contains(&Dim::Hour) {
            return Err("group_by takes day or hour, not both".into());
        }
        if self.group_by.contains(&Dim::Hour) {
            let mut named: Vec<&str> = self
                .dims()
                .filter(|d| *d != Dim::Hour)
                .map(Dim::name)
                .collect();
            named.sort_unstable();
            named.dedup();
            if named.len() > 1 || named.contains(&"user") {
                return Err(format!(
                    "hour goes with one other dimension at most, grouped or filtered, and not with user (by the hour, usage is kept one dimension at a time); got {}",
                    named.join(", ")
                ));
            }
        }
        if self.reads_users() {
            if let Some(other) = self.dims().find(|d| !d.with_users()) {
                return Err(format!(
                    "user can be grouped and filtered only with key and day, not with {}",
                    other.name()
                ));
            }
        }
        Ok(())
    }
}

/// The start of an hour of the rollups (UTC hours since the epoch).
pub fn hour_start(hour: i64) -> jiff::Timestamp {
    queries::from_ms(hour.saturating_mul(queries::MS_PER_HOUR))
}

/// A value of a dimension in a row of usage.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DimValue {
    /// A key id, a day (YYYYMMDD) or an hour (hours since the epoch).
    Int(i64),
    /// Any other dimension's value.
    Text(String),
}

/// One row of a breakdown: the values of the query's `group_by`, in order, and their usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageGroup {
    /// One value per dimension of `group_by`.
    pub values: Vec<DimValue>,
    /// The calls' sums.
    pub agg: Aggregate,
}

/// Whether the push endpoint may store records under a source name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushSource {
    /// Configured, admitted before, or admitted now.
    Admitted,
    /// New, and the cap's names are taken: these ones (configured names left out).
    Full(Vec<String>),
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
    /// The end users each recent day admitted, as far as this writer has seen.
    users: queries::KnownUsers,
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
        let (tz, max_logs, users) = (&self.timezone, self.max_logs, &self.users);
        let (logged, admitted) = match &mut self.connection {
            WriterConnection::Sqlite(conn) => sqlite::in_transaction(conn, |db| {
                sql::now(queries::write_batch(db, records, tz, max_logs, users))
            })?,
            WriterConnection::Postgres(pg) => {
                let mut client = pg.client().await?;
                let tx = client.transaction().await?;
                let db = &mut postgres::PgDb::new(&tx);
                let written = queries::write_batch(db, records, tz, max_logs, users).await?;
                tx.commit().await?;
                written
            }
        };
        // Only what is committed is known: a failed batch is written again, and decided again.
        self.users.remember(admitted);
        Ok(logged)
    }

    /// Sets how many distinct end users a local day's rollups keep apart (default
    /// [`DEFAULT_USER_CAP`]); the calls of later users are kept under [`OTHER_USERS`].
    pub fn with_user_cap(mut self, cap: u64) -> Self {
        self.users = queries::KnownUsers::new(cap);
        self
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
            users: queries::KnownUsers::new(DEFAULT_USER_CAP),
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

    /// A breakdown of usage read from the rollups (`query` must pass [`UsageQuery::check`]).
    pub async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageGroup>, StoreError> {
        let tz = self.timezone.clone();
        run!(read, self, usage(&query, &tz))
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

    /// Calls and tokens per local day in `[first_day, last_day]` (YYYYMMDD) of the calls of
    /// `scope`, days with calls only.
    pub async fn usage_by_day(
        &self,
        scope: DayScope,
        first_day: i64,
        last_day: i64,
    ) -> Result<Vec<DayTotal>, StoreError> {
        run!(read, self, usage_by_day(&scope, first_day, last_day))
    }

    /// Tokens per key from `from_hour` (UTC hours since the epoch) on, with each key's first
    /// hour with calls.
    pub async fn usage_since_hour(&self, from_hour: i64) -> Result<Vec<WindowUsage>, StoreError> {
        run!(read, self, usage_since_hour(from_hour))
    }

    /// The rows of `agg_hour` from `from_hour` on, of one key or all, of the key × model pairs
    /// with calls at or after `active_from` (the hours examined; the rest is their baseline).
    pub async fn hourly_usage(
        &self,
        from_hour: i64,
        active_from: i64,
        key_id: Option<i64>,
    ) -> Result<Vec<HourUsage>, StoreError> {
        run!(read, self, hourly_usage(from_hour, active_from, key_id))
    }

    /// Stores an alert and its deliveries unless one with its `dedup` exists: `Some(id)` for the
    /// one caller (of any instance) that stored it, `None` for every other.
    pub async fn claim_alert(&self, alert: NewAlert) -> Result<Option<i64>, StoreError> {
        run!(write, self, claim_alert(&alert))
    }

    /// Notes the outcome of a delivery.
    pub async fn update_delivery(
        &self,
        alert_id: i64,
        delivery: Delivery,
    ) -> Result<(), StoreError> {
        run!(write, self, update_delivery(alert_id, &delivery))
    }

    /// Takes over (for this caller alone) up to 100 deliveries left `pending` and unchanged since
    /// `stale_before`: `(alert id, payload, delivery)` each.
    pub async fn take_stale_deliveries(
        &self,
        stale_before: jiff::Timestamp,
        now: jiff::Timestamp,
    ) -> Result<Vec<(i64, String, Delivery)>, StoreError> {
        run!(write, self, take_stale_deliveries(stale_before, now))
    }

    /// The newest `limit` alerts with their deliveries, newest first.
    pub async fn alerts(&self, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        run!(read, self, alerts(limit))
    }

    /// Deletes alerts of the given rules raised before `before` (their periods are over), and
    /// their deliveries; returns how many alerts went.
    pub async fn prune_alerts(
        &self,
        before: jiff::Timestamp,
        rules: Vec<String>,
    ) -> Result<u64, StoreError> {
        run!(write, self, prune_alerts(before, &rules))
    }

    /// Raw call records, newest first.
    pub async fn logs(&self, query: LogQuery) -> Result<Vec<LoggedCall>, StoreError> {
        run!(read, self, logs(&query))
    }

    /// Tokens and nano-dollars per key id recorded on local days from `first_day` (YYYYMMDD)
    /// on, with the calls of every key under [`GLOBAL_SCOPE`].
    pub async fn usage_since_day(
        &self,
        first_day: i64,
    ) -> Result<HashMap<i64, (u64, u64)>, StoreError> {
        run!(read, self, usage_since_day(first_day))
    }

    /// Leases tokens of a budget's ledger row to this instance: `want` tokens, or fewer but at
    /// least `need`, out of what `limit` leaves after every token used or leased so far in the
    /// row's period; nothing when fewer than `need` are left. The ledger row is created on first
    /// use from the usage recorded in its period.
    /// The grant is noted as held by `instance` (`budget_leases`), so that it returns to the
    /// ledger if the instance dies ([`Store::reap_instances`]).
    pub async fn lease(
        &self,
        instance: String,
        row: LedgerRow,
        limit: u64,
        need: u64,
        want: u64,
    ) -> Result<Lease, StoreError> {
        run!(write, self, lease(&instance, row, limit, need, want))
    }

    /// Applies changes of `instance` to budget ledgers, one `(row, taken, held)` per ledger row:
    /// `taken` is added to the ledger row (negative: unused leases given back; positive: calls
    /// that used more than they reserved), `held` (never positive) to what the instance holds.
    pub async fn adjust_budgets(
        &self,
        instance: String,
        deltas: Vec<(LedgerRow, i64, i64)>,
    ) -> Result<(), StoreError> {
        run!(write, self, adjust_budgets(&instance, &deltas))
    }

    /// Forgets the ledger rows of periods that started before `before` (UTC milliseconds): a
    /// budget that resets keeps a row per period, and past periods are never charged again.
    pub async fn prune_budgets(&self, before: i64) -> Result<(), StoreError> {
        run!(write, self, prune_budgets(before))
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

    /// The first and last hour (UTC hours since the epoch) holding calls at or after
    /// `from_hour`.
    pub async fn hour_span(&self, from_hour: i64) -> Result<Option<(i64, i64)>, StoreError> {
        run!(read, self, hour_span(from_hour))
    }

    /// Recomputes the stored cost of the calls of hours `[first, end)` and of their aggregates
    /// with `pricer`, in one transaction (see [`queries::reprice_hours`]).
    pub async fn reprice_hours(
        &self,
        first: i64,
        end: i64,
        pricer: Pricer,
    ) -> Result<Repriced, StoreError> {
        let tz = self.timezone.clone();
        run!(write, self, reprice_hours(first, end, &tz, &pricer))
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

    /// Admits `name` as a source of the push endpoint: a `configured` one always, one admitted
    /// before (by any instance), or a new one while fewer than `cap` names (configured ones
    /// left out) are admitted.
    pub async fn admit_push_source(
        &self,
        name: String,
        configured: Vec<String>,
        cap: u64,
    ) -> Result<PushSource, StoreError> {
        if configured.contains(&name) {
            return Ok(PushSource::Admitted);
        }
        let now = jiff::Timestamp::now().as_millisecond();
        run!(write, self, admit_push_source(&name, &configured, cap, now))
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
