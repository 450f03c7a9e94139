//! Error bodies in each protocol's shape.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::http::json_response;
use crate::routes::Dialect;

/// Header that marks errors produced on purpose by a `mock-error-<code>` model.
const MOCK_ERROR_HEADER: HeaderName = HeaderName::from_static("x-mock-error");

/// An error response in the dialect's shape.
pub fn error(dialect: Dialect, status: StatusCode, message: &str) -> Response {
    let body = match dialect {
        Dialect::OpenAi => openai_body(status, message),
        Dialect::Anthropic => anthropic_body(status, message),
    };
    json_response(status, &body)
}

/// The response for a `mock-error-<code>` model.
pub fn mock_error(dialect: Dialect, code: u16) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = format!("mock-upstream: simulated error {code}");
    let mut response = error(dialect, status, &message);
    response
        .headers_mut()
        .insert(MOCK_ERROR_HEADER, HeaderValue::from_static("1"));
    response
}

/// `{"error":{"message","type","param","code"}}`.
pub fn openai_body(status: StatusCode, message: &str) -> Value {
    let (kind, code) = openai_kind(status.as_u16());
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// OpenAI's `type` and `code` for a status.
fn openai_kind(status: u16) -> (&'static str, &'static str) {
    match status {
        401 => ("invalid_request_error", "invalid_api_key"),
        403 => ("permission_error", "permission_denied"),
        404 => ("invalid_request_error", "not_found"),
        405 => ("invalid_request_error", "method_not_allowed"),
        413 => ("invalid_request_error", "request_too_large"),
        429 => ("requests", "rate_limit_exceeded"),
        500..=599 => ("server_error", "server_error"),
        _ => ("invalid_request_error", "invalid_request"),
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": anthropic_kind(status.as_u16()), "message": message}})
}

/// Anthropic's error `type` for a status.
fn anthropic_kind(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let cases = [
            (400, "invalid_request_error", "invalid_request_error"),
            (401, "invalid_request_error", "authentication_error"),
            (429, "requests", "rate_limit_error"),
            (500, "server_error", "api_error"),
            (529, "server_error", "overloaded_error"),
        ];
        for (status, openai, anthropic) in cases {
            assert_eq!(openai_kind(status).0, openai, "{status}");
            assert_eq!(anthropic_kind(status), anthropic, "{status}");
        }
    }
}
