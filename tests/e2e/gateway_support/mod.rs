//! Helpers of the gateway end-to-end tests (`tests/gateway_*.rs`): requests in either protocol,
//! the mock's deterministic usage, protocol error shapes, SSE parsing and "every call recorded
//! exactly once" checks over `/api/console/logs`.

use serde_json::{json, Value};

use crate::common::{Server, PROVIDER_KEY};

/// The two client protocols of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// OpenAI chat completions.
    OpenAi,
    /// Anthropic messages.
    Anthropic,
}

/// Both protocols, for tests that check a behaviour on each.
pub const BOTH: [Proto; 2] = [Proto::OpenAi, Proto::Anthropic];

/// Both protocols, each answered whole and streamed: `(protocol, stream)`.
pub const BOTH_AND_STREAMED: [(Proto, bool); 4] = [
    (Proto::OpenAi, false),
    (Proto::OpenAi, true),
    (Proto::Anthropic, false),
    (Proto::Anthropic, true),
];

/// How a request carries its key.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// No key at all.
    None,
    /// `Authorization: Bearer KEY`.
    Bearer(&'a str),
    /// `x-api-key: KEY` (Anthropic style).
    XApiKey(&'a str),
}

impl Proto {
    /// The route of the protocol's main call.
    pub fn path(self) -> &'static str {
        match self {
            Proto::OpenAi => "/v1/chat/completions",
            Proto::Anthropic => "/v1/messages",
        }
    }

    /// A request body asking `model` about `text`.
    pub fn body(self, model: &str, text: &str, max_tokens: u64, stream: bool) -> Value {
        json!({
            "model": model,
            "max_tokens": max_tokens,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        })
    }

    /// The usual way a client of this protocol sends its key.
    pub fn auth(self, key: &str) -> Auth<'_> {
        match self {
            Proto::OpenAi => Auth::Bearer(key),
            Proto::Anthropic => Auth::XApiKey(key),
        }
    }
}

/// POSTs a JSON body (or raw bytes) to the gateway with the given authentication.
pub async fn post_raw(url: &str, path: &str, auth: Auth<'_>, body: Vec<u8>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .body(body);
    request = match auth {
        Auth::None => request,
        Auth::Bearer(key) => request.bearer_auth(key),
        Auth::XApiKey(key) => request.header("x-api-key", key),
    };
    if path.starts_with("/v1/messages") {
        request = request.header("anthropic-version", "2023-06-01");
    }
    request.send().await.unwrap()
}

/// POSTs a JSON body to the gateway.
pub async fn post(url: &str, path: &str, auth: Auth<'_>, body: &Value) -> reqwest::Response {
    post_raw(url, path, auth, serde_json::to_vec(body).unwrap()).await
}

