//! Money budgets on the real binary and the mock: the global `quota.total_cost` and a key's
//! `cost_limit` are reserved before forwarding from the most a call can cost (its token bound at
//! the model's highest prices), settled with its real cost, and never exceeded in a race; a
//! model without a known price is refused while a money budget applies.

use serde_json::{json, Value};

use crate::common::{call, providers_yaml, tempdir, Mock, Server};

const CHAT: &str = "/v1/chat/completions";
/// Prices of the mock's byte-counting model, USD per million tokens: 1,000 and 2,000
/// nano-dollars a token.
const PRICES: &str =
    "pricing:\n  models:\n    - match: \"mock-byte-tokens\"\n      input: 1\n      output: 2\n";
const INPUT_NANOS: u64 = 1_000;
const OUTPUT_NANOS: u64 = 2_000;

/// A call the mock counts at one token per byte. Returns the body, the most it can cost (the
/// gateway's prompt bound — the body's bytes + 4 + 3 — at the input price, `max_tokens` at the
/// output price) and what it costs (10 + the text's bytes of input, `max_tokens` of output).
fn priced_chat() -> (Value, u64, u64) {
    let text = "money budget race ".repeat(50);
    let body = json!({"model": "mock-byte-tokens", "max_tokens": 20, "messages": [{"role": "user", "content": text}]});
    let bytes = serde_json::to_vec(&body).unwrap().len() as u64;
    let most = (bytes + 4 + 3) * INPUT_NANOS + 20 * OUTPUT_NANOS;
    let cost = (10 + text.len() as u64) * INPUT_NANOS + 20 * OUTPUT_NANOS;
    (body, most, cost)
}

/// Nano-dollars as the decimal USD a configuration or a PATCH takes.
fn usd(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_money_budget_race_forwards_at_most_what_fits_and_never_overspends() {
    let mock = Mock::start();
    let (body, most, cost) = priced_chat();
    let room = 3;
    let budget = room * most;
    let global = format!(
        "quota:\n  total_cost: {}\n  limit_period: month\n",
        usd(budget)
    );
    for (extra, key_limit) in [(global.as_str(), false), ("", true)] {
        let dir = tempdir();
        let yaml = format!("{extra}{PRICES}{}", providers_yaml(&mock.url));
        let server = Server::start(dir.path(), &yaml);
        let (id, key) = server.create_key("spender").await;
        if key_limit {
            let patch = format!("{{\"cost_limit\": {}}}", usd(budget));
            let patch: Value = serde_json::from_str(&patch).unwrap();
            let (status, answer) = server
                .patch(&format!("/api/console/keys/{id}"), &patch)
                .await;
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["data"]["cost_limit_nanos"], budget, "{answer}");
        }
        let before = mock.stats().await["by_path"][CHAT].as_u64().unwrap_or(0);
        let client = reqwest::Client::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let request = client
                .post(format!("{}{CHAT}", server.url))
                .bearer_auth(&key)
                .json(&body);
            tasks.spawn(async move {
                let r = request.send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            });
        }
        let mut ok = 0;
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                (200, _) => ok += 1,
                (429, answer) => {
                    assert_eq!(answer["error"]["code"], "insufficient_quota", "{answer}");
                    let message = answer["error"]["message"].as_str().unwrap();
                    assert!(message.contains("money budget"), "{message}");
                }
                (status, answer) => panic!("unexpected {status}: {answer}"),
            }
        }
        eprintln!("{ok} of 50 answered with room for {room} ({extra:?})");
        assert!((1..=room).contains(&ok), "{ok} calls answered");
        let forwarded = mock.stats().await["by_path"][CHAT].as_u64().unwrap() - before;
        assert_eq!(forwarded, ok, "only admitted calls reach the provider");
        let stats = server.wait_for_calls(50).await;
        assert_eq!(stats["total_cost_nanos"], ok * cost, "{stats}");
        assert!(ok * cost <= budget);
        if key_limit {
            let keys = server.data("/api/console/keys").await;
            let view = keys
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["id"] == id)
                .unwrap()
                .clone();
            assert_eq!(view["cost_nanos"], ok * cost, "{view}");
        } else {
            assert_eq!(
                stats["cost_limit"].as_f64(),
                Some(budget as f64 / 1e9),
                "{stats}"
            );
        }
        // Spent: the refusal is in each client's protocol, naming the money budget.
        let anthropic = json!({"model": "mock-byte-tokens", "max_tokens": 20, "messages": [{"role": "user", "content": "x ".repeat(3000)}]});
        let r = reqwest::Client::new()
            .post(format!("{}/v1/messages", server.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "Anthropic's shape for a spent account");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("money budget"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn a_model_without_a_price_is_refused_under_a_money_budget_only() {
    let mock = Mock::start();
    let dir = tempdir();
    let server = Server::start(
        dir.path(),
        &format!("{PRICES}{}", providers_yaml(&mock.url)),
    );
    let (id, key) = server.create_key("careful").await;
    let (_, free) = server.create_key("free").await;
    let (status, answer) = server
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"cost_limit": -1}),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["msg"].as_str().unwrap().contains("cost_limit"),
        "{answer}"
    );
    let (status, _) = server
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"cost_limit": 5}),
        )
        .await;
    assert_eq!(status, 200);
    let unpriced = json!({"model": "mock-unpriced-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&server.url, CHAT, &key, &unpriced).await;
    assert_eq!(r.status(), 403);
    let answer: Value = r.json().await.unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no known price") && message.contains("money budget"),
        "{message}"
    );
    // Without a money budget the same call goes through, recorded as unpriced.
    assert_eq!(
        call(&server.url, CHAT, &free, &unpriced).await.status(),
        200
    );
    assert_eq!(mock.stats().await["by_path"][CHAT].as_u64(), Some(1));
    // Clearing the limit lets the careful key call it too.
    let (status, answer) = server
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"cost_limit": null}),
        )
        .await;
    assert_eq!(
        (status, &answer["data"]["cost_limit"]),
        (200, &Value::Null),
        "{answer}"
    );
    assert_eq!(call(&server.url, CHAT, &key, &unpriced).await.status(), 200);
}
