//! `hodei lint`: check Jenkinsfiles against the supported declarative subset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use hodei_domain::pipeline::parse;

/// Check Jenkinsfiles: print every error as FILE:LINE:COL: message
///
/// Every file is read and checked completely, so all errors come out at
/// once. Warnings (options that mean nothing to Hodei) are printed with
/// `warning:` and do not fail the check. Exits with 0 when no file has an
/// error, 1 when one does, 2 when a file cannot be read.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  hodei lint Jenkinsfile\n  hodei lint examples/*/Jenkinsfile")]
pub struct Args {
    /// Pipeline files (Jenkinsfiles) to check
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

/// A pipeline file as read from disk.
pub(crate) enum Source {
    /// The text of the file.
    Text(String),
    /// The file is not UTF-8: a `FILE:LINE:COL: message` line saying where.
    NotUtf8(String),
}

/// Reads a pipeline file; bytes that are not UTF-8 give a positioned error,
/// not a failure.
pub(crate) fn read_source(path: &Path) -> std::io::Result<Source> {
    let bytes = std::fs::read(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Source::Text(text),
        Err(e) => {
            let bytes = e.as_bytes();
            let valid = &bytes[..e.utf8_error().valid_up_to()];
            // `valid` is valid UTF-8 by construction; lossy conversion keeps this total.
            let prefix = String::from_utf8_lossy(valid);
            let line = prefix.matches('\n').count() + 1;
            let column = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let byte = bytes.get(valid.len()).copied().unwrap_or(0);
            Source::NotUtf8(format!(
                "{}:{line}:{column}: the file is not valid UTF-8: unexpected byte 0x{byte:02x}",
                path.display()
            ))
        }
    })
}

/// Runs `hodei lint`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut unreadable = false;
    for path in &args.files {
        let name = path.display().to_string();
        match read_source(path) {
            Err(e) => {
                eprintln!("error: cannot read {name}: {e}");
                unreadable = true;
            }
            Ok(Source::NotUtf8(message)) => {
                println!("{message}");
                failed = true;
            }
            Ok(Source::Text(text)) => {
                let parsed = parse(&name, &text);
                for diagnostic in &parsed.diagnostics {
                    println!("{}", diagnostic.with_file(&name));
                }
                if parsed.has_errors() {
                    failed = true;
                } else {
                    println!("{name}: ok");
                }
            }
        }
    }
    Ok(if unreadable {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
