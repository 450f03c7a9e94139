//! One CLIProxyAPI source's task: hold the source's lease, read its usage export, hand each
//! record to the recorder, and keep the source's health.
//!
//! Subscribe mode opens `SUBSCRIBE usage` (and `SUBSCRIBE errors`) over RESP, then empties what
//! was queued while nobody was subscribed; it falls back to popping when the server has no
//! `SUBSCRIBE` (before v7.0.7) or the address is `https://`. Pop mode asks
//! `GET /v0/management/usage-queue` and waits until the records it got are committed before it
//! asks again. A refused management key stops the task: CLIProxyAPI bans an IP after five failed
//! logins (the right key included, for 30 minutes), so it is tried again only after
//! [`AUTH_RETRY`], doubling, and at most [`MAX_AUTH_ATTEMPTS`] times per start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::record::{self, Payload};
use super::resp::{Connection, Reader, Reply, RespError};
use super::{Context, HealthCell, State};
use crate::config::{SourceConfig, SourceMode};

/// How long a lease lasts without renewal: an instance that died is replaced after this.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often the holder renews its lease and a standby instance tries to take it.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);

/// Whether a lease last renewed at `renewed` still runs at the next try: a renewal that failed
/// (a store busy for a moment — SQLite's writer waits at most its busy timeout) is tried again
/// rather than ending the session, which would drop what the subscription had read ahead.
fn lease_outlasts_a_retry(renewed: Instant) -> bool {
    renewed.elapsed() + LEASE_RENEW < LEASE_TTL
}
/// First wait after a refused management key.
pub const AUTH_RETRY: Duration = Duration::from_secs(30 * 60);
/// Refusals after which the key is not tried again until restart (CLIProxyAPI bans at five).
pub const MAX_AUTH_ATTEMPTS: u64 = 3;
/// Records asked for per pop: as many as the recorder writes in one transaction, so that a pop
/// costs one commit.
const POP_BATCH: usize = crate::usage::MAX_BATCH;
/// A subscription silent this long gets a `PING`; three times this without a word ends it.
const PING_EVERY: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Replies read ahead of the one being stored.
const READ_AHEAD: usize = 1_024;

/// How a session ended.
enum End {
    /// Shutting down.
    Shutdown,
    /// Another instance holds the lease now.
    LeaseLost,
    /// The management key was refused (the server's message).
    Refused(String),
    /// Anything else; the message says what, and the task reconnects after a backoff.
    Failed(String),
}

