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

/// Who the refused call claims to be.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// No key at all.
    NoKey,
    /// A well-formed key the gateway never issued.
    ForgedKey,
    /// A key of its own, changed by this PATCH (JSON) first; `""` leaves it as created.
    Key(&'static str),
}

/// Where the gateway's providers point.
#[derive(Debug, Clone, Copy)]
enum Upstream {
    /// Both protocols at the mock, every model.
    Mock,
    /// Only an OpenAI provider, serving `gpt-*`.
    OnlyGpt,
    /// A port nothing listens on.
    Closed,
    /// The mock, with `first_byte_timeout_ms: 300`.
    Impatient,
}

/// What the refused call leaves in the store.
#[derive(Debug, Clone, Copy)]
enum Recorded {
    /// No row (the caller is unknown), but `token_console_unauthenticated_requests_total` counts it.
    CountedOnly,
    /// One row with the caller's key, no tokens, and an error mentioning this text; `model` is the
    /// row's model when `Some`.
    Row {
        error_mentions: &'static str,
        model: Option<&'static str>,
    },
}

/// One refusal the gateway answers itself, in one protocol: a row of [`REFUSALS`].
#[derive(Debug, Clone, Copy)]
struct Refusal {
    /// What is refused; failure messages name it.
    case: &'static str,
    proto: Proto,
    upstream: Upstream,
    caller: Caller,
    /// Calls of the same key answered before the refused one.
    served_before: u64,
    /// The model the refused call asks for.
    model: &'static str,
    /// Whether the body is cut off mid-JSON.
    malformed: bool,
    /// The answer: status, the protocol's error `type` (unless empty) and, on OpenAI, its `code`
    /// when `Some`.
    status: u16,
    kind: &'static str,
    code: Option<&'static str>,
    /// Whether the answer says when to retry (`Retry-After`, 1 to 60 seconds).
    retry_after: bool,
    recorded: Recorded,
    /// Requests the provider has seen at the end (the calls served before, and the refused
    /// call itself when the refusal comes after forwarding).
    provider_requests: u64,
}

/// The defaults of a [`REFUSALS`] row.
const REFUSED: Refusal = Refusal {
    case: "",
    proto: Proto::OpenAi,
    upstream: Upstream::Mock,
    caller: Caller::Key(""),
    served_before: 0,
    model: "gpt-4o",
    malformed: false,
    status: 0,
    kind: "",
    code: None,
    retry_after: false,
    recorded: Recorded::Row {
        error_mentions: "",
        model: None,
    },
    provider_requests: 0,
};

