//! The meter of one gateway call: it gathers what the call did and, when the call ends however
//! it ends (answered, failed, or abandoned by the client), settles the budget reservation, counts
//! the metrics and hands exactly one record to the recorder.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::endpoint::Endpoint;
use super::estimate;
use super::tally::{BodyRead, StreamTally};
use super::GatewayState;
use crate::keys::Reservation;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;
use crate::usage::{CallRecord, Recorder, Slot, TokenUsage};

/// Status recorded when the client went away before the answer was complete.
pub const CLIENT_CLOSED: u16 = 499;
/// Headers that carry a client's session id, the first present winning: Claude Code's, then
/// Codex's and other common spellings.
const SESSION_HEADERS: [&str; 5] = [
    "x-claude-code-session-id",
    "session_id",
    "session-id",
    "x-session-id",
    "conversation_id",
];
/// The header naming the end user a call is made for; it wins over the body's `user`,
/// `safety_identifier` or `metadata.user_id`. Never forwarded (not in the allow-list).
pub const USER_HEADER: &str = "x-token-console-user";
/// Longest error text kept in a record.
const MAX_ERROR_CHARS: usize = 300;

/// Where finished calls go: the handles a meter needs, shared by every call (a meter holds one
/// `Arc` of them, not the whole [`GatewayState`]).
pub struct Sinks {
    /// Takes each call's record.
    pub recorder: Arc<Recorder>,
    /// Counts each call.
    pub metrics: Arc<Metrics>,
    /// Exports each call, when `otel:` is configured.
    pub telemetry: Option<Arc<Telemetry>>,
    /// The providers (telemetry names the provider of a call).
    pub gateway: Arc<super::Gateway>,
    /// The instant each call is recorded at (and charged to a budget period at).
    pub clock: crate::clock::Clock,
    /// What each call costs.
    pub prices: Arc<crate::pricing::PriceBook>,
}

/// Gathers one call's facts; records them exactly once (on [`Meter::finish`] or on drop).
pub struct Meter {
    sinks: Arc<Sinks>,
    record: CallRecord,
    started: Instant,
    endpoint: Endpoint,
    reservation: Option<Reservation>,
    /// The money budget's reservation (nano-dollars), settled with the call's cost.
    money: Option<Reservation>,
    /// The client's request body, read again only for a tokenizer estimate.
    request: Option<Bytes>,
    /// Usage and text of a streamed answer.
    pub tally: StreamTally,
    /// Time until the first byte of the answer body.
    first_byte_ms: Option<u64>,
    /// Time the gateway itself spent before forwarding.
    pub overhead_ms: f64,
    /// The provider's status, once its answer arrived.
    upstream_status: Option<u16>,
    /// The place its record will take in the recorder's queue.
    slot: Option<Slot>,
    /// Told the call's cost once it is known (for the answer's `x-token-console-cost`).
    cost_to: Option<CostSender>,
    finished: bool,
}

/// The cost of a finished call and how it was found.
pub type Cost = (Option<u64>, crate::pricing::CostStatus);
type CostSender = tokio::sync::oneshot::Sender<Cost>;

impl Meter {
    /// Starts metering a call that just arrived, once the recorder has room for its record;
    /// when no room frees up in time the call is answered 503 (naming the cause) unrecorded.
    ///
    /// What the call is (method, path, client, session) is read from `request` before waiting, so
    /// the future holds no borrow of it.
    pub fn start(
        state: &GatewayState,
        endpoint: Endpoint,
        request: &axum::extract::Request,
    ) -> impl std::future::Future<Output = Result<Self, axum::response::Response>> + Send + 'static
    {
        let sinks = state.sinks.clone();
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let who = client_of(request.headers());
        async move {
            let slot = sinks.recorder.slot().await.map_err(|full| {
                tracing::warn!("refused a call: {}", full.message);
                super::GatewayError::Unavailable(full.message)
                    .into_protocol_response(endpoint.protocol())
            })?;
            let mut meter = Self::with_slot(sinks, slot, endpoint, &method, &path);
            (
                meter.record.client,
                meter.record.session_id,
                meter.record.user,
            ) = who;
            Ok(meter)
        }
    }

    fn with_slot(
        sinks: Arc<Sinks>,
        slot: Slot,
        endpoint: Endpoint,
        method: &str,
        path: &str,
    ) -> Self {
        let ts = sinks.clock.now();
        Self {
            sinks,
            record: CallRecord {
                ts,
                method: method.to_owned(),
                endpoint: path.to_owned(),
                ..CallRecord::default()
            },
            started: Instant::now(),
            endpoint,
            reservation: None,
            money: None,
            request: None,
            tally: StreamTally::default(),
            first_byte_ms: None,
            overhead_ms: 0.0,
            upstream_status: None,
            slot: Some(slot),
            cost_to: None,
            finished: false,
        }
    }

