//! The SQLite store at scale: a data directory holding many finished jobs
//! with a large log each, then the real release `hodei server` started on
//! it, and the logs of many jobs streamed over gRPC `Watch` (what `hodei
//! jobs logs` does) while the server's resident memory is sampled.
//!
//! Figures printed:
//!
//! - fill: how fast the store takes log chunks through its port
//!   (`JobRepository::append_log`, many jobs at once, as a busy server
//!   writes them), and the file's size;
//! - start-up: from spawning `hodei server` on the filled data directory
//!   to its first answered `ListJobs`, against the same on an empty data
//!   directory with `store = "memory"`;
//! - streaming: the server process's VmRSS (sampled every 50 ms) and
//!   VmHWM while clients stream whole logs, [`STREAMS`] at a time.
//!
//! Sizes come from the environment (defaults: the figures):
//! `HODEI_BENCH_JOBS` (10000), `HODEI_BENCH_LOG_BYTES` per job (1048576),
//! `HODEI_BENCH_CHUNK_BYTES` per log chunk (4096), `HODEI_BENCH_STREAMED`
//! jobs whose logs are streamed (1000). The data directory is a temporary
//! directory under `HODEI_BENCH_DIR` (default: the system's), removed at
//! the end; check the free space first (jobs × log bytes, plus about 10 %).
//! The server is the release `hodei` built into this bench's target
//! directory, or the executable `HODEI_BENCH_HODEI` names.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hodei_application::jobs::{JobRepository, LogChunk};
use hodei_application::worker_link::LogStream;
use hodei_domain::{Job, JobId, JobStatus, Timestamp};
use hodei_infrastructure::SqliteStore;
use hodei_proto::v1 as pb;
use hodei_proto::v1::job_service_client::JobServiceClient;
use tonic::transport::Channel;

/// Jobs streamed at once.
const STREAMS: usize = 16;
/// Jobs filled at once.
const FILLERS: usize = 32;

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("{name}: expected a number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let jobs = env_number("HODEI_BENCH_JOBS", 10_000)?;
    let log_bytes = env_number("HODEI_BENCH_LOG_BYTES", 1024 * 1024)?;
    let chunk_bytes = env_number("HODEI_BENCH_CHUNK_BYTES", 4096)?.max(1);
    let streamed = env_number("HODEI_BENCH_STREAMED", 1000)?.min(jobs);
    let parent = std::env::var_os("HODEI_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let hodei = match std::env::var_os("HODEI_BENCH_HODEI") {
        Some(path) => PathBuf::from(path),
        None => build_release_hodei()?,
    };
    println!(
        "{jobs} jobs × {log_bytes} log bytes in chunks of {chunk_bytes}; {streamed} logs streamed, {STREAMS} at a time"
    );
    println!(
        "cpus: {}; load average: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let data = tempfile::Builder::new()
        .prefix("hodei-store-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a directory in {}", parent.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let result = runtime.block_on(async {
        fill(data.path(), jobs, log_bytes, chunk_bytes).await?;
        startup(&hodei, data.path()).await?;
        streaming(&hodei, data.path(), streamed, log_bytes).await
    });
    drop(data);
    result
}

/// Builds the release `hodei` into this bench's target directory.
fn build_release_hodei() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("the bench executable's path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench executable lives in target/<profile>/deps")?
        .to_owned();
    let target_dir = profile_dir
        .parent()
        .context("target/<profile> has a parent")?;
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "hodei-server", "--bin", "hodei"])
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .context("cannot run cargo to build hodei")?;
    if !status.success() {
        bail!("cargo build of hodei failed: {status}");
    }
    Ok(target_dir.join("release/hodei"))
}

