//! Two gateway instances on different ports sharing one database — a scratch PostgreSQL database
//! with `TC_TEST_DATABASE=postgres`, else one SQLite file opened by both processes — behave as one
//! gateway: keys changed through either console are honoured by both within a second (a new key
//! at its first call), a budget raced for through both admits no more than it holds and the slice
//! of a killed instance comes back (budgets: PostgreSQL only), RPM limits are shared through Redis
//! (`TC_TEST_REDIS_URL`, on PostgreSQL runs), both consoles show the same totals, and one instance killed under load
//! leaves the other serving and the database consistent.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// The longest a key change may take to reach the other instance.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Starts instances `a` and `b` on `dir`'s database with the same configuration.
fn pair(dir: &Path, yaml: &str) -> (Server, Server) {
    (instance(dir, "a", yaml), instance(dir, "b", yaml))
}

fn instance(dir: &Path, name: &str, yaml: &str) -> Server {
    Server::start_on(dir, &dir.join(format!("{name}.yaml")), yaml, &[])
}

fn chat(text: &str, max_tokens: u64) -> Value {
    json!({"model": "gpt-4o", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]})
}

/// A call of about 1 KB of words to a model the mock counts at one token per byte: it uses
/// about what the gateway reserves for it (the body's bytes + 4 + 3 + `max_tokens`). Returns the
/// body, its reservation and the tokens it uses.
fn byte_chat() -> (Value, u64, u64) {
    let text = "budget race test ".repeat(60);
    let body = json!({"model": "mock-byte-tokens", "max_tokens": 20, "messages": [{"role": "user", "content": text}]});
    let reserved = serde_json::to_vec(&body).unwrap().len() as u64 + 4 + 3 + 20;
    (body, reserved, 10 + text.len() as u64 + 20)
}

/// Calls `server` with `key` until `check(status)` holds; returns how long that took. Fails after
/// [`DEADLINE`].
async fn until_status(server: &Server, key: &str, check: impl Fn(u16) -> bool) -> Duration {
    let start = Instant::now();
    wait_until("the awaited status", || async {
        let status = call(&server.url, "/v1/chat/completions", key, &chat("hi", 5))
            .await
            .status()
            .as_u16();
        if check(status) {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    })
    .await;
    start.elapsed()
}

/// Waits until `server` knows `key` (`GET /v1/models` stops answering 401), spending no tokens.
/// Changes are applied in order, so a key created after others were changed shows that the
/// server has applied those changes too.
async fn until_known(server: &Server, key: &str) {
    let client = reqwest::Client::new();
    wait_until("the key to become known", || async {
        let status = client
            .get(format!("{}/v1/models", server.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status == 200 || status == 401, "GET /v1/models: {status}");
        status == 200
    })
    .await;
}

/// Creates a key through `on` and waits until `other` knows it: then `other` has applied every
/// key change made through `on` before.
async fn barrier(on: &Server, other: &Server, name: &str) {
    let (_, sentinel) = on.create_key(name).await;
    until_known(other, &sentinel).await;
}

/// Waits until `n` chat calls are recorded, then returns both consoles' `/stats`.
async fn chat_calls_recorded(a: &Server, b: &Server, n: usize) -> (Value, Value) {
    let rows = wait_until(&format!("{n} chat calls recorded"), || async {
        let rows = a.logs("q=chat/completions&limit=1000").await;
        if rows.len() >= n {
            Ok(rows)
        } else {
            Err(format!("{} recorded", rows.len()))
        }
    })
    .await;
    assert_eq!(rows.len(), n, "every call is recorded once");
    (
        a.data("/api/console/stats").await,
        b.data("/api/console/stats").await,
    )
}

/// The `gpt-4o` row of a `/stats` answer.
fn model_row(stats: &Value) -> Value {
    stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "gpt-4o")
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn key_changes_on_one_instance_reach_the_other_within_a_second() {
    let mock = Mock::start();
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &providers_yaml(&mock.url));

    let (id, key) = a.create_key("shared").await;
    let took = until_status(&b, &key, |s| s == 200).await;
    eprintln!("a key created on A worked on B after {took:?}");
    assert!(took <= PROPAGATION, "B accepted the new key after {took:?}");

    let (status, _) = a
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, 200);
    let took = until_status(&b, &key, |s| s == 403).await;
    eprintln!("B refused the disabled key after {took:?}");
    assert!(
        took <= PROPAGATION,
        "B refused the disabled key after {took:?}"
    );

    let (status, _) = b
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, 200);
    until_status(&a, &key, |s| s == 200).await;

    let (status, _) = a.delete(&format!("/api/console/keys/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&a.url, "/v1/chat/completions", &key, &chat("hi", 5))
            .await
            .status(),
        401,
        "A refuses it at once"
    );
    let took = until_status(&b, &key, |s| s == 401).await;
    eprintln!("B refused the deleted key after {took:?}");
    assert!(
        took <= PROPAGATION,
        "B refused the deleted key after {took:?}"
    );
    let listed = b.data("/api/console/keys").await;
    assert!(listed.as_array().unwrap().is_empty(), "{listed}");
}