    /// When the call started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The key the call is made with.
    pub fn set_key(&mut self, id: i64, name: String) {
        self.record.key_id = Some(id);
        self.record.key_name = Some(name);
    }

    /// The model name of calls not routed to a configured provider (recorded under this name).
    pub const UNROUTED: &'static str = "(unrouted)";

    /// The model asked for, whether the answer is streamed, and the request's body (kept for an
    /// estimate; empty when the call is refused before it is forwarded).
    pub fn set_request(&mut self, model: &str, stream: bool, request: Bytes) {
        self.record.model = model.to_owned();
        self.record.stream = stream;
        self.request = Some(request);
    }

    /// The end user the request's body names, unless the user header named one already.
    pub fn set_user(&mut self, raw: Option<&str>) {
        if self.record.user.is_none() {
            self.record.user = raw.and_then(crate::usage::end_user);
        }
    }

    /// The reasoning effort and service tier the request asks for (raw; recorded as labels).
    pub fn set_options(&mut self, reasoning_effort: Option<&str>, service_tier: Option<&str>) {
        use crate::usage::{label, MAX_OPTION_BYTES};
        self.record.reasoning_effort = reasoning_effort.and_then(|e| label(e, MAX_OPTION_BYTES));
        self.record.service_tier = service_tier.and_then(|t| label(t, MAX_OPTION_BYTES));
    }

    /// The configured provider that serves the call.
    pub fn set_provider(&mut self, name: &str) {
        name.clone_into(&mut self.record.provider);
    }

    /// The instant the call is recorded at: its budget reservation is charged to the period
    /// this falls in.
    pub fn recorded_at(&self) -> jiff::Timestamp {
        self.record.ts
    }

    /// Holds the budget reservations (tokens, money) until the call is settled.
    pub fn hold(&mut self, tokens: Option<Reservation>, money: Option<Reservation>) {
        self.reservation = tokens;
        self.money = money;
    }

    /// Notes the arrival of the answer's first body bytes.
    pub fn first_byte(&mut self) {
        if self.first_byte_ms.is_none() {
            self.first_byte_ms = Some(self.started.elapsed().as_millis() as u64);
        }
    }

