//! Counters and the recent-request ring buffer behind `/_mock/stats` and `/_mock/requests`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use axum::http::{HeaderMap, Method};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::routes::Route;

/// How many recent requests `/_mock/requests` keeps.
const RING_CAPACITY: usize = 200;

/// One request as received, kept cheaply (the body is parsed only when asked for).
struct Recorded {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// How a streamed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client went away first.
    Disconnected,
    /// Every event was sent.
    Completed,
    /// The mock aborted it on purpose (`mock-drop-mid-stream`).
    Aborted,
}

/// Shared statistics; everything is atomic except the ring buffer and unknown-path counts.
#[derive(Default)]
pub struct Stats {
    requests: AtomicU64,
    by_route: [AtomicU64; Route::ALL.len()],
    other_paths: Mutex<HashMap<String, u64>>,
    disconnects: AtomicU64,
    completed_streams: AtomicU64,
    aborted_streams: AtomicU64,
    open_streams: AtomicI64,
    recent: Mutex<VecDeque<Recorded>>,
    reported: Mutex<Reported>,
}

/// The token usage the mock reported in its answers, summed (what a gateway should record).
#[derive(Default, Clone, Copy)]
struct Reported {
    /// Answers that carried usage.
    answers: u64,
    /// Uncached input tokens (OpenAI's `prompt_tokens` include cached ones; Anthropic's
    /// `input_tokens` do not).
    input: u64,
    /// Output tokens.
    output: u64,
    /// Input tokens read from the cache.
    cache_read: u64,
    /// Input tokens written to the cache.
    cache_creation: u64,
    /// Output tokens spent on reasoning (part of `output`).
    reasoning: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Stats {
    /// Counts a `/v1` request and keeps it in the ring buffer.
    pub fn record(&self, method: &Method, path: &str, headers: &HeaderMap, body: Bytes) {
        self.requests.fetch_add(1, Relaxed);
        match Route::from_path(path) {
            Some(route) => {
                self.by_route[route as usize].fetch_add(1, Relaxed);
            }
            None => *lock(&self.other_paths).entry(path.to_owned()).or_default() += 1,
        }
        let entry = Recorded {
            method: method.clone(),
            path: path.to_owned(),
            headers: headers.clone(),
            body,
        };
        let mut recent = lock(&self.recent);
        if recent.len() == RING_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// Adds the usage of one answer: uncached input, output (reasoning included), the cache
    /// reads and writes, and the reasoning part of the output.
    pub fn reported(
        &self,
        input: u64,
        output: u64,
        cache_read: u64,
        cache_creation: u64,
        reasoning: u64,
    ) {
        let mut reported = lock(&self.reported);
        reported.answers += 1;
        reported.input += input;
        reported.output += output;
        reported.cache_read += cache_read;
        reported.cache_creation += cache_creation;
        reported.reasoning += reasoning;
    }

    /// A streamed body started.
    pub fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Relaxed);
    }

    /// A streamed body was dropped, for the given reason.
    pub fn stream_closed(&self, end: StreamEnd) {
        self.open_streams.fetch_sub(1, Relaxed);
        let counter = match end {
            StreamEnd::Disconnected => &self.disconnects,
            StreamEnd::Completed => &self.completed_streams,
            StreamEnd::Aborted => &self.aborted_streams,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Zeroes the counters and forgets recorded requests. `open_streams` is a live gauge and
    /// is left alone (streams still running will decrement it when they end).
    pub fn reset(&self) {
        self.requests.store(0, Relaxed);
        self.by_route.iter().for_each(|c| c.store(0, Relaxed));
        lock(&self.other_paths).clear();
        self.disconnects.store(0, Relaxed);
        self.completed_streams.store(0, Relaxed);
        self.aborted_streams.store(0, Relaxed);
        lock(&self.recent).clear();
        *lock(&self.reported) = Reported::default();
    }

    /// The `/_mock/stats` document.
    pub fn snapshot(&self) -> Value {
        json!({
            "requests": self.requests.load(Relaxed),
            "by_path": self.by_path(),
            "disconnects": self.disconnects.load(Relaxed),
            "completed_streams": self.completed_streams.load(Relaxed),
            "aborted_streams": self.aborted_streams.load(Relaxed),
            "open_streams": self.open_streams.load(Relaxed),
            "reported": self.reported_json(),
        })
    }

    /// The usage reported so far: its parts and `tokens`, every input token processed
    /// (uncached, cache read, cache write) plus every output token.
    fn reported_json(&self) -> Value {
        let r = *lock(&self.reported);
        json!({
            "answers": r.answers,
            "input_tokens": r.input,
            "output_tokens": r.output,
            "cache_read_tokens": r.cache_read,
            "cache_creation_tokens": r.cache_creation,
            "reasoning_tokens": r.reasoning,
            "tokens": r.input + r.cache_read + r.cache_creation + r.output,
        })
    }

    fn by_path(&self) -> Map<String, Value> {
        let mut map: Map<String, Value> = Route::ALL
            .iter()
            .map(|r| {
                (
                    r.path().to_owned(),
                    self.by_route[*r as usize].load(Relaxed).into(),
                )
            })
            .collect();
        for (path, n) in lock(&self.other_paths).iter() {
            map.insert(path.clone(), (*n).into());
        }
        map
    }

    /// The `/_mock/requests` document: oldest first. Bodies are parsed outside the lock.
    pub fn recent(&self) -> Value {
        let copied: Vec<(Method, String, HeaderMap, Bytes)> = lock(&self.recent)
            .iter()
            .map(|r| {
                (
                    r.method.clone(),
                    r.path.clone(),
                    r.headers.clone(),
                    r.body.clone(),
                )
            })
            .collect();
        copied
            .into_iter()
            .map(|(method, path, headers, body)| {
                json!({
                    "method": method.as_str(),
                    "path": path,
                    "headers": headers_json(&headers),
                    "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
                })
            })
            .collect()
    }
}

/// Header names are already lowercase in a `HeaderMap`; repeated headers are joined by ", ".
fn headers_json(headers: &HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for name in headers.keys() {
        let joined = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        map.insert(name.as_str().to_owned(), Value::String(joined));
    }
    map
}
