//! Cost in money, end to end: the binary and the mock, every token kind in every protocol priced
//! to the nano-dollar against an independent computation from the mock's reported usage and the
//! configured prices; overrides over the bundled table; unknown models unpriced; the figures on
//! every console surface (logs, stats, trend, keys, export, `/metrics`, the answer's header).

use serde_json::{json, Value};

use crate::common::{start_behind, Mock, Server};
use crate::gateway_support::{post, Auth, Proto};

/// The prices of the `mock-*` override, USD per million tokens as written in the YAML, and the
/// same in femto-dollars (10⁻¹⁵ USD) per token, written out by hand: input, output, cache read,
/// cache write.
const PRICES_YAML: [&str; 4] = ["1.1", "4.4", "0.37", "1.9"];
const FEMTOS: [u128; 4] = [1_100_000_000, 4_400_000_000, 370_000_000, 1_900_000_000];

fn override_yaml() -> String {
    let [input, output, read, write] = PRICES_YAML;
    format!(
        "pricing:\n  models:\n    - match: \"mock-*\"\n      input: {input}\n      output: {output}\n      cache_read: {read}\n      cache_write: {write}\n    - match: \"gpt-4o-mini*\"\n      input: 1\n      output: 2\n"
    )
}

/// The usage the mock reported, summed: (uncached input, output, cache read, cache write,
/// reasoning).
async fn reported(mock: &Mock) -> [u64; 5] {
    let r = mock.stats().await["reported"].clone();
    let get = |k: &str| r[k].as_u64().unwrap();
    [
        get("input_tokens"),
        get("output_tokens"),
        get("cache_read_tokens"),
        get("cache_creation_tokens"),
        get("reasoning_tokens"),
    ]
}

/// The cost of a usage at `femtos`, rounded once to the nearest nano-dollar (half up).
fn nanos(usage: [u64; 5], femtos: [u128; 4]) -> u64 {
    let [input, output, read, write, _] = usage.map(u128::from);
    let total = input * femtos[0] + output * femtos[1] + read * femtos[2] + write * femtos[3];
    u64::try_from((total + 500_000) / 1_000_000).unwrap()
}

