//! Budgets that reset every day, week or month in the configured time zone, on the real binary
//! and the mock: the clock of each process is set with the test-only `CONSOLE_TEST_NOW`, so a
//! month boundary in Shanghai is crossed by starting the next process on the same database at
//! the next month's first minute; and inside one running gateway (driven in-process through
//! `app()`, calls forwarded to the mock over HTTP) by moving its clock while a call is in flight.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use token_console::config::{Cli, Config};
use token_console::state::AppState;
use token_console::store::Store;
use token_console::usage::Recorder;
use tower::ServiceExt;

use crate::common::scratch::{self, ScratchDb};
use crate::common::{call, providers_yaml, tempdir, Mock, Server};

const CHAT: &str = "/v1/chat/completions";

/// A call of about 1 KB of text to a model the mock counts at one token per byte: it uses about
/// what the gateway reserves for it. Returns the body, its reservation (the body's bytes + 4 + 3
/// + `max_tokens`) and the tokens it uses (10 + the text's bytes + `max_tokens`).
fn byte_chat() -> (Value, u64, u64) {
    let text = "period budget test ".repeat(50);
    let body = json!({"model": "mock-byte-tokens", "max_tokens": 20, "messages": [{"role": "user", "content": text}]});
    let reserved = serde_json::to_vec(&body).unwrap().len() as u64 + 4 + 3 + 20;
    (body, reserved, 10 + text.len() as u64 + 20)
}

fn config(mock: &Mock, extra: &str) -> String {
    format!(
        "timezone: Asia/Shanghai\n{extra}{}",
        providers_yaml(&mock.url)
    )
}

fn at(instant: &str) -> [(&'static str, &str); 1] {
    [("CONSOLE_TEST_NOW", instant)]
}

/// The key `id` as `GET /api/console/keys` shows it.
async fn key_view(server: &Server, id: i64) -> Value {
    let keys = server.data("/api/console/keys").await;
    keys.as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .cloned()
        .unwrap()
}

/// Calls `n` times in turn; returns the statuses and the last refusal's message.
async fn calls(server: &Server, key: &str, body: &Value, n: usize) -> (Vec<u16>, String) {
    let (mut statuses, mut refusal) = (Vec::new(), String::new());
    for _ in 0..n {
        let r = call(&server.url, CHAT, key, body).await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            let answer: Value = r.json().await.unwrap();
            assert_eq!(answer["error"]["code"], "insufficient_quota", "{answer}");
            refusal = answer["error"]["message"].as_str().unwrap().to_owned();
        }
    }
    (statuses, refusal)
}

