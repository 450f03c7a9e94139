//! The forecast of a budget: the rate it was spent at over a recent window, and the instant it
//! runs out if spending goes on at that rate.
//!
//! The window is the last [`WINDOW_DAYS`] days, read from the hourly aggregates: it starts at the
//! start of the hour [`WINDOW_DAYS`] × 24 hours before the current one and ends now. A budget
//! spent from only within the window (nothing recorded before it: a new key or deployment) is
//! measured from the start of its first hour with calls instead, but over at least one day, so
//! that a few minutes of use are not extrapolated into a day.

use super::{hour_of, hour_start, MS_PER_HOUR};

/// Length of the window the rate is measured over, in days.
pub const WINDOW_DAYS: i64 = 7;
/// The shortest span a rate is measured over.
const MIN_SPAN_MS: i64 = 24 * MS_PER_HOUR;
const MS_PER_DAY: f64 = 86_400_000.0;

/// What a forecast is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spend {
    /// The budget; `None` is unlimited.
    pub limit: Option<u64>,
    /// Spent of it in its current period.
    pub used: u64,
    /// Spent within the window.
    pub window_tokens: u64,
    /// The first hour within the window with calls.
    pub first_hour: Option<i64>,
    /// Whether anything was spent before the window.
    pub spent_before: bool,
}

/// A budget's rate and run-out instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Tokens per day over the window.
    pub rate_per_day: f64,
    /// When the budget runs out at that rate: `None` when unlimited or nothing is being spent;
    /// now when it is already used up.
    pub runs_out_at: Option<jiff::Timestamp>,
    /// The span the rate was measured over, in days.
    pub window_days: f64,
}

/// The first hour of the window that ends at `now`.
pub fn window_start_hour(now: jiff::Timestamp) -> i64 {
    hour_of(now) - WINDOW_DAYS * 24
}

/// The forecast of `spend` at `now`.
pub fn forecast(spend: &Spend, now: jiff::Timestamp) -> Forecast {
    let now_ms = now.as_millisecond();
    let mut start = hour_start(window_start_hour(now)).as_millisecond();
    if !spend.spent_before {
        if let Some(first) = spend.first_hour {
            start = start.max(hour_start(first).as_millisecond());
        }
    }
    let span_ms = (now_ms - start).max(MIN_SPAN_MS);
    let window_days = span_ms as f64 / MS_PER_DAY;
    let rate_per_day = spend.window_tokens as f64 / window_days;
    let runs_out_at = spend.limit.and_then(|limit| {
        let left = limit.saturating_sub(spend.used);
        if left == 0 {
            return Some(now);
        }
        if rate_per_day <= 0.0 {
            return None;
        }
        let ms = (left as f64 / rate_per_day * MS_PER_DAY).ceil();
        // Beyond what a timestamp holds (year 9999) it does not run out in any useful sense.
        if !ms.is_finite() || ms > 2.5e14 {
            return None;
        }
        now.checked_add(jiff::SignedDuration::from_millis(ms as i64))
            .ok()
    });
    Forecast {
        rate_per_day,
        runs_out_at,
        window_days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn rates_and_run_out_instants() {
        let now = at("2026-03-10T12:30:00Z");
        // A full window: 7 days and the 30 minutes of the current hour.
        let full = Spend {
            limit: Some(10_000),
            used: 4_000,
            window_tokens: 7_050,
            first_hour: Some(hour_of(at("2026-03-03T12:00:00Z"))),
            spent_before: true,
        };
        let f = forecast(&full, now);
        assert!((f.window_days - (7.0 + 0.5 / 24.0)).abs() < 1e-9);
        assert!((f.rate_per_day - 7_050.0 / f.window_days).abs() < 1e-9);
        let left_days = 6_000.0 / f.rate_per_day;
        let want = now.as_millisecond() + (left_days * MS_PER_DAY).ceil() as i64;
        assert_eq!(f.runs_out_at.unwrap().as_millisecond(), want);
        // A young budget is measured from its first hour.
        let young = Spend {
            first_hour: Some(hour_of(at("2026-03-08T12:10:00Z"))),
            spent_before: false,
            ..full
        };
        let f = forecast(&young, now);
        assert!((f.window_days - 2.0 - 0.5 / 24.0).abs() < 1e-9);
        // Minutes old: measured over a day.
        let fresh = Spend {
            first_hour: Some(hour_of(now)),
            spent_before: false,
            ..full
        };
        assert_eq!(forecast(&fresh, now).window_days, 1.0);
        // Unlimited, idle, used up.
        assert_eq!(
            forecast(
                &Spend {
                    limit: None,
                    ..full
                },
                now
            )
            .runs_out_at,
            None
        );
        let idle = Spend {
            window_tokens: 0,
            ..full
        };
        assert_eq!(forecast(&idle, now).runs_out_at, None);
        assert_eq!(forecast(&idle, now).rate_per_day, 0.0);
        let spent = Spend {
            used: 10_000,
            ..full
        };
        assert_eq!(forecast(&spent, now).runs_out_at, Some(now));
    }
}
