//! The PostgreSQL backend: one database shared by several gateway instances, a small connection
//! pool, and [`PgDb`], through which [`super::queries`] run. Batches are sent as one array per
//! column (`UNNEST`), so a batch costs a handful of round trips whatever its size.
//!
//! TLS to PostgreSQL is not supported yet: connections are plain TCP (or a Unix socket), so the
//! database should be on the same host or a private network.

use std::time::Duration;

use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::NoTls;

use super::sql::{self, Bulk, Cell, Db, Dialect, Lock, Param, Row, Ty};
use super::StoreError;
use crate::config::ServiceUrl;

/// Most pooled connections per instance (readers, key changes, ledger and the batch writer).
const POOL_SIZE: usize = 16;
/// Longest wait of a pooled connection for a row or table lock before its statement fails (and
/// the recorder retries the batch, reporting itself degraded meanwhile).
const LOCK_TIMEOUT_MS: u64 = 5_000;

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

/// Whether a PostgreSQL error is a broken uniqueness constraint.
pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => StoreError::Postgres(e),
        other => StoreError::Pool(other.to_string()),
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Param<'_> {
    /// Integers are sent as whatever integer type the statement expects, if they fit.
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Param::Bool(v) => v.to_sql(ty, out),
            Param::Text(v) => v.as_ref().to_sql(ty, out),
            Param::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let cell = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Cell::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Cell::Int(v.into())),
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Bytes),
            _ => row.try_get::<_, Option<String>>(i)?.map(Cell::Text),
        };
        cells.push(cell.unwrap_or(Cell::Null));
    }
    Ok(Row(cells))
}

/// One column of a [`Bulk`] batch as a typed array.
fn column<'a>(bulk: &'a Bulk<'_>, i: usize, ty: Ty) -> Box<dyn ToSql + Sync + Send + 'a> {
    let values = bulk.rows.iter().map(move |row| row.get(i));
    let int = |p: Option<&Param<'_>>| match p {
        Some(Param::Int(v)) => Some(*v),
        Some(Param::Bool(v)) => Some(i64::from(*v)),
        _ => None,
    };
    match ty {
        Ty::BigInt => Box::new(values.map(int).collect::<Vec<_>>()),
        Ty::Int => Box::new(
            values
                .map(|p| int(p).map(|v| i32::try_from(v).unwrap_or(i32::MAX)))
                .collect::<Vec<_>>(),
        ),
        Ty::Bool => Box::new(values.map(|p| int(p).map(|v| v != 0)).collect::<Vec<_>>()),
        Ty::Text => Box::new(
            values
                .map(|p| match p {
                    Some(Param::Text(v)) => Some(v.as_ref()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
    }
}

fn array_type(ty: Ty) -> &'static str {
    match ty {
        Ty::BigInt => "BIGINT[]",
        Ty::Int => "INTEGER[]",
        Ty::Text => "TEXT[]",
        Ty::Bool => "BOOLEAN[]",
    }
}

/// A PostgreSQL connection or transaction as a [`Db`].
pub struct PgDb<'c, C> {
    client: &'c C,
}

impl<'c, C: GenericClient> PgDb<'c, C> {
    /// Wraps a pooled connection or a transaction on one.
    pub fn new(client: &'c C) -> Self {
        Self { client }
    }

    async fn prepared(&self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        Ok(self
            .client
            .prepare_cached(&sql::rendered(Dialect::Postgres, sql))
            .await?)
    }
}

fn refs<'p>(params: &'p [Param<'_>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient> Db for PgDb<'_, C> {
    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let stmt = self.prepared(sql).await?;
        Ok(self.client.execute(&stmt, &refs(params)).await?)
    }

    async fn query(&mut self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.prepared(sql).await?;
        let rows = self.client.query(&stmt, &refs(params)).await?;
        rows.iter().map(read_row).collect()
    }

    async fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self
            .client
            .batch_execute(&sql::render(Dialect::Postgres, sql))
            .await?)
    }

    async fn insert(&mut self, bulk: &Bulk<'_>) -> Result<(), StoreError> {
        if bulk.rows.is_empty() {
            return Ok(());
        }
        let sql = sql::memo("postgres insert", &bulk.insert, || {
            let arrays = bulk
                .types
                .iter()
                .enumerate()
                .map(|(i, ty)| format!("${}::{}", i + 1, array_type(*ty)))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{} SELECT * FROM UNNEST({arrays}) {}",
                bulk.insert, bulk.tail
            )
        });
        let columns: Vec<_> = bulk
            .types
            .iter()
            .enumerate()
            .map(|(i, ty)| column(bulk, i, *ty))
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = columns.iter().map(|c| &**c as _).collect();
        let stmt = self.prepared(&sql).await?;
        self.client.execute(&stmt, &params).await?;
        Ok(())
    }

    async fn call_ids(&mut self, n: usize) -> Result<Vec<i64>, StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows: Vec<(i64,)> = self
            .fetch(
                "SELECT nextval('calls_id_seq') FROM generate_series(1, $1::BIGINT)",
                &[n.into()],
            )
            .await?;
        let mut ids: Vec<i64> = rows.into_iter().map(|(id,)| id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn lock(&mut self, lock: Lock) -> Result<(), StoreError> {
        let id: i64 = match lock {
            Lock::Migrations => 0x746f_6b65_6e00_0001,
            Lock::Keys => 0x746f_6b65_6e00_0002,
            Lock::Instances => 0x746f_6b65_6e00_0003,
            Lock::PushSources => 0x746f_6b65_6e00_0004,
        };
        self.execute("SELECT pg_advisory_xact_lock($1)", &[id.into()])
            .await?;
        Ok(())
    }

    async fn schema_version(&mut self) -> Result<usize, StoreError> {
        self.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at BIGINT NOT NULL
             )",
        )
        .await?;
        let version: i64 = self
            .fetch_value(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?;
        Ok(usize::try_from(version).unwrap_or(0))
    }

    async fn set_schema_version(&mut self, version: usize) -> Result<(), StoreError> {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let now = jiff::Timestamp::now().as_millisecond();
        self.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version.into(), now.into()],
        )
        .await?;
        Ok(())
    }
}

