//! End-to-end benchmarks of a server with the local backend: a server
//! started in-process on 127.0.0.1 port 0, real gRPC clients, and the real
//! release `hodei-worker` binary started as one process per job.
//!
//! Phases (each on a fresh server; name some to run only those, e.g.
//! `cargo bench -p hodei-server --bench e2e -- latency`):
//!
//! - `rss`: the bench process's resident memory (server and client) before
//!   any job and with [`IDLE_WORKERS`] ephemeral workers connected, each
//!   running a `sleep`; then every job is cancelled and no worker process
//!   may remain.
//! - `latency`: [`LATENCY_JOBS`] sequential jobs of `sh 'echo start'` after
//!   [`LATENCY_WARMUP`] warm-up jobs; the time from sending `Submit` to the
//!   line `start` arriving on `Watch`, with a breakdown from the events'
//!   timestamps.
//! - `throughput`: [`THROUGHPUT_JOBS`] jobs of `sh 'true'`, [`CONCURRENCY`]
//!   at a time, each submitted and watched to its end. Besides the wall
//!   clock rate it prints the CPU time per job (this process, server and
//!   client, plus its reaped children: the workers with their steps) and
//!   the rate that CPU time allows on this machine's cpus when nothing
//!   else runs: other load on the machine stretches the wall clock, not
//!   the CPU time a job costs.
//!
//! The server's global cap (`max_workers`) and the `local` template's
//! `max_concurrent_jobs` are both raised to [`WORKER_CAP`] (the template
//! through `AdminService.PutTemplate`, as an operator would), so neither
//! serialises the jobs. Everything else is the default configuration.
//!
//! The store is the default (`sqlite` in the phase's data directory);
//! `HODEI_STORE=memory` runs the phases with the in-memory store instead.
//!
//! Workers are the static `hodei-worker` of `scripts/build-static-worker.sh`
//! (what goes into the images, and what the README installs next to
//! `hodei`, where the local backend finds it), built into the bench's own
//! target directory before the clock starts. `--worker=hodei-worker` runs
//! the default dynamic release build instead (`cargo build --release -p
//! hodei-worker`), `--worker=hodei` the `hodei worker` of the release `hodei`
//! executable (what the server starts when no `hodei-worker` is installed,
//! e.g. under `cargo run`), and `--worker=PATH` (a path holding a `/`) that
//! binary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use hodei_application::orchestrator::WorkerHandle;
use hodei_infrastructure::local::{is_live, processes_marked_by};
use hodei_proto::v1 as pb;
use hodei_proto::v1::admin_service_client::AdminServiceClient;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_server::app::{Server, ServerHandle};
use hodei_server::config::Settings;
use tonic::transport::Channel;

/// Jobs run before the latency is measured.
const LATENCY_WARMUP: usize = 20;
/// Jobs whose latency is measured.
const LATENCY_JOBS: usize = 200;
/// Jobs of the throughput phase.
const THROUGHPUT_JOBS: usize = 1000;
/// Jobs in flight at once in the throughput phase.
const CONCURRENCY: usize = 32;
/// Connected workers in the memory phase.
const IDLE_WORKERS: usize = 500;
/// `max_workers` and the `local` template's `max_concurrent_jobs`.
const WORKER_CAP: u32 = 600;
/// The longest one phase may take before the bench gives up.
const PHASE_TIMEOUT: Duration = Duration::from_secs(240);
/// The longest the worker processes may take to go away after a phase.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);

const LATENCY_PIPELINE: &str =
    "pipeline { agent any; stages { stage('Start') { steps { sh 'echo start' } } } }";
const THROUGHPUT_PIPELINE: &str =
    "pipeline { agent any; stages { stage('True') { steps { sh 'true' } } } }";
const IDLE_PIPELINE: &str =
    "pipeline { agent any; stages { stage('Idle') { steps { sh 'sleep 300' } } } }";

