//! Every error the gateway answers itself (and upstream errors it passes through), on the OpenAI
//! and the Anthropic routes: the status, the protocol's error shape, and exactly one recorded row
//! with that status, against the real binary and the mock upstream.

use crate::common::*;
use crate::gateway_support::*;
use serde_json::{json, Value};

const TEXT: &str = "budget test words";

/// Sends the protocol's call, checks the status and error shape, and returns (type, code, body).
async fn expect_error(
    server: &Server,
    proto: Proto,
    auth: Auth<'_>,
    model: &str,
    status: u16,
) -> (String, Value, reqwest::header::HeaderMap) {
    let (got, headers, body) = ask(server, proto, auth, model, TEXT).await;
    assert_eq!(got, status, "{proto:?} {model}: {body}");
    let (kind, _) = assert_error_shape(proto, &body);
    let code = body["error"]["code"].clone();
    (kind, code, headers)
}

async fn expect_ok(server: &Server, proto: Proto, auth: Auth<'_>, model: &str) -> Value {
    let (status, _, body) = ask(server, proto, auth, model, TEXT).await;
    assert_eq!(status, 200, "{proto:?} {model}: {body}");
    body
}

/// Checks a refused call's row: the key it was made with (or none), no tokens, a message.
fn assert_refused_row(row: &Value, key_id: Option<i64>) {
    assert_eq!(row["key_id"], json!(key_id), "{row}");
    if key_id.is_none() {
        assert_eq!(row["key_name"], Value::Null, "{row}");
    }
    assert_eq!(row["tokens"], 0, "a refused call spends nothing: {row}");
    assert!(
        row["error"].as_str().is_some_and(|e| !e.is_empty()),
        "the row says why: {row}"
    );
}

async fn mock_requests(mock: &Mock) -> u64 {
    mock.stats().await["requests"].as_u64().unwrap()
}

fn start(mock: &Mock, extra_yaml: &str) -> (tempfile::TempDir, Server) {
    let dir = tempdir();
    let yaml = format!("{}{extra_yaml}", providers_yaml(&mock.url));
    let server = Server::start(dir.path(), &yaml);
    (dir, server)
}

/// The `token_console_unauthenticated_requests_total` counter of `/metrics`.
async fn unauthenticated_count(server: &Server) -> u64 {
    let text = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("token_console_unauthenticated_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn missing_key_is_401_counted_not_recorded() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    for proto in BOTH {
        let (kind, code, _) = expect_error(&server, proto, Auth::None, "gpt-4o", 401).await;
        match proto {
            Proto::OpenAi => assert_eq!(code, "invalid_api_key"),
            Proto::Anthropic => assert_eq!(kind, "authentication_error"),
        }
    }
    let rows = settle(&server, 0).await;
    assert!(
        rows.is_empty(),
        "calls without a key are not recorded: {rows:#?}"
    );
    assert_eq!(unauthenticated_count(&server).await, 2, "but counted");
    assert_eq!(
        mock_requests(&mock).await,
        0,
        "nothing reached the provider"
    );
}

#[tokio::test]
async fn unknown_key_is_401_counted_not_recorded() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let forged = format!("sk-tc-{}", "A".repeat(40));
    for proto in BOTH {
        let (kind, code, _) =
            expect_error(&server, proto, proto.auth(&forged), "gpt-4o", 401).await;
        match proto {
            Proto::OpenAi => assert_eq!(code, "invalid_api_key"),
            Proto::Anthropic => assert_eq!(kind, "authentication_error"),
        }
    }
    let rows = settle(&server, 0).await;
    assert!(
        rows.is_empty(),
        "calls with an unknown key are not recorded: {rows:#?}"
    );
    assert_eq!(unauthenticated_count(&server).await, 2, "but counted");
    assert_eq!(mock_requests(&mock).await, 0);
}