/// Sends the protocol's main call for `model` and returns (status, headers, JSON body).
pub async fn ask(
    server: &Server,
    proto: Proto,
    auth: Auth<'_>,
    model: &str,
    text: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = post(
        &server.url,
        proto.path(),
        auth,
        &proto.body(model, text, 20, false),
    )
    .await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// The mock's prompt tokens for a request: 10 + the words of its text.
pub fn mock_prompt(text: &str) -> u64 {
    10 + text.split_whitespace().count() as u64
}

/// What the gateway reserves of a budget for a one-message request body: its bytes (a token is
/// at least one byte), the provider's framing (4 per message, 3 per request) and `max_tokens`.
pub fn reservation(body: &Value) -> u64 {
    let messages = body["messages"].as_array().map_or(1, Vec::len) as u64;
    serde_json::to_vec(body).unwrap().len() as u64
        + 4 * messages
        + 3
        + body["max_tokens"].as_u64().unwrap_or(4096)
}

/// A text of about `bytes` bytes of words, for the mock's one-token-per-byte models
/// (`mock-byte-tokens…`), whose prompt then costs about what the gateway reserves for it.
pub fn text_of(bytes: usize) -> String {
    "budget race test ".repeat(bytes / 17 + 1)
}

/// The mock's completion tokens: `min(max_tokens, 20)`.
pub fn mock_completion(max_tokens: u64) -> u64 {
    max_tokens.min(20)
}

/// Checks the protocol's error shape and returns (type, message).
pub fn assert_error_shape(proto: Proto, body: &Value) -> (String, String) {
    match proto {
        Proto::OpenAi => {
            let error = body["error"]
                .as_object()
                .unwrap_or_else(|| panic!("not an OpenAI error: {body}"));
            assert!(
                error.contains_key("code"),
                "OpenAI errors carry a code: {body}"
            );
            let message = error["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "the error says what is wrong: {body}");
            let kind = error["type"].as_str().unwrap_or_default();
            assert!(!kind.is_empty(), "the error has a type: {body}");
            (kind.to_owned(), message.to_owned())
        }
        Proto::Anthropic => {
            assert_eq!(body["type"], "error", "not an Anthropic error: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "the error says what is wrong: {body}");
            let kind = body["error"]["type"].as_str().unwrap_or_default();
            assert!(!kind.is_empty(), "the error has a type: {body}");
            assert!(
                body.get("code").is_none() && body["error"].get("code").is_none(),
                "Anthropic errors have no OpenAI code: {body}"
            );
            (kind.to_owned(), message.to_owned())
        }
    }
}

/// Path of the sentinel call that marks "everything before me is recorded".
pub const SENTINEL_PATH: &str = "/v1/zz-sentinel";

/// Waits until every call made so far (`calls_made`) is recorded, using a sentinel call (an
/// unknown route with a key of its own, recorded as 404; only calls with a valid key are
/// recorded), checks that the store holds exactly `calls_made` + 1 calls
/// (so no call was recorded twice), and returns the log rows of the calls made, newest first.
pub async fn settle(server: &Server, calls_made: u64) -> Vec<Value> {
    static SENTINELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SENTINELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (_, key) = server.create_key(&format!("zz-sentinel-{n}")).await;
    let r = post(&server.url, SENTINEL_PATH, Auth::Bearer(&key), &json!({})).await;
    assert_eq!(r.status(), 404);
    let stats = server.wait_for_calls(calls_made + 1).await;
    assert_eq!(
        stats["api_call_count"].as_u64().unwrap(),
        calls_made + 1,
        "every call is recorded exactly once: {stats}"
    );
    let rows = server.logs("limit=1000").await;
    // Estimated records are completed off the async workers, so the sentinel need not be the
    // newest row; the count above says every call is in.
    assert!(
        rows.iter().any(|r| r["endpoint"] == SENTINEL_PATH),
        "the sentinel is recorded"
    );
    rows.into_iter()
        .filter(|r| r["endpoint"] != SENTINEL_PATH)
        .collect()
}

/// The one row of `rows` with `endpoint` and `status` (fails unless there is exactly one).
pub fn one_row(rows: &[Value], endpoint: &str, status: u16) -> Value {
    let matching: Vec<&Value> = rows
        .iter()
        .filter(|r| r["endpoint"] == endpoint && r["status"] == status)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "exactly one {status} row for {endpoint} in {rows:#?}"
    );
    matching[0].clone()
}

/// The newest log row, once at least `n` calls are recorded.
pub async fn newest_row(server: &Server, n: u64) -> Value {
    server.wait_for_calls(n).await;
    server.logs("limit=1").await.remove(0)
}

/// One SSE event: its `event:` name (if any) and its joined `data:` lines.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `event:` field.
    pub name: Option<String>,
    /// The data.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON (`Null` for `[DONE]` and non-JSON data).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// Splits a whole SSE body into its events (fails on an unterminated last event).
pub fn sse_events(raw: &str) -> Vec<SseEvent> {
    let normalized = raw.replace("\r\n", "\n");
    assert!(
        normalized.is_empty() || normalized.ends_with("\n\n"),
        "the stream ends with a complete event: {raw:?}"
    );
    normalized
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            SseEvent {
                name,
                data: data.join("\n"),
            }
        })
        .collect()
}

/// Providers section: both kinds pointing at the mock with extra per-provider settings
/// (`extra` is inserted into each provider's flow mapping, e.g. `first_byte_timeout_ms: 300`).
pub fn providers_with(
    mock_url: &str,
    openai_models: &str,
    anthropic_models: &str,
    extra: &str,
) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "providers:\n  - {{ name: mock-openai, kind: openai, base_url: \"{mock_url}/v1\", api_key: \"{PROVIDER_KEY}\", models: {openai_models}{extra} }}\n  - {{ name: mock-anthropic, kind: anthropic, base_url: \"{mock_url}\", api_key: \"{PROVIDER_KEY}\", models: {anthropic_models}{extra} }}\n"
    )
}

/// PATCHes a key and checks the console accepted it.
pub async fn patch_key(server: &Server, id: i64, body: Value) {
    let (status, answer) = server
        .patch(&format!("/api/console/keys/{id}"), &body)
        .await;
    assert_eq!(status, 200, "PATCH {body}: {answer}");
}

/// `(prompt, completion, cache_read, cache_creation, reasoning, total)` of a log row.
pub fn row_tokens(row: &Value) -> [u64; 6] {
    [
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "cache_creation_tokens",
        "reasoning_tokens",
        "tokens",
    ]
    .map(|f| row[f].as_u64().unwrap_or_else(|| panic!("{f} in {row}")))
}
