//! fake-cliproxyapi: CLIProxyAPI's per-request usage export, for token-console's tests and
//! benchmarks, built from `/work/shared/cliproxyapi-usage.md` (CLIProxyAPI v7.2.140).
//!
//! One TCP port, as CLIProxyAPI: the first byte of a connection picks RESP (`* $ + - :`) or HTTP.
//! RESP: `AUTH`, `LPOP`/`RPOP usage [n]`, `SUBSCRIBE usage|errors` (pub/sub mode with `PING`,
//! `UNSUBSCRIBE`, `QUIT`). HTTP: `GET /v0/management/usage-queue?count=N`. Auth failures are
//! counted per IP (five ban the IP for 30 minutes, the right key included); records published to
//! subscribers are not queued; each subscriber has a 256-message buffer and is dropped when it is
//! full; queued records older than the retention window are dropped lazily.
//!
//! Test control (HTTP, no key): `POST /_fake/emit?from=I&count=N[&per_ms=K][&keys=a,b]` emits the
//! records of indexes `I..I+N` (deterministic by index, across provider families: Claude with
//! cache and thinking, Codex, Gemini, an OpenAI-compatible API-key provider, legacy records
//! without `token_breakdown`, failed retries sharing a `request_id`, image-tool extra records),
//! `K` per millisecond at most; `POST /_fake/raw` enqueues each line of its body as a payload;
//! `POST /_fake/publish_error`, `POST /_fake/refresh`; `POST /_fake/management?enabled=false`;
//! `GET /_fake/stats` (counters and the ban counter); `GET /_fake/delivered` (every payload that
//! left: popped or published).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Failed logins from one IP that ban it.
const BAN_AFTER: u32 = 5;
/// How long a ban lasts.
const BAN_FOR: Duration = Duration::from_secs(30 * 60);
/// Messages buffered per subscriber before it is dropped.
const SUBSCRIBER_BUFFER: usize = 256;
/// Most records emitted in one tick of a paced emission.
const MAX_BURST: u64 = 128;
/// Longest RESP bulk string accepted.
const MAX_BULK: usize = 1 << 20;

struct Subscriber {
    id: u64,
    channel: String,
    tx: mpsc::Sender<String>,
}

#[derive(Default)]
struct Counters {
    emitted: u64,
    published: u64,
    queued: u64,
    popped: u64,
    expired: u64,
    lost_to_slow_subscribers: u64,
    subscribers_dropped: u64,
    failed_logins: u64,
    rejected_while_banned: u64,
}

struct Fake {
    key: String,
    retention: Duration,
    management: bool,
    queue: VecDeque<(Instant, String)>,
    subscribers: Vec<Subscriber>,
    next_subscriber: u64,
    failures: HashMap<IpAddr, u32>,
    banned_until: HashMap<IpAddr, Instant>,
    counters: Counters,
    delivered: Vec<String>,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(fake: &Shared) -> std::sync::MutexGuard<'_, Fake> {
    fake.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a login was refused.
enum Refusal {
    Banned(Duration),
    Missing,
    Invalid,
}

impl Fake {
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.queue.front() {
            if now.duration_since(*at) <= self.retention {
                break;
            }
            self.queue.pop_front();
            self.counters.expired += 1;
        }
    }

    /// `Enqueue`: subscribers first; queued only when there is none.
    fn enqueue(&mut self, payload: String) {
        self.expire();
        self.counters.emitted += 1;
        let usage: Vec<usize> = (0..self.subscribers.len())
            .filter(|&i| self.subscribers[i].channel == "usage")
            .collect();
        if usage.is_empty() {
            self.queue.push_back((Instant::now(), payload));
            self.counters.queued += 1;
            return;
        }
        let mut dropped = Vec::new();
        for i in usage {
            if self.subscribers[i].tx.try_send(payload.clone()).is_err() {
                dropped.push(self.subscribers[i].id);
            }
        }
        self.counters.published += 1;
        if !dropped.is_empty() {
            self.counters.lost_to_slow_subscribers += dropped.len() as u64;
            self.counters.subscribers_dropped += dropped.len() as u64;
            self.subscribers.retain(|s| !dropped.contains(&s.id));
        }
        self.delivered.push(payload);
    }

