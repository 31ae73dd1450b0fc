//! `hodei run`: lint a Jenkinsfile, pack its directory, submit it, stream
//! its log and exit with its result.
//!
//! Without `--server` (and without `HODEI_SERVER`) the server is embedded:
//! started in this process on 127.0.0.1 with free ports, a temporary data
//! directory and the local backend, whose workers are `hodei worker`
//! processes of this same executable; it is shut down (every worker
//! destroyed) before `hodei run` exits.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use hodei_domain::pipeline::parse;
use hodei_infrastructure::source::{Bytes, PackedSource, pack_directory};
use hodei_proto::v1::{
    CancelJobRequest, JobStatus, SubmitHeader, SubmitRequest, SubmitSourceChunk, WatchRequest,
    submit_request::Part,
};
use hodei_server::app::{Server, ServerHandle};
use hodei_server::config::{Backend, Settings, StoreKind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_stream::StreamExt;

use super::client::{
    Client, LogPrinter, Seen, TokenArg, format_duration, parse_pair, status_word,
};
use super::lint::{Source, read_source};

/// Chunk size of the source archive in the `Submit` stream.
const CHUNK: usize = 1024 * 1024;
/// How long to wait for the final status after a cancel before giving up.
const CANCEL_WAIT: Duration = Duration::from_secs(60);

/// Run a Jenkinsfile and stream its log
///
/// The file is checked first (errors as FILE:LINE:COL: message, exit 2).
/// The directory of the file is sent as the job's workspace, honouring
/// .gitignore and .hodeiignore. Without --server (and without
/// $HODEI_SERVER) a server is started in this process with the local
/// backend and stopped afterwards. Ctrl-C (or SIGTERM) cancels the job and
/// waits for it to stop; a second one stops waiting. Exits with 0
/// when the job succeeds, 1 when it fails, is aborted or times out, 2 on
/// bad input or when the server cannot be reached.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hodei run examples/hello/Jenkinsfile\n  hodei run Jenkinsfile -e GREETING=hi --param VERSION=1.2\n  hodei run Jenkinsfile --server http://127.0.0.1:9090"
)]
pub struct Args {
    /// The pipeline file (Jenkinsfile)
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// A running Hodei server's gRPC address [default: an embedded server]
    #[arg(long, env = "HODEI_SERVER", value_name = "URL")]
    server: Option<String>,
    #[command(flatten)]
    token: TokenArg,
    /// The embedded server's backend: `local`, or `docker` (workers in containers, with the static hodei-worker of HODEI_WORKER_BINARY) [default: local]
    #[arg(long, value_name = "BACKEND")]
    backend: Option<Backend>,
    /// Extra environment for every step (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_pair)]
    env: Vec<(String, String)>,
    /// A value for the pipeline's parameters (repeatable)
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_pair)]
    params: Vec<(String, String)>,
    /// The job's name (JOB_NAME) [default: the name of the file's directory]
    #[arg(long)]
    name: Option<String>,
}

