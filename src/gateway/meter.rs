//! The meter of one gateway call: it gathers what the call did and, when the call ends however
//! it ends (answered, failed, or abandoned by the client), settles the budget reservation, counts
//! the metrics and hands exactly one record to the recorder.

use std::sync::Arc;
use std::time::Instant;

use super::endpoint::Endpoint;
use super::estimate;
use super::usage::StreamTally;
use crate::keys::Reservation;
use crate::state::AppState;
use crate::usage::{CallRecord, TokenUsage};

/// Status recorded when the client went away before the answer was complete.
pub const CLIENT_CLOSED: u16 = 499;
/// Longest error text kept in a record.
const MAX_ERROR_CHARS: usize = 300;

/// Gathers one call's facts; records them exactly once (on [`Meter::finish`] or on drop).
pub struct Meter {
    state: AppState,
    record: CallRecord,
    started: Instant,
    endpoint: Endpoint,
    reservation: Option<Reservation>,
    request: Option<Arc<serde_json::Value>>,
    /// Usage and text of a streamed answer.
    pub tally: StreamTally,
    /// Time until the first byte of the answer body.
    first_byte_ms: Option<u64>,
    /// Time the gateway itself spent before forwarding.
    pub overhead_ms: f64,
    /// The provider's status, once its answer arrived.
    upstream_status: Option<u16>,
    finished: bool,
}

impl Meter {
    /// Starts metering a call that just arrived.
    pub fn start(state: &AppState, endpoint: Endpoint, method: &str, path: &str) -> Self {
        Self {
            state: state.clone(),
            record: CallRecord {
                ts: jiff::Timestamp::now(),
                method: method.to_owned(),
                endpoint: path.to_owned(),
                status: 0,
                model: String::new(),
                key_id: None,
                key_name: None,
                tokens: TokenUsage::default(),
                duration_ms: 0,
                ttft_ms: None,
                stream: false,
                estimated: false,
                error: None,
            },
            started: Instant::now(),
            endpoint,
            reservation: None,
            request: None,
            tally: StreamTally::default(),
            first_byte_ms: None,
            overhead_ms: 0.0,
            upstream_status: None,
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

    /// The model asked for and whether the answer is streamed.
    pub fn set_request(&mut self, model: &str, stream: bool, request: Arc<serde_json::Value>) {
        self.record.model = model.to_owned();
        self.record.stream = stream;
        self.request = Some(request);
    }

    /// Holds the budget reservation until the call is settled.
    pub fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }

    /// Notes the arrival of the answer's first body bytes.
    pub fn first_byte(&mut self) {
        if self.first_byte_ms.is_none() {
            self.first_byte_ms = Some(self.started.elapsed().as_millis() as u64);
        }
    }

    /// Notes the status the provider answered with.
    pub fn answered(&mut self, status: u16) {
        self.upstream_status = Some(status);
    }

    /// Ends the call with `status`; `body` is a whole (non-stream) answer, if there was one.
    pub fn finish(&mut self, status: u16, body: Option<&[u8]>, error: Option<String>) {
        let success = (200..300).contains(&status);
        let reported = body
            .and_then(super::usage::from_body)
            .or_else(|| self.tally.reported());
        let tokens = match reported {
            Some(tokens) => Some(tokens),
            None if success => self.estimate(body),
            None => None,
        };
        let error = error.or_else(|| {
            (status >= 400)
                .then(|| body.and_then(upstream_error_text))
                .flatten()
        });
        self.complete(
            status,
            tokens,
            reported.is_none() && tokens.is_some(),
            error,
        );
    }

    /// Ends a call whose answer was cut short — the client went away (499) or the provider's
    /// answer broke off (502) — with the tokens seen so far: the final usage if it had already
    /// arrived, else an estimate of the prompt and of the answer text passed on until then.
    pub fn cut_short(&mut self, status: u16, error: String) {
        let reported = self.tally.reported();
        let provider_failed = self
            .upstream_status
            .is_some_and(|s| !(200..300).contains(&s));
        let tokens = reported.or_else(|| (!provider_failed).then(|| self.estimate(None)).flatten());
        self.complete(
            status,
            tokens,
            reported.is_none() && tokens.is_some(),
            Some(error),
        );
    }

    /// The tokenizer's estimate of the call, from the request and the answer (the whole body,
    /// or the stream's text so far); `None` before the request was forwarded.
    fn estimate(&self, body: Option<&[u8]>) -> Option<TokenUsage> {
        if !self.endpoint.spends_tokens() {
            return None;
        }
        let request = self.request.as_ref()?;
        let has_completion = self.endpoint.has_completion();
        let Some(bytes) = body else {
            return Some(self.stream_estimate(request, has_completion));
        };
        let mut answer_text = String::new();
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            super::usage::texts(&value, &mut answer_text);
        }
        Some(estimate::usage(request, &answer_text, has_completion))
    }

