//! The gateway's successful paths end to end, against the real binary and the mock upstream: the
//! provider's key replaces the client's, streams reach the client unchanged (minus the usage chunk
//! the gateway asked for itself) while their exact usage is recorded, estimates when the upstream
//! reports none, a client hanging up mid-stream, the budget under 50 concurrent calls, totals
//! across a restart, `/metrics` against the store, and the model list.

use std::collections::{BTreeMap, HashSet};

use crate::common::*;
use crate::gateway_support::*;
use serde_json::{json, Value};

/// The reply text of the mock for `n` completion tokens.
fn mock_text(n: u64) -> String {
    (0..n)
        .map(|i| {
            if i == 0 {
                "tok0".to_owned()
            } else {
                format!(" tok{i}")
            }
        })
        .collect()
}

/// POSTs and returns (status, whole body text).
async fn post_text(server: &Server, path: &str, auth: Auth<'_>, body: &Value) -> (u16, String) {
    let r = post(&server.url, path, auth, body).await;
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn provider_key_replaces_the_clients_key() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("app").await;
    let calls = [
        ("/v1/chat/completions", Auth::Bearer(&key)),
        ("/v1/messages", Auth::XApiKey(&key)),
        ("/v1/messages", Auth::Bearer(&key)),
        ("/v1/embeddings", Auth::Bearer(&key)),
    ];
    for (path, auth) in calls {
        let body = json!({"model": "gpt-4o", "max_tokens": 5, "input": "hi",
            "messages": [{"role": "user", "content": "hi"}]});
        let r = post(&server.url, path, auth, &body).await;
        // The mock requires the provider's key: a 200 means it got it.
        assert_eq!(r.status(), 200, "{path} {auth:?}");
    }
    let seen = mock.requests().await;
    assert_eq!(seen.len(), calls.len());
    for (request, (path, _)) in seen.iter().zip(calls) {
        assert_eq!(request["path"], path);
        let headers = request["headers"].as_object().unwrap();
        if path == "/v1/messages" {
            assert_eq!(headers["x-api-key"], PROVIDER_KEY, "{request}");
            assert!(!headers.contains_key("authorization"), "{request}");
            assert_eq!(headers["anthropic-version"], "2023-06-01");
        } else {
            assert_eq!(headers["authorization"], format!("Bearer {PROVIDER_KEY}"));
            assert!(!headers.contains_key("x-api-key"), "{request}");
        }
        for (name, value) in headers {
            assert!(
                !value.as_str().unwrap().contains(&key),
                "the client's key leaked upstream in {name}"
            );
        }
    }
}

#[tokio::test]
async fn chat_stream_without_include_usage_hides_the_usage_chunk_but_records_it() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("streamer").await;
    let text = "tell me a story please";
    let body = json!({"model": "gpt-4o", "stream": true, "max_tokens": 7,
        "messages": [{"role": "user", "content": text}]});
    let (status, raw) = post_text(&server, "/v1/chat/completions", Auth::Bearer(&key), &body).await;
    assert_eq!(status, 200);
    let events = sse_events(&raw);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events
        .iter()
        .map(SseEvent::json)
        .filter(|v| !v.is_null())
        .collect();
    assert_eq!(
        chunks.len() + 1,
        events.len(),
        "every other event is JSON: {raw}"
    );
    for chunk in &chunks {
        assert!(
            chunk["choices"].as_array().is_some_and(|c| !c.is_empty()),
            "no usage-only chunk reaches a client that did not ask for it: {chunk}"
        );
        assert!(chunk["usage"].is_null(), "{chunk}");
    }
    let answer: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, mock_text(7));
    // The gateway asked the provider for usage on the client's behalf.
    let sent = mock.requests().await.pop().unwrap();
    assert_eq!(sent["body"]["stream_options"]["include_usage"], true);

    let row = newest_row(&server, 1).await;
    let prompt = mock_prompt(text);
    assert_eq!(row_tokens(&row), [prompt, 7, 2, 0, 1, prompt + 7], "{row}");
    assert_eq!(row["estimated"], false);
    assert_eq!(row["stream"], true);
    assert_eq!(row["status"], 200);
    assert_eq!(row["key_id"], id);
    assert!(
        row["ttft"].as_u64().is_some(),
        "time to first token recorded: {row}"
    );
}

