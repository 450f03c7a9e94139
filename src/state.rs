//! The server's state: what `/healthz` and `/metrics` read, and the gateway's and the console's
//! parts ([`GatewayState`], [`ConsoleState`]), each handed to its handlers by `FromRef`. This
//! module imports `gateway` and `console`; neither imports it.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::clock::{Clock, Period};
use crate::config::Config;
use crate::console::auth::Gatekeeper;
use crate::console::ConsoleState;
use crate::gateway::{Gateway, GatewayState, Sinks};
use crate::keys::sync::{Instance, STALE_AFTER_MS};
use crate::keys::{ledger_row, Budget, KeyRegistry, Ledger, LocalRows, RateLimiter};
use crate::metrics::Metrics;
use crate::sources::Sources;
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
    /// This instance among those on the database, and the task keeping it in step with them.
    pub instance: Arc<Instance>,
    /// Prometheus counters.
    pub metrics: Arc<Metrics>,
    /// The OpenTelemetry exporters, when `otel:` is configured.
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// The alert task, when `alerts:` is configured.
    pub alerter: Option<Arc<crate::alerts::Alerter>>,
    /// What the gateway uses (it shares the keys, recorder, metrics and telemetry above).
    pub gateway: GatewayState,
    /// What the console uses (it shares the store, keys and recorder above).
    pub console: ConsoleState,
    /// The usage sources' tasks and health.
    pub sources: Arc<Sources>,
}

impl FromRef<AppState> for GatewayState {
    fn from_ref(state: &AppState) -> Self {
        state.gateway.clone()
    }
}

impl FromRef<AppState> for Arc<Gatekeeper> {
    fn from_ref(state: &AppState) -> Self {
        state.console.gate.clone()
    }
}

