//! loadgen: token-console's load generator. Open-loop constant-rate load with latency measured
//! from each request's intended send time (no coordinated omission), saturation load, many
//! concurrent streams, and sequential timed GETs; every figure goes to an HDR histogram and the
//! run's report is one JSON object on stdout. It runs on one thread (a current-thread tokio
//! runtime) so that it takes as little as possible of the CPU it shares with what it measures.

mod cli;
mod get;
mod http;
mod rate;
mod report;
mod stream;
mod ticker;

use std::process::ExitCode;

use cli::{Command, Mode, Options};

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("loadgen: {message}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(&options)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> Result<serde_json::Value, String> {
    match options.mode {
        Mode::Rate => rate::run(options).await,
        Mode::Stream => stream::run(options).await,
        Mode::Get => get::run(options).await,
    }
}
