//! The router: `/_mock/*` observability, then `/v1/*` auth, behaviours and dispatch.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;

use crate::behaviour::{self, Behaviour};
use crate::errors::{error, mock_error};
use crate::http::{bytes_response, json_response};
use crate::reply::{str_field, Reply, OPENAI_CACHED_TOKENS, REASONING_TOKENS};
use crate::routes::{dialect_for_path, Dialect, Route};
use crate::sse::{self, Ending, Plan};
use crate::stats::Stats;
use crate::{anthropic, openai, responses};

/// Largest request body read.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// State shared by all requests.
pub struct AppState {
    /// `--require-key`, if any.
    pub require_key: Option<String>,
    /// Counters and recorded requests.
    pub stats: Arc<Stats>,
    /// Source of per-response sequence numbers (ids).
    next_seq: AtomicU64,
}

impl AppState {
    /// Fresh state.
    pub fn new(require_key: Option<String>) -> AppState {
        AppState {
            require_key,
            stats: Arc::new(Stats::default()),
            next_seq: AtomicU64::new(1),
        }
    }
}

type Shared = Arc<AppState>;

/// The whole application.
pub fn app(state: Shared) -> Router {
    Router::new()
        .route("/_mock/stats", get(stats))
        .route("/_mock/requests", get(recent).delete(clear))
        .fallback(entry)
        .with_state(state)
}

async fn stats(State(st): State<Shared>) -> Response {
    json_response(StatusCode::OK, &st.stats.snapshot())
}

async fn recent(State(st): State<Shared>) -> Response {
    json_response(StatusCode::OK, &st.stats.recent())
}

async fn clear(State(st): State<Shared>) -> Response {
    st.stats.reset();
    json_response(StatusCode::OK, &serde_json::json!({"cleared": true}))
}

