//! OpenAI and OpenAI-compatible servers: `base_url` ends in `/v1`; bearer authentication.

use axum::http::{header, HeaderMap, HeaderValue};

use crate::gateway::endpoint::Endpoint;

/// The endpoints an OpenAI-compatible server answers.
pub fn speaks(endpoint: Endpoint) -> bool {
    !matches!(endpoint, Endpoint::Messages | Endpoint::CountTokens)
}

/// `base_url` + the path after `/v1` (the base already names the version).
pub fn url(base_url: &str, endpoint: Endpoint) -> String {
    let path = endpoint.path();
    format!("{base_url}{}", path.strip_prefix("/v1").unwrap_or(path))
}

/// `Authorization: Bearer <provider key>`.
pub fn authorize(headers: &mut HeaderMap, key: Option<&str>) {
    if let Some(value) = key.and_then(|k| HeaderValue::from_str(&format!("Bearer {k}")).ok()) {
        headers.insert(header::AUTHORIZATION, value);
    }
}
