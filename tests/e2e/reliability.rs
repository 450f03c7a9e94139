//! Faults on purpose: the process killed under load, the database locked by another process,
//! and a load that touches every feature while we look for secrets where they must never be.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "one two three"}]})
}

/// The status of one chat completion made with `key`.
async fn chat_status(server: &Server, key: &str) -> reqwest::StatusCode {
    call(&server.url, "/v1/chat/completions", key, &chat("gpt-a"))
        .await
        .status()
}

/// The README's promise: a SIGKILL loses only the records of calls that ended in the last two
/// seconds before it (the recorder commits what is queued at least every 20 ms; the margin is
/// for a debug build writing to a database that shares two busy cores).
const LOSS_BOUND: Duration = Duration::from_millis(2_000);
/// How long the load runs before each kill: long enough that some answers ended more than
/// [`LOSS_BOUND`] before it.
const LOAD_BEFORE_KILL: Duration = Duration::from_millis(2_500);

/// SIGKILL under load, 20 times (`CRASH_KILLS` for longer campaigns), each after a short load:
/// after each kill the database is intact and every answer that ended more than [`LOSS_BOUND`]
/// before the kill is in the store — a writer that never committed, or waited longer than the
/// bound, fails. The largest loss is printed.
#[tokio::test]
async fn sigkill_under_load_keeps_the_database_intact() {
    let rounds: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = providers_yaml(&mock.url);
    let mut server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("load").await;
    let mut recorded_before = 0u64;
    let mut largest_loss = 0u64;
    let mut largest_lag = Duration::ZERO;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let ends = Arc::new(Mutex::new(Vec::new()));
        let clients = chat_load(
            &server.url,
            &key,
            "gpt-load",
            8,
            stop.clone(),
            ok.clone(),
            ends.clone(),
        );
        let start = Instant::now();
        // The load runs for a while (the fault's duration, not a synchronisation), with progress.
        wait_until("the load to run a while and answer 50 calls", || async {
            if start.elapsed() >= LOAD_BEFORE_KILL && ok.load(Ordering::Relaxed) >= 50 {
                Ok(())
            } else {
                Err(format!("{} answered", ok.load(Ordering::Relaxed)))
            }
        })
        .await;
        let killed_at = Instant::now();
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        let delivered = ok.load(Ordering::Relaxed);
        let due = ends
            .lock()
            .unwrap()
            .iter()
            .filter(|&&end| end + LOSS_BOUND < killed_at)
            .count() as u64;
        assert!(
            due > 0,
            "round {round}: no answer ended {LOSS_BOUND:?} before the kill"
        );
        assert_eq!(integrity(dir.path()).await, "ok", "round {round}");
        server = Server::start(dir.path(), &yaml);
        let recorded = server.data("/api/console/stats").await["api_call_count"]
            .as_u64()
            .unwrap();
        let stored = recorded - recorded_before;
        let loss = delivered.saturating_sub(stored);
        largest_loss = largest_loss.max(loss);
        // Records are written in about the order calls end: the stored ones cover the answers up
        // to the `stored`-th to end, so the lag is the time from that answer to the kill.
        let mut sorted = ends.lock().unwrap().clone();
        sorted.sort();
        let lag = match usize::try_from(stored).unwrap() {
            n if n >= sorted.len() => Duration::ZERO,
            0 => killed_at - start,
            n => killed_at - sorted[n - 1],
        };
        largest_lag = largest_lag.max(lag);
        eprintln!(
            "round {round}: answers {delivered}, of which {due} ended over {LOSS_BOUND:?} before the kill; stored {stored}, lost {loss} (the last {lag:?} of answers)"
        );
        assert!(
            stored >= due,
            "round {round}: {due} answers ended over {LOSS_BOUND:?} before the SIGKILL, only {stored} records were stored"
        );
        recorded_before = recorded;
    }
    eprintln!("largest loss over {rounds} SIGKILLs: {largest_loss} records, the last {largest_lag:?} of answers");
}

