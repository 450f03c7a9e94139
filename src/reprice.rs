//! Repricing: the stored cost of recorded calls recomputed from their stored tokens with the
//! current prices (after a config edit or a newer bundled table), a day of hours per transaction
//! so the gateway keeps recording meanwhile (`token-console reprice`, `POST
//! /api/console/reprice`).

use std::sync::Arc;

use crate::pricing::PriceBook;
use crate::store::{Pricer, Repriced, Store, StoreError};

/// Hours repriced per transaction.
const HOURS_PER_STEP: i64 = 24;
/// Milliseconds in an hour.
const MS_PER_HOUR: i64 = 3_600_000;

/// How far a repricing run got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Hours repriced so far.
    pub hours_done: u64,
    /// Hours to reprice in all.
    pub hours_total: u64,
    /// What changed so far.
    pub changed: Repriced,
}

/// The price book as the store's [`Pricer`].
pub fn pricer(prices: Arc<PriceBook>) -> Pricer {
    Arc::new(move |model, at, tokens, estimated| prices.cost_of(model, at, tokens, estimated))
}

/// Reprices every call at or after `from` (all calls when `None`; whole hours), reporting
/// progress after each step.
pub async fn run(
    store: &Store,
    prices: Arc<PriceBook>,
    from: Option<jiff::Timestamp>,
    mut report: impl FnMut(&Progress),
) -> Result<Progress, StoreError> {
    let from_hour = from.map_or(i64::MIN / MS_PER_HOUR, |ts| {
        ts.as_millisecond().div_euclid(MS_PER_HOUR)
    });
    let mut progress = Progress::default();
    let Some((first, last)) = store.hour_span(from_hour).await? else {
        report(&progress);
        return Ok(progress);
    };
    progress.hours_total = u64::try_from(last - first + 1).unwrap_or(0);
    let pricer = pricer(prices);
    let mut start = first;
    while start <= last {
        let end = (start + HOURS_PER_STEP).min(last + 1);
        let step = store.reprice_hours(start, end, pricer.clone()).await?;
        let changed = &mut progress.changed;
        changed.calls_changed += step.calls_changed;
        changed.exact_rows += step.exact_rows;
        changed.approximate_rows += step.approximate_rows;
        changed.cost_delta += step.cost_delta;
        progress.hours_done += u64::try_from(end - start).unwrap_or(0);
        report(&progress);
        start = end;
    }
    Ok(progress)
}

/// `token-console reprice [--from DATE]`: opens the store (applying pending migrations),
/// reprices with the configured prices, prints progress on stderr, and returns the summary.
pub async fn command(
    config: &crate::config::Config,
    from: Option<&str>,
) -> Result<String, crate::error::StartError> {
    use crate::error::StartError;
    let from = match from {
        Some(text) => Some(crate::pricing::parse_instant(text).ok_or_else(|| {
            StartError::Io(format!(
                "--from \"{text}\" is neither a date (2026-12-01) nor an RFC 3339 instant"
            ))
        })?),
        None => None,
    };
    let store = Store::open(&config.database, config.timezone.clone())?;
    let prices = Arc::new(PriceBook::new(&config.pricing.overrides).map_err(StartError::Io)?);
    let done = run(&store, prices, from, |p| {
        eprintln!(
            "token-console reprice: {}/{} hours, {} calls changed",
            p.hours_done, p.hours_total, p.changed.calls_changed
        );
    })
    .await?;
    Ok(summary(&done))
}

/// One line saying what a run changed.
pub fn summary(done: &Progress) -> String {
    let c = &done.changed;
    format!(
        "repriced {} hours: {} stored calls changed; {} hourly aggregates summed from their calls, {} priced from their tokens (their calls were trimmed); total cost changed by {} USD",
        done.hours_done,
        c.calls_changed,
        c.exact_rows,
        c.approximate_rows,
        signed_usd(c.cost_delta)
    )
}

fn signed_usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "+" };
    format!("{sign}{}", crate::pricing::usd_text(nanos.unsigned_abs()))
}
