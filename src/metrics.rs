//! Prometheus metrics (`GET /metrics`): requests, tokens by kind, latency, time-to-first-token and
//! gateway-overhead histograms, labelled by model, key name and status class. Counters live for
//! the process (they restart at zero, as Prometheus counters do); the store keeps the history.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::usage::{latency_bucket, CallRecord, RecorderStats, LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// Most distinct (model, key, status class) label sets kept; calls of further models are counted
/// under the model [`OTHER_MODELS`], so that model names clients invent cannot grow `/metrics`.
pub const MAX_SERIES: usize = 500;
/// The model label of calls counted once [`MAX_SERIES`] label sets exist.
pub const OTHER_MODELS: &str = "(other)";

/// Buckets of the overhead histogram, in milliseconds.
const OVERHEAD_BOUNDS_MS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS],
    sum_ms: u64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, ms: u64) {
        self.buckets[latency_bucket(ms)] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

#[derive(Default, Clone)]
struct Series {
    requests: u64,
    tokens: [u64; 6],
    duration: Histogram,
    ttft: Histogram,
}

const TOKEN_KINDS: [&str; 6] = [
    "prompt",
    "completion",
    "cache_read",
    "cache_creation",
    "reasoning",
    "total",
];

#[derive(Default)]
struct Inner {
    series: BTreeMap<(String, String, &'static str), Series>,
    overhead: [u64; OVERHEAD_BOUNDS_MS.len() + 1],
    overhead_sum_ms: f64,
    overhead_count: u64,
    /// Calls without a valid key, by status class: counted, never recorded.
    unauthenticated: BTreeMap<&'static str, u64>,
}

/// The process's metrics.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    /// Counts one finished call and the time the gateway itself spent on it.
    pub fn observe(&self, call: &CallRecord, overhead_ms: f64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = call.key_name.clone().unwrap_or_default();
        let mut labels = (call.model.clone(), key, status_class(call.status));
        if inner.series.len() >= MAX_SERIES && !inner.series.contains_key(&labels) {
            labels.0 = OTHER_MODELS.to_owned();
        }
        let series = inner.series.entry(labels).or_default();
        series.requests += 1;
        let t = &call.tokens;
        for (slot, value) in series.tokens.iter_mut().zip(t.counts()) {
            *slot += value;
        }
        series.duration.observe(call.duration_ms);
        if let Some(ttft) = call.ttft_ms {
            series.ttft.observe(ttft);
        }
        if overhead_ms > 0.0 {
            let bucket = OVERHEAD_BOUNDS_MS
                .iter()
                .position(|&b| overhead_ms <= b)
                .unwrap_or(OVERHEAD_BOUNDS_MS.len());
            inner.overhead[bucket] += 1;
            inner.overhead_sum_ms += overhead_ms;
            inner.overhead_count += 1;
        }
    }

    /// Counts a call made without a valid key (it is not recorded: see ARCHITECTURE.md).
    pub fn observe_unauthenticated(&self, status: u16) {
        if let Ok(mut inner) = self.inner.lock() {
            *inner
                .unauthenticated
                .entry(status_class(status))
                .or_default() += 1;
        }
    }

    /// The text exposition format.
    pub fn render(&self, recorder: RecorderStats) -> String {
        let Ok(inner) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "token_console_requests_total",
            "counter",
            "Gateway calls.",
        );
        for ((model, key, status), s) in &inner.series {
            let _ = writeln!(
                out,
                "token_console_requests_total{{{}}} {}",
                labels(model, key, status),
                s.requests
            );
        }
        header(
            &mut out,
            "token_console_tokens_total",
            "counter",
            "Tokens of gateway calls by kind.",
        );
        for ((model, key, status), s) in &inner.series {
            for (kind, value) in TOKEN_KINDS.iter().zip(s.tokens) {
                let _ = writeln!(
                    out,
                    "token_console_tokens_total{{{},kind=\"{kind}\"}} {value}",
                    labels(model, key, status)
                );
            }
        }
        for (name, help, pick) in [
            (
                "token_console_request_duration_seconds",
                "Whole duration of gateway calls.",
                (|s: &Series| &s.duration) as fn(&Series) -> &Histogram,
            ),
            (
                "token_console_time_to_first_token_seconds",
                "Time until the first byte of the answer.",
                |s: &Series| &s.ttft,
            ),
        ] {
            header(&mut out, name, "histogram", help);
            for ((model, key, status), s) in &inner.series {
                histogram(&mut out, name, &labels(model, key, status), pick(s));
            }
        }
        header(
            &mut out,
            "token_console_gateway_overhead_seconds",
            "histogram",
            "Time the gateway itself adds to a call.",
        );
        let mut cumulative = 0;
        for (i, bound) in OVERHEAD_BOUNDS_MS.iter().enumerate() {
            cumulative += inner.overhead[i];
            let _ = writeln!(
                out,
                "token_console_gateway_overhead_seconds_bucket{{le=\"{}\"}} {cumulative}",
                bound / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "token_console_gateway_overhead_seconds_bucket{{le=\"+Inf\"}} {}",
            inner.overhead_count
        );
        let _ = writeln!(
            out,
            "token_console_gateway_overhead_seconds_sum {}",
            inner.overhead_sum_ms / 1000.0
        );
        let _ = writeln!(
            out,
            "token_console_gateway_overhead_seconds_count {}",
            inner.overhead_count
        );
        header(
            &mut out,
            "token_console_unauthenticated_requests_total",
            "counter",
            "Gateway calls without a valid key (answered, not recorded).",
        );
        for (status, count) in &inner.unauthenticated {
            let _ = writeln!(
                out,
                "token_console_unauthenticated_requests_total{{status=\"{status}\"}} {count}"
            );
        }
        for (name, kind, help, value) in [
            (
                "token_console_recorder_queued",
                "gauge",
                "Slots of the record queue taken: calls in flight plus records not yet written.",
                recorder.queued,
            ),
            (
                "token_console_recorder_capacity",
                "gauge",
                "Capacity of the record queue (recorder_queue).",
                recorder.capacity,
            ),
            (
                "token_console_recorder_refused_total",
                "counter",
                "Calls refused (503) because the record queue stayed full.",
                recorder.refused,
            ),
            (
                "token_console_recorder_written_total",
                "counter",
                "Call records written.",
                recorder.written,
            ),
            (
                "token_console_recorder_dropped_total",
                "counter",
                "Call records lost; stays 0.",
                recorder.dropped,
            ),
            (
                "token_console_recorder_degraded",
                "gauge",
                "1 while the store cannot be written.",
                u64::from(recorder.degraded),
            ),
            (
                "token_console_recorder_queue_full_total",
                "counter",
                "Times a call waited for room in the record queue.",
                recorder.waits,
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(model: &str, key: &str, status: &str) -> String {
    format!(
        "model=\"{}\",key=\"{}\",status=\"{status}\"",
        escape(model),
        escape(key)
    )
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
        cumulative += h.buckets[i];
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            *bound as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_ms as f64 / 1000.0);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::TokenUsage;

    #[test]
    fn renders_counters_with_escaped_labels() {
        let metrics = Metrics::default();
        let call = CallRecord {
            ts: jiff::Timestamp::UNIX_EPOCH,
            method: "POST".into(),
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            model: "m\"1".into(),
            key_id: Some(1),
            key_name: Some("k".into()),
            tokens: TokenUsage::new(3, 4),
            duration_ms: 12,
            ttft_ms: Some(5),
            stream: false,
            estimated: false,
            error: None,
            client: String::new(),
            session_id: None,
            answer: Default::default(),
        };
        metrics.observe(&call, 0.3);
        let text = metrics.render(RecorderStats {
            queued: 0,
            capacity: 8,
            refused: 0,
            written: 1,
            dropped: 0,
            batches: 1,
            degraded: false,
            waits: 0,
        });
        assert!(
            text.contains(r#"token_console_requests_total{model="m\"1",key="k",status="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"kind="total"} 7"#));
        assert!(text.contains("token_console_recorder_dropped_total 0"));
        assert!(text.contains("token_console_gateway_overhead_seconds_count 1"));
    }

    #[test]
    fn caps_the_label_sets() {
        let metrics = Metrics::default();
        for n in 0..MAX_SERIES + 100 {
            let call = CallRecord {
                ts: jiff::Timestamp::UNIX_EPOCH,
                method: "POST".into(),
                endpoint: "/v1/chat/completions".into(),
                status: 200,
                model: format!("model-{n}"),
                key_id: Some(1),
                key_name: Some("k".into()),
                tokens: TokenUsage::new(1, 1),
                duration_ms: 1,
                ..CallRecord::default()
            };
            metrics.observe(&call, 0.0);
        }
        metrics.observe_unauthenticated(401);
        let inner = metrics.inner.lock().unwrap();
        assert_eq!(inner.series.len(), MAX_SERIES + 1);
        let other = &inner.series[&(OTHER_MODELS.to_owned(), "k".to_owned(), "2xx")];
        assert_eq!(other.requests, 100);
        assert_eq!(inner.unauthenticated["4xx"], 1);
    }
}
