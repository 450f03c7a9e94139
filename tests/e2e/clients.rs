//! Real clients as first-class citizens, against the real binary and the mock upstream: one
//! meaning of tokens across protocols (Claude Code's cache-heavy usage counted and charged in
//! full), `count_tokens` apart from calls and from the RPM limit, streams cut before their final
//! event flagged, zero usage treated as missing, the Responses WebSocket upgrade refused with 426,
//! the client family and session id recorded and filterable, and the end user, provider and
//! source recorded with every call.

use crate::common::*;
use crate::gateway_support::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway call with extra headers; returns (status, body text).
async fn send(
    server: &Server,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn messages(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 20, "stream": stream,
        "messages": [{"role": "user", "content": "fix the failing test"}]})
}

async fn key_used_tokens(server: &Server, id: i64) -> u64 {
    let keys = server.data("/api/console/keys").await;
    let key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap()
        .clone();
    key["used_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn claude_code_cache_tokens_are_counted_and_charged_stream_and_not() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("claude-code").await;
    // Two Claude Code turns fit in this budget only if cache tokens are left out.
    patch_key(&server, id, json!({"token_limit": 40_000})).await;
    for (n, stream) in [false, true].into_iter().enumerate() {
        let (status, raw) = send(
            &server,
            "/v1/messages",
            &key,
            &[],
            &messages("mock-claude-code-usage", stream),
        )
        .await;
        assert_eq!(status, 200, "{raw}");
        let row = newest_row(&server, n as u64 + 1).await;
        // 4 input + 30,000 cache read + 5,000 cache write; 12 output.
        assert_eq!(
            row_tokens(&row),
            [35_004, 12, 30_000, 5_000, 0, 35_016],
            "stream={stream}: {row}"
        );
        assert_eq!(row["estimated"], false, "{row}");
        assert_eq!(key_used_tokens(&server, id).await, 35_016 * (n as u64 + 1));
    }
    let stats = server
        .data(&format!("/api/console/stats?key_id={id}"))
        .await;
    assert_eq!(stats["used_tokens"], 70_032);
    assert_eq!(stats["prompt_tokens"], 70_008);
    assert_eq!(stats["remaining_tokens"], 0);
    // The budget was charged the whole 70,032 (the mock's prompt is tiny, so the reservations
    // were far smaller: the overdraft reaches the shared ledger at its next tick). A turn is then
    // refused, in Anthropic's terms.
    let body = wait_until("a refusal of the spent key budget", || async {
        let (status, raw) = send(
            &server,
            "/v1/messages",
            &key,
            &[],
            &messages("mock-claude-code-usage", false),
        )
        .await;
        (status != 200).then(|| {
            assert_eq!(status, 400, "{raw}");
            serde_json::from_str::<Value>(&raw).unwrap()
        })
    })
    .await;
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"claude-code\"'s token budget"),
        "{body}"
    );
}

