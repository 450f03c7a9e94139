//! The soak run behind `scripts/soak`: a steady, open-loop mix of calls (non-streams, OpenAI,
//! Anthropic and Responses streams, provider 500s, answers without usage, clients hanging up
//! mid-stream) at a fixed rate for minutes, against the binary the test was built with. Every
//! `SOAK_SAMPLE_SECS` it prints the server's resident memory, open descriptors and threads (tokio
//! does not expose its task count to another process; threads and descriptors are what every
//! task ends up holding), the recorder's queue and the provider's open streams. At the end it
//! checks that the records equal the calls answered, none was dropped, no transport failed,
//! descriptors returned to their baseline and memory stayed bounded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{raise_fd_limit, Figures, Proc};
use crate::common::{providers_yaml, tempdir, wait_until, Mock, Server};
use crate::gateway_support::settle;

/// One kind of call of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Non-stream chat completion.
    Chat,
    /// Non-stream call the provider reports no usage for (tokenizer estimate).
    NoUsage,
    /// OpenAI chat stream (the gateway adds and hides the usage chunk).
    ChatStream,
    /// Anthropic messages stream.
    MessagesStream,
    /// Responses API stream.
    ResponsesStream,
    /// The provider answers 500.
    ProviderError,
    /// The client reads the first chunk of a long stream and hangs up (499).
    HangUp,
}

/// The mix, one entry per twentieth of the calls.
const MIX: [Kind; 20] = [
    Kind::Chat,
    Kind::ChatStream,
    Kind::Chat,
    Kind::MessagesStream,
    Kind::Chat,
    Kind::ProviderError,
    Kind::Chat,
    Kind::HangUp,
    Kind::ChatStream,
    Kind::Chat,
    Kind::ResponsesStream,
    Kind::Chat,
    Kind::ChatStream,
    Kind::NoUsage,
    Kind::Chat,
    Kind::ProviderError,
    Kind::MessagesStream,
    Kind::HangUp,
    Kind::Chat,
    Kind::ChatStream,
];

const TEXT: &str = "soak test words for a steady load";

impl Kind {
    fn request(self) -> (&'static str, Value) {
        let chat = |model: &str, stream: bool| {
            json!({"model": model, "max_tokens": 16, "stream": stream,
                   "messages": [{"role": "user", "content": TEXT}]})
        };
        match self {
            Kind::Chat => ("/v1/chat/completions", chat("gpt-soak", false)),
            Kind::NoUsage => ("/v1/chat/completions", chat("mock-no-usage", false)),
            Kind::ChatStream => ("/v1/chat/completions", chat("mock-chunks-10-gap-20", true)),
            Kind::MessagesStream => ("/v1/messages", chat("mock-chunks-10-gap-20", true)),
            Kind::ResponsesStream => (
                "/v1/responses",
                json!({"model": "mock-chunks-10-gap-20", "stream": true, "input": TEXT}),
            ),
            Kind::ProviderError => ("/v1/chat/completions", chat("mock-error-500", false)),
            Kind::HangUp => ("/v1/chat/completions", chat("mock-chunks-50-gap-20", true)),
        }
    }

    fn expected_status(self) -> u16 {
        match self {
            Kind::ProviderError => 500,
            _ => 200,
        }
    }
}

/// What the load generator saw.
#[derive(Default)]
struct Tally {
    /// Calls the gateway answered (its response head arrived): each must be recorded.
    answered: AtomicU64,
    /// Answered 200 and read to the end.
    ok: AtomicU64,
    /// Answered with the provider's 500.
    provider_errors: AtomicU64,
    /// Hung up after the first chunk.
    hang_ups: AtomicU64,
    /// Unexpected outcomes: a transport error, a wrong status, a body that broke off.
    failures: AtomicU64,
    /// Calls in flight now.
    in_flight: AtomicU64,
}

