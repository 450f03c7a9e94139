//! Anomalies: an hour in which a key's calls to a model failed or spent unlike the key's own
//! recent past.
//!
//! Two tests, each per key × model and hour, over the hourly aggregates:
//! - **error rate**: at least [`Thresholds::min_calls`] calls and at least
//!   [`Thresholds::error_rate`] of them failed (non-2xx);
//! - **token volume**: at least [`Thresholds::volume_floor`] tokens and more than
//!   [`Thresholds::volume_factor`] × the median of the key and model's hourly tokens over the
//!   [`Thresholds::baseline_hours`] before that hour (hours with calls only), given at least
//!   [`Thresholds::min_baseline_hours`] such hours.

use crate::store::HourUsage;

/// Why an hour is anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Too many of its calls failed.
    ErrorRate,
    /// It spent far more tokens than usual.
    TokenVolume,
}

impl Kind {
    /// The name used in the API and in alerts.
    pub fn name(self) -> &'static str {
        match self {
            Self::ErrorRate => "error_rate",
            Self::TokenVolume => "token_volume",
        }
    }
}

/// The limits beyond which an hour is anomalous.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Share of failed calls (0–1).
    pub error_rate: f64,
    /// Fewest calls in the hour for the error rate to count.
    pub min_calls: u64,
    /// How many times the baseline median an hour's tokens must exceed.
    pub volume_factor: f64,
    /// Fewest tokens in the hour for the volume to count.
    pub volume_floor: u64,
    /// Hours before the examined one that form the baseline.
    pub baseline_hours: i64,
    /// Fewest hours with calls in the baseline for the volume test.
    pub min_baseline_hours: usize,
}

/// The limits used unless configured otherwise.
pub const DEFAULT_THRESHOLDS: Thresholds = Thresholds {
    error_rate: 0.5,
    min_calls: 10,
    volume_factor: 3.0,
    volume_floor: 10_000,
    baseline_hours: 7 * 24,
    min_baseline_hours: 3,
};

/// One anomalous hour of a key and model, with the figures that made it one.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    /// Key id (0: no key).
    pub key_id: i64,
    /// Model.
    pub model: String,
    /// The hour (UTC hours since the epoch).
    pub hour: i64,
    /// Which test it failed.
    pub kind: Kind,
    /// Calls in the hour.
    pub calls: u64,
    /// Failed calls in the hour.
    pub failures: u64,
    /// Tokens in the hour.
    pub tokens: u64,
    /// Share of failed calls over the baseline hours (`None`: no calls then).
    pub baseline_error_rate: Option<f64>,
    /// Median hourly tokens over the baseline hours with calls (`None`: none).
    pub baseline_median_tokens: Option<f64>,
    /// Hours with calls in the baseline.
    pub baseline_hours: usize,
    /// The limit it crossed: an error share, or a token count.
    pub threshold: f64,
}

fn median(values: &mut [u64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 0 {
        (values[mid - 1] as f64 + values[mid] as f64) / 2.0
    } else {
        values[mid] as f64
    })
}

/// The anomalous hours at or after `from_hour` among `rows`, which must hold every row of
/// `agg_hour` from `from_hour - t.baseline_hours` on; newest first.
pub fn detect(rows: &[HourUsage], from_hour: i64, t: &Thresholds) -> Vec<Anomaly> {
    let mut series: std::collections::BTreeMap<(i64, &str), Vec<&HourUsage>> =
        std::collections::BTreeMap::new();
    for row in rows {
        series
            .entry((row.key_id, row.model.as_str()))
            .or_default()
            .push(row);
    }
    let mut found = Vec::new();
    for hours in series.values_mut() {
        hours.sort_by_key(|r| r.hour);
        for (i, row) in hours
            .iter()
            .enumerate()
            .filter(|(_, r)| r.hour >= from_hour)
        {
            let baseline: Vec<&HourUsage> = hours[..i]
                .iter()
                .filter(|b| b.hour >= row.hour - t.baseline_hours)
                .copied()
                .collect();
            found.extend(judge(row, &baseline, t));
        }
    }
    found.sort_by(|a, b| {
        b.hour
            .cmp(&a.hour)
            .then(a.key_id.cmp(&b.key_id))
            .then(a.model.cmp(&b.model))
    });
    found
}

