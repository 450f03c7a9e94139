//! Alerts end to end: a local receiver (an HTTP server on port 0) gets exactly one payload per
//! threshold crossing with the documented fields, also when two instances share the database; a
//! receiver that fails or hangs is retried and the delivery recorded as failed after the last
//! try, while calls through the gateway go on unaffected.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::common::*;
use crate::console_api::{call, Console};
use crate::gateway_support::{post, Auth};

/// A webhook receiver that notes every request and answers with `mode` (0: never answers).
#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

async fn receiver(mode: u16) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let hits: Arc<Mutex<Vec<(HeaderMap, Value)>>> = Arc::default();
    let mode = Arc::new(AtomicU16::new(mode));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (seen, mode) = (seen.clone(), mode.clone());
            async move {
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().unwrap().push((headers, body));
                match mode.load(Ordering::SeqCst) {
                    0 => std::future::pending::<StatusCode>().await,
                    status => StatusCode::from_u16(status).unwrap(),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, hits }
}

impl Receiver {
    fn payloads(&self) -> Vec<Value> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        wait_until(&format!("{n} requests at the receiver"), || async {
            let got = self.payloads();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} so far: {got:?}", got.len()))
            }
        })
        .await
    }
}

fn alerts_yaml(targets: &[(&str, &Receiver)], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|(name, r)| format!("    - {{kind: webhook, name: {name}, url: '{}'}}\n", r.url))
        .collect();
    format!(
        "alerts:\n  interval_ms: 50\n  backoff_ms: 10\n  timeout_ms: 300\n  attempts: 3\n{extra}  rules: {{budget_percent: [50, 80, 100], forecast_days: 0, anomalies: false, recorder_degraded: false}}\n  targets:\n{}",
        targets.concat()
    )
}

async fn limited_key(console: &Console, name: &str, limit: u64) -> i64 {
    let (id, _) = console.create_key(name).await;
    let body = json!({ "token_limit": limit }).to_string();
    let (status, answer) = console
        .json("PATCH", &format!("/api/console/keys/{id}"), Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    id
}

/// Records one call of `tokens` tokens (split 3:1 between prompt and completion) for the key.
async fn spend(console: &Console, key: (i64, &str), tokens: u64) {
    let c = call(
        jiff::Timestamp::now(),
        "gpt-4o",
        Some(key),
        200,
        tokens * 3 / 4,
        tokens - tokens * 3 / 4,
        30,
    );
    console.record_all(&[c]).await;
}

/// The alerts listed once every delivery has left `pending`.
async fn settled_alerts(console: &Console, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} alerts with settled deliveries"), || async {
        let alerts = console.data("/api/console/alerts").await;
        let list = alerts.as_array().cloned().unwrap_or_default();
        let pending = list
            .iter()
            .flat_map(|a| a["deliveries"].as_array().cloned().unwrap_or_default())
            .any(|d| d["status"] == "pending");
        if list.len() == n && !pending {
            Ok(list)
        } else {
            Err(alerts.to_string())
        }
    })
    .await
}

/// Every field of `value` is a property of the OpenAPI schema `name` and every required one is
/// there (the document closes its objects).
fn agrees(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no schema {name}"));
    let fields = value.as_object().unwrap();
    for field in fields.keys() {
        assert!(
            properties.contains_key(field),
            "{name} has no property {field}"
        );
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        assert!(
            fields.contains_key(required.as_str().unwrap()),
            "{name} lacks {required}"
        );
    }
}

