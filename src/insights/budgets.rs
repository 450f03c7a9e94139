//! The budgets and what has been spent of each: the one place that reads them. A budget
//! (`quota.total_tokens`, each key's `token_limit`) is all-time, or resets every day, week or
//! month (`limit_period`): then what was spent is what its current period recorded, its `period`
//! names that period, and it cannot run out after the period ends.

use std::collections::HashMap;

use super::forecast::{self, Forecast, Spend};
use crate::clock::{Period, Window};
use crate::store::{Store, StoreError, GLOBAL_SCOPE};

/// The period of an all-time budget.
pub const ALL_TIME: &str = "total";

/// A budget, what has been spent of it in its current period, and its forecast.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetUse {
    /// The key whose budget it is; `None` is the global budget.
    pub key_id: Option<i64>,
    /// The key's name.
    pub key_name: Option<String>,
    /// Whether calls can still spend it (the global budget, or a live, enabled key).
    pub active: bool,
    /// The budget; `None` is unlimited.
    pub limit: Option<u64>,
    /// Tokens spent in the current period.
    pub used: u64,
    /// The current period: `total` (all-time), or `day`, `week` or `month` and the period's
    /// first local day (`month:20261201`), so that each period is a subject of its own.
    pub period: String,
    /// The spend rate and when the budget runs out at it.
    pub forecast: Forecast,
}

impl BudgetUse {
    /// What an alert about it is about: `global` or `key:<id>`.
    pub fn subject(&self) -> String {
        match self.key_id {
            Some(id) => format!("key:{id}"),
            None => "global".to_owned(),
        }
    }

    /// Share of the budget spent, in % (`None`: unlimited; a zero budget is 100 % spent).
    pub fn percent_used(&self) -> Option<f64> {
        self.limit.map(|limit| {
            if limit == 0 {
                100.0
            } else {
                self.used as f64 * 100.0 / limit as f64
            }
        })
    }
}

/// The global budget: `quota.total_tokens` and how often it resets.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    /// The limit; `None` is unlimited.
    pub limit: Option<u64>,
    /// `None`: never resets.
    pub period: Option<Period>,
}

/// Tokens and nano-dollars each budget scope recorded in a period.
type ScopeUse = HashMap<i64, (u64, u64)>;

/// The current period of each period kind in use, with what each scope recorded in it.
struct Periods(Vec<(Period, Window, ScopeUse)>);

impl Periods {
    async fn read(
        store: &Store,
        kinds: impl Iterator<Item = Period>,
        tz: &jiff::tz::TimeZone,
        now: jiff::Timestamp,
    ) -> Result<Self, StoreError> {
        let mut read = Vec::new();
        for period in kinds {
            if read.iter().any(|(p, _, _)| *p == period) {
                continue;
            }
            let window = period.window(now, tz);
            read.push((
                period,
                window,
                store.usage_since_day(window.first_day).await?,
            ));
        }
        Ok(Self(read))
    }

    /// `scope`'s spend in its current period, the period's name and its end; `all_time` when the
    /// budget never resets.
    fn of(
        &self,
        period: Option<Period>,
        scope: i64,
        all_time: u64,
    ) -> (u64, String, Option<jiff::Timestamp>) {
        let found = period.and_then(|p| self.0.iter().find(|(q, _, _)| *q == p));
        match found {
            Some((period, window, used)) => (
                used.get(&scope).map_or(0, |u| u.0),
                format!("{}:{}", period.name(), window.first_day),
                Some(window.end),
            ),
            None => (all_time, ALL_TIME.to_owned(), None),
        }
    }
}

/// A forecast that cannot run out after its period ends (the budget starts again then).
fn within(mut forecast: Forecast, end: Option<jiff::Timestamp>) -> Forecast {
    if let (Some(at), Some(end)) = (forecast.runs_out_at, end) {
        if at >= end {
            forecast.runs_out_at = None;
        }
    }
    forecast
}