fn main() -> anyhow::Result<()> {
    // `cargo bench` sets `LD_LIBRARY_PATH` to its build scripts' output
    // directories, and every worker's `sh` would inherit it: its dynamic
    // loader then looks for libc in each of them (about 80 failed `openat`
    // and `stat` per step), which a server started by hand never pays. The
    // bench runs again without it.
    if std::env::var_os("LD_LIBRARY_PATH").is_some() {
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env_remove("LD_LIBRARY_PATH")
            .status()
            .context("cannot run the bench again without LD_LIBRARY_PATH")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // `cargo bench` passes `--bench`; `--worker=...` picks the worker
    // binary; other arguments name phases.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let runs = |phase: &str| wanted.is_empty() || wanted.iter().any(|w| phase.contains(w.as_str()));
    let worker = match args.iter().find_map(|a| a.strip_prefix("--worker=")) {
        Some(path) if path.contains('/') => Worker {
            binary: PathBuf::from(path),
            args: Vec::new(),
        },
        None | Some("static") => Worker {
            binary: build_static_worker()?,
            args: Vec::new(),
        },
        Some("hodei-worker") => Worker {
            binary: build_release("hodei-worker", "hodei-worker")?,
            args: Vec::new(),
        },
        Some("hodei") => Worker {
            binary: build_release("hodei-server", "hodei")?,
            args: vec!["worker".to_owned()],
        },
        Some(other) => bail!(
            "--worker: expected `static`, `hodei-worker`, `hodei` or the path of a worker binary, got `{other}`"
        ),
    };
    println!(
        "workers run as: {} {}",
        worker.binary.display(),
        worker.args.join(" ")
    );
    println!(
        "cpus: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    runtime.block_on(async {
        if runs("rss") {
            run_phase("rss", &worker, memory).await?;
        }
        if runs("latency") {
            run_phase("latency", &worker, latency).await?;
        }
        if runs("throughput") {
            run_phase("throughput", &worker, throughput).await?;
        }
        anyhow::Ok(())
    })
}

/// The command the local backend starts for each worker.
struct Worker {
    binary: PathBuf,
    args: Vec<String>,
}

/// This bench's target directory (the bench runs from
/// `target/release/deps/e2e-HASH`).
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the bench executable's path")?;
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(Path::to_owned)
        .context("the bench executable lives in target/<profile>/deps")
}

/// Builds the static worker with `scripts/build-static-worker.sh` into
/// this bench's target directory and returns its path (the script prints
/// it last).
fn build_static_worker() -> anyhow::Result<PathBuf> {
    let target_dir = target_dir()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = std::process::Command::new(root.join("scripts/build-static-worker.sh"))
        .arg(target_dir.join("static"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(&root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run scripts/build-static-worker.sh")?;
    if !output.status.success() {
        bail!("building the static worker failed: {}", output.status);
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(printed.lines().last().unwrap_or_default().trim());
    if !path.is_file() {
        bail!("the static worker was not built: {printed}");
    }
    Ok(path)
}

/// Builds the release binary `bin` of `package` into this bench's target
/// directory (a no-op when it is up to date) and returns its path.
fn build_release(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let target_dir = target_dir()?;
    let target_dir = target_dir.as_path();
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .with_context(|| format!("cannot run cargo to build {bin}"))?;
    if !status.success() {
        bail!("building {bin} failed: {status}");
    }
    let path = target_dir.join("release").join(bin);
    if !path.is_file() {
        bail!("{} was not built", path.display());
    }
    Ok(path)
}

/// A server for one phase, with a channel to it.
struct Bench {
    handle: ServerHandle,
    channel: Channel,
    _data: tempfile::TempDir,
}

impl Bench {
    fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel.clone())
    }
}

/// Starts a server on port 0 with the default settings but the worker
/// caps raised to [`WORKER_CAP`].
async fn start(worker: &Worker, phase: &str) -> anyhow::Result<Bench> {
    let data = tempfile::tempdir().context("cannot create a data directory")?;
    let mut settings = Settings {
        grpc_addr: "127.0.0.1:0".parse()?,
        http_addr: "127.0.0.1:0".parse()?,
        data_dir: data.path().to_owned(),
        server_id: Some(format!("bench-{}-{phase}", std::process::id())),
        worker_binary: Some(worker.binary.clone()),
        worker_args: worker.args.clone(),
        max_workers: WORKER_CAP,
        ..Settings::default()
    };
    // `HODEI_STORE=memory` compares with the store kept in memory.
    if let Ok(store) = std::env::var("HODEI_STORE") {
        settings.store = store
            .parse()
            .map_err(|e| anyhow::anyhow!("HODEI_STORE: {e}"))?;
    }
    let handle = Server::start(settings).await?;
    let channel = Channel::from_shared(handle.grpc_url())?
        .connect()
        .await
        .context("cannot connect to the server")?;
    let mut admin = AdminServiceClient::new(channel.clone());
    let templates = admin
        .list_templates(pb::ListTemplatesRequest {})
        .await?
        .into_inner()
        .templates;
    let mut local = templates
        .into_iter()
        .find(|t| t.id == "local")
        .context("the server has no `local` template")?;
    local.max_concurrent_jobs = WORKER_CAP;
    admin
        .put_template(pb::PutTemplateRequest {
            template: Some(local),
        })
        .await?;
    Ok(Bench {
        handle,
        channel,
        _data: data,
    })
}

/// Runs one phase on a fresh server, bounded by [`PHASE_TIMEOUT`], then
/// stops the server and checks that no worker process is left.
async fn run_phase<F, Fut>(name: &str, worker: &Worker, phase: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<Bench>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    println!();
    println!("== {name} (load average before: {})", load_average());
    let bench = Arc::new(start(worker, name).await?);
    let outcome = match tokio::time::timeout(PHASE_TIMEOUT, phase(bench.clone())).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!(
            "phase {name}: did not finish within {PHASE_TIMEOUT:?}"
        )),
    };
    println!("load average after: {}", load_average());
    let bench = Arc::into_inner(bench).context("a phase kept the server")?;
    let created = bench.handle.created_workers();
    bench.handle.shutdown().await;
    let left = wait_for_no_worker_process(&created).await;
    if !left.is_empty() {
        bail!("phase {name}: worker processes still alive after shutdown: {left:?}");
    }
    println!("{} workers created, none left", created.len());
    outcome
}