/// Runs the source until shutdown.
pub async fn run(config: SourceConfig, cx: Context, health: Arc<HealthCell>) {
    let mut shutdown = cx.shutdown.clone();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
    {
        Ok(client) => client,
        Err(e) => return health.error(format!("cannot build an HTTP client: {e}")),
    };
    let session = Session {
        config: &config,
        cx: &cx,
        health: &health,
        client,
    };
    let mut backoff = Duration::from_millis(200);
    let mut refusals = 0u64;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match session.renew().await {
            Ok(true) => {}
            Ok(false) => {
                health.state(State::Standby, false);
                if pause(&mut shutdown, LEASE_RENEW).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                health.error(e);
                if pause(&mut shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        health.state(State::Connecting, false);
        let ingested = health.snapshot().records_ingested;
        match session.run(&mut shutdown).await {
            End::Shutdown => break,
            End::LeaseLost => health.state(State::Standby, false),
            End::Failed(message) => {
                health.error(message);
                if health.snapshot().records_ingested > ingested {
                    backoff = Duration::from_millis(200);
                }
                if pause(&mut shutdown, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            End::Refused(message) => {
                refusals += 1;
                session.release().await;
                let wait = AUTH_RETRY * 2u32.saturating_pow(refusals.saturating_sub(1) as u32);
                let next = if refusals >= MAX_AUTH_ATTEMPTS {
                    "not tried again until token-console restarts".to_owned()
                } else {
                    format!("tried again in {} minutes", wait.as_secs() / 60)
                };
                health.error(format!(
                    "management key rejected ({message}); fix management_key (CLIProxyAPI's remote-management.secret-key) and restart; {next}, to stay clear of CLIProxyAPI's ban after five failed logins"
                ));
                health.update(|h| h.auth_failures += 1);
                health.state(State::Stopped, false);
                let wait = if refusals >= MAX_AUTH_ATTEMPTS {
                    Duration::MAX
                } else {
                    wait
                };
                if pause(&mut shutdown, wait).await {
                    break;
                }
            }
        }
    }
    session.release().await;
}

/// Sleeps `wait` unless shutdown comes first; returns whether it did.
async fn pause(shutdown: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = shutdown.changed() => true,
        () = sleep(wait) => *shutdown.borrow(),
    }
}

/// `tokio::time::sleep`, for durations it cannot represent too (pending forever).
async fn sleep(wait: Duration) {
    match tokio::time::Instant::now().checked_add(wait) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Session<'a> {
    config: &'a SourceConfig,
    cx: &'a Context,
    health: &'a HealthCell,
    client: reqwest::Client,
}

impl Session<'_> {
    /// Takes or renews the lease.
    async fn renew(&self) -> Result<bool, String> {
        self.cx
            .store
            .take_source_lease(
                self.config.name.clone(),
                self.cx.instance.clone(),
                LEASE_TTL.as_millis() as i64,
            )
            .await
            .map_err(|e| format!("cannot take the source's lease in the store: {e}"))
    }

    async fn release(&self) {
        let _ = self
            .cx
            .store
            .release_source_lease(self.config.name.clone(), self.cx.instance.clone())
            .await;
    }

    /// Renews the lease when it is due; `Some` ends the session.
    async fn keep_lease(&self, renewed: &mut Instant) -> Option<End> {
        if renewed.elapsed() < LEASE_RENEW {
            return None;
        }
        match self.renew().await {
            Ok(true) => {
                *renewed = Instant::now();
                None
            }
            Ok(false) => Some(End::LeaseLost),
            Err(e) if lease_outlasts_a_retry(*renewed) => {
                tracing::warn!(source = %self.config.name, "{e}; trying again");
                None
            }
            Err(e) => Some(End::Failed(e)),
        }
    }

    async fn run(&self, shutdown: &mut watch::Receiver<bool>) -> End {
        if self.config.mode == SourceMode::Subscribe {
            match resp_address(&self.config.url) {
                Some(address) => match self.subscribe(&address, shutdown).await {
                    Ok(end) => return end,
                    Err(why) => tracing::info!(
                        source = %self.config.name,
                        "{why}; popping the queue instead"
                    ),
                },
                None => tracing::info!(
                    source = %self.config.name,
                    "subscribing needs a plain http:// address (RESP over TLS is not supported); popping the queue over HTTPS instead"
                ),
            }
        }
        self.poll(shutdown).await
    }

    /// Hands one payload on: a record to the recorder, the rest counted.
    async fn ingest(&self, payload: Payload, text: impl FnOnce() -> String) {
        match payload {
            Payload::Record(mut call) => {
                self.cx.attribute(&mut call);
                super::price(&self.cx.prices, &mut call);
                let ts = call.ts;
                self.cx.recorder.record(*call).await;
                self.health.records(1, Some(ts));
            }
            Payload::Control => self.health.update(|h| h.control_messages += 1),
            Payload::Bad(reason) => {
                let example = text();
                tracing::debug!(source = %self.config.name, "skipped a record: {reason}");
                self.health.bad(&reason, &example);
            }
        }
    }

    // --- Pop --------------------------------------------------------------------------------

    async fn poll(&self, shutdown: &mut watch::Receiver<bool>) -> End {
        let mut renewed = Instant::now();
        loop {
            let got = match self.pop_once().await {
                Ok(n) => n,
                Err(end) => return end,
            };
            if let Some(end) = self.keep_lease(&mut renewed).await {
                return end;
            }
            if got < POP_BATCH && pause(shutdown, self.poll_interval()).await {
                return End::Shutdown;
            }
            if *shutdown.borrow() {
                return End::Shutdown;
            }
        }
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.config.poll_interval_ms)
    }

    /// Pops up to [`POP_BATCH`] records, stores them, and waits for their commit; returns how
    /// many came.
    async fn pop_once(&self) -> Result<usize, End> {
        let url = format!(
            "{}/v0/management/usage-queue?count={POP_BATCH}",
            self.config.url
        );
        let response = self
            .client
            .get(&url)
            .bearer_auth(self.config.management_key.expose())
            .send()
            .await
            .map_err(|e| {
                End::Failed(format!(
                    "cannot reach {}: {}",
                    self.config.url,
                    error_chain(&e)
                ))
            })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| End::Failed(format!("the usage queue's answer broke off: {e}")))?;
        match status {
            200 => {}
            401 | 403 => return Err(End::Refused(server_error(&body, status))),
            404 => {
                return Err(End::Failed(
                    "CLIProxyAPI answers 404 to /v0/management/usage-queue: its management API is off (set remote-management.secret-key; CLIProxyAPI v6.10.8 or newer)".into(),
                ))
            }
            _ => {
                return Err(End::Failed(format!(
                    "the usage queue answered {status}: {}",
                    server_error(&body, status)
                )))
            }
        }
        let values: Vec<serde_json::Value> = serde_json::from_slice(&body).map_err(|e| {
            End::Failed(format!("the usage queue did not answer a JSON array: {e}"))
        })?;
        self.health.state(State::Polling, true);
        for value in &values {
            let payload = match value {
                // A payload that is not JSON is sent as a JSON string.
                serde_json::Value::String(text) => record::parse_cpa_text(text, &self.config.name),
                other => record::parse_cpa_value(other, &self.config.name),
            };
            self.ingest(payload, || value.to_string()).await;
        }
        // Popped records are gone from CLIProxyAPI: commit them before popping more.
        self.cx.recorder.flush().await;
        Ok(values.len())
    }

    // --- Subscribe --------------------------------------------------------------------------

    /// `Err` when subscribing is not possible (the caller pops instead).
    async fn subscribe(
        &self,
        address: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<End, String> {
        let mut usage = match self.open(address).await {
            Ok(connection) => connection,
            Err(end) => return Ok(end),
        };
        match usage.call(&["SUBSCRIBE", "usage"]).await {
            Ok(Reply::Array(Some(items)))
                if items.first().and_then(Reply::text) == Some("subscribe") => {}
            Ok(Reply::Error(e)) if e.contains("unknown command") => {
                return Err(format!("CLIProxyAPI has no SUBSCRIBE (before v7.0.7): {e}"))
            }
            Ok(other) => {
                return Ok(End::Failed(format!(
                    "SUBSCRIBE usage was answered {other:?}"
                )))
            }
            Err(e) => return Ok(End::Failed(format!("SUBSCRIBE usage failed: {e}"))),
        }
        // A second connection for the `errors` channel; without it usage still flows.
        let errors = match self.open(address).await {
            Ok(mut c) => match c.call(&["SUBSCRIBE", "errors"]).await {
                Ok(Reply::Array(_)) => Some(c),
                _ => None,
            },
            Err(_) => None,
        };
        self.health.state(State::Subscribed, true);
        // Records queued while nobody was subscribed (a restart, a reconnect) are popped now;
        // new ones come only to subscribers.
        loop {
            match self.pop_once().await {
                Ok(n) if n == POP_BATCH => continue,
                Ok(_) => break,
                Err(end) => return Ok(end),
            }
        }
        self.health.state(State::Subscribed, true);
        Ok(self.listen(usage, errors, shutdown).await)
    }

    /// Connects and authenticates.
    async fn open(&self, address: &str) -> Result<Connection, End> {
        let mut c = Connection::connect(address, CONNECT_TIMEOUT)
            .await
            .map_err(|e| End::Failed(format!("cannot connect to {address}: {e}")))?;
        match c.call(&["AUTH", self.config.management_key.expose()]).await {
            Ok(Reply::Simple(ok)) if ok == "OK" => Ok(c),
            Ok(Reply::Error(e)) if e.contains("management key") || e.contains("banned") || e.contains("arguments") => {
                Err(End::Refused(e))
            }
            Ok(other) => Err(End::Failed(format!("AUTH was answered {other:?}"))),
            Err(RespError::Closed) => Err(End::Failed(
                "CLIProxyAPI closed the connection without answering AUTH: its management API is off (set remote-management.secret-key)".into(),
            )),
            Err(e) => Err(End::Failed(format!("AUTH failed: {e}"))),
        }
    }

    async fn listen(
        &self,
        usage: Connection,
        errors: Option<Connection>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> End {
        let (reader, mut writer) = usage.split();
        let (tx, mut replies) = mpsc::channel(READ_AHEAD);
        let usage_task = tokio::spawn(read_replies(reader, tx));
        let (etx, mut events) = mpsc::channel(64);
        let errors_task = errors.map(|c| tokio::spawn(read_replies(c.split().0, etx)));
        let (renewal, mut lease) = self.renewer();
        let mut heard = Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                _ = shutdown.changed() => break End::Shutdown,
                reply = replies.recv() => {
                    heard = Instant::now();
                    match reply {
                        Some(Ok(reply)) => {
                            if let Some(end) = self.on_message(reply).await {
                                break end;
                            }
                        }
                        Some(Err(e)) => break End::Failed(lost(&e)),
                        None => break End::Failed(lost(&RespError::Closed)),
                    }
                }
                end = &mut lease => break end.unwrap_or(End::LeaseLost),
                Some(Ok(event)) = events.recv() => self.on_error_event(&event),
                _ = ping.tick() => {
                    if heard.elapsed() > PING_EVERY * 3 {
                        break End::Failed("the subscription went silent (no answer to PING)".into());
                    }
                    if heard.elapsed() >= PING_EVERY {
                        if let Err(e) = writer.send(&["PING"]).await {
                            break End::Failed(lost(&e));
                        }
                    }
                }
            }
        };
        renewal.abort();
        usage_task.abort();
        if let Some(task) = errors_task {
            task.abort();
        }
        if matches!(end, End::Shutdown) {
            // What was read ahead is stored, not dropped (what is still in the socket is lost).
            while let Ok(Ok(reply)) = replies.try_recv() {
                let _ = self.on_message(reply).await;
            }
        }
        end
    }

    /// Renews the lease every [`LEASE_RENEW`] on a task of its own, so that a store write waiting
    /// for the database never holds up reading the subscription (CLIProxyAPI drops a reader that
    /// falls 256 records behind); the receiver gets why the lease was lost.
    fn renewer(&self) -> (tokio::task::JoinHandle<()>, oneshot::Receiver<End>) {
        let (tx, rx) = oneshot::channel();
        let (store, name, holder) = (
            self.cx.store.clone(),
            self.config.name.clone(),
            self.cx.instance.clone(),
        );
        let task = tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::time::sleep(LEASE_RENEW).await;
                let answer = store
                    .take_source_lease(name.clone(), holder.clone(), LEASE_TTL.as_millis() as i64)
                    .await;
                let end = match answer {
                    Ok(true) => {
                        renewed = Instant::now();
                        continue;
                    }
                    Ok(false) => End::LeaseLost,
                    Err(e) if lease_outlasts_a_retry(renewed) => {
                        tracing::warn!(source = %name, "cannot renew the lease ({e}); trying again");
                        continue;
                    }
                    Err(e) => {
                        End::Failed(format!("cannot renew the source's lease in the store: {e}"))
                    }
                };
                let _ = tx.send(end);
                return;
            }
        });
        (task, rx)
    }

    /// One reply in pub/sub mode: a message, a pong, or an error.
    async fn on_message(&self, reply: Reply) -> Option<End> {
        let Reply::Array(Some(items)) = reply else {
            return match reply {
                Reply::Error(e) => Some(End::Failed(format!(
                    "the subscription answered an error: {e}"
                ))),
                _ => None,
            };
        };
        match items.first().and_then(Reply::text) {
            Some("message") => {
                let text = items.get(2).and_then(Reply::text).unwrap_or_default();
                let payload = record::parse_cpa_text(text, &self.config.name);
                self.ingest(payload, || text.to_owned()).await;
                None
            }
            _ => None, // pong
        }
    }

    /// An event of the `errors` channel: counted, and the last one summarised in the log.
    fn on_error_event(&self, reply: &Reply) {
        let Reply::Array(Some(items)) = reply else {
            return;
        };
        if items.first().and_then(Reply::text) != Some("message") {
            return;
        }
        self.health.update(|h| h.error_events += 1);
        if let Some(text) = items.get(2).and_then(Reply::text) {
            tracing::info!(source = %self.config.name, event = %record::bounded(text, 512), "CLIProxyAPI reported an upstream error");
        }
    }
}