/// A store outage with more concurrent calls than the record queue holds: the slots taken (calls
/// in flight plus records not yet written) never exceed the queue's capacity, calls beyond it
/// wait and are then refused with a 503 that names the cause, and once the store is back every
/// answered call is recorded and calls are served again.
#[tokio::test]
async fn a_store_outage_bounds_the_records_held_and_refuses_calls_clearly() {
    const QUEUE: u64 = 16;
    const CALLS: usize = 48;
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "{}recorder_queue: {QUEUE}\nrecorder_wait_ms: 1500\n",
        providers_yaml(&mock.url)
    );
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("outage").await;
    assert_eq!(chat_status(&server, &key).await, 200);
    server.wait_for_calls(1).await;

    let lock = DatabaseLock::take(dir.path()).await;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let (url, key) = (server.url.clone(), key.clone());
            tokio::spawn(async move {
                let r = call(&url, "/v1/chat/completions", &key, &chat("gpt-a")).await;
                let status = r.status().as_u16();
                (status, r.text().await.unwrap())
            })
        })
        .collect();
    let mut most_held = 0;
    let mut health = Value::Null;
    while !calls.iter().all(|c| c.is_finished()) {
        health = reqwest::get(format!("{}/healthz", server.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["recorder"]["capacity"], QUEUE, "{health}");
        let held = health["recorder"]["queued"].as_u64().unwrap();
        assert!(
            held <= QUEUE,
            "{held} slots taken, more than the queue holds: {health}"
        );
        most_held = most_held.max(held);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = 0u64;
    let mut refused = 0u64;
    for c in calls {
        let (status, body) = c.await.unwrap();
        match status {
            200 => answered += 1,
            503 => {
                refused += 1;
                assert!(
                    body.contains("call records"),
                    "the 503 names the cause: {body}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    eprintln!(
        "outage: {answered} answered, {refused} refused, at most {most_held} slots taken; {health}"
    );
    assert!(
        answered <= QUEUE,
        "{answered} answered while only {QUEUE} records fit"
    );
    assert!(refused > 0, "calls beyond the queue were refused");
    assert_eq!(answered + refused, CALLS as u64);
    let health: Value = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["recorder"]["refused"], refused, "{health}");
    assert!(
        health["recorder"]["queue_full_waits"].as_u64().unwrap() > 0,
        "{health}"
    );

    lock.release().await;
    let stats = server.wait_for_calls(1 + answered).await;
    assert_eq!(
        stats["api_call_count"],
        1 + answered,
        "every answered call is recorded"
    );
    assert_eq!(
        chat_status(&server, &key).await,
        200,
        "calls are served again once the store is back"
    );
    server.wait_for_calls(2 + answered).await;
}

/// The database locked by another process: calls are still answered, `/healthz` says degraded,
/// and when the lock goes every record is written.
#[tokio::test]
async fn a_locked_database_delays_records_but_loses_none() {
    let mock = Mock::start();
    let dir = tempdir();
    let server = Server::start(dir.path(), &providers_yaml(&mock.url));
    let (_, key) = server.create_key("locked").await;
    assert_eq!(chat_status(&server, &key).await, 200);
    server.wait_for_calls(1).await;

    let lock = DatabaseLock::take(dir.path()).await;
    for _ in 0..20 {
        assert_eq!(chat_status(&server, &key).await, 200);
    }
    let health = wait_until("/healthz to report degraded", || async {
        let health: Value = reqwest::get(format!("{}/healthz", server.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if health["status"] == "degraded" {
            Ok(health)
        } else {
            Err(health.to_string())
        }
    })
    .await;
    assert!(
        health["recorder"]["last_error"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{health}"
    );
    lock.release().await;
    let stats = server.wait_for_calls(21).await;
    assert_eq!(stats["api_call_count"], 21);
    let health: Value = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["recorder"]["dropped"], 0);
    assert!(
        server.stderr().contains("cannot write call records"),
        "the failure was logged"
    );
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A load using every feature, then a search for every secret in everything the product shows
/// or writes: no provider key, full gateway key, key hash or admin key may appear anywhere but in
/// the one create call's answer.
#[tokio::test]
async fn secrets_appear_nowhere_but_the_create_answer() {
    const ADMIN: &str = "admin-secret-for-tests-42";
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "log_file: logs/error.log\nconsole: {{admin_key: {ADMIN}}}\n{}",
        providers_yaml(&mock.url)
    );
    let server = Server::start_with(dir.path(), &yaml, &[("RUST_LOG", "debug")]);
    let http = reqwest::Client::new();
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth(ADMIN);
    let mut keys = Vec::new();
    for name in ["alpha", "beta"] {
        let r = admin(http.post(format!("{}/api/console/keys", server.url)))
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        keys.push((
            body["data"]["id"].as_i64().unwrap(),
            body["data"]["value"].as_str().unwrap().to_owned(),
        ));
    }
    let (id, key) = keys[0].clone();
    admin(http.patch(format!("{}/api/console/keys/{}", server.url, keys[1].0)))
        .json(&json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    for model in ["gpt-a", "mock-error-500", "mock-no-usage", "claude-x"] {
        call(&server.url, "/v1/chat/completions", &key, &chat(model))
            .await
            .bytes()
            .await
            .unwrap();
        let stream = json!({"model": model, "stream": true, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        call(&server.url, "/v1/chat/completions", &key, &stream)
            .await
            .bytes()
            .await
            .unwrap();
    }
    http.post(format!("{}/v1/messages", server.url))
        .header("x-api-key", &key)
        .json(&json!({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        .send().await.unwrap().bytes().await.unwrap();
    call(
        &server.url,
        "/v1/chat/completions",
        &keys[1].1,
        &chat("gpt-a"),
    )
    .await
    .bytes()
    .await
    .unwrap();
    call(
        &server.url,
        "/v1/chat/completions",
        "sk-tc-wrongwrongwrong",
        &chat("gpt-a"),
    )
    .await
    .bytes()
    .await
    .unwrap();
    call(&server.url, "/v1/chat/completions", ADMIN, &chat("gpt-a"))
        .await
        .bytes()
        .await
        .unwrap();
    http.get(format!("{}/api/console/stats", server.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    http.get(format!("{}/api/console/stats", server.url))
        .bearer_auth("wrong-admin-key")
        .send()
        .await
        .unwrap();
    // 12 calls, of which the two with a wrong key (and the admin key) are not recorded.
    wait_until("10 recorded calls", || async {
        let stats: Value = admin(http.get(format!("{}/api/console/stats", server.url)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["data"]["api_call_count"].as_u64().unwrap() >= 10 {
            Ok(())
        } else {
            Err(stats.to_string())
        }
    })
    .await;

    let mut seen = String::new();
    for path in [
        "/api/console/stats",
        "/api/console/keys",
        "/api/console/logs?limit=1000",
        "/api/console/export",
        "/api/console/export?format=csv",
        "/metrics",
        "/healthz",
        "/v1/models",
    ] {
        let request = if path == "/v1/models" {
            http.get(format!("{}{path}", server.url)).bearer_auth(&key)
        } else {
            admin(http.get(format!("{}{path}", server.url)))
        };
        let r = request.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        seen.push_str(&format!("{:?}", r.headers()));
        seen.push_str(&r.text().await.unwrap());
    }
    seen.push_str(&server.stderr());
    seen.push_str(&std::fs::read_to_string(dir.path().join("logs/error.log")).unwrap());
    let refused = admin(http.delete(format!("{}/api/console/keys/{id}", server.url)))
        .send()
        .await
        .unwrap();
    seen.push_str(&refused.text().await.unwrap());
    seen.push_str(&server.stderr());
    assert!(seen.contains("alpha"), "the scan saw the product's output");
    let mut secrets = vec![PROVIDER_KEY.to_owned(), ADMIN.to_owned()];
    for (_, full) in &keys {
        secrets.push(full.clone());
        secrets.push(sha256_hex(full));
    }
    for secret in &secrets {
        assert!(
            !seen.contains(secret.as_str()),
            "a secret leaked: {}…",
            &secret[..8]
        );
    }
}

/// A provider that sends its headers and then nothing: the answer is cut off after
/// `stream_idle_timeout_ms`, the call recorded as 504, and the gateway keeps serving.
#[tokio::test]
async fn a_provider_that_stalls_after_its_headers_is_cut_off() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "providers:\n  - {{ name: stalling, kind: openai, base_url: \"{}/v1\", api_key: \"{PROVIDER_KEY}\", models: [\"*\"], stream_idle_timeout_ms: 300 }}\n",
        mock.url
    );
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("stall").await;
    let body = json!({"model": "mock-stall-after-headers", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response = call(&server.url, "/v1/chat/completions", &key, &body).await;
    assert_eq!(response.status(), 200, "the headers arrived");
    assert!(
        response.bytes().await.is_err(),
        "the body is cut off, not left hanging"
    );
    server.wait_for_calls(1).await;
    let row = &server.logs("limit=1").await[0];
    assert_eq!(row["status"], 504);
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("stream_idle_timeout_ms"),
        "{row}"
    );
    let ok = call(&server.url, "/v1/chat/completions", &key, &chat("gpt-a")).await;
    assert_eq!(ok.status(), 200, "other calls are still served");
}

/// A client that sends part of its body and then nothing (without closing) gets 408 after
/// `client_body_timeout_ms`, the call is recorded, and nothing reaches the provider.
#[tokio::test]
async fn a_body_that_never_finishes_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!("client_body_timeout_ms: 300\n{}", providers_yaml(&mock.url));
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("slowloris").await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"model\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the gateway closed without answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    server.wait_for_calls(1).await;
    let row = &server.logs("limit=1").await[0];
    assert_eq!(row["status"], 408);
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("client_body_timeout_ms"),
        "{row}"
    );
    assert_eq!(
        mock.stats().await["requests"],
        0,
        "nothing reached the provider"
    );
}

/// A client that opens a connection and never finishes its request headers is disconnected after
/// `client_header_timeout_ms` instead of holding the connection forever.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempdir();
    let server = Server::start(dir.path(), "client_header_timeout_ms: 300\n");
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the gateway kept a half-sent request open");
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "others are still served");
}

/// SIGTERM while clients are calling: calls in flight are finished and every answer a client
/// received is recorded (none lost), the exit is clean, and the database is intact.
#[tokio::test]
async fn sigterm_under_load_loses_nothing() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = providers_yaml(&mock.url);
    let mut server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("term").await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let clients = chat_load(
        &server.url,
        &key,
        "gpt-load",
        8,
        stop.clone(),
        ok.clone(),
        Default::default(),
    );
    wait_until("300 answered calls under load", || async {
        ok.load(Ordering::Relaxed) >= 300
    })
    .await;
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let delivered = ok.load(Ordering::Relaxed);
    assert_eq!(integrity(dir.path()).await, "ok");
    let again = Server::start(dir.path(), &yaml);
    let recorded = again.data("/api/console/stats").await["api_call_count"]
        .as_u64()
        .unwrap();
    assert!(
        recorded >= delivered,
        "answers delivered {delivered}, recorded {recorded}"
    );
}

/// No budget check waits for the database: with the database locked by another process (on
/// SQLite the one instance keeps its ledger in memory; on PostgreSQL the ledger is not the locked
/// table), calls within the global budget and a key's limit are answered without waiting out the
/// lock, the limits still hold, and every call is recorded once the lock goes.
#[tokio::test]
async fn budgets_hold_without_waiting_for_a_locked_database() {
    const BUDGET: u64 = 400;
    /// SQLite's busy timeout: a budget check that waited for the lock would take this long.
    const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "quota:\n  total_tokens: {BUDGET}\n{}",
        providers_yaml(&mock.url)
    );
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("global").await;
    let (limited_id, limited) = server.create_key("limited").await;
    let (status, _) = server
        .patch(
            &format!("/api/console/keys/{limited_id}"),
            &json!({"token_limit": 100}),
        )
        .await;
    assert_eq!(status, 200);

    let lock = DatabaseLock::take(dir.path()).await;
    let mut slowest = Duration::ZERO;
    let mut answered = [0u64; 2];
    for (i, key) in [&limited, &key].into_iter().enumerate() {
        loop {
            let start = Instant::now();
            let r = call(&server.url, "/v1/chat/completions", key, &chat("gpt-a")).await;
            slowest = slowest.max(start.elapsed());
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            match status {
                200 => answered[i] += 1,
                429 => {
                    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                    assert!(
                        !body["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("cannot be confirmed"),
                        "the budget was decided without the database: {body}"
                    );
                    break;
                }
                other => panic!("unexpected {other}: {body}"),
            }
            assert!(answered[i] < 1_000, "the budget never ran out");
        }
    }
    eprintln!("with the database locked: {answered:?} calls answered (limited key, global), slowest {slowest:?}");
    assert!(
        answered[0] >= 1 && answered[1] >= 1,
        "calls within budget are answered"
    );
    assert!(
        slowest < BUSY_TIMEOUT,
        "a call waited {slowest:?}, as long as the database's lock"
    );

    lock.release().await;
    let made = answered[0] + answered[1] + 2;
    let stats = server.wait_for_calls(made).await;
    let used = stats["used_tokens"].as_u64().unwrap();
    assert!(used <= BUDGET, "used {used} of {BUDGET}");
    let keys = server.data("/api/console/keys").await;
    let limited_used = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == limited_id)
        .unwrap()["used_tokens"]
        .as_u64()
        .unwrap();
    assert!(limited_used <= 100, "the key used {limited_used} of 100");
}
