//! Assembles the program: the routers of each listener, start-up (store, recorder, keys) and the
//! graceful shutdown that writes every record before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt as _;

use crate::config::Config;
use crate::error::StartError;
use crate::state::AppState;
use crate::store::Store;
use crate::usage::Recorder;
use crate::{console, gateway};

/// How long in-flight requests may take to finish after SIGINT/SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The whole application on one listener: gateway, console, `/healthz` and `/metrics`.
///
/// Layers, outermost first: none beyond axum's routing. The gateway enforces its own body
/// limit (so a too-large body gets a protocol-shaped 413 and a record), the console API is
/// admits requests through the `console::auth::Admitted` extractor (a route layer inside its
/// router), and console pages add
/// their security headers themselves.
pub fn app(state: AppState) -> Router {
    let mut router = gateway_routes();
    if state.config.console.enabled {
        router = router.merge(console_routes(&state));
    }
    router.with_state(state)
}

/// The gateway listener's routes when the console has a listener of its own.
pub fn gateway_app(state: AppState) -> Router {
    gateway_routes().with_state(state)
}

/// The console listener's routes when it has a listener of its own.
pub fn console_app(state: AppState) -> Router {
    console_routes(&state)
        .route("/healthz", get(healthz))
        .with_state(state)
}

fn gateway_routes() -> Router<AppState> {
    gateway::router()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(gateway::wrong_method)
}

fn console_routes(state: &AppState) -> Router<AppState> {
    let path = state.config.console.path.clone();
    console::router(&state.console)
        .route("/", get(move || async move { Redirect::temporary(&path) }))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let r = state.recorder.stats();
    Json(serde_json::json!({
        "status": if r.degraded || r.dropped > 0 { "degraded" } else { "ok" },
        "recorder": {
            "queued": r.queued,
            "capacity": r.capacity,
            "refused": r.refused,
            "written": r.written,
            "dropped": r.dropped,
            "degraded": r.degraded,
            "queue_full_waits": r.waits,
            "last_error": state.recorder.last_error(),
        },
        "keys": {
            "store_lookups": state.keys.store_lookups(),
        },
        "sources": state
            .sources
            .health()
            .into_iter()
            .map(crate::console::wire::SourceHealth::from)
            .collect::<Vec<_>>(),
    }))
}