/// Every request outside `/_mock`: read, record, check the key, then dispatch.
async fn entry(State(st): State<Shared>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    if !path.starts_with("/v1/") {
        return bytes_response(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    let dialect = dialect_for_path(&path);
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        let status = StatusCode::PAYLOAD_TOO_LARGE;
        return error(dialect, status, "request body too large");
    };
    st.stats
        .record(&parts.method, &path, &parts.headers, bytes.clone());
    if !authorized(st.require_key.as_deref(), &parts.headers) {
        let message = "mock-upstream: missing or wrong API key";
        return error(dialect, StatusCode::UNAUTHORIZED, message);
    }
    dispatch(&st, &parts, &path, &bytes).await
}

/// Finds the route, checks the method and body, and answers.
async fn dispatch(st: &AppState, parts: &Parts, path: &str, bytes: &[u8]) -> Response {
    let dialect = dialect_for_path(path);
    let Some(route) = Route::from_path(path) else {
        let message = format!("unknown path {path}");
        return error(dialect, StatusCode::NOT_FOUND, &message);
    };
    if parts.method != route.method() {
        return error(
            dialect,
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        );
    }
    if route == Route::Models {
        return models(&parts.headers);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(body @ Value::Object(_)) => handle(st, route, dialect, body).await,
        _ => {
            let message = "request body must be a JSON object";
            error(dialect, StatusCode::BAD_REQUEST, message)
        }
    }
}

/// `Authorization: Bearer KEY` or `x-api-key: KEY`, when a key is required.
fn authorized(required: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(key) = required else {
        return true;
    };
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let bearer = header(header::AUTHORIZATION.as_str()).and_then(|v| v.strip_prefix("Bearer "));
    bearer == Some(key) || header("x-api-key") == Some(key)
}

/// OpenAI's list, or Anthropic's when the client sent `anthropic-version`.
fn models(headers: &HeaderMap) -> Response {
    let body = if headers.contains_key("anthropic-version") {
        openai::anthropic_models()
    } else {
        openai::models()
    };
    json_response(StatusCode::OK, &body)
}

/// Applies the model's behaviour, then answers.
async fn handle(st: &AppState, route: Route, dialect: Dialect, body: Value) -> Response {
    let behaviour = behaviour::parse(str_field(&body, "model"));
    let stream = route.can_stream() && body.get("stream").and_then(Value::as_bool) == Some(true);
    match behaviour {
        Behaviour::Error(code) => return mock_error(dialect, code),
        Behaviour::Latency(delay) => tokio::time::sleep(delay).await,
        Behaviour::SlowFirstToken(delay) if !stream => tokio::time::sleep(delay).await,
        Behaviour::StallAfterHeaders => return stalled(st, stream),
        Behaviour::Garbage => return garbage(dialect, stream),
        _ => {}
    }
    let reply = Reply::new(&body, behaviour, st.next_seq.fetch_add(1, Relaxed));
    count_reported(st, route, &reply, stream);
    if stream {
        let plan = sse::plan(stream_parts(route, &reply, &body), behaviour);
        return sse::response(sse::EVENT_STREAM, plan, st.stats.clone());
    }
    let json = complete_body(route, &reply, &body);
    if behaviour == Behaviour::DropMidStream {
        return truncated(st, &json);
    }
    json_response(StatusCode::OK, &json)
}

/// Adds the usage the answer will report to `/_mock/stats`' `reported` (calls that spend tokens).
fn count_reported(st: &AppState, route: Route, reply: &Reply, stream: bool) {
    let chat_stream = stream && matches!(route, Route::ChatCompletions | Route::Completions);
    if !reply.usage || (chat_stream && !reply.include_usage) {
        return;
    }
    match route {
        Route::Messages => st.stats.reported(
            reply.input_tokens,
            reply.output_tokens,
            reply.cache_read,
            reply.cache_creation,
            0,
        ),
        // OpenAI's input counts include the cached tokens its details report; its output
        // counts include the reasoning tokens.
        Route::ChatCompletions | Route::Completions | Route::Responses => st.stats.reported(
            reply.input_tokens.saturating_sub(OPENAI_CACHED_TOKENS),
            reply.output_tokens,
            OPENAI_CACHED_TOKENS.min(reply.input_tokens),
            0,
            REASONING_TOKENS.min(reply.output_tokens),
        ),
        Route::Embeddings | Route::CountTokens | Route::Models => {}
    }
}

/// The non-stream body of a route.
fn complete_body(route: Route, reply: &Reply, body: &Value) -> Value {
    match route {
        Route::ChatCompletions => openai::chat(reply),
        Route::Completions => openai::completion(reply),
        Route::Embeddings => openai::embeddings(reply, body),
        Route::Responses => responses::response(reply, body),
        Route::Messages => anthropic::messages(reply),
        Route::CountTokens => anthropic::count_tokens(reply),
        Route::Models => openai::models(),
    }
}

/// The stream events of a streaming route.
fn stream_parts(route: Route, reply: &Reply, body: &Value) -> sse::Parts {
    match route {
        Route::Completions => openai::completion_stream(reply),
        Route::Responses => responses::stream(reply, body),
        Route::Messages => anthropic::stream(reply),
        _ => openai::chat_stream(reply),
    }
}

/// 200 headers, then a body that never comes.
fn stalled(st: &AppState, stream: bool) -> Response {
    let content_type = if stream {
        sse::EVENT_STREAM
    } else {
        "application/json"
    };
    sse::response(
        content_type,
        Plan::immediate(Vec::new(), Ending::Stall),
        st.stats.clone(),
    )
}

/// 200 with a body that does not parse.
fn garbage(dialect: Dialect, stream: bool) -> Response {
    if !stream {
        return bytes_response(StatusCode::OK, "application/json", "this is not json{");
    }
    let events: &'static [u8] = match dialect {
        Dialect::OpenAi => b"data: {not json\n\n",
        Dialect::Anthropic => b"event: message_start\ndata: {not json\n\n",
    };
    bytes_response(
        StatusCode::OK,
        sse::EVENT_STREAM,
        Body::from(Bytes::from_static(events)),
    )
}

/// The first half of the JSON body, then an aborted connection.
fn truncated(st: &AppState, json: &Value) -> Response {
    let text = Bytes::from(json.to_string());
    let half = text.slice(..text.len() / 2);
    let plan = Plan::immediate(vec![half], Ending::Abort);
    sse::response("application/json", plan, st.stats.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn auth() {
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            h
        };
        let cases = [
            (None, HeaderMap::new(), true),
            (Some("k"), HeaderMap::new(), false),
            (Some("k"), with("authorization", "Bearer k"), true),
            (Some("k"), with("authorization", "Bearer other"), false),
            (Some("k"), with("authorization", "k"), false),
            (Some("k"), with("x-api-key", "k"), true),
            (Some("k"), with("x-api-key", "kk"), false),
        ];
        for (key, headers, want) in cases {
            assert_eq!(authorized(key, &headers), want, "{key:?} {headers:?}");
        }
    }
}
