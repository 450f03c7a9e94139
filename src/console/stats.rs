//! The dashboard's figures, computed from the store's aggregates only (never from raw logs).

use super::keys::PeriodUsage;
use super::wire::PeriodUse;
use super::ConsoleState;
use crate::clock::Period;
use crate::error::ConsoleError;
use crate::store::{Aggregate, DayScope, DayTotal, UsageFilter, GLOBAL_SCOPE};
use crate::usage::latency_quantile;

use super::wire::{
    aggregate_cost, round2, DisplayCurrency, Forecast, Latency, ModelStats, Stats, Trend,
};
use crate::pricing::usd;

/// `/stats`: totals, the budget (global, or the key's with `key_id`) with its forecast, and the
/// per-model table.
pub async fn stats(state: &ConsoleState, filter: UsageFilter) -> Result<Stats, ConsoleError> {
    let (budget, cost_limit, period) = match filter.key_id {
        Some(key_id) => key_limit(state, key_id).await?,
        None => (
            state.config.total_tokens,
            state.config.total_cost_nanos,
            state.config.limit_period,
        ),
    };
    // The calls first, then the period's use: a record committed in between shows in the
    // period's figures, never the other way round.
    let models = state.store.usage_by_model(filter).await?;
    let current = match period {
        Some(period) => {
            let scope = filter.key_id.unwrap_or(GLOBAL_SCOPE);
            let usage = PeriodUsage::read(state, period).await?;
            Some((period, usage.of(scope)))
        }
        None => None,
    };
    let forecast = Forecast::new(&super::insights::budget_of(state, filter.key_id).await?);
    let mut stats = build_stats(models, budget, current, Some(forecast));
    stats.cost_limit = cost_limit.map(usd);
    stats.display_currency =
        state
            .config
            .pricing
            .display
            .as_ref()
            .map(|(code, rate)| DisplayCurrency {
                code: code.clone(),
                rate: *rate,
            });
    Ok(stats)
}

/// `/stats?source=`: the same figures over one source's calls (no budget: budgets are per key
/// or global, over every source).
pub async fn stats_of_source(
    state: &ConsoleState,
    source: String,
    filter: UsageFilter,
) -> Result<Stats, ConsoleError> {
    let models = state.store.usage_by_model_of_source(source, filter).await?;
    Ok(build_stats(models, None, None, None))
}

/// A key's token and money limits and how often they reset.
async fn key_limit(
    state: &ConsoleState,
    key_id: i64,
) -> Result<(Option<u64>, Option<u64>, Option<Period>), ConsoleError> {
    let keys = state.store.list_keys().await?;
    let key = keys.iter().find(|k| k.id == key_id).ok_or_else(|| {
        ConsoleError::NotFound(format!(
            "no key with id {key_id}; list keys with GET /api/console/keys"
        ))
    })?;
    Ok((key.token_limit, key.cost_limit_nanos, key.limit_period))
}

fn latency(agg: &Aggregate) -> Latency {
    let q = |p| latency_quantile(&agg.latency, p).map(round2);
    Latency {
        p50: q(0.50),
        p95: q(0.95),
        p99: q(0.99),
    }
}

fn average(agg: &Aggregate) -> f64 {
    if agg.calls == 0 {
        return 0.0;
    }
    round2(agg.duration_ms as f64 / agg.calls as f64)
}

fn model_stats(name: String, agg: &Aggregate) -> ModelStats {
    ModelStats {
        name,
        call_count: agg.calls,
        token_count: agg.tokens.total,
        avg_time: average(agg),
        success_rate: if agg.calls == 0 {
            0.0
        } else {
            round2(agg.successes as f64 * 100.0 / agg.calls as f64)
        },
        success_count: agg.successes,
        error_count: agg.failures,
        prompt_tokens: agg.tokens.prompt,
        completion_tokens: agg.tokens.completion,
        latency_ms: latency(agg),
        cost: aggregate_cost(agg).map(usd),
        cost_nanos: aggregate_cost(agg),
        unpriced_calls: agg.unpriced_calls,
    }
}