/// Submits `pipeline` (no source) and returns the job id.
async fn submit(
    client: &mut JobServiceClient<Channel>,
    name: &str,
    pipeline: &str,
) -> anyhow::Result<String> {
    let header = pb::SubmitHeader {
        pipeline_name: name.to_owned(),
        pipeline_text: pipeline.to_owned(),
        pipeline_path: "Jenkinsfile".to_owned(),
        parameters: Default::default(),
        environment: Default::default(),
        source_size: 0,
    };
    let request = pb::SubmitRequest {
        part: Some(pb::submit_request::Part::Header(header)),
    };
    let response = client.submit(tokio_stream::iter([request])).await?;
    Ok(response.into_inner().job_id)
}

/// What one watched job showed.
#[derive(Default)]
struct Watched {
    /// When the first line containing the awaited text arrived.
    line_at: Option<Instant>,
    /// Event timestamps (ms since the epoch).
    provisioning_ms: Option<u64>,
    connected_ms: Option<u64>,
    stage_started_ms: Option<u64>,
    line_ms: Option<u64>,
    status: Option<(i32, String)>,
}

/// Watches `job` to its end, noting when a line containing `text` arrives.
async fn watch(
    client: &mut JobServiceClient<Channel>,
    job: &str,
    text: &str,
) -> anyhow::Result<Watched> {
    let mut stream = client
        .watch(pb::WatchRequest {
            job_id: job.to_owned(),
            from_sequence: 0,
        })
        .await?
        .into_inner();
    let mut watched = Watched::default();
    while let Some(event) = stream.message().await? {
        match &event.kind {
            Some(pb::job_event::Kind::Log(line))
                if watched.line_at.is_none() && line.text.contains(text) =>
            {
                watched.line_at = Some(Instant::now());
                watched.line_ms = Some(event.timestamp_ms);
            }
            Some(pb::job_event::Kind::Worker(w)) if w.state == "provisioning" => {
                watched.provisioning_ms.get_or_insert(event.timestamp_ms);
            }
            Some(pb::job_event::Kind::Worker(w)) if w.state == "connected" => {
                watched.connected_ms.get_or_insert(event.timestamp_ms);
            }
            Some(pb::job_event::Kind::Stage(s)) if s.kind == pb::StageEventKind::Started as i32 => {
                watched.stage_started_ms.get_or_insert(event.timestamp_ms);
            }
            Some(pb::job_event::Kind::Status(s)) => {
                watched.status = Some((s.status, s.message.clone()));
            }
            _ => {}
        }
    }
    Ok(watched)
}

