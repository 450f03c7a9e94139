//! Bounds a client cannot push the gateway past, against the real binary and the mock upstream:
//! the CPU an estimate costs (one long word, a client that hangs up), the model names kept in
//! metrics and aggregates, the log rows calls without a key can write, and a budget raced for
//! with prompts of one token per byte.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::gateway_support::*;
use serde_json::{json, Value};

/// Sends a streamed chat call, reads its first bytes and hangs up.
async fn hang_up_after_first_bytes(server: &Server, key: &str, body: &Value) {
    let mut r = post(&server.url, "/v1/chat/completions", Auth::Bearer(key), body).await;
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(r);
}

/// The id of the newest log row (0 when there is none).
async fn newest_id(server: &Server) -> i64 {
    let rows = server.logs("limit=1").await;
    rows.first().map_or(0, |r| r["id"].as_i64().unwrap())
}

/// Waits for a row newer than `after` (asking only for the newest row: the wait itself must
/// cost the server little CPU) and returns it: the call just hung up.
async fn hung_up_row(server: &Server, after: i64) -> Value {
    wait_until("the hung-up call's record", || async {
        let row = server.logs("limit=1").await.pop()?;
        (row["id"].as_i64().unwrap() > after).then_some(row)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_up_streams_of_one_long_word_cost_bounded_cpu() {
    let mock = Mock::start();
    let dir = tempdir();
    let server = Server::start(dir.path(), &providers_yaml(&mock.url));
    let (id, key) = server.create_key("long-word").await;
    let body = |word: String| {
        json!({"model": "mock-chunks-100-gap-20", "stream": true,
               "messages": [{"role": "user", "content": word}]})
    };
    // The first estimate loads the tokenizer (once per process): not what is measured.
    hang_up_after_first_bytes(&server, &key, &body("warm up".into())).await;
    hung_up_row(&server, 0).await;

    // `/healthz` is asked every 50 ms meanwhile and must keep answering (its slowest answer is
    // printed, not asserted: wall-clock bounds fail on a loaded machine; the CPU bound is the
    // guarantee).
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, url) = (stop.clone(), format!("{}/healthz", server.url));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut slowest = Duration::ZERO;
            let mut asked = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let started = Instant::now();
                let r = client.get(&url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                slowest = slowest.max(started.elapsed());
                asked += 1;
            }
            (slowest, asked)
        })
    };
    for bytes in [400_000, 4 << 20] {
        let body = body("a".repeat(bytes));
        let newest = newest_id(&server).await;
        let before = server.cpu_time();
        hang_up_after_first_bytes(&server, &key, &body).await;
        let row = hung_up_row(&server, newest).await;
        let cost = server.cpu_time() - before;
        eprintln!("a hung-up stream of one {bytes}-byte word cost the server {cost:?} of CPU");
        assert!(
            cost < Duration::from_millis(100),
            "one {bytes}-byte word cost {cost:?} of CPU"
        );
        assert_eq!(row["key_id"], id, "{row}");
        assert_eq!(row["status"], 499, "{row}");
        assert_eq!(row["estimated"], true, "{row}");
        let [prompt, ..] = row_tokens(&row);
        assert!(
            prompt > 1000 && prompt <= bytes as u64,
            "the prompt is estimated from all its bytes: {row}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (slowest, asked) = watcher.await.unwrap();
    eprintln!("/healthz answered {asked} times, the slowest in {slowest:?}");
    assert!(asked > 0, "/healthz answered while the estimates ran");
}

/// The distinct `model` labels of `/metrics` and its text.
async fn metrics_models(server: &Server) -> (BTreeSet<String>, String) {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let models = text
        .lines()
        .filter_map(|l| l.split_once("model=\"")?.1.split_once('"'))
        .map(|(model, _)| model.to_owned())
        .collect();
    (models, text)
}

async fn stats_models(server: &Server) -> BTreeSet<String> {
    let stats = server.data("/api/console/stats").await;
    stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn invented_model_names_grow_neither_metrics_nor_aggregates() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = providers_with(&mock.url, "[\"gpt-4o\"]", "[\"claude-3-haiku\"]", "");
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("inventor").await;
    let (limited_id, limited) = server.create_key("limited").await;
    patch_key(&server, limited_id, json!({"allowed_models": ["gpt-4o"]})).await;
    let chat =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    let send = |key: &str, model: String| {
        let (url, key, body) = (server.url.clone(), key.to_owned(), chat(&model));
        async move {
            post(&url, "/v1/chat/completions", Auth::Bearer(&key), &body)
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(send(&key, "gpt-4o".into()).await, 200);
    assert_eq!(send(&key, "invented-0".into()).await, 404);
    assert_eq!(send(&limited, "invented-limited-0".into()).await, 403);
    let mut calls = 3;
    settle(&server, calls).await;
    calls += 1;
    let (models_before, before) = metrics_models(&server).await;

    for n in 0..3 {
        let long = format!("{n}{}", "m".repeat(100_000));
        assert_eq!(send(&key, long.clone()).await, 400, "a 100 KB model name");
        assert_eq!(send(&limited, long).await, 400, "also for a limited key");
    }
    for n in 1..=30 {
        assert_eq!(send(&key, format!("invented-{n}")).await, 404);
        assert_eq!(send(&limited, format!("invented-limited-{n}")).await, 403);
    }
    calls += 6 + 60;
    let rows = settle(&server, calls).await;
    let too_long = rows.iter().filter(|r| r["status"] == 400).count();
    assert_eq!(too_long, 6, "the 400s are recorded");
    for row in rows.iter().filter(|r| r["status"] != 200) {
        assert_eq!(row["model"], "(unrouted)", "{row}");
    }
    assert!(rows
        .iter()
        .filter(|r| r["status"] == 400)
        .all(|r| r["error"]
            .as_str()
            .unwrap()
            .contains("more than the gateway's limit of 256")));

    // The model names: the routed one, the bucket of all others, and "" of the unknown route
    // `settle` calls.
    let expected = BTreeSet::from(["".to_owned(), "(unrouted)".to_owned(), "gpt-4o".to_owned()]);
    assert_eq!(stats_models(&server).await, expected, "aggregates");
    let (models_after, after) = metrics_models(&server).await;
    assert_eq!(models_before, expected);
    assert_eq!(models_after, expected, "metrics");
    // The only new label set is that of the second `settle` sentinel's own key.
    let key_of = |line: &str| Some(line.split_once("key=\"")?.1.split_once('"')?.0.to_owned());
    let keys_before: BTreeSet<String> = before.lines().filter_map(key_of).collect();
    let new_lines: Vec<&str> = after
        .lines()
        .filter(|l| key_of(l).is_some_and(|k| !keys_before.contains(&k)))
        .collect();
    assert!(
        new_lines.iter().all(|l| l.contains("key=\"zz-sentinel-")),
        "{new_lines:#?}"
    );
    let sentinel_lines = new_lines.len();
    assert!(sentinel_lines > 0);
    assert_eq!(
        after.lines().count(),
        before.lines().count() + sentinel_lines,
        "66 calls of invented models added no label set to /metrics"
    );
}

#[tokio::test]
async fn calls_without_a_key_do_not_push_real_calls_out_of_the_log() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!("{}console: {{max_logs: 5}}\n", providers_yaml(&mock.url));
    let server = Server::start(dir.path(), &yaml);
    let (id, key) = server.create_key("real").await;
    for proto in BOTH {
        let body = proto.body("gpt-4o", "real call", 5, false);
        let r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(r.status(), 200);
    }
    let forged = format!("sk-tc-{}", "B".repeat(40));
    for n in 0..10 {
        let r = post(
            &server.url,
            &format!("/v1/nokey-{n}"),
            Auth::None,
            &json!({}),
        )
        .await;
        assert_eq!(r.status(), 404);
        let r = post(
            &server.url,
            &format!("/v1/nokey-{n}"),
            Auth::Bearer(&forged),
            &json!({}),
        )
        .await;
        assert_eq!(r.status(), 404);
        for proto in BOTH {
            let body = proto.body("gpt-4o", "no key", 5, false);
            let r = post(&server.url, proto.path(), Auth::None, &body).await;
            assert_eq!(r.status(), 401);
        }
    }
    let rows = settle(&server, 2).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    for proto in BOTH {
        assert_eq!(one_row(&rows, proto.path(), 200)["key_id"], id);
    }
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("token_console_unauthenticated_requests_total{status=\"4xx\"} 40"),
        "the calls without a key are counted: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_raced_for_with_digit_prompts_is_never_exceeded() {
    // The mock counts one token per byte of a `…byte-tokens…` model's prompt (the worst case of a
    // real tokenizer, as digits can be): 50 calls of 10-100 KB, a budget that fits about a third.
    const BUDGET: u64 = 1_000_000;
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "{}quota:\n  total_tokens: {BUDGET}\n",
        providers_yaml(&mock.url)
    );
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("digits").await;
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50u64 {
        let digits: String = (0..10_000 + n * 1_800)
            .map(|i| char::from(b'0' + (i % 10) as u8))
            .collect();
        let body = json!({"model": "mock-byte-tokens", "max_tokens": 20,
                          "messages": [{"role": "user", "content": digits}]});
        let request = client
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(&key)
            .json(&body);
        tasks.spawn(async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let (mut spent, mut ok) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            (200, body) => {
                ok += 1;
                spent += body["usage"]["total_tokens"].as_u64().unwrap();
            }
            (429, body) => assert_eq!(body["error"]["code"], "insufficient_quota", "{body}"),
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    eprintln!("{ok} of 50 calls answered, spending {spent} of {BUDGET} by the mock's count");
    assert!(ok >= 1, "the budget admits calls");
    assert!(
        spent <= BUDGET,
        "the mock reports {spent} tokens spent of {BUDGET}"
    );
    let stats = server.wait_for_calls(50).await;
    assert_eq!(stats["used_tokens"], spent, "{stats}");
}
