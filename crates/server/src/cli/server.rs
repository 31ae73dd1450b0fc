//! `hodei server`: the long-running server (gRPC for clients and workers,
//! HTTP for health and metrics) until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hodei_infrastructure::local::LocalConfig;
use hodei_server::app::Server;
use hodei_server::config::{Backend, Settings};

/// Run the Hodei server until SIGINT or SIGTERM
///
/// Settings come from --config (TOML) with HODEI_<KEY> environment
/// overrides (HODEI_GRPC_ADDR, HODEI_HTTP_ADDR, HODEI_DATA_DIR,
/// HODEI_BACKEND, HODEI_TEMPLATES, ...). Logs go to stderr, filtered by
/// RUST_LOG when set, else by --log-level; the first line says where the
/// server listens. On a signal the running jobs are cancelled and every
/// worker is destroyed before the server exits with 0.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hodei server\n  hodei server --config /etc/hodei/hodei.toml\n  HODEI_GRPC_ADDR=0.0.0.0:9090 RUST_LOG=hodei=debug hodei server"
)]
pub struct Args {
    /// The settings file (TOML); without it, the defaults and HODEI_* variables
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level when RUST_LOG is not set: error, warn, info, debug, trace
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    log_level: String,
}

/// Runs `hodei server`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&value)
            .map_err(|e| anyhow::anyhow!("RUST_LOG: invalid value {value:?}: {e}"))?,
        _ => tracing_subscriber::EnvFilter::try_new(&args.log_level).map_err(|e| {
            anyhow::anyhow!(
                "--log-level: invalid value {:?}: expected error, warn, info, debug, trace or a filter such as hodei=debug: {e}",
                args.log_level
            )
        })?,
    };
    // Fails only when a subscriber is already set (never in the binary).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();

    let mut settings = Settings::load(args.config.as_deref())?;
    if settings.backend == Backend::Local
        && settings.worker_binary.is_none()
        && LocalConfig::resolve_worker_binary().is_err()
    {
        use_own_worker(&mut settings)?;
        tracing::info!("no hodei-worker binary installed: workers run as `hodei worker`");
    }
    let handle = Server::start(settings).await?;
    tracing::info!(
        grpc = %handle.grpc_addr(),
        http = %handle.http_addr(),
        server_id = handle.server_id(),
        "listening"
    );
    super::worker::stop_signal().await;
    tracing::info!("signal received: cancelling jobs and destroying workers");
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Makes the local backend start workers as `hodei worker` of this very
/// executable, so the worker is always the same version as the server and
/// `cargo run` (which builds only `hodei`) needs no separate binary.
pub(crate) fn use_own_worker(settings: &mut Settings) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the hodei executable")?;
    settings.worker_binary = Some(exe);
    settings.worker_args = vec!["worker".to_owned()];
    Ok(())
}

/// Makes the local backend start `hodei-worker` when it sits next to this
/// executable and is not older than it (built with it, not left over from
/// an earlier build): a smaller executable, it starts faster. Else
/// workers run as `hodei worker` of this executable.
pub(crate) fn use_current_or_own_worker(settings: &mut Settings) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the hodei executable")?;
    match LocalConfig::current_worker_binary_beside(&exe) {
        Some(worker) => {
            settings.worker_binary = Some(worker);
            settings.worker_args = Vec::new();
            Ok(())
        }
        None => use_own_worker(settings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_worker_is_this_executable_with_the_worker_subcommand() {
        let mut settings = Settings::default();
        use_own_worker(&mut settings).unwrap();
        assert_eq!(settings.worker_binary, Some(std::env::current_exe().unwrap()));
        assert_eq!(settings.worker_args, ["worker"]);
    }
}