impl AppState {
    /// Builds the state from an opened store and a started recorder: registers this instance,
    /// loads the keys, connects to Redis when configured, and starts keeping keys and budgets in
    /// step with the other instances on the database.
    pub async fn new(
        config: Config,
        store: Store,
        recorder: Arc<Recorder>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, crate::error::StartError> {
        let id = Instance::new_id();
        let others = store.register_instance(id.clone(), STALE_AFTER_MS).await?;
        let rows = store.list_keys().await?;
        let rates = match &config.redis_url {
            Some(url) => {
                let namespace = format!("tc:{}", store.deployment_id().await?);
                RateLimiter::shared(url, &namespace)
                    .await
                    .map_err(crate::error::StartError::Io)?
            }
            None => RateLimiter::local(),
        };
        tracing::info!(
            instance = %id,
            other_instances = others,
            database = store.kind(),
            shared_rpm_limits = rates.is_shared(),
            "joined the database"
        );
        let gateway = Gateway::new(&config)?;
        let clock = match config.test_now {
            Some(start) => {
                tracing::warn!(%start, "the clock starts at CONSOLE_TEST_NOW, not the wall clock's time: a setting for tests only");
                Clock::starting_at(start)
            }
            None => Clock::system(),
        };
        let ledger = ledger_for(&store, &id, &clock, &config.timezone).await?;
        let keys = Arc::new(KeyRegistry::load(&rows, ledger.clone(), rates));
        let budget = Arc::new(Budget::new(
            ledger.clone(),
            crate::store::GLOBAL_SCOPE,
            config.total_tokens,
            config.limit_period,
        ));
        let cost_budget = Arc::new(Budget::of_unit(
            ledger.clone(),
            crate::store::GLOBAL_SCOPE,
            crate::store::UNIT_NANO_USD,
            config.total_cost_nanos,
            config.limit_period,
        ));
        let instance_id = id.clone();
        let instance = Arc::new(Instance::start(
            id,
            store.clone(),
            keys.clone(),
            [budget.clone(), cost_budget.clone()],
            ledger,
        ));
        recorder.on_stored(charge_ingested(
            keys.clone(),
            [budget.clone(), cost_budget.clone()],
        ));
        let telemetry = match &config.otel {
            Some(otel) => Some(Arc::new(crate::telemetry::Telemetry::start(otel)?)),
            None => None,
        };
        let prices = Arc::new(
            crate::pricing::PriceBook::new(&config.pricing.overrides)
                .map_err(crate::error::StartError::Io)?,
        );
        let config = Arc::new(config);
        let alerter = crate::alerts::Alerter::start(
            config.clone(),
            store.clone(),
            recorder.clone(),
            instance_id,
            clock.clone(),
        )
        .map_err(crate::error::StartError::Io)?
        .map(Arc::new);
        let sources = Arc::new(Sources::start(
            &config.sources,
            crate::sources::Context {
                recorder: recorder.clone(),
                keys: keys.clone(),
                store: store.clone(),
                instance: instance.id.clone(),
                shutdown: shutdown.clone(),
                prices: prices.clone(),
            },
        ));
        let console = ConsoleState {
            prices: prices.clone(),
            repricing: Arc::default(),
            config: config.clone(),
            store: store.clone(),
            keys: keys.clone(),
            recorder: recorder.clone(),
            gate: Arc::new(Gatekeeper::new(config.clone())),
            log_streams: Arc::default(),
            shutdown,
            clock: clock.clone(),
            sources: sources.clone(),
        };
        let metrics = Arc::new(Metrics::default());
        let gateway = GatewayState {
            config: config.clone(),
            keys: keys.clone(),
            budget,
            cost_budget,
            sinks: Arc::new(Sinks {
                recorder: recorder.clone(),
                metrics: metrics.clone(),
                telemetry: telemetry.clone(),
                gateway: Arc::new(gateway),
                clock,
                prices,
            }),
        };
        Ok(Self {
            telemetry,
            alerter,
            instance,
            keys,
            config,
            store,
            recorder,
            gateway,
            metrics,
            console,
            sources,
        })
    }
}

/// Charges each ingested record, once stored, to the global token and money budgets and to
/// those of the key it is attributed to, in the period of its instant: usage reported by a
/// source cannot be refused, but it counts.
fn charge_ingested(
    keys: Arc<KeyRegistry>,
    [tokens_budget, money_budget]: [Arc<Budget>; 2],
) -> crate::usage::StoredHook {
    Box::new(move |rows| {
        for row in rows.iter().filter(|r| r.call.ingest.is_some()) {
            let (tokens, nanos, at) = (
                row.call.tokens.total,
                row.call.cost_nanos.unwrap_or(0),
                row.call.ts,
            );
            tokens_budget.charge(tokens, at);
            money_budget.charge(nanos, at);
            if let Some(entry) = row.call.key_id.and_then(|id| keys.get(id)) {
                entry.budget.charge(tokens, at);
                entry.cost_budget.charge(nanos, at);
            }
        }
    })
}

/// The budget ledger: in memory on SQLite (one instance: no request waits for the database for
/// a lease), built from the recorded usage — all time, and in the current day, week and month —
/// the store's on PostgreSQL, shared by the instances.
async fn ledger_for(
    store: &Store,
    id: &str,
    clock: &Clock,
    tz: &jiff::tz::TimeZone,
) -> Result<Arc<Ledger>, crate::error::StartError> {
    if store.kind() != "sqlite" {
        return Ok(Ledger::new(
            store.clone(),
            id.to_owned(),
            clock.clone(),
            tz.clone(),
        ));
    }
    use crate::store::{GLOBAL_SCOPE, UNIT_NANO_USD, UNIT_TOKENS};
    let now = clock.now();
    let mut rows = LocalRows::default();
    let mut seed = |scope, period, (tokens, nanos): (u64, u64)| {
        rows.seed(ledger_row(scope, UNIT_TOKENS, period, now, tz), tokens);
        rows.seed(ledger_row(scope, UNIT_NANO_USD, period, now, tz), nanos);
    };
    let mut all = (0u64, 0u64);
    for (key_id, aggregate) in store.usage_by_key().await? {
        let used = (aggregate.tokens.total, aggregate.cost_nanos);
        all = (all.0.saturating_add(used.0), all.1.saturating_add(used.1));
        if key_id != GLOBAL_SCOPE {
            seed(key_id, None, used);
        }
    }
    seed(GLOBAL_SCOPE, None, all);
    for period in [Period::Day, Period::Week, Period::Month] {
        let first_day = period.window(now, tz).first_day;
        for (scope, used) in store.usage_since_day(first_day).await? {
            seed(scope, Some(period), used);
        }
    }
    Ok(Ledger::local(
        store.clone(),
        clock.clone(),
        tz.clone(),
        rows,
    ))
}
