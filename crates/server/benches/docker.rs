//! The Docker backend's overhead: submit to first step output on a docker
//! agent, against a bare `docker run` of the same image and command,
//! measured alternately in one run; then 50 container workers at once.
//!
//! Needs the engine and the offline test image with the static worker
//! (`scripts/build-test-image.sh`). Run:
//!
//! ```text
//! cargo bench -p hodei-server --bench docker
//! ```
//!
//! `HODEI_BENCH_ROUNDS` sets the number of alternating rounds (default 20),
//! `HODEI_BENCH_CONCURRENT` the number of concurrent jobs (default 50).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hodei_proto::v1 as pb;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_server::app::Server;
use hodei_server::config::{Backend, Settings};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

const IMAGE: &str = "hodei/worker:test";
const MARKER: &str = "first-step-output";

fn static_worker() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("HODEI_DOCKER_WORKER_BINARY") {
        // A relative path is taken from the repository root.
        Some(path) => root.join(path),
        None => root.join("target/static/hodei-worker"),
    }
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn submission(pipeline: &str) -> Vec<pb::SubmitRequest> {
    vec![pb::SubmitRequest {
        part: Some(pb::submit_request::Part::Header(pb::SubmitHeader {
            pipeline_name: "bench".to_owned(),
            pipeline_text: pipeline.to_owned(),
            pipeline_path: "Jenkinsfile".to_owned(),
            parameters: Default::default(),
            environment: Default::default(),
            source_size: 0,
        })),
    }]
}

/// Submits `pipeline`; returns the time to the first log line containing
/// `marker` (if asked) and the final status.
async fn run_job(
    mut client: JobServiceClient<Channel>,
    pipeline: &str,
    marker: Option<&str>,
) -> (Option<Duration>, pb::JobStatus) {
    let started = Instant::now();
    let job = client
        .submit(tokio_stream::iter(submission(pipeline)))
        .await
        .expect("submitted")
        .into_inner()
        .job_id;
    let mut stream = client
        .watch(pb::WatchRequest {
            job_id: job,
            from_sequence: 0,
        })
        .await
        .expect("watching")
        .into_inner();
    let mut first = None;
    let mut status = pb::JobStatus::Unspecified;
    while let Some(event) = stream.message().await.expect("the watch stream") {
        match event.kind {
            Some(pb::job_event::Kind::Log(line))
                if first.is_none() && marker.is_some_and(|m| line.text.contains(m)) =>
            {
                first = Some(started.elapsed());
            }
            Some(pb::job_event::Kind::Status(s)) => {
                status = pb::JobStatus::try_from(s.status).unwrap_or(pb::JobStatus::Unspecified);
            }
            _ => {}
        }
    }
    (first, status)
}

