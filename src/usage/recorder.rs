//! The recorder: a bounded queue in front of one writer thread that stores calls in batches.
//!
//! The writer thread drives its own loop (`Handle::block_on` on a thread that is not a runtime
//! worker): SQLite's synchronous writes block only that thread, and PostgreSQL's asynchronous
//! writes are awaited there.
//!
//! Callers hand a [`CallRecord`] to [`Recorder::record`] and go on; nothing on the request path
//! waits for the database. The writer thread takes whatever is queued (up to [`MAX_BATCH`]),
//! writes it with its aggregates in one transaction, then broadcasts the stored rows to live
//! views. A full queue makes callers wait (back-pressure) instead of dropping records; a batch
//! that cannot be written is retried until it is, and the recorder reports itself degraded
//! meanwhile. On shutdown the queue is closed and drained before the thread exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, Notify};

use super::{CallRecord, LoggedCall};
use crate::store::BatchWriter;

/// Records queued at most before callers wait.
pub const QUEUE_CAPACITY: usize = 65_536;
/// Records written at most in one transaction.
pub const MAX_BATCH: usize = 4_096;
/// How long a small batch waits for more records before it is written (well under the 100 ms
/// the specification allows between a call and its record).
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Live-view messages buffered per subscriber before it starts missing some.
const BROADCAST_CAPACITY: usize = 4_096;

enum Message {
    Record(Box<CallRecord>),
    Flush(oneshot::Sender<()>),
}

/// Counters describing the recorder, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderStats {
    /// Records waiting in the queue.
    pub queued: u64,
    /// Records written since start.
    pub written: u64,
    /// Records lost (queue closed); must stay 0.
    pub dropped: u64,
    /// Transactions committed since start.
    pub batches: u64,
    /// Whether the last write failed and is being retried.
    pub degraded: bool,
    /// Times a caller found the queue full and had to wait.
    pub waits: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    batches: AtomicU64,
    waits: AtomicU64,
    last_wait_warning_ms: AtomicU64,
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Hands call records to the writer thread; cheap to share behind an `Arc`.
pub struct Recorder {
    tx: mpsc::Sender<Message>,
    live: broadcast::Sender<Arc<LoggedCall>>,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the writer thread with `writer`; must be called inside a tokio runtime.
    pub fn start(writer: BatchWriter) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        let counters = Arc::new(Counters::default());
        let shutdown = Arc::new(Notify::new());
        let worker = Worker {
            rx,
            writer,
            live: live.clone(),
            counters: counters.clone(),
            shutdown: shutdown.clone(),
        };
        let runtime = tokio::runtime::Handle::current();
        let handle = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || runtime.block_on(worker.run()))?;
        Ok(Self {
            tx,
            live,
            counters,
            shutdown,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Queues a record; waits only while the queue is full.
    pub async fn record(&self, call: CallRecord) {
        if self.tx.capacity() == 0 {
            self.note_wait();
        }
        if self.tx.send(Message::Record(Box::new(call))).await.is_err() {
            self.count_dropped();
        }
    }

    /// Queues a record from code that cannot wait (e.g. a `Drop`); never loses it while the
    /// recorder runs: with a full queue the send continues on a task.
    pub fn record_detached(self: &Arc<Self>, call: CallRecord) {
        match self.tx.try_send(Message::Record(Box::new(call))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(message)) => {
                self.note_wait();
                let this = self.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => {
                        handle.spawn(async move {
                            if this.tx.send(message).await.is_err() {
                                this.count_dropped();
                            }
                        });
                    }
                    Err(_) => self.count_dropped(),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.count_dropped(),
        }
    }

    /// Counts a caller that found the queue full, and says so in the log (at most every 10 s).
    fn note_wait(&self) {
        let c = &self.counters;
        c.waits.fetch_add(1, Ordering::Relaxed);
        let now = jiff::Timestamp::now().as_millisecond().max(0) as u64;
        let last = c.last_wait_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && c.last_wait_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                capacity = QUEUE_CAPACITY,
                "the record queue is full: calls wait for the store (is the database slow or failing?)"
            );
        }
    }

    fn count_dropped(&self) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        tracing::error!("a call record was dropped: the recorder is shut down");
    }

    /// Waits until every record queued before this call is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Receives every record as soon as it is stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedCall>> {
        self.live.subscribe()
    }

    /// Current counters.
    pub fn stats(&self) -> RecorderStats {
        let c = &self.counters;
        RecorderStats {
            queued: (QUEUE_CAPACITY - self.tx.capacity()) as u64,
            written: c.written.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            degraded: c.degraded.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
        }
    }

    /// The last write error, while degraded.
    pub fn last_error(&self) -> Option<String> {
        self.counters
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or(None)
    }

    /// Stops accepting records, writes everything queued, and waits for the writer thread.
    pub async fn shutdown(&self) {
        self.shutdown.notify_one();
        let handle = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the recorder thread ended abnormally");
            }
        }
    }
}

fn has_flush(messages: &[Message]) -> bool {
    messages.iter().any(|m| matches!(m, Message::Flush(_)))
}

struct Worker {
    rx: mpsc::Receiver<Message>,
    writer: BatchWriter,
    live: broadcast::Sender<Arc<LoggedCall>>,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
}

impl Worker {
    async fn run(mut self) {
        let mut messages = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        loop {
            let received = if closing {
                self.rx.recv_many(&mut messages, MAX_BATCH).await
            } else {
                tokio::select! {
                    n = self.rx.recv_many(&mut messages, MAX_BATCH) => n,
                    () = self.shutdown.notified() => {
                        closing = true;
                        self.rx.close();
                        continue;
                    }
                }
            };
            if received == 0 {
                break;
            }
            if !closing && received < MAX_BATCH && !has_flush(&messages) {
                closing = self.gather(&mut messages).await;
            }
            self.handle(&mut messages).await;
        }
    }

    /// Waits one [`BATCH_WINDOW`] for more records to join a small batch (one transaction per
    /// call would cost a WAL commit each), then takes what arrived; returns whether shutdown began.
    async fn gather(&mut self, messages: &mut Vec<Message>) -> bool {
        let closing = tokio::select! {
            () = tokio::time::sleep(BATCH_WINDOW) => false,
            () = self.shutdown.notified() => {
                self.rx.close();
                true
            }
        };
        while messages.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(message) => messages.push(message),
                Err(_) => break,
            }
        }
        closing
    }

    async fn handle(&mut self, messages: &mut Vec<Message>) {
        let mut records = Vec::with_capacity(messages.len());
        let mut flushes = Vec::new();
        for message in messages.drain(..) {
            match message {
                Message::Record(call) => records.push(*call),
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !records.is_empty() {
            self.write_until_stored(&records).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }

    /// Writes one batch, retrying with back-off until the database takes it.
    async fn write_until_stored(&mut self, records: &[CallRecord]) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.writer.write(records).await {
                Ok(logged) => {
                    self.stored(logged);
                    return;
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::error!(
                        records = records.len(),
                        "cannot write call records, retrying in {delay:?}: {message}"
                    );
                    self.counters.degraded.store(true, Ordering::Relaxed);
                    if let Ok(mut last) = self.counters.last_error.lock() {
                        *last = Some(message);
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn stored(&self, logged: Vec<LoggedCall>) {
        let c = &self.counters;
        if c.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("call records are being written again");
            if let Ok(mut last) = c.last_error.lock() {
                *last = None;
            }
        }
        c.written.fetch_add(logged.len() as u64, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        for call in logged {
            // No subscriber is fine: nobody is watching the live log.
            let _ = self.live.send(Arc::new(call));
        }
    }
}