    /// A streamed answer without final usage: the provisional figures the stream gave (Anthropic's
    /// `message_start` has exact input and cache counts), completed by the tokenizer.
    fn stream_estimate(&self, request: &serde_json::Value, has_completion: bool) -> TokenUsage {
        let counted = estimate::usage(request, self.tally.text(), has_completion);
        match self.tally.provisional() {
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

    fn complete(
        &mut self,
        status: u16,
        tokens: Option<TokenUsage>,
        estimated: bool,
        error: Option<String>,
    ) {
        if self.finished {
            return;
        }
        self.finished = true;
        let tokens = if self.endpoint.spends_tokens() {
            tokens.unwrap_or_default()
        } else {
            TokenUsage::default()
        };
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(tokens.total);
        }
        let mut record = self.record.clone();
        record.status = status;
        record.tokens = tokens;
        record.estimated = estimated && tokens.total > 0;
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        record.ttft_ms = self.first_byte_ms;
        record.error = error.map(|e| truncate(&e));
        self.state.metrics.observe(&record, self.overhead_ms);
        crate::telemetry::export(&self.state, self.endpoint, &record);
        self.state.recorder.record_detached(record);
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

fn truncate(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
    cut.push('…');
    cut
}

/// What a provider's error answer says: the `message` of an OpenAI or Anthropic error body, or,
/// for a body that is not one (an HTML page from a proxy in front of the provider, plain text),
/// its text with the white space collapsed, so the record still says what went wrong.
fn upstream_error_text(body: &[u8]) -> Option<String> {
    if let Some(message) = error_message(body) {
        return Some(message);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        Some(format!("the provider answered: {text}"))
    } else {
        Some(format!("the provider's error answer is not JSON: {text}"))
    }
}

/// The `message` of an OpenAI or Anthropic error body.
fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    error
        .get("message")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .or_else(|| error.as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_error_messages_of_both_protocols() {
        assert_eq!(
            error_message(br#"{"error":{"message":"boom","type":"x"}}"#),
            Some("boom".into())
        );
        assert_eq!(
            error_message(br#"{"type":"error","error":{"type":"api_error","message":"down"}}"#),
            Some("down".into())
        );
        assert_eq!(error_message(b"garbage"), None);
    }

    #[test]
    fn quotes_error_answers_that_are_not_json() {
        assert_eq!(
            upstream_error_text(b"<html>\n<h1>502  Bad Gateway</h1>\n</html>\n"),
            Some(
                "the provider's error answer is not JSON: <html> <h1>502 Bad Gateway</h1> </html>"
                    .into()
            )
        );
        assert_eq!(
            upstream_error_text(br#"{"error":{"message":"boom"}}"#),
            Some("boom".into())
        );
        assert_eq!(upstream_error_text(b" \n "), None);
        assert_eq!(
            upstream_error_text(br#"{"detail": "x"}"#),
            Some(r#"the provider answered: {"detail": "x"}"#.into())
        );
    }

    #[test]
    fn truncates_long_errors() {
        let long = "x".repeat(1000);
        assert_eq!(truncate(&long).chars().count(), MAX_ERROR_CHARS + 1);
        assert_eq!(truncate("short"), "short");
    }
}
