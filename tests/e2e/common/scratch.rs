//! Scratch PostgreSQL databases for tests and benchmarks: each is created empty on a server
//! (`TC_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`) and dropped
//! when its handle goes.

use std::time::Duration;

use rand::rngs::OsRng;
use rand::TryRngCore;
use tokio_postgres::NoTls;

/// The server that scratch databases are created on, as a URL of its maintenance database.
pub fn server_url() -> String {
    std::env::var("TC_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Whether tests should run on PostgreSQL (`TC_TEST_DATABASE=postgres`) rather than SQLite.
pub fn wanted() -> bool {
    std::env::var("TC_TEST_DATABASE").is_ok_and(|v| v.eq_ignore_ascii_case("postgres"))
}

/// An empty database that is dropped (with its connections) when this handle is dropped.
pub struct ScratchDb {
    name: String,
    /// `postgres://…/tc_<random>`.
    pub url: String,
}

/// Runs `work` on a thread of its own with a small runtime, so callers may be sync or async.
fn on_own_runtime<T: Send>(
    work: impl std::future::Future<Output = Result<T, String>> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(work)
            })
            .join()
            .map_err(|_| "the scratch database thread panicked".to_owned())?
    })
}

async fn execute(server: &str, sql: &str) -> Result<(), String> {
    let mut config: tokio_postgres::Config =
        server.parse().map_err(|e| format!("bad server URL: {e}"))?;
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        format!("cannot connect to the PostgreSQL server for scratch databases: {e}")
    })?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |db| db.message().to_owned())
    });
    drop(client);
    let _ = driver.await;
    result
}

impl ScratchDb {
    /// Creates a database named `tc_<random>` on [`server_url`].
    pub fn create() -> Result<Self, String> {
        let mut bytes = [0u8; 8];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| format!("the OS random source failed: {e}"))?;
        let name = format!("tc_{}", u64::from_le_bytes(bytes));
        let server = server_url();
        on_own_runtime(execute(&server, &format!("CREATE DATABASE {name}")))?;
        let base = server
            .rsplit_once('/')
            .map_or(server.as_str(), |(base, _)| base);
        Ok(Self {
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = on_own_runtime(execute(&server_url(), &sql)) {
            eprintln!("cannot drop the scratch database {}: {e}", self.name);
        }
    }
}