/// Builds the statistics from per-model aggregates and the budget (`None`: unlimited) with its
/// current period and what was used in it (`None`: it never resets, and what is left is measured
/// against the calls `models` covers), and the budget's forecast.
pub fn build_stats(
    models: Vec<(String, Aggregate)>,
    budget: Option<u64>,
    period: Option<(Period, PeriodUse)>,
    forecast: Option<Forecast>,
) -> Stats {
    let mut total = Aggregate::default();
    for (_, agg) in &models {
        total.add(agg);
    }
    let mut rows: Vec<ModelStats> = models
        .into_iter()
        .map(|(name, agg)| model_stats(name, &agg))
        .collect();
    rows.sort_by(|a, b| b.call_count.cmp(&a.call_count).then(a.name.cmp(&b.name)));
    let used = total.tokens.total;
    let charged = period.map_or(used, |(_, p)| p.used);
    Stats {
        total_tokens: budget,
        used_tokens: used,
        remaining_tokens: budget.map(|b| b.saturating_sub(charged)),
        usage_percent: budget.map(|b| {
            if b == 0 {
                100.0
            } else {
                round2(charged as f64 * 100.0 / b as f64)
            }
        }),
        limit_period: period.map(|(p, _)| p.name().to_owned()),
        period_used: charged,
        period_resets_at: period
            .and_then(|(_, p)| p.resets_at)
            .map(super::wire::rfc3339),
        api_call_count: total.calls,
        count_tokens_calls: total.count_tokens,
        success_count: total.successes,
        error_count: total.failures,
        prompt_tokens: total.tokens.prompt,
        completion_tokens: total.tokens.completion,
        cache_read_tokens: total.tokens.cache_read,
        cache_creation_tokens: total.tokens.cache_creation,
        reasoning_tokens: total.tokens.reasoning,
        avg_time: average(&total),
        latency_ms: latency(&total),
        models: rows,
        total_cost: usd(total.cost_nanos),
        total_cost_nanos: total.cost_nanos,
        unpriced_calls: total.unpriced_calls,
        display_currency: None,
        cost_limit: None,
        period_cost: usd(period.map_or(total.cost_nanos, |(_, p)| p.cost_nanos)),
        forecast,
    }
}

/// `POST /reprice`: reprices the calls at or after `from` (all when absent), one run at a time.
pub async fn reprice(
    state: &ConsoleState,
    body: super::wire::RepriceBody,
) -> Result<super::wire::RepriceDone, ConsoleError> {
    let from = match body.from.as_deref() {
        Some(text) => Some(crate::pricing::parse_instant(text).ok_or_else(|| {
            ConsoleError::BadRequest(format!(
                "from \"{text}\" is neither a date (2026-12-01) nor an RFC 3339 instant (2026-12-01T08:00:00+08:00)"
            ))
        })?),
        None => None,
    };
    let Ok(_running) = state.repricing.try_lock() else {
        return Err(ConsoleError::Conflict(
            "a repricing is already running; try again when it has finished".into(),
        ));
    };
    let done = crate::reprice::run(&state.store, state.prices.clone(), from, |p| {
        tracing::info!(
            hours_done = p.hours_done,
            hours_total = p.hours_total,
            calls_changed = p.changed.calls_changed,
            "repricing"
        );
    })
    .await?;
    let c = done.changed;
    Ok(super::wire::RepriceDone {
        hours: done.hours_done,
        calls_changed: c.calls_changed,
        exact_aggregates: c.exact_rows,
        approximate_aggregates: c.approximate_rows,
        cost_delta: c.cost_delta as f64 / 1e9,
        cost_delta_nanos: c.cost_delta,
        summary: crate::reprice::summary(&done),
    })
}

fn day_number(date: jiff::civil::Date) -> i64 {
    i64::from(date.year()) * 10_000 + i64::from(date.month()) * 100 + i64::from(date.day())
}

/// `/usage-trend`: the last `days` local days, oldest first, today last, empty days as 0.
pub async fn trend(
    state: &ConsoleState,
    days: u32,
    key_id: Option<i64>,
    source: Option<String>,
) -> Result<Trend, ConsoleError> {
    let today = state
        .clock
        .now()
        .to_zoned(state.config.timezone.clone())
        .date();
    let dates = trend_dates(today, days);
    let (first, last) = match (dates.first(), dates.last()) {
        (Some(f), Some(l)) => (day_number(*f), day_number(*l)),
        _ => return Err(ConsoleError::BadRequest("days must be at least 1".into())),
    };
    let scope = match (source, key_id) {
        (Some(source), _) => DayScope::Source(source),
        (None, Some(key_id)) => DayScope::Key(key_id),
        (None, None) => DayScope::All,
    };
    let rows = state.store.usage_by_day(scope, first, last).await?;
    Ok(build_trend(&dates, &rows, &state.config.timezone_name))
}

/// The `days` dates ending with `today`, oldest first.
pub fn trend_dates(today: jiff::civil::Date, days: u32) -> Vec<jiff::civil::Date> {
    (0..i64::from(days))
        .rev()
        .filter_map(|back| today.checked_sub(jiff::Span::new().days(back)).ok())
        .collect()
}