#[tokio::test]
async fn deleted_key_is_401_on_the_next_request() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("soon-gone").await;
    for proto in BOTH {
        expect_ok(&server, proto, proto.auth(&key), "gpt-4o").await;
    }
    let (status, body) = server.delete(&format!("/api/console/keys/{id}")).await;
    assert_eq!(status, 200, "{body}");
    for proto in BOTH {
        expect_error(&server, proto, proto.auth(&key), "gpt-4o", 401).await;
    }
    let rows = settle(&server, 2).await;
    for proto in BOTH {
        assert_eq!(one_row(&rows, proto.path(), 200)["key_id"], id);
    }
    assert_eq!(
        unauthenticated_count(&server).await,
        2,
        "the deleted key's calls are counted as unauthenticated"
    );
    assert_eq!(
        mock_requests(&mock).await,
        2,
        "only the calls before the delete"
    );
}

#[tokio::test]
async fn disabled_key_is_403_until_enabled_again() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("paused").await;
    patch_key(&server, id, json!({"enabled": false})).await;
    for proto in BOTH {
        let (kind, code, _) = expect_error(&server, proto, proto.auth(&key), "gpt-4o", 403).await;
        assert_eq!(kind, "permission_error");
        if proto == Proto::OpenAi {
            assert_eq!(code, "permission_denied");
        }
    }
    assert_eq!(mock_requests(&mock).await, 0);
    patch_key(&server, id, json!({"enabled": true})).await;
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    let rows = settle(&server, 3).await;
    for proto in BOTH {
        let row = one_row(&rows, proto.path(), 403);
        assert_refused_row(&row, Some(id));
        assert_eq!(row["key_name"], "paused");
    }
}

#[tokio::test]
async fn expired_key_is_403() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("expired").await;
    patch_key(&server, id, json!({"expires_at": "2000-01-01T00:00:00Z"})).await;
    for proto in BOTH {
        let (_, _, _) = expect_error(&server, proto, proto.auth(&key), "gpt-4o", 403).await;
    }
    let rows = settle(&server, 2).await;
    for proto in BOTH {
        let row = one_row(&rows, proto.path(), 403);
        assert_refused_row(&row, Some(id));
        assert!(row["error"].as_str().unwrap().contains("expired"), "{row}");
    }
    assert_eq!(mock_requests(&mock).await, 0);
}

#[tokio::test]
async fn model_outside_the_keys_allowed_list_is_403() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("gpt-only").await;
    patch_key(&server, id, json!({"allowed_models": ["gpt-*"]})).await;
    for proto in BOTH {
        let (kind, _, _) =
            expect_error(&server, proto, proto.auth(&key), "claude-3-haiku", 403).await;
        assert_eq!(kind, "permission_error");
    }
    assert_eq!(mock_requests(&mock).await, 0);
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    let rows = settle(&server, 3).await;
    for proto in BOTH {
        let row = one_row(&rows, proto.path(), 403);
        assert_refused_row(&row, Some(id));
        assert_eq!(row["model"], "claude-3-haiku");
    }
    assert_eq!(
        one_row(&rows, "/v1/chat/completions", 200)["model"],
        "gpt-4o"
    );
}

