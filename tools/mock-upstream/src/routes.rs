//! The `/v1` routes the mock serves and which protocol each speaks.

use axum::http::Method;

/// Which API family a route belongs to (decides error and SSE shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

/// A known `/v1` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    ChatCompletions = 0,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    Models,
}

impl Route {
    /// Every route, in discriminant order.
    pub const ALL: [Route; 7] = [
        Route::ChatCompletions,
        Route::Completions,
        Route::Embeddings,
        Route::Responses,
        Route::Messages,
        Route::CountTokens,
        Route::Models,
    ];

    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::Responses => "/v1/responses",
            Route::Messages => "/v1/messages",
            Route::CountTokens => "/v1/messages/count_tokens",
            Route::Models => "/v1/models",
        }
    }

    /// The route for a path, if it is one of ours.
    pub fn from_path(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path() == path)
    }

    /// The HTTP method the route accepts.
    pub fn method(self) -> Method {
        match self {
            Route::Models => Method::GET,
            _ => Method::POST,
        }
    }

    /// Whether the route can answer with an SSE stream.
    pub fn can_stream(self) -> bool {
        matches!(
            self,
            Route::ChatCompletions | Route::Completions | Route::Responses | Route::Messages
        )
    }
}

/// Anthropic shapes on `/v1/messages*`, OpenAI shapes elsewhere.
pub fn dialect_for_path(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for route in Route::ALL {
            assert_eq!(Route::from_path(route.path()), Some(route));
            assert_eq!(Route::ALL[route as usize], route);
        }
        assert_eq!(Route::from_path("/v1/nope"), None);
        assert_eq!(
            dialect_for_path("/v1/messages/count_tokens"),
            Dialect::Anthropic
        );
        assert_eq!(dialect_for_path("/v1/chat/completions"), Dialect::OpenAi);
    }
}