/// The anomalies of one hour against its baseline.
fn judge(row: &HourUsage, baseline: &[&HourUsage], t: &Thresholds) -> Vec<Anomaly> {
    let (calls, failures) = baseline
        .iter()
        .fold((0u64, 0u64), |(c, f), b| (c + b.calls, f + b.failures));
    let baseline_error_rate = (calls > 0).then(|| failures as f64 / calls as f64);
    let mut tokens: Vec<u64> = baseline.iter().map(|b| b.tokens).collect();
    let baseline_median_tokens = median(&mut tokens);
    let anomaly = |kind, threshold| Anomaly {
        key_id: row.key_id,
        model: row.model.clone(),
        hour: row.hour,
        kind,
        calls: row.calls,
        failures: row.failures,
        tokens: row.tokens,
        baseline_error_rate,
        baseline_median_tokens,
        baseline_hours: baseline.len(),
        threshold,
    };
    let mut out = Vec::new();
    if row.calls >= t.min_calls && row.failures as f64 >= t.error_rate * row.calls as f64 {
        out.push(anomaly(Kind::ErrorRate, t.error_rate));
    }
    if let Some(median) = baseline_median_tokens {
        let limit = (median * t.volume_factor).max(t.volume_floor as f64);
        if baseline.len() >= t.min_baseline_hours
            && row.tokens >= t.volume_floor
            && row.tokens as f64 > median * t.volume_factor
        {
            out.push(anomaly(Kind::TokenVolume, limit));
        }
    }
    out
}

/// The anomalous hours among the last `hours` (the current one included) at `now`, of one key
/// or all, read from the store with the baseline they are judged against; newest first.
pub async fn recent(
    store: &crate::store::Store,
    now: jiff::Timestamp,
    hours: i64,
    key_id: Option<i64>,
) -> Result<Vec<Anomaly>, crate::store::StoreError> {
    let t = DEFAULT_THRESHOLDS;
    let from_hour = super::hour_of(now) - hours + 1;
    let rows = store
        .hourly_usage(from_hour - t.baseline_hours, from_hour, key_id)
        .await?;
    Ok(detect(&rows, from_hour, &t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hour: i64, key_id: i64, calls: u64, failures: u64, tokens: u64) -> HourUsage {
        HourUsage {
            hour,
            key_id,
            model: "m".into(),
            calls,
            failures,
            tokens,
        }
    }

    #[test]
    fn jumps_are_found_and_steady_series_are_not() {
        let t = DEFAULT_THRESHOLDS;
        let mut rows = Vec::new();
        for h in 0..30 {
            rows.push(row(h, 1, 20, 1, 5_000)); // steady
            rows.push(row(h, 2, 20, if h == 29 { 12 } else { 0 }, 5_000)); // errors jump
            rows.push(row(h, 3, 20, 0, if h == 28 { 20_000 } else { 5_000 })); // volume jumps
            rows.push(row(h, 4, 5, 5, 100)); // fails, but too few calls
        }
        let found = detect(&rows, 24, &t);
        let seen: Vec<(i64, i64, Kind)> =
            found.iter().map(|a| (a.key_id, a.hour, a.kind)).collect();
        assert_eq!(
            seen,
            [(2, 29, Kind::ErrorRate), (3, 28, Kind::TokenVolume)],
            "{found:?}"
        );
        let errors = &found[0];
        assert_eq!((errors.calls, errors.failures), (20, 12));
        assert_eq!(errors.baseline_error_rate, Some(0.0));
        let volume = &found[1];
        assert_eq!(volume.baseline_median_tokens, Some(5_000.0));
        assert_eq!(volume.threshold, 15_000.0);
        assert_eq!(volume.baseline_hours, 28);
        // Under the floor, a tenfold jump is not an anomaly; without a baseline neither.
        let small = [
            row(0, 5, 1, 0, 10),
            row(1, 5, 1, 0, 10),
            row(2, 5, 1, 0, 10),
            row(3, 5, 1, 0, 9_000),
        ];
        assert!(detect(&small, 3, &t).is_empty());
        let alone = [row(3, 6, 1, 0, 90_000)];
        assert!(detect(&alone, 0, &t).is_empty());
    }
}