/// The store lookups of unknown keys `server` made so far.
async fn store_lookups(server: &Server) -> u64 {
    server.healthz().await["keys"]["store_lookups"]
        .as_u64()
        .unwrap()
}

/// Sends `keys` (each once) to `server`, `CONCURRENCY` at a time; every call must be refused 401.
async fn all_refused(server: &Server, keys: Vec<String>) {
    const CONCURRENCY: usize = 50;
    for chunk in keys.chunks(CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for key in chunk {
            let (url, key) = (server.url.clone(), key.clone());
            tasks.spawn(async move {
                call(&url, "/v1/chat/completions", &key, &chat("hi", 5))
                    .await
                    .status()
                    .as_u16()
            });
        }
        while let Some(status) = tasks.join_next().await {
            assert_eq!(status.unwrap(), 401);
        }
    }
}

/// A key created through A works on B at its very first call (B asks the store about a key it
/// does not know yet), and garbage keys sent to B cost a bounded number of store lookups: one
/// key repeated is looked up once, a thousand different keys at most 20 a second.
#[tokio::test]
async fn a_new_key_works_at_once_on_the_other_instance_and_garbage_keys_cannot_hammer_the_store() {
    let mock = Mock::start();
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &providers_yaml(&mock.url));
    if on_postgres() {
        for i in 0..3 {
            let (_, key) = a.create_key(&format!("fresh-{i}")).await;
            let r = call(&b.url, "/v1/chat/completions", &key, &chat("hi", 5)).await;
            assert_eq!(
                r.status(),
                200,
                "the first call on B with a key just created on A"
            );
        }
    }
    let before = store_lookups(&b).await;
    let start = Instant::now();
    all_refused(&b, vec!["sk-tc-garbage-repeated".to_owned(); 1000]).await;
    let repeated_seconds = start.elapsed().as_secs_f64();
    let repeated = store_lookups(&b).await - before;
    let start = Instant::now();
    all_refused(
        &b,
        (0..1000).map(|i| format!("sk-tc-garbage-{i}")).collect(),
    )
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let different = store_lookups(&b).await - before - repeated;
    eprintln!(
        "store lookups on B: {repeated} for one garbage key ×1000, {different} for 1000 different garbage keys in {seconds:.2} s"
    );
    if !on_postgres() {
        assert_eq!(
            repeated + different,
            0,
            "one instance on SQLite knows every key: it never asks the store"
        );
        return;
    }
    // Remembered as missing for a second: one lookup per second at most.
    assert!(
        (repeated as f64) <= 1.0 + repeated_seconds.ceil(),
        "{repeated} lookups for one garbage key repeated for {repeated_seconds:.2} s"
    );
    // 20 a second, with a burst of 20.
    let bound = 20.0 + 20.0 * seconds.ceil();
    assert!(
        (different as f64) <= bound,
        "{different} lookups for 1000 garbage keys in {seconds:.2} s (bound {bound})"
    );
    assert!(different >= 1, "unknown keys are looked up");
}