/// Runs `hodei run`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let path_text = args.file.display().to_string();

    // 1. Lint.
    let source = read_source(&args.file).with_context(|| format!("cannot read {path_text}"))?;
    let text = match source {
        Source::Text(text) => text,
        Source::NotUtf8(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(2));
        }
    };
    let parsed = parse(&path_text, &text);
    for diagnostic in &parsed.diagnostics {
        eprintln!("{}", diagnostic.with_file(&path_text));
    }
    if parsed.has_errors() {
        return Ok(ExitCode::from(2));
    }

    if std::env::var_os("RUST_LOG").is_some() {
        // The embedded server's logs, on request only.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }

    // 2. Settings of the embedded server (also the source limit).
    let mut settings = Settings::load(None)?;
    if let Some(backend) = args.backend {
        if args.server.is_some() {
            anyhow::bail!(
                "--backend {backend}: the backend is chosen by the server at --server, not by hodei run"
            );
        }
        settings.backend = backend;
    }

    // 3. Pack the directory, unless no worker would unpack it.
    let dir = match args.file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let skip_checkout = parsed
        .pipeline
        .as_ref()
        .is_some_and(|p| p.options.skip_default_checkout);
    let packed = if skip_checkout {
        PackedSource {
            archive: Vec::new(),
            files: 0,
            skipped_links: Vec::new(),
        }
    } else {
        pack_directory(&dir, settings.max_source_bytes)?
    };
    for (link, target) in &packed.skipped_links {
        eprintln!(
            "warning: {}: symbolic link to {} points out of {} and is not sent",
            dir.join(link).display(),
            target.display(),
            dir.display()
        );
    }
    let name = match args.name {
        Some(name) => name,
        None => job_name(&dir),
    };

    // 4. A server.
    let (client, embedded) = match &args.server {
        Some(url) => (Client::connect(url, args.token.token.as_deref()).await?, None),
        None => {
            // Only this process talks to the embedded server.
            settings.client_token = None;
            let embedded = Embedded::start(settings).await?;
            let client = Client::connect(&embedded.handle.grpc_url(), None).await?;
            (client, Some(embedded))
        }
    };

    let header = SubmitHeader {
        pipeline_name: name,
        pipeline_text: text,
        pipeline_path: path_text.clone(),
        parameters: args.params.into_iter().collect::<HashMap<_, _>>(),
        environment: args.env.into_iter().collect::<HashMap<_, _>>(),
        source_size: packed.archive.len() as u64,
    };
    tracing::debug!(files = packed.files, size = %Bytes(packed.archive.len() as u64), "source packed");
    let outcome = submit_and_watch(&client, header, packed.archive).await;
    if let Some(embedded) = embedded {
        embedded.stop().await;
    }
    outcome
}

/// The default job name: the pipeline directory's name.
fn job_name(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "pipeline".to_owned())
}

/// A server started in this process for one run.
struct Embedded {
    handle: ServerHandle,
    _data: tempfile::TempDir,
}

impl Embedded {
    async fn start(mut settings: Settings) -> anyhow::Result<Embedded> {
        if !matches!(settings.backend, Backend::Local | Backend::Docker) {
            anyhow::bail!(
                "--backend {}: the embedded server runs the local or docker backend; start `hodei server` with backend = \"{}\" and pass --server",
                settings.backend,
                settings.backend
            );
        }
        let data = tempfile::Builder::new()
            .prefix("hodei-run-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        settings.grpc_addr = ([127, 0, 0, 1], 0).into();
        settings.http_addr = ([127, 0, 0, 1], 0).into();
        settings.advertise_host = None;
        settings.data_dir = data.path().to_owned();
        // One run's jobs need not outlive it, and a server may hold the
        // configured data directory's store.
        settings.store = StoreKind::Memory;
        if settings.worker_binary.is_none() && settings.backend == Backend::Local {
            super::server::use_current_or_own_worker(&mut settings)?;
        }
        let handle = Server::start(settings).await?;
        Ok(Embedded {
            handle,
            _data: data,
        })
    }

    async fn stop(self) {
        self.handle.shutdown().await;
    }
}

/// Sends the submission, then follows the job to its end.
async fn submit_and_watch(
    client: &Client,
    header: SubmitHeader,
    archive: Vec<u8>,
) -> anyhow::Result<ExitCode> {
    let mut messages = vec![SubmitRequest {
        part: Some(Part::Header(header)),
    }];
    messages.extend(archive.chunks(CHUNK).map(|chunk| SubmitRequest {
        part: Some(Part::Source(SubmitSourceChunk {
            data: chunk.to_vec(),
        })),
    }));
    drop(archive);
    let started = Instant::now();
    let submitted = match client.jobs().submit(tokio_stream::iter(messages)).await {
        Ok(response) => response.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted
            ) =>
        {
            eprintln!("{}", status.message());
            return Ok(ExitCode::from(2));
        }
        Err(status) => return Err(client.error("submitting the pipeline", status)),
    };
    let job_id = submitted.job_id;