/// Every refusal of the gateway's own, one row per protocol.
#[rustfmt::skip]
const REFUSALS: &[Refusal] = &[
    Refusal { case: "missing key is 401, counted, not recorded", caller: Caller::NoKey, status: 401,
        code: Some("invalid_api_key"), recorded: Recorded::CountedOnly, ..REFUSED },
    Refusal { case: "missing key is 401, counted, not recorded", proto: Proto::Anthropic, caller: Caller::NoKey,
        status: 401, kind: "authentication_error", recorded: Recorded::CountedOnly, ..REFUSED },
    Refusal { case: "unknown key is 401, counted, not recorded", caller: Caller::ForgedKey, status: 401,
        code: Some("invalid_api_key"), recorded: Recorded::CountedOnly, ..REFUSED },
    Refusal { case: "unknown key is 401, counted, not recorded", proto: Proto::Anthropic, caller: Caller::ForgedKey,
        status: 401, kind: "authentication_error", recorded: Recorded::CountedOnly, ..REFUSED },
    Refusal { case: "disabled key is 403", caller: Caller::Key(r#"{"enabled": false}"#), status: 403,
        kind: "permission_error", code: Some("permission_denied"), ..REFUSED },
    Refusal { case: "disabled key is 403", proto: Proto::Anthropic, caller: Caller::Key(r#"{"enabled": false}"#),
        status: 403, kind: "permission_error", ..REFUSED },
    Refusal { case: "expired key is 403", caller: Caller::Key(r#"{"expires_at": "2000-01-01T00:00:00Z"}"#),
        status: 403, kind: "permission_error",
        recorded: Recorded::Row { error_mentions: "expired", model: None }, ..REFUSED },
    Refusal { case: "expired key is 403", proto: Proto::Anthropic,
        caller: Caller::Key(r#"{"expires_at": "2000-01-01T00:00:00Z"}"#), status: 403, kind: "permission_error",
        recorded: Recorded::Row { error_mentions: "expired", model: None }, ..REFUSED },
    Refusal { case: "model outside the key's allowed list is 403", caller: Caller::Key(r#"{"allowed_models": ["gpt-*"]}"#),
        model: "claude-3-haiku", status: 403, kind: "permission_error",
        recorded: Recorded::Row { error_mentions: "claude-3-haiku", model: Some("claude-3-haiku") }, ..REFUSED },
    Refusal { case: "model outside the key's allowed list is 403", proto: Proto::Anthropic,
        caller: Caller::Key(r#"{"allowed_models": ["gpt-*"]}"#), model: "claude-3-haiku", status: 403,
        kind: "permission_error",
        recorded: Recorded::Row { error_mentions: "claude-3-haiku", model: Some("claude-3-haiku") }, ..REFUSED },
    // Models no provider serves are grouped under one name in the row; the error names the model.
    Refusal { case: "model no provider serves is 404", upstream: Upstream::OnlyGpt, model: "claude-3-haiku",
        status: 404, kind: "invalid_request_error", code: Some("model_not_found"),
        recorded: Recorded::Row { error_mentions: "\"claude-3-haiku\"", model: Some("(unrouted)") }, ..REFUSED },
    // An OpenAI provider serves gpt-*, but nothing speaks the Anthropic protocol.
    Refusal { case: "model no provider serves is 404", proto: Proto::Anthropic, upstream: Upstream::OnlyGpt,
        status: 404, kind: "not_found_error",
        recorded: Recorded::Row { error_mentions: "\"gpt-4o\"", model: Some("(unrouted)") }, ..REFUSED },
    Refusal { case: "malformed JSON is 400", malformed: true, status: 400, kind: "invalid_request_error", ..REFUSED },
    Refusal { case: "malformed JSON is 400", proto: Proto::Anthropic, malformed: true, status: 400,
        kind: "invalid_request_error", ..REFUSED },
    Refusal { case: "RPM limit is 429 with Retry-After", caller: Caller::Key(r#"{"rpm_limit": 2}"#), served_before: 2,
        status: 429, code: Some("rate_limit_exceeded"), retry_after: true, provider_requests: 2, ..REFUSED },
    Refusal { case: "RPM limit is 429 with Retry-After", proto: Proto::Anthropic, caller: Caller::Key(r#"{"rpm_limit": 2}"#),
        served_before: 2, status: 429, kind: "rate_limit_error", retry_after: true, provider_requests: 2, ..REFUSED },
    Refusal { case: "unreachable upstream is 502 naming the provider", upstream: Upstream::Closed, status: 502,
        recorded: Recorded::Row { error_mentions: "mock-openai", model: None }, ..REFUSED },
    Refusal { case: "unreachable upstream is 502 naming the provider", proto: Proto::Anthropic, upstream: Upstream::Closed,
        status: 502, recorded: Recorded::Row { error_mentions: "mock-anthropic", model: None }, ..REFUSED },
    Refusal { case: "upstream slower than first_byte_timeout is 504", upstream: Upstream::Impatient,
        model: "mock-latency-5000", status: 504,
        recorded: Recorded::Row { error_mentions: "", model: Some("mock-latency-5000") }, provider_requests: 1, ..REFUSED },
    Refusal { case: "upstream slower than first_byte_timeout is 504", proto: Proto::Anthropic, upstream: Upstream::Impatient,
        model: "mock-latency-5000", status: 504, kind: "timeout_error",
        recorded: Recorded::Row { error_mentions: "", model: Some("mock-latency-5000") }, provider_requests: 1, ..REFUSED },
];

impl Refusal {
    /// Starts a gateway for this row, makes the refused call (after `served_before` answered
    /// ones) and checks the answer, the store and the provider.
    async fn check(self) {
        let mock = Mock::start();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let yaml = match self.upstream {
            Upstream::Mock => providers_yaml(&mock.url),
            Upstream::OnlyGpt => format!(
                "providers:\n  - {{ name: only-gpt, kind: openai, base_url: \"{}/v1\", api_key: \"{PROVIDER_KEY}\", models: [\"gpt-*\"] }}\n",
                mock.url
            ),
            Upstream::Closed => providers_with(&closed_url, "[\"*\"]", "[\"*\"]", ""),
            Upstream::Impatient => {
                providers_with(&mock.url, "[\"*\"]", "[\"*\"]", "first_byte_timeout_ms: 300")
            }
        };
        let dir = tempdir();
        let server = Server::start(dir.path(), &yaml);
        let (id, key) = server.create_key("refused").await;
        let forged = format!("sk-tc-{}", "A".repeat(40));
        let auth = match self.caller {
            Caller::NoKey => Auth::None,
            Caller::ForgedKey => self.proto.auth(&forged),
            Caller::Key(patch) => {
                if !patch.is_empty() {
                    patch_key(&server, id, serde_json::from_str(patch).unwrap()).await;
                }
                self.proto.auth(&key)
            }
        };
        for _ in 0..self.served_before {
            expect_ok(&server, self.proto, auth, self.model).await;
        }

        let r = if self.malformed {
            let cut = br#"{"model": "gpt-4o", "messages": [{"role": "us"#.to_vec();
            post_raw(&server.url, self.proto.path(), auth, cut).await
        } else {
            let body = self.proto.body(self.model, TEXT, 20, false);
            post(&server.url, self.proto.path(), auth, &body).await
        };
        assert_eq!(r.status(), self.status, "the status");
        let retry_after = r.headers().get("retry-after").cloned();
        let body: Value = r.json().await.unwrap();
        let (kind, _) = assert_error_shape(self.proto, &body);
        if !self.kind.is_empty() {
            assert_eq!(kind, self.kind, "the error type: {body}");
        }
        if let Some(code) = self.code {
            assert_eq!(body["error"]["code"], code, "the error code: {body}");
        }
        match retry_after {
            Some(value) if self.retry_after => {
                let seconds: u64 = value.to_str().unwrap().parse().unwrap();
                assert!((1..=60).contains(&seconds), "Retry-After {seconds}");
            }
            None if !self.retry_after => {}
            other => panic!("Retry-After {other:?}, expected: {}", self.retry_after),
        }

        let served = self.served_before;
        match self.recorded {
            Recorded::CountedOnly => {
                let rows = settle(&server, served).await;
                assert!(rows.is_empty(), "the call is not recorded: {rows:#?}");
                assert_eq!(unauthenticated_count(&server).await, 1, "but counted");
            }
            Recorded::Row {
                error_mentions,
                model,
            } => {
                let rows = settle(&server, served + 1).await;
                let row = one_row(&rows, self.proto.path(), self.status);
                assert_refused_row(&row, Some(id));
                assert_eq!(row["key_name"], "refused");
                let error = row["error"].as_str().unwrap();
                assert!(error.contains(error_mentions), "the row's error: {row}");
                if let Some(model) = model {
                    assert_eq!(row["model"], model, "the row's model");
                }
            }
        }
        assert_eq!(
            mock_requests(&mock).await,
            self.provider_requests,
            "requests that reached the provider"
        );
    }
}

/// The message a panicking row left.
fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

/// Every row of [`REFUSALS`], each on a gateway of its own, four at a time; a failure lists the
/// rows that failed and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_has_its_status_error_shape_and_one_row() {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let mut rows = tokio::task::JoinSet::new();
    for (i, row) in REFUSALS.iter().copied().enumerate() {
        let permits = permits.clone();
        rows.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            (i, tokio::spawn(row.check()).await)
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = rows.join_next().await {
        if let (i, Err(e)) = done.unwrap() {
            let row = REFUSALS[i];
            let why = panic_message(e);
            failed.push(format!("row {i}, {} ({:?}): {why}", row.case, row.proto));
        }
    }
    failed.sort();
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        REFUSALS.len(),
        failed.join("\n")
    );
}

#[tokio::test]
async fn deleted_key_is_401_on_the_next_request() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
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
async fn a_disabled_key_is_served_again_once_enabled() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("paused").await;
    patch_key(&server, id, json!({"enabled": false})).await;
    expect_error(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o", 403).await;
    patch_key(&server, id, json!({"enabled": true})).await;
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    assert_eq!(mock_requests(&mock).await, 1);
}

#[tokio::test]
async fn a_key_limited_to_some_models_is_served_for_those() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("gpt-only").await;
    patch_key(&server, id, json!({"allowed_models": ["gpt-*"]})).await;
    expect_ok(&server, Proto::OpenAi, Auth::Bearer(&key), "gpt-4o").await;
    let rows = settle(&server, 1).await;
    assert_eq!(
        one_row(&rows, "/v1/chat/completions", 200)["model"],
        "gpt-4o"
    );
}

#[tokio::test]
async fn body_over_max_body_bytes_is_413_with_or_without_a_length() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "max_body_bytes: 1000\n");
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
    let (_dir, server) = start_behind(&mock, &format!("quota:\n  total_tokens: {budget}\n"));
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
    let (_dir, server) = start_behind(&mock, "");
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
async fn upstream_errors_pass_through_unchanged() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
    let (_dir, server) = start_behind(&mock, "");
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
