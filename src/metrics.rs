//! Prometheus metrics (`GET /metrics`): requests, tokens by kind, latency, time-to-first-token and
//! gateway-overhead histograms, labelled by model, key name and status class. Counters live for
//! the process (they restart at zero, as Prometheus counters do); the store keeps the history.
//! Counting a call adds to atomic counters: no lock is held but the label-set index's, shared.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

use crate::usage::{latency_bucket, CallRecord, RecorderStats, LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// Most distinct (model, key, status class) label sets kept; calls of further models are counted
/// under the model [`OTHER_MODELS`], so that model names clients invent cannot grow `/metrics`.
pub const MAX_SERIES: usize = 500;
/// The model label of calls counted once [`MAX_SERIES`] label sets exist.
pub const OTHER_MODELS: &str = "(other)";

/// Buckets of the overhead histogram, in milliseconds.
const OVERHEAD_BOUNDS_MS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 100.0];

/// The status classes, in label order.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: counters(),
            sum_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn observe(&self, ms: u64) {
        self.buckets[latency_bucket(ms)].fetch_add(1, Relaxed);
        self.sum_ms.fetch_add(ms, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// The counters of one label set, added to without a lock.
#[derive(Default)]
struct Series {
    requests: AtomicU64,
    tokens: [AtomicU64; 6],
    /// Cost of the priced calls, in nano-dollars.
    cost_nanos: AtomicU64,
    /// Calls whose model has no price.
    unpriced: AtomicU64,
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

/// The series of one (model, key) pair, by status class.
type ByStatus = [Option<Box<Series>>; 5];

/// The label sets seen: model → key name → status class. Read (shared) by every call to find
/// its counters; written only when a call brings a label set not seen before.
#[derive(Default)]
struct Index {
    models: HashMap<Box<str>, HashMap<Box<str>, ByStatus>>,
    /// Label sets in `models`.
    sets: usize,
}

impl Index {
    fn get(&self, model: &str, key: &str, class: usize) -> Option<&Series> {
        self.models.get(model)?.get(key)?[class].as_deref()
    }

    fn insert(&mut self, model: &str, key: &str, class: usize) -> &Series {
        let slot = &mut self
            .models
            .entry(model.into())
            .or_default()
            .entry(key.into())
            .or_default()[class];
        if slot.is_none() {
            self.sets += 1;
        }
        slot.get_or_insert_with(Box::default)
    }
}

/// The process's metrics: atomic counters, summed by nobody (each label set has one set of
/// counters); the label-set index is the only lock, taken shared on the request path.
pub struct Metrics {
    index: RwLock<Index>,
    overhead: [AtomicU64; OVERHEAD_BOUNDS_MS.len() + 1],
    overhead_sum_ns: AtomicU64,
    overhead_count: AtomicU64,
    /// Calls without a valid key, by status class: counted, never recorded.
    unauthenticated: [AtomicU64; 5],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            index: RwLock::default(),
            overhead: counters(),
            overhead_sum_ns: AtomicU64::new(0),
            overhead_count: AtomicU64::new(0),
            unauthenticated: counters(),
        }
    }
}

/// The index of a status's class in [`STATUS_CLASSES`].
fn status_class(status: u16) -> usize {
    match status / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

impl Series {
    fn add(&self, call: &CallRecord) {
        self.requests.fetch_add(1, Relaxed);
        for (slot, value) in self.tokens.iter().zip(call.tokens.counts()) {
            slot.fetch_add(value, Relaxed);
        }
        match call.cost_nanos {
            Some(nanos) => self.cost_nanos.fetch_add(nanos, Relaxed),
            None => self.unpriced.fetch_add(1, Relaxed),
        };
        self.duration.observe(call.duration_ms);
        if let Some(ttft) = call.ttft_ms {
            self.ttft.observe(ttft);
        }
    }
}

impl Metrics {
    /// Counts one finished call and the time the gateway itself spent on it.
    pub fn observe(&self, call: &CallRecord, overhead_ms: f64) {
        let key = call.key_name.as_deref().unwrap_or_default();
        let class = status_class(call.status);
        let seen = match self.index.read() {
            Ok(index) => match index.get(&call.model, key, class) {
                Some(series) => {
                    series.add(call);
                    true
                }
                None => false,
            },
            Err(_) => return,
        };
        if !seen {
            let Ok(mut index) = self.index.write() else {
                return;
            };
            let model = if index.get(&call.model, key, class).is_none() && index.sets >= MAX_SERIES
            {
                OTHER_MODELS
            } else {
                call.model.as_str()
            };
            index.insert(model, key, class).add(call);
        }
        if overhead_ms > 0.0 {
            let bucket = OVERHEAD_BOUNDS_MS
                .iter()
                .position(|&b| overhead_ms <= b)
                .unwrap_or(OVERHEAD_BOUNDS_MS.len());
            self.overhead[bucket].fetch_add(1, Relaxed);
            self.overhead_sum_ns
                .fetch_add((overhead_ms * 1e6) as u64, Relaxed);
            self.overhead_count.fetch_add(1, Relaxed);
        }
    }

    /// Counts a call made without a valid key (it is not recorded: see ARCHITECTURE.md).
    pub fn observe_unauthenticated(&self, status: u16) {
        self.unauthenticated[status_class(status)].fetch_add(1, Relaxed);
    }

    /// Label sets counted so far.
    pub fn label_sets(&self) -> usize {
        self.index.read().map_or(0, |index| index.sets)
    }

    /// The text exposition format.
    pub fn render(&self, recorder: RecorderStats) -> String {
        let Ok(index) = self.index.read() else {
            return String::new();
        };
        let mut series: Vec<(String, &Series)> = Vec::with_capacity(index.sets);
        for (model, keys) in &index.models {
            for (key, classes) in keys {
                for (class, s) in STATUS_CLASSES.iter().zip(classes) {
                    if let Some(s) = s {
                        series.push((labels(model, key, class), s));
                    }
                }
            }
        }
        series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "token_console_requests_total",
            "counter",
            "Gateway calls.",
        );
        for (labels, s) in &series {
            let _ = writeln!(
                out,
                "token_console_requests_total{{{labels}}} {}",
                s.requests.load(Relaxed)
            );
        }
        header(
            &mut out,
            "token_console_tokens_total",
            "counter",
            "Tokens of gateway calls by kind.",
        );
        for (labels, s) in &series {
            for (kind, value) in TOKEN_KINDS.iter().zip(&s.tokens) {
                let _ = writeln!(
                    out,
                    "token_console_tokens_total{{{labels},kind=\"{kind}\"}} {}",
                    value.load(Relaxed)
                );
            }
        }
        header(
            &mut out,
            "token_console_cost_usd_total",
            "counter",
            "Cost of the priced gateway calls in USD (exact to the nano-dollar).",
        );
        for (labels, s) in &series {
            let _ = writeln!(
                out,
                "token_console_cost_usd_total{{{labels}}} {}",
                crate::pricing::usd_text(s.cost_nanos.load(Relaxed))
            );
        }
        header(
            &mut out,
            "token_console_unpriced_calls_total",
            "counter",
            "Gateway calls that spent tokens on a model without a price (cost unknown).",
        );
        for (labels, s) in &series {
            let _ = writeln!(
                out,
                "token_console_unpriced_calls_total{{{labels}}} {}",
                s.unpriced.load(Relaxed)
            );
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
            for (labels, s) in &series {
                histogram(&mut out, name, labels, pick(s));
            }
        }
        drop(index);
        header(
            &mut out,
            "token_console_gateway_overhead_seconds",
            "histogram",
            "Time the gateway itself adds to a call.",
        );
        let mut cumulative = 0;
        for (i, bound) in OVERHEAD_BOUNDS_MS.iter().enumerate() {
            cumulative += self.overhead[i].load(Relaxed);
            let _ = writeln!(
                out,
                "token_console_gateway_overhead_seconds_bucket{{le=\"{}\"}} {cumulative}",
                bound / 1000.0
            );
        }
        let count = self.overhead_count.load(Relaxed);
        let _ = writeln!(
            out,
            "token_console_gateway_overhead_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "token_console_gateway_overhead_seconds_sum {}",
            self.overhead_sum_ns.load(Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "token_console_gateway_overhead_seconds_count {count}");
        header(
            &mut out,
            "token_console_unauthenticated_requests_total",
            "counter",
            "Gateway calls without a valid key (answered, not recorded).",
        );
        for (status, count) in STATUS_CLASSES.iter().zip(&self.unauthenticated) {
            let count = count.load(Relaxed);
            if count == 0 {
                continue;
            }
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
        cumulative += h.buckets[i].load(Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            *bound as f64 / 1000.0
        );
    }
    let count = h.count.load(Relaxed);
    let sum = h.sum_ms.load(Relaxed) as f64 / 1000.0;
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::TokenUsage;

    fn stats() -> RecorderStats {
        RecorderStats {
            queued: 0,
            capacity: 8,
            refused: 0,
            written: 1,
            dropped: 0,
            batches: 1,
            degraded: false,
            waits: 0,
        }
    }

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
            cost_nanos: Some(1_250),
            client: String::new(),
            session_id: None,
            user: None,
            provider: String::new(),
            source: "gateway".into(),
            alias: None,
            reasoning_effort: None,
            service_tier: None,
            cost_status: crate::pricing::CostStatus::Priced,
            answer: Default::default(),
            ingest: None,
        };
        metrics.observe(&call, 0.3);
        let text = metrics.render(stats());
        assert!(
            text.contains(r#"token_console_requests_total{model="m\"1",key="k",status="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"kind="total"} 7"#));
        assert!(text.contains(
            r#"token_console_cost_usd_total{model="m\"1",key="k",status="2xx"} 0.000001250"#
        ));
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
        assert_eq!(metrics.label_sets(), MAX_SERIES + 1);
        let text = metrics.render(stats());
        assert!(
            text.contains(
                r#"token_console_requests_total{model="(other)",key="k",status="2xx"} 100"#
            ),
            "{text}"
        );
        assert!(!text.contains("model-599"));
        assert!(text.contains(r#"token_console_unauthenticated_requests_total{status="4xx"} 1"#));
    }
}