/// The slice of the global budget leased by an instance that is SIGKILLed comes back to the
/// ledger once the instance is taken for dead (no heartbeat for 15 s), while the other instance
/// keeps running: it can then spend those tokens.
#[tokio::test]
async fn the_budget_slice_of_a_killed_instance_comes_back_to_the_others() {
    if !on_postgres() {
        eprintln!("SKIPPED: budgets are shared by several instances on PostgreSQL only (on SQLite, one instance keeps its ledger in memory)");
        return;
    }
    const BUDGET: u64 = 2_000;
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "quota:\n  total_tokens: {BUDGET}\n{}",
        providers_yaml(&mock.url)
    );
    let (mut a, b) = pair(dir.path(), &yaml);
    let (_, key) = a.create_key("lease").await;
    until_known(&b, &key).await;

    // A call through A that reserves most of the budget and never ends (the provider stalls).
    let stalled = {
        let (url, key) = (a.url.clone(), key.clone());
        tokio::spawn(async move {
            let body = json!({"model": "mock-stall-after-headers", "max_tokens": 1_500,
                "messages": [{"role": "user", "content": "hi"}]});
            let _ = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await;
        })
    };
    let mock_ref = &mock;
    wait_until("the stalled call reached the provider", || async move {
        mock_ref.stats().await["by_path"]["/v1/chat/completions"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    let big = chat("hi", 1_000);
    let status = call(&b.url, "/v1/chat/completions", &key, &big)
        .await
        .status();
    assert_eq!(status, 429, "A's lease leaves too little for B");
    a.kill();
    stalled.abort();
    let killed = Instant::now();
    // B polls: refused while A's lease counts, answered once it came back.
    wait_until("the killed instance's lease to come back to B", || async {
        let r = call(&b.url, "/v1/chat/completions", &key, &big).await;
        match r.status().as_u16() {
            200 => true,
            429 => false,
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    })
    .await;
    let took = killed.elapsed();
    eprintln!("A's lease came back to B {took:?} after the SIGKILL");
    assert!(
        b.stderr()
            .contains("gave the budget slices of instances not seen"),
        "the return is logged"
    );
}

/// Sends `n` concurrent calls alternately to `a` and `b`; returns (answered 200, refused 429).
async fn race(a: &Server, b: &Server, key: &str, n: usize, body: &Value) -> (u64, u64) {
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let url = if i % 2 == 0 { &a.url } else { &b.url };
        let request = client
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(key)
            .json(body);
        tasks.spawn(async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (200, _) => ok += 1,
            (429, body) => {
                assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                refused += 1;
            }
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_raced_for_through_both_instances_is_never_exceeded() {
    if !on_postgres() {
        eprintln!("SKIPPED: budgets are shared by several instances on PostgreSQL only (on SQLite, one instance keeps its ledger in memory)");
        return;
    }
    // Each call reserves a little more than it uses: a budget of 5 reservations admits at most
    // 5 calls, however 100 calls through two instances interleave.
    const K: u64 = 5;
    let (body, reserved, used_per_call) = byte_chat();
    let budget = K * reserved;
    assert!((K + 1) * used_per_call > budget);
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "quota:\n  total_tokens: {budget}\n{}",
        providers_yaml(&mock.url)
    );
    let (a, b) = pair(dir.path(), &yaml);
    let (_, key) = a.create_key("racer").await;
    until_known(&b, &key).await;

    let (ok, refused) = race(&a, &b, &key, 100, &body).await;
    let forwarded = mock.stats().await["by_path"]["/v1/chat/completions"]
        .as_u64()
        .unwrap_or(0);
    eprintln!(
        "{ok} answered, {refused} refused, {forwarded} reached the provider (budget fits {K})"
    );
    assert!(forwarded <= K, "{forwarded} calls reached the provider");
    assert_eq!(
        ok, forwarded,
        "every call that reached the provider was answered"
    );
    assert_eq!(ok + refused, 100);
    assert!(ok >= 1, "the budget admits calls");

    let (on_a, on_b) = chat_calls_recorded(&a, &b, 100).await;
    let used = on_a["used_tokens"].as_u64().unwrap();
    assert!(used <= budget, "used {used} of {budget}");
    assert_eq!(used, ok * used_per_call);
    assert_eq!(on_a, on_b, "both consoles show the same figures");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_token_limit_holds_across_instances() {
    if !on_postgres() {
        eprintln!("SKIPPED: budgets are shared by several instances on PostgreSQL only (on SQLite, one instance keeps its ledger in memory)");
        return;
    }
    let mock = Mock::start();
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &providers_yaml(&mock.url));
    let (id, key) = a.create_key("limited").await;
    // 3 calls' reservations fit in the limit; a fourth would pass it.
    let (body, reserved, used_per_call) = byte_chat();
    let limit = 3 * reserved;
    assert!(4 * used_per_call > limit);
    let (status, _) = b
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"token_limit": limit}),
        )
        .await;
    assert_eq!(status, 200);
    barrier(&b, &a, "sentinel").await;
    let (ok, refused) = race(&a, &b, &key, 40, &body).await;
    eprintln!("{ok} answered, {refused} refused under a key limit fitting 3");
    assert!((1..=3).contains(&ok), "{ok} calls answered");
    assert_eq!(
        mock.stats().await["by_path"]["/v1/chat/completions"].as_u64(),
        Some(ok)
    );
    let (on_a, on_b) = chat_calls_recorded(&a, &b, 40).await;
    assert_eq!(on_a, on_b);
    let keys = a.data("/api/console/keys").await;
    let limited = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert!(
        limited["used_tokens"].as_u64().unwrap() <= limit,
        "{limited}"
    );
    assert_eq!(limited["used_tokens"], ok * used_per_call);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_monthly_limit_holds_across_instances() {
    if !on_postgres() {
        eprintln!("SKIPPED: budgets are shared by several instances on PostgreSQL only (on SQLite, one instance keeps its ledger in memory)");
        return;
    }
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!("timezone: Asia/Shanghai\n{}", providers_yaml(&mock.url));
    // Both clocks in the middle of a month, so that the race is within one period.
    let clock = [("CONSOLE_TEST_NOW", "2026-03-15T12:00:00+08:00")];
    let a = Server::start_on(dir.path(), &dir.path().join("a.yaml"), &yaml, &clock);
    let b = Server::start_on(dir.path(), &dir.path().join("b.yaml"), &yaml, &clock);
    let (id, key) = a.create_key("monthly").await;
    let (body, reserved, used_per_call) = byte_chat();
    let limit = 3 * reserved;
    let (status, _) = b
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"token_limit": limit, "limit_period": "month"}),
        )
        .await;
    assert_eq!(status, 200);
    barrier(&b, &a, "sentinel").await;
    let (ok, refused) = race(&a, &b, &key, 50, &body).await;
    eprintln!("{ok} answered, {refused} refused under a monthly key limit fitting 3");
    assert!((1..=3).contains(&ok), "{ok} calls answered");
    assert_eq!(
        mock.stats().await["by_path"]["/v1/chat/completions"].as_u64(),
        Some(ok)
    );
    chat_calls_recorded(&a, &b, 50).await;
    for server in [&a, &b] {
        let keys = server.data("/api/console/keys").await;
        let limited = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()
            .clone();
        assert_eq!(limited["period_used"], ok * used_per_call, "{limited}");
        assert!(limited["period_used"].as_u64().unwrap() <= limit);
        assert_eq!(limited["period_resets_at"], "2026-03-31T16:00:00Z");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keys_money_limit_holds_across_instances() {
    if !on_postgres() {
        eprintln!("SKIPPED: budgets are shared by several instances on PostgreSQL only (on SQLite, one instance keeps its ledger in memory)");
        return;
    }
    let mock = Mock::start();
    let dir = tempdir();
    // 1,000 nano-dollars an input token, 2,000 an output token.
    let prices =
        "pricing:\n  models:\n    - match: \"mock-byte-tokens\"\n      input: 1\n      output: 2\n";
    let (a, b) = pair(
        dir.path(),
        &format!("{prices}{}", providers_yaml(&mock.url)),
    );
    let (id, key) = a.create_key("spender").await;
    let (body, reserved, used_per_call) = byte_chat();
    // The most a call can cost: its prompt bound at the input price, max_tokens (20) at the
    // output price; what it costs: its input at the input price, 20 output tokens.
    let most = (reserved - 20) * 1_000 + 20 * 2_000;
    let cost = (used_per_call - 20) * 1_000 + 20 * 2_000;
    let limit = 3 * most;
    let patch: Value = serde_json::from_str(&format!(
        "{{\"cost_limit\": {}.{:09}}}",
        limit / 1_000_000_000,
        limit % 1_000_000_000
    ))
    .unwrap();
    let (status, answer) = b.patch(&format!("/api/console/keys/{id}"), &patch).await;
    assert_eq!(status, 200, "{answer}");
    barrier(&b, &a, "sentinel").await;
    let (ok, refused) = race(&a, &b, &key, 50, &body).await;
    eprintln!("{ok} answered, {refused} refused under a money limit fitting 3");
    assert!((1..=3).contains(&ok), "{ok} calls answered");
    assert_eq!(
        mock.stats().await["by_path"]["/v1/chat/completions"].as_u64(),
        Some(ok)
    );
    chat_calls_recorded(&a, &b, 50).await;
    let keys = b.data("/api/console/keys").await;
    let view = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(view["cost_nanos"], ok * cost, "{view}");
    assert!(ok * cost <= limit);
}

#[tokio::test]
async fn fit_max_tokens_set_through_one_instance_is_honoured_by_the_other() {
    let mock = Mock::start();
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &providers_yaml(&mock.url));
    let (id, key) = a.create_key("claude-code").await;
    let limit = 3_000;
    let path = format!("/api/console/keys/{id}");
    let (status, _) = a.patch(&path, &json!({"token_limit": limit})).await;
    assert_eq!(status, 200);
    barrier(&a, &b, "sentinel-limit").await;
    let large = chat("hi", 32_000);
    let refused = call(&b.url, "/v1/chat/completions", &key, &large).await;
    assert_eq!(refused.status(), 429, "32,000 tokens do not fit in {limit}");

    let (status, _) = a.patch(&path, &json!({"fit_max_tokens": true})).await;
    assert_eq!(status, 200);
    barrier(&a, &b, "sentinel-fit").await;
    let listed = b.data("/api/console/keys").await;
    let on_b = listed.as_array().unwrap().iter().find(|k| k["id"] == id);
    assert_eq!(on_b.unwrap()["fit_max_tokens"], true);
    let answered = call(&b.url, "/v1/chat/completions", &key, &large).await;
    assert_eq!(answered.status(), 200);
    let sent = mock.requests().await.pop().unwrap();
    let lowered = sent["body"]["max_tokens"].as_u64().unwrap();
    assert!((1..limit).contains(&lowered), "B sent max_tokens {lowered}");
}