/// `docker run` of the same image and command: time to its first output.
async fn bare_docker_run() -> Duration {
    let started = Instant::now();
    let mut child = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            "-c",
            &format!("echo {MARKER}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker run starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut first = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if first.is_none() && line.contains(MARKER) {
            first = Some(started.elapsed());
        }
    }
    let status = child.wait().await.expect("docker run ends");
    assert!(status.success(), "docker run failed");
    first.expect("docker run printed the marker")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn containers_of(server_id: &str) -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=hodei.dev/server-id={server_id}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // special: run either way, but only when the engine is there.
    let worker = static_worker();
    let engine = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !worker.is_file() || !engine {
        eprintln!(
            "docker bench skipped: needs a docker engine, {IMAGE} and {} (scripts/build-test-image.sh)",
            worker.display()
        );
        return;
    }
    let rounds = env_number("HODEI_BENCH_ROUNDS", 20);
    let concurrent = env_number("HODEI_BENCH_CONCURRENT", 50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let data = tempfile::tempdir().expect("a data dir");
        let server_id = format!("bench-{}", std::process::id());
        let settings = Settings {
            grpc_addr: "127.0.0.1:0".parse().expect("an address"),
            http_addr: "127.0.0.1:0".parse().expect("an address"),
            data_dir: data.path().to_owned(),
            backend: Backend::Docker,
            server_id: Some(server_id.clone()),
            worker_binary: Some(worker.canonicalize().unwrap_or(worker)),
            max_workers: u32::try_from(concurrent.max(1)).unwrap_or(u32::MAX),
            ..Settings::default()
        };
        let server = Server::start(settings).await.expect("the server starts");
        let channel = Channel::from_shared(server.grpc_url())
            .expect("a url")
            .connect()
            .await
            .expect("connected");
        let client = JobServiceClient::new(channel);
        let pipeline = format!(
            "pipeline {{\n  agent {{ docker '{IMAGE}' }}\n  options {{ skipDefaultCheckout() }}\n  stages {{ stage('S') {{ steps {{ sh 'echo {MARKER}' }} }} }}\n}}\n"
        );

        // Warm up both paths once.
        let _ = run_job(client.clone(), &pipeline, Some(MARKER)).await;
        let _ = bare_docker_run().await;

        let mut hodei = Vec::with_capacity(rounds);
        let mut bare = Vec::with_capacity(rounds);
        let mut ratios = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let (first, status) = run_job(client.clone(), &pipeline, Some(MARKER)).await;
            assert_eq!(status, pb::JobStatus::Success, "the bench job succeeds");
            let h = first.expect("the job printed the marker");
            let b = bare_docker_run().await;
            ratios.push(h.as_secs_f64() / b.as_secs_f64());
            hodei.push(h);
            bare.push(b);
        }
        hodei.sort();
        bare.sort();
        ratios.sort_by(f64::total_cmp);
        let (h50, b50) = (percentile(&hodei, 0.5), percentile(&bare, 0.5));
        println!("docker backend, {rounds} alternating rounds:");
        println!(
            "  hodei submit -> first step output: p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms",
            ms(h50),
            ms(percentile(&hodei, 0.9)),
            ms(hodei[0])
        );
        println!(
            "  bare docker run -> first output:   p50 {:.1} ms, p90 {:.1} ms, min {:.1} ms",
            ms(b50),
            ms(percentile(&bare, 0.9)),
            ms(bare[0])
        );
        println!(
            "  ratio of p50s {:.2} (target < 1.3); per-round ratio p50 {:.2}",
            h50.as_secs_f64() / b50.as_secs_f64(),
            ratios[ratios.len() / 2]
        );

        let sleeping = format!(
            "pipeline {{\n  agent {{ docker '{IMAGE}' }}\n  options {{ skipDefaultCheckout() }}\n  stages {{ stage('S') {{ steps {{ sh 'echo {MARKER}; sleep 2' }} }} }}\n}}\n"
        );
        let started = Instant::now();
        let jobs: Vec<_> = (0..concurrent)
            .map(|_| {
                let client = client.clone();
                let pipeline = sleeping.clone();
                tokio::spawn(async move { run_job(client, &pipeline, Some(MARKER)).await })
            })
            .collect();
        let mut succeeded = 0;
        let mut firsts = Vec::new();
        for job in jobs {
            let (first, status) = job.await.expect("the job task");
            if status == pb::JobStatus::Success {
                succeeded += 1;
            }
            firsts.extend(first);
        }
        let elapsed = started.elapsed();
        firsts.sort();
        let left = containers_of(&server_id);
        println!(
            "  {concurrent} concurrent jobs (sh 'sleep 2'): {succeeded} succeeded in {:.2} s; \
             first output p50 {:.0} ms, max {:.0} ms; containers left: {left}",
            elapsed.as_secs_f64(),
            firsts.get(firsts.len() / 2).map_or(0.0, |d| ms(*d)),
            firsts.last().map_or(0.0, |d| ms(*d)),
        );
        server.shutdown().await;
        let left = containers_of(&server_id);
        println!("  containers left after shutdown: {left}");
        assert_eq!(succeeded, concurrent, "every concurrent job succeeds");
        assert_eq!(left, 0, "no container is leaked");
    });
}