#[tokio::test]
async fn a_receiver_gets_one_payload_per_threshold_crossing() {
    let hook = receiver(200).await;
    let console = Console::start(&alerts_yaml(&[("hook", &hook)], "")).await;
    let a = limited_key(&console, "team-a", 1000).await;
    spend(&console, (a, "team-a"), 600).await;
    let got = hook.wait_for(1).await;
    let p = &got[0];
    assert_eq!(p["event"], "threshold_crossed");
    assert_eq!(p["event_group"], "key");
    assert_eq!(p["rule"], "budget_50");
    assert_eq!(p["threshold"], 50.0);
    assert_eq!(
        (p["spend"].as_u64(), p["max_budget"].as_u64()),
        (Some(600), Some(1000))
    );
    assert_eq!(p["budget_percentage_used"], 60.0);
    assert_eq!(p["key_id"], a);
    assert_eq!(p["key_name"], "team-a");
    assert_eq!(p["period"], "total");
    assert_eq!(p["unit"], "tokens");
    // 600 tokens within the last day: a rate of 600 a day, 400 left: runs out in 16 hours.
    assert_eq!(p["rate_per_day"], 600.0);
    let runs_out: jiff::Timestamp = p["runs_out_at"].as_str().unwrap().parse().unwrap();
    let created: jiff::Timestamp = p["created_at"].as_str().unwrap().parse().unwrap();
    let hours = (runs_out - created).get_seconds() as f64 / 3600.0;
    assert!((hours - 16.0).abs() < 0.01, "{p}");
    assert!(
        p["event_message"].as_str().unwrap().contains("team-a"),
        "{p}"
    );
    assert_eq!(p["anomaly"], Value::Null);
    let content_type = hook.hits.lock().unwrap()[0].0["content-type"].clone();
    assert_eq!(content_type, "application/json");

    // The next thresholds, one payload each, while the rules are evaluated every 50 ms.
    spend(&console, (a, "team-a"), 250).await;
    let got = hook.wait_for(2).await;
    assert_eq!(
        (got[1]["rule"].as_str(), got[1]["spend"].as_u64()),
        (Some("budget_80"), Some(850))
    );
    assert_eq!(got[1]["budget_percentage_used"], 85.0);
    spend(&console, (a, "team-a"), 150).await;
    let got = hook.wait_for(3).await;
    assert_eq!(
        (got[2]["rule"].as_str(), got[2]["event"].as_str()),
        (Some("budget_100"), Some("budget_crossed"))
    );

    // Two thresholds crossed at once: the higher one is sent, the lower one recorded as skipped.
    let b = limited_key(&console, "team-b", 1000).await;
    spend(&console, (b, "team-b"), 900).await;
    let got = hook.wait_for(4).await;
    assert_eq!(
        (got[3]["rule"].as_str(), got[3]["key_id"].as_i64()),
        (Some("budget_80"), Some(b))
    );
    let alerts = settled_alerts(&console, 5).await;
    let statuses: Vec<(String, String, u64)> = alerts
        .iter()
        .map(|a| {
            let d = &a["deliveries"][0];
            (
                a["rule"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
                d["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    let want = [
        ("budget_50", "skipped", 0),
        ("budget_80", "sent", 1),
        ("budget_100", "sent", 1),
        ("budget_80", "sent", 1),
        ("budget_50", "sent", 1),
    ];
    let want: Vec<(String, String, u64)> = want
        .iter()
        .map(|(r, s, n)| (r.to_string(), s.to_string(), *n))
        .collect();
    assert_eq!(statuses, want, "newest first");
    assert_eq!(
        alerts[0]["deliveries"][0]["error"],
        "superseded by the 80% alert raised with it"
    );
    assert_eq!(
        alerts[1]["payload"], got[3],
        "the payload listed is the one sent"
    );
    assert_eq!(hook.payloads().len(), 4, "exactly one payload per crossing");

    let (_, doc) = console.json("GET", "/api/console/openapi.json", None).await;
    for alert in &alerts {
        agrees(&doc, "AlertView", alert);
        agrees(&doc, "AlertPayload", &alert["payload"]);
        agrees(&doc, "Delivery", &alert["deliveries"][0]);
    }
    let (status, body) = console
        .json("GET", "/api/console/alerts?limit=0", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        console
            .data("/api/console/alerts?limit=2")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn two_instances_on_one_database_send_one_payload_per_crossing() {
    let hook = receiver(200).await;
    let yaml = alerts_yaml(&[("hook", &hook)], "");
    let first = Console::start(&yaml).await;
    let second = Console::beside(&first, &yaml).await;
    let a = limited_key(&first, "shared", 1000).await;
    // Each instance records half of each step; both evaluate the rules every 50 ms.
    spend(&first, (a, "shared"), 300).await;
    spend(&second, (a, "shared"), 300).await;
    hook.wait_for(1).await;
    spend(&second, (a, "shared"), 300).await;
    let got = hook.wait_for(2).await;
    let alerts = settled_alerts(&second, 2).await;
    let rules: Vec<&str> = got.iter().map(|p| p["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["budget_50", "budget_80"]);
    assert_eq!(alerts.len(), 2);
    assert_eq!(
        hook.payloads().len(),
        2,
        "one payload per crossing, not one per instance"
    );
}

#[tokio::test]
async fn a_failing_or_hanging_receiver_is_retried_and_recorded_as_failed() {
    let failing = receiver(500).await;
    let hanging = receiver(0).await;
    let yaml = alerts_yaml(&[("failing", &failing), ("hanging", &hanging)], "");
    let console = Console::start(&yaml).await;
    let a = limited_key(&console, "team", 1000).await;
    spend(&console, (a, "team"), 500).await;
    let alerts = settled_alerts(&console, 1).await;
    let deliveries = alerts[0]["deliveries"].as_array().unwrap();
    let failed = deliveries
        .iter()
        .find(|d| d["target"] == "failing")
        .unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["http_status"], 500);
    assert_eq!(failed["error"], "answered HTTP 500");
    let hung = deliveries
        .iter()
        .find(|d| d["target"] == "hanging")
        .unwrap();
    assert_eq!(hung["status"], "failed");
    assert_eq!(hung["attempts"], 3);
    assert_eq!(hung["http_status"], Value::Null);
    assert_eq!(hung["error"], "no answer in time");
    assert_eq!(failing.payloads().len(), 3, "tried three times");
    assert_eq!(hanging.payloads().len(), 3, "tried three times");
    assert!(failing.payloads().iter().all(|p| p["rule"] == "budget_50"));
}

#[tokio::test]
async fn calls_through_the_gateway_go_on_while_the_receiver_hangs() {
    let mock = Mock::start();
    let hanging = receiver(0).await;
    let yaml = format!(
        "quota: {{total_tokens: 100000}}\nalerts:\n  interval_ms: 50\n  timeout_ms: 2000\n  attempts: 2\n  backoff_ms: 10\n  rules: {{budget_percent: [1]}}\n  targets: [{{kind: webhook, url: '{}'}}]\n",
        hanging.url
    );
    let (_dir, server) = start_behind(&mock, &yaml);
    let (_, key) = server.create_key("app").await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hello there"}]});
    let mut statuses = Vec::new();
    // Until the first 1% of the global budget is spent and the alert is being delivered.
    while hanging.payloads().is_empty() {
        statuses.push(
            post(
                &server.url,
                "/v1/chat/completions",
                Auth::Bearer(&key),
                &body,
            )
            .await
            .status()
            .as_u16(),
        );
        assert!(statuses.len() < 10_000, "no alert was raised");
    }
    // The receiver holds the delivery open: calls are answered all the same.
    for _ in 0..20 {
        statuses.push(
            post(
                &server.url,
                "/v1/chat/completions",
                Auth::Bearer(&key),
                &body,
            )
            .await
            .status()
            .as_u16(),
        );
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    server.wait_for_calls(statuses.len() as u64).await;
    let alerts = wait_until("the hanging delivery recorded as failed", || async {
        let alerts = server.data("/api/console/alerts").await;
        if alerts[0]["deliveries"][0]["status"] == "failed" {
            Ok(alerts)
        } else {
            Err(alerts.to_string())
        }
    })
    .await;
    assert_eq!(alerts[0]["deliveries"][0]["attempts"], 2);
    assert_eq!(alerts[0]["payload"]["event_group"], "proxy");
    assert_eq!(alerts[0]["payload"]["key_id"], Value::Null);
    assert_eq!(hanging.payloads().len(), 2);
}

/// Makes the store refuse the recorder's writes until released: SQLite's exclusive lock, or on
/// PostgreSQL an exclusive lock on `calls` held by another session.
enum StoreLock {
    Sqlite(rusqlite::Connection),
    Postgres(tokio_postgres::Client),
}

impl StoreLock {
    async fn take(url: &str) -> Self {
        if let Some(path) = url.strip_prefix("sqlite://") {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            return Self::Sqlite(conn);
        }
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
            .batch_execute("BEGIN; LOCK TABLE calls IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        Self::Postgres(client)
    }

    async fn release(self) {
        match self {
            Self::Sqlite(conn) => conn.execute_batch("ROLLBACK").unwrap(),
            Self::Postgres(client) => client.batch_execute("ROLLBACK").await.unwrap(),
        }
    }
}

#[tokio::test]
async fn a_recorder_that_cannot_write_is_announced_once() {
    let hook = receiver(200).await;
    let yaml = format!(
        "alerts:\n  interval_ms: 50\n  backoff_ms: 10\n  rules: {{budget_percent: [], forecast_days: 0, anomalies: false}}\n  targets: [{{kind: webhook, url: '{}'}}]\n",
        hook.url
    );
    let console = Console::start(&yaml).await;
    let lock = StoreLock::take(&console.database_url()).await;
    let c = call(jiff::Timestamp::now(), "gpt-4o", None, 200, 10, 5, 30);
    console.state.recorder.record(c).await;
    let got = hook.wait_for(1).await;
    let p = &got[0];
    assert_eq!(
        (p["event"].as_str(), p["event_group"].as_str()),
        (Some("recorder_degraded"), Some("proxy"))
    );
    assert_eq!(p["rule"], "recorder_degraded");
    assert!(
        p["event_message"]
            .as_str()
            .unwrap()
            .contains("cannot write call records"),
        "{p}"
    );
    lock.release().await;
    console.state.recorder.flush().await;
    wait_until("the recorder writing again", || async {
        !console.state.recorder.stats().degraded
    })
    .await;
    assert_eq!(
        console.data("/api/console/stats").await["api_call_count"],
        1
    );
    assert_eq!(hook.payloads().len(), 1, "one alert per outage");
}

/// An alert as an instance that died while delivering it left it: its delivery `pending`, last
/// changed at `changed`.
fn left_pending(
    dedup: &str,
    changed: jiff::Timestamp,
    payload: &Value,
) -> token_console::store::NewAlert {
    token_console::store::NewAlert {
        dedup: dedup.to_owned(),
        heading: token_console::store::AlertHeading {
            rule: "budget_80".into(),
            event: "threshold_crossed".into(),
            key_id: None,
            subject: "global".into(),
            period: "total".into(),
            message: payload["event_message"].as_str().unwrap().to_owned(),
        },
        payload: payload.to_string(),
        created_at: changed,
        instance: "dead-instance".into(),
        deliveries: vec![token_console::store::Delivery {
            target: "hook".into(),
            kind: "webhook".into(),
            status: "pending".into(),
            attempts: 1,
            http_status: None,
            error: Some("cannot connect".into()),
            updated_at: changed,
        }],
    }
}

#[tokio::test]
async fn a_delivery_left_pending_by_a_dead_instance_is_taken_over() {
    let hook = receiver(200).await;
    let yaml = alerts_yaml(&[("hook", &hook)], "");
    let console = Console::start(&yaml).await;
    let payload = json!({
        "event": "threshold_crossed", "event_group": "proxy", "event_message": "token-console: the global budget has used 80.00%",
        "spend": 800, "max_budget": 1000, "budget_percentage_used": 80.0, "key_id": null, "key_name": null,
        "period": "total", "runs_out_at": null, "rate_per_day": 0.0, "unit": "tokens", "rule": "budget_80",
        "threshold": 80.0, "anomaly": null, "instance": "dead-instance", "created_at": "2026-01-01T00:00:00Z"
    });
    let now = jiff::Timestamp::now();
    let store = &console.state.store;
    let old = store
        .claim_alert(left_pending(
            "old",
            now - jiff::SignedDuration::from_hours(24),
            &payload,
        ))
        .await
        .unwrap()
        .unwrap();
    // Changed just now: its instance may still be trying; it is left alone.
    let fresh = store
        .claim_alert(left_pending("fresh", now, &payload))
        .await
        .unwrap()
        .unwrap();
    let got = hook.wait_for(1).await;
    assert_eq!(got[0], payload);
    let alerts = wait_until("the old delivery sent", || async {
        let alerts = console.data("/api/console/alerts").await;
        let old = alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == old)
            .cloned()
            .unwrap();
        if old["deliveries"][0]["status"] == "sent" {
            Ok(alerts)
        } else {
            Err(alerts.to_string())
        }
    })
    .await;
    let list = alerts.as_array().unwrap();
    let sent = &list.iter().find(|a| a["id"] == old).unwrap()["deliveries"][0];
    assert_eq!(sent["attempts"], 2, "the dead instance's try and this one");
    let waiting = &list.iter().find(|a| a["id"] == fresh).unwrap()["deliveries"][0];
    assert_eq!(waiting["status"], "pending");
    assert_eq!(hook.payloads().len(), 1);
}

/// Usage pushed to the ingest endpoint (records of another proxy: it cannot be refused, but it
/// counts) crosses a key's and the global budget's thresholds: one payload per threshold. The
/// process runs at a `CONSOLE_TEST_NOW` far from today with a daily global budget, so alerts
/// evaluated at the wall clock's instant would look at a day without usage and send nothing.
#[tokio::test]
async fn ingested_usage_fires_one_alert_per_budget_threshold() {
    const INGEST_KEY: &str = "ingest-key-for-alerts-0123";
    const NOW: &str = "2031-03-14T12:00:00Z";
    let hook = receiver(200).await;
    let yaml = format!(
        "console:\n  ingest_key: {INGEST_KEY}\nquota:\n  total_tokens: 2000\n  limit_period: day\n{}",
        alerts_yaml(&[("hook", &hook)], "")
    );
    let dir = tempdir();
    let server = Server::start_with(dir.path(), &yaml, &[("CONSOLE_TEST_NOW", NOW)]);
    let (key_id, key) = server.create_limited_key("cpa-team", 1000).await;
    let http = reqwest::Client::new();
    let mut pushed = 0;
    let mut push = |tokens: u64, client_key: Option<&str>| {
        pushed += 1;
        let record = json!([{"id": format!("r{pushed}"), "ts": NOW, "model": "gpt-4o",
            "tokens": {"input": tokens * 3 / 4, "output": tokens - tokens * 3 / 4},
            "client_key": client_key}]);
        let request = http
            .post(format!("{}/api/console/ingest?source=cpa", server.url))
            .bearer_auth(INGEST_KEY)
            .json(&record);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
        }
    };
    // (tokens, with the key, the alert it raises: group, rule)
    let steps = [
        (600, true, ("key", "budget_50")),
        (250, true, ("key", "budget_80")),
        (150, true, ("proxy", "budget_50")),
        (600, false, ("proxy", "budget_80")),
        (400, false, ("proxy", "budget_100")),
    ];
    let mut want = Vec::new();
    for (i, (tokens, keyed, alert)) in steps.into_iter().enumerate() {
        push(tokens, keyed.then_some(key.as_str())).await;
        want.push(alert);
        if i == 2 {
            // The key's 100 % and the global 50 % are crossed by the same record.
            want.insert(2, ("key", "budget_100"));
        }
        hook.wait_for(want.len()).await;
    }
    let alerts = wait_until("6 alerts with settled deliveries", || async {
        let list = server.data("/api/console/alerts").await;
        let list = list.as_array().cloned().unwrap_or_default();
        let settled = list.iter().all(|a| a["deliveries"][0]["status"] == "sent");
        (list.len() == 6 && settled)
            .then_some(list.clone())
            .ok_or(format!("{list:?}"))
    })
    .await;
    let mut got: Vec<(String, String)> = hook
        .payloads()
        .iter()
        .map(|p| {
            (
                p["event_group"].as_str().unwrap().to_owned(),
                p["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "exactly one payload per threshold");
    assert_eq!(alerts.len(), 6);
    let key_alert = hook
        .payloads()
        .into_iter()
        .find(|p| p["rule"] == "budget_100" && p["event_group"] == "key")
        .unwrap();
    assert_eq!(key_alert["key_id"], key_id, "{key_alert}");
    assert_eq!(key_alert["spend"], 1000, "{key_alert}");
    let global = hook
        .payloads()
        .into_iter()
        .find(|p| p["rule"] == "budget_100" && p["event_group"] == "proxy")
        .unwrap();
    assert_eq!(global["spend"], 2000, "{global}");
    // The period of the process's clock, not of the wall clock's today.
    let period = global["period"].as_str().unwrap();
    assert!(period.starts_with("day:203103"), "{global}");
}
