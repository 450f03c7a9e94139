//! Key management: create (the full key shown once), list, change and delete.

use std::collections::HashMap;

use super::ConsoleState;
use crate::error::ConsoleError;
use crate::keys;
use crate::store::{Aggregate, KeyPatch, NewKey};

use super::params;
use super::wire::{CreateKey, Forecast, KeyView, PatchKey};

const MAX_NAME_CHARS: usize = 64;
const MAX_DESCRIPTION_CHARS: usize = 1000;

fn valid_name(raw: &str) -> Result<String, ConsoleError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ConsoleError::BadRequest(
            "name must not be empty; give the key a name such as \"production\"".into(),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ConsoleError::BadRequest(format!(
            "name is too long ({} characters); use at most {MAX_NAME_CHARS}",
            name.chars().count()
        )));
    }
    Ok(name.to_owned())
}

fn valid_description(raw: Option<String>) -> Result<String, ConsoleError> {
    let description = raw.unwrap_or_default().trim().to_owned();
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ConsoleError::BadRequest(format!(
            "description is too long; use at most {MAX_DESCRIPTION_CHARS} characters"
        )));
    }
    Ok(description)
}

fn usage_of(usage: &HashMap<i64, Aggregate>, id: i64) -> (u64, u64) {
    usage
        .get(&id)
        .map_or((0, 0), |agg| (agg.tokens.total, agg.calls))
}

/// The live keys with their recorded usage, oldest first.
pub async fn list(state: &ConsoleState) -> Result<Vec<KeyView>, ConsoleError> {
    let rows = state.store.list_keys().await?;
    let usage = state.store.usage_by_key().await?;
    let mut forecasts = super::insights::key_forecasts(state).await?;
    rows.iter()
        .filter(|row| !row.deleted)
        .map(|row| {
            let (tokens, calls) = usage_of(&usage, row.id);
            let forecast = forecasts
                .remove(&row.id)
                .ok_or_else(|| ConsoleError::Internal(format!("no forecast for key {}", row.id)))?;
            Ok(KeyView::new(row, tokens, calls, forecast))
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
            },
            state.config.console.max_keys,
        )
        .await?;
    state.keys.upsert(&row);
    // Debug quotes the name and escapes control characters: a name cannot forge log lines.
    tracing::info!(key_id = row.id, name = ?row.name, "key created");
    let budget = super::insights::budget_of(state, Some(row.id)).await?;
    let mut view = KeyView::new(&row, 0, 0, Forecast::new(&budget));
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
    let budget = super::insights::budget_of(state, Some(row.id)).await?;
    Ok(KeyView::new(
        &row,
        usage.tokens.total,
        usage.calls,
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
