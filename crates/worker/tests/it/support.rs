//! A scripted `WorkerService`: each accepted connection is handed to the test,
//! which sends server messages and reads the worker's messages itself.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use hodei_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use hodei_proto::v1::{
    Assign, Hello, RunStep, ServerMessage, ShAction, SourceChunk, StepFinished, WorkerMessage,
    run_step, server_message, worker_message,
};
use hodei_worker::{Outcome, Token, WorkerConfig, WorkerError};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// One runtime for the whole test binary.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
});

/// Runs a test body on the shared runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.block_on(future)
}

/// How long any single expectation may wait before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The token the test server accepts.
pub const TOKEN: &str = "test-token-1";

/// An accepted worker connection.
pub struct Conn {
    pub hello: Hello,
    tx: mpsc::Sender<Result<ServerMessage, Status>>,
    rx: Streaming<WorkerMessage>,
}

impl Conn {
    /// Sends one server message.
    pub async fn send(&self, kind: server_message::Kind) {
        self.tx
            .send(Ok(ServerMessage { kind: Some(kind) }))
            .await
            .expect("worker stream open");
    }

    /// The next message that is not a heartbeat.
    pub async fn recv(&mut self) -> worker_message::Kind {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.rx.message())
                .await
                .expect("worker message in time")
                .expect("worker stream healthy")
                .expect("worker stream not closed");
            match message.kind {
                Some(worker_message::Kind::Heartbeat(_)) | None => continue,
                Some(kind) => return kind,
            }
        }
    }

    /// Waits for the end of the worker's stream (or an error).
    pub async fn closed(&mut self) {
        loop {
            match tokio::time::timeout(PATIENCE, self.rx.message())
                .await
                .expect("stream end in time")
            {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Assigns a segment without source and waits for `SegmentReady`;
    /// returns the workspace path.
    pub async fn assign_empty(&mut self, segment_id: &str) -> PathBuf {
        self.send(server_message::Kind::Assign(Assign {
            job_id: "job-1".into(),
            job_name: "demo".into(),
            build_number: 7,
            segment_id: segment_id.into(),
            environment: [("FROM_ASSIGN".to_owned(), "a".to_owned())].into(),
            source_size: 0,
            skip_checkout: false,
        }))
        .await;
        match self.recv().await {
            worker_message::Kind::SegmentReady(ready) => {
                assert_eq!(ready.segment_id, segment_id);
                PathBuf::from(ready.workspace)
            }
            other => panic!("expected SegmentReady, got {other:?}"),
        }
    }

    /// Sends a source archive in chunks of `chunk` bytes after an `Assign`.
    pub async fn assign_with_source(&mut self, segment_id: &str, archive: &[u8], chunk: usize) {
        self.send(server_message::Kind::Assign(Assign {
            job_id: "job-1".into(),
            job_name: "demo".into(),
            build_number: 8,
            segment_id: segment_id.into(),
            environment: Default::default(),
            source_size: archive.len() as u64,
            skip_checkout: false,
        }))
        .await;
        for piece in archive.chunks(chunk) {
            self.send(server_message::Kind::SourceChunk(SourceChunk {
                segment_id: segment_id.into(),
                data: piece.to_vec(),
            }))
            .await;
        }
    }

    /// Sends `sh script` as step `step_id` of `segment_id`.
    pub async fn sh(&self, segment_id: &str, step_id: &str, script: &str) {
        self.run(RunStep {
            step_id: step_id.into(),
            segment_id: segment_id.into(),
            action: Some(run_step::Action::Sh(ShAction {
                script: script.into(),
            })),
            environment: Default::default(),
            dir: String::new(),
            timeout_ms: 0,
        })
        .await;
    }

    /// Sends a `RunStep`.
    pub async fn run(&self, step: RunStep) {
        self.send(server_message::Kind::RunStep(step)).await;
    }

    /// Collects one step's output (stdout and stderr, in order) until its
    /// `StepFinished`; fails on messages of other steps.
    pub async fn step_result(&mut self, step_id: &str) -> (String, StepFinished) {
        self.step_result_from(step_id, 0).await
    }

    /// Like [`Conn::step_result`] when `next_sequence` chunks were already read.
    pub async fn step_result_from(
        &mut self,
        step_id: &str,
        mut next_sequence: u64,
    ) -> (String, StepFinished) {
        let mut output = Vec::new();
        loop {
            match self.recv().await {
                worker_message::Kind::StepStarted(started) => assert_eq!(started.step_id, step_id),
                worker_message::Kind::LogChunk(chunk) => {
                    assert_eq!(chunk.step_id, step_id);
                    assert_eq!(
                        chunk.sequence, next_sequence,
                        "chunks arrive in order without gaps"
                    );
                    next_sequence += 1;
                    output.extend_from_slice(&chunk.data);
                }
                worker_message::Kind::StepFinished(finished) => {
                    assert_eq!(finished.step_id, step_id);
                    return (String::from_utf8_lossy(&output).into_owned(), finished);
                }
                other => panic!("unexpected message while running {step_id}: {other:?}"),
            }
        }
    }
}

struct Service {
    conns: mpsc::Sender<Conn>,
    down: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl WorkerService for Service {
    type ConnectStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("server is down"));
        }
        let mut rx = request.into_inner();
        let hello = match rx.message().await? {
            Some(WorkerMessage {
                kind: Some(worker_message::Kind::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("expected hello first")),
        };
        if hello.token != TOKEN {
            return Err(Status::unauthenticated("invalid worker token"));
        }
        let (tx, out) = mpsc::channel(64);
        self.conns
            .send(Conn { hello, tx, rx })
            .await
            .map_err(|_| Status::unavailable("test gone"))?;
        Ok(Response::new(ReceiverStream::new(out)))
    }
}

/// The scripted server.
pub struct TestServer {
    pub addr: SocketAddr,
    conns: Mutex<mpsc::Receiver<Conn>>,
    down: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = mpsc::channel(8);
        let down = Arc::new(AtomicBool::new(false));
        let service = Service {
            conns: tx,
            down: down.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(WorkerServiceServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Self {
            addr,
            conns: Mutex::new(rx),
            down,
            task,
        }
    }

    /// The next accepted connection.
    pub async fn accept(&self) -> Conn {
        tokio::time::timeout(PATIENCE, self.conns.lock().await.recv())
            .await
            .expect("worker connects in time")
            .expect("server running")
    }

    /// From now on every connection attempt is refused as unavailable.
    pub fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// A worker configuration pointing at this server.
    pub fn config(&self, worker_id: &str, root: &Path) -> WorkerConfig {
        let mut config = WorkerConfig::new("127.0.0.1", self.addr.port(), worker_id);
        config.token = Token::new(TOKEN);
        config.workspace_root = root.to_owned();
        config.capabilities = vec!["linux".into(), "test".into()];
        config.worker_name = format!("{worker_id}-name");
        config.kill_grace = Duration::from_millis(500);
        config
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a worker in the background.
pub fn spawn_worker(config: WorkerConfig) -> JoinHandle<Result<Outcome, WorkerError>> {
    tokio::spawn(hodei_worker::run(config))
}

/// Waits for a spawned worker's result.
pub async fn outcome(
    worker: JoinHandle<Result<Outcome, WorkerError>>,
) -> Result<Outcome, WorkerError> {
    tokio::time::timeout(PATIENCE, worker)
        .await
        .expect("worker returns in time")
        .expect("worker task did not panic")
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

/// Waits until `pid` is gone; false if it still lives after the patience.
pub async fn gone(pid: u32) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Waits until `path` exists and holds a line; returns its trimmed text.
pub async fn read_when_written(path: &Path) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