#[tokio::test]
async fn model_no_provider_serves_is_404() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!(
        "providers:\n  - {{ name: only-gpt, kind: openai, base_url: \"{}/v1\", api_key: \"{PROVIDER_KEY}\", models: [\"gpt-*\"] }}\n",
        mock.url
    );
    let server = Server::start(dir.path(), &yaml);
    let (id, key) = server.create_key("router").await;
    let (kind, code, _) = expect_error(
        &server,
        Proto::OpenAi,
        Auth::Bearer(&key),
        "claude-3-haiku",
        404,
    )
    .await;
    assert_eq!(
        (kind.as_str(), code),
        ("invalid_request_error", json!("model_not_found"))
    );
    // An OpenAI provider serves gpt-*, but nothing speaks the Anthropic protocol.
    let (kind, _, _) = expect_error(
        &server,
        Proto::Anthropic,
        Auth::XApiKey(&key),
        "gpt-4o",
        404,
    )
    .await;
    assert_eq!(kind, "not_found_error");
    let rows = settle(&server, 2).await;
    let row = one_row(&rows, "/v1/chat/completions", 404);
    assert_refused_row(&row, Some(id));
    // Models no provider serves are grouped under one name; the error names the model.
    assert_eq!(row["model"], "(unrouted)");
    assert!(row["error"]
        .as_str()
        .unwrap()
        .contains("\"claude-3-haiku\""));
    let row = one_row(&rows, "/v1/messages", 404);
    assert_eq!(row["model"], "(unrouted)");
    assert!(row["error"].as_str().unwrap().contains("\"gpt-4o\""));
    assert_eq!(mock_requests(&mock).await, 0);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("sloppy").await;
    for proto in BOTH {
        let r = post_raw(
            &server.url,
            proto.path(),
            proto.auth(&key),
            br#"{"model": "gpt-4o", "messages": [{"role": "us"#.to_vec(),
        )
        .await;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        let (kind, _) = assert_error_shape(proto, &body);
        assert_eq!(kind, "invalid_request_error");
    }
    let rows = settle(&server, 2).await;
    for proto in BOTH {
        assert_refused_row(&one_row(&rows, proto.path(), 400), Some(id));
    }
    assert_eq!(mock_requests(&mock).await, 0);
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413_with_or_without_a_length() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "max_body_bytes: 1000\n");
    let (id, key) = server.create_key("verbose").await;
    let long = "word ".repeat(400);
    for proto in BOTH {
        let body = serde_json::to_vec(&proto.body("gpt-4o", &long, 20, false)).unwrap();
        assert!(body.len() > 1000);
        // Declared length.
        let r = post_raw(&server.url, proto.path(), proto.auth(&key), body.clone()).await;
        assert_eq!(r.status(), 413);
        assert_error_shape(proto, &r.json().await.unwrap());
        // Chunked, no declared length: the limit still holds while reading.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(100).map(|c| Ok(c.to_vec())).collect();
        let r = reqwest::Client::new()
            .post(format!("{}{}", server.url, proto.path()))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert_error_shape(proto, &r.json().await.unwrap());
    }
    // Just under the limit is served.
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    let rows = settle(&server, 5).await;
    for proto in BOTH {
        let refused: Vec<&Value> = rows
            .iter()
            .filter(|r| r["endpoint"] == proto.path() && r["status"] == 413)
            .collect();
        assert_eq!(refused.len(), 2, "{rows:#?}");
        refused.iter().for_each(|r| assert_refused_row(r, Some(id)));
    }
    assert_eq!(mock_requests(&mock).await, 1);
}

/// The status a spent budget is refused with: OpenAI's `429 insufficient_quota`; on the
/// Anthropic protocol the non-retryable `400 invalid_request_error` Anthropic sends for a spent
/// account (Anthropic clients retry any 429 for minutes).
fn budget_refusal(proto: Proto) -> u16 {
    match proto {
        Proto::OpenAi => 429,
        Proto::Anthropic => 400,
    }
}

/// Checks the refusal of a spent budget in each protocol, and that its message names `budget`.
async fn expect_budget_refusal(server: &Server, proto: Proto, key: &str, budget: &str) {
    let (status, headers, body) = ask(server, proto, proto.auth(key), "gpt-4o", TEXT).await;
    assert_eq!(status, budget_refusal(proto), "{proto:?}: {body}");
    let (kind, message) = assert_error_shape(proto, &body);
    match proto {
        Proto::OpenAi => {
            assert_eq!(
                (kind.as_str(), &body["error"]["code"]),
                ("insufficient_quota", &json!("insufficient_quota"))
            );
        }
        Proto::Anthropic => assert_eq!(kind, "invalid_request_error", "{body}"),
    }
    assert!(message.contains(budget), "{message}");
    assert!(
        headers.get("retry-after").is_none(),
        "a spent budget does not invite a retry"
    );
}

