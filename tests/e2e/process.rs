//! The real binary as a user runs it: start-up without configuration, bad configuration, a
//! separate console listener, the console switched off, the log file, and SIGTERM right after a
//! burst of calls — nothing recorded is lost across the restart.

use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::{json, Value};

fn run_expecting_failure(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_token-console"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn starts_without_any_configuration_and_shows_zeros() {
    let dir = tempdir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_token-console"))
        .args(["--port", "0"])
        .current_dir(dir.path())
        .env_remove("OPENAI_API_KEY")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("CONSOLE_ADMIN_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .next()
        .unwrap()
        .unwrap();
    let url = line
        .split_whitespace()
        .find_map(|p| p.strip_prefix("gateway="))
        .unwrap()
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let mut stats: Value = reqwest::get(format!("{url}/api/console/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Nothing spent: no rate, never runs out; the window is the last 7 days and the current hour.
    let forecast = stats["data"]
        .as_object_mut()
        .unwrap()
        .remove("forecast")
        .unwrap();
    assert_eq!(forecast["rate_per_day"], 0.0);
    assert_eq!(forecast["runs_out_at"], Value::Null);
    assert_eq!(forecast["period"], "total");
    let days = forecast["window_days"].as_f64().unwrap();
    assert!((7.0..=7.05).contains(&days), "{forecast}");
    assert_eq!(
        stats,
        json!({"code": 0, "data": {
            "total_tokens": null, "used_tokens": 0, "remaining_tokens": null, "usage_percent": null,
            "limit_period": null, "period_used": 0, "period_resets_at": null,
            "cost_limit": null, "period_cost": 0.0,
            "api_call_count": 0, "count_tokens_calls": 0, "success_count": 0, "error_count": 0, "prompt_tokens": 0,
            "completion_tokens": 0, "cache_read_tokens": 0, "cache_creation_tokens": 0,
            "reasoning_tokens": 0, "avg_time": 0.0, "latency_ms": {"p50": null, "p95": null, "p99": null},
            "models": [], "total_cost": 0.0, "total_cost_nanos": 0, "unpriced_calls": 0,
            "display_currency": null
        }})
    );
    let health: Value = reqwest::get(format!("{url}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        dir.path().join("data/token-console.db").exists(),
        "SQLite under ./data/"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_bad_config_file_stops_start_up_naming_key_and_line() {
    let dir = tempdir();
    std::fs::write(
        dir.path().join("config.yaml"),
        "port: 0\nconsole:\n  enabled: true\n  max_log: 10\n",
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(dir.path(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("max_log") && stderr.contains("line 4"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("config.yaml"), "port: eighty\n").unwrap();
    let (code, stderr) = run_expecting_failure(dir.path(), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 1"), "{stderr}");

    std::fs::write(
        dir.path().join("config.yaml"),
        "console:\n  admin_key: ${TC_TEST_UNSET_VARIABLE}\n",
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(dir.path(), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("TC_TEST_UNSET_VARIABLE"), "{stderr}");

    // An alert target that is not http(s), and an unknown key of the alerts section.
    std::fs::write(
        dir.path().join("config.yaml"),
        "port: 0\nalerts:\n  targets:\n    - kind: webhook\n      url: mailto:ops@example.com\n",
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(dir.path(), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("http://") && stderr.contains("line 5"),
        "{stderr}"
    );
    std::fs::write(
        dir.path().join("config.yaml"),
        "alerts:\n  targets: []\n  retries: 3\n",
    )
    .unwrap();
    let (code, stderr) = run_expecting_failure(dir.path(), &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("retries") && stderr.contains("line 3"),
        "{stderr}"
    );
    // Prices: an unknown key, a negative price, a `from` that does not parse, two prices with
    // the same match and from.
    let price = |extra: &str| {
        format!("port: 0\npricing:\n  models:\n    - match: \"gpt-*\"\n      input: 1\n      output: 2\n{extra}")
    };
    for (yaml, wants) in [
        (price("      cached: 1\n"), ["cached", "line 7"]),
        (
            price("    - match: m\n      input: -0.5\n      output: 1\n"),
            ["pricing.models[1].input (line 8)", "non-negative"],
        ),
        (
            price("      from: next week\n"),
            ["pricing.models[0].from (line 7)", "next week"],
        ),
        (
            price("    - match: \"gpt-*\"\n      input: 3\n      output: 4\n"),
            ["pricing.models[1] (line 7)", "same match"],
        ),
    ] {
        std::fs::write(dir.path().join("config.yaml"), &yaml).unwrap();
        let (code, stderr) = run_expecting_failure(dir.path(), &[]);
        assert_eq!(code, 2, "{yaml}: {stderr}");
        for want in wants {
            assert!(stderr.contains(want), "{yaml}: {stderr}");
        }
    }
}

#[test]
fn an_unwritable_data_directory_stops_start_up_with_what_to_do() {
    let dir = tempdir();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let url = format!("sqlite://{}/not-a-dir/sub/tc.db", dir.path().display());
    let (code, stderr) =
        run_expecting_failure(dir.path(), &["--port", "0", "--database-url", &url]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cannot create directory") && stderr.contains("database_url"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_console_can_have_its_own_listener_or_be_switched_off() {
    let dir = tempdir();
    let split = Server::start(dir.path(), "console:\n  port: 0\n");
    let console_base = split.console.trim_end_matches("/console").to_owned();
    assert_ne!(console_base, split.url);
    let on_console: Value = reqwest::get(format!("{console_base}/api/console/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(on_console["code"], 0);
    let on_gateway = reqwest::get(format!("{}/api/console/stats", split.url))
        .await
        .unwrap();
    assert_eq!(on_gateway.status(), 404);
    drop(split);

    let dir = tempdir();
    let off = Server::start(dir.path(), "console:\n  enabled: false\n");
    assert_eq!(off.console, "off");
    assert_eq!(
        reqwest::get(format!("{}/api/console/stats", off.url))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        reqwest::get(format!("{}/console/", off.url))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        reqwest::get(format!("{}/healthz", off.url))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn environment_variables_configure_the_console() {
    let dir = tempdir();
    let server = Server::start_with(
        dir.path(),
        "",
        &[("CONSOLE_PATH", "/board"), ("CONSOLE_MAX_LOGS", "5")],
    );
    assert!(server.console.ends_with("/board"), "{}", server.console);
    assert_eq!(
        reqwest::get(format!("{}/board/", server.url))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn sigterm_right_after_a_burst_loses_nothing() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = format!("log_file: logs/error.log\n{}", providers_yaml(&mock.url));
    let mut server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("burst").await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let url = server.url.clone();
        let key = key.clone();
        calls.push(tokio::spawn(async move {
            let model = if i % 2 == 0 { "gpt-burst" } else { "mock-error-500" };
            let r = call(&url, "/v1/chat/completions", &key, &json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "one two three"}]})).await;
            r.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 100);
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");

    let log = std::fs::read_to_string(dir.path().join("logs/error.log")).unwrap();
    assert!(
        log.contains("token-console started"),
        "the guide's log file is written"
    );
    assert!(
        !log.contains(&key) && !log.contains(PROVIDER_KEY),
        "no secret in the log"
    );

    let again = Server::start(dir.path(), &yaml);
    let stats = again.data("/api/console/stats").await;
    assert_eq!(stats["api_call_count"], 200);
    assert_eq!(stats["success_count"], 100);
    assert_eq!(stats["error_count"], 100);
    // Mock usage: prompt 10 + 3 words, completion min(max_tokens, 20) = 5.
    assert_eq!(stats["used_tokens"], 100 * (13 + 5));
    let logs = again.logs("limit=1000").await;
    assert_eq!(logs.len(), 200);
    assert_eq!(logs.iter().filter(|r| r["status"] == 500).count(), 100);
    let keys = again.data("/api/console/keys").await;
    assert_eq!(keys[0]["call_count"], 200);
}