    fn publish_error(&mut self, payload: String) {
        self.subscribers
            .retain(|s| s.channel != "errors" || s.tx.try_send(payload.clone()).is_ok());
    }

    fn pop(&mut self, n: usize) -> Vec<String> {
        self.expire();
        let n = n.min(self.queue.len());
        let out: Vec<String> = self.queue.drain(..n).map(|(_, p)| p).collect();
        self.counters.popped += out.len() as u64;
        self.delivered.extend(out.iter().cloned());
        out
    }

    /// `AuthenticateManagementKey`: a ban refuses even the right key; failures count per IP.
    fn authenticate(&mut self, ip: IpAddr, key: Option<&str>) -> Result<(), Refusal> {
        let now = Instant::now();
        if let Some(until) = self.banned_until.get(&ip) {
            if *until > now {
                self.counters.rejected_while_banned += 1;
                return Err(Refusal::Banned(*until - now));
            }
            self.banned_until.remove(&ip);
        }
        match key.filter(|k| !k.is_empty()) {
            Some(k) if k == self.key => {
                self.failures.remove(&ip);
                Ok(())
            }
            other => {
                self.fail(ip);
                Err(if other.is_none() {
                    Refusal::Missing
                } else {
                    Refusal::Invalid
                })
            }
        }
    }

    fn fail(&mut self, ip: IpAddr) {
        self.counters.failed_logins += 1;
        let n = self.failures.entry(ip).or_insert(0);
        *n += 1;
        if *n >= BAN_AFTER {
            self.failures.remove(&ip);
            self.banned_until.insert(ip, Instant::now() + BAN_FOR);
        }
    }
}

fn refusal_text(r: &Refusal) -> String {
    match r {
        Refusal::Banned(left) => format!(
            "IP banned due to too many failed attempts. Try again in {}m{}s",
            left.as_secs() / 60,
            left.as_secs() % 60
        ),
        Refusal::Missing => "missing management key".into(),
        Refusal::Invalid => "invalid management key".into(),
    }
}

// --- Records ----------------------------------------------------------------------------------

fn hex8(seed: u64) -> String {
    // SplitMix64: deterministic, well spread.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:08x}", (z ^ (z >> 31)) as u32)
}