#[tokio::test]
async fn a_monthly_key_budget_resets_at_the_month_boundary_of_the_configured_zone() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = config(&mock, "");
    let (body, reserved, used) = byte_chat();
    let limit = 2 * reserved;

    // Two minutes before February in Shanghai (15:58 UTC on January 31).
    let mut january = Server::start_with(dir.path(), &yaml, &at("2026-01-31T23:58:00+08:00"));
    let (id, key) = january.create_key("monthly").await;
    let path = format!("/api/console/keys/{id}");
    let (status, answer) = january.patch(&path, &json!({"limit_period": "year"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["msg"].as_str().unwrap().contains("month"),
        "names the periods: {answer}"
    );
    let (status, answer) = january
        .patch(
            &path,
            &json!({"token_limit": limit, "limit_period": "month"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["limit_period"], "month");
    assert_eq!(answer["data"]["period_resets_at"], "2026-01-31T16:00:00Z");
    let (statuses, refusal) = calls(&january, &key, &body, 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    assert!(
        refusal.contains("resets at 2026-01-31T16:00:00Z"),
        "the refusal says when the budget resets: {refusal}"
    );
    january.wait_for_calls(3).await;
    let view = key_view(&january, id).await;
    assert_eq!(view["period_used"], 2 * used, "{view}");
    assert_eq!(view["period_left"], limit - 2 * used, "{view}");
    assert!(january.terminate().success());

    // Thirty seconds into February in Shanghai: the key starts again from nothing.
    let mut february = Server::start_with(dir.path(), &yaml, &at("2026-02-01T00:00:30+08:00"));
    let view = key_view(&february, id).await;
    assert_eq!(
        (&view["period_used"], &view["period_left"]),
        (&json!(0), &json!(limit)),
        "{view}"
    );
    assert_eq!(view["used_tokens"], 2 * used, "{view}");
    assert_eq!(view["period_resets_at"], "2026-02-28T16:00:00Z");
    let (statuses, _) = calls(&february, &key, &body, 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    february.wait_for_calls(6).await;
    let view = key_view(&february, id).await;
    assert_eq!(view["period_used"], 2 * used, "{view}");
    assert_eq!(view["used_tokens"], 4 * used, "{view}");
    let newest = february.logs("limit=1").await;
    assert!(
        newest[0]["timestamp"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-01-31T16:0")),
        "calls are recorded at the process's clock: {:?}",
        newest[0]
    );
    assert!(february.terminate().success());

    // A process whose clock is back in January finds January's budget still spent.
    let late = Server::start_with(dir.path(), &yaml, &at("2026-01-31T23:59:30+08:00"));
    let (statuses, _) = calls(&late, &key, &body, 1).await;
    assert_eq!(statuses, [429]);
    assert_eq!(
        mock.stats().await["by_path"][CHAT].as_u64(),
        Some(4),
        "two calls forwarded in each month"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_period_budget_is_never_overspent_in_a_race() {
    let mock = Mock::start();
    let (body, reserved, used) = byte_chat();
    let room = 3;
    let limit = room * reserved;
    // The global budget reset daily, then a key's monthly limit.
    let global = format!("quota:\n  total_tokens: {limit}\n  limit_period: day\n");
    for (extra, key_limit) in [(global.as_str(), None), ("", Some(limit))] {
        let dir = tempdir();
        let server = Server::start_with(
            dir.path(),
            &config(&mock, extra),
            &at("2026-03-31T23:00:00+08:00"),
        );
        let (id, key) = server.create_key("racer").await;
        if let Some(limit) = key_limit {
            let (status, answer) = server
                .patch(
                    &format!("/api/console/keys/{id}"),
                    &json!({"token_limit": limit, "limit_period": "month"}),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
        }
        let forwarded_before = mock.stats().await["by_path"][CHAT].as_u64().unwrap_or(0);
        let client = reqwest::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let request = client
                .post(format!("{}{CHAT}", server.url))
                .bearer_auth(&key)
                .json(&body);
            tasks.spawn(async move { request.send().await.unwrap().status().as_u16() });
        }
        let mut ok = 0;
        while let Some(status) = tasks.join_next().await {
            match status.unwrap() {
                200 => ok += 1,
                429 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        eprintln!("{ok} of 50 answered with room for {room} ({extra:?})");
        assert!((1..=room).contains(&ok), "{ok} calls answered");
        let forwarded = mock.stats().await["by_path"][CHAT].as_u64().unwrap() - forwarded_before;
        assert_eq!(forwarded, ok, "only admitted calls reach the provider");
        let stats = server.wait_for_calls(50).await;
        let (scope_used, scope_limit) = match key_limit {
            Some(_) => (key_view(&server, id).await["period_used"].clone(), limit),
            None => (stats["period_used"].clone(), limit),
        };
        assert_eq!(scope_used, ok * used, "{stats}");
        assert!(ok * used <= scope_limit);
        if key_limit.is_none() {
            assert_eq!(stats["limit_period"], "day");
            assert_eq!(stats["period_resets_at"], "2026-03-31T16:00:00Z");
            assert_eq!(stats["remaining_tokens"], limit - ok * used);
        }
    }
}

/// A gateway and console driven in-process, its clock starting at `now`.
struct InProcess {
    state: AppState,
    app: axum::Router,
    _dir: crate::common::TempDir,
    _database: Option<ScratchDb>,
}

impl InProcess {
    async fn start(yaml: &str, now: &str) -> Self {
        let dir = tempdir();
        let database = scratch::wanted().then(|| ScratchDb::create().unwrap());
        let url = match &database {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", dir.path().join("tc.db").display()),
        };
        let cli = Cli {
            test_now: Some(now.to_owned()),
            ..Cli::default()
        };
        let config = Config::from_yaml(&format!("database_url: {url}\n{yaml}"), &cli).unwrap();
        let store = Store::open(&config.database, config.timezone.clone()).unwrap();
        let recorder = Arc::new(
            Recorder::start(store.batch_writer(config.console.max_logs).unwrap()).unwrap(),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        std::mem::forget(stop);
        let state = AppState::new(config, store, recorder, stopped)
            .await
            .unwrap();
        let peer: std::net::SocketAddr = ([127, 0, 0, 1], 40000).into();
        let app = token_console::app(state.clone()).layer(MockConnectInfo(peer));
        Self {
            state,
            app,
            _dir: dir,
            _database: database,
        }
    }

    fn set_clock(&self, now: &str) {
        self.state.gateway.sinks.clock.set(now.parse().unwrap());
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: &Value,
    ) -> axum::response::Response {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "localhost")
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let request = request.body(Body::from(body.to_string())).unwrap();
        self.app.clone().oneshot(request).await.unwrap()
    }

    async fn json(&self, method: &str, uri: &str, body: &Value) -> Value {
        let response = self.send(method, uri, None, body).await;
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// A chat call; the answer's status once it is read whole.
    async fn chat(&self, key: &str, body: &Value) -> u16 {
        let response = self.send("POST", CHAT, Some(key), body).await;
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

#[tokio::test]
async fn a_running_gateway_crosses_the_month_boundary_with_a_call_in_flight() {
    let mock = Mock::start();
    let gateway = InProcess::start(&config(&mock, ""), "2026-01-31T23:59:00+08:00").await;
    let created = gateway
        .json("POST", "/api/console/keys", &json!({"name": "monthly"}))
        .await;
    let (id, key) = (
        created["data"]["id"].as_i64().unwrap(),
        created["data"]["value"].as_str().unwrap().to_owned(),
    );
    let (plain, plain_reserved, plain_used) = byte_chat();
    // A stream that asks for its usage itself: reserved as its bytes (nothing is spliced in).
    let mut streamed = plain.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let stream_reserved = serde_json::to_vec(&streamed).unwrap().len() as u64 + 4 + 3 + 20;
    // Room for one stream and one plain call a month.
    let limit = stream_reserved + plain_reserved;
    let patched = gateway
        .json(
            "PATCH",
            &format!("/api/console/keys/{id}"),
            &json!({"token_limit": limit, "limit_period": "month"}),
        )
        .await;
    assert_eq!(patched["code"], 0, "{patched}");

    // January: a stream starts (its answer not read yet), a plain call fits, a third does not.
    let in_flight = gateway.send("POST", CHAT, Some(&key), &streamed).await;
    assert_eq!(in_flight.status(), 200);
    assert_eq!(gateway.chat(&key, &plain).await, 200);
    assert_eq!(gateway.chat(&key, &plain).await, 429);

    // Midnight in Shanghai, with the stream still in flight: February starts from nothing.
    gateway.set_clock("2026-02-01T00:00:01+08:00");
    assert_eq!(gateway.chat(&key, &plain).await, 200);
    // The stream ends in February, yet is charged to January: February keeps its room for the
    // second plain call, and gets nothing back from what the stream did not use.
    in_flight.into_body().collect().await.unwrap();
    assert_eq!(gateway.chat(&key, &plain).await, 200);
    assert_eq!(gateway.chat(&key, &plain).await, 429);
    assert!(2 * plain_used <= limit && limit - 2 * plain_used < plain_reserved);

    gateway.state.recorder.flush().await;
    let keys = gateway.json("GET", "/api/console/keys", &Value::Null).await;
    let view = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(view["period_used"], 2 * plain_used, "{view}");
    assert_eq!(view["period_resets_at"], "2026-02-28T16:00:00Z");
    let logs = gateway
        .json("GET", "/api/console/logs?status=200&limit=10", &Value::Null)
        .await;
    let streamed_row = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stream"] == true)
        .unwrap()
        .clone();
    assert!(
        streamed_row["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-31T15:59"),
        "recorded at its start, in January: {streamed_row}"
    );
}