#[tokio::test]
async fn global_budget_used_up_is_refused_in_each_protocols_terms() {
    let mock = Mock::start();
    // A budget of exactly one call's reservation (its body's bytes + 4 + 3 + 20): the call uses
    // 13 + 20 = 33, so a second cannot fit in what is left.
    let budget = reservation(&Proto::OpenAi.body("gpt-4o", TEXT, 20, false));
    let (_dir, server) = start(&mock, &format!("quota:\n  total_tokens: {budget}\n"));
    let (id, key) = server.create_key("spender").await;
    let first = expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    assert_eq!(
        first["usage"]["total_tokens"],
        mock_prompt(TEXT) + mock_completion(20)
    );
    for proto in BOTH {
        expect_budget_refusal(&server, proto, &key, "the gateway's token budget").await;
    }
    let rows = settle(&server, 3).await;
    for proto in BOTH {
        assert_refused_row(
            &one_row(&rows, proto.path(), budget_refusal(proto)),
            Some(id),
        );
    }
    assert_eq!(
        mock_requests(&mock).await,
        1,
        "the refused calls never left"
    );
    let stats = server.data("/api/console/stats").await;
    assert_eq!(stats["used_tokens"], 33);
    assert_eq!(stats["total_tokens"], budget);
}

#[tokio::test]
async fn key_token_limit_used_up_is_refused_for_that_key_only() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("limited").await;
    let (_, other) = server.create_key("unlimited").await;
    let limit = reservation(&Proto::OpenAi.body("gpt-4o", TEXT, 20, false));
    patch_key(&server, id, json!({"token_limit": limit})).await;
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    for proto in BOTH {
        expect_budget_refusal(&server, proto, &key, "\"limited\"'s token budget").await;
    }
    expect_ok(
        &server,
        Proto::Anthropic,
        Auth::XApiKey(&other),
        "claude-3-haiku",
    )
    .await;
    let rows = settle(&server, 4).await;
    for proto in BOTH {
        assert_refused_row(
            &one_row(&rows, proto.path(), budget_refusal(proto)),
            Some(id),
        );
    }
    assert_eq!(mock_requests(&mock).await, 2);
    let keys = server.data("/api/console/keys").await;
    let limited = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert_eq!(limited["used_tokens"], 33);
}

#[tokio::test]
async fn rpm_limit_is_429_with_retry_after() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("chatty").await;
    patch_key(&server, id, json!({"rpm_limit": 2})).await;
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    expect_ok(
        &server,
        Proto::Anthropic,
        Auth::XApiKey(&key),
        "claude-3-haiku",
    )
    .await;
    for proto in BOTH {
        let (kind, code, headers) =
            expect_error(&server, proto, proto.auth(&key), "gpt-4o", 429).await;
        match proto {
            Proto::OpenAi => assert_eq!(code, "rate_limit_exceeded"),
            Proto::Anthropic => assert_eq!(kind, "rate_limit_error"),
        }
        let retry_after: u64 = headers
            .get("retry-after")
            .expect("a Retry-After header")
            .to_str()
            .unwrap()
            .parse()
            .expect("Retry-After in whole seconds");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    let rows = settle(&server, 4).await;
    for proto in BOTH {
        assert_refused_row(&one_row(&rows, proto.path(), 429), Some(id));
    }
    assert_eq!(mock_requests(&mock).await, 2);
}

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempdir();
    let server = Server::start(dir.path(), &providers_with(&url, "[\"*\"]", "[\"*\"]", ""));
    let (id, key) = server.create_key("hopeful").await;
    for proto in BOTH {
        expect_error(&server, proto, proto.auth(&key), "gpt-4o", 502).await;
    }
    let rows = settle(&server, 2).await;
    for proto in BOTH {
        let row = one_row(&rows, proto.path(), 502);
        assert_refused_row(&row, Some(id));
        assert!(
            row["error"].as_str().unwrap().contains("mock-"),
            "names the provider: {row}"
        );
    }
}