fn usd_text(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// One call of `route` for `model`: (path, body).
fn request(route: &str, model: &str, stream: bool) -> (&'static str, Value) {
    let text = "price every kind of token";
    match route {
        "responses" => (
            "/v1/responses",
            json!({"model": model, "input": text, "max_output_tokens": 20, "stream": stream}),
        ),
        "anthropic" => (
            Proto::Anthropic.path(),
            Proto::Anthropic.body(model, text, 20, stream),
        ),
        _ => (
            Proto::OpenAi.path(),
            Proto::OpenAi.body(model, text, 20, stream),
        ),
    }
}

/// Makes one call, waits for its record and returns (its log row, its cost header, the usage
/// the mock reported for it).
async fn priced_call(
    server: &Server,
    mock: &Mock,
    key: &str,
    n: u64,
    (route, model, stream): (&str, &str, bool),
) -> (Value, Option<String>, [u64; 5]) {
    let before = reported(mock).await;
    let (path, body) = request(route, model, stream);
    let auth = if route == "anthropic" {
        Auth::XApiKey(key)
    } else {
        Auth::Bearer(key)
    };
    let r = post(&server.url, path, auth, &body).await;
    assert_eq!(r.status(), 200, "{route} {model} stream={stream}");
    let header = r
        .headers()
        .get("x-token-console-cost")
        .map(|v| v.to_str().unwrap().to_owned());
    let _ = r.bytes().await.unwrap();
    server.wait_for_calls(n).await;
    let row = server.logs("limit=1").await.remove(0);
    let after = reported(mock).await;
    let delta: [u64; 5] = std::array::from_fn(|i| after[i] - before[i]);
    (row, header, delta)
}

#[tokio::test]
async fn every_token_kind_in_every_protocol_costs_its_price_to_the_nano_dollar() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, &override_yaml());
    let (key_id, key) = server.create_key("cost").await;
    let cases = [
        ("openai", false),
        ("openai", true),
        ("anthropic", false),
        ("anthropic", true),
        ("responses", false),
        ("responses", true),
    ];
    let mut total = 0u64;
    for (i, (route, stream)) in cases.into_iter().enumerate() {
        let case = format!("{route} stream={stream}");
        let (row, header, usage) = priced_call(
            &server,
            &mock,
            &key,
            i as u64 + 1,
            (route, "mock-price", stream),
        )
        .await;
        // Every kind the protocol reports is in this call, so each price is in the figure.
        let kinds = match route {
            "anthropic" => [usage[0], usage[1], usage[2], usage[3]],
            _ => [usage[0], usage[1], usage[2], usage[4]],
        };
        assert!(kinds.iter().all(|&k| k > 0), "{case}: {usage:?}");
        let want = nanos(usage, FEMTOS);
        assert_eq!(row["cost_nanos"], json!(want), "{case}: {row}");
        assert_eq!(row["cost_status"], "priced", "{case}");
        assert_eq!(row["cost"].as_f64(), Some(want as f64 / 1e9), "{case}");
        let expected_header = (!stream).then(|| usd_text(want));
        assert_eq!(
            header, expected_header,
            "{case}: non-stream answers carry the cost"
        );
        total += want;
    }
    let stats = server.data("/api/console/stats").await;
    assert_eq!(stats["total_cost_nanos"], json!(total), "{stats}");
    assert_eq!(stats["unpriced_calls"], json!(0));
    assert_eq!(stats["models"][0]["cost_nanos"], json!(total));
    let trend = server.data("/api/console/usage-trend?days=7").await;
    let days: Vec<f64> = trend["costData"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(days.len(), 7);
    assert_eq!(days[6], total as f64 / 1e9, "today's cost: {trend}");
    let keys = server.data("/api/console/keys").await;
    let mine = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id)
        .unwrap();
    assert_eq!(mine["cost_nanos"], json!(total));
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = format!(
        "token_console_cost_usd_total{{model=\"mock-price\",key=\"cost\",status=\"2xx\"}} {}",
        usd_text(total)
    );
    assert!(metrics.contains(&line), "{line} in\n{metrics}");
    let export: Value = serde_json::from_str(&server.text("/api/console/export").await).unwrap();
    let logs = export["logs"].as_array().unwrap();
    assert_eq!(logs.len(), cases.len());
    let exported: u64 = logs.iter().map(|r| r["cost_nanos"].as_u64().unwrap()).sum();
    assert_eq!(exported, total);
    assert_eq!(export["stats"]["total_cost_nanos"], json!(total));
    let csv = server.text("/api/console/export?format=csv").await;
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let column = head.iter().position(|c| *c == "cost_nanos").unwrap();
    let status = head.iter().position(|c| *c == "cost_status").unwrap();
    let mut csv_total = 0;
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        csv_total += cells[column].parse::<u64>().unwrap();
        assert_eq!(cells[status], "priced");
    }
    assert_eq!(csv_total, total);
}

#[tokio::test]
async fn overrides_beat_the_bundled_table_which_prices_known_models_as_published() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, &override_yaml());
    let (_, key) = server.create_key("cost").await;
    // gpt-4o from the bundled table: $2.50 input, $1.25 cached input, $10 output per million
    // (OpenAI's published prices).
    let published = [2_500_000_000, 10_000_000_000, 1_250_000_000, 0];
    let (row, header, usage) =
        priced_call(&server, &mock, &key, 1, ("openai", "gpt-4o", false)).await;
    assert_eq!(row["cost_nanos"], json!(nanos(usage, published)), "{row}");
    assert_eq!(header, Some(usd_text(nanos(usage, published))));
    // gpt-4o-mini is in the table too ($0.15 / $0.60), but the override ($1 / $2) wins; it
    // gives no cache price, so cached input costs the input price.
    let overridden = [1_000_000_000, 2_000_000_000, 1_000_000_000, 1_000_000_000];
    let (row, _, usage) =
        priced_call(&server, &mock, &key, 2, ("openai", "gpt-4o-mini", false)).await;
    assert_eq!(row["cost_nanos"], json!(nanos(usage, overridden)), "{row}");
    // Claude Sonnet 4 from the bundled table: $3 input, $0.30 cache read, $3.75 cache write,
    // $15 output (Anthropic's published prices).
    let sonnet = [3_000_000_000, 15_000_000_000, 300_000_000, 3_750_000_000];
    let (row, _, usage) = priced_call(
        &server,
        &mock,
        &key,
        3,
        ("anthropic", "claude-sonnet-4-20250514", false),
    )
    .await;
    assert_eq!(row["cost_nanos"], json!(nanos(usage, sonnet)), "{row}");
}

