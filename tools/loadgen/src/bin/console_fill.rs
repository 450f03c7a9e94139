//! console-fill: puts N synthetic calls into a token-console store through the real recorder
//! (bounded queue, batch writer, aggregates, trimming to `max_logs`) and reports the recorder's
//! sustained records per second. The calls span 50 keys, 20 models and the last 90 days,
//! oldest first, as a gateway would have recorded them.
//!
//! The store is a SQLite file (`--db PATH`) or a PostgreSQL database (`--database-url
//! postgres://…`, e.g. a scratch database made by `pg-scratch hold`).
//!
//! usage: console-fill (--db PATH | --database-url URL) [--calls N] [--max-logs N] [--keys N] [--days N]

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use token_console::config::{Cli, Config};
use token_console::store::{NewKey, Store};
use token_console::usage::{CallRecord, Recorder, TokenUsage};

const MODELS: [&str; 20] = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "claude-sonnet-4-5",
    "claude-opus-4-1",
    "claude-haiku-4-5",
    "claude-3-5-haiku",
    "deepseek-chat",
    "deepseek-reasoner",
    "qwen-max",
    "qwen-plus",
    "glm-4.6",
    "kimi-k2",
];

/// How many records between progress lines (and throughput samples).
const SEGMENT: u64 = 1_000_000;

struct Args {
    db: String,
    database_url: String,
    calls: u64,
    max_logs: u64,
    keys: u64,
    days: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        db: String::new(),
        database_url: String::new(),
        calls: 10_000_000,
        max_logs: 1_000_000,
        keys: 50,
        days: 90,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--db" => args.db = value.clone(),
            "--database-url" => args.database_url = value.clone(),
            "--calls" => args.calls = number()?,
            "--max-logs" => args.max_logs = number()?,
            "--keys" => args.keys = number()?.clamp(1, 1000),
            "--days" => args.days = number()?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.db.is_empty() == args.database_url.is_empty() {
        return Err("give either --db PATH or --database-url URL".into());
    }
    Ok(args)
}

/// SplitMix64: a small deterministic generator, so every run writes the same calls.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The synthetic call number `i` of `n`, spread evenly over `[start_ms, end_ms)`.
fn call(
    rng: &mut Rng,
    i: u64,
    n: u64,
    start_ms: i64,
    span_ms: i64,
    keys: &[(i64, String)],
) -> CallRecord {
    let offset = (i as f64 / n as f64 * span_ms as f64) as i64;
    let ts =
        jiff::Timestamp::from_millisecond(start_ms + offset).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let model = MODELS[rng.below(MODELS.len() as u64) as usize];
    let roll = rng.below(1000);
    let (status, error) = match roll {
        0..=4 => (401, Some("invalid API key")),
        5..=24 => (429, Some("rate limit")),
        25..=34 => (400, Some("bad request")),
        35..=44 => (500, Some("upstream error")),
        _ => (200, None),
    };
    let key = if status == 401 {
        None
    } else {
        keys.get(rng.below(keys.len() as u64) as usize)
    };
    let success = status == 200;
    let tokens = if success {
        let mut t = TokenUsage::new(50 + rng.below(4000), 10 + rng.below(1000));
        t.cache_read = rng.below(t.prompt / 2 + 1);
        t
    } else {
        TokenUsage::default()
    };
    let stream = rng.below(10) < 6;
    let duration_ms = if success {
        200 + rng.below(8000)
    } else {
        1 + rng.below(300)
    };
    let endpoint = if model.starts_with("claude") {
        "/v1/messages"
    } else {
        "/v1/chat/completions"
    };
    CallRecord {
        ts,
        method: "POST".to_owned(),
        endpoint: endpoint.to_owned(),
        status,
        model: model.to_owned(),
        key_id: key.map(|k| k.0),
        key_name: key.map(|k| k.1.clone()),
        tokens,
        duration_ms,
        ttft_ms: (stream && success).then(|| 100 + rng.below(1500)),
        stream,
        estimated: false,
        error: error.map(str::to_owned),
        client: String::new(),
        session_id: None,
        user: None,
        provider: String::new(),
        source: "gateway".into(),
        answer: Default::default(),
        ingest: None,
    }
}