/// Reads replies into `tx` until the connection ends (the last item is the error).
async fn read_replies(mut reader: Reader, tx: mpsc::Sender<Result<Reply, RespError>>) {
    loop {
        let reply = reader.read().await;
        let end = reply.is_err();
        if tx.send(reply).await.is_err() || end {
            return;
        }
    }
}

fn lost(e: &RespError) -> String {
    format!("the subscription ended ({e}): CLIProxyAPI restarted, turned management off, or dropped this reader for being too slow (its buffer holds 256 records)")
}

/// `host:port` of an `http://` URL (port 80 when none is given); `None` for `https://`.
fn resp_address(url: &str) -> Option<String> {
    let uri: axum::http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    Some(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

/// The `error` member of a management API answer, else its status.
fn server_error(body: &[u8], status: u16) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .map(|e| format!("{status} {}", record::bounded(&e, 200)))
        .unwrap_or_else(|| format!("status {status}"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_addresses_come_from_http_urls_only() {
        assert_eq!(
            resp_address("http://127.0.0.1:8318").as_deref(),
            Some("127.0.0.1:8318")
        );
        assert_eq!(
            resp_address("http://cpa.local").as_deref(),
            Some("cpa.local:80")
        );
        assert_eq!(resp_address("https://cpa.local:8317"), None);
    }

    #[test]
    fn server_errors_are_read_from_the_body() {
        assert_eq!(
            server_error(br#"{"error":"invalid management key"}"#, 401),
            "401 invalid management key"
        );
        assert_eq!(server_error(b"", 403), "status 403");
    }
}