    let mut stream = client
        .jobs()
        .watch(WatchRequest {
            job_id: job_id.clone(),
            from_sequence: 0,
        })
        .await
        .map_err(|s| client.error(&format!("job {job_id}"), s))?
        .into_inner();

    let mut printer = LogPrinter::new();
    let mut spinner = Spinner::new();
    let mut final_status: Option<(JobStatus, String)> = None;
    let mut cancelled_at: Option<tokio::time::Instant> = None;
    let mut signals = Signals::new()?;
    loop {
        let cancel_deadline = cancelled_at.map(|at| at + CANCEL_WAIT);
        let next = tokio::select! {
            next = stream.next() => next,
            () = signals.recv() => {
                spinner.clear();
                if cancelled_at.is_some() {
                    eprintln!("error: stopped waiting for job {job_id}, which was asked to cancel");
                    break;
                }
                eprintln!("cancelling job {job_id}… (again to stop waiting)");
                cancelled_at = Some(tokio::time::Instant::now());
                if let Err(status) = client
                    .jobs()
                    .cancel(CancelJobRequest {
                        job_id: job_id.clone(),
                        reason: "cancelled with Ctrl-C".to_owned(),
                    })
                    .await
                {
                    eprintln!("error: cannot cancel job {job_id}: {}", status.message());
                    break;
                }
                continue;
            }
            () = sleep_until(cancel_deadline) => {
                eprintln!("error: job {job_id} did not stop within {}s", CANCEL_WAIT.as_secs());
                break;
            }
        };
        let Some(event) = next else { break };
        let event = event.map_err(|s| client.error(&format!("job {job_id}"), s))?;
        match spinner.suspend(|| printer.print(&event)) {
            Seen::Status(status, message) => {
                if super::client::is_final(status) {
                    spinner.clear();
                    final_status = Some((status, message));
                    break;
                }
            }
            Seen::Worker {
                state,
                template,
                message,
            } => spinner.worker(&state, &template, &message),
            Seen::Nothing => {}
        }
    }
    spinner.clear();

    let elapsed = format_duration(started.elapsed());
    let Some((status, message)) = final_status else {
        if cancelled_at.is_none() {
            eprintln!("error: the log of job {job_id} ended before the job did");
        }
        return Ok(ExitCode::from(1));
    };
    let word = status_word(status).to_uppercase().replace(' ', "_");
    if message.is_empty() {
        eprintln!("Finished: {word} in {elapsed}");
    } else {
        eprintln!("Finished: {word} in {elapsed}: {message}");
    }
    Ok(if status == JobStatus::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// SIGINT (Ctrl-C) and SIGTERM: either cancels the job.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// The spinner shown on stderr (when it is a terminal) while workers are
/// being provisioned.
struct Spinner {
    bar: Option<ProgressBar>,
    pending: usize,
    enabled: bool,
}

impl Spinner {
    fn new() -> Spinner {
        Spinner {
            bar: None,
            pending: 0,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    fn worker(&mut self, state: &str, template: &str, message: &str) {
        match state {
            "provisioning" => {
                self.pending += 1;
                if !self.enabled {
                    return;
                }
                let text = if template.is_empty() {
                    "provisioning a worker".to_owned()
                } else {
                    format!("provisioning a worker from template {template}")
                };
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(100));
                    bar
                });
                bar.set_message(text);
            }
            "connected" | "failed" => {
                self.pending = self.pending.saturating_sub(1);
                if state == "failed" && !message.is_empty() {
                    self.suspend(|| eprintln!("worker failed: {message}"));
                }
                if self.pending == 0 {
                    self.clear();
                }
            }
            _ => {}
        }
    }

    fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_come_from_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("my-app");
        std::fs::create_dir(&sub).unwrap();
        assert_eq!(job_name(&sub), "my-app");
        assert_eq!(job_name(&sub.join("..").join("my-app")), "my-app");
        assert_eq!(job_name(&dir.path().join("missing")), "pipeline");
    }
}