    /// The call's cost, once it is recorded (never, for a call made without a valid key).
    pub fn cost(&mut self) -> tokio::sync::oneshot::Receiver<Cost> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.cost_to = Some(tx);
        rx
    }

    /// Notes the status the provider answered with.
    pub fn answered(&mut self, status: u16) {
        self.upstream_status = Some(status);
    }

    /// Ends the call with `status`; `body` is a whole (non-stream) answer, if there was one,
    /// read once for its usage, model, finish reasons, validity and error message.
    pub fn finish(&mut self, status: u16, body: Option<&[u8]>, error: Option<String>) {
        let success = (200..300).contains(&status);
        let read = body.map(super::tally::read_body);
        let (from_body, error) = match (body, read) {
            (Some(body), Some(read)) => {
                let BodyRead {
                    usage,
                    answer,
                    json,
                    error_message,
                } = read;
                if !answer.is_empty() {
                    self.record.answer = answer;
                }
                let error = error.or_else(|| {
                    if status >= 400 {
                        upstream_error_text(body, error_message, json)
                    } else {
                        (success && !json)
                            .then(|| "the provider's answer is not valid JSON".to_owned())
                    }
                });
                (usage, error)
            }
            _ => (None, error),
        };
        let reported = from_body
            .or_else(|| self.tally.reported())
            .filter(|usage| !success || !is_zero(usage));
        match reported {
            Some(tokens) => self.complete(status, Some(tokens), false, error),
            None if success => {
                let job = self.estimate_job(body);
                self.complete_estimated(status, job, error);
            }
            None => self.complete(status, None, false, error),
        }
    }

    /// Ends a call whose answer was cut short — the client went away (499) or the provider's
    /// answer broke off (502) — with the tokens seen so far: the final usage if it had already
    /// arrived, else an estimate of the prompt and of the answer text passed on until then.
    pub fn cut_short(&mut self, status: u16, error: String) {
        let provider_failed = self
            .upstream_status
            .is_some_and(|s| !(200..300).contains(&s));
        match self.tally.reported().filter(|usage| !is_zero(usage)) {
            Some(tokens) => self.complete(status, Some(tokens), false, Some(error)),
            None if provider_failed => self.complete(status, None, false, Some(error)),
            None => {
                let job = self.estimate_job(None);
                self.complete_estimated(status, job, Some(error));
            }
        }
    }

    /// The error of a stream that ended without its protocol's terminal event, if this one did.
    pub fn stream_end_missing(&self) -> Option<String> {
        (!self.tally.ended).then(|| {
            format!(
                "the provider's stream ended without its final event ({}); the answer may be cut off",
                self.endpoint.stream_end()
            )
        })
    }

    /// What the tokenizer needs to estimate the call, from the request and the answer (the
    /// whole body, or the stream's text so far); `None` before the request was forwarded.
    fn estimate_job(&self, body: Option<&[u8]>) -> Option<EstimateJob> {
        if !self.endpoint.spends_tokens() {
            return None;
        }
        let request = self.request.clone()?;
        let answer = match body {
            Some(bytes) => Answer::Body(bytes.to_vec()),
            None => Answer::Text(self.tally.text().to_owned()),
        };
        Some(EstimateJob {
            request,
            answer,
            has_completion: self.endpoint.has_completion(),
            provisional: body.is_none().then(|| self.tally.provisional()).flatten(),
        })
    }

    /// Completes the call with an estimate of its tokens, computed off the async workers: the
    /// tokenizer's cost is bounded (see [`estimate`]) but can still take milliseconds.
    fn complete_estimated(&mut self, status: u16, job: Option<EstimateJob>, error: Option<String>) {
        let Some(job) = job else {
            self.complete(status, None, false, error);
            return;
        };
        let Some(done) = self.take_completion(status, error) else {
            return;
        };
        let run = move || done.record(Some(job.run()), true);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    fn complete(
        &mut self,
        status: u16,
        tokens: Option<TokenUsage>,
        estimated: bool,
        error: Option<String>,
    ) {
        if let Some(done) = self.take_completion(status, error) {
            done.record(tokens, estimated);
        }
    }

    /// Marks the call finished and takes what recording it needs; `None` if it was already.
    fn take_completion(&mut self, status: u16, error: Option<String>) -> Option<Completion> {
        if self.finished {
            return None;
        }
        self.finished = true;
        if self.record.answer.is_empty() {
            self.record.answer = std::mem::take(&mut self.tally.answer);
        }
        let mut record = std::mem::take(&mut self.record);
        record.status = status;
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        record.ttft_ms = self.first_byte_ms;
        record.error = error.map(|e| truncate(&e));
        Some(Completion {
            sinks: self.sinks.clone(),
            record,
            reservation: self.reservation.take(),
            money: self.money.take(),
            slot: self.slot.take(),
            cost_to: self.cost_to.take(),
            endpoint: self.endpoint,
            spends_tokens: self.endpoint.spends_tokens(),
            overhead_ms: self.overhead_ms,
        })
    }
}

/// A finished call waiting for its tokens: settles the reservation, counts the metrics and
/// hands the record to the recorder.
struct Completion {
    sinks: Arc<Sinks>,
    record: CallRecord,
    reservation: Option<Reservation>,
    money: Option<Reservation>,
    endpoint: Endpoint,
    /// The call's room in the record queue (dropped unused by a call that is not recorded).
    slot: Option<Slot>,
    cost_to: Option<CostSender>,
    spends_tokens: bool,
    overhead_ms: f64,
}

impl Completion {
    fn record(mut self, tokens: Option<TokenUsage>, estimated: bool) {
        if self.record.key_id.is_none() {
            // Made without a valid key: anyone can send those, so they are counted, not
            // recorded (they would push real calls out of the log and the aggregates).
            self.sinks
                .metrics
                .observe_unauthenticated(self.record.status);
            return;
        }
        let tokens = if self.spends_tokens {
            tokens.unwrap_or_default()
        } else {
            TokenUsage::default()
        };
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(tokens.total);
        }
        self.record.tokens = tokens;
        self.record.estimated = estimated && tokens.total > 0;
        (self.record.cost_nanos, self.record.cost_status) = self.sinks.prices.cost_of(
            &self.record.model,
            self.record.ts,
            &tokens,
            self.record.estimated,
        );
        if let Some(money) = self.money.take() {
            // Reserved only for a priced model: a cost is known (what was reserved otherwise).
            let cost = self.record.cost_nanos.unwrap_or(money.amount());
            money.settle(cost);
        }
        if let Some(tx) = self.cost_to.take() {
            // The answer may be gone already (the client left): nobody to tell.
            let _ = tx.send((self.record.cost_nanos, self.record.cost_status));
        }
        self.sinks.metrics.observe(&self.record, self.overhead_ms);
        if let Some(telemetry) = &self.sinks.telemetry {
            telemetry.export(&self.sinks.gateway, self.endpoint, &self.record);
        }
        match self.slot.take() {
            Some(slot) => self.sinks.recorder.record_in(slot, self.record),
            None => tracing::error!("a call was completed twice; its second record is ignored"),
        }
    }
}