#[tokio::test]
async fn unknown_models_are_unpriced_never_free() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (key_id, key) = server.create_key("cost").await;
    for (i, stream) in [false, true].into_iter().enumerate() {
        let (row, header, _) = priced_call(
            &server,
            &mock,
            &key,
            i as u64 + 1,
            ("openai", "house-model-7", stream),
        )
        .await;
        assert_eq!(row["cost"], Value::Null, "{row}");
        assert_eq!(row["cost_nanos"], Value::Null);
        assert_eq!(row["cost_status"], "unpriced");
        assert!(row["tokens"].as_u64().unwrap() > 0);
        assert_eq!(header, (!stream).then(|| "unpriced".to_owned()));
    }
    let stats = server.data("/api/console/stats").await;
    assert_eq!(stats["unpriced_calls"], json!(2), "{stats}");
    assert_eq!(stats["total_cost_nanos"], json!(0));
    assert_eq!(stats["models"][0]["cost"], Value::Null, "unpriced, not $0");
    let keys = server.data("/api/console/keys").await;
    let mine = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id)
        .unwrap();
    assert_eq!(mine["unpriced_calls"], json!(2));
}

#[tokio::test]
async fn an_effective_date_switches_the_price_and_the_display_currency_is_served() {
    let mock = Mock::start();
    let yaml = "pricing:\n  models:\n    - match: \"mock-*\"\n      input: 1\n      output: 1\n    - match: \"mock-*\"\n      input: 2\n      output: 2\n      from: 2000-01-01\n    - match: \"mock-*\"\n      input: 3\n      output: 3\n      from: 2999-01-01T00:00:00Z\n  display_currency: CNY\n  display_rate: 7.1\n";
    let (_dir, server) = start_behind(&mock, yaml);
    let (_, key) = server.create_key("cost").await;
    let (row, _, usage) = priced_call(&server, &mock, &key, 1, ("openai", "mock-x", false)).await;
    let in_effect = [2_000_000_000; 4];
    assert_eq!(row["cost_nanos"], json!(nanos(usage, in_effect)), "{row}");
    let stats = server.data("/api/console/stats").await;
    assert_eq!(
        stats["display_currency"],
        json!({"code": "CNY", "rate": 7.1})
    );
}

/// Prices every token kind at `usd` per million tokens: `usd × 1000` nano-dollars a token.
fn flat_prices(usd: u64) -> String {
    format!("pricing:\n  models:\n    - match: \"mock-*\"\n      input: {usd}\n      output: {usd}\n      cache_read: {usd}\n      cache_write: {usd}\n")
}

/// The figures repricing must move: (stats total, sum of the trend, the key's cost, the sum of
/// the exported rows, the sum of the kept log rows), nano-dollars (USD for the trend).
async fn figures(server: &Server, key_id: i64) -> (u64, f64, u64, u64, u64) {
    let stats = server.data("/api/console/stats").await;
    let trend = server.data("/api/console/usage-trend?days=7").await;
    let trend_sum: f64 = trend["costData"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum();
    let keys = server.data("/api/console/keys").await;
    let key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id)
        .unwrap()["cost_nanos"]
        .as_u64()
        .unwrap();
    let export: Value = serde_json::from_str(&server.text("/api/console/export").await).unwrap();
    let sum = |rows: &Value| -> u64 {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["cost_nanos"].as_u64().unwrap())
            .sum()
    };
    let logs = Value::Array(server.logs("limit=1000").await);
    (
        stats["total_cost_nanos"].as_u64().unwrap(),
        trend_sum,
        key,
        sum(&export["logs"]),
        sum(&logs),
    )
}

