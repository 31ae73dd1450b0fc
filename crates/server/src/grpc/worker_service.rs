//! `WorkerService.Connect`: where workers connect, and the
//! [`WorkerGateway`]/[`WorkerLink`] ports implemented over that stream.
//!
//! - A worker's first message must be `Hello` with its id and its one-time
//!   token, and only its first: a second `Hello` on a registered stream
//!   ends it with `FAILED_PRECONDITION`, and the worker is lost. The token was recorded when the worker was created
//!   ([`RegisteringOrchestrator`] records it on its way to the backend); it
//!   is compared in constant time and can be used once. A wrong, unknown or
//!   reused token ends the call with `UNAUTHENTICATED`; the token itself
//!   never appears in a log line or a message.
//! - A **static** worker (started by hand: `ephemeral = false` in `Hello`,
//!   an id the server did not create) registers with the configured shared
//!   secret ([`StaticWorkers::secret`], compared in constant time). It is
//!   recorded as [`Worker::registered_static`] with its capabilities as
//!   labels, so the worker manager can claim it for any matching job, one
//!   after another, on the same stream. Its record is removed when its
//!   stream ends. With no secret configured static workers are refused; an
//!   id of a worker the server created only accepts that worker's one-time
//!   token; an id already connected is refused with `ALREADY_EXISTS` until
//!   the old connection is gone.
//! - An accepted worker gets `Welcome` and becomes a [`GrpcWorkerLink`],
//!   which [`WorkerHub::wait_connected`] hands to the worker manager.
//! - The server sends a `Heartbeat` every heartbeat interval (the worker
//!   gives up on a silent server); a worker whose stream ends, breaks, or
//!   stays silent for longer than `worker_lost_after` is lost: whatever
//!   waits on it (`assign`, `run_step`, `shutdown`) returns at once, with
//!   [`LinkError::Lost`] and the reason.
//!
//! Reconnecting after a broken stream is not offered yet (`Welcome` carries
//! no `reconnect_token`): a worker that loses its stream is lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hodei_application::clock::Clock;
use hodei_application::events::EventPublisher;
use hodei_application::orchestrator::{
    BackendState, BackendWorker, OneTimeToken, OrchestratorError, WorkerHandle, WorkerOrchestrator,
    WorkerSpec,
};
use hodei_application::worker_link::{
    Assignment, LinkError, LogSink, StepOutcome, StepRequest, WorkerGateway, WorkerLink,
};
use hodei_application::workers::WorkerRepository;
use hodei_domain::{DomainEvent, Worker, WorkerId};
use hodei_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use hodei_proto::v1::{self as pb, ServerMessage, WorkerMessage, server_message, worker_message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::config::Secret;

/// Largest piece of source sent in one `SourceChunk`.
const SOURCE_CHUNK: usize = 1024 * 1024;
/// Workers [`RegisteringOrchestrator::created`] remembers.
pub const CREATED_KEPT: usize = 4096;
/// Messages queued for one worker before senders wait.
const OUTBOUND_QUEUE: usize = 256;

/// How the hub treats workers.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// This server's id, told to workers in `Welcome`.
    pub server_id: String,
    /// How often the server sends heartbeats and asks workers to send theirs.
    pub heartbeat_interval: Duration,
    /// A worker silent this long is lost.
    pub worker_lost_after: Duration,
    /// How long a new connection may take to send `Hello`.
    pub hello_timeout: Duration,
}

/// How static workers (started by hand) are admitted and recorded.
#[derive(Clone)]
pub struct StaticWorkers {
    /// The shared secret they send as their token; `None` refuses them.
    pub secret: Option<Secret>,
    /// Where they are recorded, for the worker manager to claim them.
    pub workers: Arc<dyn WorkerRepository>,
    /// Where their registration and loss are published.
    pub events: Arc<dyn EventPublisher>,
    /// Registration time.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for StaticWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticWorkers")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Connected workers and the tokens of the workers expected to connect.
#[derive(Debug, Clone)]
pub struct WorkerHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    config: HubConfig,
    statics: Option<StaticWorkers>,
    tokens: Mutex<HashMap<WorkerId, TokenEntry>>,
    links: Mutex<HashMap<WorkerId, Arc<GrpcWorkerLink>>>,
    /// Ids that registered as static workers: waiting for one that is not
    /// connected fails at once instead of waiting for a connection.
    static_ids: Mutex<HashSet<WorkerId>>,
    generation: watch::Sender<u64>,
    closing: CancellationToken,
}

/// Who an accepted `Hello` is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Admitted {
    /// A worker the server created, with its one-time token.
    Created(WorkerId),
    /// A static worker with the shared secret.
    Static(WorkerId),
}