#[tokio::test]
async fn count_tokens_is_not_a_call_and_spends_no_rpm() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("context").await;
    patch_key(&server, id, json!({"rpm_limit": 10})).await;
    let body = json!({"model": "claude-3-haiku",
        "messages": [{"role": "user", "content": "how big is my context"}]});
    for n in 0..20 {
        let (status, raw) = send(&server, "/v1/messages/count_tokens", &key, &[], &body).await;
        assert_eq!(status, 200, "count_tokens call {n}: {raw}");
        let answer: Value = serde_json::from_str(&raw).unwrap();
        assert!(answer["input_tokens"].as_u64().unwrap() > 0, "{answer}");
    }
    // The RPM window is untouched: ten real calls still go through, the eleventh does not.
    for n in 0..10 {
        let (status, raw) = send(
            &server,
            "/v1/messages",
            &key,
            &[],
            &messages("claude-3-haiku", false),
        )
        .await;
        assert_eq!(status, 200, "call {n}: {raw}");
    }
    let (status, _) = send(
        &server,
        "/v1/messages",
        &key,
        &[],
        &messages("claude-3-haiku", false),
    )
    .await;
    assert_eq!(status, 429);
    let rows = settle(&server, 11).await;
    assert_eq!(rows.len(), 11 + 20, "count_tokens calls are recorded too");
    let stats = server.data("/api/console/stats").await;
    assert_eq!(stats["api_call_count"], 12, "{stats}");
    assert_eq!(stats["count_tokens_calls"], 20, "{stats}");
    assert_eq!(stats["success_count"], 10, "{stats}");
    let counted = server.logs("kind=count_tokens&limit=1000").await;
    assert_eq!(counted.len(), 20);
    assert!(counted
        .iter()
        .all(|r| r["endpoint"] == "/v1/messages/count_tokens" && r["tokens"] == 0));
    let calls = server.logs("kind=call&limit=1000").await;
    assert_eq!(calls.len(), 12);
    assert!(calls
        .iter()
        .all(|r| r["endpoint"] != "/v1/messages/count_tokens"));
    let (status, answer) = server.get("/api/console/logs?kind=everything").await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn streams_ending_without_their_final_event_are_flagged_and_estimated() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("cut-off").await;
    let text = "a stream the provider never finishes";
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "mock-end-early", "stream": true, "max_tokens": 20,
                "messages": [{"role": "user", "content": text}]}),
            "[DONE]",
        ),
        (
            "/v1/completions",
            json!({"model": "mock-end-early", "stream": true, "max_tokens": 20, "prompt": text}),
            "[DONE]",
        ),
        (
            "/v1/messages",
            json!({"model": "mock-end-early", "stream": true, "max_tokens": 20,
                "messages": [{"role": "user", "content": text}]}),
            "message_stop",
        ),
        (
            "/v1/responses",
            json!({"model": "mock-end-early", "stream": true, "max_output_tokens": 20,
                "input": text}),
            "response.completed",
        ),
    ];
    for (n, (path, body, end)) in cases.iter().enumerate() {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", server.url))
            .bearer_auth(&key)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}: the status the client got");
        let raw = r.text().await.unwrap();
        assert!(raw.contains("tok0") && !raw.contains(end), "{path}: {raw}");
        let row = newest_row(&server, n as u64 + 1).await;
        assert_eq!(row["endpoint"], *path);
        assert_eq!(row["status"], 200, "{row}");
        let error = row["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("ended without its final event") && error.contains(end),
            "{path}: {row}"
        );
        assert_eq!(row["estimated"], true, "{path}: {row}");
        let [prompt, completion, .., total] = row_tokens(&row);
        assert!(prompt > 0 && completion > 0, "{path}: {row}");
        assert_eq!(total, prompt + completion);
    }
    // A complete stream has no error.
    let body = Proto::Anthropic.body("claude-3-haiku", text, 5, true);
    let (status, _) = send(&server, "/v1/messages", &key, &[], &body).await;
    assert_eq!(status, 200);
    let row = newest_row(&server, cases.len() as u64 + 1).await;
    assert_eq!(row["error"], Value::Null, "{row}");
}

#[tokio::test]
async fn zero_usage_with_an_answer_is_estimated() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("zero").await;
    let text = "this answer comes with a usage of nothing at all";
    let cases = BOTH_AND_STREAMED;
    for (n, (proto, stream)) in cases.into_iter().enumerate() {
        let body = proto.body("mock-zero-usage", text, 8, stream);
        let r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(r.status(), 200);
        let raw = r.text().await.unwrap();
        assert!(raw.contains("tok0"), "the answer has content: {raw}");
        let row = newest_row(&server, n as u64 + 1).await;
        assert_eq!(row["estimated"], true, "{proto:?} stream={stream}: {row}");
        let [prompt, completion, .., total] = row_tokens(&row);
        assert!(
            prompt > 0 && completion > 0,
            "{proto:?} stream={stream}: {row}"
        );
        assert_eq!(total, prompt + completion);
    }
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from a raw connection.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed early: {bytes:?}");
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("a Content-Length");
        if body.len() >= length {
            return (head.to_owned(), body[..length].to_owned());
        }
    }
}