async fn fill(args: Args) -> Result<serde_json::Value, String> {
    let url = if args.database_url.is_empty() {
        format!("sqlite://{}", args.db)
    } else {
        args.database_url.clone()
    };
    let yaml = format!(
        "database_url: {url}\ntimezone: UTC\nconsole:\n  max_logs: {}\n  max_keys: 1000\n",
        args.max_logs
    );
    let config = Config::from_yaml(&yaml, &Cli::default()).map_err(|e| e.to_string())?;
    let store =
        Store::open(&config.database, config.timezone.clone()).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    let now = jiff::Timestamp::now();
    for k in 0..args.keys {
        let name = format!("bench-key-{k:02}");
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&(k + 1).to_le_bytes());
        let row = store
            .insert_key(
                NewKey {
                    name: name.clone(),
                    description: "console-fill".into(),
                    hash,
                    display: format!("sk-tc-bench…{k:04}"),
                    created_at: now,
                },
                1000,
            )
            .await
            .map_err(|e| e.to_string())?;
        keys.push((row.id, name));
    }
    let writer = store
        .batch_writer(config.console.max_logs)
        .map_err(|e| e.to_string())?;
    let recorder = Arc::new(Recorder::start(writer).map_err(|e| e.to_string())?);
    let span_ms = i64::try_from(args.days * 86_400_000).unwrap_or(i64::MAX);
    let start_ms = now.as_millisecond() - span_ms;
    let mut rng = Rng(0x5EED);
    let started = Instant::now();
    let mut segment_start = started;
    let mut segments = Vec::new();
    for i in 0..args.calls {
        recorder
            .record(call(&mut rng, i, args.calls, start_ms, span_ms, &keys))
            .await;
        if (i + 1) % SEGMENT == 0 {
            let secs = segment_start.elapsed().as_secs_f64();
            let rate = SEGMENT as f64 / secs;
            eprintln!(
                "console-fill: {} calls queued, {:.0} records/s over the last {SEGMENT}",
                i + 1,
                rate
            );
            segments.push(rate.round());
            segment_start = Instant::now();
        }
    }
    recorder.flush().await;
    let secs = started.elapsed().as_secs_f64();
    let stats = recorder.stats();
    recorder.shutdown().await;
    let db_bytes = if args.database_url.is_empty() {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", args.db)).ok())
            .map(|m| m.len())
            .sum()
    } else {
        postgres_size(&args.database_url).await?
    };
    Ok(json!({
        "database": if args.database_url.is_empty() { "sqlite" } else { "postgres" },
        "calls": args.calls,
        "keys": args.keys,
        "models": MODELS.len(),
        "days": args.days,
        "max_logs": args.max_logs,
        "seconds": secs,
        "records_per_s": args.calls as f64 / secs,
        "segment_records_per_s": segments,
        "min_segment_records_per_s": segments.iter().copied().fold(f64::INFINITY, f64::min),
        "written": stats.written,
        "dropped": stats.dropped,
        "batches": stats.batches,
        "db_bytes": db_bytes,
    }))
}

/// The PostgreSQL database's size on disk (tables, indexes, TOAST), in bytes.
async fn postgres_size(url: &str) -> Result<u64, String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to measure the database: {e}"))?;
    let driver = tokio::spawn(connection);
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| format!("cannot measure the database: {e}"))?;
    drop(client);
    let _ = driver.await;
    Ok(u64::try_from(size).unwrap_or(0))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("console-fill: {message}\nusage: console-fill (--db PATH | --database-url URL) [--calls N] [--max-logs N] [--keys N] [--days N]");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("console-fill: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fill(args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("console-fill: {message}");
            ExitCode::FAILURE
        }
    }
}