#[derive(Debug)]
struct TokenEntry {
    secret: OneTimeToken,
    used: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl WorkerHub {
    /// A hub with no worker, refusing static workers.
    pub fn new(config: HubConfig) -> Self {
        Self::build(config, None)
    }

    /// A hub with no worker that admits static workers as `statics` says.
    pub fn with_static_workers(config: HubConfig, statics: StaticWorkers) -> Self {
        Self::build(config, Some(statics))
    }

    fn build(config: HubConfig, statics: Option<StaticWorkers>) -> Self {
        WorkerHub {
            inner: Arc::new(HubInner {
                config,
                statics,
                static_ids: Mutex::new(HashSet::new()),
                tokens: Mutex::new(HashMap::new()),
                links: Mutex::new(HashMap::new()),
                generation: watch::Sender::new(0),
                closing: CancellationToken::new(),
            }),
        }
    }

    /// The tonic service to mount on the gRPC server.
    pub fn service(&self) -> WorkerServiceServer<WorkerServiceImpl> {
        WorkerServiceServer::new(WorkerServiceImpl { hub: self.clone() })
    }

    /// Expects `worker` to connect with `token`, once.
    pub fn expect(&self, worker: WorkerId, token: OneTimeToken) {
        lock(&self.inner.tokens).insert(
            worker,
            TokenEntry {
                secret: token,
                used: false,
            },
        );
    }

    /// Forgets the worker's token (it was deleted).
    pub fn forget(&self, worker: &WorkerId) {
        lock(&self.inner.tokens).remove(worker);
    }

    /// Workers connected now, with the time they were last heard from
    /// (milliseconds since the Unix epoch).
    pub fn connected(&self) -> Vec<(WorkerId, u64)> {
        let links: Vec<Arc<GrpcWorkerLink>> = lock(&self.inner.links).values().cloned().collect();
        links
            .into_iter()
            .map(|l| (l.id.clone(), lock(&l.state).last_heard_ms))
            .collect()
    }

    /// Drops every connection (their workers are lost) and refuses new
    /// ones, for a server that stops.
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Checks a `Hello`: a worker the server created must bring its
    /// one-time token; any other id may register as a static worker (when
    /// `ephemeral` is false) with the shared secret.
    fn authenticate(&self, worker: &str, token: &str, ephemeral: bool) -> Result<Admitted, Status> {
        let refused = || {
            tracing::warn!(worker, "worker registration refused");
            Status::unauthenticated(
                "worker registration refused: unknown worker, or a wrong or already used token",
            )
        };
        let id = WorkerId::new(worker).map_err(|_| refused())?;
        let mut tokens = lock(&self.inner.tokens);
        let Some(entry) = tokens.get_mut(&id) else {
            drop(tokens);
            if ephemeral {
                return Err(refused());
            }
            return self.authenticate_static(id, token);
        };
        let matches = constant_time_eq(entry.secret.expose().as_bytes(), token.as_bytes());
        if !matches || entry.used {
            return Err(refused());
        }
        entry.used = true;
        Ok(Admitted::Created(id))
    }

    fn authenticate_static(&self, id: WorkerId, token: &str) -> Result<Admitted, Status> {
        let Some(secret) = self.inner.statics.as_ref().and_then(|s| s.secret.as_ref()) else {
            tracing::warn!(worker = %id, "static worker refused: no static_worker_token configured");
            return Err(Status::unauthenticated(
                "static worker registration refused: this server accepts no static workers \
                 (set static_worker_token or HODEI_STATIC_WORKER_TOKEN on the server)",
            ));
        };
        if !constant_time_eq(secret.expose().as_bytes(), token.as_bytes()) {
            tracing::warn!(worker = %id, "static worker refused: wrong shared token");
            return Err(Status::unauthenticated(
                "static worker registration refused: wrong token (expected the server's static_worker_token)",
            ));
        }
        Ok(Admitted::Static(id))
    }

    /// Records a static worker that passed [`Self::authenticate`] and
    /// attaches its link; refuses the id of a worker the server created
    /// and an id that is connected now.
    async fn register_static(
        &self,
        link: &Arc<GrpcWorkerLink>,
        hello: &pb::Hello,
    ) -> Result<(), Status> {
        let Some(statics) = &self.inner.statics else {
            return Err(Status::unauthenticated(
                "static worker registration refused: this server accepts no static workers",
            ));
        };
        let id = &link.id;
        match statics.workers.find_by_id(id).await {
            Ok(Some(known)) if known.is_ephemeral() => {
                tracing::warn!(worker = %id, "static worker refused: the id is an ephemeral worker's");
                return Err(Status::unauthenticated(
                    "worker registration refused: unknown worker, or a wrong or already used token",
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "cannot read the worker records: {e}"
                )));
            }
        }
        {
            let mut links = lock(&self.inner.links);
            if links.contains_key(id) {
                return Err(Status::already_exists(format!(
                    "worker {id} is already connected; retry once its old connection is gone"
                )));
            }
            lock(&self.inner.static_ids).insert(id.clone());
            links.insert(id.clone(), link.clone());
        }
        let name = if hello.name.trim().is_empty() {
            id.to_string()
        } else {
            hello.name.trim().to_owned()
        };
        let labels = hello
            .capabilities
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty());
        let worker = Worker::registered_static(id.clone(), name, labels, statics.clock.now());
        if let Err(e) = statics.workers.save(worker).await {
            self.detach(link);
            return Err(Status::unavailable(format!(
                "cannot record the worker: {e}"
            )));
        }
        self.inner.generation.send_modify(|g| *g += 1);
        statics
            .events
            .publish(DomainEvent::WorkerConnected { worker: id.clone() })
            .await;
        Ok(())
    }

    /// Forgets a static worker whose stream ended: its record goes (so it
    /// is not claimed again) while its link is still attached, so a new
    /// connection with the same id cannot register in between.
    async fn unregister_static(&self, link: &Arc<GrpcWorkerLink>, reason: &str) {
        let Some(statics) = &self.inner.statics else {
            return;
        };
        let current = lock(&self.inner.links)
            .get(&link.id)
            .is_some_and(|l| Arc::ptr_eq(l, link));
        if !current {
            return;
        }
        if let Err(e) = statics.workers.delete(&link.id).await {
            tracing::warn!(worker = %link.id, error = %e, "cannot forget static worker");
        }
        statics
            .events
            .publish(DomainEvent::WorkerLost {
                worker: link.id.clone(),
                reason: reason.to_owned(),
            })
            .await;
    }

    fn attach(&self, link: Arc<GrpcWorkerLink>) {
        lock(&self.inner.links).insert(link.id.clone(), link);
        self.inner.generation.send_modify(|g| *g += 1);
    }

    fn detach(&self, link: &Arc<GrpcWorkerLink>) {
        let mut links = lock(&self.inner.links);
        if links.get(&link.id).is_some_and(|l| Arc::ptr_eq(l, link)) {
            links.remove(&link.id);
        }
    }
}

