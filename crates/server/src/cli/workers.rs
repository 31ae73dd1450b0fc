//! `hodei workers`: the workers a running server knows.

use std::process::ExitCode;

use hodei_proto::v1::ListWorkersRequest;

use super::client::{Client, ServerArg, format_duration, now_ms, table};

/// Show the workers of a Hodei server
///
/// Talks to the server named by --server (default: $HODEI_SERVER, else
/// http://127.0.0.1:9090). Exits with 2 when the server cannot be reached.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hodei workers list\n  hodei workers list --server http://hodei:9090"
)]
pub struct Args {
    #[command(flatten)]
    server: ServerArg,
    #[command(subcommand)]
    command: WorkersCommand,
}

#[derive(Debug, clap::Subcommand)]
enum WorkersCommand {
    /// List connected static workers and live ephemeral workers
    List,
}

/// Runs `hodei workers`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::connect(&args.server.server, args.server.token.token.as_deref()).await?;
    match args.command {
        WorkersCommand::List => list(&client).await,
    }
}

async fn list(client: &Client) -> anyhow::Result<ExitCode> {
    let workers = client
        .admin()
        .list_workers(ListWorkersRequest {})
        .await
        .map_err(|s| client.error("listing workers", s))?
        .into_inner()
        .workers;
    if workers.is_empty() {
        println!("no workers");
        return Ok(ExitCode::SUCCESS);
    }
    let now = now_ms();
    let ago = |ms: u64| {
        if ms == 0 {
            "-".to_owned()
        } else {
            format!(
                "{} ago",
                format_duration(std::time::Duration::from_millis(now.saturating_sub(ms)))
            )
        }
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                if w.ephemeral { "ephemeral" } else { "static" }.to_owned(),
                dash(&w.backend),
                dash(&w.template_id),
                dash(&w.state),
                dash(&w.job_id),
                ago(w.created_at_ms),
                ago(w.last_heartbeat_ms),
                w.capabilities.join(","),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "KIND",
                "BACKEND",
                "TEMPLATE",
                "STATE",
                "JOB",
                "CREATED",
                "HEARTBEAT",
                "LABELS"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