/// Lays the stored day totals on the dates, filling days without calls with 0.
pub fn build_trend(dates: &[jiff::civil::Date], rows: &[DayTotal], timezone: &str) -> Trend {
    let mut trend = Trend {
        labels: Vec::with_capacity(dates.len()),
        token_data: Vec::with_capacity(dates.len()),
        call_data: Vec::with_capacity(dates.len()),
        cost_data: Vec::with_capacity(dates.len()),
        dates: Vec::with_capacity(dates.len()),
        timezone: timezone.to_owned(),
    };
    for date in dates {
        let day = day_number(*date);
        let row = rows.iter().find(|r| r.day == day);
        trend.labels.push(date.strftime("%m-%d").to_string());
        trend.dates.push(date.strftime("%Y-%m-%d").to_string());
        trend.token_data.push(row.map_or(0, |r| r.tokens));
        trend.call_data.push(row.map_or(0, |r| r.calls));
        trend.cost_data.push(row.map_or(0.0, |r| usd(r.cost_nanos)));
    }
    trend
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::{latency_bucket, TokenUsage, LATENCY_BUCKETS};

    fn agg(calls: u64, successes: u64, tokens: u64, duration: u64) -> Aggregate {
        let mut latency = [0; LATENCY_BUCKETS];
        latency[latency_bucket(duration / calls.max(1))] = calls;
        Aggregate {
            calls,
            successes,
            failures: calls - successes,
            tokens: TokenUsage {
                prompt: tokens / 2,
                completion: tokens - tokens / 2,
                total: tokens,
                ..TokenUsage::default()
            },
            duration_ms: duration,
            latency,
            ..Aggregate::default()
        }
    }

    fn forecast() -> Forecast {
        Forecast {
            rate_per_day: 0.0,
            runs_out_at: None,
            window_days: 7.0,
            period: "total".into(),
        }
    }

    #[test]
    fn stats_follow_the_guide_with_and_without_budget() {
        let models = vec![
            ("a".to_owned(), agg(3, 2, 300, 1000)),
            ("b".to_owned(), agg(1, 1, 100, 7)),
        ];
        let s = build_stats(models.clone(), Some(1000), None, Some(forecast()));
        assert_eq!(s.total_tokens, Some(1000));
        assert_eq!(s.used_tokens, 400);
        assert_eq!(s.remaining_tokens, Some(600));
        assert_eq!(s.usage_percent, Some(40.0));
        assert_eq!(s.api_call_count, 4);
        assert_eq!(s.models[0].name, "a");
        assert_eq!(s.models[0].avg_time, 333.33);
        assert_eq!(s.models[0].success_rate, 66.67);
        assert_eq!(s.avg_time, 251.75);
        let monthly = build_stats(
            models.clone(),
            Some(1000),
            Some((
                Period::Month,
                PeriodUse {
                    used: 250,
                    cost_nanos: 0,
                    resets_at: Some("2026-04-01T00:00:00Z".parse().unwrap()),
                },
            )),
            Some(forecast()),
        );
        assert_eq!(monthly.used_tokens, 400, "all the calls the filter covers");
        assert_eq!(
            (
                monthly.period_used,
                monthly.remaining_tokens,
                monthly.usage_percent
            ),
            (250, Some(750), Some(25.0)),
            "what is left is of this month"
        );
        assert_eq!(monthly.limit_period.as_deref(), Some("month"));
        assert_eq!(
            monthly.period_resets_at.as_deref(),
            Some("2026-04-01T00:00:00Z")
        );
        let unlimited = build_stats(models, None, None, Some(forecast()));
        assert_eq!(unlimited.total_tokens, None);
        assert_eq!(unlimited.remaining_tokens, None);
        assert_eq!(unlimited.usage_percent, None);
        let empty = build_stats(Vec::new(), None, None, Some(forecast()));
        assert_eq!(empty.api_call_count, 0);
        assert_eq!(empty.latency_ms.p50, None);
    }

    #[test]
    fn trend_fills_missing_days_and_ends_today() {
        let today = jiff::civil::date(2026, 3, 1);
        let dates = trend_dates(today, 3);
        let rows = [DayTotal {
            day: 20260228,
            calls: 2,
            tokens: 50,
            cost_nanos: 0,
        }];
        let t = build_trend(&dates, &rows, "UTC");
        assert_eq!(t.labels, ["02-27", "02-28", "03-01"]);
        assert_eq!(t.token_data, [0, 50, 0]);
        assert_eq!(t.call_data, [0, 2, 0]);
    }
}
