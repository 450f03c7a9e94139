//! The console's view of what comes next: budgets' forecasts, anomalies and the alerts raised.

use std::collections::HashMap;

use super::wire::{AlertView, AnomalyFigures, Forecast};
use super::ConsoleState;
use crate::error::ConsoleError;
use crate::insights::anomaly;
use crate::insights::budgets::{self, BudgetUse};

/// Every budget (the global one first, then each key's) with its use and forecast, now.
pub async fn all_budgets(state: &ConsoleState) -> Result<Vec<BudgetUse>, ConsoleError> {
    let global = budgets::Global {
        limit: state.config.total_tokens,
        period: state.config.limit_period,
    };
    let now = state.clock.now();
    Ok(budgets::budgets(&state.store, global, &state.config.timezone, now).await?)
}

/// The global budget (`None`) or a key's.
pub async fn budget_of(
    state: &ConsoleState,
    key_id: Option<i64>,
) -> Result<BudgetUse, ConsoleError> {
    all_budgets(state)
        .await?
        .into_iter()
        .find(|b| b.key_id == key_id)
        .ok_or_else(|| {
            ConsoleError::NotFound(format!(
                "no key with id {}; list keys with GET /api/console/keys",
                key_id.unwrap_or_default()
            ))
        })
}

/// Each key's forecast, by key id.
pub async fn key_forecasts(state: &ConsoleState) -> Result<HashMap<i64, Forecast>, ConsoleError> {
    Ok(all_budgets(state)
        .await?
        .iter()
        .filter_map(|b| Some((b.key_id?, Forecast::new(b))))
        .collect())
}

/// The anomalies of the last `hours` hours, of one key or all, newest first.
pub async fn anomalies(
    state: &ConsoleState,
    hours: u32,
    key_id: Option<i64>,
) -> Result<Vec<AnomalyFigures>, ConsoleError> {
    let now = jiff::Timestamp::now();
    let found = anomaly::recent(&state.store, now, i64::from(hours), key_id).await?;
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let names: HashMap<i64, String> = state
        .store
        .list_keys()
        .await?
        .into_iter()
        .map(|k| (k.id, k.name))
        .collect();
    Ok(found
        .iter()
        .map(|a| AnomalyFigures::new(a, names.get(&a.key_id).cloned()))
        .collect())
}

/// The newest `limit` alerts with their deliveries.
pub async fn alerts(state: &ConsoleState, limit: u32) -> Result<Vec<AlertView>, ConsoleError> {
    let rows = state.store.alerts(limit).await?;
    Ok(rows.iter().filter_map(AlertView::new).collect())
}
