//! Histograms (HdrHistogram, microseconds, 3 significant digits) and their JSON summary.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest value a histogram tracks: one hour in microseconds (larger values are clamped).
const HIGHEST_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
pub struct Latencies(Histogram<u64>);

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Result<Self, String> {
        Histogram::new_with_bounds(1, HIGHEST_US, 3)
            .map(Self)
            .map_err(|e| format!("cannot create a histogram: {e}"))
    }

    /// Records one duration.
    pub fn record(&mut self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(HIGHEST_US);
        self.0.saturating_record(us.clamp(1, HIGHEST_US));
    }

    /// `{count, p50, p90, p99, p999, max, mean}` in milliseconds.
    pub fn summary(&self) -> Value {
        let ms = |us: u64| us as f64 / 1000.0;
        if self.0.is_empty() {
            return json!({"count": 0});
        }
        json!({
            "count": self.0.len(),
            "p50": ms(self.0.value_at_quantile(0.50)),
            "p90": ms(self.0.value_at_quantile(0.90)),
            "p99": ms(self.0.value_at_quantile(0.99)),
            "p999": ms(self.0.value_at_quantile(0.999)),
            "max": ms(self.0.max()),
            "min": ms(self.0.min()),
            "mean": self.0.mean() / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn summary_in_milliseconds() {
        let mut h = Latencies::new().unwrap();
        assert_eq!(h.summary(), json!({"count": 0}));
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s["count"], 1000);
        assert!((s["p50"].as_f64().unwrap() - 0.5).abs() < 0.01);
        assert!((s["max"].as_f64().unwrap() - 1.0).abs() < 0.01);
    }
}
