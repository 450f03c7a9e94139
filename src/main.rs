//! The `token-console` binary: reads the configuration, starts logging, runs the server, and
//! turns any start-up error into one clear message and a non-zero exit code.

use std::process::ExitCode;

use token_console::config::{Cli, Config};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &config.log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::io::stderr.and(std::sync::Mutex::new(file)))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::from_env_and_args();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("token-console: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("token-console: {e}");
        return ExitCode::from(2);
    }
    let reprice = cli
        .command
        .as_ref()
        .map(|token_console::config::Command::Reprice { from }| from.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("token-console: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(from) = reprice {
        return match runtime.block_on(token_console::reprice::command(&config, from.as_deref())) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("token-console: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(token_console::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("token-console: {e}");
            ExitCode::FAILURE
        }
    }
}