/// The PostgreSQL store: a pool of connections shared by readers, key changes and the writer.
pub struct PgStore {
    pool: Pool,
}

/// The pool's settings for `url`, with a connect timeout and the application name set.
fn parse(url: &ServiceUrl) -> Result<tokio_postgres::Config, String> {
    let mut config: tokio_postgres::Config = url.expose().parse().map_err(|_| {
        "not a valid PostgreSQL URL; use postgres://user:password@host:5432/database".to_owned()
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    if config.get_application_name().is_none() {
        config.application_name("token-console");
    }
    Ok(config)
}

fn pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| e.to_string())
}

impl PgStore {
    /// Connects and migrates the database in one transaction (on a thread of its own, so that
    /// this may be called from async code), then builds the pool.
    pub fn open(url: &ServiceUrl, timezone: &jiff::tz::TimeZone) -> Result<Self, StoreError> {
        let open_error = |reason: String| {
            StoreError::Open {
            path: url.redacted(),
            reason: format!(
                "{reason}; check that PostgreSQL runs, the database exists and database_url is right"
            ),
        }
        };
        let mut config = parse(url).map_err(|reason| StoreError::Open {
            path: url.redacted(),
            reason,
        })?;
        let migrate_config = config.clone();
        std::thread::scope(|scope| {
            scope
                .spawn(move || -> Result<(), StoreError> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| StoreError::Task(e.to_string()))?;
                    runtime.block_on(async move {
                        let once = pool(migrate_config, 1).map_err(open_error)?;
                        let mut client = once.get().await.map_err(|e| match e {
                            deadpool_postgres::PoolError::Backend(e) => open_error(describe(&e)),
                            other => open_error(other.to_string()),
                        })?;
                        let tx = client.transaction().await?;
                        super::schema::prepare(&mut PgDb::new(&tx), timezone).await?;
                        tx.commit().await?;
                        Ok(())
                    })
                })
                .join()
                .map_err(|_| StoreError::Task("the migration thread panicked".into()))?
        })?;
        let options = format!(
            "{} -c lock_timeout={LOCK_TIMEOUT_MS}",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim());
        Ok(Self {
            pool: pool(config, POOL_SIZE).map_err(open_error)?,
        })
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }
}
