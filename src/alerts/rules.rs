//! The rules: what the budgets, the anomalies and the recorder say, turned into alerts to raise.
//! Pure functions; each alert carries its `dedup` (rule, subject, period), which the store keeps
//! unique, so an alert is raised once however often — and by however many instances — the rules
//! are evaluated.

use super::payload::{rfc3339, round2, AlertPayload, AnomalyFigures};
use crate::config::AlertRules;
use crate::insights::budgets::BudgetUse;

/// An alert the rules call for.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    /// Rule, subject and period.
    pub dedup: String,
    /// What it is about (`global`, `key:7`, `key:7/gpt-4o`, `instance:…`).
    pub subject: String,
    /// The payload.
    pub payload: AlertPayload,
    /// `None`: deliver it; `Some(why)`: store it without delivering (a higher threshold of the
    /// same budget was crossed at the same time and says more).
    pub skip: Option<String>,
}

/// What every payload of one evaluation shares.
pub struct Context<'a> {
    /// This instance.
    pub instance: &'a str,
    /// The evaluation's instant.
    pub now: jiff::Timestamp,
}

impl Context<'_> {
    fn payload(&self, event: &str, group: &str, rule: String, message: String) -> AlertPayload {
        AlertPayload {
            event: event.to_owned(),
            event_group: group.to_owned(),
            event_message: message,
            spend: None,
            max_budget: None,
            budget_percentage_used: None,
            key_id: None,
            key_name: None,
            period: String::new(),
            runs_out_at: None,
            rate_per_day: None,
            unit: "tokens".to_owned(),
            rule,
            threshold: None,
            anomaly: None,
            instance: self.instance.to_owned(),
            created_at: rfc3339(self.now),
        }
    }

    /// A payload about a budget.
    fn budget_payload(
        &self,
        b: &BudgetUse,
        event: &str,
        rule: String,
        message: String,
    ) -> AlertPayload {
        let group = if b.key_id.is_some() { "key" } else { "proxy" };
        AlertPayload {
            spend: Some(b.used),
            max_budget: b.limit,
            budget_percentage_used: b.percent_used().map(round2),
            key_id: b.key_id,
            key_name: b.key_name.clone(),
            period: b.period.clone(),
            runs_out_at: b.forecast.runs_out_at.map(rfc3339),
            rate_per_day: Some(round2(b.forecast.rate_per_day)),
            ..self.payload(event, group, rule, message)
        }
    }
}

/// `the global budget` or `key "name"`.
fn whose(b: &BudgetUse) -> String {
    match &b.key_name {
        Some(name) => format!("key {name:?}"),
        None => "the global budget".to_owned(),
    }
}

/// The dedup of a budget's alert: a new limit (a raised budget) arms its rules again.
fn budget_dedup(rule: &str, b: &BudgetUse, limit: u64) -> String {
    format!("{rule}|{}|{}|limit={limit}", b.subject(), b.period)
}

/// The thresholds of `rules.budget_percent` that `b` has crossed, highest first: the highest is
/// delivered, the others are stored as skipped (an alert already raised for one of them is not
/// raised again, by the store's dedup).
pub fn budget_alerts(ctx: &Context<'_>, rules: &AlertRules, b: &BudgetUse) -> Vec<Raised> {
    let (Some(limit), Some(percent)) = (b.limit, b.percent_used()) else {
        return Vec::new();
    };
    if !b.active {
        return Vec::new();
    }
    let mut crossed: Vec<u32> = rules
        .budget_percent
        .iter()
        .copied()
        .filter(|p| percent >= f64::from(*p))
        .collect();
    crossed.sort_unstable_by(|a, b| b.cmp(a));
    crossed.dedup();
    let highest = crossed.first().copied();
    crossed
        .into_iter()
        .map(|p| {
            let rule = format!("budget_{p}");
            let event = if p >= 100 {
                "budget_crossed"
            } else {
                "threshold_crossed"
            };
            let message = format!(
                "token-console: {} has used {:.2}% of its {} tokens (period {}), crossing {p}%",
                whose(b),
                percent,
                limit,
                b.period
            );
            let mut payload = ctx.budget_payload(b, event, rule.clone(), message);
            payload.threshold = Some(f64::from(p));
            Raised {
                dedup: budget_dedup(&rule, b, limit),
                subject: b.subject(),
                payload,
                skip: highest
                    .filter(|h| *h != p)
                    .map(|h| format!("superseded by the {h}% alert raised with it")),
            }
        })
        .collect()
}

/// An alert when `b` runs out within `rules.forecast_days` at its recent rate (and is not used
/// up yet: that is the 100 % threshold's alert).
pub fn forecast_alert(ctx: &Context<'_>, rules: &AlertRules, b: &BudgetUse) -> Option<Raised> {
    let days = rules.forecast_days;
    let (limit, runs_out_at) = (b.limit?, b.forecast.runs_out_at?);
    if days == 0 || !b.active || b.used >= limit {
        return None;
    }
    let horizon = ctx
        .now
        .checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days)))
        .ok()?;
    if runs_out_at > horizon {
        return None;
    }
    let rule = format!("forecast_{days}d");
    let message = format!(
        "token-console: at its rate of {:.0} tokens a day, {} ({} of {} tokens used, period {}) runs out at {}",
        b.forecast.rate_per_day,
        whose(b),
        b.used,
        limit,
        b.period,
        rfc3339(runs_out_at)
    );
    let mut payload = ctx.budget_payload(b, "projected_limit_exceeded", rule.clone(), message);
    payload.threshold = Some(f64::from(days));
    Some(Raised {
        dedup: budget_dedup(&rule, b, limit),
        subject: b.subject(),
        payload,
        skip: None,
    })
}