#[tokio::test]
async fn legacy_completions_stream_hides_the_usage_chunk_too() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("legacy").await;
    let prompt_text = "once upon a time";
    let body = json!({"model": "gpt-3.5-turbo-instruct", "stream": true, "max_tokens": 4,
        "prompt": prompt_text});
    let (status, raw) = post_text(&server, "/v1/completions", Auth::Bearer(&key), &body).await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = sse_events(&raw)
        .iter()
        .map(SseEvent::json)
        .filter(|v| !v.is_null())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
        "{raw}"
    );
    let row = newest_row(&server, 1).await;
    let prompt = mock_prompt(prompt_text);
    assert_eq!(row_tokens(&row), [prompt, 4, 2, 0, 1, prompt + 4]);
}

#[tokio::test]
async fn chat_stream_with_include_usage_passes_the_chunk_through() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("curious").await;
    let text = "how many tokens is this";
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": text}]});
    let (status, raw) = post_text(&server, "/v1/chat/completions", Auth::Bearer(&key), &body).await;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = sse_events(&raw)
        .iter()
        .map(SseEvent::json)
        .filter(|v| !v.is_null())
        .collect();
    let usage_chunks: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"].as_array().is_some_and(Vec::is_empty))
        .collect();
    assert_eq!(usage_chunks.len(), 1, "{raw}");
    let usage = &usage_chunks[0]["usage"];
    let prompt = mock_prompt(text);
    assert_eq!(usage["prompt_tokens"], prompt);
    assert_eq!(usage["completion_tokens"], 20);
    let row = newest_row(&server, 1).await;
    assert_eq!(
        row_tokens(&row),
        [
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["completion_tokens"].as_u64().unwrap(),
            usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
            0,
            usage["completion_tokens_details"]["reasoning_tokens"]
                .as_u64()
                .unwrap(),
            usage["total_tokens"].as_u64().unwrap(),
        ]
    );
}

