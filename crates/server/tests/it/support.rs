//! Shared pieces of the end-to-end tests: one tokio runtime for the whole
//! test binary, a server started in-process on 127.0.0.1 port 0 with the
//! real `hodei-worker` binary, gRPC clients, and the check that no worker
//! process is left behind.
//!
//! The worker binary: `cargo test --workspace` builds `hodei-worker` into
//! the target directory (the worker crate's own integration tests need it),
//! next to the test executable's parent directory (`target/debug/`). Cargo
//! offers no stable way for one package's tests to depend on another
//! package's binary, so when it is missing (e.g. `cargo test -p
//! hodei-server`), [`worker_binary`] builds it once with the same cargo and
//! target directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use hodei_application::orchestrator::WorkerHandle;
use hodei_infrastructure::local::{is_live, processes_marked_by};
use hodei_proto::v1 as pb;
use hodei_proto::v1::job_service_client::JobServiceClient;
use hodei_server::app::{Server, ServerHandle};
use hodei_server::config::Settings;
use tonic::transport::Channel;

/// The runtime every test runs on.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// The longest one test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `test` on the shared runtime, failing it past [`TEST_TIMEOUT`].
pub fn run<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    // Built (if needed) before the clock starts.
    worker_binary();
    RUNTIME.block_on(async move {
        tokio::time::timeout(TEST_TIMEOUT, tokio::spawn(test))
            .await
            .expect("the test finished in time")
            .expect("the test did not panic");
    });
}

static WORKER_BINARY: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The `hodei-worker` binary of this build, built if needed.
pub fn worker_binary() -> PathBuf {
    let mut found = WORKER_BINARY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = found.as_ref() {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/it-HASH → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps")
        .to_owned();
    let path = profile_dir.join("hodei-worker");
    if !path.is_file() {
        let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .args(["build", "-p", "hodei-worker", "--bin", "hodei-worker"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "building hodei-worker failed");
    }
    assert!(path.is_file(), "{} exists", path.display());
    *found = Some(path.clone());
    path
}

/// A server started for one test, with its data directory.
pub struct TestServer {
    pub handle: ServerHandle,
    _data: tempfile::TempDir,
}

/// Settings for a test server: port 0 for gRPC and HTTP, its own data dir
/// and server id, the real worker binary, short heartbeats.
pub fn settings(data: &Path) -> Settings {
    Settings {
        grpc_addr: "127.0.0.1:0".parse().expect("an address"),
        http_addr: "127.0.0.1:0".parse().expect("an address"),
        data_dir: data.to_owned(),
        server_id: Some(format!("test-{}", unique())),
        worker_binary: Some(worker_binary()),
        provisioning_timeout: Duration::from_secs(30),
        heartbeat_interval: Duration::from_millis(500),
        worker_lost_after: Duration::from_secs(10),
        ..Settings::default()
    }
}

fn unique() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Starts a server with [`settings`], changed by `edit`.
pub async fn start_with(edit: impl FnOnce(&mut Settings)) -> TestServer {
    let data = tempfile::tempdir().expect("a temporary directory");
    let mut settings = settings(data.path());
    edit(&mut settings);
    let handle = Server::start(settings).await.expect("the server starts");
    TestServer {
        handle,
        _data: data,
    }
}

/// Starts a server with the test defaults.
pub async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    /// A test server around a server started by the test itself, on
    /// `data`.
    pub fn adopt(handle: ServerHandle, data: tempfile::TempDir) -> TestServer {
        TestServer {
            handle,
            _data: data,
        }
    }

    /// A connected `JobService` client.
    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    /// A channel to the gRPC port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.handle.grpc_url())
            .expect("a valid url")
            .connect()
            .await
            .expect("the server accepts connections")
    }

    /// Stops the server and checks that every worker process it started,
    /// and every process those started, is gone.
    pub async fn stop(self) -> Vec<WorkerHandle> {
        let created = self.handle.created_workers();
        self.handle.shutdown().await;
        assert_no_worker_process(&created).await;
        created
    }
}

