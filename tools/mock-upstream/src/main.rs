//! mock-upstream: a deterministic fake of the OpenAI and Anthropic HTTP APIs for token-console's
//! tests and benchmarks. See `behaviour` for the model names that trigger special behaviours.

mod anthropic;
mod b64;
mod behaviour;
mod cli;
mod errors;
mod http;
mod openai;
mod reply;
mod responses;
mod routes;
mod server;
mod sse;
mod stats;
mod words;

use std::future::IntoFuture;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::cli::{Command, Config};
use crate::server::{app, AppState};

/// How long in-flight requests may run after SIGINT/SIGTERM before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let config = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("mock-upstream: {message}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mock-upstream: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mock-upstream: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Binds, announces the address on stdout, and serves until a signal arrives.
async fn run(config: Config) -> std::io::Result<()> {
    let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
    let addr = listener.local_addr()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "mock-upstream listening on http://{addr}")?;
    stdout.flush()?;
    drop(stdout);
    let listener = listener.tap_io(|tcp| {
        // Small SSE events must leave at once; a failure only costs latency.
        let _ = tcp.set_nodelay(true);
    });
    let state = Arc::new(AppState::new(config.require_key));
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(shutdown_signal());
    tokio::select! {
        result = server.into_future() => result,
        () = grace_expired() => Ok(()),
    }
}

/// Resolves `SHUTDOWN_GRACE` after a signal, so stalled connections cannot hold the exit.
async fn grace_expired() {
    shutdown_signal().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate() => {}
    }
}

#[cfg(unix)]
async fn terminate() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut stream) => {
            stream.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}
