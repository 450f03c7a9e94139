//! Key management: create (the full key shown once), list, change and delete.

use std::collections::HashMap;

use super::ConsoleState;
use crate::clock::Period;
use crate::error::ConsoleError;
use crate::keys;
use crate::store::{Aggregate, KeyPatch, KeyRow, NewKey};

use super::params;
use super::wire::{CreateKey, Forecast, KeyView, PatchKey, PeriodUse};

const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 1000;

fn valid_name(raw: &str) -> Result<String, ConsoleError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ConsoleError::BadRequest(
            "name must not be empty; give the key a name such as \"production\"".into(),
        ));
    }
    // Counted as sent, as the OpenAPI document's maxLength counts it.
    if raw.chars().count() > MAX_NAME_CHARS {
        return Err(ConsoleError::BadRequest(format!(
            "name is too long ({} characters); use at most {MAX_NAME_CHARS}",
            raw.chars().count()
        )));
    }
    Ok(name.to_owned())
}

fn valid_description(raw: Option<String>) -> Result<String, ConsoleError> {
    let raw = raw.unwrap_or_default();
    // Counted as sent, as the OpenAPI document's maxLength counts it.
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ConsoleError::BadRequest(format!(
            "description is too long; use at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(raw.trim().to_owned())
}

/// Tokens recorded per budget scope (key id, or the global budget) in the current `period`.
pub struct PeriodUsage {
    period: Period,
    resets_at: jiff::Timestamp,
    used: HashMap<i64, (u64, u64)>,
}

impl PeriodUsage {
    /// Reads the usage recorded in the current `period` (by the console's clock).
    pub async fn read(state: &ConsoleState, period: Period) -> Result<Self, ConsoleError> {
        let window = period.window(state.clock.now(), &state.config.timezone);
        Ok(Self {
            period,
            resets_at: window.end,
            used: state.store.usage_since_day(window.first_day).await?,
        })
    }

    /// What budget `scope` used in the period.
    pub fn of(&self, scope: i64) -> PeriodUse {
        let (used, cost_nanos) = self.used.get(&scope).copied().unwrap_or((0, 0));
        PeriodUse {
            used,
            cost_nanos,
            resets_at: Some(self.resets_at),
        }
    }
}

/// The current period's usage of each period kind the keys in `rows` use.
async fn periods_of(
    state: &ConsoleState,
    rows: &[KeyRow],
) -> Result<Vec<PeriodUsage>, ConsoleError> {
    let mut periods = Vec::new();
    for period in [Period::Day, Period::Week, Period::Month] {
        if rows
            .iter()
            .any(|r| !r.deleted && r.limit_period == Some(period))
        {
            periods.push(PeriodUsage::read(state, period).await?);
        }
    }
    Ok(periods)
}

/// What a key used in the current period of its limits (all time, `usage`, when they never
/// reset).
fn period_use(periods: &[PeriodUsage], row: &KeyRow, usage: Option<&Aggregate>) -> PeriodUse {
    periods
        .iter()
        .find(|p| Some(p.period) == row.limit_period)
        .map_or(
            PeriodUse {
                used: usage.map_or(0, |u| u.tokens.total),
                cost_nanos: usage.map_or(0, |u| u.cost_nanos),
                resets_at: None,
            },
            |p| p.of(row.id),
        )
}

/// The live keys with their recorded usage, oldest first.
pub async fn list(state: &ConsoleState) -> Result<Vec<KeyView>, ConsoleError> {
    let rows = state.store.list_keys().await?;
    let usage = state.store.usage_by_key().await?;
    let periods = periods_of(state, &rows).await?;
    let mut forecasts = super::insights::key_forecasts(state).await?;
    rows.iter()
        .filter(|row| !row.deleted)
        .map(|row| {
            let usage = usage.get(&row.id);
            let forecast = forecasts
                .remove(&row.id)
                .ok_or_else(|| ConsoleError::Internal(format!("no forecast for key {}", row.id)))?;
            Ok(KeyView::new(
                row,
                usage,
                period_use(&periods, row, usage),
                forecast,
            ))
        })
        .collect()
}

/// Creates a key and returns it with its full value: the only time it is ever shown.
pub async fn create(state: &ConsoleState, body: CreateKey) -> Result<KeyView, ConsoleError> {
    let name = valid_name(&body.name)?;
    let description = valid_description(body.description)?;
    let generated = keys::generate().map_err(ConsoleError::Internal)?;
    let row = state
        .store
        .insert_key(
            NewKey {
                name,
                description,
                hash: generated.hash,
                display: generated.display,
                created_at: jiff::Timestamp::now(),
                limit_period: body.limit_period.map(Period::from),
            },
            state.config.console.max_keys,
        )
        .await?;
    state.keys.upsert(&row);
    // Debug quotes the name and escapes control characters: a name cannot forge log lines.
    tracing::info!(key_id = row.id, name = ?row.name, "key created");
    let periods = periods_of(state, std::slice::from_ref(&row)).await?;
    let budget = super::insights::budget_of(state, Some(row.id)).await?;
    let mut view = KeyView::new(
        &row,
        None,
        period_use(&periods, &row, None),
        Forecast::new(&budget),
    );
    view.value = generated.full;
    Ok(view)
}

fn to_patch(body: PatchKey) -> Result<KeyPatch, ConsoleError> {
    let expires_at = body
        .expires_at
        .map(|v| v.map(|raw| params::instant("expires_at", &raw)).transpose())
        .transpose()?;
    if body.rpm_limit == Some(Some(0)) {
        return Err(ConsoleError::BadRequest(
            "rpm_limit must be at least 1, or null for no limit".into(),
        ));
    }
    if let Some(Some(models)) = &body.allowed_models {
        if models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConsoleError::BadRequest(
                "allowed_models must list non-empty model names or patterns such as \"gpt-4o*\", or be null for all".into(),
            ));
        }
    }
    Ok(KeyPatch {
        name: body.name.as_deref().map(valid_name).transpose()?,
        description: body
            .description
            .map(|d| valid_description(Some(d)))
            .transpose()?,
        enabled: body.enabled,
        token_limit: body.token_limit,
        rpm_limit: body.rpm_limit,
        allowed_models: body.allowed_models,
        expires_at,
        fit_max_tokens: body.fit_max_tokens,
        limit_period: body.limit_period.map(|p| p.map(Period::from)),
        cost_limit_nanos: body
            .cost_limit
            .map(|limit| limit.map(cost_limit_nanos).transpose())
            .transpose()?,
    })
}