#[async_trait]
impl WorkerGateway for WorkerHub {
    async fn wait_connected(
        &self,
        worker: &WorkerId,
        deadline: Duration,
    ) -> Result<Arc<dyn WorkerLink>, LinkError> {
        let mut generation = self.inner.generation.subscribe();
        let wait = async {
            loop {
                generation.borrow_and_update();
                let found = lock(&self.inner.links).get(worker).cloned();
                if let Some(link) = found {
                    return Ok(link);
                }
                if lock(&self.inner.static_ids).contains(worker) {
                    return Err(LinkError::Lost {
                        worker: worker.clone(),
                        reason: "the static worker is not connected".to_owned(),
                    });
                }
                if generation.changed().await.is_err() {
                    return Err(LinkError::NotConnected {
                        worker: worker.clone(),
                        after: deadline,
                    });
                }
            }
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(Ok(link)) => Ok(link as Arc<dyn WorkerLink>),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LinkError::NotConnected {
                worker: worker.clone(),
                after: deadline,
            }),
        }
    }
}

/// The tonic implementation of `WorkerService`.
#[derive(Debug, Clone)]
pub struct WorkerServiceImpl {
    hub: WorkerHub,
}

/// What the queue to one worker holds. The message is boxed: the queue
/// allocates its slots 32 at a time and a `ServerMessage` is 176 bytes, so
/// an idle connected worker's queue costs about 0.3 KiB instead of 5.6 KiB.
type Outgoing = Result<Box<ServerMessage>, Status>;
type Outbound = mpsc::Sender<Outgoing>;

/// The `Connect` response stream: the worker's queue, unboxed.
#[derive(Debug)]
pub struct OutboundStream(mpsc::Receiver<Outgoing>);

impl tokio_stream::Stream for OutboundStream {
    type Item = Result<ServerMessage, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|item| item.map(|message| message.map(|boxed| *boxed)))
    }
}

fn server_msg(kind: server_message::Kind) -> ServerMessage {
    ServerMessage { kind: Some(kind) }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[async_trait]
impl WorkerService for WorkerServiceImpl {
    type ConnectStream = OutboundStream;

    async fn connect(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let hub = &self.hub;
        if hub.inner.closing.is_cancelled() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let mut inbound = request.into_inner();
        let timeout = hub.inner.config.hello_timeout;
        let first = match tokio::time::timeout(timeout, inbound.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "expected hello within {timeout:?}"
                )));
            }
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the stream ended before hello was sent",
                ));
            }
            Ok(Ok(Some(message))) => message,
        };
        let Some(worker_message::Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "expected hello as the first message",
            ));
        };
        let admitted = hub.authenticate(&hello.worker_id, &hello.token, hello.ephemeral)?;
        let (id, is_static) = match admitted {
            Admitted::Created(id) => (id, false),
            Admitted::Static(id) => (id, true),
        };
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let welcome = server_msg(server_message::Kind::Welcome(pb::Welcome {
            worker_id: id.to_string(),
            heartbeat_interval_ms: hub.inner.config.heartbeat_interval.as_millis() as u64,
            reconnect_token: String::new(),
            server_id: hub.inner.config.server_id.clone(),
        }));
        // The channel is empty: the welcome goes before anything else.
        let _ = tx.try_send(Ok(Box::new(welcome)));
        let link = Arc::new(GrpcWorkerLink::new(id.clone(), tx.clone()));
        // Registration and the session run in their own task, so a call
        // dropped half way never leaves a record or a link behind without a
        // session to clean them up.
        let (admitted_tx, admitted_rx) = oneshot::channel();
        let session_hub = hub.clone();
        tokio::spawn(async move {
            if is_static {
                if let Err(status) = session_hub.register_static(&link, &hello).await {
                    let _ = admitted_tx.send(Err(status));
                    return;
                }
            } else {
                session_hub.attach(link.clone());
            }
            tracing::info!(worker = %link.id, name = %hello.name, version = %hello.version, is_static, "worker connected");
            let _ = admitted_tx.send(Ok(()));
            session(session_hub, link, inbound, tx, is_static).await;
        });
        match admitted_rx.await {
            Ok(Ok(())) => Ok(Response::new(OutboundStream(rx))),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::internal(format!(
                "the registration of worker {id} ended unexpectedly"
            ))),
        }
    }
}

