//! What a call is: the record of one gateway call, its token usage, and the recorder that stores it.

mod recorder;

pub use recorder::{QueueFull, Recorder, RecorderStats, Slot, QUEUE_CAPACITY, SLOT_WAIT};

/// Upper bounds (inclusive, milliseconds) of the latency histogram's buckets; a last bucket holds
/// everything slower. Fixed forever: the store keeps one column per bucket.
pub const LATENCY_BOUNDS_MS: [u64; 16] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000,
];
/// Number of histogram buckets (the bounds plus the overflow bucket).
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The bucket a duration falls into.
pub fn latency_bucket(duration_ms: u64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&bound| duration_ms <= bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Estimates the `q` quantile (0..1) from bucket counts by linear interpolation inside the bucket.
pub fn latency_quantile(buckets: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).max(1.0);
    let mut seen = 0.0;
    for (i, &count) in buckets.iter().enumerate() {
        let next = seen + count as f64;
        if count > 0 && next >= rank {
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1] as f64
            };
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let within = (rank - seen) / count as f64;
            return Some(lower + (upper as f64 - lower) * within);
        }
        seen = next;
    }
    None
}

/// Token counts of one call, or sums of many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens.
    pub prompt: u64,
    /// Output tokens.
    pub completion: u64,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation: u64,
    /// Output tokens spent on reasoning.
    pub reasoning: u64,
    /// Total as the upstream defines it (prompt + completion).
    pub total: u64,
}

impl TokenUsage {
    /// Usage with the total derived from prompt and completion.
    pub fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt,
            completion,
            total: prompt + completion,
            ..Self::default()
        }
    }
}

/// One gateway call, as the recorder receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// When the call arrived.
    pub ts: jiff::Timestamp,
    /// HTTP method.
    pub method: String,
    /// Request path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Status sent to the client (499 when the client went away).
    pub status: u16,
    /// Model asked for (empty when the request named none).
    pub model: String,
    /// The gateway key used, if it was valid.
    pub key_id: Option<i64>,
    /// Its name at the time of the call.
    pub key_name: Option<String>,
    /// Tokens used.
    pub tokens: TokenUsage,
    /// Whole duration in milliseconds.
    pub duration_ms: u64,
    /// Time to the first byte of the answer body, in milliseconds.
    pub ttft_ms: Option<u64>,
    /// Whether the answer was streamed.
    pub stream: bool,
    /// Whether the tokens were estimated by the gateway's tokenizer.
    pub estimated: bool,
    /// Short description of a failure.
    pub error: Option<String>,
}

impl CallRecord {
    /// Whether the call succeeded (a 2xx status).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A stored call: the record with the id the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCall {
    /// Row id; newer calls have larger ids.
    pub id: i64,
    /// The call.
    pub call: CallRecord,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_include_their_upper_bound() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 2),
            (1_000, 9),
            (1_001, 10),
            (120_000, 15),
            (999_999, 16),
        ];
        for (ms, want) in cases {
            assert_eq!(latency_bucket(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let mut buckets = [0u64; LATENCY_BUCKETS];
        assert_eq!(latency_quantile(&buckets, 0.5), None);
        buckets[latency_bucket(80)] = 100; // all in (50, 100]
        let p50 = latency_quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 75.0).abs() < 1e-9, "{p50}");
        let p99 = latency_quantile(&buckets, 0.99).unwrap();
        assert!(p99 > 99.0 && p99 <= 100.0, "{p99}");
        buckets = [0; LATENCY_BUCKETS];
        buckets[LATENCY_BUCKETS - 1] = 3;
        assert_eq!(latency_quantile(&buckets, 0.5), Some(120_000.0));
    }
}
