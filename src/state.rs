//! The shared state every handler receives through axum's `State`.

use std::sync::Arc;

use crate::config::Config;
use crate::console::auth::SignInLimiter;
use crate::gateway::Gateway;
use crate::keys::{Budget, KeyRegistry};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::usage::Recorder;

/// Everything the handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The store (the console reads it; only the recorder and key changes write it).
    pub store: Store,
    /// Where the gateway sends its call records.
    pub recorder: Arc<Recorder>,
    /// Live keys, checked by the gateway on every request.
    pub keys: Arc<KeyRegistry>,
    /// The global token budget (`quota.total_tokens`).
    pub budget: Arc<Budget>,
    /// Upstream providers and their HTTP client.
    pub gateway: Arc<Gateway>,
    /// Prometheus counters.
    pub metrics: Arc<Metrics>,
    /// Failed console sign-ins per client.
    pub sign_ins: Arc<SignInLimiter>,
    /// Fires when the process starts shutting down (ends live streams).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    /// Builds the state from an opened store and a started recorder, loading keys and budgets
    /// from what the store has recorded.
    pub async fn new(
        config: Config,
        store: Store,
        recorder: Arc<Recorder>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, crate::error::StartError> {
        let rows = store.list_keys().await?;
        let usage = store.usage_by_key().await?;
        let used: std::collections::HashMap<i64, u64> = usage
            .iter()
            .map(|(id, agg)| (*id, agg.tokens.total))
            .collect();
        let total_used = used.values().sum();
        let gateway = Gateway::new(&config)?;
        Ok(Self {
            budget: Arc::new(Budget::new(config.total_tokens, total_used)),
            keys: Arc::new(KeyRegistry::load(&rows, &used)),
            config: Arc::new(config),
            store,
            recorder,
            gateway: Arc::new(gateway),
            metrics: Arc::new(Metrics::default()),
            sign_ins: Arc::new(SignInLimiter::default()),
            shutdown,
        })
    }
}
