//! Errors at the program's boundaries: start-up ([`StartError`]) and the console API
//! ([`ConsoleError`], answered in the console's `{"code","msg"}` envelope). The gateway's
//! protocol-shaped errors live in `gateway::error`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::config::ConfigError;
use crate::store::StoreError;

/// Why the program could not start; printed once by `main`, which exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound, or another I/O failure.
    #[error("{0}")]
    Io(String),
}

/// A failed console API call: an HTTP status and a message saying what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// Admin key missing or wrong (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Not allowed from this client (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with the current state (409).
    #[error("{0}")]
    Conflict(String),
    /// Too many failed attempts (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// Something failed inside; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(name) => Self::Conflict(format!(
                "a key named \"{name}\" already exists; choose another name"
            )),
            StoreError::KeyLimit(max) => Self::Conflict(format!(
                "the maximum of {max} keys is reached; delete a key you no longer use or raise console.max_keys"
            )),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = self.status();
        let msg = match &self {
            Self::Internal(detail) => {
                tracing::error!("console API internal error: {detail}");
                "internal error; see the service log (logs/error.log or stderr) for details"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let body = crate::console::wire::Failure {
            code: status.as_u16(),
            msg,
        };
        (status, Json(body)).into_response()
    }
}
