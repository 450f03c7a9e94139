//! Keeps an instance in step with the others on its database: every [`POLL_INTERVAL`] it reads
//! the keys changed through any console (`api_keys.version`), gives back the budget slices it
//! has not used for a second and charges what calls used beyond their reservation, and every few
//! seconds notes that it is alive and gives the budget slices of instances not seen for
//! [`STALE_AFTER_MS`] (killed ones) back to the ledger. On shutdown it gives back everything it
//! holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Budget, KeyRegistry, Ledger, IDLE_RETURN_AFTER};
use crate::store::Store;

/// How often key changes are read from the store: changes made through another instance are
/// honoured within this, plus one query.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often an instance notes that it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// An instance not seen for this long is taken for dead.
pub const STALE_AFTER_MS: i64 = 15_000;
/// Least time between two warnings about a failing store.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Ledger rows of periods that started this long ago are forgotten: a month's row is charged
/// until a little after the month ends (calls admitted in it that end later), and no period is
/// longer than 31 days.
const KEEP_PERIODS_FOR: jiff::SignedDuration = jiff::SignedDuration::from_hours(24 * 63);

/// The instant (UTC milliseconds) before which periods started are forgotten.
fn prune_before(ledger: &Ledger) -> i64 {
    (ledger.clock().now() - KEEP_PERIODS_FOR).as_millisecond()
}

/// This instance on the shared database, and the task that keeps it in step.
pub struct Instance {
    /// Random identity of this process among the instances.
    pub id: String,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the task works on.
struct Parts {
    id: String,
    store: Store,
    keys: Arc<KeyRegistry>,
    /// The global budgets: tokens and money.
    global: [Arc<Budget>; 2],
    ledger: Arc<Ledger>,
}

impl Instance {
    /// A random identity for this process.
    pub fn new_id() -> String {
        let mut bytes = [0u8; 6];
        let random = rand::TryRngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut bytes).is_ok();
        let suffix: String = if random {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            jiff::Timestamp::now().as_millisecond().to_string()
        };
        format!("{}-{suffix}", std::process::id())
    }

    /// Starts keeping `keys`, the `global` budgets (tokens, money) and their `ledger` in step
    /// with `store`.
    pub fn start(
        id: String,
        store: Store,
        keys: Arc<KeyRegistry>,
        global: [Arc<Budget>; 2],
        ledger: Arc<Ledger>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let parts = Parts {
            id: id.clone(),
            store,
            keys,
            global,
            ledger,
        };
        let task = tokio::spawn(parts.run(stopped));
        Self {
            id,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops the task after giving back every unused budget slice and leaving the instance list.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            if task.await.is_err() {
                tracing::error!("the instance sync task ended abnormally");
            }
        }
    }
}

impl Parts {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut last_heartbeat = Instant::now();
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stopped.changed() => break,
            }
            let mut failure = None;
            if let Err(e) = self.poll_keys().await {
                failure = Some(format!("cannot read key changes: {e}"));
            }
            if let Err(e) = self
                .ledger
                .sync(self.budgets().iter(), IDLE_RETURN_AFTER)
                .await
            {
                failure = Some(format!("cannot update the budget ledger: {e}"));
            }
            if last_heartbeat.elapsed() >= HEARTBEAT_INTERVAL {
                last_heartbeat = Instant::now();
                if let Err(e) = self.store.heartbeat(self.id.clone()).await {
                    failure = Some(format!("cannot note this instance as alive: {e}"));
                }
                if let Err(e) = self.store.prune_budgets(prune_before(&self.ledger)).await {
                    failure = Some(format!("cannot forget past budget periods: {e}"));
                }
                match self.store.reap_instances(STALE_AFTER_MS).await {
                    Ok(0) => {}
                    Ok(tokens) => tracing::info!(
                        tokens,
                        "gave the budget slices of instances not seen for {STALE_AFTER_MS} ms back to the ledger"
                    ),
                    Err(e) => {
                        failure = Some(format!("cannot return dead instances' budget slices: {e}"));
                    }
                }
            }
            if let Some(message) = failure {
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                    last_warning = Some(Instant::now());
                    tracing::warn!("{message}; retrying every {POLL_INTERVAL:?}");
                }
            }
        }
        if let Err(e) = self
            .ledger
            .sync(self.budgets().iter(), Duration::ZERO)
            .await
        {
            tracing::warn!("cannot give back unused budget slices on shutdown: {e}");
        }
        if let Err(e) = self.store.unregister_instance(self.id.clone()).await {
            tracing::warn!("cannot leave the instance list on shutdown: {e}");
        }
    }

    async fn poll_keys(&self) -> Result<(), crate::store::StoreError> {
        let rows = self.store.keys_changed_since(self.keys.version()).await?;
        if let Some(newest) = rows.iter().map(|r| r.version).max() {
            self.keys.apply_changes(&rows);
            self.keys.advance_version(newest);
            tracing::debug!(changes = rows.len(), "applied key changes");
        }
        Ok(())
    }

    fn budgets(&self) -> Vec<Arc<Budget>> {
        let mut budgets = self.keys.key_budgets();
        budgets.extend(self.global.iter().cloned());
        budgets
    }
}
