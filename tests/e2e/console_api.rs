//! The console REST API driven in-process (`app()` with `oneshot`), with calls entering through the
//! recorder's Rust interface — the one the gateway uses — so that timestamps across days, time
//! zones and volumes can be chosen, and every figure checked against an independent computation.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::common::scratch::{self, ScratchDb};
use crate::common::{tempdir, TempDir};
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use token_console::config::{Cli, Config};
use token_console::state::AppState;
use token_console::store::Store;
use token_console::usage::{CallRecord, Recorder, TokenUsage};
use tower::ServiceExt;

pub(crate) const ZONE: &str = "Asia/Shanghai";

/// The console in-process over a fresh database (also used by `insights` and `alerts`).
pub(crate) struct Console {
    pub(crate) state: AppState,
    app: Router,
    dir: TempDir,
    /// With `TC_TEST_DATABASE=postgres`: the scratch database, dropped with the console.
    _database: Option<ScratchDb>,
}

impl Console {
    pub(crate) async fn start(yaml: &str) -> Self {
        Self::start_from(yaml, ([127, 0, 0, 1], 40000).into()).await
    }

    async fn start_from(yaml: &str, peer: SocketAddr) -> Self {
        let dir = tempdir();
        let database = scratch::wanted().then(|| ScratchDb::create().unwrap());
        let url = match &database {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", dir.path().join("tc.db").display()),
        };
        Self::open(yaml, peer, dir, url, database).await
    }

    /// The `database_url` of this console's store.
    pub(crate) fn database_url(&self) -> String {
        match &self._database {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", self.dir.path().join("tc.db").display()),
        }
    }

    /// A second console (another instance) on the database of `first`.
    pub(crate) async fn beside(first: &Console, yaml: &str) -> Self {
        let url = first.database_url();
        Self::open(yaml, ([127, 0, 0, 1], 40000).into(), tempdir(), url, None).await
    }

