//! Anthropic's Messages API: `base_url` without `/v1`; `x-api-key` and `anthropic-version`.

use axum::http::{HeaderMap, HeaderValue};

use crate::gateway::endpoint::Endpoint;

/// The API version sent when the client names none.
const DEFAULT_VERSION: &str = "2023-06-01";

/// The endpoints Anthropic answers.
pub fn speaks(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Messages | Endpoint::CountTokens | Endpoint::Models
    )
}

/// `base_url` (tolerating a trailing `/v1`) + the endpoint's full path.
pub fn url(base_url: &str, endpoint: Endpoint) -> String {
    let base = base_url.strip_suffix("/v1").unwrap_or(base_url);
    format!("{base}{}", endpoint.path())
}

/// `x-api-key: <provider key>`, and `anthropic-version` unless the client sent one.
pub fn authorize(headers: &mut HeaderMap, key: Option<&str>) {
    if let Some(value) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
        headers.insert("x-api-key", value);
    }
    if !headers.contains_key("anthropic-version") {
        headers.insert(
            "anthropic-version",
            HeaderValue::from_static(DEFAULT_VERSION),
        );
    }
}
