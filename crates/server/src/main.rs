//! `hodei`: the command-line entry point and composition root.

use clap::Parser;

/// Hodei runs CI pipelines on ephemeral workers.
#[derive(Debug, Parser)]
#[command(name = "hodei", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