/// Why a stream that sends `Hello` again is ended.
const SECOND_HELLO: &str =
    "hello: this stream is already registered; a stream takes one hello, as its first message";

/// Reads one worker's messages until it is lost (or breaks the protocol:
/// a second hello ends the stream with FAILED_PRECONDITION).
async fn session(
    hub: WorkerHub,
    link: Arc<GrpcWorkerLink>,
    mut inbound: Streaming<WorkerMessage>,
    tx: Outbound,
    is_static: bool,
) {
    let config = &hub.inner.config;
    let mut beat = tokio::time::interval(config.heartbeat_interval);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let mut last_heard = tokio::time::Instant::now();
    let reason = loop {
        tokio::select! {
            received = inbound.message() => match received {
                Ok(Some(WorkerMessage { kind: Some(worker_message::Kind::Hello(_)) })) => {
                    // The stream is registered already: a second hello is a
                    // confused or hostile worker. It gets the reason, and the
                    // worker is lost like any that drops its stream.
                    let status = Status::failed_precondition(SECOND_HELLO);
                    let _ = tokio::time::timeout(config.worker_lost_after, tx.send(Err(status))).await;
                    break SECOND_HELLO.to_owned();
                }
                Ok(Some(message)) => {
                    last_heard = tokio::time::Instant::now();
                    link.handle(message);
                }
                Ok(None) => break "the worker closed its connection".to_owned(),
                Err(status) => break format!("the worker's connection broke: {}", status.message()),
            },
            () = tokio::time::sleep_until(last_heard + config.worker_lost_after) => {
                break format!("no message from the worker for {:?}", config.worker_lost_after);
            }
            _ = beat.tick() => {
                let message = server_msg(server_message::Kind::Heartbeat(pb::Heartbeat { sent_at_ms: now_ms() }));
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(Box::new(message))) {
                    break "the connection to the worker closed".to_owned();
                }
            }
            () = hub.inner.closing.cancelled() => break "the server is shutting down".to_owned(),
        }
    };
    tracing::info!(worker = %link.id, %reason, "worker disconnected");
    if is_static {
        hub.unregister_static(&link, &reason).await;
    }
    link.mark_lost(reason);
    hub.detach(&link);
}

/// A connected worker, driven over its `Connect` stream.
#[derive(Debug)]
pub struct GrpcWorkerLink {
    id: WorkerId,
    tx: Outbound,
    state: Mutex<LinkState>,
}

struct LinkState {
    segment: Option<String>,
    ready: Option<oneshot::Sender<Result<(), String>>>,
    steps: HashMap<String, PendingStep>,
    finished: Option<oneshot::Sender<()>>,
    lost: Option<String>,
    last_heard_ms: u64,
}

impl std::fmt::Debug for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkState")
            .field("segment", &self.segment)
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

struct PendingStep {
    sink: Arc<dyn LogSink>,
    done: oneshot::Sender<StepOutcome>,
}

impl GrpcWorkerLink {
    fn new(id: WorkerId, tx: Outbound) -> Self {
        GrpcWorkerLink {
            id,
            tx,
            state: Mutex::new(LinkState {
                segment: None,
                ready: None,
                steps: HashMap::new(),
                finished: None,
                lost: None,
                last_heard_ms: now_ms(),
            }),
        }
    }

    fn lost_error(&self) -> LinkError {
        let reason = lock(&self.state)
            .lost
            .clone()
            .unwrap_or_else(|| "the connection to the worker closed".to_owned());
        LinkError::Lost {
            worker: self.id.clone(),
            reason,
        }
    }

    async fn send(&self, kind: server_message::Kind) -> Result<(), LinkError> {
        if lock(&self.state).lost.is_some() {
            return Err(self.lost_error());
        }
        self.tx
            .send(Ok(Box::new(server_msg(kind))))
            .await
            .map_err(|_| self.lost_error())
    }

    /// Ends everything that waits on this worker.
    fn mark_lost(&self, reason: String) {
        let mut state = lock(&self.state);
        if state.lost.is_none() {
            state.lost = Some(reason);
        }
        state.ready = None;
        state.steps.clear();
        if let Some(finished) = state.finished.take() {
            let _ = finished.send(());
        }
    }