#[tokio::test]
async fn upstream_slower_than_first_byte_timeout_is_504() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = providers_with(
        &mock.url,
        "[\"*\"]",
        "[\"*\"]",
        "first_byte_timeout_ms: 300",
    );
    let server = Server::start(dir.path(), &yaml);
    let (id, key) = server.create_key("patient").await;
    for proto in BOTH {
        let (kind, _, _) =
            expect_error(&server, proto, proto.auth(&key), "mock-latency-5000", 504).await;
        if proto == Proto::Anthropic {
            assert_eq!(kind, "timeout_error");
        }
    }
    let rows = settle(&server, 2).await;
    for proto in BOTH {
        let row = one_row(&rows, proto.path(), 504);
        assert_refused_row(&row, Some(id));
        assert_eq!(row["model"], "mock-latency-5000");
    }
    assert_eq!(
        mock_requests(&mock).await,
        2,
        "the request did reach the provider"
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("unlucky").await;
    let cases = [
        (Proto::OpenAi, 500),
        (Proto::Anthropic, 500),
        (Proto::OpenAi, 429),
        (Proto::Anthropic, 529),
    ];
    for (proto, code) in cases {
        let r = post(
            &server.url,
            proto.path(),
            proto.auth(&key),
            &proto.body(&format!("mock-error-{code}"), TEXT, 20, false),
        )
        .await;
        assert_eq!(r.status(), code);
        assert_eq!(
            r.headers()["x-mock-error"],
            "1",
            "upstream headers pass through"
        );
        let body: Value = r.json().await.unwrap();
        let message = format!("mock-upstream: simulated error {code}");
        match proto {
            Proto::OpenAi => {
                let kind = if code == 429 {
                    "requests"
                } else {
                    "server_error"
                };
                let err_code = if code == 429 {
                    "rate_limit_exceeded"
                } else {
                    "server_error"
                };
                assert_eq!(
                    body,
                    json!({"error": {"message": message, "type": kind, "param": null, "code": err_code}})
                );
            }
            Proto::Anthropic => {
                let kind = if code == 529 {
                    "overloaded_error"
                } else {
                    "api_error"
                };
                assert_eq!(
                    body,
                    json!({"type": "error", "error": {"type": kind, "message": message}})
                );
            }
        }
    }
    let rows = settle(&server, 4).await;
    for (proto, code) in cases {
        let row = one_row(&rows, proto.path(), code);
        assert_eq!(row["key_id"], id);
        assert_eq!(
            row["error"],
            format!("mock-upstream: simulated error {code}")
        );
    }
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (_, key) = server.create_key("explorer").await;
    let client = reqwest::Client::new();
    let cases = [
        ("POST", "/v1/foo", Proto::OpenAi, 404),
        ("POST", "/v1/messages/foo", Proto::Anthropic, 404),
        ("GET", "/v1/chat/completions", Proto::OpenAi, 405),
        ("GET", "/v1/messages", Proto::Anthropic, 405),
        ("DELETE", "/v1/models", Proto::OpenAi, 405),
    ];
    for (method, path, proto, status) in cases {
        let r = client
            .request(method.parse().unwrap(), format!("{}{path}", server.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        assert_error_shape(proto, &r.json().await.unwrap());
    }
    let rows = settle(&server, cases.len() as u64).await;
    for (method, path, _, status) in cases {
        let row = one_row(&rows, path, status);
        assert_eq!(row["method"], method);
    }
    assert_eq!(mock_requests(&mock).await, 0);
}

#[tokio::test]
async fn upstream_breaking_off_mid_stream_is_502_with_the_tokens_seen() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("unlucky-stream").await;
    for proto in BOTH {
        let body = proto.body("mock-drop-mid-stream", TEXT, 20, true);
        let mut r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(r.status(), 200, "the stream had started");
        let mut seen = String::new();
        let broke = loop {
            match r.chunk().await {
                Ok(Some(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => break false,
                Err(_) => break true,
            }
        };
        assert!(
            broke,
            "the client sees the stream break, not a clean end: {seen}"
        );
        assert!(seen.contains("tok0"), "what arrived was passed on: {seen}");
    }
    let rows = settle(&server, 2).await;
    for proto in BOTH {
        let row = one_row(&rows, proto.path(), 502);
        assert_eq!(row["key_id"], id);
        assert_eq!(row["estimated"], true, "{row}");
        let [prompt, completion, .., total] = row_tokens(&row);
        assert!(
            prompt > 0 && completion > 0,
            "the tokens passed on are counted: {row}"
        );
        assert_eq!(total, prompt + completion);
        if proto == Proto::Anthropic {
            // Anthropic's input_tokens plus the mock's 3 cache-read and 1 cache-write tokens.
            assert_eq!(
                prompt,
                mock_prompt(TEXT) + 4,
                "message_start's exact input: {row}"
            );
        }
    }
    assert_eq!(mock.stats().await["aborted_streams"], 2);
}

/// The key's `used_tokens` as the console lists it.
async fn key_used_tokens(server: &Server, id: i64) -> u64 {
    let keys = server.data("/api/console/keys").await;
    let key = keys.as_array().unwrap().iter().find(|k| k["id"] == id);
    key.unwrap()["used_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn fit_max_tokens_lowers_a_large_max_tokens_to_what_is_left() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("claude-code").await;
    let (strict_id, strict) = server.create_key("strict").await;
    let limit = 3_000;
    patch_key(
        &server,
        id,
        json!({"token_limit": limit, "fit_max_tokens": true}),
    )
    .await;
    patch_key(&server, strict_id, json!({"token_limit": limit})).await;

    // Claude Code reserves 32,000 output tokens per call: far more than the budget.
    let body = Proto::Anthropic.body("claude-3-haiku", TEXT, 32_000, false);
    let prompt_bound = reservation(&body) - 32_000;
    let r = post(&server.url, "/v1/messages", Auth::XApiKey(&key), &body).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = mock.requests().await.pop().unwrap();
    assert_eq!(
        sent["body"]["max_tokens"],
        limit - prompt_bound,
        "the provider was asked for what is left of the budget after the prompt: {sent}"
    );
    assert_eq!(sent["body"]["messages"], body["messages"]);

    // Without the option the same call is refused, as before, and never leaves.
    let r = post(&server.url, "/v1/messages", Auth::XApiKey(&strict), &body).await;
    assert_eq!(r.status(), budget_refusal(Proto::Anthropic));
    assert_eq!(mock_requests(&mock).await, 1);

    // A request without any max_tokens gets the protocol's field, set to what is left now.
    settle(&server, 2).await;
    let used = key_used_tokens(&server, id).await;
    assert!(used > 0 && used <= limit, "{used}");
    let responses = json!({"model": "gpt-4o", "input": TEXT});
    let r = post(&server.url, "/v1/responses", Auth::Bearer(&key), &responses).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = mock.requests().await.pop().unwrap();
    let lowered = sent["body"]["max_output_tokens"].as_u64().unwrap();
    assert!(
        lowered >= 1 && lowered < limit - used,
        "max_output_tokens {lowered} fits in the {} tokens left",
        limit - used
    );
    assert!(sent["body"].get("max_tokens").is_none(), "{sent}");
    assert_eq!(sent["body"]["input"], TEXT);
    // Two calls, the first settle's sentinel, and the Responses call.
    settle(&server, 4).await;
    assert!(key_used_tokens(&server, id).await <= limit);
}

/// A request that names no output limit could spend more than any reservation: under a budget it
/// is forwarded with the limit it was reserved for; without one, as it came.
#[tokio::test]
async fn a_budgeted_request_without_an_output_limit_is_sent_with_the_reserved_one() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, limited) = server.create_key("limited").await;
    let (_, free) = server.create_key("free").await;
    patch_key(&server, id, json!({"token_limit": 1_000_000})).await;
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": TEXT}]}),
            "max_completion_tokens",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o", "input": TEXT}),
            "max_output_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o", "prompt": TEXT}),
            "max_tokens",
        ),
    ];
    for (path, body, field) in cases {
        let r = post(&server.url, path, Auth::Bearer(&limited), &body).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
        let sent = mock.requests().await.pop().unwrap();
        assert_eq!(sent["body"][field], 4096, "{path}: {sent}");
        let others = ["max_tokens", "max_completion_tokens", "max_output_tokens"];
        for other in others.iter().filter(|o| **o != field) {
            assert!(sent["body"].get(*other).is_none(), "{path}: {sent}");
        }
        let r = post(&server.url, path, Auth::Bearer(&free), &body).await;
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
        let sent = mock.requests().await.pop().unwrap();
        assert_eq!(
            sent["body"], body,
            "{path}: without a budget the body goes as it came"
        );
    }
}