#[tokio::test]
async fn rpm_limits_are_shared_through_redis() {
    if redis_url().is_none() {
        eprintln!("no Redis in this run (TC_TEST_DATABASE=postgres with TC_TEST_REDIS_URL): each instance counts its own RPM window, as gateway_errors tests");
        return;
    }
    let mock = Mock::start();
    let dir = tempdir();
    let (a, b) = pair(dir.path(), &providers_yaml(&mock.url));
    let (id, key) = a.create_key("rpm").await;
    let (status, _) = a
        .patch(&format!("/api/console/keys/{id}"), &json!({"rpm_limit": 3}))
        .await;
    assert_eq!(status, 200);
    // B knows the key and its limit without any of the three requests being spent.
    barrier(&a, &b, "sentinel").await;
    let mut statuses = Vec::new();
    for server in [&a, &b, &a, &b, &a, &b] {
        let r = call(&server.url, "/v1/chat/completions", &key, &chat("hi", 5)).await;
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_killed_under_load_leaves_the_other_serving_and_the_totals_whole() {
    const CLIENTS: usize = 4;
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = providers_yaml(&mock.url);
    let (mut a, mut b) = pair(dir.path(), &yaml);
    let (_, key) = a.create_key("load").await;
    until_known(&b, &key).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok_a, ok_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = chat_load(
        &a.url,
        &key,
        "gpt-4o",
        CLIENTS,
        stop.clone(),
        ok_a.clone(),
        Default::default(),
    );
    clients.extend(chat_load(
        &b.url,
        &key,
        "gpt-4o",
        CLIENTS,
        stop.clone(),
        ok_b.clone(),
        Default::default(),
    ));
    wait_until("load on both", || async {
        ok_a.load(Ordering::Relaxed) >= 200 && ok_b.load(Ordering::Relaxed) >= 200
    })
    .await;
    a.kill();
    let b_at_kill = ok_b.load(Ordering::Relaxed);
    wait_until("B keeps serving after A was killed", || async {
        ok_b.load(Ordering::Relaxed) >= b_at_kill + 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    // B stops cleanly (writing every record); then both start again on the same database.
    assert!(b.terminate().success());
    let delivered = ok_a.load(Ordering::Relaxed) + ok_b.load(Ordering::Relaxed);
    let (a, b) = pair(dir.path(), &yaml);
    assert_eq!(integrity(dir.path()).await, "ok");
    let (on_a, on_b) = (
        a.data("/api/console/stats").await,
        b.data("/api/console/stats").await,
    );
    assert_eq!(on_a, on_b, "both consoles show the same figures");
    let recorded = model_row(&on_a)["success_count"].as_u64().unwrap();
    let lost = delivered.saturating_sub(recorded);
    eprintln!(
        "answers delivered {delivered}, recorded {recorded}: {lost} lost with A's unflushed batch"
    );
    // A may have recorded an answer its client had not read when it died.
    assert!(
        recorded <= delivered + CLIENTS as u64,
        "nothing is recorded twice"
    );
    assert!(lost <= 4096, "at most one batch of A is lost: {lost}");
    let keys = a.data("/api/console/keys").await;
    assert_eq!(keys[0]["used_tokens"], on_a["used_tokens"]);
}

#[test]
fn an_unreachable_postgres_stops_start_up_without_showing_its_password() {
    let dir = tempdir();
    // Port 1 on this machine: nothing listens there.
    let url = "postgres://tc:s3cret-pw@127.0.0.1:1/tc";
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_token-console"))
        .args(["--port", "0", "--database-url", url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("postgres://tc:***@127.0.0.1:1/tc") && stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-pw"), "{stderr}");
}
