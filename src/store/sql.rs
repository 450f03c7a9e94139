//! The one SQL layer: values bound to statements ([`Param`]), rows read back ([`Row`]), and the
//! [`Db`] trait that each backend implements, so that every query in [`super::queries`] is written
//! once and runs on SQLite and PostgreSQL alike.
//!
//! Statements are written in one spelling: `$1, $2 …` placeholders and a few `{tokens}` where the
//! dialects part ways; [`render`] turns that into the backend's own SQL. The differences that are
//! more than spelling — where a batch of rows comes from (`UNNEST` of arrays or one prepared
//! `VALUES` row at a time), how ids of new calls are handed out, the lock that serialises writers
//! and how the schema version is kept — are [`Db`] methods.

use std::borrow::Cow;
use std::future::Future;

pub use super::row::{Cell, FromColumns, Row};
use super::StoreError;

/// The SQL dialects the store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or newer (bundled).
    Sqlite,
    /// PostgreSQL 12 or newer.
    Postgres,
}

/// What each `{token}` of a statement becomes, per dialect: `(token, SQLite, PostgreSQL)`.
const TOKENS: &[(&str, &str, &str)] = &[
    // Statements.
    ("{greatest}", "MAX", "GREATEST"),
    ("{ilike}", "LIKE", "ILIKE"),
    ("{for_update}", "", "FOR UPDATE"),
    // Byte order, as SQLite sorts text: the same list whatever the database's collation.
    ("{binary}", "", "COLLATE \"C\""),
    // Schema.
    (
        "{id}",
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGSERIAL PRIMARY KEY",
    ),
    ("{int}", "INTEGER", "BIGINT"),
    ("{blob}", "BLOB", "BYTEA"),
    ("{bool}", "INTEGER", "BOOLEAN"),
    ("{true}", "1", "TRUE"),
    ("{false}", "0", "FALSE"),
    ("{without_rowid}", " WITHOUT ROWID", ""),
];

/// The aggregate tables' value columns, in [`super::Aggregate`] order.
pub const AGG_COLUMNS: [&str; 13 + crate::usage::LATENCY_BUCKETS] = [
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
    "cost_nanos",
    "unpriced_calls",
];

/// Turns a statement written in the store's spelling into `dialect`'s: tokens replaced, and for
/// SQLite `$N` placeholders written `?N` (the same numbered parameter).
pub fn render(dialect: Dialect, sql: &str) -> String {
    let mut out = sql.to_owned();
    if out.contains('{') {
        for (token, sqlite, postgres) in TOKENS {
            let with = match dialect {
                Dialect::Sqlite => sqlite,
                Dialect::Postgres => postgres,
            };
            out = out.replace(token, with);
        }
    }
    if dialect == Dialect::Sqlite {
        out = numbered_for_sqlite(&out);
    }
    out
}

/// A statement text built by `build`, remembered per thread under (`kind`, `key`): the recorder
/// builds the same few statements (per table, per column list) for every batch of calls, and
/// building one costs dozens of small `format!`s. `key` must determine the text.
pub fn memo(kind: &'static str, key: &str, build: impl FnOnce() -> String) -> std::sync::Arc<str> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;
    type Memo = HashMap<&'static str, HashMap<Box<str>, Arc<str>>>;
    thread_local! {
        static MEMO: RefCell<Memo> = RefCell::default();
    }
    MEMO.with(|memo| {
        let mut memo = memo.borrow_mut();
        let texts = memo.entry(kind).or_default();
        if let Some(hit) = texts.get(key) {
            return hit.clone();
        }
        if texts.len() >= RENDERED_KEPT {
            texts.clear();
        }
        let text: Arc<str> = build().into();
        texts.insert(key.into(), text.clone());
        text
    })
}

/// Most statements a thread's [`rendered`] cache keeps before it starts afresh.
const RENDERED_KEPT: usize = 256;

/// [`render`], remembered per thread and dialect: the store runs the same few statements for
/// every batch of calls, and rendering one costs a dozen passes over its text, where finding it
/// costs one hash.
pub fn rendered(dialect: Dialect, sql: &str) -> std::sync::Arc<str> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Arc;
    thread_local! {
        static CACHE: RefCell<[HashMap<Box<str>, Arc<str>>; 2]> = RefCell::default();
    }
    let which = match dialect {
        Dialect::Sqlite => 0,
        Dialect::Postgres => 1,
    };
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let cache = &mut cache[which];
        if let Some(hit) = cache.get(sql) {
            return hit.clone();
        }
        if cache.len() >= RENDERED_KEPT {
            cache.clear();
        }
        let text: Arc<str> = render(dialect, sql).into();
        cache.insert(sql.into(), text.clone());
        text
    })
}

/// `$N` (outside quoted text) becomes `?N`.
fn numbered_for_sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '$' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// A value bound to a statement. Integers fit whatever integer type the column has.
#[derive(Debug, Clone, PartialEq)]
pub enum Param<'a> {
    /// SQL NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(Cow<'a, str>),
    /// Bytes.
    Bytes(&'a [u8]),
    /// A boolean (0 or 1 in SQLite).
    Bool(bool),
}