/// The answer an estimate reads: a whole non-stream body, or a stream's text.
enum Answer {
    Body(Vec<u8>),
    Text(String),
}

/// The inputs of a tokenizer estimate, moved to a blocking thread.
struct EstimateJob {
    /// The request's body, read as a tree here, off the async workers.
    request: Bytes,
    answer: Answer,
    has_completion: bool,
    /// The provisional figures a stream gave (Anthropic's `message_start` has exact input and
    /// cache counts), completed by the tokenizer.
    provisional: Option<TokenUsage>,
}

impl EstimateJob {
    fn run(self) -> TokenUsage {
        let text = match &self.answer {
            Answer::Text(text) => std::borrow::Cow::Borrowed(text.as_str()),
            Answer::Body(bytes) => {
                let mut text = String::new();
                if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
                    super::tally::texts(&value, &mut text);
                }
                std::borrow::Cow::Owned(text)
            }
        };
        let request = serde_json::from_slice::<serde_json::Value>(&self.request)
            .unwrap_or(serde_json::Value::Null);
        let counted = estimate::usage(&request, &text, self.has_completion);
        match self.provisional {
            Some(p) if p.prompt > 0 => {
                let completion = p.completion.max(counted.completion);
                TokenUsage {
                    prompt: p.prompt,
                    completion,
                    cache_read: p.cache_read,
                    cache_creation: p.cache_creation,
                    reasoning: p.reasoning,
                    total: p.prompt + completion,
                }
            }
            _ => counted,
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.finished {
            self.cut_short(
                CLIENT_CLOSED,
                "the client closed the connection before the answer was complete".into(),
            );
        }
    }
}

/// Usage of 0 input and 0 output tokens, which some compatible servers report beside a real
/// answer: treated as no usage at all, so the call is estimated instead.
fn is_zero(usage: &TokenUsage) -> bool {
    usage.prompt == 0 && usage.completion == 0 && usage.total == 0
}

/// The client family (from `User-Agent`), the session id and the end user a call's headers carry.
fn client_of(headers: &axum::http::HeaderMap) -> (String, Option<String>, Option<String>) {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let client = crate::usage::client_family(text(axum::http::header::USER_AGENT.as_str()));
    let session = SESSION_HEADERS
        .iter()
        .find_map(|name| text(name).and_then(crate::usage::session_id));
    let user = text(USER_HEADER).and_then(crate::usage::end_user);
    (client.to_owned(), session, user)
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
    cut.push('…');
    cut
}

/// What a provider's error answer says: the `message` of an OpenAI or Anthropic error body
/// (`message`, read with the rest of the answer), or, for a body that is not one (an HTML page
/// from a proxy in front of the provider, plain text), its text with the white space collapsed,
/// so the record still says what went wrong. `json`: whether the body is JSON.
fn upstream_error_text(body: &[u8], message: Option<String>, json: bool) -> Option<String> {
    if message.is_some() {
        return message;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    if json {
        Some(format!("the provider answered: {text}"))
    } else {
        Some(format!("the provider's error answer is not JSON: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_text(body: &[u8]) -> Option<String> {
        let read = super::super::tally::read_body(body);
        upstream_error_text(body, read.error_message, read.json)
    }

    #[test]
    fn reads_error_messages_of_both_protocols() {
        assert_eq!(
            error_text(br#"{"error":{"message":"boom","type":"x"}}"#),
            Some("boom".into())
        );
        assert_eq!(
            error_text(br#"{"type":"error","error":{"type":"api_error","message":"down"}}"#),
            Some("down".into())
        );
        assert_eq!(error_text(br#"{"error":"plain"}"#), Some("plain".into()));
    }

    #[test]
    fn quotes_error_answers_that_are_not_json() {
        assert_eq!(
            error_text(b"<html>\n<h1>502  Bad Gateway</h1>\n</html>\n"),
            Some(
                "the provider's error answer is not JSON: <html> <h1>502 Bad Gateway</h1> </html>"
                    .into()
            )
        );
        assert_eq!(error_text(b" \n "), None);
        assert_eq!(
            error_text(br#"{"detail": "x"}"#),
            Some(r#"the provider answered: {"detail": "x"}"#.into())
        );
        // JSON whose fields have unexpected types is still JSON.
        assert_eq!(
            error_text(br#"{"usage": "none", "choices": 3}"#),
            Some(r#"the provider answered: {"usage": "none", "choices": 3}"#.into())
        );
    }

    #[test]
    fn truncates_long_errors() {
        let long = "x".repeat(1000);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(truncate("short"), "short");
    }
}