/// A money limit in USD as nano-dollars.
fn cost_limit_nanos(usd: f64) -> Result<u64, ConsoleError> {
    crate::config::usd_to_nanos("cost_limit", usd).map_err(|_| {
        ConsoleError::BadRequest(format!(
            "cost_limit {usd} is not an amount of USD; give a number of dollars of at least 0 such as 25 or 0.5, or null for no limit"
        ))
    })
}

fn not_found(id: i64) -> ConsoleError {
    ConsoleError::NotFound(format!(
        "no key with id {id}; list the keys with GET /api/console/keys"
    ))
}

/// Changes a key; the gateway honours the change on its next request.
pub async fn update(
    state: &ConsoleState,
    id: i64,
    body: PatchKey,
) -> Result<KeyView, ConsoleError> {
    let patch = to_patch(body)?;
    let row = state
        .store
        .update_key(id, patch)
        .await?
        .ok_or_else(|| not_found(id))?;
    state.keys.upsert(&row);
    let usage = state.store.usage_of_key(row.id).await?;
    let periods = periods_of(state, std::slice::from_ref(&row)).await?;
    let period = period_use(&periods, &row, Some(&usage));
    let budget = super::insights::budget_of(state, Some(row.id)).await?;
    Ok(KeyView::new(
        &row,
        Some(&usage),
        period,
        Forecast::new(&budget),
    ))
}

/// Deletes a key: it stops working at once; its history stays in every statistic.
pub async fn delete(state: &ConsoleState, id: i64) -> Result<(), ConsoleError> {
    if !state.store.delete_key(id).await? {
        return Err(not_found(id));
    }
    state.keys.remove(id);
    tracing::info!(key_id = id, "key deleted");
    Ok(())
}

/// Parses a key id from the path.
pub fn parse_id(raw: &str) -> Result<i64, ConsoleError> {
    raw.parse::<i64>().map_err(|_| {
        ConsoleError::NotFound(format!("no key with id \"{raw}\"; key ids are numbers"))
    })
}
