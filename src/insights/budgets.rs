//! The budgets and what has been spent of each: the one place that reads them. Every budget is
//! all-time today (`quota.total_tokens`, each key's `token_limit`); a budget that resets every
//! day, week or month plugs in here, as its `period` and what was spent in it.

use std::collections::HashMap;

use super::forecast::{self, Forecast, Spend};
use crate::store::{Store, StoreError};

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
    /// The current period (`total`: all-time).
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

/// The global budget (first; `global_limit` is `quota.total_tokens`) and every key's, deleted
/// ones included, with their use and forecast at `now`.
pub async fn budgets(
    store: &Store,
    global_limit: Option<u64>,
    now: jiff::Timestamp,
) -> Result<Vec<BudgetUse>, StoreError> {
    let keys = store.list_keys().await?;
    let all_time = store.usage_by_key().await?;
    let window: HashMap<i64, _> = store
        .usage_since_hour(forecast::window_start_hour(now))
        .await?
        .into_iter()
        .map(|w| (w.key_id, w))
        .collect();
    let total: u64 = all_time.values().map(|a| a.tokens.total).sum();
    let window_total: u64 = window.values().map(|w| w.tokens).sum();
    let global = Spend {
        limit: global_limit,
        used: total,
        window_tokens: window_total,
        first_hour: window.values().map(|w| w.first_hour).min(),
        spent_before: total > window_total,
    };
    let mut out = vec![BudgetUse {
        key_id: None,
        key_name: None,
        active: true,
        limit: global_limit,
        used: total,
        period: ALL_TIME.to_owned(),
        forecast: forecast::forecast(&global, now),
    }];
    for key in keys {
        let used = all_time.get(&key.id).map_or(0, |a| a.tokens.total);
        let in_window = window.get(&key.id);
        let window_tokens = in_window.map_or(0, |w| w.tokens);
        let spend = Spend {
            limit: key.token_limit,
            used,
            window_tokens,
            first_hour: in_window.map(|w| w.first_hour),
            spent_before: used > window_tokens,
        };
        out.push(BudgetUse {
            key_id: Some(key.id),
            key_name: Some(key.name),
            active: key.enabled && !key.deleted,
            limit: key.token_limit,
            used,
            period: ALL_TIME.to_owned(),
            forecast: forecast::forecast(&spend, now),
        });
    }
    Ok(out)
}