/// Fails unless none of `workers` (by pid) and no process carrying one of
/// their `WORKER_ID`s in its environment is alive, after a short grace for
/// processes being reaped.
pub async fn assert_no_worker_process(workers: &[WorkerHandle]) {
    let mut left = Vec::new();
    for _ in 0..50 {
        left = live_worker_processes(workers);
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("worker processes still alive: {left:?}");
}

/// Pids of live (not zombie) processes that belong to `workers`: the
/// workers themselves (by pid) and whatever carries their `WORKER_ID`.
pub fn live_worker_processes(workers: &[WorkerHandle]) -> Vec<u32> {
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

/// A submission of `pipeline` with an optional source archive.
pub fn submission(name: &str, pipeline: &str, source: Vec<u8>) -> Vec<pb::SubmitRequest> {
    let header = pb::SubmitHeader {
        pipeline_name: name.to_owned(),
        pipeline_text: pipeline.to_owned(),
        pipeline_path: "Jenkinsfile".to_owned(),
        parameters: Default::default(),
        environment: Default::default(),
        source_size: source.len() as u64,
    };
    let mut messages = vec![pb::SubmitRequest {
        part: Some(pb::submit_request::Part::Header(header)),
    }];
    for chunk in source.chunks(1 << 20) {
        messages.push(pb::SubmitRequest {
            part: Some(pb::submit_request::Part::Source(pb::SubmitSourceChunk {
                data: chunk.to_vec(),
            })),
        });
    }
    messages
}

/// Submits `pipeline` and returns the job id.
pub async fn submit(
    client: &mut JobServiceClient<Channel>,
    pipeline: &str,
    source: Vec<u8>,
) -> Result<String, tonic::Status> {
    let messages = submission("e2e", pipeline, source);
    let response = client.submit(tokio_stream::iter(messages)).await?;
    Ok(response.into_inner().job_id)
}

/// What a finished job's watch stream said.
#[derive(Debug, Default)]
pub struct Watched {
    /// Every event, in order.
    pub events: Vec<pb::JobEvent>,
    /// The log lines' texts.
    pub lines: Vec<String>,
    /// The last status and its message.
    pub status: Option<(pb::JobStatus, String)>,
    /// Finished stages with their results.
    pub stages: BTreeMap<String, pb::StageResult>,
}

impl Watched {
    /// Whether some log line contains `text`.
    pub fn has_line(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.contains(text))
    }
}

/// Watches a job from `from` until its stream ends.
pub async fn watch(client: &mut JobServiceClient<Channel>, job: &str, from: u64) -> Watched {
    let mut stream = client
        .watch(pb::WatchRequest {
            job_id: job.to_owned(),
            from_sequence: from,
        })
        .await
        .expect("watch starts")
        .into_inner();
    let mut watched = Watched::default();
    while let Some(event) = stream.message().await.expect("the watch stream works") {
        record(&mut watched, &event);
        watched.events.push(event);
    }
    watched
}

/// Adds one event to what was watched.
pub fn record(watched: &mut Watched, event: &pb::JobEvent) {
    match &event.kind {
        Some(pb::job_event::Kind::Log(line)) => watched.lines.push(line.text.clone()),
        Some(pb::job_event::Kind::Status(status)) => {
            let kind = pb::JobStatus::try_from(status.status).expect("a known status");
            watched.status = Some((kind, status.message.clone()));
        }
        Some(pb::job_event::Kind::Stage(stage))
            if stage.kind == pb::StageEventKind::Finished as i32 =>
        {
            let result = pb::StageResult::try_from(stage.result).expect("a known result");
            watched.stages.insert(stage.path.join("/"), result);
        }
        _ => {}
    }
}

/// Watches a job until a log line contains `text`; returns what was seen.
pub async fn watch_until_line(
    client: &mut JobServiceClient<Channel>,
    job: &str,
    text: &str,
) -> Watched {
    let mut stream = client
        .watch(pb::WatchRequest {
            job_id: job.to_owned(),
            from_sequence: 0,
        })
        .await
        .expect("watch starts")
        .into_inner();
    let mut watched = Watched::default();
    while let Some(event) = stream.message().await.expect("the watch stream works") {
        record(&mut watched, &event);
        watched.events.push(event);
        if watched.has_line(text) {
            return watched;
        }
    }
    panic!("the job ended without printing {text:?}: {watched:#?}");
}

/// A tar archive of the given files.
pub fn source(files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, text) in files {
        let path = dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("a directory");
        }
        std::fs::write(path, text).expect("a file");
    }
    hodei_infrastructure::source::pack_directory(dir.path(), 1 << 20)
        .expect("the directory packs")
        .archive
}