#[tokio::test]
async fn anthropic_usage_is_recorded_exactly_stream_and_not() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("claude-user").await;
    let text = "explain caching in three words";
    let prompt = mock_prompt(text);
    // Stream: input and cache tokens from message_start, output from the last message_delta.
    let body = Proto::Anthropic.body("claude-3-haiku", text, 9, true);
    let (status, raw) = post_text(&server, "/v1/messages", Auth::XApiKey(&key), &body).await;
    assert_eq!(status, 200);
    let events = sse_events(&raw);
    let names: Vec<&str> = events.iter().filter_map(|e| e.name.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let answer: String = events
        .iter()
        .filter_map(|e| e.json()["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(answer, mock_text(9));
    let row = newest_row(&server, 1).await;
    // Anthropic's input_tokens excludes the mock's 3 cache-read and 1 cache-write tokens.
    assert_eq!(
        row_tokens(&row),
        [prompt + 4, 9, 3, 1, 0, prompt + 13],
        "{row}"
    );
    assert_eq!(
        (row["stream"].clone(), row["estimated"].clone()),
        (json!(true), json!(false))
    );
    // Non-stream: the body's usage.
    let (status, raw) = post_text(
        &server,
        "/v1/messages",
        Auth::XApiKey(&key),
        &Proto::Anthropic.body("claude-3-haiku", text, 50, false),
    )
    .await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(answer["usage"]["input_tokens"], prompt);
    let row = newest_row(&server, 2).await;
    assert_eq!(
        row_tokens(&row),
        [prompt + 4, 20, 3, 1, 0, prompt + 24],
        "{row}"
    );
}

#[tokio::test]
async fn responses_usage_is_recorded_exactly_stream_and_not() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("responder").await;
    let input = "summarise the responses api";
    let prompt = mock_prompt(input);
    let body = json!({"model": "gpt-4o", "input": input, "max_output_tokens": 6, "stream": true});
    let (status, raw) = post_text(&server, "/v1/responses", Auth::Bearer(&key), &body).await;
    assert_eq!(status, 200);
    let completed = sse_events(&raw)
        .into_iter()
        .find(|e| e.name.as_deref() == Some("response.completed"))
        .expect("response.completed passes through");
    assert_eq!(
        completed.json()["response"]["usage"]["input_tokens"],
        prompt
    );
    let row = newest_row(&server, 1).await;
    assert_eq!(row_tokens(&row), [prompt, 6, 2, 0, 1, prompt + 6], "{row}");
    let body = json!({"model": "gpt-4o", "input": input});
    let (status, _) = post_text(&server, "/v1/responses", Auth::Bearer(&key), &body).await;
    assert_eq!(status, 200);
    let row = newest_row(&server, 2).await;
    assert_eq!(
        row_tokens(&row),
        [prompt, 20, 2, 0, 1, prompt + 20],
        "{row}"
    );
    assert_eq!(row["estimated"], false);
}

#[tokio::test]
async fn upstream_without_usage_is_estimated_with_non_zero_tokens() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("estimator").await;
    let text = "the upstream will not count these words for us";
    let cases = BOTH_AND_STREAMED;
    for (n, (proto, stream)) in cases.into_iter().enumerate() {
        let body = proto.body("mock-no-usage", text, 8, stream);
        let (status, _) = post_text(&server, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(status, 200);
        let row = newest_row(&server, n as u64 + 1).await;
        assert_eq!(row["estimated"], true, "{proto:?} stream={stream}: {row}");
        assert_eq!(row["stream"], stream);
        let [prompt, completion, .., total] = row_tokens(&row);
        assert!(prompt > 0 && completion > 0, "{row}");
        assert_eq!(total, prompt + completion);
    }
    let stats = server.data("/api/console/stats").await;
    assert!(stats["used_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn client_hanging_up_mid_stream_cancels_upstream_and_records_499() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (id, key) = server.create_key("impatient").await;
    for (n, proto) in BOTH.into_iter().enumerate() {
        let body = proto.body(
            "mock-chunks-50-gap-100",
            "stream fifty chunks slowly",
            50,
            true,
        );
        let mut response = post(&server.url, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(response.status(), 200);
        let mut seen = String::new();
        while seen.matches("\n\n").count() < 4 {
            let chunk = response.chunk().await.unwrap().expect("the stream goes on");
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(
            seen.contains("tok0"),
            "content arrived before hanging up: {seen}"
        );
        drop(response);

        let disconnects = wait_until("the provider sees the disconnect", || async {
            let stats = mock.stats().await;
            let d = stats["disconnects"].as_u64().unwrap();
            (d > n as u64).then_some(d)
        })
        .await;
        assert_eq!(disconnects, n as u64 + 1);
        let row = newest_row(&server, n as u64 + 1).await;
        assert_eq!(row["endpoint"], proto.path());
        assert_eq!(row["status"], 499, "{row}");
        assert_eq!(row["key_id"], id);
        let [prompt, completion, .., total] = row_tokens(&row);
        assert!(prompt > 0, "the prompt is counted: {row}");
        if proto == Proto::Anthropic {
            // message_start had arrived: its input and cache counts are exact (the prompt
            // includes the 3 cache-read and 1 cache-write tokens).
            assert_eq!(
                prompt,
                mock_prompt("stream fifty chunks slowly") + 4,
                "{row}"
            );
            assert_eq!(
                (
                    row["cache_read_tokens"].clone(),
                    row["cache_creation_tokens"].clone()
                ),
                (json!(3), json!(1))
            );
        }
        assert!(
            completion > 0,
            "the tokens streamed so far are counted: {row}"
        );
        assert_eq!(total, prompt + completion);
        assert_eq!(row["estimated"], true);
    }
    let stats = mock.stats().await;
    assert_eq!(stats["completed_streams"], 0);
    assert_eq!(stats["open_streams"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budget_race_forwards_only_what_fits() {
    // The mock counts a `…byte-tokens` model's prompt at one token per byte, so each call uses
    // about what it reserves (its body's bytes + 4 + 3 + 20). A budget of 5 reservations fits
    // exactly 5 at once, 6 calls would use more than it, and what 5 calls leave is less than a
    // reservation: so exactly 5 calls may reach the provider, however the 50 interleave.
    const K: u64 = 5;
    let text = text_of(1000);
    let body = Proto::OpenAi.body("mock-byte-tokens", &text, 20, false);
    let used_per_call = 10 + text.len() as u64 + mock_completion(20);
    let reserved = reservation(&body);
    let budget = K * reserved;
    assert!((K + 1) * used_per_call > budget && budget - K * used_per_call < reserved);

    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, &format!("quota:\n  total_tokens: {budget}\n"));
    let (_, key) = server.create_key("racer").await;
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let request = client
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(&key)
            .json(&body);
        tasks.spawn(async move {
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let mut ok = 0;
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        let (status, body) = result.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let forwarded = mock.stats().await["by_path"]["/v1/chat/completions"]
        .as_u64()
        .unwrap();
    assert!(
        forwarded <= K,
        "{forwarded} calls reached the provider, budget fits {K}"
    );
    assert_eq!(forwarded, K, "every call that fits is served");
    assert_eq!((ok, refused), (K, 50 - K));
    let stats = server.wait_for_calls(50).await;
    let used = stats["used_tokens"].as_u64().unwrap();
    assert!(used <= budget, "used {used} of {budget}");
    assert_eq!(used, K * used_per_call);
}

/// Totals the console should show for a set of calls: per model (calls, successes, prompt,
/// completion, total).
type Expected = BTreeMap<String, [u64; 5]>;

fn expect(totals: &mut Expected, model: &str, success: bool, prompt: u64, completion: u64) {
    let entry = totals.entry(model.to_owned()).or_default();
    entry[0] += 1;
    entry[1] += u64::from(success);
    entry[2] += prompt;
    entry[3] += completion;
    entry[4] += prompt + completion;
}

/// Makes one round of calls of every kind and notes what each should add.
async fn round_of_calls(server: &Server, key: &str, totals: &mut Expected, stream: bool) {
    let text = format!("round of calls streamed {stream}");
    let prompt = mock_prompt(&text);
    let r = post(
        &server.url,
        "/v1/chat/completions",
        Auth::Bearer(key),
        &Proto::OpenAi.body("gpt-4o", &text, 5, stream),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    expect(totals, "gpt-4o", true, prompt, 5);
    let r = post(
        &server.url,
        "/v1/messages",
        Auth::XApiKey(key),
        &Proto::Anthropic.body("claude-3-haiku", &text, 11, stream),
    )
    .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    // Anthropic's input_tokens plus the mock's 3 cache-read and 1 cache-write tokens.
    expect(totals, "claude-3-haiku", true, prompt + 4, 11);
    let r = post(
        &server.url,
        "/v1/embeddings",
        Auth::Bearer(key),
        &json!({"model": "text-embedding-3-small", "input": text}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["usage"]["total_tokens"], prompt);
    expect(totals, "text-embedding-3-small", true, prompt, 0);
    let r = post(
        &server.url,
        "/v1/chat/completions",
        Auth::Bearer(key),
        &Proto::OpenAi.body("mock-error-500", &text, 5, false),
    )
    .await;
    assert_eq!(r.status(), 500);
    expect(totals, "mock-error-500", false, 0, 0);
}

fn assert_stats_match(stats: &Value, totals: &Expected) {
    let sum = |i: usize| totals.values().map(|t| t[i]).sum::<u64>();
    assert_eq!(stats["api_call_count"], sum(0), "{stats}");
    assert_eq!(stats["success_count"], sum(1), "{stats}");
    assert_eq!(stats["error_count"], sum(0) - sum(1), "{stats}");
    assert_eq!(stats["prompt_tokens"], sum(2), "{stats}");
    assert_eq!(stats["completion_tokens"], sum(3), "{stats}");
    assert_eq!(stats["used_tokens"], sum(4), "{stats}");
    let models: BTreeMap<String, [u64; 5]> = stats["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let n = |f: &str| m[f].as_u64().unwrap();
            (
                m["name"].as_str().unwrap().to_owned(),
                [
                    n("call_count"),
                    n("success_count"),
                    n("prompt_tokens"),
                    n("completion_tokens"),
                    n("token_count"),
                ],
            )
        })
        .collect();
    assert_eq!(&models, totals);
}

#[tokio::test]
async fn totals_survive_a_restart() {
    let mock = Mock::start();
    let dir = tempdir();
    let yaml = providers_yaml(&mock.url);
    let mut totals = Expected::new();
    let mut server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("durable").await;
    round_of_calls(&server, &key, &mut totals, false).await;
    round_of_calls(&server, &key, &mut totals, true).await;
    let before = server.wait_for_calls(8).await;
    assert_stats_match(&before, &totals);
    assert!(server.terminate().success(), "a clean exit on SIGTERM");

    let server = Server::start(dir.path(), &yaml);
    let after_restart = server.data("/api/console/stats").await;
    assert_stats_match(&after_restart, &totals);
    round_of_calls(&server, &key, &mut totals, true).await;
    let stats = server.wait_for_calls(12).await;
    assert_stats_match(&stats, &totals);
    let keys = server.data("/api/console/keys").await;
    assert_eq!(keys[0]["used_tokens"], stats["used_tokens"]);
    assert_eq!(keys[0]["call_count"], 12);
}

/// One sample line of the text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A strict parser of the Prometheus text exposition format (version 0.0.4): `# HELP` and
/// `# TYPE` lines, samples `name{label="value",…} value`, label values with `\\`, `\"`, `\n`
/// escapes; every sample belongs to a family declared by a preceding `# TYPE`, and no series
/// appears twice.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut series = HashSet::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for (n, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let parts: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match parts.as_slice() {
                ["HELP", name, _] => assert!(valid_name(name), "{at}"),
                ["TYPE", name, kind] => {
                    assert!(valid_name(name), "{at}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(kind),
                        "{at}"
                    );
                    assert!(
                        types
                            .insert((*name).to_owned(), (*kind).to_owned())
                            .is_none(),
                        "a family is declared once: {at}"
                    );
                }
                _ => {}
            }
            continue;
        }
        assert!(!line.trim().is_empty(), "no blank lines: {at}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{at}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "{at}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let end = loop {
                let Some(&(start, c)) = chars.peek() else {
                    panic!("unclosed labels: {at}")
                };
                if c == '}' {
                    break start;
                }
                let eq = inner[start..].find('=').unwrap_or_else(|| panic!("{at}")) + start;
                let label = &inner[start..eq];
                assert!(valid_name(label) && !label.starts_with("__"), "{at}");
                while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                    chars.next();
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{at}");
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            other => panic!("bad escape {other:?}: {at}"),
                        },
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {at}"),
                    }
                }
                assert!(labels.insert(label.to_owned(), value).is_none(), "{at}");
                match chars.peek() {
                    Some((_, ',')) => {
                        chars.next();
                    }
                    Some((_, '}')) => {}
                    _ => panic!("expected , or }}: {at}"),
                }
            };
            rest = &inner[end + 1..];
        }
        let fields: Vec<&str> = rest.split(' ').collect();
        assert!(
            fields.len() == 2 && fields[0].is_empty(),
            "one space, then the value (no timestamp): {at}"
        );
        let value = match fields[1] {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("bad value: {at}")),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its # TYPE: {at}");
        if name.ends_with("_bucket") && family != name {
            assert!(labels.contains_key("le"), "{at}");
        }
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "duplicate series: {at}"
        );
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

#[tokio::test]
async fn metrics_parse_and_match_the_store() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let (_, key) = server.create_key("observed").await;
    let mut totals = Expected::new();
    round_of_calls(&server, &key, &mut totals, true).await;
    round_of_calls(&server, &key, &mut totals, false).await;
    let r = post(&server.url, "/v1/chat/completions", Auth::None, &json!({})).await;
    assert_eq!(r.status(), 401, "counted apart, not recorded");
    let stats = server.wait_for_calls(8).await;

    let r = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let samples = parse_prometheus(&r.text().await.unwrap());
    let sum = |name: &str, kind: Option<&str>| -> u64 {
        samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| kind.is_none_or(|k| s.labels.get("kind").map(String::as_str) == Some(k)))
            .map(|s| s.value as u64)
            .sum()
    };
    assert_eq!(
        sum("token_console_tokens_total", Some("total")),
        stats["used_tokens"]
    );
    assert_eq!(
        sum("token_console_tokens_total", Some("prompt")),
        stats["prompt_tokens"]
    );
    assert_eq!(
        sum("token_console_tokens_total", Some("completion")),
        stats["completion_tokens"]
    );
    assert_eq!(
        sum("token_console_requests_total", None),
        stats["api_call_count"]
    );
    let errors: u64 = samples
        .iter()
        .filter(|s| s.name == "token_console_requests_total")
        .filter(|s| s.labels["status"] != "2xx")
        .map(|s| s.value as u64)
        .sum();
    assert_eq!(errors, stats["error_count"]);
    assert_eq!(sum("token_console_unauthenticated_requests_total", None), 1);
    // Histograms: cumulative buckets ending in +Inf = _count, per series.
    for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
        if s.labels["le"] == "+Inf" {
            let base = s.name.trim_end_matches("_bucket");
            let mut labels = s.labels.clone();
            labels.remove("le");
            let count = samples
                .iter()
                .find(|c| c.name == format!("{base}_count") && c.labels == labels)
                .unwrap_or_else(|| panic!("no _count for {s:?}"));
            assert_eq!(count.value, s.value);
        }
    }
    assert_eq!(sum("token_console_recorder_dropped_total", None), 0);
}

#[tokio::test]
async fn model_list_follows_provider_patterns_and_the_keys_allowed_models() {
    let mock = Mock::start();
    let dir = tempdir();
    // The mock lists mock-gpt and mock-claude; only mock-g* passes the pattern.
    let yaml = providers_with(
        &mock.url,
        "[\"mock-g*\", \"gpt-4o\"]",
        "[\"claude-3-haiku\"]",
        "",
    );
    let server = Server::start(dir.path(), &yaml);
    let (_, key) = server.create_key("lister").await;
    let (limited_id, limited) = server.create_key("gpt-lister").await;
    patch_key(&server, limited_id, json!({"allowed_models": ["gpt-*"]})).await;
    let list = |key: String| {
        let url = server.url.clone();
        async move {
            let r = reqwest::Client::new()
                .get(format!("{url}/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let all = list(key.clone()).await;
    assert_eq!(all["object"], "list");
    let data = all["data"].as_array().unwrap();
    for model in data {
        assert_eq!(model["object"], "model", "{model}");
        assert!(
            model["created"].is_u64() && model["owned_by"].is_string(),
            "{model}"
        );
    }
    let ids: HashSet<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, HashSet::from(["gpt-4o", "mock-gpt", "claude-3-haiku"]));
    let only = list(limited).await;
    let ids: Vec<&str> = only["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-4o"]);
    let rows = settle(&server, 2).await;
    assert_eq!(
        rows.iter()
            .filter(|r| r["endpoint"] == "/v1/models" && r["status"] == 200)
            .count(),
        2
    );
    assert!(rows.iter().all(|r| r["tokens"] == 0));
}
