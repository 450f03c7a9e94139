//! `GET /v1/models`: the models this key may use — the providers' literal model names, plus
//! what providers with wildcard patterns list upstream (cached for a minute) — in OpenAI's list
//! shape, or Anthropic's when the client sends `anthropic-version`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::endpoint::Endpoint;
use super::meter::Meter;
use super::providers::Provider;
use super::GatewayState;
use super::{glob, proxy};

const CACHE_FOR: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A model and the provider serving it.
#[derive(Clone)]
pub struct ModelId {
    id: String,
    owned_by: String,
}

/// The cached list of the providers' models.
#[derive(Default)]
pub struct ModelList {
    cache: Mutex<Option<(Instant, Vec<ModelId>)>>,
}

#[derive(Deserialize)]
struct UpstreamList {
    data: Vec<UpstreamModel>,
}

#[derive(Deserialize)]
struct UpstreamModel {
    id: String,
}

async fn fetch(provider: &Provider) -> Vec<String> {
    let mut headers = axum::http::HeaderMap::new();
    provider.authorize(&mut headers);
    let request = provider
        .client
        .get(provider.url(Endpoint::Models))
        .headers(headers);
    let answer = tokio::time::timeout(FETCH_TIMEOUT, async {
        let bytes = request.send().await?.error_for_status()?.bytes().await?;
        Ok::<_, reqwest::Error>(serde_json::from_slice::<UpstreamList>(&bytes))
    })
    .await;
    match answer {
        Ok(Ok(Ok(list))) => list.data.into_iter().map(|m| m.id).collect(),
        Ok(Ok(Err(e))) => {
            tracing::warn!(provider = %provider.config.name, "the provider's model list is not a list: {e}");
            Vec::new()
        }
        Ok(Err(e)) => {
            tracing::warn!(provider = %provider.config.name, "cannot list the provider's models: {e}");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(provider = %provider.config.name, "the provider's model list timed out");
            Vec::new()
        }
    }
}

impl super::Gateway {
    async fn model_ids(&self) -> Vec<ModelId> {
        if let Ok(cache) = self.models.cache.lock() {
            if let Some((at, ids)) = cache.as_ref().filter(|(at, _)| at.elapsed() < CACHE_FOR) {
                let _ = at;
                return ids.clone();
            }
        }
        let mut ids: Vec<ModelId> = Vec::new();
        for provider in &self.providers {
            let patterns = &provider.config.models;
            let mut names: Vec<String> = patterns
                .iter()
                .filter(|p| glob::is_literal(p))
                .cloned()
                .collect();
            if patterns.iter().any(|p| !glob::is_literal(p)) {
                names.extend(
                    fetch(provider)
                        .await
                        .into_iter()
                        .filter(|m| glob::any(patterns, m)),
                );
            }
            for id in names {
                if !ids.iter().any(|m| m.id == id) {
                    ids.push(ModelId {
                        id,
                        owned_by: provider.config.name.clone(),
                    });
                }
            }
        }
        if let Ok(mut cache) = self.models.cache.lock() {
            *cache = Some((Instant::now(), ids.clone()));
        }
        ids
    }
}

fn openai_shape(ids: &[ModelId]) -> serde_json::Value {
    let data: Vec<_> = ids
        .iter()
        .map(|m| serde_json::json!({"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by}))
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

fn anthropic_shape(ids: &[ModelId]) -> serde_json::Value {
    let data: Vec<_> = ids
        .iter()
        .map(|m| serde_json::json!({"type": "model", "id": m.id, "display_name": m.id, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    serde_json::json!({
        "data": data,
        "has_more": false,
        "first_id": ids.first().map(|m| m.id.clone()),
        "last_id": ids.last().map(|m| m.id.clone()),
    })
}

/// Lists the models the caller's key may use.
pub async fn list(State(state): State<GatewayState>, request: Request) -> Response {
    let mut meter = match Meter::start(&state, Endpoint::Models, &request).await {
        Ok(meter) => meter,
        Err(unavailable) => return unavailable,
    };
    let key = match proxy::authenticate(&state, request.headers(), &mut meter).await {
        Ok(key) => key,
        Err(e) => return proxy::refuse(meter, Endpoint::Models, e),
    };
    let allowed = key.settings().allowed_models.clone();
    let ids: Vec<ModelId> = state
        .sinks
        .gateway
        .model_ids()
        .await
        .into_iter()
        .filter(|m| allowed.as_ref().is_none_or(|a| glob::any(a, &m.id)))
        .collect();
    let body = if request.headers().contains_key("anthropic-version") {
        anthropic_shape(&ids)
    } else {
        openai_shape(&ids)
    };
    let overhead_ms = meter.started().elapsed().as_secs_f64() * 1000.0;
    meter.finish(200, None, None);
    let mut response = Json(body).into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("{overhead_ms:.3}")) {
        response.headers_mut().insert(
            axum::http::HeaderName::from_static(proxy::OVERHEAD_HEADER),
            value,
        );
    }
    response
}