fn auth_index(credential: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in credential.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

struct Buckets {
    uncached: i64,
    cache_read: i64,
    cache_write: i64,
    output: i64,
    reasoning: i64,
}

fn breakdown(b: &Buckets) -> Value {
    let input = b.uncached + b.cache_read + b.cache_write;
    let output = b.output + b.reasoning;
    json!({
        "schema_version": 2, "quality": "complete", "total_tokens": input + output,
        "input": {"total_tokens": input, "uncached_tokens": b.uncached,
                  "cache_read_tokens": b.cache_read, "cache_write_tokens": b.cache_write},
        "output": {"total_tokens": output, "non_reasoning_tokens": b.output,
                   "reasoning_tokens": b.reasoning},
        "unclassified_tokens": 0
    })
}

/// `tokens.*` as each provider family reports them (see the reference, § token_breakdown).
fn native_tokens(family: &str, b: &Buckets) -> Value {
    let (input, output, total) = match family {
        "independent" => (
            b.uncached,
            b.output + b.reasoning,
            b.uncached + b.cache_read + b.cache_write + b.output + b.reasoning,
        ),
        "separate" => {
            let input = b.uncached + b.cache_read + b.cache_write;
            (input, b.output, input + b.output + b.reasoning)
        }
        _ => {
            let input = b.uncached + b.cache_read + b.cache_write;
            (
                input,
                b.output + b.reasoning,
                input + b.output + b.reasoning,
            )
        }
    };
    let cached = if family == "independent" && b.cache_read == 0 {
        b.cache_write
    } else {
        b.cache_read
    };
    json!({
        "input_tokens": input, "output_tokens": output, "reasoning_tokens": b.reasoning,
        "cached_tokens": cached, "cache_read_tokens": b.cache_read,
        "cache_read_tokens_present": true, "cache_creation_tokens": b.cache_write,
        "total_tokens": total
    })
}

/// The record of index `i`: eight kinds in turn (see the module comment).
fn record(i: u64, keys: &[String], now: jiff::Timestamp) -> String {
    let kind = i % 8;
    let group = i / 8;
    let n = |m: u64| (i * 7919 + m * 104_729) % 97;
    let buckets = Buckets {
        uncached: 50 + n(1) as i64,
        cache_read: if i.is_multiple_of(3) {
            0
        } else {
            200 + n(2) as i64 * 3
        },
        cache_write: if i.is_multiple_of(5) {
            40 + n(3) as i64
        } else {
            0
        },
        output: 20 + n(4) as i64,
        reasoning: if i.is_multiple_of(2) {
            10 + n(5) as i64
        } else {
            0
        },
    };
    let zero = Buckets {
        uncached: 0,
        cache_read: 0,
        cache_write: 0,
        output: 0,
        reasoning: 0,
    };
    // (provider, executor, family, model, alias, credential, auth_type)
    let (provider, executor, family, model, alias, credential, auth_type) = match kind {
        0 => (
            "claude",
            "ClaudeExecutor",
            "independent",
            "claude-sonnet-4-5",
            "sonnet",
            if group.is_multiple_of(2) {
                "alice@example.com"
            } else {
                "bob@example.com"
            },
            "oauth",
        ),
        1 => (
            "codex",
            "CodexExecutor",
            "subset",
            "gpt-5-codex",
            "gpt-5-codex",
            "carol@example.com",
            "oauth",
        ),
        2 => (
            "gemini",
            "GeminiExecutor",
            "separate",
            "gemini-2.5-pro",
            "gemini-2.5-pro",
            "my-gcp-project",
            "oauth",
        ),
        3 => (
            "openrouter",
            "OpenAICompatExecutor",
            "subset",
            "deepseek/deepseek-chat",
            "deepseek",
            "sk-or-v1-0123456789abcdef0123456789abcdef",
            "apikey",
        ),
        4 => (
            "claude",
            "ClaudeExecutor",
            "independent",
            "claude-opus-4-1",
            "opus",
            "alice@example.com",
            "oauth",
        ),
        5 => (
            "codex",
            "CodexExecutor",
            "subset",
            "gpt-5",
            "gpt-5",
            "dave@example.com",
            "oauth",
        ),
        6 => (
            "codex",
            "CodexExecutor",
            "subset",
            "gpt-5",
            "gpt-5",
            "carol@example.com",
            "oauth",
        ),
        _ => (
            "codex",
            "CodexExecutor",
            "subset",
            "gpt-image-2",
            "gpt-5",
            "carol@example.com",
            "oauth",
        ),
    };
    // Kind 5 is a failed attempt retried as kind 6 on another credential; kind 7 is kind 6's
    // image-tool record (same id, same attempt start); kind 3 reuses kind 0's random id.
    let request_id = match kind {
        5..=7 => hex8(group * 8 + 5),
        3 => hex8(group * 8),
        _ => hex8(i),
    };
    let start = if kind == 7 { i - 1 } else { i };
    let ts = now
        .checked_sub(jiff::SignedDuration::from_millis(50))
        .unwrap_or(now)
        .checked_add(jiff::SignedDuration::from_nanos(start as i64 * 1_001))
        .unwrap_or(now);
    let failed = kind == 5;
    let b = if failed { &zero } else { &buckets };
    let api_key = if keys.is_empty() {
        String::new()
    } else {
        keys[(i as usize / 8) % keys.len()].clone()
    };
    let timestamp = ts.to_string();
    let auth = auth_index(credential);
    if kind == 4 {
        // An older CLIProxyAPI (v7.0.3 to v7.2.96): no accounting_version, no token_breakdown.
        return json!({
            "timestamp": timestamp, "latency_ms": 900 + n(6), "source": credential,
            "auth_index": auth,
            "tokens": {"input_tokens": b.uncached, "output_tokens": b.output + b.reasoning,
                       "reasoning_tokens": b.reasoning, "cached_tokens": b.cache_read,
                       "cache_read_tokens": b.cache_read, "cache_creation_tokens": b.cache_write,
                       "total_tokens": b.uncached + b.cache_read + b.cache_write + b.output + b.reasoning},
            "failed": false, "fail": {"status_code": 200, "body": ""},
            "provider": provider, "model": model, "alias": alias, "endpoint": "POST /v1/messages",
            "auth_type": auth_type, "api_key": api_key, "request_id": request_id
        })
        .to_string();
    }
    let mut rec = json!({
        "timestamp": timestamp, "latency_ms": 300 + n(6) * 10, "ttft_ms": if failed { 0 } else { 80 + n(7) },
        "source": credential, "auth_index": auth,
        "client_ip": "127.0.0.1", "x_forwarded_for": "", "user_agent": "claude-cli/2.1.3 (external, cli)",
        "tokens": native_tokens(family, b), "failed": failed, "generate": true,
        "fail": if failed { json!({"status_code": 429, "body": "{\"error\":{\"message\":\"rate limited\"}}"}) }
                else { json!({"status_code": 200, "body": ""}) },
        "accounting_version": 2, "token_breakdown": breakdown(b),
        "provider": provider, "executor_type": executor, "model": model, "alias": alias,
        "endpoint": if provider == "claude" { "POST /v1/messages" } else { "POST /v1/responses" },
        "auth_type": auth_type, "api_key": api_key, "request_id": request_id,
        "reasoning_effort": match kind { 1 => "high", 5..=7 => "medium", _ => "" },
        "service_tier": match kind { 5..=7 => "priority", _ if provider == "claude" => "default", _ => "auto" }
    });
    if auth_type == "oauth" {
        rec["access_token_sha256"] = json!(format!("{}{}", auth, auth).repeat(2));
    }
    rec.to_string()
}

// --- RESP ------------------------------------------------------------------------------------

/// One command, or why none could be read.
enum Frame {
    Command(Vec<String>),
    ProtocolError,
    Closed,
}

async fn read_line<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Option<String> {
    let mut line = String::new();
    match r.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
    }
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut BufReader<R>) -> Frame {
    let Some(header) = read_line(r).await else {
        return Frame::Closed;
    };
    let Some(n) = header
        .strip_prefix('*')
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return Frame::ProtocolError;
    };
    let mut args = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        let Some(item) = read_line(r).await else {
            return Frame::Closed;
        };
        match item.as_bytes().first() {
            Some(b'$') => {
                let Some(len) = item[1..].parse::<usize>().ok().filter(|&l| l <= MAX_BULK) else {
                    return Frame::ProtocolError;
                };
                let mut buf = vec![0; len + 2];
                if r.read_exact(&mut buf).await.is_err() {
                    return Frame::Closed;
                }
                buf.truncate(len);
                args.push(String::from_utf8_lossy(&buf).into_owned());
            }
            Some(b'+') | Some(b':') => args.push(item[1..].to_owned()),
            _ => return Frame::ProtocolError,
        }
    }
    Frame::Command(args)
}