/// Prometheus metrics; guarded like the console (they name models and keys).
async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = console::auth::check(&state.console.gate, peer, &method, &uri, &headers) {
        let mut response = e.into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let body = state.metrics.render(state.recorder.stats());
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Connections the kernel may hold complete but not yet accepted (capped by
/// `net.core.somaxconn`). Tokio's default is 1,024: a burst of a few thousand clients
/// connecting at once — streams opened together — overflowed it while the accept loop caught up,
/// and some of them were reset.
const BACKLOG: u32 = 4096;

async fn bind(host: &str, port: u16) -> Result<TcpListener, StartError> {
    let fail = |e: std::io::Error| {
        StartError::Io(format!(
            "cannot listen on {host}:{port}: {e}; choose another port (--port / CONSOLE_GATEWAY_PORT, console.port / CONSOLE_PORT) or stop what uses it"
        ))
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await.map_err(fail)? {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(fail(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address")
    })))
}

/// Listens on `addr` as `TcpListener::bind` does (address reuse on), with a backlog of
/// [`BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// How a connection's silence is bounded.
#[derive(Clone, Copy)]
struct Timeouts {
    /// Until the first request's headers are complete (`client_header_timeout_ms`).
    first_request: Duration,
    /// Between the end of one answer and the next request (`client_idle_timeout_ms`).
    idle: Duration,
}

/// What one connection is doing, shared by its requests and its watchdog.
struct Activity {
    /// Requests whose answer is not yet fully sent.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Whether any request has begun on the connection.
    spoke: std::sync::atomic::AtomicBool,
    /// When the connection last went idle (opened, or an answer ended).
    idle_since: std::sync::Mutex<tokio::time::Instant>,
    /// Wakes the watchdog when an answer ends.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            spoke: std::sync::atomic::AtomicBool::new(false),
            idle_since: std::sync::Mutex::new(tokio::time::Instant::now()),
            changed: tokio::sync::Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.spoke.store(true, std::sync::atomic::Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    fn idle_since(&self) -> tokio::time::Instant {
        self.idle_since
            .lock()
            .map(|at| *at)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }
}

/// One request in flight on a connection, until its answer's body has been sent or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut at) = self.0.idle_since.lock() {
            *at = tokio::time::Instant::now();
        }
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// Resolves when the connection has been silent too long: no request within
/// `timeouts.first_request` of opening, or none within `timeouts.idle` of the last answer.
///
/// hyper's own `header_read_timeout` starts only once hyper-util has seen enough bytes to tell
/// HTTP/1 from HTTP/2 and does not apply to HTTP/2, so a client that connects and says nothing
/// (or one byte, or only the HTTP/2 preface) would otherwise hold a task and a descriptor forever.
async fn silence(activity: Arc<Activity>, timeouts: Timeouts) {
    loop {
        let limit = if activity.spoke.load(std::sync::atomic::Ordering::SeqCst) {
            timeouts.idle
        } else {
            timeouts.first_request
        };
        let deadline = activity.idle_since() + limit;
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = activity.changed.notified() => continue,
        }
        if activity.busy() {
            // A request is being answered: look again when an answer ends.
            activity.changed.notified().await;
            continue;
        }
        if activity.idle_since() + limit <= tokio::time::Instant::now() {
            return;
        }
    }
}

/// Serves one listener until `stop` turns true, then lets open connections finish.
///
/// Rather than `axum::serve`, connections are driven by hyper-util with a timer, so that a client
/// that opens a connection and never completes its request headers is dropped after
/// `client_header_timeout_ms`, and a kept-alive connection after `client_idle_timeout_ms` without
/// a request, instead of holding a task and a descriptor forever (see [`silence`]).
async fn serve(
    listener: TcpListener,
    router: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.first_request);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(timeouts.idle))
        .keep_alive_timeout(timeouts.first_request);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: say so and give the system a moment.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let tracked = activity.clone();
        let router = router.clone();
        let service = tower::service_fn(move |mut request: axum::extract::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let held = tracked.begin();
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await?;
                // The request counts as in flight until its answer's body is sent or dropped.
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                        let _held = &held;
                        frame
                    }))
                }))
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = silence(activity, timeouts) => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Runs the program until SIGINT/SIGTERM, then drains requests and records and returns.
pub async fn run(config: Config) -> Result<(), StartError> {
    let store = Store::open(&config.database, config.timezone.clone())?;
    let writer = store
        .batch_writer(config.console.max_logs)?
        .with_user_cap(config.console.usage_user_cap);
    let recorder = Arc::new(
        Recorder::start_with(
            writer,
            config.recorder_queue,
            Duration::from_millis(config.recorder_wait_ms),
        )
        .map_err(|e| StartError::Io(format!("cannot start the recorder: {e}")))?,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(config, store, recorder.clone(), stop_rx.clone()).await?;
    let config = state.config.clone();
    let gateway_listener = bind(&config.host, config.port).await?;
    let gateway_addr = gateway_listener
        .local_addr()
        .map_err(|e| StartError::Io(e.to_string()))?;
    let mut servers = tokio::task::JoinSet::new();
    let timeouts = Timeouts {
        first_request: Duration::from_millis(config.client_header_timeout_ms),
        idle: Duration::from_millis(config.client_idle_timeout_ms),
    };
    let console_url = if !config.console.enabled {
        "off".to_owned()
    } else if let Some(port) = config.console.separate_port {
        let listener = bind(&config.host, port).await?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Io(e.to_string()))?;
        servers.spawn(serve(
            listener,
            console_app(state.clone()),
            timeouts,
            stop_rx.clone(),
        ));
        format!("{}{}", url(addr), config.console.path)
    } else {
        format!("{}{}", url(gateway_addr), config.console.path)
    };
    let router = if config.console.enabled && config.console.separate_port.is_none() {
        app(state.clone())
    } else {
        gateway_app(state.clone())
    };
    servers.spawn(serve(gateway_listener, router, timeouts, stop_rx.clone()));
    tracing::info!(gateway = %url(gateway_addr), console = %console_url, "token-console started");
    println!(
        "token-console ready gateway={} console={console_url}",
        url(gateway_addr)
    );
    tokio::select! {
        () = termination() => tracing::info!("shutting down: finishing in-flight requests"),
        Some(result) = servers.join_next() => {
            if let Ok(Err(e)) = result {
                tracing::error!("a listener failed: {e}");
            }
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while servers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("some requests were still running after {DRAIN_TIMEOUT:?}; stopping anyway");
        servers.abort_all();
    }
    if let Some(alerter) = &state.alerter {
        alerter.shutdown().await;
    }
    // The sources stop reading (and give their leases up) before the recorder drains.
    state.sources.stopped(Duration::from_secs(5)).await;
    state.instance.shutdown().await;
    recorder.shutdown().await;
    if let Some(telemetry) = state.telemetry.clone() {
        // Flushing waits on the exporters' threads; keep it off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    let stats = recorder.stats();
    tracing::info!(written = stats.written, dropped = stats.dropped, "stopped");
    Ok(())
}
