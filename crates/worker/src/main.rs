//! `hodei-worker`: the small static binary that goes into worker images.
//!
//! Exit codes: 0 after a shutdown, a finished segment or a signal, with
//! nothing the steps started left running; 1 when the server refused the
//! worker or it could not start; 2 for a bad setting; 3 when the server was
//! lost past the grace period; 4 when processes the steps started could not
//! all be ended (see `hodei_worker::run_process`).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use hodei_worker::WorkerArgs;

/// Connects to a Hodei server and runs the steps it assigns.
#[derive(Debug, Parser)]
#[command(name = "hodei-worker", version, about)]
struct Cli {
    #[command(flatten)]
    worker: WorkerArgs,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HODEI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let config = match cli.worker.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hodei-worker: {e}");
            return ExitCode::from(2);
        }
    };
    // One thread: the worker holds a single connection and mostly waits on
    // its steps, and a process that starts no runtime threads starts and
    // exits faster (a worker lives for one job).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hodei-worker: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(runtime.block_on(hodei_worker::run_process(
        config,
        stop_signal(),
        "hodei-worker: ",
    )))
}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
