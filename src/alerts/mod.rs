//! Alerts: a background task that evaluates the rules of `alerts:` every `interval_ms` over what
//! the store holds (budgets and their forecasts, anomalies) and over this instance's recorder,
//! raises each alert once — the store keeps an alert's `dedup` (rule, subject, period) unique,
//! so of several instances evaluating together exactly one raises it — and delivers it to every
//! target off the request path, retried with backoff, each try noted in the store.

pub mod deliver;
pub mod payload;
pub mod rules;
pub mod sign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::clock::Clock;
use crate::config::{AlertsConfig, Config};
use crate::insights::{anomaly, budgets, hour_start};
use crate::store::{AlertHeading, Delivery, NewAlert, Store, StoreError};
use crate::usage::Recorder;
use payload::AnomalyFigures;
use rules::{Context, Raised};

/// Hours examined for anomalies at each evaluation: the current one and the one before, so an
/// anomaly of an hour that just ended is still seen.
const ANOMALY_HOURS: i64 = 2;
/// Alerts of rules whose periods end (anomalies, recorder episodes) are kept this long.
const KEEP_ENDED_ALERTS: jiff::SignedDuration = jiff::SignedDuration::from_hours(24 * 90);
/// How often those are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long deliveries still running at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The alert task of this instance.
pub struct Alerter {
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Alerter {
    /// Starts evaluating the rules of `config.alerts` at the instants `clock` reads (the clock
    /// calls are stamped and budget periods cut by); `None` when no alerts are configured.
    pub fn start(
        config: Arc<Config>,
        store: Store,
        recorder: Arc<Recorder>,
        instance: String,
        clock: Clock,
    ) -> Result<Option<Self>, String> {
        let Some(alerts) = config.alerts.clone() else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(alerts.timeout_ms))
            .connect_timeout(Duration::from_millis(alerts.timeout_ms))
            .build()
            .map_err(|e| format!("cannot build the HTTP client of alerts: {e}"))?;
        let (stop, stopped) = watch::channel(false);
        let engine = Engine {
            config,
            alerts,
            store,
            recorder,
            instance,
            clock,
            client,
            deliveries: JoinSet::new(),
            degraded: None,
            last_prune: None,
        };
        let task = tokio::spawn(engine.run(stopped));
        Ok(Some(Self {
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Stops the task, letting deliveries under way finish for a few seconds.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            if task.await.is_err() {
                tracing::error!("the alert task ended abnormally");
            }
        }
    }
}

/// A recorder outage as the task follows it: since when, and whether it was announced.
struct Outage {
    since: jiff::Timestamp,
    raised: bool,
}

struct Engine {
    config: Arc<Config>,
    alerts: AlertsConfig,
    store: Store,
    recorder: Arc<Recorder>,
    instance: String,
    /// What evaluations take as now: a budget's period and spend, the hours of anomalies.
    clock: Clock,
    client: reqwest::Client,
    deliveries: JoinSet<()>,
    degraded: Option<Outage>,
    last_prune: Option<Instant>,
}

impl Engine {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.alerts.interval_ms);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stopped.changed() => break,
            }
            while self.deliveries.try_join_next().is_some() {}
            // The recorder first: when it cannot write, the store's writes below may wait as
            // long as the database's lock timeout, and its alert should not wait for them.
            self.watch_recorder().await;
            if let Err(e) = self.evaluate().await {
                tracing::warn!(
                    "cannot evaluate the alert rules: {e}; trying again in {interval:?}"
                );
            }
            if !self.recorder.stats().degraded {
                self.take_over().await;
                self.prune().await;
            }
        }
        let finish = async { while self.deliveries.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
            tracing::warn!("alert deliveries still running at shutdown were stopped");
            self.deliveries.abort_all();
        }
    }

    /// Raises what the budgets and anomalies call for now.
    async fn evaluate(&mut self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let rules = self.alerts.rules.clone();
        let global = budgets::Global {
            limit: self.config.total_tokens,
            period: self.config.limit_period,
        };
        let budgets = budgets::budgets(&self.store, global, &self.config.timezone, now).await?;
        let ctx = Context {
            instance: &self.instance,
            now,
        };
        let mut raised = Vec::new();
        for b in &budgets {
            raised.extend(rules::budget_alerts(&ctx, &rules, b));
            raised.extend(rules::forecast_alert(&ctx, &rules, b));
        }
        if rules.anomalies {
            let names: HashMap<i64, String> = budgets
                .iter()
                .filter_map(|b| Some((b.key_id?, b.key_name.clone()?)))
                .collect();
            for a in anomaly::recent(&self.store, now, ANOMALY_HOURS, None).await? {
                let day = hour_start(a.hour)
                    .to_zoned(self.config.timezone.clone())
                    .date()
                    .strftime("%Y-%m-%d")
                    .to_string();
                let figures = AnomalyFigures::new(&a, names.get(&a.key_id).cloned());
                raised.push(rules::anomaly_alert(&ctx, figures, day));
            }
        }
        for alert in raised {
            self.raise(alert).await?;
        }
        Ok(())
    }

    /// Announces a recorder that has failed to write for two evaluations in a row, once per
    /// outage. Its store is likely the one failing: if the alert cannot be stored it is
    /// delivered all the same (this instance alone announces its own recorder).
    async fn watch_recorder(&mut self) {
        if !self.alerts.rules.recorder_degraded {
            return;
        }
        if !self.recorder.stats().degraded {
            self.degraded = None;
            return;
        }
        let Some(outage) = &mut self.degraded else {
            self.degraded = Some(Outage {
                since: jiff::Timestamp::now(),
                raised: false,
            });
            return;
        };
        if outage.raised {
            return;
        }
        outage.raised = true;
        let ctx = Context {
            instance: &self.instance,
            now: jiff::Timestamp::now(),
        };
        let raised = rules::degraded_alert(&ctx, outage.since, self.recorder.last_error());
        let mut alert = self.new_alert(&raised);
        let deliveries: Vec<_> = self
            .alerts
            .targets
            .iter()
            .map(|target| {
                deliver::deliver(
                    self.client.clone(),
                    self.alerts.clone(),
                    target.clone(),
                    self.store.clone(),
                    None,
                    raised.payload.clone(),
                    0,
                )
            })
            .collect();
        let store = self.store.clone();
        self.deliveries.spawn(async move {
            alert.deliveries = futures_util::future::join_all(deliveries).await;
            if let Err(e) = store.claim_alert(alert).await {
                tracing::warn!("cannot store the recorder alert (it was delivered): {e}");
            }
        });
    }

    /// Delivers what an instance left `pending` when it died or stopped: a delivery unchanged
    /// for longer than a live instance ever leaves one (a try's timeout, the longest backoff
    /// wait, and a minute for clocks that differ) is taken over by one instance.
    async fn take_over(&mut self) {
        let a = &self.alerts;
        let longest_wait = a
            .backoff_ms
            .saturating_mul(1u64 << a.attempts.saturating_sub(1).min(20));
        let quiet_ms = a
            .timeout_ms
            .saturating_add(longest_wait)
            .saturating_add(60_000);
        let now = jiff::Timestamp::now();
        let stale_before =
            now - jiff::SignedDuration::from_millis(i64::try_from(quiet_ms).unwrap_or(i64::MAX));
        let taken = match self.store.take_stale_deliveries(stale_before, now).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::warn!("cannot look for deliveries left pending: {e}");
                return;
            }
        };
        for (alert_id, payload, delivery) in taken {
            let target = self
                .alerts
                .targets
                .iter()
                .find(|t| t.name == delivery.target)
                .cloned();
            let payload = serde_json::from_str::<payload::AlertPayload>(&payload).ok();
            let (Some(target), Some(payload)) = (target, payload) else {
                let failed = Delivery {
                    status: "failed".to_owned(),
                    error: Some("left pending, and its target is no longer configured".to_owned()),
                    updated_at: now,
                    ..delivery
                };
                if let Err(e) = self.store.update_delivery(alert_id, failed).await {
                    tracing::warn!(alert_id, "cannot note an alert delivery: {e}");
                }
                continue;
            };
            tracing::info!(alert_id, target = %target.name, "delivering an alert left pending");
            let delivery = deliver::deliver(
                self.client.clone(),
                self.alerts.clone(),
                target,
                self.store.clone(),
                Some(alert_id),
                payload,
                delivery.attempts,
            );
            self.deliveries.spawn(async move {
                delivery.await;
            });
        }
    }

    async fn prune(&mut self) {
        if self.last_prune.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let before = jiff::Timestamp::now() - KEEP_ENDED_ALERTS;
        let ended = [
            "anomaly_error_rate",
            "anomaly_token_volume",
            "recorder_degraded",
        ];
        let rules = ended.iter().map(|r| (*r).to_owned()).collect();
        if let Err(e) = self.store.prune_alerts(before, rules).await {
            tracing::warn!("cannot prune old alerts: {e}");
        }
    }

    /// Stores the alert unless it was raised before (by any instance) and, if this call stored
    /// it, delivers it.
    async fn raise(&mut self, raised: Raised) -> Result<(), StoreError> {
        let alert = self.new_alert(&raised);
        let Some(id) = self.store.claim_alert(alert).await? else {
            return Ok(());
        };
        tracing::info!(alert_id = id, rule = %raised.payload.rule, subject = %raised.subject, "alert raised");
        if raised.skip.is_none() {
            self.spawn_deliveries(id, &raised);
        }
        Ok(())
    }

    /// The alert to store for `raised`, its deliveries `pending` (or `skipped`).
    fn new_alert(&self, raised: &Raised) -> NewAlert {
        let payload = serde_json::to_string(&raised.payload).unwrap_or_default();
        let deliveries = self
            .alerts
            .targets
            .iter()
            .map(|t| Delivery {
                target: t.name.clone(),
                kind: t.kind.name().to_owned(),
                status: if raised.skip.is_some() {
                    "skipped"
                } else {
                    "pending"
                }
                .to_owned(),
                attempts: 0,
                http_status: None,
                error: raised.skip.clone(),
                updated_at: jiff::Timestamp::now(),
            })
            .collect();
        NewAlert {
            dedup: raised.dedup.clone(),
            heading: AlertHeading {
                rule: raised.payload.rule.clone(),
                event: raised.payload.event.clone(),
                key_id: raised.payload.key_id,
                subject: raised.subject.clone(),
                period: raised.payload.period.clone(),
                message: raised.payload.event_message.clone(),
            },
            payload,
            created_at: jiff::Timestamp::now(),
            instance: self.instance.clone(),
            deliveries,
        }
    }

    fn spawn_deliveries(&mut self, id: i64, raised: &Raised) {
        for target in &self.alerts.targets {
            let delivery = deliver::deliver(
                self.client.clone(),
                self.alerts.clone(),
                target.clone(),
                self.store.clone(),
                Some(id),
                raised.payload.clone(),
                0,
            );
            self.deliveries.spawn(async move {
                delivery.await;
            });
        }
    }
}