    /// Routes one message from the worker.
    fn handle(&self, message: WorkerMessage) {
        let mut state = lock(&self.state);
        state.last_heard_ms = now_ms();
        let Some(kind) = message.kind else { return };
        match kind {
            // Refused by the session, which ends the stream.
            worker_message::Kind::Hello(_) => {}
            worker_message::Kind::SegmentReady(ready) => {
                if state.segment.as_deref() == Some(ready.segment_id.as_str())
                    && let Some(waiter) = state.ready.take()
                {
                    let _ = waiter.send(Ok(()));
                }
            }
            worker_message::Kind::StepStarted(_) | worker_message::Kind::Heartbeat(_) => {}
            worker_message::Kind::LogChunk(chunk) => {
                if let Some(step) = state.steps.get(&chunk.step_id) {
                    let sink = step.sink.clone();
                    drop(state);
                    sink.log(
                        &chunk.step_id,
                        convert::log_stream_from_proto(chunk.stream),
                        &chunk.data,
                    );
                }
            }
            worker_message::Kind::StepFinished(finished) => {
                if let Some(step) = state.steps.remove(&finished.step_id) {
                    let _ = step.done.send(convert::step_outcome_from_proto(&finished));
                }
            }
            worker_message::Kind::SegmentFinished(finished) => {
                if state.segment.as_deref() != Some(finished.segment_id.as_str()) {
                    return;
                }
                if let Some(waiter) = state.ready.take() {
                    let message = if finished.message.is_empty() {
                        "the worker could not prepare the workspace".to_owned()
                    } else {
                        finished.message
                    };
                    let _ = waiter.send(Err(message));
                }
                state.segment = None;
                if let Some(waiter) = state.finished.take() {
                    let _ = waiter.send(());
                }
            }
        }
    }
}

#[async_trait]
impl WorkerLink for GrpcWorkerLink {
    fn worker_id(&self) -> &WorkerId {
        &self.id
    }

    async fn assign(&self, assignment: Assignment) -> Result<(), LinkError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        {
            let mut state = lock(&self.state);
            state.segment = Some(assignment.segment_id.clone());
            state.ready = Some(ready_tx);
        }
        let send_source = !assignment.skip_checkout && !assignment.source.is_empty();
        self.send(server_message::Kind::Assign(pb::Assign {
            job_id: assignment.job_id.to_string(),
            job_name: assignment.job_name.clone(),
            build_number: assignment.build_number,
            segment_id: assignment.segment_id.clone(),
            environment: HashMap::new(),
            source_size: if send_source {
                assignment.source.len() as u64
            } else {
                0
            },
            skip_checkout: assignment.skip_checkout,
        }))
        .await?;
        if send_source {
            for chunk in assignment.source.chunks(SOURCE_CHUNK) {
                self.send(server_message::Kind::SourceChunk(pb::SourceChunk {
                    segment_id: assignment.segment_id.clone(),
                    data: chunk.to_vec(),
                }))
                .await?;
            }
        }
        match ready_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(LinkError::Lost {
                worker: self.id.clone(),
                reason,
            }),
            Err(_) => Err(self.lost_error()),
        }
    }

    async fn run_step(
        &self,
        request: StepRequest,
        sink: Arc<dyn LogSink>,
    ) -> Result<StepOutcome, LinkError> {
        let (done_tx, done_rx) = oneshot::channel();
        let segment_id = {
            let mut state = lock(&self.state);
            if state.lost.is_some() {
                drop(state);
                return Err(self.lost_error());
            }
            state.steps.insert(
                request.step_id.clone(),
                PendingStep {
                    sink,
                    done: done_tx,
                },
            );
            state.segment.clone().unwrap_or_default()
        };
        self.send(server_message::Kind::RunStep(convert::run_step_to_proto(
            request, segment_id,
        )))
        .await?;
        done_rx.await.map_err(|_| self.lost_error())
    }

    async fn cancel_step(&self, step_id: &str, reason: &str) -> Result<(), LinkError> {
        self.send(server_message::Kind::CancelStep(pb::CancelStep {
            step_id: step_id.to_owned(),
            reason: reason.to_owned(),
        }))
        .await
    }

    async fn shutdown(&self, reason: &str) -> Result<(), LinkError> {
        let (finished_tx, finished_rx) = oneshot::channel();
        let segment = {
            let mut state = lock(&self.state);
            if state.lost.is_some() {
                return Ok(());
            }
            let segment = state.segment.clone();
            if segment.is_some() {
                state.finished = Some(finished_tx);
            }
            segment
        };
        match segment {
            Some(segment_id) => {
                if self
                    .send(server_message::Kind::FinishSegment(pb::FinishSegment {
                        segment_id,
                    }))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let _ = finished_rx.await;
                Ok(())
            }
            None => {
                let _ = self
                    .send(server_message::Kind::Shutdown(pb::Shutdown {
                        reason: reason.to_owned(),
                    }))
                    .await;
                Ok(())
            }
        }
    }
}

