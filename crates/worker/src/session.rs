//! The worker's connection loop: connect, say hello, handle the server's
//! messages, forward step events, send heartbeats, reconnect within the
//! grace period, and stop everything when the server is gone for good.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hodei_proto::v1::worker_service_client::WorkerServiceClient;
use hodei_proto::v1::{
    Assign, Heartbeat, Hello, Resume, RunStep, SegmentFinished, SegmentReady, ServerMessage,
    SourceChunk, StepFinished, StepOutcome, WorkerMessage, run_step, server_message,
    worker_message,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::config::WorkerConfig;
use crate::step::{self, Action, StepSpec, Stop};
use crate::workspace;
use crate::{Outcome, WorkerError, now_ms};

/// Revision of the protocol this worker speaks.
const PROTOCOL_VERSION: u32 = 1;
/// Longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long the worker waits for the server to close the stream after the
/// worker closed its side.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What step tasks and segment finishers hand to the connection loop.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Forward to the server.
    Message(WorkerMessage),
    /// Close the stream and return from `run` with this outcome.
    Exit(Outcome),
}

/// The workspace source being received as `SourceChunk`s.
#[derive(Debug)]
struct Download {
    expected: u64,
    received: u64,
    path: PathBuf,
    file: tokio::fs::File,
}

/// The segment the worker holds.
#[derive(Debug)]
struct Segment {
    job_id: String,
    segment_id: String,
    workspace: PathBuf,
    env: HashMap<String, String>,
    download: Option<Download>,
    ready: bool,
    /// A finisher runs: no new step is accepted.
    ending: bool,
}

#[derive(Debug)]
struct StepHandle {
    stop: watch::Sender<Stop>,
    join: JoinHandle<()>,
}

/// How one connection ended.
enum Session {
    /// The worker is done.
    Ended(Outcome),
    /// The server refused the worker.
    Refused(String),
    /// No connection could be made, or it broke.
    Broken { was_connected: bool },
    /// Connected, but the server said nothing for longer than the grace.
    Silent,
}

struct Worker {
    config: WorkerConfig,
    out_tx: mpsc::Sender<Outgoing>,
    segment: Option<Segment>,
    steps: HashMap<String, StepHandle>,
    reconnect_token: Option<String>,
    heartbeat_interval: Duration,
    /// `Shutdown` arrived: the stream ending is expected, not a reason to
    /// reconnect.
    shutting_down: bool,
}

fn msg(kind: worker_message::Kind) -> WorkerMessage {
    WorkerMessage { kind: Some(kind) }
}

fn step_error(step_id: &str, text: String) -> WorkerMessage {
    msg(worker_message::Kind::StepFinished(StepFinished {
        step_id: step_id.to_owned(),
        exit_code: -1,
        outcome: StepOutcome::Error as i32,
        message: text,
        duration_ms: 0,
    }))
}

fn segment_finished(segment_id: &str, outcome: StepOutcome, text: String) -> WorkerMessage {
    msg(worker_message::Kind::SegmentFinished(SegmentFinished {
        segment_id: segment_id.to_owned(),
        outcome: outcome as i32,
        message: text,
    }))
}

/// Opens the connection to the server on its Unix socket.
#[derive(Debug, Clone)]
struct UnixConnector(PathBuf);

impl tower_service::Service<tonic::transport::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(hyper_util::rt::TokioIo::new)
        })
    }
}