#[tokio::test]
async fn repricing_moves_every_figure_including_trimmed_calls() {
    let mock = Mock::start();
    let dir = crate::common::tempdir();
    let (database, _keep) = crate::common::database_url(dir.path());
    let providers = crate::common::providers_yaml(&mock.url);
    // Two raw rows kept: of the four calls, the first two survive only in the aggregates.
    let yaml = |usd| format!("{providers}console:\n  max_logs: 2\n{}", flat_prices(usd));
    let mut server = Server::start(dir.path(), &yaml(1));
    let (key_id, key) = server.create_key("cost").await;
    let mut tokens = 0;
    for n in 1..=4 {
        let (row, _, _) = priced_call(&server, &mock, &key, n, ("openai", "mock-r", false)).await;
        tokens += row["tokens"].as_u64().unwrap();
    }
    let at_one = tokens * 1000;
    let (total, _, key_cost, exported, logged) = figures(&server, key_id).await;
    assert_eq!((total, key_cost), (at_one, at_one));
    assert!(exported < total && exported == logged, "two rows trimmed");
    server.terminate();

    // New prices: nothing moves until repricing, then every figure does.
    let server = Server::start(dir.path(), &yaml(2));
    assert_eq!(figures(&server, key_id).await.0, at_one);
    let (status, done) = server.post("/api/console/reprice", &json!({})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["data"]["cost_delta_nanos"], json!(at_one), "{done}");
    // The trimmed calls' hour is priced from its summed tokens.
    assert!(
        done["data"]["approximate_aggregates"].as_u64().unwrap() >= 1,
        "{done}"
    );
    let (total, trend, key_cost, exported_after, logged_after) = figures(&server, key_id).await;
    assert_eq!((total, key_cost), (2 * at_one, 2 * at_one));
    assert_eq!(trend, (2 * at_one) as f64 / 1e9);
    assert_eq!((exported_after, logged_after), (2 * exported, 2 * logged));
    let (status, bad) = server
        .post("/api/console/reprice", &json!({"from": "soon"}))
        .await;
    assert_eq!(status, 400, "{bad}");
    drop(server);

    // The command line does the same, here from a date on.
    let config = dir.path().join("cli.yaml");
    std::fs::write(&config, format!("database_url: {database}\n{}", yaml(3))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_token-console"))
        .arg("--config")
        .arg(&config)
        .args(["reprice", "--from", "2000-01-01"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("repriced ") && stdout.contains("+0.0"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("token-console reprice: "));
    let server = Server::start(dir.path(), &yaml(3));
    assert_eq!(figures(&server, key_id).await.0, 3 * at_one);
}

#[tokio::test]
async fn a_price_from_an_instant_reprices_the_calls_after_it_only() {
    let mock = Mock::start();
    let dir = crate::common::tempdir();
    let (_, _keep) = crate::common::database_url(dir.path());
    let providers = crate::common::providers_yaml(&mock.url);
    let mut server = Server::start(dir.path(), &format!("{providers}{}", flat_prices(1)));
    let (_, key) = server.create_key("cost").await;
    let (before, _, _) = priced_call(&server, &mock, &key, 1, ("openai", "mock-t", false)).await;
    // The instant between the two calls, to the millisecond (calls are stored to the
    // millisecond).
    let switch =
        jiff::Timestamp::from_millisecond(jiff::Timestamp::now().as_millisecond() + 1).unwrap();
    crate::common::wait_until("the clock to pass the switch", || async {
        if jiff::Timestamp::now() >= switch {
            Ok(())
        } else {
            Err("same millisecond".to_owned())
        }
    })
    .await;
    let (after, _, _) = priced_call(&server, &mock, &key, 2, ("openai", "mock-t", false)).await;
    server.terminate();
    let yaml = format!(
        "{providers}{}    - match: \"mock-t\"\n      input: 5\n      output: 5\n      from: {switch}\n",
        flat_prices(1)
    );
    let server = Server::start(dir.path(), &yaml);
    let (status, done) = server.post("/api/console/reprice", &json!({})).await;
    assert_eq!(status, 200, "{done}");
    let rows = server.logs("limit=10").await;
    let cost = |id: &Value| {
        rows.iter().find(|r| &r["id"] == id).unwrap()["cost_nanos"]
            .as_u64()
            .unwrap()
    };
    let tokens = |row: &Value| row["tokens"].as_u64().unwrap();
    assert_eq!(
        cost(&before["id"]),
        tokens(&before) * 1000,
        "before the switch"
    );
    assert_eq!(
        cost(&after["id"]),
        tokens(&after) * 5000,
        "from the switch on"
    );
    let stats = server.data("/api/console/stats").await;
    assert_eq!(
        stats["total_cost_nanos"],
        json!(tokens(&before) * 1000 + tokens(&after) * 5000)
    );
}

#[tokio::test]
async fn calls_with_estimated_tokens_are_priced_as_estimated() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, &override_yaml());
    let (_, key) = server.create_key("cost").await;
    // The mock reports no usage for this model: the gateway's tokenizer counts the tokens.
    let (row, header, _) =
        priced_call(&server, &mock, &key, 1, ("openai", "mock-no-usage", false)).await;
    assert_eq!(row["estimated"], true, "{row}");
    assert_eq!(row["cost_status"], "estimated");
    let tokens = [
        row["prompt_tokens"].as_u64().unwrap(),
        row["completion_tokens"].as_u64().unwrap(),
        0,
        0,
        0,
    ];
    let want = nanos(tokens, FEMTOS);
    assert!(want > 0);
    assert_eq!(row["cost_nanos"], json!(want), "{row}");
    assert_eq!(header, Some(usd_text(want)));
}
