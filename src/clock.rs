//! The program's clock and the calendar periods budgets reset by.
//!
//! [`Clock`] is the wall clock, shifted by a fixed offset only when a test asks for it (the
//! `CONSOLE_TEST_NOW` setting, see `config.rs`): a real process can then be started at any
//! instant — the last minute of a month in the configured zone, say — and every instant that
//! decides a budget period (the instant a call is recorded at and charged to) comes from it. The
//! offset is one atomic integer, so reading the clock costs what reading the wall clock does.
//! [`Period`] turns an instant into the period it falls in, in the configured time zone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The wall clock, shifted by an offset (zero outside tests). Cheap to clone: clones share the
/// offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The wall clock as it is.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that reads `start` now and runs on at the wall clock's pace from there.
    pub fn starting_at(start: Timestamp) -> Self {
        let clock = Self::default();
        clock.set(start);
        clock
    }

    /// The current instant.
    pub fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        match self.offset_ms.load(Ordering::Relaxed) {
            0 => now,
            offset => Timestamp::from_millisecond(now.as_millisecond().saturating_add(offset))
                .unwrap_or(now),
        }
    }

    /// Whether the clock is shifted from the wall clock.
    pub fn is_shifted(&self) -> bool {
        self.offset_ms.load(Ordering::Relaxed) != 0
    }

    /// Makes the clock read `at` now (tests move it across period boundaries).
    pub fn set(&self, at: Timestamp) {
        let offset = at
            .as_millisecond()
            .saturating_sub(Timestamp::now().as_millisecond());
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}

/// How often a budget starts again from nothing: at the start of each day, ISO week (Monday) or
/// month in the configured time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// Every day at midnight.
    Day,
    /// Every Monday at midnight.
    Week,
    /// The first day of every month at midnight.
    Month,
}

/// One period: when it starts and ends, and its first local day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The first instant of the period.
    pub start: Timestamp,
    /// The first instant of the next period (when the budget resets).
    pub end: Timestamp,
    /// The period's first local day as YYYYMMDD (the day buckets of `agg_day`).
    pub first_day: i64,
    /// Its last local day as YYYYMMDD.
    pub last_day: i64,
}

impl Period {
    /// The names accepted in `config.yaml` and the console API.
    pub const NAMES: &'static str = "day, week or month";

    /// Parses `day`, `week` or `month`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    /// The name, as [`Period::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
        }
    }

    /// The number the budget ledger stores for it (0 is "never resets").
    pub fn code(self) -> i64 {
        match self {
            Self::Day => 1,
            Self::Week => 2,
            Self::Month => 3,
        }
    }

    /// The period `at` falls in, in `tz`.
    pub fn window(self, at: Timestamp, tz: &TimeZone) -> Window {
        let today = at.to_zoned(tz.clone()).date();
        let first = match self {
            Self::Day => today,
            Self::Week => today
                .checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days())
                .unwrap_or(today),
            Self::Month => today.first_of_month(),
        };
        let next = match self {
            Self::Day => first.tomorrow().unwrap_or(first),
            Self::Week => first.checked_add(7.days()).unwrap_or(first),
            Self::Month => first.checked_add(1.month()).unwrap_or(first),
        };
        Window {
            start: midnight(first, tz, at),
            end: midnight(next, tz, at),
            first_day: day_number(first),
            last_day: day_number(next.yesterday().unwrap_or(next)),
        }
    }
}

/// The first instant of `date` in `tz` (later than 00:00 where a time change skips midnight).
fn midnight(date: Date, tz: &TimeZone, fallback: Timestamp) -> Timestamp {
    date.to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .unwrap_or(fallback)
}

/// YYYYMMDD of `date`.
fn day_number(date: Date) -> i64 {
    i64::from(date.year()) * 10_000 + i64::from(date.month()) * 100 + i64::from(date.day())
}

/// An instant as the API and the alerts write it, as the guide does: RFC 3339 in UTC to the
/// second, `2026-02-20T18:45:32Z`.
pub fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Serialises an instant as [`rfc3339`] writes it.
pub fn serialize_rfc3339<S: serde::Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn periods_start_at_local_midnight() {
        let shanghai = TimeZone::get("Asia/Shanghai").unwrap();
        // 2026-01-31 16:30 UTC is 2026-02-01 00:30 in Shanghai.
        let cases = [
            (
                Period::Day,
                "2026-01-31T16:30:00Z",
                "2026-01-31T16:00:00Z",
                "2026-02-01T16:00:00Z",
                20260201,
            ),
            (
                Period::Month,
                "2026-01-31T16:30:00Z",
                "2026-01-31T16:00:00Z",
                "2026-02-28T16:00:00Z",
                20260201,
            ),
            (
                Period::Month,
                "2026-01-31T15:59:59Z",
                "2025-12-31T16:00:00Z",
                "2026-01-31T16:00:00Z",
                20260101,
            ),
            // 2026-02-04 is a Wednesday: its week began on Monday the 2nd.
            (
                Period::Week,
                "2026-02-04T03:00:00Z",
                "2026-02-01T16:00:00Z",
                "2026-02-08T16:00:00Z",
                20260202,
            ),
        ];
        for (period, now, start, end, first_day) in cases {
            let window = period.window(at(now), &shanghai);
            assert_eq!(
                (window.start, window.end, window.first_day),
                (at(start), at(end), first_day),
                "{period:?} at {now}"
            );
            let last = window
                .end
                .to_zoned(shanghai.clone())
                .date()
                .yesterday()
                .unwrap();
            assert_eq!(window.last_day, super::day_number(last));
        }
    }

    #[test]
    fn a_month_spans_a_time_change() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        let window = Period::Month.window(at("2026-03-15T12:00:00Z"), &paris);
        // March starts at UTC+1, April at UTC+2 (summer time began on the 29th).
        assert_eq!(window.start, at("2026-02-28T23:00:00Z"));
        assert_eq!(window.end, at("2026-03-31T22:00:00Z"));
    }

    #[test]
    fn a_shifted_clock_runs_from_where_it_was_set() {
        let clock = Clock::system();
        assert!(!clock.is_shifted());
        clock.set(at("2030-01-31T23:59:00Z"));
        let now = clock.clone().now();
        assert!(now >= at("2030-01-31T23:59:00Z") && now < at("2030-02-01T00:00:00Z"));
        assert!(clock.is_shifted());
    }

    #[test]
    fn period_names_round_trip() {
        for period in [Period::Day, Period::Week, Period::Month] {
            assert_eq!(Period::parse(period.name()), Some(period));
        }
        assert_eq!(Period::parse("year"), None);
    }
}
