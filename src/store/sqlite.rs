//! The SQLite backend: WAL mode, a few read connections, one connection for key and ledger
//! changes, and a batch writer with a connection of its own. It knows connections, not queries:
//! those are in [`super::queries`], run through [`SqliteDb`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, ToSql, TransactionBehavior};

use super::sql::{self, Bulk, Cell, Db, Dialect, Lock, Param, Row};
use super::StoreError;

const READERS: usize = 4;

impl ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Param::Null => ValueRef::Null,
            Param::Int(v) => ValueRef::Integer(*v),
            Param::Bool(v) => ValueRef::Integer(i64::from(*v)),
            Param::Text(v) => ValueRef::Text(v.as_bytes()),
            Param::Bytes(v) => ValueRef::Blob(v),
        }))
    }
}

fn read_row(row: &rusqlite::Row<'_>, columns: usize) -> rusqlite::Result<Row> {
    (0..columns)
        .map(|i| {
            Ok(match row.get_ref(i)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(v) => Cell::Int(v),
                // Only SUM over no rows or overflow gives a real; counts are whole.
                ValueRef::Real(v) => Cell::Int(v as i64),
                ValueRef::Text(v) => Cell::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => Cell::Bytes(v.to_vec()),
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()
        .map(Row)
}

/// A SQLite connection (or a transaction on it) as a [`Db`]. Every method completes at once.
pub struct SqliteDb<'c> {
    conn: &'c Connection,
}

impl<'c> SqliteDb<'c> {
    /// Wraps a connection; a `rusqlite::Transaction` derefs to one.
    pub fn new(conn: &'c Connection) -> Self {
        Self { conn }
    }
}

impl Db for SqliteDb<'_> {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sql::rendered(Dialect::Sqlite, sql))?;
        Ok(stmt.execute(params_from_iter(params))? as u64)
    }

    async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&sql::rendered(Dialect::Sqlite, sql))?;
        let columns = stmt.column_count();
        let rows = stmt.query_map(params_from_iter(params), |row| read_row(row, columns))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    async fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self
            .conn
            .execute_batch(&sql::render(Dialect::Sqlite, sql))?)
    }

    async fn insert(&mut self, bulk: &Bulk<'_>) -> Result<(), StoreError> {
        let sql = sql::memo("sqlite insert", &bulk.insert, || {
            let placeholders = (1..=bulk.types.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{} VALUES ({placeholders}) {}", bulk.insert, bulk.tail)
        });
        let mut stmt = self
            .conn
            .prepare_cached(&sql::rendered(Dialect::Sqlite, &sql))?;
        for row in &bulk.rows {
            stmt.execute(params_from_iter(row))?;
        }
        Ok(())
    }

    async fn call_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        // Calls are written by one transaction at a time (`BEGIN IMMEDIATE`), so the ids after
        // the largest ever handed out are free.
        let last: i64 = self.conn.query_row(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'calls'), 0),
                        COALESCE((SELECT MAX(id) FROM calls), 0))",
            [],
            |r| r.get(0),
        )?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok((1..=n).map(|i| last + i).collect())
    }

    async fn lock(&mut self, _lock: Lock) -> Result<(), StoreError> {
        Ok(())
    }

    async fn schema_version(&mut self) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    async fn set_schema_version(&mut self, version: usize) -> Result<(), StoreError> {
        Ok(self.conn.pragma_update(None, "user_version", version)?)
    }
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

/// Runs `work` in a write transaction (`BEGIN IMMEDIATE`) on `conn`, committing when it succeeds.
pub fn in_transaction<T>(
    conn: &mut Connection,
    work: impl FnOnce(&mut SqliteDb<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = work(&mut SqliteDb::new(&tx))?;
    tx.commit()?;
    Ok(out)
}

/// The SQLite store: one connection for key and ledger changes, a few for reads.
pub struct SqliteStore {
    path: PathBuf,
    admin: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStore {
    /// Opens the file (creating its directory), migrates it in a write transaction, and opens
    /// the read connections.
    pub fn open(path: &Path, timezone: &jiff::tz::TimeZone) -> Result<Self, StoreError> {
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
        in_transaction(&mut admin, |db| {
            sql::now(super::schema::prepare(db, timezone))
        })?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            path: path.to_owned(),
            admin: Mutex::new(admin),
            readers,
            next_reader: AtomicUsize::new(0),
        })
    }

    /// A new connection of its own, for the recorder's batch writer.
    pub fn connection(&self) -> Result<Connection, StoreError> {
        open_connection(&self.path)
    }

    /// Runs `work` on a read connection (no transaction: each statement sees the latest commit).
    pub fn read<T>(
        &self,
        work: impl FnOnce(&mut SqliteDb<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader();
        work(&mut SqliteDb::new(&conn))
    }

    /// Runs `work` in a write transaction on the connection for changes.
    pub fn write<T>(
        &self,
        work: impl FnOnce(&mut SqliteDb<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        in_transaction(&mut lock(&self.admin), work)
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
}

/// Whether a SQLite error is a broken uniqueness constraint.
pub fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation)
}
