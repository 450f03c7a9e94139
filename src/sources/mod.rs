//! Usage sources: CLIProxyAPI instances whose per-request usage export is read into the store as
//! calls (`sources:` in the config), and the push endpoint's records. Each configured source has
//! one task that holds the source's lease in the store (one consumer per source across
//! instances), reads records by subscription or by popping, and hands them to the recorder; its
//! [`Health`] is shown in `/healthz` and the console.

pub mod cliproxyapi;
pub mod record;
pub mod resp;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{SourceConfig, SourceMode};
use crate::keys::KeyRegistry;
use crate::store::Store;
use crate::usage::{CallRecord, Recorder};

/// What a source's task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the lease: another instance consumes this source.
    Standby,
    /// Connecting, or waiting to reconnect after an error.
    Connecting,
    /// Receiving records through `SUBSCRIBE usage`.
    Subscribed,
    /// Popping the queue every `poll_interval_ms`.
    Polling,
    /// Stopped: the management key was refused (see `last_error`).
    Stopped,
}

impl State {
    /// The state's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standby => "standby",
            Self::Connecting => "connecting",
            Self::Subscribed => "subscribed",
            Self::Polling => "polling",
            Self::Stopped => "stopped",
        }
    }
}

/// A source's health, as `/healthz` and the console show it.
#[derive(Debug, Clone)]
pub struct Health {
    /// The source's name.
    pub name: String,
    /// `subscribe` or `pop`, as configured.
    pub mode: &'static str,
    /// What the task is doing.
    pub state: State,
    /// Whether a connection to the source is up (a subscription, or the last pop answered).
    pub connected: bool,
    /// When the last record arrived.
    pub last_record_at: Option<jiff::Timestamp>,
    /// Records handed to the recorder since start (before de-duplication).
    pub records_ingested: u64,
    /// Payloads that were not usage records (skipped).
    pub bad_records: u64,
    /// Why the last bad payload was skipped, and its first bytes.
    pub last_bad_record: Option<String>,
    /// Control messages received (`support_refresh`, `refresh`).
    pub control_messages: u64,
    /// Events of CLIProxyAPI's `errors` channel received.
    pub error_events: u64,
    /// Milliseconds from the last record's start (its `timestamp`) to its arrival here.
    pub lag_ms: Option<u64>,
    /// The last error, e.g. "management key rejected"; cleared when records flow again.
    pub last_error: Option<String>,
    /// When the last error happened.
    pub last_error_at: Option<jiff::Timestamp>,
    /// Times the management key was refused since start.
    pub auth_failures: u64,
}

/// A source's health, shared by its task and the readers.
#[derive(Debug)]
pub struct HealthCell(Mutex<Health>);

impl HealthCell {
    fn new(config: &SourceConfig) -> Self {
        Self(Mutex::new(Health {
            name: config.name.clone(),
            mode: match config.mode {
                SourceMode::Subscribe => "subscribe",
                SourceMode::Pop => "pop",
            },
            state: State::Standby,
            connected: false,
            last_record_at: None,
            records_ingested: 0,
            bad_records: 0,
            last_bad_record: None,
            control_messages: 0,
            error_events: 0,
            lag_ms: None,
            last_error: None,
            last_error_at: None,
            auth_failures: 0,
        }))
    }

    /// A copy of the current health.
    pub fn snapshot(&self) -> Health {
        self.update(|h| h.clone())
    }

    fn update<T>(&self, change: impl FnOnce(&mut Health) -> T) -> T {
        match self.0.lock() {
            Ok(mut h) => change(&mut h),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    fn state(&self, state: State, connected: bool) {
        self.update(|h| {
            h.state = state;
            h.connected = connected;
        });
    }

    fn error(&self, message: String) {
        tracing::warn!(source = %self.snapshot().name, "{message}");
        self.update(|h| {
            h.last_error = Some(message);
            h.last_error_at = Some(jiff::Timestamp::now());
            h.connected = false;
        });
    }

    fn records(&self, n: u64, last_ts: Option<jiff::Timestamp>) {
        let now = jiff::Timestamp::now();
        self.update(|h| {
            h.records_ingested += n;
            if let Some(ts) = last_ts {
                h.last_record_at = Some(now);
                let lag = now.as_millisecond() - ts.as_millisecond();
                h.lag_ms = Some(lag.max(0) as u64);
            }
            h.last_error = None;
        });
    }

    fn bad(&self, reason: &str, example: &str) {
        self.update(|h| {
            h.bad_records += 1;
            h.last_bad_record = Some(record::bounded(
                &format!("{reason}: {example}"),
                record::MAX_EXAMPLE,
            ));
        });
    }
}

/// What a source's task needs.
#[derive(Clone)]
pub struct Context {
    /// Where records go.
    pub recorder: Arc<Recorder>,
    /// To attribute a record to the token-console key with the same hash.
    pub keys: Arc<KeyRegistry>,
    /// For the lease.
    pub store: Store,
    /// This instance's id (the lease holder).
    pub instance: String,
    /// Becomes `true` on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Prices ingested calls as the gateway's own.
    pub prices: Arc<crate::pricing::PriceBook>,
}

impl Context {
    /// Fills in the token-console key whose hash the record's client key has, if any.
    pub fn attribute(&self, call: &mut CallRecord) {
        let Some(hash) = call.ingest.as_ref().and_then(|i| i.client_key_hash) else {
            return;
        };
        if let Some(entry) = self.keys.find_by_hash(&hash) {
            call.key_id = Some(entry.id);
            call.key_name = Some(entry.settings().name.clone());
        }
    }
}

/// The configured sources' tasks and their health.
pub struct Sources {
    health: Vec<Arc<HealthCell>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl Sources {
    /// Starts one task per configured source.
    pub fn start(configs: &[SourceConfig], context: Context) -> Self {
        let mut tasks = tokio::task::JoinSet::new();
        let mut health = Vec::with_capacity(configs.len());
        for config in configs {
            let cell = Arc::new(HealthCell::new(config));
            health.push(cell.clone());
            tasks.spawn(cliproxyapi::run(config.clone(), context.clone(), cell));
        }
        Self {
            health,
            tasks: Mutex::new(tasks),
        }
    }

    /// Each source's health, in configuration order.
    pub fn health(&self) -> Vec<Health> {
        self.health.iter().map(|h| h.snapshot()).collect()
    }

    /// Waits (at most `limit`) for the tasks to stop after the shutdown signal: each gives its
    /// lease up once the records it read are queued.
    pub async fn stopped(&self, limit: Duration) {
        let tasks = self.tasks.lock().map(|mut t| std::mem::take(&mut *t));
        if let Ok(mut tasks) = tasks {
            if tokio::time::timeout(limit, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_err()
            {
                tasks.abort_all();
            }
        }
    }
}

/// Prices an ingested call from its reported tokens, as the gateway prices its own calls.
pub fn price(prices: &crate::pricing::PriceBook, call: &mut CallRecord) {
    (call.cost_nanos, call.cost_status) = prices.cost_of(&call.model, call.ts, &call.tokens, false);
}