async fn one_call(
    client: reqwest::Client,
    url: String,
    key: String,
    kind: Kind,
    tally: Arc<Tally>,
) {
    tally.in_flight.fetch_add(1, Ordering::Relaxed);
    let (path, body) = kind.request();
    let sent = client
        .post(format!("{url}{path}"))
        .bearer_auth(&key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(mut response) => {
            tally.answered.fetch_add(1, Ordering::Relaxed);
            let status = response.status().as_u16();
            if status != kind.expected_status() {
                tally.failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: {kind:?} answered {status}");
            } else if kind == Kind::HangUp {
                match response.chunk().await {
                    Ok(Some(_)) => {
                        drop(response);
                        tally.hang_ups.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        tally.failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: hang-up stream had no first chunk: {other:?}");
                    }
                }
            } else {
                match response.bytes().await {
                    Ok(_) if status == 500 => {
                        tally.provider_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tally.failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("soak: {kind:?} body broke off: {e}");
                    }
                }
            }
        }
        Err(e) => {
            tally.failures.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: {kind:?} not sent: {e}");
        }
    }
    tally.in_flight.fetch_sub(1, Ordering::Relaxed);
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

async fn health(server: &Server) -> Value {
    reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// One sample of the curve.
struct Sample {
    at: Duration,
    figures: Figures,
}

/// Runs the soak: `SOAK_MINUTES` at `SOAK_RATE` calls a second (default 200), sampling every
/// `SOAK_SAMPLE_SECS` (default 10). Without `SOAK_MINUTES` (as in the test suite) it is a short
/// soak: 12 seconds at 100 calls a second, sampled every 3 seconds, with the same checks.
pub async fn run() {
    let long = std::env::var("SOAK_MINUTES").is_ok();
    let minutes = env_number("SOAK_MINUTES", 0.2);
    let rate = env_number("SOAK_RATE", if long { 200.0 } else { 100.0 });
    let every = Duration::from_secs_f64(env_number(
        "SOAK_SAMPLE_SECS",
        if long { 10.0 } else { 3.0 },
    ));
    let length = Duration::from_secs_f64(minutes * 60.0);
    raise_fd_limit(16_384);

    let mock = Mock::start();
    let dir = tempdir();
    // Pooled upstream connections close after 2 s idle, so the final descriptor count shows
    // what is really held.
    let yaml = providers_yaml(&mock.url).replace(
        "models: [\"*\"] }",
        "models: [\"*\"], idle_timeout_ms: 2000 }",
    );
    let server = Server::start(dir.path(), &yaml);
    let proc = Proc::of(&server);
    let (_, key) = server.create_key("soak").await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // Warm up: one call of each kind (connections pooled, tokenizer loaded).
    let tally = Arc::new(Tally::default());
    let mut warm_up = 0u64;
    for kind in MIX.iter().copied().take(14) {
        one_call(
            client.clone(),
            server.url.clone(),
            key.clone(),
            kind,
            tally.clone(),
        )
        .await;
        warm_up += 1;
    }
    assert_eq!(
        tally.failures.load(Ordering::Relaxed),
        0,
        "the warm-up failed"
    );
    let warm = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (warm_ok, warm_errors, warm_hang_ups) = (
        warm(&tally.ok),
        warm(&tally.provider_errors),
        warm(&tally.hang_ups),
    );
    let baseline = proc.figures();
    eprintln!(
        "soak: {minutes} min at {rate} calls/s against {} (pid {}); baseline {baseline}",
        env!("CARGO_BIN_EXE_token-console"),
        proc.pid
    );
    eprintln!(
        "{:>6} {:>8} {:>7} {:>9} {:>8} {:>6} {:>7} {:>7} {:>9} {:>9}",
        "time",
        "calls",
        "rate/s",
        "in-flight",
        "rss MiB",
        "fds",
        "threads",
        "queued",
        "written",
        "mock-open"
    );

    let started = Instant::now();
    let mut samples = vec![Sample {
        at: Duration::ZERO,
        figures: baseline,
    }];
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_sample = every;
    let mut made = 0u64;
    let mut last_made = 0u64;
    while started.elapsed() < length {
        ticker.tick().await;
        let kind = MIX[(made % MIX.len() as u64) as usize];
        tasks.spawn(one_call(
            client.clone(),
            server.url.clone(),
            key.clone(),
            kind,
            tally.clone(),
        ));
        made += 1;
        while tasks.try_join_next().is_some() {}
        if started.elapsed() >= next_sample {
            let figures = proc.figures();
            let h = health(&server).await;
            let open = mock.stats().await["open_streams"].clone();
            eprintln!(
                "{:>5}s {:>8} {:>7.1} {:>9} {:>8.1} {:>6} {:>7} {:>7} {:>9} {:>9}",
                next_sample.as_secs(),
                made,
                (made - last_made) as f64 / every.as_secs_f64(),
                tally.in_flight.load(Ordering::Relaxed),
                mib(figures.rss_kb),
                figures.fds,
                figures.threads,
                h["recorder"]["queued"].as_u64().unwrap_or(0),
                h["recorder"]["written"].as_u64().unwrap_or(0),
                open.as_i64().unwrap_or(-1)
            );
            assert_eq!(h["recorder"]["dropped"], 0, "records were dropped: {h}");
            samples.push(Sample {
                at: next_sample,
                figures,
            });
            last_made = made;
            next_sample += every;
        }
    }
    let ran = started.elapsed();
    while tasks.join_next().await.is_some() {}
    drop(client);

    let answered = tally.answered.load(Ordering::Relaxed) - warm_up;
    let failures = tally.failures.load(Ordering::Relaxed);
    // Every call the gateway answered is recorded exactly once (settle sends a sentinel, waits
    // for it and checks the count is exact).
    let recorded_calls = tally.answered.load(Ordering::Relaxed);
    // Hang-ups are recorded when the gateway notices them: wait for those before the sentinel.
    server.wait_for_calls(recorded_calls).await;
    settle(&server, recorded_calls).await;
    let stats = server.data("/api/console/stats").await;
    let h = health(&server).await;
    wait_until("the provider's streams are all closed", || async {
        (mock.stats().await["open_streams"] == 0).then_some(())
    })
    .await;
    let end = proc.fds_settle(baseline, 6).await;
    let peak = samples.iter().map(|s| s.figures.rss_kb).max().unwrap_or(0);
    let first_third: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at <= length / 3 && s.at > Duration::ZERO)
        .collect();
    let early_peak = first_third
        .iter()
        .map(|s| s.figures.rss_kb)
        .max()
        .unwrap_or(baseline.rss_kb);

    eprintln!(
        "\nsoak: {:.0} s, {made} calls sent ({:.1}/s): {} answered — {} ok, {} provider 500s, {} hang-ups — {failures} failures",
        ran.as_secs_f64(),
        made as f64 / ran.as_secs_f64(),
        answered,
        tally.ok.load(Ordering::Relaxed) - warm_ok,
        tally.provider_errors.load(Ordering::Relaxed) - warm_errors,
        tally.hang_ups.load(Ordering::Relaxed) - warm_hang_ups,
    );
    eprintln!(
        "records: api_call_count {} = calls answered {recorded_calls} (+1 sentinel); success {} error {}; recorder written {} dropped {}",
        stats["api_call_count"],
        stats["success_count"],
        stats["error_count"],
        h["recorder"]["written"],
        h["recorder"]["dropped"]
    );
    eprintln!(
        "rss: baseline {:.1} MiB, end {:.1} MiB, peak {:.1} MiB (first third peak {:.1}); fds: baseline {}, end {}; threads: baseline {}, end {}",
        mib(baseline.rss_kb),
        mib(end.rss_kb),
        mib(peak),
        mib(early_peak),
        baseline.fds,
        end.fds,
        baseline.threads,
        end.threads
    );
    assert_eq!(failures, 0, "every call got the answer it should");
    assert_eq!(h["recorder"]["dropped"], 0, "{h}");
    assert_eq!(
        stats["api_call_count"].as_u64().unwrap(),
        recorded_calls + 1,
        "records = responses"
    );
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    assert_eq!(
        stats["success_count"].as_u64().unwrap(),
        count(&tally.ok),
        "every 200 is recorded as a success"
    );
    assert_eq!(
        stats["error_count"].as_u64().unwrap(),
        count(&tally.provider_errors) + count(&tally.hang_ups) + 1,
        "every 500 and hang-up (and the sentinel's 404) is recorded as an error"
    );
    assert!(
        end.rss_kb <= early_peak + 64 * 1024,
        "memory kept growing: {:.1} MiB in the first third, {:.1} MiB at the end",
        mib(early_peak),
        mib(end.rss_kb)
    );
}