/// Fills the store through its port, [`FILLERS`] jobs at a time.
async fn fill(dir: &Path, jobs: u64, log_bytes: u64, chunk_bytes: u64) -> anyhow::Result<()> {
    let path = dir.join("hodei.db");
    let store = Arc::new(SqliteStore::open(&path)?);
    let next = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..FILLERS {
        let (store, next, chunks) = (store.clone(), next.clone(), chunks.clone());
        tasks.push(tokio::spawn(async move {
            let line = {
                let mut line = vec![b'x'; usize::try_from(chunk_bytes).unwrap_or(4096)];
                if let Some(last) = line.last_mut() {
                    *last = b'\n';
                }
                line
            };
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= jobs {
                    return anyhow::Ok(());
                }
                let id = JobId::new(format!("bench-{n:06}"))?;
                let created = 1_700_000_000_000 + n;
                let mut job = Job::new(
                    id.clone(),
                    "bench",
                    n + 1,
                    "pipeline { agent any }",
                    Timestamp(created),
                );
                job.start(Timestamp(created + 1))?;
                store.save(job.clone()).await?;
                let mut written = 0;
                while written < log_bytes {
                    let take = chunk_bytes.min(log_bytes - written);
                    let data = line[..usize::try_from(take).unwrap_or(0)].to_vec();
                    store
                        .append_log(
                            &id,
                            LogChunk {
                                at: Timestamp(created + 2),
                                step_id: Some("1".into()),
                                stream: LogStream::Stdout,
                                data,
                            },
                        )
                        .await?;
                    written += take;
                    chunks.fetch_add(1, Ordering::Relaxed);
                }
                job.finish(JobStatus::Succeeded, Timestamp(created + 3))?;
                store.save(job).await?;
                if n > 0 && n % 1000 == 0 {
                    println!("  filled {n} jobs");
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("a filler panicked")??;
    }
    let elapsed = started.elapsed();
    drop(store);
    let chunks = chunks.load(Ordering::Relaxed);
    let size: u64 = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "fill: {jobs} jobs, {chunks} chunks in {:.1} s: {:.0} chunks/s, {:.1} MB/s; files {:.2} GB",
        elapsed.as_secs_f64(),
        chunks as f64 / elapsed.as_secs_f64(),
        (jobs * log_bytes) as f64 / 1e6 / elapsed.as_secs_f64(),
        size as f64 / 1e9
    );
    Ok(())
}

/// A `hodei server` process on free ports.
struct ServerProcess {
    child: Child,
    url: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Spawns `hodei server` on `data` and waits until it answers `ListJobs`;
/// returns it and the time that took.
async fn spawn_server(
    hodei: &Path,
    data: &Path,
    store: &str,
) -> anyhow::Result<(ServerProcess, Duration)> {
    let grpc = free_port()?;
    let http = free_port()?;
    let started = Instant::now();
    let child = Command::new(hodei)
        .arg("server")
        .env("HODEI_GRPC_ADDR", format!("127.0.0.1:{grpc}"))
        .env("HODEI_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("HODEI_DATA_DIR", data)
        .env("HODEI_STORE", store)
        .env("HODEI_WORKER_BINARY", hodei)
        .env("HODEI_WORKER_ARGS", "worker")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start hodei server")?;
    let server = ServerProcess {
        child,
        url: format!("http://127.0.0.1:{grpc}"),
    };
    loop {
        if let Ok(channel) = Channel::from_shared(server.url.clone())?.connect().await {
            let mut client = JobServiceClient::new(channel);
            let listed = client
                .list(pb::ListJobsRequest {
                    limit: 1,
                    ..Default::default()
                })
                .await;
            if listed.is_ok() {
                return Ok((server, started.elapsed()));
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("hodei server did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Start-up to the first answered request: the filled store against an
/// empty memory store, five times each.
async fn startup(hodei: &Path, data: &Path) -> anyhow::Result<()> {
    let empty = tempfile::tempdir()?;
    for (label, dir, store) in [
        ("sqlite, filled", data, "sqlite"),
        ("memory, empty", empty.path(), "memory"),
    ] {
        let mut times = Vec::new();
        for _ in 0..5 {
            let (server, took) = spawn_server(hodei, dir, store).await?;
            drop(server);
            times.push(took);
        }
        times.sort();
        println!(
            "start-up to first answered ListJobs ({label}): median {:.0} ms, min {:.0} ms, max {:.0} ms",
            times[2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3
        );
    }
    Ok(())
}

fn proc_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Streams the logs of `streamed` jobs, [`STREAMS`] at a time, sampling
/// the server's memory.
async fn streaming(hodei: &Path, data: &Path, streamed: u64, log_bytes: u64) -> anyhow::Result<()> {
    let (server, _) = spawn_server(hodei, data, "sqlite").await?;
    let pid = server.child.id();
    let idle = proc_kib(pid, "VmRSS").unwrap_or(0);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = proc_kib(pid, "VmRSS") {
                    samples.push(kib);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };
    let channel = Channel::from_shared(server.url.clone())?.connect().await?;
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let (channel, next, bytes) = (channel.clone(), next.clone(), bytes.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = JobServiceClient::new(channel);
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= streamed {
                    return anyhow::Ok(());
                }
                let mut stream = client
                    .watch(pb::WatchRequest {
                        job_id: format!("bench-{n:06}"),
                        from_sequence: 0,
                    })
                    .await?
                    .into_inner();
                let mut got = 0;
                let mut ended = false;
                while let Some(event) = stream.message().await? {
                    match event.kind {
                        Some(pb::job_event::Kind::Log(line)) => got += line.text.len() as u64 + 1,
                        Some(pb::job_event::Kind::Status(status)) => {
                            ended = status.status == pb::JobStatus::Success as i32;
                        }
                        _ => {}
                    }
                }
                if got != log_bytes || !ended {
                    bail!("job {n}: streamed {got} of {log_bytes} bytes, ended: {ended}");
                }
                bytes.fetch_add(got, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.context("a streamer panicked")??;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let samples = sampler.await.context("the sampler panicked")?;
    let hwm = proc_kib(pid, "VmHWM").unwrap_or(0);
    drop(server);
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let max = sorted.last().copied().unwrap_or(0);
    let total = bytes.load(Ordering::Relaxed);
    println!(
        "streaming: {streamed} logs, {:.2} GB in {:.1} s ({:.0} MB/s)",
        total as f64 / 1e9,
        elapsed.as_secs_f64(),
        total as f64 / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "server VmRSS: idle {:.1} MiB; while streaming median {:.1} MiB, max {:.1} MiB ({} samples); VmHWM {:.1} MiB",
        idle as f64 / 1024.0,
        median as f64 / 1024.0,
        max as f64 / 1024.0,
        samples.len(),
        hwm as f64 / 1024.0
    );
    Ok(())
}
