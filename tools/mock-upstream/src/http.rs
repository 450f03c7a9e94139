//! Small response and JSON helpers shared by the protocol modules.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    bytes_response(status, "application/json", body.to_string())
}

/// A response with a fixed content type and body.
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Adds `key: value` to a JSON object (does nothing to other values).
pub fn insert(target: &mut Value, key: &str, value: Value) {
    if let Some(map) = target.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}
