//! The LLM API gateway: OpenAI- and Anthropic-compatible routes that check the caller's key and
//! limits, forward to the configured provider, stream the answer back unchanged and record the
//! call (see `proxy` for one call's path, `meter` for its record).

mod bpe;
mod endpoint;
mod error;
mod estimate;
#[doc(hidden)]
pub mod fuzz;
mod glob;
mod meter;
mod models;
mod providers;
mod proxy;
mod request;
mod sse;
mod tally;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

pub use endpoint::Endpoint;
pub use error::{GatewayError, Protocol};
pub use meter::Sinks;
pub use proxy::OVERHEAD_HEADER;

use axum::extract::FromRef;

use crate::config::Config;
use crate::error::StartError;
use crate::keys::{Budget, KeyRegistry};
use providers::Provider;

/// What the gateway's handlers use: the configuration, the keys they check, the global budget
/// they reserve from, and where finished calls go. The server's state hands it out by
/// [`FromRef`]; the gateway never sees the rest.
#[derive(Clone)]
pub struct GatewayState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Live keys, checked on every request.
    pub keys: Arc<KeyRegistry>,
    /// The global token budget (`quota.total_tokens`).
    pub budget: Arc<Budget>,
    /// The global money budget (`quota.total_cost`, in nano-dollars).
    pub cost_budget: Arc<Budget>,
    /// The providers, the recorder, the metrics and the telemetry.
    pub sinks: Arc<Sinks>,
}

/// The configured providers, in routing order.
pub struct Gateway {
    providers: Vec<Arc<Provider>>,
    models: models::ModelList,
}

impl Gateway {
    /// Builds each provider's HTTP client.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        let providers = config
            .providers
            .iter()
            .cloned()
            .map(|p| Provider::new(p).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StartError::Io(format!("cannot build the upstream HTTP client: {e}")))?;
        Ok(Self {
            providers,
            models: models::ModelList::default(),
        })
    }

    /// The configuration of the provider a call to `endpoint` for `model` goes to.
    pub fn provider_config(
        &self,
        endpoint: Endpoint,
        model: &str,
    ) -> Option<&crate::config::ProviderConfig> {
        self.providers
            .iter()
            .find(|p| p.serves(endpoint, model))
            .map(|p| &p.config)
    }

    /// The first provider that speaks the endpoint's protocol and serves the model.
    fn route(&self, endpoint: Endpoint, model: &str) -> Option<Arc<Provider>> {
        self.providers
            .iter()
            .find(|p| p.serves(endpoint, model))
            .cloned()
    }
}

/// The gateway's routes (`/v1/*`), for a server whose state hands out a [`GatewayState`].
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    GatewayState: FromRef<S>,
{
    Router::new()
        .route("/v1/chat/completions", proxied(Endpoint::ChatCompletions))
        .route("/v1/completions", proxied(Endpoint::Completions))
        .route("/v1/embeddings", proxied(Endpoint::Embeddings))
        .route(
            "/v1/responses",
            proxied(Endpoint::Responses).get(responses_websocket),
        )
        .route("/v1/messages", proxied(Endpoint::Messages))
        .route("/v1/messages/count_tokens", proxied(Endpoint::CountTokens))
        .route("/v1/models", get(models::list))
        .route("/v1/{*rest}", axum::routing::any(unknown_route))
}

/// 405 (recorded when made with a valid key) for a known `/v1` route called with the wrong
/// method (used as the router's method-not-allowed fallback, so every `/v1` call with a valid key
/// is recorded).
pub async fn wrong_method(State(state): State<GatewayState>, request: Request) -> Response {
    refuse_unserved(&state, request, |method, path| {
        GatewayError::MethodNotAllowed(format!(
            "{method} is not allowed on {path}; see the API reference for the method"
        ))
    })
    .await
}

/// Refuses a `/v1` call no route serves, in the protocol its path suggests, recording it when it
/// carries a valid key; `error` is made from the call's method and path.
async fn refuse_unserved(
    state: &GatewayState,
    request: Request,
    error: impl FnOnce(&axum::http::Method, &str) -> GatewayError,
) -> Response {
    let path = request.uri().path();
    let endpoint = if path.starts_with("/v1/messages") {
        Endpoint::Messages
    } else {
        Endpoint::Models
    };
    let mut meter = match meter::Meter::start(state, endpoint, &request).await {
        Ok(meter) => meter,
        Err(unavailable) => return unavailable,
    };
    proxy::identify(state, request.headers(), &mut meter);
    proxy::refuse(meter, endpoint, error(request.method(), path))
}

/// `GET /v1/responses`: a client opening the Responses API as a WebSocket (Codex does, with
/// `Upgrade: websocket` and `OpenAI-Beta: responses_websockets=…`) gets 426 at once, so it falls
/// back to HTTP streaming, which the gateway meters; any other GET is the usual recorded 405.
async fn responses_websocket(State(state): State<GatewayState>, request: Request) -> Response {
    let upgrade = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"));
    if !upgrade {
        return wrong_method(State(state), request).await;
    }
    let mut meter = match meter::Meter::start(&state, Endpoint::Responses, &request).await {
        Ok(meter) => meter,
        Err(unavailable) => return unavailable,
    };
    let _ = proxy::authenticate(&state, request.headers(), &mut meter).await;
    proxy::refuse(
        meter,
        Endpoint::Responses,
        GatewayError::UpgradeRequired(
            "this gateway does not serve the Responses API over WebSocket; send the request as HTTP POST /v1/responses (with \"stream\": true for a stream)".into(),
        ),
    )
}

/// A `POST` route proxied as `endpoint`.
fn proxied<S>(endpoint: Endpoint) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
    GatewayState: FromRef<S>,
{
    post(
        move |State(state): State<GatewayState>, request: Request| async move {
            proxy::handle(state, endpoint, request).await
        },
    )
}

/// Any other `/v1/*` call: 404 in the protocol the path suggests, recorded like every call made
/// with a valid key.
async fn unknown_route(State(state): State<GatewayState>, request: Request) -> Response {
    refuse_unserved(&state, request, |method, path| {
        GatewayError::NotFound(format!(
            "{method} {path} is not a route of this gateway; use /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages, /v1/messages/count_tokens or /v1/models"
        ))
    })
    .await
}