fn check_success(job: &str, watched: &Watched) -> anyhow::Result<()> {
    match &watched.status {
        Some((status, _)) if *status == pb::JobStatus::Success as i32 => Ok(()),
        Some((status, message)) => bail!("job {job} ended with status {status}: {message}"),
        None => bail!("job {job}: the watch ended without a status"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- latency ---------------------------------------------------------------

async fn latency(bench: Arc<Bench>) -> anyhow::Result<()> {
    let mut client = bench.jobs();
    let mut first_line = Vec::with_capacity(LATENCY_JOBS);
    let mut submit_rpc = Vec::with_capacity(LATENCY_JOBS);
    // Milliseconds from sending Submit to each event, by event timestamps.
    let mut to_provisioning = Vec::new();
    let mut to_connected = Vec::new();
    let mut to_stage = Vec::new();
    let mut to_line = Vec::new();
    let before = cpu_times();
    for i in 0..LATENCY_WARMUP + LATENCY_JOBS {
        let sent_ms = now_ms();
        let sent = Instant::now();
        let job = submit(&mut client, "latency", LATENCY_PIPELINE).await?;
        let submitted = sent.elapsed();
        let watched = watch(&mut client, &job, "start").await?;
        check_success(&job, &watched)?;
        let line_at = watched
            .line_at
            .with_context(|| format!("job {job} never printed `start`"))?;
        if i < LATENCY_WARMUP {
            continue;
        }
        first_line.push(line_at - sent);
        submit_rpc.push(submitted);
        let since = |ms: Option<u64>| ms.map(|ms| ms.saturating_sub(sent_ms));
        to_provisioning.extend(since(watched.provisioning_ms));
        to_connected.extend(since(watched.connected_ms));
        to_stage.extend(since(watched.stage_started_ms));
        to_line.extend(since(watched.line_ms));
    }
    let cpu = cpu_times().since(&before);
    println!(
        "submit to first line of `sh 'echo start'` on Watch, {LATENCY_JOBS} sequential jobs after {LATENCY_WARMUP} warm-up:"
    );
    println!("  {}", percentiles(&mut first_line));
    println!("Submit RPC alone: {}", percentiles(&mut submit_rpc));
    println!("breakdown by event timestamps (ms after sending Submit, median / p99):");
    for (what, values) in [
        ("worker provisioning", &mut to_provisioning),
        ("worker connected", &mut to_connected),
        ("stage started", &mut to_stage),
        ("line `start` recorded", &mut to_line),
    ] {
        values.sort_unstable();
        println!(
            "  {what:<22} {} / {} ms",
            pick(values, 0.5).unwrap_or_default(),
            pick(values, 0.99).unwrap_or_default()
        );
    }
    println!(
        "CPU per job (measured jobs and warm-up): bench process {:.2} ms, reaped workers {:.2} ms",
        cpu.own_ms / (LATENCY_WARMUP + LATENCY_JOBS) as f64,
        cpu.children_ms / (LATENCY_WARMUP + LATENCY_JOBS) as f64
    );
    Ok(())
}

// ---- throughput ------------------------------------------------------------

async fn throughput(bench: Arc<Bench>) -> anyhow::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let before = cpu_times();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let next = next.clone();
        let mut client = bench.jobs();
        tasks.push(tokio::spawn(async move {
            let mut durations = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < THROUGHPUT_JOBS {
                let sent = Instant::now();
                let job = submit(&mut client, "throughput", THROUGHPUT_PIPELINE).await?;
                let watched = watch(&mut client, &job, "").await?;
                check_success(&job, &watched)?;
                durations.push(sent.elapsed());
            }
            anyhow::Ok(durations)
        }));
    }
    let mut durations = Vec::with_capacity(THROUGHPUT_JOBS);
    for task in tasks {
        durations.extend(task.await.context("a submitting task panicked")??);
    }
    let wall = started.elapsed();
    let cpu = cpu_times().since(&before);
    println!(
        "{THROUGHPUT_JOBS} jobs of `sh 'true'` at concurrency {CONCURRENCY}: {:.2} s wall, {:.0} jobs/s",
        wall.as_secs_f64(),
        THROUGHPUT_JOBS as f64 / wall.as_secs_f64()
    );
    println!(
        "per job, submit to end of Watch: {}",
        percentiles(&mut durations)
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu_per_job_ms = (cpu.own_ms + cpu.children_ms) / THROUGHPUT_JOBS as f64;
    println!(
        "CPU per job: {cpu_per_job_ms:.2} ms (bench process and reaped workers): {:.0} jobs/s if the bench had {cpus} idle cpus to itself",
        cpus as f64 * 1000.0 / cpu_per_job_ms
    );
    println!(
        "CPU: bench process {:.2} s, reaped workers {:.2} s ({:.2} + {:.2} ms per job), {:.0} % of {} cpus",
        cpu.own_ms / 1000.0,
        cpu.children_ms / 1000.0,
        cpu.own_ms / THROUGHPUT_JOBS as f64,
        cpu.children_ms / THROUGHPUT_JOBS as f64,
        100.0 * (cpu.own_ms + cpu.children_ms)
            / 1000.0
            / wall.as_secs_f64()
            / std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    Ok(())
}

// ---- memory ----------------------------------------------------------------

async fn memory(bench: Arc<Bench>) -> anyhow::Result<()> {
    let mut client = bench.jobs();
    let mut admin = AdminServiceClient::new(bench.channel.clone());
    let baseline = vm_kib("VmRSS")?;
    println!(
        "bench process VmRSS, server started, no job: {}",
        mib(baseline)
    );
    let started = Instant::now();
    let mut jobs = Vec::with_capacity(IDLE_WORKERS);
    for _ in 0..IDLE_WORKERS {
        jobs.push(submit(&mut client, "idle", IDLE_PIPELINE).await?);
    }
    // Every job's worker connected and running its step.
    loop {
        let workers = admin
            .list_workers(pb::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers;
        let busy = workers.iter().filter(|w| w.state == "busy").count();
        if busy >= IDLE_WORKERS {
            println!(
                "{IDLE_WORKERS} workers connected and busy after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if let Some(failed) = workers.iter().find(|w| w.state == "failed") {
            bail!("worker {} failed", failed.id);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let a few heartbeats pass, so the figure is the steady state.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let loaded = vm_kib("VmRSS")?;
    let peak = vm_kib("VmHWM")?;
    let threads = proc_kib("/proc/self/status", "Threads").unwrap_or(0);
    let created = bench.handle.created_workers();
    let worker_rss: u64 = created
        .iter()
        .filter_map(|w| w.backend_id.parse::<u32>().ok())
        .filter_map(|pid| proc_kib(&format!("/proc/{pid}/status"), "VmRSS"))
        .sum();
    println!(
        "bench process VmRSS with {IDLE_WORKERS} workers connected: {} (delta {}, peak VmHWM {}), {threads} threads",
        mib(loaded),
        mib(loaded.saturating_sub(baseline)),
        mib(peak)
    );
    println!(
        "for comparison, the {} worker processes' own VmRSS together: {} ({} each)",
        created.len(),
        mib(worker_rss),
        mib(worker_rss / created.len().max(1) as u64)
    );

    let cancelling = Instant::now();
    for job in &jobs {
        client
            .cancel(pb::CancelJobRequest {
                job_id: job.clone(),
                reason: "benchmark over".to_owned(),
            })
            .await?;
    }
    let left = wait_for_no_worker_process(&created).await;
    if !left.is_empty() {
        bail!("worker processes still alive after cancelling: {left:?}");
    }
    println!(
        "all jobs cancelled and every worker process gone in {:.1} s",
        cancelling.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---- measuring -------------------------------------------------------------

/// `p50 p90 p99 max` of `values` (sorted in place).
fn percentiles(values: &mut [Duration]) -> String {
    values.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        ms(pick(values, 0.5)),
        ms(pick(values, 0.9)),
        ms(pick(values, 0.99)),
        ms(values.last().copied()),
        values.len()
    )
}

/// The nearest-rank `q` quantile of sorted `values`.
fn pick<T: Copy>(values: &[T], q: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

/// CPU time of this process and of its reaped children (the workers, with
/// their steps).
struct CpuTimes {
    own_ms: f64,
    children_ms: f64,
}

impl CpuTimes {
    fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            own_ms: self.own_ms - earlier.own_ms,
            children_ms: self.children_ms - earlier.children_ms,
        }
    }
}

fn cpu_times() -> CpuTimes {
    // Fields after the command: state is field 3; utime 14, stime 15,
    // cutime 16, cstime 17 (in clock ticks of 10 ms on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0.0) * 10.0;
    CpuTimes {
        own_ms: field(14) + field(15),
        children_ms: field(16) + field(17),
    }
}

fn vm_kib(key: &str) -> anyhow::Result<u64> {
    proc_kib("/proc/self/status", key).with_context(|| format!("no {key} in /proc/self/status"))
}

fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn mib(kib: u64) -> String {
    format!(
        "{:.1} MiB = {:.1} MB",
        kib as f64 / 1024.0,
        kib as f64 * 1024.0 / 1e6
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

// ---- worker processes ------------------------------------------------------

/// Waits up to [`TEARDOWN_TIMEOUT`] for every process of `workers` to be
/// gone; returns the pids still alive.
async fn wait_for_no_worker_process(workers: &[WorkerHandle]) -> Vec<u32> {
    let deadline = Instant::now() + TEARDOWN_TIMEOUT;
    loop {
        let left = live_worker_processes(workers);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pids of live (not zombie) processes that belong to `workers`: the
/// workers themselves (by pid) and whatever carries their `WORKER_ID`.
fn live_worker_processes(workers: &[WorkerHandle]) -> Vec<u32> {
    let ids: Vec<String> = workers.iter().map(|w| w.worker_id.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut live = processes_marked_by(&ids);
    for pid in workers
        .iter()
        .filter_map(|w| w.backend_id.parse::<u32>().ok())
    {
        if is_live(pid) && !live.contains(&pid) {
            live.push(pid);
        }
    }
    live
}
