//! Constant-rate (open-loop) and saturation (closed-loop) load over keep-alive connections.
//!
//! Open loop: a scheduler puts request `i` on a shared queue at its intended time
//! `t0 + i / rate`; the first idle connection takes it. Latency is measured from the intended
//! time, so requests that wait because the server is slow are counted as slow (no coordinated
//! omission). When the schedule ends, queued requests may still be sent for `--drain` seconds;
//! whatever is left is counted as `unsent` with its waiting time as a lower bound of its latency.
//! Closed loop (`--rate 0`): every connection sends back to back; that gives the throughput
//! at saturation, with latency measured from each actual send.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::cli::Options;
use crate::http::{exchange, Outcome, Target};
use crate::report::Latencies;
use crate::ticker::Ticker;

/// Shortest period of the scheduler's timer; faster rates release several requests per tick.
const MIN_TICK: Duration = Duration::from_micros(50);

#[derive(Default)]
struct Counts {
    sent: u64,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    io_errors: u64,
    timeouts: u64,
    unsent: u64,
    bytes: u64,
}

impl Counts {
    fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.io_errors + self.timeouts + self.unsent
    }

    fn to_json(&self) -> Value {
        let statuses: serde_json::Map<String, Value> = self
            .statuses
            .iter()
            .map(|(code, n)| (code.to_string(), json!(n)))
            .collect();
        json!({
            "sent": self.sent,
            "ok": self.ok,
            "status_errors": statuses,
            "io_errors": self.io_errors,
            "timeouts": self.timeouts,
            "unsent": self.unsent,
            "errors": self.errors(),
        })
    }
}

struct Stats {
    /// From intended send time (open loop) or actual send (closed loop); measured phase only.
    latency: Latencies,
    /// From actual send time; measured phase only.
    service: Latencies,
    measured: Counts,
    all: Counts,
    last_completion: Option<Instant>,
}

struct Shared {
    target: Target,
    queue: RefCell<VecDeque<Instant>>,
    notify: Notify,
    scheduling_done: Cell<bool>,
    t0: Instant,
    measure_from: Instant,
    measure_until: Instant,
    /// After this, queued requests are no longer sent.
    deadline: Instant,
    timeout: Duration,
    stats: RefCell<Stats>,
}

impl Shared {
    fn measured(&self, intended: Instant) -> bool {
        intended >= self.measure_from && intended < self.measure_until
    }

