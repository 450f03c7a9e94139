//! Assembles the program: the routers of each listener, start-up (store, recorder, keys) and the
//! graceful shutdown that writes every record before exiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
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
/// wrapped by `console::auth::require_console_access` inside its router, and console pages add
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
    console::router(state).route("/", get(move || async move { Redirect::temporary(&path) }))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let r = state.recorder.stats();
    Json(serde_json::json!({
        "status": if r.degraded || r.dropped > 0 { "degraded" } else { "ok" },
        "recorder": {
            "queued": r.queued,
            "written": r.written,
            "dropped": r.dropped,
            "degraded": r.degraded,
            "queue_full_waits": r.waits,
            "last_error": state.recorder.last_error(),
        },
    }))
}

/// Prometheus metrics; guarded like the console (they name models and keys).
async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = console::auth::check(&state, peer, &headers) {
        return e.into_response();
    }
    let body = state.metrics.render(state.recorder.stats());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, StartError> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        StartError::Io(format!(
            "cannot listen on {host}:{port}: {e}; choose another port (--port / CONSOLE_GATEWAY_PORT, console.port / CONSOLE_PORT) or stop what uses it"
        ))
    })
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

/// Serves one listener until `stop` turns true, then lets open connections finish.
///
/// Rather than `axum::serve`, connections are driven by hyper-util with a timer, so that a client
/// that opens a connection and never completes its request headers is dropped after
/// `header_timeout` (`client_header_timeout_ms`) instead of holding a task and a descriptor forever.
async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
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
        let service =
            router
                .clone()
                .map_request(move |mut request: axum::extract::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Runs the program until SIGINT/SIGTERM, then drains requests and records and returns.
pub async fn run(config: Config) -> Result<(), StartError> {
    let store = Store::open(&config.database, config.timezone.clone())?;
    let writer = store.batch_writer(config.console.max_logs)?;
    let recorder = Arc::new(
        Recorder::start(writer)
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
    let header_timeout = Duration::from_millis(config.client_header_timeout_ms);
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
            header_timeout,
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
    servers.spawn(serve(
        gateway_listener,
        router,
        header_timeout,
        stop_rx.clone(),
    ));
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