#[tokio::test]
async fn fit_max_tokens_refuses_a_prompt_that_alone_does_not_fit() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("tight").await;
    patch_key(
        &server,
        id,
        json!({"token_limit": 20, "fit_max_tokens": true}),
    )
    .await;
    let body = Proto::OpenAi.body("gpt-4o", TEXT, 32_000, false);
    let r = post(
        &server.url,
        "/v1/chat/completions",
        Auth::Bearer(&key),
        &body,
    )
    .await;
    assert_eq!(r.status(), budget_refusal(Proto::OpenAi));
    assert_eq!(mock_requests(&mock).await, 0);
}

#[tokio::test]
async fn fit_max_tokens_never_spends_past_the_budget_in_a_race() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, key) = server.create_key("racer").await;
    let limit = 5_000;
    patch_key(
        &server,
        id,
        json!({"token_limit": limit, "fit_max_tokens": true}),
    )
    .await;
    // One token per byte: each prompt costs about what the gateway reserves for it.
    let text = text_of(600);
    let calls = (0..30).map(|i| {
        let (url, key, text) = (server.url.clone(), key.clone(), text.clone());
        tokio::spawn(async move {
            let model = format!("mock-byte-tokens-{i}");
            let body = Proto::OpenAi.body(&model, &text, 32_000, false);
            post(&url, "/v1/chat/completions", Auth::Bearer(&key), &body)
                .await
                .status()
                .as_u16()
        })
    });
    let mut answered = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            200 => answered += 1,
            status => assert_eq!(status, budget_refusal(Proto::OpenAi)),
        }
    }
    assert!(answered >= 1, "at least the first call fits");
    settle(&server, 30).await;
    let reported = mock.stats().await["reported"]["tokens"].as_u64().unwrap();
    eprintln!("{answered} of 30 racing calls answered, {reported} of {limit} tokens spent");
    assert!(
        reported <= limit,
        "the provider reported {reported} tokens for {answered} answered calls, more than the budget of {limit}"
    );
    assert_eq!(key_used_tokens(&server, id).await, reported);
    for sent in mock.requests().await {
        let max = sent["body"]["max_tokens"].as_u64().unwrap();
        assert!(max < limit, "every forwarded call was lowered: {max}");
    }
}

#[tokio::test]
async fn fit_max_tokens_round_trips_and_must_be_a_boolean() {
    let mock = Mock::start();
    let (_dir, server) = start(&mock, "");
    let (id, _) = server.create_key("setting").await;
    let listed = |keys: Value| {
        let key = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .cloned();
        key.unwrap()["fit_max_tokens"].clone()
    };
    assert_eq!(listed(server.data("/api/console/keys").await), false);
    let (status, answer) = server
        .patch(
            &format!("/api/console/keys/{id}"),
            &json!({"fit_max_tokens": true}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"]["fit_max_tokens"], true);
    assert_eq!(listed(server.data("/api/console/keys").await), true);
    for bad in [json!("yes"), json!(1), Value::Null] {
        let (status, answer) = server
            .patch(
                &format!("/api/console/keys/{id}"),
                &json!({"fit_max_tokens": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    assert_eq!(listed(server.data("/api/console/keys").await), true);
    // Other edits leave it as it is.
    patch_key(&server, id, json!({"rpm_limit": 5})).await;
    assert_eq!(listed(server.data("/api/console/keys").await), true);
}