    fn count(&self, intended: Instant, f: impl Fn(&mut Counts)) {
        let mut stats = self.stats.borrow_mut();
        f(&mut stats.all);
        if self.measured(intended) {
            f(&mut stats.measured);
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

/// Runs the load described by the options and returns its JSON report.
pub async fn run(o: &Options) -> Result<Value, String> {
    let target = Target::new(&o.url, &o.headers, o.body.clone())?;
    let mut senders = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        let sender = target
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
        senders.push(sender);
    }
    let open_loop = o.rate > 0.0;
    // The timer starts first and t0 right after it, so that ticks fall on the intended times.
    let ticker = if open_loop {
        let period = Duration::from_secs_f64(1.0 / o.rate).max(MIN_TICK);
        Some(Ticker::new(period).map_err(|e| format!("cannot start the timer: {e}"))?)
    } else {
        None
    };
    let t0 = Instant::now();
    let measure_from = t0 + o.warmup;
    let measure_until = measure_from + o.duration;
    let shared = Rc::new(Shared {
        target,
        queue: RefCell::new(VecDeque::new()),
        notify: Notify::new(),
        scheduling_done: Cell::new(false),
        t0,
        measure_from,
        measure_until,
        deadline: measure_until + if open_loop { o.drain } else { Duration::ZERO },
        timeout: o.timeout,
        stats: RefCell::new(Stats {
            latency: Latencies::new()?,
            service: Latencies::new()?,
            measured: Counts::default(),
            all: Counts::default(),
            last_completion: None,
        }),
    });
    let mut workers = Vec::with_capacity(senders.len());
    for sender in senders {
        let shared = shared.clone();
        workers.push(tokio::task::spawn_local(async move {
            if open_loop {
                open_worker(&shared, sender).await;
            } else {
                closed_worker(&shared, sender).await;
            }
        }));
    }
    if let Some(ticker) = ticker {
        schedule(&shared, &ticker, o.rate).await?;
    }
    for worker in workers {
        worker
            .await
            .map_err(|e| format!("a load worker failed: {e}"))?;
    }
    let stats = shared.stats.borrow();
    let secs = o.duration.as_secs_f64();
    let schedule_end = measure_until;
    let lag = stats.last_completion.map_or(0.0, |t| {
        t.saturating_duration_since(schedule_end).as_secs_f64()
    });
    Ok(json!({
        "mode": if open_loop { "open-loop" } else { "closed-loop" },
        "url": o.url,
        "rate": o.rate,
        "connections": o.connections,
        "duration_s": secs,
        "warmup_s": o.warmup.as_secs_f64(),
        "achieved_rate": stats.measured.ok as f64 / secs,
        "measured": stats.measured.to_json(),
        "all": stats.all.to_json(),
        "response_bytes": stats.measured.bytes.checked_div(stats.measured.ok).unwrap_or(0),
        "latency_ms": stats.latency.summary(),
        "service_ms": stats.service.summary(),
        "finish_lag_s": lag,
    }))
}

/// Releases each request onto the queue at its intended time.
async fn schedule(shared: &Shared, ticker: &Ticker, rate: f64) -> Result<(), String> {
    let window = (shared.measure_until - shared.t0).as_secs_f64();
    let total = (window * rate).round() as u64;
    let mut next = 0u64;
    while next < total {
        let elapsed = shared.t0.elapsed().as_secs_f64();
        let due = ((elapsed * rate).floor() as u64 + 1).min(total);
        if next < due {
            let mut queue = shared.queue.borrow_mut();
            while next < due {
                queue.push_back(shared.t0 + Duration::from_secs_f64(next as f64 / rate));
                next += 1;
                shared.notify.notify_one();
            }
        }
        if next < total {
            ticker
                .tick()
                .await
                .map_err(|e| format!("the timer failed: {e}"))?;
        }
    }
    shared.scheduling_done.set(true);
    shared.notify.notify_waiters();
    Ok(())
}

async fn open_worker(shared: &Shared, sender: Sender) {
    let mut conn = Some(sender);
    loop {
        let next = shared.queue.borrow_mut().pop_front();
        let Some(intended) = next else {
            if shared.scheduling_done.get() {
                return;
            }
            shared.notify.notified().await;
            continue;
        };
        let now = Instant::now();
        if now >= shared.deadline {
            shared.count(intended, |c| c.unsent += 1);
            if shared.measured(intended) {
                shared.stats.borrow_mut().latency.record(now - intended);
            }
            continue;
        }
        send_one(shared, &mut conn, intended).await;
    }
}

async fn closed_worker(shared: &Shared, sender: Sender) {
    let mut conn = Some(sender);
    loop {
        let start = Instant::now();
        if start >= shared.deadline {
            return;
        }
        send_one(shared, &mut conn, start).await;
    }
}

/// Sends one request (reconnecting first if the connection was lost) and records it.
async fn send_one(shared: &Shared, conn: &mut Option<Sender>, intended: Instant) {
    let sender = match conn {
        Some(sender) => sender,
        None => match shared.target.connect().await {
            Ok(sender) => conn.insert(sender),
            Err(_) => {
                shared.count(intended, |c| c.io_errors += 1);
                return;
            }
        },
    };
    let start = Instant::now();
    shared.count(intended, |c| c.sent += 1);
    let result = tokio::time::timeout(shared.timeout, exchange(sender, &shared.target)).await;
    let end = Instant::now();
    let answered = match result {
        Ok((Outcome::Ok, n)) => {
            shared.count(intended, |c| {
                c.ok += 1;
                c.bytes += n as u64;
            });
            true
        }
        Ok((Outcome::Status(code), _)) => {
            shared.count(intended, |c| *c.statuses.entry(code).or_default() += 1);
            true
        }
        Ok((Outcome::Io, _)) => {
            shared.count(intended, |c| c.io_errors += 1);
            *conn = None;
            false
        }
        Err(_) => {
            shared.count(intended, |c| c.timeouts += 1);
            *conn = None;
            false
        }
    };
    let mut stats = shared.stats.borrow_mut();
    stats.last_completion = Some(end);
    if answered && shared.measured(intended) {
        stats.latency.record(end - intended);
        stats.service.record(end - start);
    }
}
