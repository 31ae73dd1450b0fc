//! `hodei`: the command-line entry point and composition root.
//!
//! Each subcommand lives in `cli/<name>.rs`, which defines
//! `pub struct Args` (a `clap::Args`; its doc comment is the subcommand's
//! help) and `pub async fn run(args: Args) -> anyhow::Result<ExitCode>`.
//! Adding a subcommand is one line in the `subcommands!` list below.
//!
//! Exit codes: whatever the subcommand returns on success (0, or 1 for a
//! negative answer such as "no template matches"); 2 for usage errors and
//! for any error, printed as `error: ...` on stderr.

use std::process::ExitCode;

use clap::Parser;

/// Declares the `cli` modules, the `Command` enum and its dispatch from one
/// list of `Variant => module` pairs.
macro_rules! subcommands {
    ($($variant:ident => $module:ident),* $(,)?) => {
        mod cli {
            /// Helpers shared by the client subcommands.
            pub mod client;
            $(pub mod $module;)*
        }

        #[derive(Debug, clap::Subcommand)]
        enum Command {
            $($variant(cli::$module::Args),)*
        }

        impl Command {
            async fn run(self) -> anyhow::Result<ExitCode> {
                match self {
                    $(Command::$variant(args) => cli::$module::run(args).await,)*
                }
            }
        }
    };
}

subcommands! {
    Templates => templates,
    Lint => lint,
    Plan => plan,
    Run => run,
    Server => server,
    Jobs => jobs,
    Workers => workers,
    Worker => worker,
}

/// Hodei runs Jenkins-style declarative pipelines on ephemeral workers: a
/// local process, a Docker container or a Kubernetes pod created for each
/// job and deleted when it ends.
#[derive(Debug, Parser)]
#[command(
    name = "hodei",
    version,
    after_help = "Examples:\n  hodei run examples/hello/Jenkinsfile\n  hodei server --config hodei.toml\n  hodei jobs list --server http://127.0.0.1:9090\n  hodei templates list\n  hodei templates match 'linux && java-17'\n  hodei templates match docker --min-cpu 2 --templates templates.yaml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A worker holds one connection and lives for one job: a runtime
    // without threads of its own makes it start and exit faster.
    let mut runtime = if matches!(cli.command, Command::Worker(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli.command.run()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