    async fn open(
        yaml: &str,
        peer: SocketAddr,
        dir: TempDir,
        url: String,
        database: Option<ScratchDb>,
    ) -> Self {
        let text = format!("database_url: {url}\ntimezone: {ZONE}\n{yaml}");
        let config = Config::from_yaml(&text, &Cli::default()).unwrap();
        let store = Store::open(&config.database, config.timezone.clone()).unwrap();
        let recorder = Arc::new(
            Recorder::start(
                store
                    .batch_writer(config.console.max_logs)
                    .unwrap()
                    .with_user_cap(config.console.usage_user_cap),
            )
            .unwrap(),
        );
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        std::mem::forget(_stop);
        let state = AppState::new(config, store, recorder, stopped)
            .await
            .unwrap();
        let app = token_console::app(state.clone()).layer(MockConnectInfo(peer));
        Self {
            state,
            app,
            dir,
            _database: database,
        }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
        bearer: Option<&str>,
    ) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost");
        if let Some(token) = bearer {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Body::from(body.unwrap_or("").to_owned()))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes, headers)
    }

    pub(crate) async fn json(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, bytes, _) = self.send(method, uri, body, None).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub(crate) async fn data(&self, uri: &str) -> Value {
        let (status, body) = self.json("GET", uri, None).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(body["code"], 0, "{uri}: {body}");
        body["data"].clone()
    }

    pub(crate) async fn create_key(&self, name: &str) -> (i64, String) {
        let (status, body) = self
            .json(
                "POST",
                "/api/console/keys",
                Some(&json!({"name": name}).to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (
            body["data"]["id"].as_i64().unwrap(),
            body["data"]["value"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) async fn record_all(&self, calls: &[CallRecord]) {
        for call in calls {
            self.state.recorder.record(call.clone()).await;
        }
        self.state.recorder.flush().await;
    }
}

pub(crate) fn call(
    ts: jiff::Timestamp,
    model: &str,
    key: Option<(i64, &str)>,
    status: u16,
    prompt: u64,
    completion: u64,
    duration_ms: u64,
) -> CallRecord {
    CallRecord {
        ts,
        method: "POST".into(),
        endpoint: "/v1/chat/completions".into(),
        status,
        model: model.into(),
        key_id: key.map(|k| k.0),
        key_name: key.map(|k| k.1.to_owned()),
        tokens: TokenUsage {
            prompt,
            completion,
            cache_read: prompt / 3,
            cache_creation: prompt / 5,
            reasoning: completion / 4,
            total: prompt + completion,
        },
        duration_ms,
        ttft_ms: Some(duration_ms / 2),
        stream: prompt % 2 == 0,
        estimated: false,
        error: (status >= 400).then(|| format!("failed with {status}")),
        client: String::new(),
        session_id: None,
        user: None,
        provider: String::new(),
        source: "gateway".into(),
        alias: None,
        reasoning_effort: None,
        service_tier: None,
        cost_nanos: Some(prompt * 3 + completion * 5),
        cost_status: token_console::pricing::CostStatus::Priced,
        answer: Default::default(),
        ingest: None,
    }
}

fn seconds(ts: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(ts.as_second()).unwrap()
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Calls across three models (one named like an HTML injection), two keys and none, several
/// statuses, and instants on both sides of today's local midnight and further back.
fn dataset(k1: (i64, &str), k2: (i64, &str)) -> Vec<CallRecord> {
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let now = seconds(jiff::Timestamp::now());
    let midnight = now.to_zoned(tz).start_of_day().unwrap().timestamp();
    let mut instants = vec![
        now,
        midnight - jiff::SignedDuration::from_secs(1),
        midnight - jiff::SignedDuration::from_hours(30),
        now - jiff::SignedDuration::from_hours(24 * 3),
        now - jiff::SignedDuration::from_hours(24 * 12),
        now - jiff::SignedDuration::from_hours(24 * 40),
    ];
    if midnight + jiff::SignedDuration::from_secs(1) <= now {
        instants.push(midnight + jiff::SignedDuration::from_secs(1));
    }
    let models = [
        "gpt-4o",
        "claude-sonnet-4-6",
        "<img src=x onerror=alert(1)>",
    ];
    let keys = [Some(k1), Some(k2), None];
    let statuses = [200, 200, 201, 429, 500, 499, 200];
    let mut calls = Vec::new();
    for i in 0..84u64 {
        let ts = instants[(i as usize) % instants.len()];
        calls.push(call(
            ts,
            models[(i as usize / 2) % models.len()],
            keys[(i as usize / 5) % keys.len()],
            statuses[(i as usize) % statuses.len()],
            10 + i * 7 % 50,
            3 + i * 11 % 40,
            5 + i * 37 % 3000,
        ));
    }
    calls
}

#[tokio::test]
async fn every_figure_matches_an_independent_computation() {
    let console = Console::start("quota: {total_tokens: 100000}\n").await;
    let k1 = console.create_key("生产环境密钥").await;
    let k2 = console.create_key("staging").await;
    let calls = dataset((k1.0, "生产环境密钥"), (k2.0, "staging"));
    console.record_all(&calls).await;

    // /stats
    let stats = console.data("/api/console/stats").await;
    let used: u64 = calls.iter().map(|c| c.tokens.total).sum();
    assert_eq!(stats["total_tokens"], 100000);
    assert_eq!(stats["used_tokens"], used);
    assert_eq!(stats["remaining_tokens"], 100000 - used);
    assert_eq!(
        stats["usage_percent"],
        round2(used as f64 * 100.0 / 100000.0)
    );
    assert_eq!(stats["api_call_count"], calls.len());
    let successes = calls
        .iter()
        .filter(|c| (200..300).contains(&c.status))
        .count();
    assert_eq!(stats["success_count"], successes);
    assert_eq!(stats["error_count"], calls.len() - successes);
    assert_eq!(
        stats["prompt_tokens"],
        calls.iter().map(|c| c.tokens.prompt).sum::<u64>()
    );
    assert_eq!(
        stats["completion_tokens"],
        calls.iter().map(|c| c.tokens.completion).sum::<u64>()
    );
    assert_eq!(
        stats["cache_read_tokens"],
        calls.iter().map(|c| c.tokens.cache_read).sum::<u64>()
    );
    assert_eq!(
        stats["cache_creation_tokens"],
        calls.iter().map(|c| c.tokens.cache_creation).sum::<u64>()
    );
    assert_eq!(
        stats["reasoning_tokens"],
        calls.iter().map(|c| c.tokens.reasoning).sum::<u64>()
    );
    let mut by_model: BTreeMap<&str, Vec<&CallRecord>> = BTreeMap::new();
    for c in &calls {
        by_model.entry(&c.model).or_default().push(c);
    }
    let models = stats["models"].as_array().unwrap();
    assert_eq!(models.len(), by_model.len());
    for m in models {
        let name = m["name"].as_str().unwrap();
        let group = &by_model[name];
        let n = group.len() as f64;
        assert_eq!(m["call_count"], group.len(), "{name}");
        assert_eq!(
            m["token_count"],
            group.iter().map(|c| c.tokens.total).sum::<u64>(),
            "{name}"
        );
        let durations: u64 = group.iter().map(|c| c.duration_ms).sum();
        assert_eq!(m["avg_time"], round2(durations as f64 / n), "{name}");
        let ok = group
            .iter()
            .filter(|c| (200..300).contains(&c.status))
            .count() as f64;
        assert_eq!(m["success_rate"], round2(ok * 100.0 / n), "{name}");
    }

    // /stats for one key uses that key's figures.
    let one = console
        .data(&format!("/api/console/stats?key_id={}", k2.0))
        .await;
    let k2_calls: Vec<_> = calls.iter().filter(|c| c.key_id == Some(k2.0)).collect();
    assert_eq!(one["api_call_count"], k2_calls.len());
    assert_eq!(
        one["used_tokens"],
        k2_calls.iter().map(|c| c.tokens.total).sum::<u64>()
    );
    assert_eq!(one["total_tokens"], Value::Null);

    // /usage-trend in the configured zone, across the midnight boundary.
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    for days in [7u32, 30, 90] {
        let trend = console
            .data(&format!("/api/console/usage-trend?days={days}"))
            .await;
        let today = jiff::Timestamp::now().to_zoned(tz.clone()).date();
        let mut expected_tokens = Vec::new();
        let mut expected_calls = Vec::new();
        let mut labels = Vec::new();
        for back in (0..days as i64).rev() {
            let date = today.checked_sub(jiff::Span::new().days(back)).unwrap();
            labels.push(date.strftime("%m-%d").to_string());
            let on_day: Vec<_> = calls
                .iter()
                .filter(|c| c.ts.to_zoned(tz.clone()).date() == date)
                .collect();
            expected_tokens.push(on_day.iter().map(|c| c.tokens.total).sum::<u64>());
            expected_calls.push(on_day.len() as u64);
        }
        assert_eq!(trend["labels"], json!(labels), "days={days}");
        assert_eq!(trend["tokenData"], json!(expected_tokens), "days={days}");
        assert_eq!(trend["callData"], json!(expected_calls), "days={days}");
    }

    // /logs: newest first, every field.
    let logs = console.data("/api/console/logs?limit=1000").await;
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), calls.len());
    for (row, c) in logs.iter().zip(calls.iter().rev()) {
        assert_eq!(
            row["timestamp"],
            c.ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        );
        assert_eq!(row["method"], "POST");
        assert_eq!(row["endpoint"], c.endpoint);
        assert_eq!(row["status"], c.status);
        assert_eq!(row["tokens"], c.tokens.total);
        assert_eq!(row["duration"], c.duration_ms);
        assert_eq!(row["model"], c.model);
        assert_eq!(row["key_id"], json!(c.key_id));
        assert_eq!(row["key_name"], json!(c.key_name));
        assert_eq!(row["prompt_tokens"], c.tokens.prompt);
        assert_eq!(row["completion_tokens"], c.tokens.completion);
        assert_eq!(row["cache_read_tokens"], c.tokens.cache_read);
        assert_eq!(row["cache_creation_tokens"], c.tokens.cache_creation);
        assert_eq!(row["reasoning_tokens"], c.tokens.reasoning);
        assert_eq!(row["stream"], c.stream);
        assert_eq!(row["ttft"], json!(c.ttft_ms));
        assert_eq!(row["error"], json!(c.error));
    }
    let ids: Vec<i64> = logs.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");

    // Filters, alone and combined, and paging.
    let check = |query: &str, keep: &dyn Fn(&CallRecord) -> bool| {
        let expected = calls.iter().filter(|c| keep(c)).count();
        (query.to_owned(), expected)
    };
    let cases = [
        check("model=gpt-4o", &|c| c.model == "gpt-4o"),
        check("status=4xx", &|c| (400..500).contains(&c.status)),
        check("status=500", &|c| c.status == 500),
        check(&format!("key_id={}", k1.0), &|c| c.key_id == Some(k1.0)),
        check("q=claude", &|c| c.model.contains("claude")),
        check("q=onerror", &|c| c.model.contains("onerror")),
        check("method=post", &|_| true),
        check("model=gpt-4o&status=2xx", &|c| {
            c.model == "gpt-4o" && (200..300).contains(&c.status)
        }),
    ];
    for (query, expected) in cases {
        let rows = console
            .data(&format!("/api/console/logs?limit=1000&{query}"))
            .await;
        assert_eq!(rows.as_array().unwrap().len(), expected, "{query}");
    }
    let page1 = console.data("/api/console/logs?limit=10").await;
    let last = page1[9]["id"].as_i64().unwrap();
    let page2 = console
        .data(&format!("/api/console/logs?limit=10&before_id={last}"))
        .await;
    assert_eq!(page2[0]["id"].as_i64().unwrap(), ids[10]);

    // /keys: usage and last_used per key.
    let keys = console.data("/api/console/keys").await;
    for (key, name) in [(&k1, "生产环境密钥"), (&k2, "staging")] {
        let view = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == key.0)
            .unwrap();
        let mine: Vec<_> = calls.iter().filter(|c| c.key_id == Some(key.0)).collect();
        assert_eq!(view["name"], name);
        assert_eq!(view["call_count"], mine.len());
        assert_eq!(
            view["used_tokens"],
            mine.iter().map(|c| c.tokens.total).sum::<u64>()
        );
        let last_used = mine.iter().map(|c| c.ts).max().unwrap();
        assert_eq!(
            view["last_used"],
            last_used.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
        );
        assert_ne!(view["value"], key.1);
    }

    // /export: the same figures, every retained log, keys in display form.
    let (status, bytes, headers) = console.send("GET", "/api/console/export", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"token-stats-")
            && disposition.ends_with(".json\""),
        "{disposition}"
    );
    let export: Value = serde_json::from_slice(&bytes).unwrap();
    // The forecast's run-out instant moves with the clock between the two requests.
    let without_forecast = |v: &Value| {
        let mut v = v.clone();
        let forecast = v.as_object_mut().unwrap().remove("forecast").unwrap();
        (v, forecast["rate_per_day"].as_f64().unwrap() > 0.0)
    };
    assert_eq!(without_forecast(&export["stats"]), without_forecast(&stats));
    assert_eq!(export["models"], stats["models"]);
    assert_eq!(export["logs"].as_array().unwrap().len(), calls.len());
    assert_eq!(export["logs"][0], logs[0]);
    assert_eq!(export["keys"], keys);
    assert_eq!(export["trend"]["labels"].as_array().unwrap().len(), 90);
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        !text.contains(&k1.1) && !text.contains(&k2.1),
        "full keys never exported"
    );

    let (status, csv, headers) = console
        .send("GET", "/api/console/export?format=csv", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(csv.lines().count(), calls.len() + 1);
    assert!(csv.starts_with("id,timestamp,method,endpoint,status,tokens"));
}

