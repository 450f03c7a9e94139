//! The recorder: a bounded queue in front of one writer thread that stores calls in batches.
//!
//! The writer thread drives its own loop (`Handle::block_on` on a thread that is not a runtime
//! worker): SQLite's synchronous writes block only that thread, and PostgreSQL's asynchronous
//! writes are awaited there.
//!
//! The queue is bounded in *records*, counted from the start of a call to the commit of its
//! record: a call takes a [`Slot`] when it starts (waiting at most the configured time for one,
//! else it is refused with 503), so when it ends its record always has room and is handed over
//! without waiting and without a task. A slot is freed only once its record is committed, so the
//! calls in flight plus the records not yet stored never exceed the queue's capacity, whatever
//! the store does — a store outage slows new calls down (and then refuses them) instead of
//! piling records up in memory. The writer thread takes whatever is queued (up to
//! [`MAX_BATCH`]) at least every [`BATCH_WINDOW`], writes it with its aggregates in one
//! transaction, then broadcasts the stored rows to live views. A batch that cannot be written is
//! retried until it is, and the recorder reports itself degraded meanwhile. On shutdown the
//! queue is closed and drained before the thread exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::{CallRecord, LoggedCall};
use crate::store::BatchWriter;

/// Default capacity of the queue: calls in flight plus records not yet committed (each call
/// holds one slot from its start to the commit of its record).
pub const QUEUE_CAPACITY: usize = 8_192;
/// Default longest wait of a new call for a slot before it is refused with 503.
pub const SLOT_WAIT: Duration = Duration::from_secs(10);
/// Records written at most in one transaction.
pub const MAX_BATCH: usize = 4_096;
/// How long a small batch waits for more records before it is written (well under the 100 ms
/// the specification allows between a call and its record).
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Live-view messages buffered per subscriber before it starts missing some.
const BROADCAST_CAPACITY: usize = 4_096;

enum Message {
    /// A record and the slot it occupies until it is committed.
    Record(Box<CallRecord>, OwnedSemaphorePermit),
    Flush(oneshot::Sender<()>),
}

/// One place in the record queue, held by a call from its start until its record is committed.
#[derive(Debug)]
pub struct Slot(OwnedSemaphorePermit);

/// No slot became free in time: the store is not keeping up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFull {
    /// What is wrong and what to do, for the client.
    pub message: String,
}

/// Counters describing the recorder, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderStats {
    /// Slots taken: calls in flight plus records not yet committed; never above `capacity`.
    pub queued: u64,
    /// The queue's capacity in records (`recorder_queue`).
    pub capacity: u64,
    /// Calls refused because no slot became free in time.
    pub refused: u64,
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
    refused: AtomicU64,
    last_wait_warning_ms: AtomicU64,
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// Called on the writer thread with each batch of records just committed (ingested records are
/// charged to budgets there: only the ones stored, so a record delivered twice is charged once).
pub type StoredHook = Box<dyn Fn(&[LoggedCall]) + Send + Sync>;

/// Hands call records to the writer thread; cheap to share behind an `Arc`.
pub struct Recorder {
    hook: Arc<OnceLock<StoredHook>>,
    tx: mpsc::UnboundedSender<Message>,
    slots: Arc<Semaphore>,
    capacity: usize,
    slot_wait: Duration,
    live: broadcast::Sender<Arc<LoggedCall>>,
    counters: Arc<Counters>,
    shutdown: Arc<Notify>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Recorder {
    /// Starts the writer thread with `writer` and the default queue; must be called inside a
    /// tokio runtime.
    pub fn start(writer: BatchWriter) -> std::io::Result<Self> {
        Self::start_with(writer, QUEUE_CAPACITY, SLOT_WAIT)
    }

    /// Starts the writer thread with a queue of `capacity` records, where a new call waits at
    /// most `slot_wait` for a slot; must be called inside a tokio runtime.
    pub fn start_with(
        writer: BatchWriter,
        capacity: usize,
        slot_wait: Duration,
    ) -> std::io::Result<Self> {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        // The semaphore bounds the channel: every record in it holds one of its permits.
        let (tx, rx) = mpsc::unbounded_channel();
        let (live, _) = broadcast::channel(BROADCAST_CAPACITY);
        let counters = Arc::new(Counters::default());
        let shutdown = Arc::new(Notify::new());
        let hook = Arc::new(OnceLock::new());
        let worker = Worker {
            hook: hook.clone(),
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
            hook,
            tx,
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            slot_wait,
            live,
            counters,
            shutdown,
            worker: Mutex::new(Some(handle)),
        })
    }

    /// Takes a slot for a call that starts: at once while the queue has room, else after waiting
    /// (at most the configured time) for records to be committed.
    pub async fn slot(&self) -> Result<Slot, QueueFull> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot(permit));
        }
        self.note_wait();
        match tokio::time::timeout(self.slot_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot(permit)),
            Ok(Err(_)) => Err(QueueFull {
                message: "the gateway is shutting down; retry on another instance".into(),
            }),
            Err(_) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                Err(QueueFull {
                    message: format!(
                        "the gateway cannot store call records fast enough ({} records wait for the database for over {} ms); retry later",
                        self.capacity,
                        self.slot_wait.as_millis()
                    ),
                })
            }
        }
    }

    /// Queues the record of the call that held `slot`; never waits.
    pub fn record_in(&self, slot: Slot, call: CallRecord) {
        if self
            .tx
            .send(Message::Record(Box::new(call), slot.0))
            .is_err()
        {
            self.count_dropped();
        }
    }

    /// Queues a record, waiting (without bound) for a slot while the queue is full.
    pub async fn record(&self, call: CallRecord) {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.note_wait();
                match self.slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return self.count_dropped(),
                }
            }
        };
        self.record_in(Slot(permit), call);
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
                capacity = self.capacity,
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
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Sets the function called with each committed batch; `false` when one is set already.
    pub fn on_stored(&self, hook: StoredHook) -> bool {
        self.hook.set(hook).is_ok()
    }

    /// Receives every record as soon as it is stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LoggedCall>> {
        self.live.subscribe()
    }

    /// Current counters.
    pub fn stats(&self) -> RecorderStats {
        let c = &self.counters;
        RecorderStats {
            queued: (self.capacity - self.slots.available_permits()) as u64,
            capacity: self.capacity as u64,
            refused: c.refused.load(Ordering::Relaxed),
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
        self.slots.close();
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
    hook: Arc<OnceLock<StoredHook>>,
    rx: mpsc::UnboundedReceiver<Message>,
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
        let mut slots = Vec::with_capacity(messages.len());
        let mut flushes = Vec::new();
        for message in messages.drain(..) {
            match message {
                Message::Record(call, slot) => {
                    records.push(*call);
                    slots.push(slot);
                }
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !records.is_empty() {
            self.write_until_stored(&records).await;
        }
        // Committed: the slots are free for new calls.
        drop(slots);
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
        if let Some(hook) = self.hook.get() {
            hook(&logged);
        }
        for call in logged {
            // No subscriber is fine: nobody is watching the live log.
            let _ = self.live.send(Arc::new(call));
        }
    }
}