#[tokio::test]
async fn responses_websocket_upgrade_is_answered_426_at_once() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("codex").await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "GET /v1/responses HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nOpenAI-Beta: responses_websockets=2026-02-04\r\n\
         User-Agent: codex_cli_rs/0.171.0\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 426"), "{head}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "websocket_not_supported", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POST /v1/responses"),
        "{body}"
    );
    assert_eq!(
        mock.stats().await["requests"],
        0,
        "nothing reached the provider"
    );
    let row = newest_row(&server, 1).await;
    assert_eq!(
        (&row["method"], &row["endpoint"], &row["status"]),
        (&json!("GET"), &json!("/v1/responses"), &json!(426))
    );
    assert_eq!(
        (&row["key_id"], &row["client"]),
        (&json!(id), &json!("codex"))
    );
    // A plain GET is still the recorded 405.
    let r = reqwest::get(format!("{}/v1/responses", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

/// A call's extra headers, and the client family and session id it should be recorded with.
type ClientCall<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<&'a str>);

#[tokio::test]
async fn clients_and_sessions_are_recorded_and_filter_the_logs() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("everyone").await;
    let long_session = "s".repeat(500);
    let calls: [ClientCall<'_>; 5] = [
        (
            &[
                ("user-agent", "claude-cli/2.1.3 (external, cli)"),
                ("x-claude-code-session-id", "cc-session-1"),
            ],
            "claude-cli",
            Some("cc-session-1"),
        ),
        (
            &[
                ("user-agent", "codex_cli_rs/0.171.0 (Ubuntu 24.4.0; x86_64)"),
                ("session_id", "codex-session-2"),
            ],
            "codex",
            Some("codex-session-2"),
        ),
        (
            &[("user-agent", "curl/8.5.0"), ("session_id", &long_session)],
            "curl",
            Some(&long_session[..128]),
        ),
        (
            &[("user-agent", "<script>alert(1)</script>")],
            "other",
            None,
        ),
        (&[], "", None),
    ];
    let live = reqwest::Client::new()
        .get(format!(
            "{}/api/console/logs/stream?client=codex",
            server.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    for (headers, _, _) in &calls {
        let (status, raw) = send(
            &server,
            "/v1/messages",
            &key,
            headers,
            &messages("claude-3-haiku", false),
        )
        .await;
        assert_eq!(status, 200, "{raw}");
    }
    let rows = settle(&server, calls.len() as u64).await;
    for (row, (_, client, session)) in rows.iter().rev().zip(&calls) {
        assert_eq!(row["client"], *client, "{row}");
        assert_eq!(row["session_id"], json!(session), "{row}");
    }
    for (query, want) in [
        ("client=codex", vec!["codex"]),
        ("client=claude-cli", vec!["claude-cli"]),
        ("session_id=cc-session-1", vec!["claude-cli"]),
        ("client=other", vec!["other"]),
        ("client=codex&session_id=cc-session-1", vec![]),
    ] {
        let got: Vec<String> = server
            .logs(query)
            .await
            .iter()
            .map(|r| r["client"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "{query}");
    }
    // The live log passes on only the codex call.
    let mut live = live;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = live.chunk().await.unwrap().expect("the live log goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let event = text.split("\n\n").next().unwrap();
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("{event}"));
    let row: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (&row["client"], &row["session_id"]),
        (&json!("codex"), &json!("codex-session-2"))
    );
}

/// A call's path, extra headers and body, and the end user and provider it should be recorded with.
type UserCall<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Value,
    Option<&'a str>,
    &'a str,
);

#[tokio::test]
async fn end_users_providers_and_sources_are_recorded() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("users").await;
    let long = "u".repeat(300);
    let chat = |extra: Value| {
        let mut body = json!({"model": "gpt-4o-mini", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    let claude = |user_id: &str| {
        let mut body = messages("claude-3-haiku", false);
        body["metadata"] = json!({ "user_id": user_id });
        body
    };
    let uuid = "0e5b1c1e-63a4-4a4c-9f0d-0c6f5c3f4f8e";
    let code_user = format!("user_{}_account_{uuid}", "ab".repeat(32));
    let calls: Vec<UserCall<'_>> = vec![
        (
            "/v1/chat/completions",
            vec![],
            chat(json!({"user": "alice"})),
            Some("alice"),
            "mock-openai",
        ),
        (
            "/v1/chat/completions",
            vec![],
            chat(json!({"user": "old", "safety_identifier": "bob"})),
            Some("bob"),
            "mock-openai",
        ),
        (
            "/v1/chat/completions",
            vec![("x-token-console-user", "carol")],
            chat(json!({"user": "alice"})),
            Some("carol"),
            "mock-openai",
        ),
        (
            "/v1/messages",
            vec![],
            claude(&format!("{code_user}_session_{uuid}")),
            Some(&code_user),
            "mock-anthropic",
        ),
        (
            "/v1/chat/completions",
            vec![],
            chat(json!({"user": long})),
            Some(&long[..128]),
            "mock-openai",
        ),
        (
            "/v1/chat/completions",
            vec![],
            chat(json!({})),
            None,
            "mock-openai",
        ),
        // Refused before a provider was chosen: no provider, the user still recorded.
        (
            "/v1/chat/completions",
            vec![("x-token-console-user", "dave")],
            json!({"messages": []}),
            Some("dave"),
            "",
        ),
    ];
    for (path, headers, body, _, _) in &calls {
        send(&server, path, &key, headers, body).await;
    }
    let rows = settle(&server, calls.len() as u64).await;
    for (row, (_, _, _, user, provider)) in rows.iter().rev().zip(&calls) {
        assert_eq!(
            (&row["user"], &row["provider"], &row["source"]),
            (&json!(user), &json!(provider), &json!("gateway")),
            "{row}"
        );
    }
    // The header is the gateway's own: it never reaches the provider.
    let requests = json!(mock.requests().await).to_string();
    assert!(requests.contains("anthropic-version"), "{requests}");
    assert!(!requests.contains("x-token-console-user"), "{requests}");
}

#[tokio::test]
async fn reasoning_effort_and_service_tier_are_recorded_as_asked() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("options").await;
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 5, "reasoning_effort": "high",
        "service_tier": "flex", "messages": [{"role": "user", "content": "hi"}]});
    let responses = json!({"model": "gpt-4o-mini", "max_output_tokens": 5, "input": "hi",
        "reasoning": {"effort": "low", "summary": "auto"}, "service_tier": "priority"});
    let mut claude = messages("claude-3-haiku", false);
    claude["service_tier"] = json!("standard_only");
    // (path, body, reasoning effort, service tier)
    let calls = [
        ("/v1/chat/completions", chat, Some("high"), Some("flex")),
        ("/v1/responses", responses, Some("low"), Some("priority")),
        ("/v1/messages", claude, None, Some("standard_only")),
        (
            "/v1/messages",
            messages("claude-3-haiku", false),
            None,
            None,
        ),
    ];
    for (path, body, _, _) in &calls {
        let (status, raw) = send(&server, path, &key, &[], body).await;
        assert_eq!(status, 200, "{path}: {raw}");
    }
    let rows = settle(&server, calls.len() as u64).await;
    for (row, (path, _, effort, tier)) in rows.iter().rev().zip(&calls) {
        assert_eq!(
            (
                &row["reasoning_effort"],
                &row["service_tier"],
                &row["alias"]
            ),
            (&json!(effort), &json!(tier), &Value::Null),
            "{path}: {row}"
        );
    }
}
