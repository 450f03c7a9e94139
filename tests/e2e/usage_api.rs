//! `GET /api/console/usage` in-process, fed through the recorder: every `group_by` (one
//! dimension and pairs) against an independent computation over the recorded calls, filters and
//! windows, the end-user cap folding the tail into `(other)` with totals still equal to `/stats`,
//! and bad input answered 400 with what is allowed.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::Value;
use token_console::usage::{latency_bucket, latency_quantile, CallRecord, TokenUsage};

use crate::console_api::{Console, ZONE};

/// A recorded call's dimensions.
struct Dims {
    key: Option<(i64, &'static str)>,
    model: &'static str,
    user: Option<&'static str>,
    client: &'static str,
    provider: &'static str,
    source: &'static str,
    endpoint: &'static str,
}

fn record(ts: jiff::Timestamp, d: &Dims, status: u16, i: u64) -> CallRecord {
    let prompt = 10 + i * 7 % 50;
    let completion = 3 + i * 11 % 40;
    CallRecord {
        ts,
        method: "POST".into(),
        endpoint: d.endpoint.into(),
        status,
        model: d.model.into(),
        key_id: d.key.map(|k| k.0),
        key_name: d.key.map(|k| k.1.to_owned()),
        tokens: TokenUsage {
            prompt,
            completion,
            cache_read: prompt / 3,
            cache_creation: prompt / 5,
            reasoning: completion / 4,
            total: prompt + completion,
        },
        duration_ms: 5 + i * 37 % 3000,
        client: d.client.into(),
        user: d.user.map(str::to_owned),
        provider: d.provider.into(),
        source: d.source.into(),
        // Every ninth call unpriced; count_tokens calls cost nothing.
        cost_nanos: if d.endpoint == "/v1/messages/count_tokens" {
            Some(0)
        } else {
            (i % 9 != 4).then_some(prompt * 13 + completion * 29)
        },
        ..CallRecord::default()
    }
}

/// Calls over every dimension's values, at instants on both sides of local midnights and hours.
fn dataset(k1: i64, k2: i64) -> Vec<CallRecord> {
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let now = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let midnight = now.to_zoned(tz).start_of_day().unwrap().timestamp();
    let instants = [
        midnight - jiff::SignedDuration::from_secs(1),
        midnight + jiff::SignedDuration::from_secs(1),
        midnight - jiff::SignedDuration::from_hours(30),
        midnight - jiff::SignedDuration::from_mins(24 * 60 * 3 + 7),
        midnight - jiff::SignedDuration::from_hours(24 * 12),
    ];
    let keys = [Some((k1, "生产")), Some((k2, "staging")), None];
    let users = [Some("alice"), Some("bob"), None, Some("<b>carol</b>")];
    let sources = [
        (
            "gateway",
            "claude-cli",
            "anthropic",
            "claude-sonnet-4-6",
            "/v1/messages",
        ),
        ("gateway", "codex", "openai", "gpt-5", "/v1/responses"),
        ("gateway", "", "openai", "gpt-4o", "/v1/chat/completions"),
        (
            "cliproxyapi",
            "other",
            "gemini",
            "gemini-2.5-pro",
            "/v1/chat/completions",
        ),
        (
            "gateway",
            "claude-cli",
            "anthropic",
            "claude-sonnet-4-6",
            "/v1/messages/count_tokens",
        ),
    ];
    let statuses = [200, 200, 429, 200, 500, 201, 499];
    (0..140u64)
        .map(|i| {
            let n = i as usize;
            let (source, client, provider, model, endpoint) = sources[n / 3 % sources.len()];
            let dims = Dims {
                key: keys[n / 2 % keys.len()],
                model,
                user: users[n / 5 % users.len()],
                client,
                provider,
                source,
                endpoint,
            };
            record(
                instants[n % instants.len()],
                &dims,
                statuses[n % statuses.len()],
                i,
            )
        })
        .collect()
}

/// What the API should say of a group of calls, computed from the calls themselves.
#[derive(Default)]
struct Expected {
    calls: u64,
    errors: u64,
    count_tokens: u64,
    tokens: [u64; 6],
    duration: u64,
    latency: [u64; 17],
    cost_nanos: u64,
    unpriced: u64,
}

impl Expected {
    fn add(&mut self, c: &CallRecord) {
        if c.endpoint == "/v1/messages/count_tokens" {
            self.count_tokens += 1;
            return;
        }
        self.calls += 1;
        self.errors += u64::from(!(200..300).contains(&c.status));
        for (sum, v) in self.tokens.iter_mut().zip(c.tokens.counts()) {
            *sum += v;
        }
        self.duration += c.duration_ms;
        self.latency[latency_bucket(c.duration_ms)] += 1;
        self.cost_nanos += c.cost_nanos.unwrap_or(0);
        self.unpriced += u64::from(c.cost_nanos.is_none());
    }

