//! pg-scratch: PostgreSQL helpers for the benchmarks, so that the harness (bench/tc_bench) needs
//! neither psql nor a Python driver.
//!
//! - `pg-scratch hold` creates an empty scratch database (`tests/e2e/common/scratch.rs`, on the
//!   server of `TC_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`),
//!   prints `scratch database url=<url> name=<name>` and keeps it until SIGTERM, SIGINT or the end
//!   of its standard input, then drops it (with its connections).
//! - `pg-scratch sql URL STATEMENT…` runs each statement (simple query protocol, so `VACUUM` and
//!   `SHOW` work) and prints one JSON array per statement: its rows, each an array of text values
//!   (`null` for NULL).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// The test suite's scratch databases (not part of the product binary).
#[path = "../../../../tests/e2e/common/scratch.rs"]
#[allow(dead_code)]
mod scratch;
use scratch::ScratchDb;

const USAGE: &str = "usage: pg-scratch hold | pg-scratch sql URL STATEMENT...";

/// Waits for SIGTERM, SIGINT or the end of standard input, whichever comes first.
async fn until_told() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        // Only the end of input (or an error) ends the wait; anything written is ignored.
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        () = stdin_closed => {}
    }
    Ok(())
}

fn hold(runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let db = ScratchDb::create()
        .map_err(|e| format!("{e} (server {})", redact(&scratch::server_url())))?;
    let name = db.url.rsplit('/').next().unwrap_or_default().to_owned();
    println!("scratch database url={} name={name}", db.url);
    let waited = runtime.block_on(until_told());
    drop(db);
    waited
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The server's message, or the error with its causes.
fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

async fn sql(url: &str, statements: &[String]) -> Result<Value, String> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("bad URL {}: {e}", redact(url)))?;
    config.connect_timeout(Duration::from_secs(10));
    config.application_name("pg-scratch");
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| format!("cannot connect to {}: {}", redact(url), reason(&e)))?;
    let driver = tokio::spawn(connection);
    let mut results = Vec::new();
    for statement in statements {
        let messages = client
            .simple_query(statement)
            .await
            .map_err(|e| format!("{statement}: {}", reason(&e)))?;
        let rows: Vec<Value> = messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(Value::Array(
                    (0..row.len())
                        .map(|i| row.get(i).map_or(Value::Null, Value::from))
                        .collect(),
                )),
                _ => None,
            })
            .collect();
        results.push(Value::Array(rows));
    }
    drop(client);
    let _ = driver.await;
    Ok(Value::Array(results))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pg-scratch: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.first().map(String::as_str) {
        Some("hold") if args.len() == 1 => hold(&runtime),
        Some("sql") if args.len() >= 3 => runtime
            .block_on(sql(&args[1], &args[2..]))
            .map(|value| println!("{value}")),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A read of stdin may still be blocked on a thread of the runtime: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pg-scratch: {message}");
            ExitCode::FAILURE
        }
    }
}
