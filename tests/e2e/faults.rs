//! The fault matrix, part two, against the real binary and the mock upstream (or a fake upstream
//! for answers the mock cannot give): answers that are not JSON or not SSE, an error page from a
//! proxy, an answer too large to keep whole, a client that sends its body slowly or vanishes
//! halfway through it, a client that never reads its stream, 2,000 concurrent streams and a disk
//! that fills up. Each test checks what the client gets, the one record kept for the call, that
//! other clients are still served, and that nothing leaks: the server's open file descriptors
//! return to their baseline, its resident memory stays bounded, and no stream is left open at
//! the provider. (`soak` is the long run behind `scripts/soak`; `cargo test` skips it.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use crate::faults_support::*;
use crate::gateway_support::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEXT: &str = "fault matrix words";
/// Open descriptors allowed above the baseline once a fault is over (log files, the odd pooled
/// connection still closing).
const FD_SLACK: usize = 8;
/// Resident memory a short fault may add above the baseline (allocator caches, lazily built
/// tables): generous, since it only has to tell "bounded" from "buffered a whole stream".
const RSS_SLACK_KB: u64 = 24 * 1024;
/// How long a misbehaving client misbehaves (the fault itself, not a synchronisation).
const PAUSE: Duration = Duration::from_millis(300);

/// One ordinary call in each protocol, checked: the server serves other clients.
async fn served(server: &Server, key: &str) {
    for proto in BOTH {
        let (status, _, body) = ask(server, proto, proto.auth(key), "gpt-ok", TEXT).await;
        assert_eq!(status, 200, "{proto:?}: {body}");
    }
}

/// Calls made by [`warm_up`].
const WARM_UP_CALLS: u64 = 4;

/// Brings the server to its steady state before a baseline is taken: connections pooled and the
/// tokenizer loaded (its tables are tens of MiB; a call without usage needs it).
async fn warm_up(server: &Server, key: &str) {
    served(server, key).await;
    for proto in BOTH {
        let (status, _, body) = ask(server, proto, proto.auth(key), "mock-no-usage", TEXT).await;
        assert_eq!(status, 200, "{proto:?}: {body}");
    }
    // Estimates run off the async workers and are recorded when done: once the calls are
    // recorded, the tokenizer is loaded.
    server.wait_for_calls(WARM_UP_CALLS).await;
}

/// After a fault: other clients are served, no stream is left open at the provider, the open
/// descriptors are back near `baseline`, and resident memory is within `rss_slack_kb` of it.
async fn nothing_leaks(
    server: &Server,
    key: &str,
    mock: &Mock,
    proc: Proc,
    baseline: Figures,
    rss_slack_kb: u64,
) -> Figures {
    served(server, key).await;
    wait_until("no stream left open at the provider", || async {
        (mock.stats().await["open_streams"] == 0).then_some(())
    })
    .await;
    let after = proc.fds_settle(baseline, FD_SLACK).await;
    eprintln!("before: {baseline}\nafter:  {after}");
    assert!(
        after.rss_kb <= baseline.rss_kb + rss_slack_kb,
        "resident memory grew from {baseline} to {after}"
    );
    after
}

/// The rows of `rows` for `endpoint` with `model` and `stream`; exactly one.
fn the_row(rows: &[Value], endpoint: &str, model: &str, stream: bool) -> Value {
    let found: Vec<&Value> = rows
        .iter()
        .filter(|r| r["endpoint"] == endpoint && r["model"] == model && r["stream"] == stream)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one row for {endpoint} {model} stream={stream}: {rows:#?}"
    );
    found[0].clone()
}