    fn check(&self, row: &Value, what: &str) {
        let names = [
            "prompt_tokens",
            "completion_tokens",
            "cache_read_tokens",
            "cache_creation_tokens",
            "reasoning_tokens",
            "total_tokens",
        ];
        assert_eq!(row["calls"], self.calls, "{what}: {row}");
        assert_eq!(row["cost_nanos"], self.cost_nanos, "{what}: {row}");
        assert_eq!(row["unpriced_calls"], self.unpriced, "{what}: {row}");
        assert_eq!(row["errors"], self.errors, "{what}: {row}");
        assert_eq!(
            row["count_tokens_calls"], self.count_tokens,
            "{what}: {row}"
        );
        for (name, want) in names.iter().zip(self.tokens) {
            assert_eq!(row[*name], want, "{what} {name}: {row}");
        }
        let avg = if self.calls == 0 {
            0.0
        } else {
            round2(self.duration as f64 / self.calls as f64)
        };
        assert_eq!(row["avg_latency_ms"], avg, "{what}: {row}");
        let p95 = latency_quantile(&self.latency, 0.95).map(round2);
        assert_eq!(
            row["p95_latency_ms"],
            serde_json::json!(p95),
            "{what}: {row}"
        );
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A call's value of a dimension, as the API writes it.
fn value(c: &CallRecord, dim: &str) -> String {
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    match dim {
        "key" => c.key_id.unwrap_or(0).to_string(),
        "model" => c.model.clone(),
        "user" => c.user.clone().unwrap_or_default(),
        "client" => c.client.clone(),
        "provider" => c.provider.clone(),
        "source" => c.source.clone(),
        "endpoint" => c.endpoint.clone(),
        "day" => c.ts.to_zoned(tz).date().to_string(),
        "hour" => {
            let hour = c.ts.as_millisecond().div_euclid(3_600_000) * 3_600_000;
            jiff::Timestamp::from_millisecond(hour)
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        }
        _ => unreachable!("{dim}"),
    }
}

/// A row's value of a dimension.
fn row_value(row: &Value, dim: &str) -> String {
    let field = if dim == "key" { "key_id" } else { dim };
    match &row[field] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("{dim} is {other} in {row}"),
    }
}

/// Checks `/usage?{query}` grouped by `dims` against the calls `selected` keeps.
async fn check_breakdown(
    console: &Console,
    calls: &[CallRecord],
    dims: &[&str],
    query: &str,
    selected: impl Fn(&CallRecord) -> bool,
) {
    let uri = format!(
        "/api/console/usage?group_by={}&limit=1000{query}",
        dims.join(",")
    );
    let data = console.data(&uri).await;
    let mut expected: BTreeMap<Vec<String>, Expected> = BTreeMap::new();
    for c in calls.iter().filter(|c| selected(c)) {
        let key = dims.iter().map(|d| value(c, d)).collect();
        expected.entry(key).or_default().add(c);
    }
    let rows = data["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{uri}: {data}");
    let mut previous = u64::MAX;
    for row in rows {
        let key: Vec<String> = dims.iter().map(|d| row_value(row, d)).collect();
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{uri}: unexpected row {row}"));
        want.check(row, &format!("{uri} {key:?}"));
        let tokens = row["total_tokens"].as_u64().unwrap();
        assert!(tokens <= previous, "{uri}: not largest first");
        previous = tokens;
        for other in [
            "model", "user", "client", "provider", "source", "endpoint", "day", "hour",
        ] {
            if !dims.contains(&other) {
                assert_eq!(row[other], Value::Null, "{uri}: {row}");
            }
        }
    }
}

#[tokio::test]
async fn every_group_by_matches_an_independent_computation() {
    let console = Console::start("").await;
    let (k1, _) = console.create_key("生产").await;
    let (k2, _) = console.create_key("staging").await;
    let calls = dataset(k1, k2);
    console.record_all(&calls).await;
    let all = |_: &CallRecord| true;
    let groupings: [&[&str]; 19] = [
        &["key"],
        &["model"],
        &["user"],
        &["client"],
        &["provider"],
        &["source"],
        &["endpoint"],
        &["day"],
        &["hour"],
        &["user", "day"],
        &["day", "user"],
        &["source", "day"],
        &["key", "user"],
        &["key", "model"],
        &["client", "day"],
        &["provider", "source"],
        &["endpoint", "hour"],
        &["source", "client"],
        &["model", "provider"],
    ];
    for dims in groupings {
        check_breakdown(&console, &calls, dims, "", all).await;
    }
    // Key names come with key ids.
    let by_key = console.data("/api/console/usage?group_by=key").await;
    for row in by_key["rows"].as_array().unwrap() {
        let want = match row["key_id"].as_i64().unwrap() {
            id if id == k1 => Value::from("生产"),
            id if id == k2 => Value::from("staging"),
            _ => Value::Null,
        };
        assert_eq!(row["key_name"], want, "{row}");
    }
    // Filters, alone and together.
    for dims in [&["day"][..], &["user", "day"]] {
        check_breakdown(&console, &calls, dims, "&user=alice", |c| {
            c.user.as_deref() == Some("alice")
        })
        .await;
    }
    let query = format!("&key_id={k2}&client=claude-cli");
    check_breakdown(&console, &calls, &["day"], &query, |c| {
        c.key_id == Some(k2) && c.client == "claude-cli"
    })
    .await;
    check_breakdown(&console, &calls, &["user"], "&key_id=0", |c| {
        c.key_id.is_none()
    })
    .await;
    check_breakdown(
        &console,
        &calls,
        &["key"],
        "&user=%3Cb%3Ecarol%3C%2Fb%3E",
        |c| c.user.as_deref() == Some("<b>carol</b>"),
    )
    .await;
    check_breakdown(&console, &calls, &["client"], "&source=cliproxyapi", |c| {
        c.source == "cliproxyapi"
    })
    .await;
    // A window that cuts days is read by the hour: calls in [from's hour, to's hour end).
    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let midnight = jiff::Timestamp::now()
        .to_zoned(tz.clone())
        .start_of_day()
        .unwrap()
        .timestamp();
    // `from` inside the hour of a call at the hour's start: widened, it keeps the call.
    let from =
        midnight - jiff::SignedDuration::from_hours(30) + jiff::SignedDuration::from_mins(10);
    let to = midnight - jiff::SignedDuration::from_mins(30);
    let window = format!("&from={from}&to={to}");
    let (lo, hi) = (
        from.as_millisecond().div_euclid(3_600_000) * 3_600_000,
        (to.as_millisecond() + 3_599_999).div_euclid(3_600_000) * 3_600_000,
    );
    let inside = |c: &CallRecord| (lo..hi).contains(&c.ts.as_millisecond());
    assert!(calls.iter().any(inside) && !calls.iter().all(inside));
    for dims in [
        &["model"][..],
        &["endpoint"],
        &["client", "hour"],
        &["key"],
        &["hour"],
    ] {
        check_breakdown(&console, &calls, dims, &window, inside).await;
    }
    // Users, and pairs of other dimensions, are kept by the day: the window widens to whole days.
    let (first, last) = (
        from.to_zoned(tz.clone()).date(),
        (to - jiff::SignedDuration::from_millis(1))
            .to_zoned(tz.clone())
            .date(),
    );
    let in_whole_days = |c: &CallRecord| {
        let day = c.ts.to_zoned(tz.clone()).date();
        first <= day && day <= last
    };
    check_breakdown(&console, &calls, &["user"], &window, in_whole_days).await;
    check_breakdown(&console, &calls, &["key", "model"], &window, in_whole_days).await;
    let query = format!("{window}&client=codex");
    check_breakdown(&console, &calls, &["model"], &query, |c| {
        in_whole_days(c) && c.client == "codex"
    })
    .await;
    // Whole local days are read by the day.
    let days = format!(
        "&from={}&to={midnight}",
        midnight - jiff::SignedDuration::from_hours(24 * 4)
    );
    let in_days = |c: &CallRecord| {
        let ms = c.ts.as_millisecond();
        ms >= (midnight - jiff::SignedDuration::from_hours(96)).as_millisecond()
            && ms < midnight.as_millisecond()
    };
    check_breakdown(&console, &calls, &["user", "day"], &days, in_days).await;
    check_breakdown(&console, &calls, &["provider"], &days, in_days).await;
    // `days`: the last local days, today included.
    let since = midnight - jiff::SignedDuration::from_hours(24 * 3);
    let last_4 = |c: &CallRecord| c.ts >= since;
    assert!(calls.iter().any(last_4) && !calls.iter().all(last_4));
    for dims in [&["day"][..], &["user"], &["key", "model"]] {
        check_breakdown(&console, &calls, dims, "&days=4", last_4).await;
    }
}

#[tokio::test]
async fn order_and_limit_pick_the_largest_groups() {
    let console = Console::start("").await;
    let (k1, _) = console.create_key("a").await;
    let (k2, _) = console.create_key("b").await;
    let calls = dataset(k1, k2);
    console.record_all(&calls).await;
    let orders = [
        ("calls", "calls"),
        ("errors", "errors"),
        ("tokens", "total_tokens"),
        ("cost", "cost_nanos"),
    ];
    // With the key, without it (per user, or a row per user and day: read in the order asked).
    for ((order, field), group_by) in orders
        .into_iter()
        .flat_map(|o| ["user,key", "user", "user,day", "day,user"].map(|g| (o, g)))
    {
        let all = console
            .data(&format!(
                "/api/console/usage?group_by={group_by}&order_by={order}"
            ))
            .await;
        let values: Vec<u64> = all["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[field].as_u64().unwrap())
            .collect();
        let mut sorted = values.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(values, sorted, "{group_by} {order}");
        assert_eq!(all["order_by"], order);
        let top = console
            .data(&format!(
                "/api/console/usage?group_by={group_by}&order_by={order}&limit=2"
            ))
            .await;
        assert_eq!(
            top["rows"].as_array().unwrap()[..],
            all["rows"].as_array().unwrap()[..2]
        );
    }
}

#[tokio::test]
async fn the_user_cap_folds_the_tail_into_other_and_totals_still_match_stats() {
    let console = Console::start("console: {usage_user_cap: 3}\n").await;
    let (k1, _) = console.create_key("a").await;
    let now = jiff::Timestamp::now();
    let yesterday = now - jiff::SignedDuration::from_hours(24);
    let dims = |user| Dims {
        key: Some((k1, "a")),
        model: "gpt-4o",
        user,
        client: "curl",
        provider: "openai",
        source: "gateway",
        endpoint: "/v1/chat/completions",
    };
    let users = ["u1", "u2", "u3", "u4", "u5", "u6"];
    let mut calls = Vec::new();
    let mut i = 0;
    // Today: u1..u6 in order (u4..u6 beyond the cap), then u1 and u5 again; no user at all; a
    // client sending "(other)" itself. Yesterday: two users, under the cap.
    for user in users.iter().chain(&["u1", "u5"]) {
        calls.push(record(now, &dims(Some(user)), 200, i));
        i += 1;
    }
    calls.push(record(now, &dims(None), 200, i));
    calls.push(record(now, &dims(Some("(other)")), 500, i + 1));
    calls.push(record(yesterday, &dims(Some("u6")), 200, i + 2));
    calls.push(record(yesterday, &dims(Some("u7")), 200, i + 3));
    // One batch after another: the second writer's batch decides with what the first stored.
    console.record_all(&calls[..3]).await;
    console.record_all(&calls[3..]).await;

    let tz = jiff::tz::TimeZone::get(ZONE).unwrap();
    let today = now.to_zoned(tz.clone()).date().to_string();
    let day = |c: &CallRecord| c.ts.to_zoned(tz.clone()).date().to_string();
    let label = |c: &CallRecord| -> String {
        match c.user.as_deref() {
            Some("u4" | "u5" | "u6") if day(c) == today => "(other)".into(),
            Some(u) => u.into(),
            None => String::new(),
        }
    };
    let data = console
        .data("/api/console/usage?group_by=user,day&limit=1000")
        .await;
    let mut expected: BTreeMap<(String, String), Expected> = BTreeMap::new();
    for c in &calls {
        expected.entry((label(c), day(c))).or_default().add(c);
    }
    let rows = data["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.len(), "{data}");
    for row in rows {
        let key = (row_value(row, "user"), row_value(row, "day"));
        expected[&key].check(row, &format!("{key:?}"));
    }
    let today_users: Vec<&str> = rows
        .iter()
        .filter(|r| r["day"] == today.as_str())
        .map(|r| r["user"].as_str().unwrap())
        .collect();
    assert_eq!(
        today_users.len(),
        5,
        "u1..u3, (other), none: {today_users:?}"
    );
    // Every call is still counted once: the breakdown's totals are /stats'.
    let stats = console.data("/api/console/stats").await;
    let sum = |field: &str| rows.iter().map(|r| r[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("total_tokens"), stats["used_tokens"].as_u64().unwrap());
    assert_eq!(sum("calls"), stats["api_call_count"].as_u64().unwrap());
    assert_eq!(sum("errors"), stats["error_count"].as_u64().unwrap());
    assert_eq!(
        sum("cost_nanos"),
        stats["total_cost_nanos"].as_u64().unwrap()
    );
    assert_eq!(
        sum("unpriced_calls"),
        stats["unpriced_calls"].as_u64().unwrap()
    );
    // The folded users are one filterable row.
    let other = console
        .data("/api/console/usage?group_by=day&user=(other)")
        .await;
    assert_eq!(other["rows"].as_array().unwrap().len(), 1, "{other}");
}

#[tokio::test]
async fn bad_usage_queries_are_refused_naming_what_is_allowed() {
    let console = Console::start("").await;
    let cases = [
        (
            "group_by=team",
            "key, model, user, client, provider, source, endpoint, day, hour",
        ),
        ("group_by=model,key,day", "one or two"),
        ("group_by=day,hour", "day or hour"),
        (
            "group_by=user,client",
            "user can be grouped and filtered only with key and day",
        ),
        ("group_by=user,hour", "not with user"),
        (
            "group_by=client,hour&model=gpt-4o",
            "one other dimension at most",
        ),
        ("group_by=user,model", "not with model"),
        ("group_by=user&endpoint=/v1/messages", "not with endpoint"),
        ("group_by=model&team=a", "group_by"),
        ("order_by=latency", "tokens, cost, calls or errors"),
        (
            "from=2026-02-02T00:00:00Z&to=2026-02-01T00:00:00Z",
            "from must be earlier than to",
        ),
        ("from=yesterday", "RFC 3339"),
        (
            "days=3&from=2026-02-01T00:00:00Z",
            "days or from/to, not both",
        ),
        ("days=0", "days must be a whole number"),
        ("key_id=abc", "key_id must be a whole number"),
        ("limit=0", "limit must be a whole number"),
    ];
    for (query, want) in cases {
        let (status, body) = console
            .json("GET", &format!("/api/console/usage?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], 400, "{query}: {body}");
        let msg = body["msg"].as_str().unwrap();
        assert!(msg.contains(want), "{query}: {msg}");
    }
}
