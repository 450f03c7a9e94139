//! Sequential timed requests over one keep-alive connection (the console-at-volume bench).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use crate::cli::Options;
use crate::http::{exchange, Outcome, Target};
use crate::report::Latencies;

/// Sends `warmup_reps` unmeasured then `reps` measured requests, one after another.
pub async fn run(o: &Options) -> Result<Value, String> {
    let target = Target::new(&o.url, &o.headers, o.body.clone())?;
    let mut sender = None;
    let mut latency = Latencies::new()?;
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes = 0usize;
    let mut failures = 0u64;
    for i in 0..o.warmup_reps + o.reps {
        let conn = match &mut sender {
            Some(conn) => conn,
            None => sender.insert(
                target
                    .connect()
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?,
            ),
        };
        let start = Instant::now();
        let result = tokio::time::timeout(o.timeout, exchange(conn, &target)).await;
        let elapsed = start.elapsed();
        let status = match result {
            Ok((Outcome::Ok, n)) => {
                bytes = n;
                "2xx".to_owned()
            }
            Ok((Outcome::Status(code), _)) => code.to_string(),
            Ok((Outcome::Io, _)) => {
                sender = None;
                "io-error".to_owned()
            }
            Err(_) => {
                sender = None;
                "timeout".to_owned()
            }
        };
        if i >= o.warmup_reps {
            if status != "2xx" {
                failures += 1;
            }
            *statuses.entry(status).or_default() += 1;
            latency.record(elapsed);
        }
    }
    Ok(json!({
        "mode": "get",
        "url": o.url,
        "reps": o.reps,
        "failures": failures,
        "statuses": statuses,
        "response_bytes": bytes,
        "latency_ms": latency.summary(),
    }))
}