/// Invalid JSON and invalid SSE from the provider reach the client exactly as sent (the gateway
/// passes answers through; it does not judge them), and the record says what was wrong: the
/// status the client got, an error text, and tokens estimated from the prompt since the answer
/// reported none.
#[tokio::test]
async fn invalid_json_and_invalid_sse_reach_the_client_as_sent_and_are_recorded_as_such() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let proc = Proc::of(&server);
    let (id, key) = server.create_key("garbage").await;
    warm_up(&server, &key).await;
    let baseline = proc.figures();
    for proto in BOTH {
        let body = proto.body("mock-garbage", TEXT, 20, false);
        let r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(r.status(), 200, "{proto:?}: the provider's status");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.text().await.unwrap(), "this is not json{", "{proto:?}");

        let body = proto.body("mock-garbage", TEXT, 20, true);
        let r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
        assert_eq!(r.status(), 200, "{proto:?}");
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let expected = match proto {
            Proto::OpenAi => "data: {not json\n\n",
            Proto::Anthropic => "event: message_start\ndata: {not json\n\n",
        };
        assert_eq!(r.text().await.unwrap(), expected, "{proto:?}");
    }
    let rows = settle(&server, WARM_UP_CALLS + 4).await;
    for proto in BOTH {
        for stream in [false, true] {
            let row = the_row(&rows, proto.path(), "mock-garbage", stream);
            assert_eq!(row["status"], 200, "{row}");
            assert_eq!(row["key_id"], id);
            let error = row["error"].as_str().unwrap_or_default();
            let said = if stream {
                "the provider's stream had malformed events"
            } else {
                "the provider's answer is not valid JSON"
            };
            assert!(error.contains(said), "{row}");
            assert_eq!(row["estimated"], true, "{row}");
            let [prompt, completion, .., total] = row_tokens(&row);
            assert!(prompt > 0, "the prompt is estimated: {row}");
            assert_eq!(completion, 0, "no answer text could be read: {row}");
            assert_eq!(total, prompt);
        }
    }
    nothing_leaks(&server, &key, &mock, proc, baseline, RSS_SLACK_KB).await;
}

/// An error answer that is not JSON (an HTML page from a proxy in front of the provider) is
/// passed on unchanged, and the record keeps the status and the page's text as its error.
#[tokio::test]
async fn an_error_page_that_is_not_json_is_passed_on_and_its_text_recorded() {
    let page = "<html><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>\n";
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    let upstream = canned_upstream(response.into_bytes()).await;
    let dir = tempdir();
    let yaml = format!(
        "providers:\n  - {{ name: behind-a-proxy, kind: openai, base_url: \"{upstream}/v1\", api_key: \"{PROVIDER_KEY}\" }}\n  - {{ name: anthropic-behind-a-proxy, kind: anthropic, base_url: \"{upstream}\", api_key: \"{PROVIDER_KEY}\" }}\n"
    );
    let server = Server::start(dir.path(), &yaml);
    let proc = Proc::of(&server);
    let (_, key) = server.create_key("proxied").await;
    let baseline = proc.figures();
    for proto in BOTH {
        for stream in [false, true] {
            let body = proto.body("gpt-4o", TEXT, 20, stream);
            let r = post(&server.url, proto.path(), proto.auth(&key), &body).await;
            assert_eq!(r.status(), 502, "{proto:?}");
            assert_eq!(r.headers()["content-type"], "text/html");
            assert_eq!(r.text().await.unwrap(), page, "passed on unchanged");
        }
    }
    let rows = settle(&server, 4).await;
    for proto in BOTH {
        for stream in [false, true] {
            let row = the_row(&rows, proto.path(), "gpt-4o", stream);
            assert_eq!(row["status"], 502, "{row}");
            let error = row["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("is not JSON") && error.contains("502 Bad Gateway"),
                "the record quotes the page: {row}"
            );
            assert_eq!(row["tokens"], 0, "a failed call spends nothing: {row}");
        }
    }
    wait_until("the connections to the fake upstream close", || async {
        let now = proc.figures();
        (now.fds <= baseline.fds + FD_SLACK).then_some(())
    })
    .await;
}