/// Runs the worker until it is done; see [`crate::run`].
pub(crate) async fn run_until(
    config: WorkerConfig,
    stop: impl Future<Output = ()>,
) -> Result<Outcome, WorkerError> {
    let endpoint = Endpoint::from_shared(config.endpoint())
        .map_err(|e| WorkerError::Endpoint {
            endpoint: config.endpoint(),
            message: e.to_string(),
        })?
        .connect_timeout(
            config
                .server_lost_grace
                .clamp(Duration::from_millis(100), Duration::from_secs(10)),
        )
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    std::fs::create_dir_all(&config.workspace_root).map_err(|source| WorkerError::Workspace {
        path: config.workspace_root.clone(),
        source,
    })?;

    let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(256);
    let mut worker = Worker {
        heartbeat_interval: config.heartbeat_interval,
        config,
        out_tx,
        segment: None,
        steps: HashMap::new(),
        reconnect_token: None,
        shutting_down: false,
    };
    tokio::pin!(stop);
    let grace = worker.config.server_lost_grace;
    let mut lost_since = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let session = tokio::select! {
            session = worker.session(&endpoint, &mut out_rx) => session,
            () = &mut stop => {
                worker.stop_all("worker stopping", &mut out_rx, None).await;
                return Ok(Outcome::Stopped);
            }
        };
        match session {
            Session::Ended(outcome) => {
                worker.stop_all("worker exiting", &mut out_rx, None).await;
                return Ok(outcome);
            }
            Session::Refused(message) => {
                worker
                    .stop_all("refused by the server", &mut out_rx, None)
                    .await;
                return Err(WorkerError::Refused(message));
            }
            Session::Silent => {
                tracing::warn!(
                    grace_ms = grace.as_millis() as u64,
                    "server silent past the grace period"
                );
                worker.stop_all("server lost", &mut out_rx, None).await;
                return Ok(Outcome::ServerLost { grace });
            }
            Session::Broken { was_connected } => {
                if was_connected {
                    tracing::warn!("lost the server; reconnecting");
                    lost_since = Instant::now();
                    backoff = Duration::from_millis(50);
                }
            }
        }
        let waited = lost_since.elapsed();
        if waited >= grace {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "server unreachable past the grace period"
            );
            worker.stop_all("server lost", &mut out_rx, None).await;
            return Ok(Outcome::ServerLost { grace });
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.min(grace - waited)) => {}
            () = &mut stop => {
                worker.stop_all("worker stopping", &mut out_rx, None).await;
                return Ok(Outcome::Stopped);
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl Worker {
    fn hello(&self) -> WorkerMessage {
        let token = self
            .reconnect_token
            .clone()
            .unwrap_or_else(|| self.config.token.expose().to_owned());
        let resume = self.segment.as_ref().map(|segment| Resume {
            job_id: segment.job_id.clone(),
            segment_id: segment.segment_id.clone(),
            running_step_ids: self.steps.keys().cloned().collect(),
        });
        msg(worker_message::Kind::Hello(Hello {
            worker_id: self.config.worker_id.clone(),
            token,
            name: self.config.worker_name.clone(),
            capabilities: self.config.capabilities.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            workspace_root: self.config.workspace_root.display().to_string(),
            ephemeral: self.config.ephemeral,
            resume,
            protocol_version: PROTOCOL_VERSION,
        }))
    }

    /// One connection, from connect to its end.
    async fn session(
        &mut self,
        endpoint: &Endpoint,
        out_rx: &mut mpsc::Receiver<Outgoing>,
    ) -> Session {
        let grace = self.config.server_lost_grace;
        let connected = match &self.config.server_socket {
            Some(path) => {
                endpoint
                    .connect_with_connector(UnixConnector(path.clone()))
                    .await
            }
            None => endpoint.connect().await,
        };
        let channel = match connected {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(error = %e, "connect failed");
                return Session::Broken {
                    was_connected: false,
                };
            }
        };
        let mut client = WorkerServiceClient::new(channel);
        let (grpc_tx, grpc_rx) = mpsc::channel::<WorkerMessage>(64);
        if grpc_tx.send(self.hello()).await.is_err() {
            return Session::Broken {
                was_connected: false,
            };
        }
        let response =
            match tokio::time::timeout(grace, client.connect(ReceiverStream::new(grpc_rx))).await {
                Err(_) => {
                    return Session::Broken {
                        was_connected: false,
                    };
                }
                Ok(Err(status)) => {
                    return match status.code() {
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                            Session::Refused(status.message().to_owned())
                        }
                        _ => {
                            tracing::debug!(error = %status, "connect refused");
                            Session::Broken {
                                was_connected: false,
                            }
                        }
                    };
                }
                Ok(Ok(response)) => response,
            };
        tracing::info!(worker_id = %self.config.worker_id, "connected");
        let mut inbound = response.into_inner();
        let mut last_heard = Instant::now();
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                received = inbound.message() => match received {
                    Ok(Some(message)) => {
                        last_heard = Instant::now();
                        let before = self.heartbeat_interval;
                        let replies = self.handle(message).await;
                        for reply in replies {
                            if grpc_tx.send(reply).await.is_err() {
                                return Session::Broken { was_connected: true };
                            }
                        }
                        if self.heartbeat_interval != before {
                            heartbeat = tokio::time::interval(self.heartbeat_interval);
                            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        }
                    }
                    Ok(None) if self.shutting_down => return Self::exit_outcome(out_rx).await,
                    Ok(None) => return Session::Broken { was_connected: true },
                    Err(_) if self.shutting_down => return Self::exit_outcome(out_rx).await,
                    Err(status) => {
                        if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) {
                            return Session::Refused(status.message().to_owned());
                        }
                        tracing::debug!(error = %status, "stream broke");
                        return Session::Broken { was_connected: true };
                    }
                },
                item = out_rx.recv() => match item {
                    Some(Outgoing::Message(message)) => {
                        self.observe_outgoing(&message);
                        if grpc_tx.send(message).await.is_err() {
                            return Session::Broken { was_connected: true };
                        }
                    }
                    Some(Outgoing::Exit(outcome)) => {
                        drop(grpc_tx);
                        let _ = tokio::time::timeout(CLOSE_WAIT, async {
                            while let Ok(Some(_)) = inbound.message().await {}
                        })
                        .await;
                        return Session::Ended(outcome);
                    }
                    None => return Session::Broken { was_connected: true },
                },
                () = tokio::time::sleep_until(last_heard + grace) => return Session::Silent,
                _ = heartbeat.tick() => {
                    let beat = msg(worker_message::Kind::Heartbeat(Heartbeat { sent_at_ms: now_ms() }));
                    if grpc_tx.send(beat).await.is_err() {
                        return Session::Broken { was_connected: true };
                    }
                }
            }
        }
    }

    /// Waits for the `Exit` that a shutdown in progress will send, dropping
    /// what comes before it (the server is no longer listening).
    async fn exit_outcome(out_rx: &mut mpsc::Receiver<Outgoing>) -> Session {
        while let Some(item) = out_rx.recv().await {
            if let Outgoing::Exit(outcome) = item {
                return Session::Ended(outcome);
            }
        }
        Session::Broken {
            was_connected: true,
        }
    }

    /// Book-keeping on what leaves: finished steps leave the table, a
    /// finished segment frees the worker.
    fn observe_outgoing(&mut self, message: &WorkerMessage) {
        match &message.kind {
            Some(worker_message::Kind::StepFinished(finished)) => {
                self.steps.remove(&finished.step_id);
            }
            Some(worker_message::Kind::SegmentFinished(finished))
                if self
                    .segment
                    .as_ref()
                    .is_some_and(|s| s.segment_id == finished.segment_id) =>
            {
                self.segment = None;
            }
            _ => {}
        }
    }

    /// Handles one server message; returns messages to send right away.
    async fn handle(&mut self, message: ServerMessage) -> Vec<WorkerMessage> {
        let Some(kind) = message.kind else {
            return Vec::new();
        };
        match kind {
            server_message::Kind::Welcome(welcome) => {
                if !welcome.reconnect_token.is_empty() {
                    self.reconnect_token = Some(welcome.reconnect_token);
                }
                if welcome.heartbeat_interval_ms > 0 {
                    self.heartbeat_interval = Duration::from_millis(welcome.heartbeat_interval_ms);
                }
                Vec::new()
            }
            server_message::Kind::Assign(assign) => self.assign(assign).await,
            server_message::Kind::SourceChunk(chunk) => self.source_chunk(chunk).await,
            server_message::Kind::RunStep(run) => self.run_step(run),
            server_message::Kind::CancelStep(cancel) => {
                if let Some(handle) = self.steps.get(&cancel.step_id) {
                    let _ = handle.stop.send(Stop::Cancel(cancel.reason));
                }
                Vec::new()
            }
            server_message::Kind::Cancel(cancel) => {
                let matches = self.segment.as_ref().is_some_and(|s| {
                    cancel.segment_id.is_empty() || s.segment_id == cancel.segment_id
                });
                if matches {
                    for handle in self.steps.values() {
                        let _ = handle.stop.send(Stop::Cancel(cancel.reason.clone()));
                    }
                    let reason = if cancel.reason.is_empty() {
                        "cancelled".to_owned()
                    } else {
                        format!("cancelled: {}", cancel.reason)
                    };
                    self.finish_segment(StepOutcome::Cancelled, reason);
                }
                Vec::new()
            }
            server_message::Kind::FinishSegment(finish) => {
                if self
                    .segment
                    .as_ref()
                    .is_some_and(|s| s.segment_id == finish.segment_id)
                {
                    self.finish_segment(StepOutcome::Success, String::new());
                }
                Vec::new()
            }
            server_message::Kind::Shutdown(shutdown) => {
                tracing::info!(reason = %shutdown.reason, "shutdown requested");
                self.shutting_down = true;
                for handle in self.steps.values() {
                    let _ = handle.stop.send(Stop::Cancel(format!(
                        "worker shutdown: {}",
                        shutdown.reason
                    )));
                }
                let joins: Vec<_> = self.steps.drain().map(|(_, h)| h.join).collect();
                let workspace = self.segment.as_ref().map(|s| s.workspace.clone());
                let out = self.out_tx.clone();
                tokio::spawn(async move {
                    for join in joins {
                        let _ = join.await;
                    }
                    if let Some(dir) = workspace {
                        end_leftovers_and_remove(dir).await;
                    }
                    let _ = out
                        .send(Outgoing::Exit(Outcome::Shutdown {
                            reason: shutdown.reason,
                        }))
                        .await;
                });
                Vec::new()
            }
            server_message::Kind::Heartbeat(_) => Vec::new(),
        }
    }

    async fn assign(&mut self, assign: Assign) -> Vec<WorkerMessage> {
        if let Some(current) = &self.segment {
            if current.segment_id == assign.segment_id {
                return Vec::new();
            }
            return vec![segment_finished(
                &assign.segment_id,
                StepOutcome::Error,
                format!("worker is busy with segment {}", current.segment_id),
            )];
        }
        let name = workspace::workspace_dir_name(
            &assign.job_name,
            assign.build_number,
            &assign.segment_id,
        );
        let dir = match workspace::create_workspace_async(&self.config.workspace_root, &name).await
        {
            Ok(dir) => dir,
            Err(e) => {
                return vec![segment_finished(
                    &assign.segment_id,
                    StepOutcome::Error,
                    format!("creating workspace: {e}"),
                )];
            }
        };
        workspace::enter(&dir);
        let mut env = HashMap::from([
            ("JOB_NAME".to_owned(), assign.job_name.clone()),
            ("BUILD_NUMBER".to_owned(), assign.build_number.to_string()),
        ]);
        env.extend(assign.environment);
        let mut segment = Segment {
            job_id: assign.job_id,
            segment_id: assign.segment_id.clone(),
            workspace: dir.clone(),
            env,
            download: None,
            ready: false,
            ending: false,
        };
        if assign.skip_checkout || assign.source_size == 0 {
            segment.ready = true;
            self.segment = Some(segment);
            return vec![self.ready_message()];
        }
        let tar_path = self
            .config
            .workspace_root
            .join(format!(".{name}.source.tar"));
        match tokio::fs::File::create(&tar_path).await {
            Ok(file) => {
                segment.download = Some(Download {
                    expected: assign.source_size,
                    received: 0,
                    path: tar_path,
                    file,
                });
                self.segment = Some(segment);
                Vec::new()
            }
            Err(e) => {
                self.segment = Some(segment);
                self.fail_segment(format!("source archive {}: {e}", tar_path.display()));
                Vec::new()
            }
        }
    }

    fn ready_message(&self) -> WorkerMessage {
        let (segment_id, workspace) = self
            .segment
            .as_ref()
            .map(|s| (s.segment_id.clone(), s.workspace.display().to_string()))
            .unwrap_or_default();
        msg(worker_message::Kind::SegmentReady(SegmentReady {
            segment_id,
            workspace,
        }))
    }

    async fn source_chunk(&mut self, chunk: SourceChunk) -> Vec<WorkerMessage> {
        let Some(segment) = self
            .segment
            .as_mut()
            .filter(|s| s.segment_id == chunk.segment_id)
        else {
            tracing::warn!(segment_id = %chunk.segment_id, "source chunk for an unknown segment");
            return Vec::new();
        };
        let Some(download) = segment.download.as_mut() else {
            tracing::warn!(segment_id = %chunk.segment_id, "source chunk after the source was complete");
            return Vec::new();
        };
        download.received += chunk.data.len() as u64;
        if download.received > download.expected {
            let text = format!(
                "source archive: received more than the announced {} bytes",
                download.expected
            );
            self.fail_segment(text);
            return Vec::new();
        }
        if let Err(e) = download.file.write_all(&chunk.data).await {
            let text = format!("source archive {}: {e}", download.path.display());
            self.fail_segment(text);
            return Vec::new();
        }
        if download.received < download.expected {
            return Vec::new();
        }
        let Some(mut download) = segment.download.take() else {
            return Vec::new();
        };
        if let Err(e) = download.file.flush().await {
            let text = format!("source archive {}: {e}", download.path.display());
            self.fail_segment(text);
            return Vec::new();
        }
        drop(download.file);
        let dest = segment.workspace.clone();
        let tar_path = download.path.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let result = std::fs::File::open(&tar_path)
                .map_err(workspace::WorkspaceError::Archive)
                .and_then(|file| workspace::unpack_source(std::io::BufReader::new(file), &dest));
            let _ = std::fs::remove_file(&tar_path);
            result
        })
        .await;
        match unpacked {
            Ok(Ok(entries)) => {
                tracing::debug!(entries, "source unpacked");
                segment.ready = true;
                vec![self.ready_message()]
            }
            Ok(Err(e)) => {
                self.fail_segment(format!("checkout failed: {e}"));
                Vec::new()
            }
            Err(e) => {
                self.fail_segment(format!("checkout failed: {e}"));
                Vec::new()
            }
        }
    }

    /// The segment cannot go on: report it finished with ERROR.
    fn fail_segment(&mut self, text: String) {
        if let Some(segment) = self.segment.as_mut()
            && let Some(download) = segment.download.take()
        {
            let _ = std::fs::remove_file(&download.path);
        }
        self.finish_segment(StepOutcome::Error, text);
    }

    /// Waits (in a task) for the segment's steps, removes its workspace and
    /// sends `SegmentFinished`; an ephemeral worker exits after it.
    fn finish_segment(&mut self, outcome: StepOutcome, text: String) {
        let Some(segment) = self.segment.as_mut() else {
            return;
        };
        if segment.ending {
            return;
        }
        segment.ending = true;
        // The handles (with their stop senders) go along: dropping a sender
        // would read as "stop" to a step that should run to its end.
        let handles: Vec<StepHandle> = self.steps.drain().map(|(_, h)| h).collect();
        let workspace = segment.workspace.clone();
        let segment_id = segment.segment_id.clone();
        let out = self.out_tx.clone();
        let ephemeral = self.config.ephemeral;
        tokio::spawn(async move {
            for handle in handles {
                let _ = handle.join.await;
            }
            end_leftovers_and_remove(workspace).await;
            let _ = out
                .send(Outgoing::Message(segment_finished(
                    &segment_id,
                    outcome,
                    text,
                )))
                .await;
            if ephemeral {
                let _ = out
                    .send(Outgoing::Exit(Outcome::SegmentFinished { segment_id }))
                    .await;
            }
        });
    }

    fn run_step(&mut self, run: RunStep) -> Vec<WorkerMessage> {
        let step_id = run.step_id.clone();
        let segment = match &self.segment {
            Some(s) if s.segment_id == run.segment_id => s,
            _ => {
                return vec![step_error(
                    &step_id,
                    format!(
                        "segment {:?} is not assigned to this worker",
                        run.segment_id
                    ),
                )];
            }
        };
        if segment.ending {
            return vec![step_error(
                &step_id,
                format!("segment {} is ending", segment.segment_id),
            )];
        }
        if !segment.ready {
            return vec![step_error(
                &step_id,
                format!(
                    "segment {} has not received its whole source yet",
                    segment.segment_id
                ),
            )];
        }
        if self.steps.contains_key(&step_id) {
            return vec![step_error(
                &step_id,
                format!("step {step_id} is already running"),
            )];
        }
        let dir = match workspace::relative_path("dir", &run.dir) {
            Ok(rel) => segment.workspace.join(rel),
            Err(e) => return vec![step_error(&step_id, e.to_string())],
        };
        let action = match run.action {
            Some(run_step::Action::Sh(sh)) => Action::Sh(sh.script),
            Some(run_step::Action::WriteFile(write)) => {
                match workspace::relative_path("writeFile path", &write.path) {
                    Ok(path) if path.as_os_str().is_empty() => {
                        return vec![step_error(
                            &step_id,
                            "writeFile path: expected a file name".to_owned(),
                        )];
                    }
                    Ok(path) => Action::WriteFile {
                        path,
                        text: write.text,
                    },
                    Err(e) => return vec![step_error(&step_id, e.to_string())],
                }
            }
            None => {
                return vec![step_error(
                    &step_id,
                    "run step: expected an action".to_owned(),
                )];
            }
        };
        let mut env = segment.env.clone();
        env.extend(run.environment);
        env.insert(
            "WORKSPACE".to_owned(),
            segment.workspace.display().to_string(),
        );
        env.insert("WORKER_NAME".to_owned(), self.config.worker_name.clone());
        let spec = StepSpec {
            step_id: step_id.clone(),
            action,
            dir,
            env,
            timeout: (run.timeout_ms > 0).then(|| Duration::from_millis(run.timeout_ms)),
            kill_grace: self.config.kill_grace,
        };
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        let join = tokio::spawn(step::run_step(spec, self.out_tx.clone(), stop_rx));
        self.steps.insert(
            step_id,
            StepHandle {
                stop: stop_tx,
                join,
            },
        );
        Vec::new()
    }

    /// Kills every step and waits for them, forwarding what they still say
    /// to `forward` (or dropping it), then ends what they left behind and
    /// removes the workspace.
    async fn stop_all(
        &mut self,
        reason: &str,
        out_rx: &mut mpsc::Receiver<Outgoing>,
        forward: Option<&mpsc::Sender<WorkerMessage>>,
    ) {
        for handle in self.steps.values() {
            let _ = handle.stop.send(Stop::Cancel(reason.to_owned()));
        }
        let joins: Vec<_> = self.steps.drain().map(|(_, h)| h.join).collect();
        for mut join in joins {
            loop {
                tokio::select! {
                    _ = &mut join => break,
                    item = out_rx.recv() => {
                        if let (Some(Outgoing::Message(message)), Some(tx)) = (item, forward) {
                            let _ = tx.send(message).await;
                        }
                    }
                }
            }
        }
        if let Some(segment) = self.segment.take() {
            if let Some(download) = segment.download {
                let _ = std::fs::remove_file(&download.path);
            }
            end_leftovers_and_remove(segment.workspace).await;
        }
    }
}

/// Once no step of a segment runs: ends whatever its steps left behind,
/// then removes its workspace (a process left behind may still be writing
/// there).
async fn end_leftovers_and_remove(workspace: PathBuf) {
    match crate::orphans::end_adopted(crate::orphans::ORPHAN_KILL_WITHIN).await {
        Ok(0) => {}
        Ok(ended) => tracing::info!(processes = ended, "killed processes the steps left"),
        Err(e) => tracing::warn!(error = %e, "processes the steps left"),
    }
    workspace::leave();
    let _ = workspace::remove_workspace_async(workspace).await;
}
