//! The gateway's errors, answered in the client's protocol: OpenAI's
//! `{"error":{"message","type","code"}}` or Anthropic's `{"type":"error","error":{"type","message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Status of a call whose client went away before it was complete (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The wire protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenAI (chat, completions, embeddings, responses, models).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// Why the gateway answered a call itself instead of the upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// Malformed request (400).
    BadRequest(String),
    /// Missing or unknown key (401).
    Unauthorized(String),
    /// Key disabled, expired or not allowed this model (403).
    Forbidden(String),
    /// No provider serves the model, or no such route (404).
    NotFound(String),
    /// A route called with the wrong method (405).
    MethodNotAllowed(String),
    /// The body did not arrive in time (408).
    RequestTimeout(String),
    /// Body over the limit (413).
    TooLarge(String),
    /// A WebSocket upgrade the gateway does not offer (426): clients such as Codex then fall
    /// back to plain HTTP at once.
    UpgradeRequired(String),
    /// A budget is exhausted: OpenAI's `429 insufficient_quota`; on the Anthropic protocol the
    /// non-retryable `400 invalid_request_error` Anthropic sends for a spent account (its
    /// clients, Claude Code among them, retry every 429 for minutes).
    QuotaExhausted(String),
    /// The key's requests-per-minute limit (429 with Retry-After seconds).
    RateLimited(String, u64),
    /// The upstream could not be reached (502).
    BadGateway(String),
    /// The upstream did not answer in time (504).
    Timeout(String),
    /// The gateway itself cannot take the call now, e.g. its record queue is full (503).
    Unavailable(String),
    /// The client went away before its request was complete (499, nginx's "client closed
    /// request"; recorded, though nobody is left to read the answer).
    ClientClosed(String),
}

impl GatewayError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::QuotaExhausted(_) | Self::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClientClosed(_) => {
                StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// The HTTP status in the client's protocol (a spent budget differs between them).
    pub fn status_in(&self, protocol: Protocol) -> StatusCode {
        match (self, protocol) {
            (Self::QuotaExhausted(_), Protocol::Anthropic) => StatusCode::BAD_REQUEST,
            _ => self.status(),
        }
    }

    /// The message for the client (and the record's `error`).
    pub fn message(&self) -> &str {
        match self {
            Self::BadRequest(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::MethodNotAllowed(m)
            | Self::TooLarge(m)
            | Self::UpgradeRequired(m)
            | Self::RequestTimeout(m)
            | Self::QuotaExhausted(m)
            | Self::RateLimited(m, _)
            | Self::BadGateway(m)
            | Self::Timeout(m)
            | Self::Unavailable(m)
            | Self::ClientClosed(m) => m,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn openai_kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::BadRequest(_) => ("invalid_request_error", "invalid_request"),
            Self::Unauthorized(_) => ("invalid_request_error", "invalid_api_key"),
            Self::Forbidden(_) => ("permission_error", "permission_denied"),
            Self::NotFound(_) => ("invalid_request_error", "model_not_found"),
            Self::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            Self::TooLarge(_) => ("invalid_request_error", "request_too_large"),
            Self::UpgradeRequired(_) => ("invalid_request_error", "websocket_not_supported"),
            Self::RequestTimeout(_) => ("invalid_request_error", "request_timeout"),
            Self::QuotaExhausted(_) => ("insufficient_quota", "insufficient_quota"),
            Self::RateLimited(..) => ("requests", "rate_limit_exceeded"),
            Self::BadGateway(_) => ("api_error", "upstream_unreachable"),
            Self::Timeout(_) => ("api_error", "upstream_timeout"),
            Self::Unavailable(_) => ("api_error", "service_unavailable"),
            Self::ClientClosed(_) => ("invalid_request_error", "client_closed_request"),
        }
    }

    /// Anthropic's error `type` for this error.
    fn anthropic_kind(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "invalid_request_error",
            Self::Unauthorized(_) => "authentication_error",
            Self::Forbidden(_) => "permission_error",
            Self::NotFound(_) => "not_found_error",
            Self::MethodNotAllowed(_) => "invalid_request_error",
            Self::TooLarge(_) => "request_too_large",
            Self::UpgradeRequired(_) => "invalid_request_error",
            Self::RequestTimeout(_) => "invalid_request_error",
            Self::QuotaExhausted(_) => "invalid_request_error",
            Self::RateLimited(..) => "rate_limit_error",
            Self::BadGateway(_) => "api_error",
            Self::Timeout(_) => "timeout_error",
            Self::Unavailable(_) => "overloaded_error",
            Self::ClientClosed(_) => "invalid_request_error",
        }
    }

    /// The response in the client's protocol.
    pub fn into_protocol_response(self, protocol: Protocol) -> Response {
        let body = match protocol {
            Protocol::OpenAi => {
                let (kind, code) = self.openai_kind();
                serde_json::json!({"error": {"message": self.message(), "type": kind, "code": code}})
            }
            Protocol::Anthropic => serde_json::json!({
                "type": "error",
                "error": {"type": self.anthropic_kind(), "message": self.message()},
            }),
        };
        let mut response = (self.status_in(protocol), Json(body)).into_response();
        if let Self::RateLimited(_, seconds) = &self {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_each_protocol() {
        let e = GatewayError::QuotaExhausted("no budget left".into());
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let r = e.clone().into_protocol_response(Protocol::OpenAi);
        assert_eq!(r.status(), 429);
        let r = e.clone().into_protocol_response(Protocol::Anthropic);
        assert_eq!(
            r.status(),
            400,
            "a spent budget is not retryable for Anthropic clients"
        );
        assert!(r.headers().get("retry-after").is_none());
        let r = GatewayError::RateLimited("slow down".into(), 7)
            .into_protocol_response(Protocol::Anthropic);
        assert_eq!(r.headers().get("retry-after").unwrap(), "7");
        let gone = GatewayError::ClientClosed("gone".into());
        assert_eq!(gone.status().as_u16(), CLIENT_CLOSED_REQUEST);
    }
}