impl From<i64> for Param<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<u64> for Param<'_> {
    fn from(v: u64) -> Self {
        Self::Int(to_i64(v))
    }
}

impl From<bool> for Param<'_> {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(Cow::Borrowed(v))
    }
}

impl From<String> for Param<'_> {
    fn from(v: String) -> Self {
        Self::Text(Cow::Owned(v))
    }
}

impl<'a> From<&'a [u8]> for Param<'a> {
    fn from(v: &'a [u8]) -> Self {
        Self::Bytes(v)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// The SQL type of a column of a [`Bulk`] batch (PostgreSQL's arrays are typed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `BIGINT`.
    BigInt,
    /// `INTEGER`.
    Int,
    /// `TEXT`.
    Text,
    /// `BOOLEAN`.
    Bool,
}

/// Rows inserted by one statement: `insert` names the table and columns
/// (`INSERT INTO t (a, b)`), `types` their types, `tail` what follows the rows (an
/// `ON CONFLICT …` clause, or nothing).
pub struct Bulk<'a> {
    /// `INSERT INTO table (columns…)`; it determines the column types and the tail.
    pub insert: std::sync::Arc<str>,
    /// One type per column.
    pub types: Vec<Ty>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Param<'a>>>,
    /// `ON CONFLICT …`, or empty.
    pub tail: std::sync::Arc<str>,
}

/// Writers that must not interleave on PostgreSQL (SQLite's write transactions are serialised by
/// `BEGIN IMMEDIATE` already).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Applying migrations.
    Migrations,
    /// Changing keys: key versions become visible in the order they were given.
    Keys,
    /// Registering and reaping instances.
    Instances,
    /// Admitting a new source name of the push endpoint.
    PushSources,
}

/// A connection or transaction of either backend. SQLite's implementation never waits, so its
/// futures complete on first poll (see [`now`]).
#[allow(async_fn_in_trait)]
pub trait Db {
    /// Runs a statement; returns the rows it changed.
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError>;

    /// Runs a query; returns its rows.
    async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError>;

    /// Runs several statements without parameters (migrations).
    async fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError>;

    /// Inserts the rows of `bulk` in one statement (PostgreSQL: one array per column) or one
    /// prepared row at a time (SQLite, in process).
    async fn insert(&mut self, bulk: &Bulk<'_>) -> Result<(), StoreError>;

    /// Hands out `n` new ids of the `calls` table, ascending.
    async fn call_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError>;

    /// Takes a lock held until the transaction ends.
    async fn lock(&mut self, lock: Lock) -> Result<(), StoreError>;

    /// How many migrations the database has applied.
    async fn schema_version(&mut self) -> Result<usize, StoreError>;

    /// Notes that migration `version` (1-based) is applied.
    async fn set_schema_version(&mut self, version: usize) -> Result<(), StoreError>;

    /// The rows of a query, each read as a `T`.
    async fn fetch<T: FromColumns>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<T>, StoreError> {
        self.query(sql, params)
            .await?
            .iter()
            .map(T::from_row)
            .collect()
    }

    /// The first row of a query read as a `T`, if any.
    async fn fetch_opt<T: FromColumns>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Option<T>, StoreError> {
        Ok(self.fetch(sql, params).await?.into_iter().next())
    }

    /// The first column of the first row of a query; no row is an error.
    async fn fetch_value<T: FromColumns>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<T, StoreError> {
        match self.fetch_opt::<(T,)>(sql, params).await? {
            Some((value,)) => Ok(value),
            None => Err(StoreError::Decode(format!("no row from: {sql}"))),
        }
    }
}

/// Completes a future that never waits — a store operation on SQLite, whose [`Db`] methods are
/// synchronous — on the current thread.
pub fn now<T>(work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    futures_util::FutureExt::now_or_never(work).unwrap_or_else(|| {
        Err(StoreError::Task(
            "a SQLite operation waited, which it never does".into(),
        ))
    })
}

/// `u64` to a column's `i64`, saturating.
pub fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_numbers_placeholders_outside_quotes_and_spells_tokens_its_way() {
        assert_eq!(
            render(
                Dialect::Sqlite,
                "SELECT '$1', {greatest}(a, $2) FROM t WHERE b = $10 {for_update}"
            ),
            "SELECT '$1', MAX(a, ?2) FROM t WHERE b = ?10 "
        );
        assert_eq!(
            render(Dialect::Postgres, "SELECT {greatest}(a, $2) {for_update}"),
            "SELECT GREATEST(a, $2) FOR UPDATE"
        );
    }

    #[test]
    fn a_rendered_statement_is_remembered_per_dialect() {
        let sql = "SELECT {greatest}(a, $2) {for_update}";
        let first = rendered(Dialect::Sqlite, sql);
        assert_eq!(&*first, render(Dialect::Sqlite, sql));
        assert!(std::sync::Arc::ptr_eq(
            &first,
            &rendered(Dialect::Sqlite, sql)
        ));
        assert_eq!(
            &*rendered(Dialect::Postgres, sql),
            render(Dialect::Postgres, sql)
        );
    }
}
