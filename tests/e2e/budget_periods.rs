//! Budgets that reset every day, week or month in the configured time zone, on the real binary
//! and the mock: the clock of each process is set with the test-only `CONSOLE_TEST_NOW`, so a
//! month boundary in Shanghai is crossed by starting the next process on the same database at
//! the next month's first minute (the live crossing inside one process is covered by the unit
//! tests of `keys::budget`, with a clock moved by hand).

use serde_json::{json, Value};

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
