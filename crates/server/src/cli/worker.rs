//! `hodei worker`: the worker, from the `hodei` executable. The same code,
//! flags and environment variables as `hodei-worker` (the worker library's
//! [`WorkerArgs`]), so the local backend can start workers as
//! `hodei worker` of its own executable when no `hodei-worker` binary is
//! installed next to it.

use std::process::ExitCode;

use hodei_worker::WorkerArgs;

/// Run a worker: connect to a Hodei server and run the steps it assigns
///
/// Every flag falls back to an environment variable (SERVER_HOST,
/// SERVER_PORT, WORKER_ID, WORKER_NAME, WORKER_CAPABILITIES, EPHEMERAL_MODE,
/// HODEI_WORKER_TOKEN, HODEI_WORKSPACE_ROOT, HODEI_SERVER_LOST_GRACE,
/// HODEI_SERVER_SOCKET); logs
/// go to stderr, filtered by HODEI_LOG (default info). Exits with 0 after a
/// shutdown, a finished segment or a signal, with nothing its steps started
/// left running (it adopts and ends what they leave behind); 1 when the
/// server refused the worker; 2 for a bad setting; 3 when the server was
/// lost past the grace period; 4 when processes the steps started could not
/// all be ended.
///
/// Started by hand, it is a static worker: it registers with the server's
/// shared secret (the server's `static_worker_token`, or
/// `HODEI_STATIC_WORKER_TOKEN`) as its token, offers its capabilities as
/// labels, and takes any matching job, one after another, until stopped.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  # a static worker; the server runs with HODEI_STATIC_WORKER_TOKEN=secret\n  HODEI_WORKER_TOKEN=secret hodei worker --server-host 127.0.0.1 --server-port 9090 --capabilities linux,java-17\n  hodei worker --server-host hodei.example --token \"$TOKEN\" --capabilities linux,git"
)]
pub struct Args {
    #[command(flatten)]
    worker: WorkerArgs,
}

/// Runs `hodei worker`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // A second subscriber (in tests, or when embedded) is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HODEI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let config = match args.worker.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    Ok(ExitCode::from(
        hodei_worker::run_process(config, stop_signal(), "error: ").await,
    ))
}

/// Completes on SIGTERM or SIGINT.
pub(crate) async fn stop_signal() {
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