fn bulk(s: &str) -> String {
    format!("${}\r\n{s}\r\n", s.len())
}

fn array(items: &[String]) -> String {
    let mut out = format!("*{}\r\n", items.len());
    for item in items {
        out.push_str(&bulk(item));
    }
    out
}

async fn serve_resp(stream: TcpStream, peer: SocketAddr, fake: Shared) {
    let ip = peer.ip();
    if !lock(&fake).management {
        return; // management off: closed without a reply
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut authed = false;
    loop {
        let args = match read_frame(&mut reader).await {
            Frame::Command(args) => args,
            Frame::ProtocolError => {
                let _ = write.write_all(b"-ERR protocol error\r\n").await;
                return;
            }
            Frame::Closed => return,
        };
        let Some(name) = args.first().map(|c| c.to_ascii_lowercase()) else {
            let _ = write.write_all(b"-ERR empty command\r\n").await;
            continue;
        };
        let reply = if name == "auth" {
            let key = match args.len() {
                2 => Some(args[1].as_str()),
                3 => Some(args[2].as_str()),
                _ => None,
            };
            let mut f = lock(&fake);
            if key.is_none() {
                f.fail(ip);
                "-ERR wrong number of arguments for 'auth' command\r\n".to_owned()
            } else {
                match f.authenticate(ip, key) {
                    Ok(()) => {
                        authed = true;
                        "+OK\r\n".to_owned()
                    }
                    Err(r) => format!("-ERR {}\r\n", refusal_text(&r)),
                }
            }
        } else if !authed {
            let mut f = lock(&fake);
            match f.banned_until.get(&ip) {
                Some(until) if *until > Instant::now() => {
                    let left = *until - Instant::now();
                    format!("-ERR {}\r\n", refusal_text(&Refusal::Banned(left)))
                }
                _ => {
                    f.fail(ip);
                    "-NOAUTH Authentication required.\r\n".to_owned()
                }
            }
        } else if name == "lpop" || name == "rpop" {
            pop_reply(&fake, &args)
        } else if name == "subscribe" {
            if args.len() != 2 {
                "-ERR wrong number of arguments for 'subscribe' command\r\n".to_owned()
            } else {
                let channel = args[1].trim().to_ascii_lowercase();
                if channel != "usage" && channel != "errors" {
                    format!("-ERR unsupported channel '{}'\r\n", args[1])
                } else {
                    subscribed(reader, write, &fake, channel, args[1].clone()).await;
                    return;
                }
            }
        } else {
            format!("-ERR unknown command '{name}'\r\n")
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn pop_reply(fake: &Shared, args: &[String]) -> String {
    if args.len() < 2 || args.len() > 3 {
        return format!(
            "-ERR wrong number of arguments for '{}' command\r\n",
            args[0].to_ascii_lowercase()
        );
    }
    if !args[1].trim().eq_ignore_ascii_case("usage") {
        return format!("-ERR unsupported channel '{}'\r\n", args[1]);
    }
    match args.get(2) {
        None => match lock(fake).pop(1).pop() {
            Some(p) => bulk(&p),
            None => "$-1\r\n".to_owned(),
        },
        Some(n) => match n.parse::<i64>() {
            Ok(n) if n > 0 => array(&lock(fake).pop(n as usize)),
            _ => "-ERR value is not an integer or out of range\r\n".to_owned(),
        },
    }
}

async fn subscribed(
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    fake: &Shared,
    channel: String,
    typed: String,
) {
    let (tx, mut rx) = mpsc::channel(SUBSCRIBER_BUFFER);
    let id = {
        let mut f = lock(fake);
        f.next_subscriber += 1;
        let id = f.next_subscriber;
        if channel == "usage" {
            let _ = tx.try_send(r#"{"support_refresh":true}"#.to_owned());
        }
        f.subscribers.push(Subscriber { id, channel, tx });
        id
    };
    let hello = format!("*3\r\n{}{}:1\r\n", bulk("subscribe"), bulk(&typed));
    if write.write_all(hello.as_bytes()).await.is_ok() {
        loop {
            tokio::select! {
                message = rx.recv() => {
                    // None: dropped for being too slow; the connection is closed.
                    let Some(payload) = message else { break };
                    // What else is buffered goes in the same write (one syscall, not one each).
                    let mut out = format!("*3\r\n{}{}{}", bulk("message"), bulk(&typed), bulk(&payload));
                    while let Ok(more) = rx.try_recv() {
                        out.push_str(&format!("*3\r\n{}{}{}", bulk("message"), bulk(&typed), bulk(&more)));
                    }
                    if write.write_all(out.as_bytes()).await.is_err() {
                        break;
                    }
                }
                frame = read_frame(&mut reader) => {
                    let reply = match frame {
                        Frame::Command(args) => match args.first().map(|c| c.to_ascii_lowercase()).as_deref() {
                            Some("ping") => match args.get(1) {
                                Some(x) => format!("*2\r\n{}{}", bulk("pong"), bulk(x)),
                                None => format!("*2\r\n{}$-1\r\n", bulk("pong")),
                            },
                            Some("unsubscribe") => {
                                let _ = write.write_all(format!("*3\r\n{}{}:0\r\n", bulk("unsubscribe"), bulk(&typed)).as_bytes()).await;
                                break;
                            }
                            Some("quit") => {
                                let _ = write.write_all(b"+OK\r\n").await;
                                break;
                            }
                            Some(other) => format!("-ERR unknown command '{other}'\r\n"),
                            None => "-ERR empty command\r\n".to_owned(),
                        },
                        _ => break,
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    lock(fake).subscribers.retain(|s| s.id != id);
}

// --- HTTP ------------------------------------------------------------------------------------

fn management_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        return Some(match v.split_once(' ') {
            Some((scheme, value)) if scheme.eq_ignore_ascii_case("bearer") => value.to_owned(),
            _ => v.to_owned(),
        });
    }
    headers
        .get("x-management-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn usage_queue(
    State(fake): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut f = lock(&fake);
    if !f.management {
        return StatusCode::NOT_FOUND.into_response();
    }
    // Behind the internal hop every peer is loopback, as the tests' collectors are.
    let _ = peer;
    let ip = IpAddr::from([127, 0, 0, 1]);
    if let Err(r) = f.authenticate(ip, management_key(&headers).as_deref()) {
        let status = match r {
            Refusal::Banned(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        return (status, Json(json!({"error": refusal_text(&r)}))).into_response();
    }
    let count = match q.get("count").map(|c| c.trim()).filter(|c| !c.is_empty()) {
        None => Some(1),
        Some(c) => c.parse::<i64>().ok().filter(|&n| n > 0),
    };
    let Some(count) = count else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "count must be a positive integer"})),
        )
            .into_response();
    };
    // Records are spliced in byte for byte; a payload that is not JSON goes as a JSON string.
    let items: Vec<String> = f
        .pop(count as usize)
        .into_iter()
        .map(|p| match serde_json::from_str::<Value>(&p) {
            Ok(_) => p,
            Err(_) => Value::String(p).to_string(),
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    (
        [
            ("content-type", "application/json; charset=utf-8"),
            ("x-cpa-version", "v7.2.140-fake"),
        ],
        body,
    )
        .into_response()
}

async fn emit(State(fake): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let num = |k: &str, d: u64| q.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(d);
    let (from, count, per_ms) = (num("from", 0), num("count", 1), num("per_ms", 0));
    let keys: Vec<String> = match q.get("keys") {
        Some(k) => k.split(',').map(str::to_owned).collect(),
        None => vec![
            "cpa-client-alpha".into(),
            "cpa-client-beta".into(),
            String::new(),
        ],
    };
    // Paced by the clock, not by sleeps: `per_ms` a millisecond on average, however long each
    // sleep really takes on a busy machine (a late tick emits what it owes).
    let started = Instant::now();
    let mut i = from;
    while i < from + count {
        let end = if per_ms == 0 {
            from + count
        } else {
            let owed = (started.elapsed().as_micros() as u64 * per_ms / 1000).max(1);
            // At most half a subscriber's buffer at once: CLIProxyAPI's records come one by one
            // from concurrent requests, never as a burst that fills the buffer in one go.
            (from + owed).clamp(i + 1, (i + MAX_BURST).min(from + count))
        };
        let now = jiff::Timestamp::now();
        {
            let mut f = lock(&fake);
            for j in i..end {
                let payload = record(j, &keys, now);
                f.enqueue(payload);
            }
        }
        i = end;
        if per_ms > 0 && i < from + count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Json(json!({"emitted": count})).into_response()
}

async fn raw(State(fake): State<Shared>, body: String) -> Json<Value> {
    let mut f = lock(&fake);
    let mut n = 0;
    for line in body.lines().filter(|l| !l.is_empty()) {
        f.enqueue(line.to_owned());
        n += 1;
    }
    Json(json!({"emitted": n}))
}

async fn publish_error(State(fake): State<Shared>, body: String) -> Json<Value> {
    lock(&fake).publish_error(body);
    Json(json!({}))
}

async fn refresh(State(fake): State<Shared>) -> Json<Value> {
    let mut f = lock(&fake);
    f.subscribers
        .retain(|s| s.channel != "usage" || s.tx.try_send(r#"{"refresh":true}"#.into()).is_ok());
    Json(json!({}))
}

async fn management(
    State(fake): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let mut f = lock(&fake);
    f.management = q.get("enabled").map(|v| v == "true").unwrap_or(true);
    if !f.management {
        f.queue.clear();
        f.subscribers.clear();
    }
    Json(json!({"management": f.management}))
}

async fn stats(State(fake): State<Shared>) -> Json<Value> {
    let mut f = lock(&fake);
    f.expire();
    let c = &f.counters;
    let ip = IpAddr::from([127, 0, 0, 1]);
    Json(json!({
        "emitted": c.emitted, "published": c.published, "queued": c.queued, "popped": c.popped,
        "expired": c.expired, "in_queue": f.queue.len(),
        "lost_to_slow_subscribers": c.lost_to_slow_subscribers,
        "subscribers_dropped": c.subscribers_dropped,
        "subscribers": f.subscribers.iter().filter(|s| s.channel == "usage").count(),
        "error_subscribers": f.subscribers.iter().filter(|s| s.channel == "errors").count(),
        "failed_logins": c.failed_logins,
        "failures_toward_ban": f.failures.get(&ip).copied().unwrap_or(0),
        "ban_limit": BAN_AFTER,
        "banned": f.banned_until.get(&ip).is_some_and(|u| *u > Instant::now()),
        "rejected_while_banned": c.rejected_while_banned,
        "delivered": f.delivered.len(),
    }))
}

async fn delivered(State(fake): State<Shared>) -> Response {
    let items: Vec<String> = lock(&fake)
        .delivered
        .iter()
        .map(|p| match serde_json::from_str::<Value>(p) {
            Ok(_) => p.clone(),
            Err(_) => Value::String(p.clone()).to_string(),
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    ([("content-type", "application/json")], body).into_response()
}

fn http_app(fake: Shared) -> Router {
    Router::new()
        .route("/v0/management/usage-queue", get(usage_queue))
        .route("/_fake/emit", post(emit))
        .route("/_fake/raw", post(raw))
        .route("/_fake/publish_error", post(publish_error))
        .route("/_fake/refresh", post(refresh))
        .route("/_fake/management", post(management))
        .route("/_fake/stats", get(stats))
        .route("/_fake/delivered", get(delivered))
        .with_state(fake)
}

// --- The one port ----------------------------------------------------------------------------

/// Sniffs the first byte: RESP here, HTTP to the internal HTTP listener.
async fn route(stream: TcpStream, peer: SocketAddr, http: SocketAddr, fake: Shared) {
    let mut first = [0u8; 1];
    let sniff = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await;
    if !matches!(sniff, Ok(Ok(1))) {
        return;
    }
    if matches!(first[0], b'*' | b'$' | b'+' | b'-' | b':') {
        serve_resp(stream, peer, fake).await;
        return;
    }
    let mut stream = stream;
    if let Ok(mut inner) = TcpStream::connect(http).await {
        let _ = inner.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut inner).await;
    }
}

struct Args {
    port: u16,
    key: String,
    retention: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        key: String::new(),
        retention: Duration::from_secs(60),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => args.port = value.parse().map_err(|_| "--port: a port number")?,
            "--key" => args.key = value,
            "--retention-seconds" => {
                let s: i64 = value.parse().map_err(|_| "--retention-seconds: seconds")?;
                // As `redis-usage-queue-retention-seconds`: <= 0 is 60, above 3600 is 3600.
                let s = if s <= 0 { 60 } else { s.min(3600) };
                args.retention = Duration::from_secs(s as u64);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.key.is_empty() {
        return Err("--key (the management secret) is required".into());
    }
    Ok(args)
}

async fn run(args: Args) -> std::io::Result<()> {
    let fake = Arc::new(Mutex::new(Fake {
        key: args.key,
        retention: args.retention,
        management: true,
        queue: VecDeque::new(),
        subscribers: Vec::new(),
        next_subscriber: 0,
        failures: HashMap::new(),
        banned_until: HashMap::new(),
        counters: Counters::default(),
        delivered: Vec::new(),
    }));
    let http = TcpListener::bind(("127.0.0.1", 0)).await?;
    let http_addr = http.local_addr()?;
    let app = http_app(fake.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let _ = axum::serve(http, app).await;
    });
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "fake-cliproxyapi listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(route(stream, peer, http_addr, fake.clone()));
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("fake-cliproxyapi: {e}\nusage: fake-cliproxyapi --key SECRET [--port P] [--retention-seconds S]");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-cliproxyapi: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-cliproxyapi: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdowns_follow_the_invariants_and_native_totals_agree() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        for i in 0..64 {
            let v: Value = serde_json::from_str(&record(i, &[], now)).unwrap();
            if let Some(b) = v.get("token_breakdown") {
                let input = &b["input"];
                assert_eq!(
                    input["total_tokens"].as_i64().unwrap(),
                    input["uncached_tokens"].as_i64().unwrap()
                        + input["cache_read_tokens"].as_i64().unwrap()
                        + input["cache_write_tokens"].as_i64().unwrap()
                );
                assert_eq!(b["total_tokens"], v["tokens"]["total_tokens"], "record {i}");
            }
        }
    }
}