/// An answer larger than the gateway keeps in memory to read its usage (24 MiB of embeddings):
/// it reaches the client whole and unchanged, and its usage is still read (from its end) rather
/// than estimated, without the gateway holding the whole answer.
#[tokio::test]
async fn a_very_large_answer_is_passed_on_and_its_usage_still_read() {
    let mut body =
        String::from(r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":["#);
    while body.len() < 24 * 1024 * 1024 {
        body.push_str("0.0123456789,");
    }
    body.push_str(
        r#"0.5]}],"model":"text-embedding-3-large","usage":{"prompt_tokens":7,"total_tokens":7}}"#,
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let upstream = canned_upstream(response.into_bytes()).await;
    let dir = tempdir();
    let yaml = format!(
        "providers:\n  - {{ name: big, kind: openai, base_url: \"{upstream}/v1\", api_key: \"{PROVIDER_KEY}\" }}\n"
    );
    let server = Server::start(dir.path(), &yaml);
    let (id, key) = server.create_key("big-batch").await;
    let request = json!({"model": "text-embedding-3-large", "input": ["one", "two"]});
    let r = call(&server.url, "/v1/embeddings", &key, &request).await;
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.unwrap();
    assert_eq!(got.len(), body.len(), "the whole answer arrived");
    assert!(got == body.as_bytes(), "unchanged");
    let rows = settle(&server, 1).await;
    let row = one_row(&rows, "/v1/embeddings", 200);
    assert_eq!(row["key_id"], id);
    assert_eq!(row["error"], Value::Null, "{row}");
    assert_eq!(
        row["estimated"], false,
        "the reported usage was read: {row}"
    );
    assert_eq!(row_tokens(&row), [7, 0, 0, 0, 0, 7], "{row}");
}

/// A client that sends its request body in parts with pauses between them (by `Content-Length`
/// and chunked) is served like any other: the provider gets the whole body and the call is
/// recorded with its exact usage.
#[tokio::test]
async fn a_client_that_sends_its_body_slowly_is_served() {
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let proc = Proc::of(&server);
    let (id, key) = server.create_key("slow-sender").await;
    warm_up(&server, &key).await;
    let baseline = proc.figures();
    for (proto, chunked) in [(Proto::OpenAi, false), (Proto::Anthropic, true)] {
        let body = serde_json::to_vec(&proto.body("gpt-slow", TEXT, 20, false)).unwrap();
        let (head, parts) = if chunked {
            (
                post_head(&server.url, proto.path(), &key, None),
                chunked_parts(&body, 5),
            )
        } else {
            (
                post_head(&server.url, proto.path(), &key, Some(body.len())),
                split(&body, 5),
            )
        };
        let r = send_slowly(&server.url, &head, &parts, PAUSE).await;
        assert_eq!(
            r.status,
            200,
            "{proto:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let answer = r.json();
        let prompt = match proto {
            Proto::OpenAi => &answer["usage"]["prompt_tokens"],
            Proto::Anthropic => &answer["usage"]["input_tokens"],
        };
        assert_eq!(prompt, &json!(mock_prompt(TEXT)), "{answer}");
        let seen = mock.requests().await;
        let last = seen.last().unwrap();
        assert_eq!(last["path"], proto.path());
        assert_eq!(
            serde_json::to_vec(&last["body"]).unwrap(),
            serde_json::to_vec(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap(),
            "the provider got the whole body"
        );
    }
    let rows = settle(&server, WARM_UP_CALLS + 2).await;
    for proto in BOTH {
        let row = the_row(&rows, proto.path(), "gpt-slow", false);
        assert_eq!(row["status"], 200, "{row}");
        assert_eq!(row["key_id"], id);
        assert_eq!(row["estimated"], false);
        let [prompt, completion, cache_read, cache_creation, _, total] = row_tokens(&row);
        // Anthropic's input_tokens excludes the cache tokens the prompt counts.
        let cached = match proto {
            Proto::OpenAi => 0,
            Proto::Anthropic => cache_read + cache_creation,
        };
        assert_eq!(prompt, mock_prompt(TEXT) + cached, "{row}");
        assert_eq!(completion, mock_completion(20));
        assert_eq!(total, prompt + completion);
    }
    nothing_leaks(&server, &key, &mock, proc, baseline, RSS_SLACK_KB).await;
}

/// Clients that send half their body and hang up: each call is recorded once as 499 with a
/// message saying the body never arrived, nothing reaches the provider, and the clients calling
/// at the same time are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_body_is_recorded_499() {
    const QUITTERS: usize = 20;
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let proc = Proc::of(&server);
    let (id, key) = server.create_key("quitter").await;
    warm_up(&server, &key).await;
    let baseline = proc.figures();
    let before = mock.stats().await["requests"].as_u64().unwrap();
    let quitters: Vec<_> = (0..QUITTERS)
        .map(|i| {
            let (url, key) = (server.url.clone(), key.clone());
            tokio::spawn(async move {
                let proto = if i % 2 == 0 {
                    Proto::OpenAi
                } else {
                    Proto::Anthropic
                };
                let body = serde_json::to_vec(&proto.body("gpt-half", TEXT, 20, false)).unwrap();
                let chunked = i % 4 < 2;
                let (head, mut parts) = if chunked {
                    (
                        post_head(&url, proto.path(), &key, None),
                        chunked_parts(&body, 2),
                    )
                } else {
                    (
                        post_head(&url, proto.path(), &key, Some(body.len())),
                        split(&body, 2),
                    )
                };
                parts.truncate(1);
                let mut stream = connect(&url).await;
                stream.write_all(head.as_bytes()).await.unwrap();
                stream.write_all(&parts[0]).await.unwrap();
                stream.flush().await.unwrap();
                // The fault: the client stalls halfway through its body, then vanishes.
                tokio::time::sleep(PAUSE).await;
                drop(stream);
            })
        })
        .collect();
    served(&server, &key).await;
    for q in quitters {
        q.await.unwrap();
    }
    // The quitters' records come when the gateway notices they are gone.
    let calls = WARM_UP_CALLS + QUITTERS as u64 + 2;
    server.wait_for_calls(calls).await;
    let rows = settle(&server, calls).await;
    let quit: Vec<&Value> = rows.iter().filter(|r| r["status"] == 499).collect();
    assert_eq!(quit.len(), QUITTERS, "one 499 row per quitter: {rows:#?}");
    for row in quit {
        assert_eq!(row["key_id"], id, "{row}");
        assert_eq!(
            row["error"], "the client closed the connection before sending the whole request body",
            "{row}"
        );
        assert_eq!(row["tokens"], 0, "nothing was forwarded: {row}");
    }
    assert_eq!(
        mock.stats().await["requests"].as_u64().unwrap() - before,
        2,
        "only the complete calls reached the provider"
    );
    nothing_leaks(&server, &key, &mock, proc, baseline, RSS_SLACK_KB).await;
}

/// A client that reads the headers of a long stream and then stops reading: the gateway does
/// not buffer the provider's answer for it (it pulls from the provider only as fast as the
/// client takes), so its memory stays bounded and the provider's stream stays unfinished; other
/// clients are served meanwhile; when the client closes, the upstream request is cancelled and
/// the call recorded as 499 with the tokens passed on until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_not_buffered_for_and_is_recorded_499() {
    // 100,000 chunks are ~27 MB: far more than the socket buffers between the three processes
    // hold, so the provider can only finish if the gateway buffered the stream itself.
    const MODEL: &str = "mock-chunks-100000-gap-0";
    const STREAM_KB: u64 = 26 * 1024;
    let mock = Mock::start();
    let (_dir, server) = start_behind(&mock, "");
    let proc = Proc::of(&server);
    let (id, key) = server.create_key("never-reads").await;
    warm_up(&server, &key).await;
    let baseline = proc.figures();

    let body = serde_json::to_vec(&Proto::OpenAi.body(MODEL, TEXT, 100_000, true)).unwrap();
    let mut stream = connect(&server.url).await;
    let head = post_head(&server.url, Proto::OpenAi.path(), &key, Some(body.len()));
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while head_end(&seen).is_none() {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the gateway answered: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"), "{seen:?}");
    wait_until("the provider's stream has started", || async {
        (mock.stats().await["open_streams"] == 1).then_some(())
    })
    .await;

    // The fault: the client reads nothing more for a while. Meanwhile others are served.
    let mut peak = proc.figures();
    for _ in 0..10 {
        tokio::time::sleep(PAUSE).await;
        served(&server, &key).await;
        let now = proc.figures();
        peak.rss_kb = peak.rss_kb.max(now.rss_kb);
    }
    eprintln!(
        "baseline: {baseline}\nwhile the client does not read: peak rss {:.1} MiB",
        peak.rss_kb as f64 / 1024.0
    );
    let stats = mock.stats().await;
    assert_eq!(
        (
            stats["open_streams"].as_i64(),
            stats["completed_streams"].as_u64()
        ),
        (Some(1), Some(0)),
        "the provider's stream waits for the client, it is not drained into the gateway: {stats}"
    );
    assert!(
        peak.rss_kb < baseline.rss_kb + STREAM_KB / 2,
        "the gateway buffers the stream: {baseline}, peak rss {} KiB",
        peak.rss_kb
    );
    drop(stream);

    wait_until("the provider sees the disconnect", || async {
        (mock.stats().await["disconnects"] == 1).then_some(())
    })
    .await;
    server.wait_for_calls(WARM_UP_CALLS + 20 + 1).await;
    let rows = settle(&server, WARM_UP_CALLS + 20 + 1).await;
    let row = one_row(&rows, Proto::OpenAi.path(), 499);
    assert_eq!(row["model"], MODEL);
    assert_eq!(row["key_id"], id);
    assert_eq!(
        row["error"],
        "the client closed the connection before the answer was complete"
    );
    let [prompt, completion, .., total] = row_tokens(&row);
    assert!(
        prompt > 0 && completion > 0,
        "the tokens passed on are counted: {row}"
    );
    assert!(completion < 100_000, "{row}");
    assert_eq!(total, prompt + completion);
    assert_eq!(row["estimated"], true);
    assert_eq!(mock.stats().await["completed_streams"], 0);
    nothing_leaks(&server, &key, &mock, proc, baseline, RSS_SLACK_KB).await;
}

/// Reads one stream of the 2,000: waits at `barrier` once the first content chunk arrived (so
/// that all are open at once), then reads the rest and checks it.
async fn one_of_many(
    client: reqwest::Client,
    url: String,
    key: String,
    barrier: Arc<tokio::sync::Barrier>,
    at_barrier: Arc<dyn Fn() + Send + Sync>,
) {
    let body = Proto::OpenAi.body("mock-chunks-20-gap-200", TEXT, 20, true);
    let mut r = client
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut seen = String::new();
    while !seen.contains("tok0") {
        let chunk = r.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    if barrier.wait().await.is_leader() {
        at_barrier();
    }
    while let Some(chunk) = r.chunk().await.unwrap() {
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let events = sse_events(&seen);
    let content = events
        .iter()
        .filter(|e| e.data.contains("\"content\":\"tok") || e.data.contains("\"content\":\" tok"))
        .count();
    assert_eq!(content, 20, "every chunk arrived: {seen}");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert!(
        events.iter().all(|e| e.json()["usage"].is_null()),
        "the usage chunk the gateway asked for is hidden: {seen}"
    );
}

/// Runs one burst of `n` concurrent streams; returns the server's figures while all were open.
async fn burst(server: &Server, key: &str, proc: Proc, n: usize) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let at_barrier = Arc::new(Mutex::new(None));
    let sample = {
        let at_barrier = at_barrier.clone();
        Arc::new(move || {
            *at_barrier.lock().unwrap() = Some(proc.figures());
        }) as Arc<dyn Fn() + Send + Sync>
    };
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(one_of_many(
                client.clone(),
                server.url.clone(),
                key.to_owned(),
                barrier.clone(),
                sample.clone(),
            ))
        })
        .collect();
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .expect("2,000 streams finish within three minutes");
    let figures = at_barrier.lock().unwrap().take().unwrap();
    figures
}

/// Counts the log rows matching `query`, paging with `before_id`.
async fn count_rows(server: &Server, query: &str, check: impl Fn(&Value)) -> usize {
    let mut count = 0;
    let mut before: Option<i64> = None;
    loop {
        let page_query = match before {
            Some(id) => format!("limit=1000&{query}&before_id={id}"),
            None => format!("limit=1000&{query}"),
        };
        let page = server.logs(&page_query).await;
        if page.is_empty() {
            return count;
        }
        for row in &page {
            check(row);
        }
        count += page.len();
        before = page.last().unwrap()["id"].as_i64();
    }
}

/// 2,000 streams open at the same time, in three bursts: every one completes with all its chunks,
/// every one is recorded once as 200 with its exact usage, the open descriptors go back to their
/// baseline after each burst, and later bursts do not add what the first one did to memory (no
/// growth per call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_concurrent_streams_complete_and_are_recorded() {
    const STREAMS: usize = 2_000;
    const BURSTS: u64 = 3;
    // The gateway holds two sockets per stream, this process and the mock one each.
    let limit = raise_fd_limit(16_384);
    assert!(
        limit >= 3 * STREAMS as u64,
        "the open-files limit ({limit}) is too low for {STREAMS} streams"
    );
    let mock = Mock::start();
    let dir = tempdir();
    // Pooled upstream connections close after 1 s idle, so the baseline is reachable again.
    let yaml = format!(
        "console: {{max_logs: 10000}}\n{}",
        providers_with(&mock.url, "[\"*\"]", "[\"*\"]", "idle_timeout_ms: 1000")
    );
    let server = Server::start(dir.path(), &yaml);
    let proc = Proc::of(&server);
    let (_, key) = server.create_key("crowd").await;
    warm_up(&server, &key).await;
    let baseline = proc.figures();
    let mut after = Vec::new();
    for round in 1..=BURSTS {
        let open = burst(&server, &key, proc, STREAMS).await;
        eprintln!("burst {round}: with {STREAMS} streams open: {open}");
        assert!(
            open.fds >= STREAMS,
            "all client connections were open at once: {open}"
        );
        let calls = WARM_UP_CALLS + round * STREAMS as u64;
        let stats = server.wait_for_calls(calls).await;
        assert_eq!(stats["api_call_count"], calls, "{stats}");
        assert_eq!(stats["success_count"], calls, "{stats}");
        let rows = count_rows(&server, "model=mock-chunks-20-gap-200", |row| {
            assert_eq!(row["status"], 200, "{row}");
            assert_eq!(row["stream"], true, "{row}");
            assert_eq!(row["estimated"], false, "{row}");
            assert_eq!(row["completion_tokens"], 20, "{row}");
            assert_eq!(row["prompt_tokens"], mock_prompt(TEXT), "{row}");
        })
        .await;
        assert_eq!(rows as u64, round * STREAMS as u64);
        let settled = proc.fds_settle(baseline, FD_SLACK).await;
        eprintln!("burst {round}: after: {settled}");
        after.push(settled);
    }
    assert_eq!(mock.stats().await["open_streams"], 0);
    assert_eq!(
        mock.stats().await["completed_streams"],
        BURSTS * STREAMS as u64
    );
    // The first burst grows the allocator's pools and SQLite's page caches; later ones reuse
    // them. A call that left its state behind (tens of KiB a stream) would add ~100 MiB a burst.
    assert!(
        after[2].rss_kb <= after[0].rss_kb + 64 * 1024,
        "memory grows with every burst: {} then {} then {}",
        after[0],
        after[1],
        after[2]
    );
    served(&server, &key).await;
}

fn integrity(db: &std::path::Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0))
        .unwrap()
}

