//! Forecasts and anomalies through the console API, in-process, with calls entering through the
//! recorder at chosen instants (days and hours back from now), each figure checked against an
//! independent computation.

use serde_json::{json, Value};
use token_console::usage::CallRecord;

use crate::console_api::{call, Console};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: f64 = 86_400_000.0;

fn hour_of(ts: jiff::Timestamp) -> i64 {
    ts.as_millisecond().div_euclid(HOUR_MS)
}

fn ago(now: jiff::Timestamp, hours: i64, minutes: i64) -> jiff::Timestamp {
    now - jiff::SignedDuration::from_mins(hours * 60 + minutes)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// What a budget's forecast must be at `now`, computed from its calls as the README describes
/// it: tokens since the start of the hour 168 hours before the current one, over the span since
/// then — or since the start of the first hour with calls when nothing was spent before the
/// window — but at least a day; the run-out instant `left / rate` days after now.
fn expected(
    calls: &[&CallRecord],
    limit: Option<u64>,
    now: jiff::Timestamp,
) -> (f64, Option<i64>, f64) {
    let start_hour = hour_of(now) - 168;
    let in_window: Vec<_> = calls
        .iter()
        .filter(|c| hour_of(c.ts) >= start_hour)
        .collect();
    let window_tokens: u64 = in_window.iter().map(|c| c.tokens.total).sum();
    let used: u64 = calls.iter().map(|c| c.tokens.total).sum();
    let mut start = start_hour * HOUR_MS;
    if used == window_tokens {
        if let Some(first) = in_window.iter().map(|c| hour_of(c.ts)).min() {
            start = start.max(first * HOUR_MS);
        }
    }
    let span = (now.as_millisecond() - start).max(24 * HOUR_MS) as f64 / DAY_MS;
    let rate = window_tokens as f64 / span;
    let runs_out = limit.and_then(|l| {
        let left = l.saturating_sub(used);
        if left == 0 {
            Some(now.as_millisecond())
        } else if rate == 0.0 {
            None
        } else {
            Some(now.as_millisecond() + (left as f64 / rate * DAY_MS).ceil() as i64)
        }
    });
    (rate, runs_out, span)
}

/// Asks `uri` with the instants just before and after, within one hour (asked again when the
/// hour turned in between, which moves the window).
async fn bracketed(console: &Console, uri: &str) -> (jiff::Timestamp, Value, jiff::Timestamp) {
    loop {
        let before = jiff::Timestamp::now();
        let data = console.data(uri).await;
        let after = jiff::Timestamp::now();
        if hour_of(before) == hour_of(after) {
            return (before, data, after);
        }
    }
}

/// The forecast answered lies between the forecasts computed for the instants before and after
/// the request (a later instant: a longer span, a lower rate, a later run-out).
fn check(
    forecast: &Value,
    calls: &[&CallRecord],
    limit: Option<u64>,
    before: jiff::Timestamp,
    after: jiff::Timestamp,
    what: &str,
) {
    let (rate_hi, out_lo, span_lo) = expected(calls, limit, before);
    let (rate_lo, out_hi, span_hi) = expected(calls, limit, after);
    let rate = forecast["rate_per_day"].as_f64().unwrap();
    assert!(
        rate >= round2(rate_lo) - 0.005 && rate <= round2(rate_hi) + 0.005,
        "{what}: rate {rate} not in [{rate_lo}, {rate_hi}]"
    );
    let days = forecast["window_days"].as_f64().unwrap();
    assert!(
        days >= round2(span_lo) - 0.005 && days <= round2(span_hi) + 0.005,
        "{what}: window {days} not in [{span_lo}, {span_hi}]"
    );
    assert_eq!(forecast["period"], "total", "{what}");
    match (out_lo, out_hi) {
        (Some(lo), Some(hi)) => {
            let got: jiff::Timestamp = forecast["runs_out_at"].as_str().unwrap().parse().unwrap();
            let got = got.as_millisecond();
            // RFC 3339 to the second: the answer is cut to its second.
            assert!(
                got >= lo - 1000 && got <= hi,
                "{what}: runs out {got} not in [{lo}, {hi}]"
            );
        }
        _ => assert_eq!(forecast["runs_out_at"], Value::Null, "{what}"),
    }
}

#[tokio::test]
async fn forecasts_follow_the_calls_of_the_last_days() {
    let console = Console::start("quota: {total_tokens: 1000000}\n").await;
    let now = jiff::Timestamp::now();
    let (k1, _) = console.create_key("steady").await;
    let (k2, _) = console.create_key("young").await;
    let (k3, _) = console.create_key("unlimited").await;
    let (k4, _) = console.create_key("spent").await;
    for (id, limit) in [(k1, 50_000), (k2, 20_000), (k4, 1_000)] {
        let (status, body) = console
            .json(
                "PATCH",
                &format!("/api/console/keys/{id}"),
                Some(&json!({"token_limit": limit}).to_string()),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut calls = Vec::new();
    // Five days of use and one call 20 days ago (outside the window: the window is full).
    for d in 1..=5 {
        calls.push(call(
            ago(now, 24 * d, 30),
            "gpt-4o",
            Some((k1, "steady")),
            200,
            600 + 100 * d as u64,
            400,
            50,
        ));
    }
    calls.push(call(
        ago(now, 24 * 20, 0),
        "gpt-4o",
        Some((k1, "steady")),
        200,
        500,
        200,
        50,
    ));
    // First used two days ago: measured from that hour.
    calls.push(call(
        ago(now, 48, 10),
        "gpt-4o",
        Some((k2, "young")),
        200,
        900,
        100,
        50,
    ));
    calls.push(call(
        ago(now, 1, 0),
        "claude-sonnet-4-6",
        Some((k2, "young")),
        500,
        300,
        0,
        50,
    ));
    calls.push(call(
        ago(now, 3, 0),
        "gpt-4o",
        Some((k3, "unlimited")),
        200,
        4_000,
        1_000,
        50,
    ));
    calls.push(call(
        ago(now, 30, 0),
        "gpt-4o",
        Some((k4, "spent")),
        200,
        1_200,
        300,
        50,
    ));
    console.record_all(&calls).await;

    let of =
        |id: i64| -> Vec<&CallRecord> { calls.iter().filter(|c| c.key_id == Some(id)).collect() };
    let all: Vec<&CallRecord> = calls.iter().collect();
    let (before, keys, after) = bracketed(&console, "/api/console/keys").await;
    let keys = keys.as_array().unwrap();
    for (id, limit) in [
        (k1, Some(50_000)),
        (k2, Some(20_000)),
        (k3, None),
        (k4, Some(1_000)),
    ] {
        let key = keys.iter().find(|k| k["id"] == id).unwrap();
        check(
            &key["forecast"],
            &of(id),
            limit,
            before,
            after,
            key["name"].as_str().unwrap(),
        );
    }
    // The young key's window is its own two days; the steady key's the full week.
    let young = keys.iter().find(|k| k["id"] == k2).unwrap();
    assert!(
        young["forecast"]["window_days"].as_f64().unwrap() < 2.1,
        "{young}"
    );
    let steady = keys.iter().find(|k| k["id"] == k1).unwrap();
    assert!(
        steady["forecast"]["window_days"].as_f64().unwrap() >= 7.0,
        "{steady}"
    );
    assert!(steady["forecast"]["rate_per_day"].as_f64().unwrap() > 0.0);
    let (before, stats, after) = bracketed(&console, "/api/console/stats").await;
    check(
        &stats["forecast"],
        &all,
        Some(1_000_000),
        before,
        after,
        "global",
    );
    let (before, one, after) =
        bracketed(&console, &format!("/api/console/stats?key_id={k1}")).await;
    check(
        &one["forecast"],
        &of(k1),
        Some(50_000),
        before,
        after,
        "stats of one key",
    );
    // Used up: runs out now.
    let spent = keys.iter().find(|k| k["id"] == k4).unwrap();
    assert!(spent["forecast"]["runs_out_at"].is_string(), "{spent}");
}

#[tokio::test]
async fn a_key_whose_error_rate_or_volume_jumps_is_listed_and_a_steady_key_is_not() {
    let console = Console::start("").await;
    let now = jiff::Timestamp::now();
    let (steady, _) = console.create_key("steady").await;
    let (errors, _) = console.create_key("errors").await;
    let (volume, _) = console.create_key("volume").await;
    let mut calls = Vec::new();
    for h in 0..=30i64 {
        let ts = ago(now, h, 0);
        for i in 0..20 {
            calls.push(call(
                ts,
                "gpt-4o",
                Some((steady, "steady")),
                if i == 0 { 500 } else { 200 },
                300,
                200,
                40,
            ));
            let failed = h == 0 && i < 15;
            calls.push(call(
                ts,
                "gpt-4o",
                Some((errors, "errors")),
                if failed { 502 } else { 200 },
                300,
                200,
                40,
            ));
            let tokens = if h == 1 { 5_000 } else { 500 };
            calls.push(call(
                ts,
                "claude-sonnet-4-6",
                Some((volume, "volume")),
                200,
                tokens - 100,
                100,
                40,
            ));
        }
    }
    console.record_all(&calls).await;
    let found = console.data("/api/console/anomalies").await;
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 2, "{found:#?}");
    let e = found.iter().find(|a| a["kind"] == "error_rate").unwrap();
    assert_eq!(e["key_id"], errors);
    assert_eq!(e["key_name"], "errors");
    assert_eq!(e["model"], "gpt-4o");
    assert_eq!(
        (e["calls"].as_u64(), e["failures"].as_u64()),
        (Some(20), Some(15))
    );
    assert_eq!(e["error_rate"], 75.0);
    assert_eq!(e["baseline_error_rate"], 0.0);
    assert_eq!(e["baseline_hours"], 30);
    assert_eq!(e["threshold"], 50.0);
    let hour = jiff::Timestamp::from_millisecond(hour_of(now) * HOUR_MS).unwrap();
    assert_eq!(e["hour"], hour.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
    let v = found.iter().find(|a| a["kind"] == "token_volume").unwrap();
    assert_eq!(v["key_id"], volume);
    assert_eq!(v["model"], "claude-sonnet-4-6");
    assert_eq!(v["tokens"], 100_000);
    assert_eq!(v["baseline_median_tokens"], 10_000.0);
    assert_eq!(v["baseline_hours"], 29);
    assert_eq!(v["threshold"], 30_000.0);
    // Newest first: the error hour is the current one.
    assert_eq!(found[0]["kind"], "error_rate");
    let none = console
        .data(&format!("/api/console/anomalies?key_id={steady}"))
        .await;
    assert_eq!(none, json!([]));
    // Only the hours since the calls' current one (1, unless the hour turned meanwhile): the
    // volume jump of the hour before is out of them.
    let hours = hour_of(jiff::Timestamp::now()) - hour_of(now) + 1;
    let last = console
        .data(&format!("/api/console/anomalies?hours={hours}"))
        .await;
    assert_eq!(last.as_array().unwrap().len(), 1, "{last}");
    for bad in ["hours=0", "hours=abc", "key_id=x"] {
        let (status, body) = console
            .json("GET", &format!("/api/console/anomalies?{bad}"), None)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["msg"]
                .as_str()
                .unwrap()
                .contains(bad.split('=').next().unwrap()),
            "{body}"
        );
    }
}