#[tokio::test]
async fn trimming_keeps_the_newest_logs_and_every_figure() {
    let console = Console::start("console: {max_logs: 1000}\n").await;
    let now = seconds(jiff::Timestamp::now());
    let calls: Vec<_> = (0..5000u64)
        .map(|i| call(now, "m", None, 200, 1 + i % 7, 2, 3))
        .collect();
    console.record_all(&calls).await;
    let logs = console.data("/api/console/logs?limit=1000").await;
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 1000);
    let ids: Vec<i64> = logs.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids[0], 5000);
    assert_eq!(ids[999], 4001);
    let older = console.data("/api/console/logs?before_id=4001").await;
    assert_eq!(older.as_array().unwrap().len(), 0, "older rows are trimmed");
    let stats = console.data("/api/console/stats").await;
    assert_eq!(stats["api_call_count"], 5000);
    assert_eq!(
        stats["used_tokens"],
        calls.iter().map(|c| c.tokens.total).sum::<u64>()
    );
    let trend = console.data("/api/console/usage-trend?days=1").await;
    assert_eq!(trend["callData"], json!([5000]));
}

#[tokio::test]
async fn concurrent_producers_lose_nothing() {
    let console = Console::start("console: {max_logs: 2000}\n").await;
    let now = seconds(jiff::Timestamp::now());
    let mut producers = Vec::new();
    for p in 0..8u64 {
        let recorder = console.state.recorder.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..10_000u64 {
                recorder
                    .record(call(now, &format!("model-{p}"), None, 200, i % 5, 1, 1))
                    .await;
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    console.state.recorder.flush().await;
    let stats = console.data("/api/console/stats").await;
    assert_eq!(stats["api_call_count"], 80_000);
    assert_eq!(stats["models"].as_array().unwrap().len(), 8);
    for model in stats["models"].as_array().unwrap() {
        assert_eq!(model["call_count"], 10_000);
    }
    let recorder = console.state.recorder.stats();
    assert_eq!(recorder.dropped, 0);
    assert_eq!(recorder.written, 80_000);
    // limit above 1000 is clamped to 1000.
    let logs = console.data("/api/console/logs?limit=5000").await;
    assert_eq!(logs.as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn key_lifecycle_shows_the_full_key_once() {
    let console = Console::start("console: {max_keys: 2}\n").await;
    let (status, created) = console
        .json(
            "POST",
            "/api/console/keys",
            Some(r#"{"name":"  新密钥  ","description":"用于测试环境"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let key = &created["data"];
    let full = key["value"].as_str().unwrap().to_owned();
    assert!(full.starts_with("sk-tc-") && full.len() == 46, "{full}");
    assert_eq!(key["name"], "新密钥");
    assert_eq!(key["description"], "用于测试环境");
    assert_eq!(key["last_used"], "0001-01-01T00:00:00Z");
    assert_eq!(key["enabled"], true);
    let id = key["id"].as_i64().unwrap();
    let hash_hex: String = {
        use sha2::Digest;
        sha2::Sha256::digest(full.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };

    let listed = console.data("/api/console/keys").await;
    let shown = listed[0]["value"].as_str().unwrap();
    assert_eq!(shown, format!("sk-tc-{}…{}", &full[6..10], &full[42..]));

    // Duplicate names, empty names and the key limit.
    let (status, body) = console
        .json("POST", "/api/console/keys", Some(r#"{"name":"新密钥"}"#))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], 409);
    let (status, body) = console
        .json("POST", "/api/console/keys", Some(r#"{"name":"   "}"#))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["msg"].as_str().unwrap().contains("name"), "{body}");
    console.create_key("second").await;
    let (status, body) = console
        .json("POST", "/api/console/keys", Some(r#"{"name":"third"}"#))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body["msg"].as_str().unwrap().contains("max_keys"), "{body}");

    // Patch.
    let (status, body) = console
        .json("PATCH", &format!("/api/console/keys/{id}"), Some(r#"{"name":"renamed","enabled":false,"token_limit":500,"rpm_limit":60,"allowed_models":["gpt-*"],"expires_at":"2030-01-01T00:00:00Z"}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let patched = &body["data"];
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["token_limit"], 500);
    assert_eq!(patched["rpm_limit"], 60);
    assert_eq!(patched["allowed_models"], json!(["gpt-*"]));
    assert_eq!(patched["expires_at"], "2030-01-01T00:00:00Z");
    let (status, body) = console
        .json(
            "PATCH",
            &format!("/api/console/keys/{id}"),
            Some(r#"{"token_limit":null}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["token_limit"], Value::Null);
    assert_eq!(body["data"]["rpm_limit"], 60, "absent fields stay");
    let (status, _) = console
        .json(
            "PATCH",
            &format!("/api/console/keys/{id}"),
            Some(r#"{"colour":"red"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Nothing but the create call ever shows the full key or its hash.
    let (_, export, _) = console.send("GET", "/api/console/export", None, None).await;
    let export = String::from_utf8(export).unwrap();
    let (_, keys_list, _) = console.send("GET", "/api/console/keys", None, None).await;
    let keys_list = String::from_utf8(keys_list).unwrap();
    for text in [&export, &keys_list] {
        assert!(!text.contains(&full));
        assert!(!text.contains(&hash_hex));
    }
    for file in ["tc.db", "tc.db-wal"] {
        let bytes = std::fs::read(console.dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(full.len()).any(|w| w == full.as_bytes()),
            "{file} holds the full key"
        );
    }

    // Delete: 404 afterwards, and gone from the list.
    let (status, body) = console
        .json("DELETE", &format!("/api/console/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"code": 0, "msg": "密钥已删除"}));
    let (status, body) = console
        .json("DELETE", &format!("/api/console/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 404);
    let (status, _) = console
        .json(
            "PATCH",
            &format!("/api/console/keys/{id}"),
            Some(r#"{"name":"x"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let listed = console.data("/api/console/keys").await;
    assert!(listed.as_array().unwrap().iter().all(|k| k["id"] != id));
    // The freed slot can be used again, and the deleted key's name too.
    console.create_key("新密钥").await;
}

#[tokio::test]
async fn bad_input_gets_the_envelope_and_a_clear_message() {
    let console = Console::start("").await;
    let cases = [
        ("GET", "/api/console/usage-trend?days=abc", None, 400),
        ("GET", "/api/console/usage-trend?days=0", None, 400),
        ("GET", "/api/console/logs?limit=-1", None, 400),
        ("GET", "/api/console/logs?limit=abc", None, 400),
        ("GET", "/api/console/logs?status=9xx", None, 400),
        ("GET", "/api/console/logs?since=yesterday", None, 400),
        ("GET", "/api/console/stats?key_id=x", None, 400),
        ("GET", "/api/console/stats?key_id=999", None, 404),
        ("GET", "/api/console/export?format=xml", None, 400),
        ("POST", "/api/console/keys", Some("{not json"), 400),
        ("POST", "/api/console/keys", Some(""), 400),
        ("POST", "/api/console/keys", Some(r#"{"name": 42}"#), 400),
        (
            "POST",
            "/api/console/keys",
            Some(r#"{"description": "no name"}"#),
            400,
        ),
        (
            "PATCH",
            "/api/console/keys/999",
            Some(r#"{"name":"x"}"#),
            404,
        ),
        ("PATCH", "/api/console/keys/1", Some("[1,2"), 400),
        ("DELETE", "/api/console/keys/999", None, 404),
        ("DELETE", "/api/console/keys/abc", None, 404),
        ("GET", "/api/console/nothing-here", None, 404),
    ];
    for (method, uri, body, want) in cases {
        let (status, json) = console.json(method, uri, body).await;
        assert_eq!(status.as_u16(), want, "{method} {uri}: {json}");
        assert_eq!(json["code"], want, "{method} {uri}: {json}");
        let msg = json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.len() > 10,
            "{method} {uri}: the message says what to do: {json}"
        );
    }
    let trend = console.data("/api/console/usage-trend?days=500").await;
    assert_eq!(
        trend["labels"].as_array().unwrap().len(),
        90,
        "days above 90 are clamped"
    );
    let trend = console.data("/api/console/usage-trend").await;
    assert_eq!(
        trend["labels"].as_array().unwrap().len(),
        7,
        "days default to 7"
    );
    let empty = console.data("/api/console/stats").await;
    assert_eq!(empty["api_call_count"], 0);
    assert_eq!(empty["used_tokens"], 0);
    assert_eq!(empty["total_tokens"], Value::Null);
    assert_eq!(empty["models"], json!([]));
}

#[tokio::test]
async fn console_is_for_this_machine_unless_an_admin_key_is_set() {
    let remote: SocketAddr = ([10, 1, 2, 3], 5555).into();
    let open = Console::start_from("", remote).await;
    let (status, body) = open.json("GET", "/api/console/stats", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body["msg"].as_str().unwrap().contains("CONSOLE_ADMIN_KEY"),
        "{body}"
    );
    let (status, _, _) = open.send("GET", "/console/", None, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let local = Console::start("").await;
    let request = Request::builder()
        .uri("/api/console/stats")
        .header("host", "localhost")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Body::empty())
        .unwrap();
    let response = local.app.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "a proxied request is not local"
    );
    let request = Request::builder()
        .uri("/api/console/keys")
        .method("POST")
        .header("origin", "http://evil.example")
        .header("host", "127.0.0.1:8317")
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    let response = local.app.clone().oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::FORBIDDEN,
        "no cross-origin calls"
    );

    let guarded = Console::start_from(
        "console: {admin_key: correct-horse-battery-staple}\n",
        remote,
    )
    .await;
    let (status, body, _) = guarded.send("GET", "/api/console/stats", None, None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = guarded
        .send("GET", "/api/console/stats", None, Some("wrong-key-123"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = guarded
        .send(
            "GET",
            "/api/console/stats",
            None,
            Some("correct-horse-battery-staple"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, headers) = guarded.send("GET", "/console/", None, None).await;
    assert_eq!(status, StatusCode::OK, "the page itself asks for the key");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // Failed sign-ins are limited per address.
    let mut last = StatusCode::OK;
    for _ in 0..12 {
        last = guarded
            .send("GET", "/api/console/stats", None, Some("guess-guess"))
            .await
            .0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_page_is_served_from_the_binary() {
    let console = Console::start("console: {path: /dash}\n").await;
    let (status, _, headers) = console.send("GET", "/dash", None, None).await;
    assert!(status.is_redirection());
    assert_eq!(headers["location"], "/dash/");
    let (status, body, headers) = console.send("GET", "/dash/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("<html"));
    let (status, _, headers) = console.send("GET", "/", None, None).await;
    assert!(status.is_redirection());
    assert_eq!(headers["location"], "/dash");
    let (status, _, _) = console.send("GET", "/dash/missing.js", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut seen = HashMap::new();
    for file in ["index.html"] {
        let (status, _, _) = console
            .send("GET", &format!("/dash/{file}"), None, None)
            .await;
        seen.insert(file, status);
    }
    assert_eq!(seen["index.html"], StatusCode::OK);
}

#[tokio::test]
async fn the_live_log_streams_each_new_record_that_passes_the_filters() {
    let console = Console::start("").await;
    let request = Request::builder()
        .uri("/api/console/logs/stream?model=wanted")
        .header("host", "localhost")
        .body(Body::empty())
        .unwrap();
    let response = console.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body().into_data_stream();
    let now = seconds(jiff::Timestamp::now());
    console
        .record_all(&[
            call(now, "other", None, 200, 1, 1, 1),
            call(now, "wanted", None, 503, 7, 5, 42),
        ])
        .await;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = futures_util::StreamExt::next(&mut body)
            .await
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let event = text.split("\n\n").next().unwrap();
    assert!(event.starts_with("event: log\n"), "{event}");
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let row: Value = serde_json::from_str(data).unwrap();
    assert_eq!(row["model"], "wanted");
    assert_eq!(row["status"], 503);
    assert_eq!(row["tokens"], 12);
    assert_eq!(row["duration"], 42);
    assert_eq!(row["id"], 2);
}

#[tokio::test]
async fn the_api_describes_itself_in_openapi() {
    let console = Console::start("").await;
    let (status, doc) = console.json("GET", "/api/console/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/api/console/stats",
        "/api/console/usage-trend",
        "/api/console/logs",
        "/api/console/logs/stream",
        "/api/console/keys",
        "/api/console/keys/{id}",
        "/api/console/export",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}

#[tokio::test]
async fn a_patch_cannot_null_a_required_field() {
    let console = Console::start("").await;
    let (id, _) = console.create_key("kept").await;
    for body in [
        r#"{"name":null}"#,
        r#"{"enabled":null}"#,
        r#"{"description":null}"#,
    ] {
        let (status, json) = console
            .json("PATCH", &format!("/api/console/keys/{id}"), Some(body))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
    }
    let keys = console.data("/api/console/keys").await;
    assert_eq!(keys[0]["name"], "kept");
}

/// The CSV export is RFC 4180 and no text cell can become a spreadsheet formula, whether the
/// spreadsheet splits lines at `,` or at `;`: model, endpoint, method, key name and error carry
/// formula payloads here.
#[tokio::test]
async fn csv_export_cells_are_never_formulas() {
    let console = Console::start("").await;
    let payloads = [
        "=1+1",
        "+SUM(A1:A2)",
        "-2+3",
        "@SUM(1)",
        "\t=1",
        "\r=1",
        "a;=1+1",
        "a,=1+1",
        "a; =HYPERLINK(\"http://x\")",
        "say \"hi\", then\n=2*3",
    ];
    let now = jiff::Timestamp::now();
    let calls: Vec<CallRecord> = payloads
        .iter()
        .map(|p| {
            let mut c = call(now, p, Some((1, p)), 500, 1, 1, 5);
            c.method = (*p).into();
            c.endpoint = format!("/v1/{p}");
            c.error = Some((*p).into());
            c
        })
        .collect();
    console.record_all(&calls).await;
    let (status, bytes, headers) = console
        .send("GET", "/api/console/export?format=csv", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = String::from_utf8(bytes).unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), payloads.len());
    let formula = |cell: &str| {
        cell.split([',', ';', '\t', '\r', '\n', '|']).any(|part| {
            part.trim_start_matches([' ', '"'])
                .starts_with(['=', '+', '-', '@'])
        }) || cell.starts_with(['\t', '\r'])
    };
    for row in &rows {
        assert_eq!(row.len(), columns.len(), "{row:?}");
        for column in ["method", "endpoint", "model", "key_name", "error"] {
            let i = columns.iter().position(|c| c == column).unwrap();
            let cell = &row[i];
            assert!(!formula(cell), "{column} could be a formula: {cell:?}");
            let unquoted = cell.replace('\'', "");
            assert!(
                payloads
                    .iter()
                    .any(|p| unquoted.ends_with(&p.replace('\'', ""))),
                "{column}: the text is kept: {cell:?}"
            );
        }
    }
}