/// The database's disk fills up (a 2 MiB tmpfs): calls are still answered, `/healthz` says
/// degraded with SQLite's reason, and once space is freed every record waiting in memory is
/// written and the database is intact. Needs root to mount the tmpfs; says so and skips when the
/// machine does not allow it.
#[tokio::test]
async fn a_full_disk_delays_records_and_loses_none() {
    let dir = tempdir();
    let disk_dir = dir.path().join("disk");
    let Some(disk) = Tmpfs::mount(&disk_dir, "2m") else {
        eprintln!("SKIPPED a_full_disk_delays_records_and_loses_none: cannot mount a tmpfs here (needs root)");
        return;
    };
    let mock = Mock::start();
    let db = disk_dir.join("tc.db");
    let url = format!("sqlite://{}", db.display());
    let server = Server::start_with(
        dir.path(),
        &providers_yaml(&mock.url),
        &[("CONSOLE_DATABASE_URL", url.as_str())],
    );
    let proc = Proc::of(&server);
    let (_, key) = server.create_key("full-disk").await;
    warm_up(&server, &key).await;
    let baseline = proc.figures();
    let mut made = WARM_UP_CALLS;

    let filler = disk.fill();
    // Long model names make records big, so the database needs new pages soon.
    let model = format!("gpt-{}", "x".repeat(200));
    let chat =
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": TEXT}]});
    let degraded = loop {
        for _ in 0..20 {
            let r = call(&server.url, "/v1/chat/completions", &key, &chat).await;
            assert_eq!(r.status(), 200, "calls are answered while the disk is full");
            made += 1;
        }
        let h = server.healthz().await;
        if h["status"] == "degraded" {
            break h;
        }
        assert!(made < 20_000, "the full disk was never noticed: {h}");
    };
    let reason = degraded["recorder"]["last_error"]
        .as_str()
        .unwrap_or_default();
    eprintln!("degraded after {made} calls: {degraded}");
    assert!(reason.contains("full"), "the reason is given: {degraded}");
    assert_eq!(degraded["recorder"]["dropped"], 0);
    for _ in 0..20 {
        let r = call(&server.url, "/v1/chat/completions", &key, &chat).await;
        assert_eq!(r.status(), 200);
        made += 1;
    }

    std::fs::remove_file(filler).unwrap();
    let stats = server.wait_for_calls(made).await;
    assert_eq!(
        stats["api_call_count"], made,
        "every record was written: {stats}"
    );
    wait_until("healthz ok again", || async {
        let h = server.healthz().await;
        (h["status"] == "ok").then_some(())
    })
    .await;
    let h = server.healthz().await;
    assert_eq!(h["recorder"]["dropped"], 0, "{h}");
    assert!(
        server.stderr().contains("cannot write call records"),
        "the failure was logged"
    );
    assert_eq!(integrity(&db), "ok");
    nothing_leaks(&server, &key, &mock, proc, baseline, RSS_SLACK_KB).await;
}

/// The soak: a short one in the suite (12 s of mixed calls), the long one behind `scripts/soak`
/// (`SOAK_MINUTES`, default 30 there, at `SOAK_RATE` per second against the release build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    crate::faults_support::soak::run().await;
}
