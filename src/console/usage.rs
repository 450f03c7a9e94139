//! `/usage`: usage broken down by any one or two dimensions, read from the store's rollups.

use std::collections::HashMap;

use super::wire::{rfc3339, round2, Usage, UsageRow};
use super::ConsoleState;
use crate::error::ConsoleError;
use crate::store::{Dim, DimValue, UsageGroup, UsageOrder, UsageQuery};
use crate::usage::latency_quantile;

/// The breakdown `query` asks for (over the last `days` local days when given), with key names
/// when grouped by key.
pub async fn usage(
    state: &ConsoleState,
    mut query: UsageQuery,
    days: Option<u32>,
) -> Result<Usage, ConsoleError> {
    if let Some(days) = days {
        query.from = Some(first_day_start(&state.config.timezone, days)?);
    }
    let group_by = query.group_by.clone();
    let order = query.order;
    let groups = state.store.usage(query).await?;
    let names: HashMap<i64, String> = if group_by.contains(&Dim::Key) {
        let keys = state.store.list_keys().await?;
        keys.into_iter().map(|k| (k.id, k.name)).collect()
    } else {
        HashMap::new()
    };
    Ok(Usage {
        group_by: group_by.iter().map(|d| d.name().to_owned()).collect(),
        order_by: match order {
            UsageOrder::Tokens => "tokens",
            UsageOrder::Calls => "calls",
            UsageOrder::Errors => "errors",
            UsageOrder::Cost => "cost",
        }
        .to_owned(),
        timezone: state
            .config
            .timezone
            .iana_name()
            .unwrap_or("fixed")
            .to_owned(),
        rows: groups.iter().map(|g| row(&group_by, g, &names)).collect(),
    })
}

/// The start of the first of the last `days` local days in `tz`, today included.
fn first_day_start(tz: &jiff::tz::TimeZone, days: u32) -> Result<jiff::Timestamp, ConsoleError> {
    let today = jiff::Timestamp::now().to_zoned(tz.clone());
    let back = jiff::Span::new().days(i64::from(days.max(1)) - 1);
    today
        .start_of_day()
        .and_then(|midnight| midnight.checked_sub(back))
        .and_then(|first| first.start_of_day())
        .map(|first| first.timestamp())
        .map_err(|e| ConsoleError::Internal(format!("cannot find the first day: {e}")))
}

/// `YYYYMMDD` as `YYYY-MM-DD`.
fn day(value: i64) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        value / 10_000,
        value / 100 % 100,
        value % 100
    )
}

/// The wire row of one group.
fn row(group_by: &[Dim], group: &UsageGroup, names: &HashMap<i64, String>) -> UsageRow {
    let agg = &group.agg;
    let mut row = UsageRow {
        key_id: None,
        key_name: None,
        model: None,
        user: None,
        client: None,
        provider: None,
        source: None,
        endpoint: None,
        day: None,
        hour: None,
        calls: agg.calls,
        errors: agg.failures,
        count_tokens_calls: agg.count_tokens,
        prompt_tokens: agg.tokens.prompt,
        completion_tokens: agg.tokens.completion,
        cache_read_tokens: agg.tokens.cache_read,
        cache_creation_tokens: agg.tokens.cache_creation,
        reasoning_tokens: agg.tokens.reasoning,
        total_tokens: agg.tokens.total,
        avg_latency_ms: if agg.calls == 0 {
            0.0
        } else {
            round2(agg.duration_ms as f64 / agg.calls as f64)
        },
        p95_latency_ms: latency_quantile(&agg.latency, 0.95).map(round2),
        cost: crate::pricing::usd(agg.cost_nanos),
        cost_nanos: agg.cost_nanos,
        unpriced_calls: agg.unpriced_calls,
    };
    for (dim, value) in group_by.iter().zip(&group.values) {
        match (dim, value) {
            (Dim::Key, DimValue::Int(id)) => {
                row.key_id = Some(*id);
                row.key_name = names.get(id).cloned();
            }
            (Dim::Day, DimValue::Int(d)) => row.day = Some(day(*d)),
            (Dim::Hour, DimValue::Int(h)) => {
                row.hour = Some(rfc3339(crate::store::hour_start(*h)));
            }
            (dim, DimValue::Text(text)) => {
                let slot = match dim {
                    Dim::Model => &mut row.model,
                    Dim::User => &mut row.user,
                    Dim::Client => &mut row.client,
                    Dim::Provider => &mut row.provider,
                    Dim::Source => &mut row.source,
                    _ => &mut row.endpoint,
                };
                *slot = Some(text.clone());
            }
            _ => {}
        }
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_as_dates() {
        assert_eq!(day(20260301), "2026-03-01");
        assert_eq!(day(19991231), "1999-12-31");
    }
}