/// An alert for an anomaly, once per key, model, kind and local day (`day`, YYYY-MM-DD).
pub fn anomaly_alert(ctx: &Context<'_>, figures: AnomalyFigures, day: String) -> Raised {
    let rule = format!("anomaly_{}", figures.kind);
    let subject = format!("key:{}/{}", figures.key_id.unwrap_or(0), figures.model);
    let who = match &figures.key_name {
        Some(name) => format!("key {name:?}"),
        None => "calls without a key".to_owned(),
    };
    let what = if figures.kind == "error_rate" {
        format!(
            "{} of {} calls failed ({:.2}%, baseline {})",
            figures.failures,
            figures.calls,
            figures.error_rate,
            figures
                .baseline_error_rate
                .map_or("none".to_owned(), |r| format!("{r:.2}%"))
        )
    } else {
        format!(
            "{} tokens, over {:.0} (3× the median hour of the last week, {})",
            figures.tokens,
            figures.threshold,
            figures
                .baseline_median_tokens
                .map_or("none".to_owned(), |m| format!("{m:.0}"))
        )
    };
    let message = format!(
        "token-console: anomaly for {who} on model {:?} in the hour from {}: {what}",
        figures.model, figures.hour
    );
    let mut payload = ctx.payload("anomaly_detected", "key", rule.clone(), message);
    payload.key_id = figures.key_id;
    payload.key_name = figures.key_name.clone();
    payload.period = day.clone();
    payload.threshold = Some(figures.threshold);
    payload.anomaly = Some(figures);
    Raised {
        dedup: format!("{rule}|{subject}|{day}"),
        subject,
        payload,
        skip: None,
    }
}

/// An alert that this instance's recorder has been unable to write since `since`.
pub fn degraded_alert(ctx: &Context<'_>, since: jiff::Timestamp, error: Option<String>) -> Raised {
    let rule = "recorder_degraded".to_owned();
    let subject = format!("instance:{}", ctx.instance);
    let message = format!(
        "token-console: instance {} cannot write call records to its database since {} ({}); calls wait for room in the record queue",
        ctx.instance,
        rfc3339(since),
        error.unwrap_or_else(|| "no detail".to_owned())
    );
    let mut payload = ctx.payload("recorder_degraded", "proxy", rule.clone(), message);
    payload.period = rfc3339(since);
    Raised {
        dedup: format!("{rule}|{subject}|{}", since.as_millisecond()),
        subject,
        payload,
        skip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::insights::forecast::Forecast;

    fn budget(
        used: u64,
        limit: u64,
        runs_out_in_h: Option<i64>,
        now: jiff::Timestamp,
    ) -> BudgetUse {
        BudgetUse {
            key_id: Some(7),
            key_name: Some("prod".into()),
            active: true,
            limit: Some(limit),
            used,
            period: "total".into(),
            forecast: Forecast {
                rate_per_day: 100.0,
                runs_out_at: runs_out_in_h.map(|h| now + jiff::SignedDuration::from_hours(h)),
                window_days: 7.0,
            },
        }
    }

    #[test]
    fn the_highest_crossed_threshold_is_delivered_and_the_others_skipped() {
        let now: jiff::Timestamp = "2026-03-10T12:00:00Z".parse().unwrap();
        let ctx = Context {
            instance: "i1",
            now,
        };
        let rules = AlertRules::default();
        assert!(budget_alerts(&ctx, &rules, &budget(499, 1000, None, now)).is_empty());
        let raised = budget_alerts(&ctx, &rules, &budget(850, 1000, None, now));
        let seen: Vec<(&str, bool)> = raised
            .iter()
            .map(|r| (r.payload.rule.as_str(), r.skip.is_none()))
            .collect();
        assert_eq!(seen, [("budget_80", true), ("budget_50", false)]);
        let p = &raised[0].payload;
        assert_eq!(
            (p.event.as_str(), p.event_group.as_str()),
            ("threshold_crossed", "key")
        );
        assert_eq!((p.spend, p.max_budget), (Some(850), Some(1000)));
        assert_eq!(p.budget_percentage_used, Some(85.0));
        assert_eq!(raised[0].dedup, "budget_80|key:7|total|limit=1000");
        let full = budget_alerts(&ctx, &rules, &budget(1000, 1000, Some(0), now));
        assert_eq!(full[0].payload.event, "budget_crossed");
        // Forecast: within 3 days yes, beyond no, used up no.
        assert!(forecast_alert(&ctx, &rules, &budget(500, 1000, Some(71), now)).is_some());
        assert!(forecast_alert(&ctx, &rules, &budget(500, 1000, Some(73), now)).is_none());
        assert!(forecast_alert(&ctx, &rules, &budget(1000, 1000, Some(0), now)).is_none());
    }
}
