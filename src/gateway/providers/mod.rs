//! Upstream providers: a closed set of kinds, one file each, sharing one pooled HTTP client per
//! provider (rustls, HTTP/1.1 and HTTP/2, connect and idle timeouts from the config).

mod anthropic;
mod openai;

use std::time::Duration;

use axum::http::HeaderMap;

use super::endpoint::Endpoint;
use super::glob;
use crate::config::{ProviderConfig, ProviderKind};

/// One configured upstream with its connection pool.
pub struct Provider {
    /// Its configuration.
    pub config: ProviderConfig,
    /// Pooled client.
    pub client: reqwest::Client,
}

impl Provider {
    /// Builds the provider's client.
    pub fn new(config: ProviderConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(1024)
            .tcp_nodelay(true)
            .no_proxy()
            .build()?;
        Ok(Self { config, client })
    }

    /// Whether this provider speaks the endpoint's protocol and serves `model`.
    pub fn serves(&self, endpoint: Endpoint, model: &str) -> bool {
        let speaks = match self.config.kind {
            ProviderKind::Openai => openai::speaks(endpoint),
            ProviderKind::Anthropic => anthropic::speaks(endpoint),
        };
        speaks && glob::any(&self.config.models, model)
    }

    /// The upstream URL of an endpoint.
    pub fn url(&self, endpoint: Endpoint) -> String {
        match self.config.kind {
            ProviderKind::Openai => openai::url(&self.config.base_url, endpoint),
            ProviderKind::Anthropic => anthropic::url(&self.config.base_url, endpoint),
        }
    }

    /// Puts the provider's credentials (and required defaults) on the upstream request.
    pub fn authorize(&self, headers: &mut HeaderMap) {
        let key = self.config.api_key.as_ref().map(|k| k.expose());
        match self.config.kind {
            ProviderKind::Openai => openai::authorize(headers, key),
            ProviderKind::Anthropic => anthropic::authorize(headers, key),
        }
    }
}
