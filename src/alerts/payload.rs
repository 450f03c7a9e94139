//! The JSON of an alert, as a generic webhook receives it and `GET /api/console/alerts` shows
//! it. The field names of LiteLLM's budget alerts (`event`, `event_group`, `event_message`,
//! `spend`, `max_budget`) plus `budget_percentage_used` and our own (`key_id`, `key_name`,
//! `period`, `runs_out_at`, …), so that a receiver written for LiteLLM reads ours.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::insights::anomaly::Anomaly;
use crate::insights::hour_start;

/// An alert's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertPayload {
    /// `threshold_crossed` (a budget percentage below 100), `budget_crossed` (100 %),
    /// `projected_limit_exceeded` (runs out soon at its rate), `anomaly_detected` or
    /// `recorder_degraded`.
    pub event: String,
    /// `key` (a key's budget or calls) or `proxy` (the global budget, the recorder).
    pub event_group: String,
    /// One line for people.
    pub event_message: String,
    /// Spent in the budget's period (in `unit`); `null` when not about a budget.
    pub spend: Option<u64>,
    /// The budget (in `unit`); `null` when not about a budget.
    pub max_budget: Option<u64>,
    /// `spend` as a percentage of `max_budget`, 2 decimals.
    pub budget_percentage_used: Option<f64>,
    /// The key it is about.
    pub key_id: Option<i64>,
    /// That key's name.
    pub key_name: Option<String>,
    /// The budget's period (`total`: all-time), or the local day of an anomaly.
    pub period: String,
    /// When the budget runs out at its recent rate (RFC 3339), if it does.
    pub runs_out_at: Option<String>,
    /// The budget's recent spend rate per day (in `unit`).
    pub rate_per_day: Option<f64>,
    /// What `spend` and `max_budget` count: `tokens`.
    pub unit: String,
    /// The rule that raised it (`budget_80`, `forecast_3d`, `anomaly_error_rate`, …).
    pub rule: String,
    /// The rule's limit: a percentage, a number of days, an error share or a token count.
    pub threshold: Option<f64>,
    /// The figures of an anomaly.
    pub anomaly: Option<AnomalyFigures>,
    /// The instance that raised it.
    pub instance: String,
    /// When it was raised (RFC 3339).
    pub created_at: String,
}

/// An anomalous hour of a key and model with the figures that made it one (also the rows of
/// `GET /api/console/anomalies`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnomalyFigures {
    /// Key id (`null`: calls without a key).
    pub key_id: Option<i64>,
    /// The key's name.
    pub key_name: Option<String>,
    /// Model.
    pub model: String,
    /// Start of the hour (RFC 3339).
    pub hour: String,
    /// `error_rate` or `token_volume`.
    pub kind: String,
    /// Calls in the hour.
    pub calls: u64,
    /// Failed (non-2xx) calls in the hour.
    pub failures: u64,
    /// Failed share of the hour's calls, %, 2 decimals.
    pub error_rate: f64,
    /// Tokens in the hour.
    pub tokens: u64,
    /// Failed share over the baseline hours, %, 2 decimals (`null`: no calls then).
    pub baseline_error_rate: Option<f64>,
    /// Median tokens of the baseline hours with calls (`null`: none).
    pub baseline_median_tokens: Option<f64>,
    /// Hours with calls among the 168 before this one.
    pub baseline_hours: u64,
    /// The limit crossed: an error rate in % (`error_rate`) or a token count (`token_volume`).
    pub threshold: f64,
}

/// Rounds to two decimals, as the guide's `avg_time`, `success_rate` and `usage_percent`.
pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

pub use crate::clock::rfc3339;

impl AnomalyFigures {
    /// The figures of `anomaly`, its key named `key_name`.
    pub fn new(anomaly: &Anomaly, key_name: Option<String>) -> Self {
        let percent = |share: f64| round2(share * 100.0);
        let error_rate = if anomaly.calls == 0 {
            0.0
        } else {
            anomaly.failures as f64 / anomaly.calls as f64
        };
        let threshold = match anomaly.kind {
            crate::insights::anomaly::Kind::ErrorRate => percent(anomaly.threshold),
            crate::insights::anomaly::Kind::TokenVolume => round2(anomaly.threshold),
        };
        Self {
            key_id: (anomaly.key_id != 0).then_some(anomaly.key_id),
            key_name,
            model: anomaly.model.clone(),
            hour: rfc3339(hour_start(anomaly.hour)),
            kind: anomaly.kind.name().to_owned(),
            calls: anomaly.calls,
            failures: anomaly.failures,
            error_rate: percent(error_rate),
            tokens: anomaly.tokens,
            baseline_error_rate: anomaly.baseline_error_rate.map(percent),
            baseline_median_tokens: anomaly.baseline_median_tokens.map(round2),
            baseline_hours: anomaly.baseline_hours as u64,
            threshold,
        }
    }
}