/// Wraps the backend so the hub learns each new worker's token before the
/// worker can connect, and forgets it when the worker is deleted. Also
/// remembers the last [`CREATED_KEPT`] workers it created (id and backend
/// id), for tests and for the shutdown sweep.
pub struct RegisteringOrchestrator {
    backend: Arc<dyn WorkerOrchestrator>,
    hub: WorkerHub,
    created: Mutex<VecDeque<WorkerHandle>>,
}

impl std::fmt::Debug for RegisteringOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteringOrchestrator")
            .field("backend", &self.backend.backend())
            .finish_non_exhaustive()
    }
}

impl RegisteringOrchestrator {
    /// Wraps `backend`.
    pub fn new(backend: Arc<dyn WorkerOrchestrator>, hub: WorkerHub) -> Self {
        RegisteringOrchestrator {
            backend,
            hub,
            created: Mutex::new(VecDeque::new()),
        }
    }

    /// The workers created through this backend (the last
    /// [`CREATED_KEPT`]), oldest first.
    pub fn created(&self) -> Vec<WorkerHandle> {
        lock(&self.created).iter().cloned().collect()
    }
}

#[async_trait]
impl WorkerOrchestrator for RegisteringOrchestrator {
    fn backend(&self) -> &'static str {
        self.backend.backend()
    }

    async fn create_worker(&self, spec: WorkerSpec) -> Result<WorkerHandle, OrchestratorError> {
        let id = spec.worker_id.clone();
        self.hub.expect(id.clone(), spec.token.clone());
        match self.backend.create_worker(spec).await {
            Ok(handle) => {
                let mut created = lock(&self.created);
                if created.len() == CREATED_KEPT {
                    created.pop_front();
                }
                created.push_back(handle.clone());
                Ok(handle)
            }
            Err(e) => {
                self.hub.forget(&id);
                Err(e)
            }
        }
    }

    async fn delete_worker(&self, id: &WorkerId) -> Result<(), OrchestratorError> {
        let result = self.backend.delete_worker(id).await;
        if result.is_ok() {
            self.hub.forget(id);
        }
        result
    }

    async fn list_workers(&self, server_id: &str) -> Result<Vec<BackendWorker>, OrchestratorError> {
        self.backend.list_workers(server_id).await
    }

    async fn worker_state(&self, id: &WorkerId) -> Result<BackendState, OrchestratorError> {
        self.backend.worker_state(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> WorkerHub {
        WorkerHub::new(HubConfig {
            server_id: "srv".into(),
            heartbeat_interval: Duration::from_secs(1),
            worker_lost_after: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn a_token_is_checked_used_once_and_never_echoed() {
        let hub = hub();
        let id = WorkerId::new("w-1").unwrap();
        hub.expect(id.clone(), OneTimeToken::new("s3cret-token"));
        let refused = |worker: &str, token: &str| {
            for ephemeral in [true, false] {
                let status = hub.authenticate(worker, token, ephemeral).unwrap_err();
                assert_eq!(status.code(), tonic::Code::Unauthenticated);
                assert!(
                    token.is_empty() || !status.message().contains(token),
                    "{}",
                    status.message()
                );
            }
        };
        refused("w-1", "s3cret-tokeN");
        refused("w-1", "");
        refused("w-2", "s3cret-token");
        refused("not a valid id!", "s3cret-token");
        assert_eq!(
            hub.authenticate("w-1", "s3cret-token", true).unwrap(),
            Admitted::Created(id.clone())
        );
        refused("w-1", "s3cret-token");
        hub.forget(&id);
        refused("w-1", "s3cret-token");
    }

    fn static_hub(secret: Option<&str>) -> WorkerHub {
        WorkerHub::with_static_workers(
            hub().inner.config.clone(),
            StaticWorkers {
                secret: secret.and_then(Secret::new),
                workers: Arc::new(hodei_infrastructure::InMemoryWorkerRepository::new()),
                events: Arc::new(hodei_infrastructure::BroadcastEventPublisher::new(16)),
                clock: Arc::new(hodei_infrastructure::SystemClock::new()),
            },
        )
    }

    #[test]
    fn static_workers_bring_the_shared_secret() {
        let check = |hub: &WorkerHub,
                     worker: &str,
                     token: &str,
                     ephemeral: bool,
                     expected: Result<Admitted, &str>| {
            let got = hub.authenticate(worker, token, ephemeral);
            match (got, expected) {
                (Ok(got), Ok(expected)) => assert_eq!(got, expected),
                (Err(status), Err(text)) => {
                    assert_eq!(status.code(), tonic::Code::Unauthenticated);
                    assert!(
                        status.message().contains(text),
                        "{} should contain {text:?}",
                        status.message()
                    );
                    assert!(
                        token.is_empty() || !status.message().contains(token),
                        "{}",
                        status.message()
                    );
                }
                (got, expected) => panic!("{worker} {token}: got {got:?}, expected {expected:?}"),
            }
        };
        let id = |s: &str| WorkerId::new(s).unwrap();
        let with = static_hub(Some("shared-s3cret"));
        check(
            &with,
            "s-1",
            "shared-s3cret",
            false,
            Ok(Admitted::Static(id("s-1"))),
        );
        check(&with, "s-1", "shared-s3creT", false, Err("wrong token"));
        check(&with, "s-1", "", false, Err("wrong token"));
        // A static secret does not admit a worker that says it is ephemeral.
        check(&with, "s-1", "shared-s3cret", true, Err("unknown worker"));
        // Nor a worker the server created, whatever it says.
        with.expect(id("e-1"), OneTimeToken::new("one-time"));
        check(&with, "e-1", "shared-s3cret", false, Err("unknown worker"));
        check(
            &with,
            "e-1",
            "one-time",
            false,
            Ok(Admitted::Created(id("e-1"))),
        );

        for hub in [static_hub(None), hub()] {
            check(
                &hub,
                "s-1",
                "shared-s3cret",
                false,
                Err("accepts no static workers"),
            );
        }
    }

    #[tokio::test]
    async fn a_static_worker_is_recorded_while_connected_and_forgotten_after() {
        let hub = static_hub(Some("shared-s3cret"));
        let Some(statics) = hub.inner.statics.clone() else {
            panic!("the hub admits static workers");
        };
        let id = WorkerId::new("s-7").unwrap();
        let hello = pb::Hello {
            worker_id: id.to_string(),
            name: " builder ".into(),
            capabilities: vec!["linux".into(), " java-17 ".into(), String::new()],
            ..Default::default()
        };
        let (tx, _rx) = mpsc::channel(4);
        let link = Arc::new(GrpcWorkerLink::new(id.clone(), tx.clone()));
        hub.register_static(&link, &hello).await.unwrap();
        let record = statics.workers.find_by_id(&id).await.unwrap().unwrap();
        assert_eq!(
            record,
            Worker::registered_static(
                id.clone(),
                "builder",
                ["java-17", "linux"],
                record.created_at()
            )
        );
        assert!(record.is_idle_static());
        let found = hub
            .wait_connected(&id, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(found.worker_id(), &id);

        // A second connection with the same id waits for the first to go.
        let twin = Arc::new(GrpcWorkerLink::new(id.clone(), tx));
        let status = hub.register_static(&twin, &hello).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::AlreadyExists);

        hub.unregister_static(&link, "gone").await;
        link.mark_lost("gone".into());
        hub.detach(&link);
        assert_eq!(statics.workers.find_by_id(&id).await.unwrap(), None);
        // Waiting for a static worker that is gone fails at once.
        let err = hub
            .wait_connected(&id, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::Lost { .. }), "{err:?}");
        hub.register_static(&twin, &hello).await.unwrap();
    }

    #[tokio::test]
    async fn waiting_for_a_worker_that_never_connects_times_out() {
        let hub = hub();
        let id = WorkerId::new("w-9").unwrap();
        let err = hub
            .wait_connected(&id, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            LinkError::NotConnected {
                worker: id,
                after: Duration::from_millis(20)
            }
        );
    }

    /// Records what a step's sink received.
    #[derive(Default)]
    struct CountingSink(Mutex<Vec<(String, usize)>>);

    impl LogSink for CountingSink {
        fn log(
            &self,
            step_id: &str,
            _stream: hodei_application::worker_link::LogStream,
            data: &[u8],
        ) {
            lock(&self.0).push((step_id.to_owned(), data.len()));
        }
    }

    /// A link in the middle of a segment: `seg` assigned and not ready,
    /// steps `s-1` and `s-2` running, a shutdown waiting for the segment's
    /// end.
    #[allow(clippy::type_complexity)]
    fn busy_link() -> (
        Arc<GrpcWorkerLink>,
        Arc<CountingSink>,
        oneshot::Receiver<Result<(), String>>,
        Vec<(String, oneshot::Receiver<StepOutcome>)>,
        oneshot::Receiver<()>,
    ) {
        let (tx, _rx) = mpsc::channel(4);
        let link = Arc::new(GrpcWorkerLink::new(WorkerId::new("w-f").unwrap(), tx));
        let sink = Arc::new(CountingSink::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        let (finished_tx, finished_rx) = oneshot::channel();
        let mut steps = Vec::new();
        {
            let mut state = lock(&link.state);
            state.segment = Some("seg".to_owned());
            state.ready = Some(ready_tx);
            state.finished = Some(finished_tx);
            for id in ["s-1", "s-2"] {
                let (done_tx, done_rx) = oneshot::channel();
                state.steps.insert(
                    id.to_owned(),
                    PendingStep {
                        sink: sink.clone(),
                        done: done_tx,
                    },
                );
                steps.push((id.to_owned(), done_rx));
            }
        }
        (link, sink, ready_rx, steps, finished_rx)
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn id() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("seg".to_owned()),
                Just("s-1".to_owned()),
                Just("s-2".to_owned()),
                Just(String::new()),
                ".{0,12}",
            ]
        }

        fn kind() -> impl Strategy<Value = Option<worker_message::Kind>> {
            use worker_message::Kind;
            prop_oneof![
                Just(None),
                (id(), ".{0,16}", any::<bool>()).prop_map(|(worker_id, token, ephemeral)| Some(
                    Kind::Hello(pb::Hello {
                        worker_id,
                        token,
                        ephemeral,
                        ..Default::default()
                    })
                )),
                (id(), ".{0,8}").prop_map(|(segment_id, workspace)| Some(Kind::SegmentReady(
                    pb::SegmentReady {
                        segment_id,
                        workspace
                    }
                ))),
                (id(), any::<u64>()).prop_map(|(step_id, started_at_ms)| Some(Kind::StepStarted(
                    pb::StepStarted {
                        step_id,
                        started_at_ms
                    }
                ))),
                (
                    id(),
                    any::<i32>(),
                    proptest::collection::vec(any::<u8>(), 0..512),
                    any::<u64>()
                )
                    .prop_map(|(step_id, stream, data, sequence)| Some(
                        Kind::LogChunk(pb::LogChunk {
                            step_id,
                            stream,
                            data,
                            sequence
                        })
                    )),
                (id(), any::<i32>(), any::<i32>(), ".{0,12}", any::<u64>()).prop_map(
                    |(step_id, exit_code, outcome, message, duration_ms)| Some(Kind::StepFinished(
                        pb::StepFinished {
                            step_id,
                            exit_code,
                            outcome,
                            message,
                            duration_ms
                        }
                    ))
                ),
                (id(), any::<i32>(), ".{0,12}").prop_map(|(segment_id, outcome, message)| Some(
                    Kind::SegmentFinished(pb::SegmentFinished {
                        segment_id,
                        outcome,
                        message
                    })
                )),
                any::<u64>()
                    .prop_map(|sent_at_ms| Some(Kind::Heartbeat(pb::Heartbeat { sent_at_ms }))),
            ]
        }

        proptest! {
            /// Whatever a worker sends, in any order (a second hello,
            /// unknown or finished steps and segments, out-of-order
            /// results, arbitrary enum values and bytes), the server does
            /// not panic, each step gets at most its one outcome and only
            /// its own output, and losing the worker afterwards still ends
            /// every wait.
            #[test]
            fn arbitrary_worker_messages_never_panic(kinds in proptest::collection::vec(kind(), 0..48)) {
                let (link, sink, mut ready, mut steps, mut finished) = busy_link();
                let mut finished_steps = HashSet::new();
                for kind in kinds {
                    if let Some(worker_message::Kind::StepFinished(f)) = &kind
                        && lock(&link.state).steps.contains_key(&f.step_id)
                    {
                        finished_steps.insert(f.step_id.clone());
                    }
                    link.handle(WorkerMessage { kind });
                }
                for (id, len) in lock(&sink.0).iter() {
                    prop_assert!(id == "s-1" || id == "s-2", "output routed to {id:?} ({len} bytes)");
                }
                for (id, done) in &mut steps {
                    let got = done.try_recv();
                    prop_assert_eq!(got.is_ok(), finished_steps.contains(id.as_str()), "{}", id);
                }
                link.mark_lost("gone".to_owned());
                prop_assert!(!matches!(ready.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
                prop_assert!(!matches!(finished.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
                for (_, done) in &mut steps {
                    prop_assert!(!matches!(done.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                let err = rt.block_on(link.run_step(
                    StepRequest {
                        step_id: "s-3".into(),
                        stage: "S".into(),
                        action: hodei_application::worker_link::StepAction::Sh { script: "true".into() },
                        environment: Default::default(),
                        dir: String::new(),
                    },
                    sink.clone(),
                ));
                prop_assert!(matches!(err, Err(LinkError::Lost { .. })), "{err:?}");
            }
        }

        #[test]
        fn a_huge_chunk_reaches_its_step_whole_and_a_late_one_is_dropped() {
            let (link, sink, _ready, mut steps, _finished) = busy_link();
            let chunk = |step: &str| WorkerMessage {
                kind: Some(worker_message::Kind::LogChunk(pb::LogChunk {
                    step_id: step.to_owned(),
                    stream: 1,
                    data: vec![b'x'; 8 << 20],
                    sequence: 0,
                })),
            };
            link.handle(chunk("s-1"));
            link.handle(WorkerMessage {
                kind: Some(worker_message::Kind::StepFinished(pb::StepFinished {
                    step_id: "s-1".into(),
                    outcome: pb::StepOutcome::Success as i32,
                    ..Default::default()
                })),
            });
            link.handle(chunk("s-1"));
            link.handle(chunk("nobody"));
            assert_eq!(*lock(&sink.0), [("s-1".to_owned(), 8 << 20)]);
            assert_eq!(steps[0].1.try_recv().unwrap(), StepOutcome::Success);
        }
    }

    #[test]
    fn constant_time_comparison() {
        fn check(a: &str, b: &str, expected: bool) {
            assert_eq!(
                constant_time_eq(a.as_bytes(), b.as_bytes()),
                expected,
                "{a:?} {b:?}"
            );
        }
        check("secret", "secret", true);
        check("secret", "secreT", false);
        check("secret", "secrets", false);
        check("secret", "", false);
        check("", "", true);
        check("a\u{0}", "a", false);
    }
}
