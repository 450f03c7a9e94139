//! The client-facing routes of the gateway and what each implies.

use super::error::Protocol;

/// One gateway route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/messages`.
    Messages,
    /// `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `GET /v1/models`.
    Models,
}

impl Endpoint {
    /// The route's path.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
            Self::CountTokens => "/v1/messages/count_tokens",
            Self::Models => "/v1/models",
        }
    }

    /// The protocol of its requests and errors.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::Messages | Self::CountTokens => Protocol::Anthropic,
            _ => Protocol::OpenAi,
        }
    }

    /// Whether its answers carry completion tokens.
    pub fn has_completion(self) -> bool {
        !matches!(self, Self::Embeddings | Self::CountTokens | Self::Models)
    }

    /// Whether its calls spend tokens (counting tokens or listing models does not).
    pub fn spends_tokens(self) -> bool {
        !matches!(self, Self::CountTokens | Self::Models)
    }

    /// The event that ends a complete stream of this route, as named in a record's error.
    pub fn stream_end(self) -> &'static str {
        match self {
            Self::Messages => "message_stop",
            Self::Responses => "response.completed",
            _ => "[DONE]",
        }
    }

    /// Whether the gateway adds `stream_options.include_usage` to its streams.
    pub fn wants_stream_usage_option(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}
