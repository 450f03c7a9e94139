//! What the recorded usage says next: when each budget runs out at its recent rate
//! ([`forecast`]), and which key and model behave unlike their own recent past ([`anomaly`]).
//! Both read the hourly aggregates only; [`budgets`] is the one place that reads budgets.

pub mod anomaly;
pub mod budgets;
pub mod forecast;

/// Milliseconds in an hour: aggregates are bucketed in UTC hours since the epoch.
pub const MS_PER_HOUR: i64 = 3_600_000;

/// The UTC hour (since the epoch) that holds `ts`.
pub fn hour_of(ts: jiff::Timestamp) -> i64 {
    ts.as_millisecond().div_euclid(MS_PER_HOUR)
}

/// The start of an hour (UTC hours since the epoch).
pub fn hour_start(hour: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(hour.saturating_mul(MS_PER_HOUR))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}