/// The global budget (first) and every key's, deleted ones included, with their use in their
/// current period and forecast at `now` (periods in `tz`).
pub async fn budgets(
    store: &Store,
    global: Global,
    tz: &jiff::tz::TimeZone,
    now: jiff::Timestamp,
) -> Result<Vec<BudgetUse>, StoreError> {
    let global_limit = global.limit;
    let keys = store.list_keys().await?;
    let periods = Periods::read(
        store,
        global
            .period
            .into_iter()
            .chain(keys.iter().filter_map(|k| k.limit_period)),
        tz,
        now,
    )
    .await?;
    let all_time = store.usage_by_key().await?;
    let window: HashMap<i64, _> = store
        .usage_since_hour(forecast::window_start_hour(now))
        .await?
        .into_iter()
        .map(|w| (w.key_id, w))
        .collect();
    let total: u64 = all_time.values().map(|a| a.tokens.total).sum();
    let window_total: u64 = window.values().map(|w| w.tokens).sum();
    let (used, period, end) = periods.of(global.period, GLOBAL_SCOPE, total);
    let spend = Spend {
        limit: global_limit,
        used,
        window_tokens: window_total,
        first_hour: window.values().map(|w| w.first_hour).min(),
        spent_before: total > window_total,
    };
    let mut out = vec![BudgetUse {
        key_id: None,
        key_name: None,
        active: true,
        limit: global_limit,
        used,
        period,
        forecast: within(forecast::forecast(&spend, now), end),
    }];
    for key in keys {
        let all = all_time.get(&key.id).map_or(0, |a| a.tokens.total);
        let (used, period, end) = periods.of(key.limit_period, key.id, all);
        let in_window = window.get(&key.id);
        let window_tokens = in_window.map_or(0, |w| w.tokens);
        let spend = Spend {
            limit: key.token_limit,
            used,
            window_tokens,
            first_hour: in_window.map(|w| w.first_hour),
            spent_before: all > window_tokens,
        };
        out.push(BudgetUse {
            key_id: Some(key.id),
            key_name: Some(key.name),
            active: key.enabled && !key.deleted,
            limit: key.token_limit,
            used,
            period,
            forecast: within(forecast::forecast(&spend, now), end),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_periodic_budget_reads_its_current_period_and_ends_with_it() {
        let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let now = ts("2026-12-15T04:00:00Z");
        let month = Period::Month.window(now, &tz);
        let used = HashMap::from([(GLOBAL_SCOPE, (700, 0)), (7, (40, 0))]);
        let periods = Periods(vec![(Period::Month, month, used)]);
        let (used, period, end) = periods.of(Some(Period::Month), 7, 5_000);
        assert_eq!((used, period.as_str()), (40, "month:20261201"));
        assert_eq!(
            end,
            Some(ts("2026-12-31T16:00:00Z")),
            "midnight of Jan 1 in Shanghai"
        );
        let (used, period, end) = periods.of(None, 7, 5_000);
        assert_eq!((used, period.as_str(), end), (5_000, ALL_TIME, None));
        let (used, _, _) = periods.of(Some(Period::Month), 8, 0);
        assert_eq!(used, 0, "a key with no call this month");

        let forecast = |at: &str| Forecast {
            rate_per_day: 10.0,
            runs_out_at: Some(ts(at)),
            window_days: 7.0,
        };
        let end = Some(ts("2026-12-31T16:00:00Z"));
        assert_eq!(
            within(forecast("2026-12-20T00:00:00Z"), end).runs_out_at,
            Some(ts("2026-12-20T00:00:00Z"))
        );
        assert_eq!(
            within(forecast("2027-01-03T00:00:00Z"), end).runs_out_at,
            None,
            "it starts again before it would run out"
        );
        assert!(within(forecast("2027-01-03T00:00:00Z"), None)
            .runs_out_at
            .is_some());
    }
}
