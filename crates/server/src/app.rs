//! The composition root: [`Server::start`] turns [`Settings`] into a
//! running server (adapters → use cases → gRPC and HTTP listeners) and
//! returns a [`ServerHandle`] to find and stop it.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use hodei_server::app::Server;
//! use hodei_server::config::Settings;
//!
//! let mut settings = Settings::load(None)?;
//! settings.grpc_addr = "127.0.0.1:0".parse()?; // any free port
//! let server = Server::start(settings).await?;
//! println!("gRPC on {}", server.grpc_url());
//! tokio::signal::ctrl_c().await?;
//! server.shutdown().await; // cancels jobs, deletes every worker, stops listening
//! # Ok(()) }
//! ```
//!
//! # Templates with the local backend
//!
//! The local backend runs every worker as a child process of the server, on
//! the server's own host, so a template's image means nothing to it. It
//! offers one template of its own, `local`, whose capabilities are what the
//! host really has (os, architecture, and the tools found on `PATH` with
//! their major versions). A pipeline asking for a label the host lacks, or
//! for a `docker` or `kubernetes` agent, is refused at submission with the
//! reason. Templates from the `templates` file are added as they are: their
//! workers are local processes too, with the template's environment,
//! lifetime and `max_concurrent_jobs`, and their capabilities are taken on
//! trust, so list there only what the host offers.
//!
//! # Templates with the kubernetes backend
//!
//! The kubernetes backend offers the five built-in templates of the
//! original request (their images are the `hodei/worker:*` images of
//! `docker/`) plus those of the `templates` file, which replace a built-in
//! with the same id. Pods dial `kubernetes_advertise_host` (the server's
//! Service name), else `advertise_host`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use hodei_application::events::EventPublisher;
use hodei_application::jobs::JobRepository;
use hodei_application::manager::{EphemeralWorkerManager, ManagerConfig, ManagerPorts};
use hodei_application::orchestrator::{ServerEndpoint, WorkerHandle, WorkerOrchestrator};
use hodei_application::submit::{CreateAndExecuteJob, JobPorts, JobsConfig};
use hodei_application::templates::WorkerTemplateRepository;
use hodei_application::workers::WorkerRepository;
use hodei_domain::WorkerTemplate;
use hodei_infrastructure::docker::{DockerConfig, DockerOrchestrator};
use hodei_infrastructure::kubernetes::{ClientSource, KubernetesConfig, KubernetesOrchestrator};
use hodei_infrastructure::local::{
    DEFAULT_PROBE_TIMEOUT, LocalConfig, LocalOrchestrator, detect_host_capabilities_cached,
};
use hodei_infrastructure::{
    BroadcastEventPublisher, InMemoryJobRepository, InMemoryWorkerRepository,
    InMemoryWorkerTemplateRepository, RandomIdGenerator, SqliteStore, SystemClock,
    load_template_file,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::config::{Backend, Settings, StoreKind};
use crate::grpc::{
    AdminServiceImpl, HubConfig, JobServiceImpl, RegisteringOrchestrator, RequireBearer,
    StaticWorkers, WorkerHub,
};
use crate::http::{self, HttpState, Metrics, MetricsPublisher};

/// How often the backend is swept for workers the server does not know.
const ORPHAN_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How long a new connection may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the listeners get to close on shutdown.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Why a job that was running when the previous server stopped failed.
pub const RESTART_REASON: &str = "server restarted";

/// Starts Hodei servers. See the module documentation.
#[derive(Debug)]
pub struct Server;

/// A running server.
pub struct ServerHandle {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    server_id: String,
    jobs: CreateAndExecuteJob,
    manager: EphemeralWorkerManager,
    orchestrator: Arc<RegisteringOrchestrator>,
    workers: Arc<dyn WorkerRepository>,
    events: Arc<BroadcastEventPublisher>,
    hub: WorkerHub,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// A server id derived from the data directory, so a restarted server with
/// the same data directory recognises the workers it left behind.
/// A byte limit from the settings as a `usize` (saturating).
fn byte_limit(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

fn derived_server_id(settings: &Settings) -> String {
    // FNV-1a: stable across runs and platforms.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in settings.data_dir.to_string_lossy().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("hodei-{:012x}", hash & 0xffff_ffff_ffff)
}

/// Where the local backend keeps what it found on the host between
/// starts: the user's cache directory (`$XDG_CACHE_HOME/hodei`, else
/// `~/.cache/hodei`), which outlives the temporary data directory of
/// `hodei run`; the data directory when there is no home.
fn capabilities_cache_file(settings: &Settings) -> PathBuf {
    const FILE: &str = "host-capabilities.json";
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    from_env("XDG_CACHE_HOME")
        .or_else(|| from_env("HOME").map(|home| home.join(".cache")))
        .map_or_else(
            || settings.data_dir.join(FILE),
            |cache| cache.join("hodei").join(FILE),
        )
}

/// The longest socket path Linux takes (`sun_path` holds 108 bytes with
/// the final NUL), with some room.
const MAX_SOCKET_PATH: usize = 100;

/// Listens on `data_dir/workers.sock` for the local backend's workers,
/// readable and writable by this user only (a stale socket of an earlier
/// run is replaced). `None`, with the reason logged, when that cannot be
/// done: the workers then use TCP like any other.
fn bind_worker_socket(data_dir: &std::path::Path) -> Option<(PathBuf, tokio::net::UnixListener)> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join("workers.sock");
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        tracing::info!(path = %path.display(), "data_dir is too long a path for a Unix socket: local workers connect over TCP");
        return None;
    }
    let bound = std::fs::create_dir_all(data_dir)
        .and_then(|()| match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| tokio::net::UnixListener::bind(&path))
        .and_then(|listener| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(listener)
        });
    match bound {
        Ok(listener) => Some((path, listener)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot listen on the workers' socket: local workers connect over TCP");
            None
        }
    }
}

impl Server {
    /// Builds the adapters `settings` names, starts the use cases, binds the
    /// gRPC and HTTP listeners (port 0 picks a free port: see
    /// [`ServerHandle::grpc_addr`]), deletes orphans this server id left in
    /// the backend, and serves until [`ServerHandle::shutdown`].
    ///
    /// # Errors
    /// Settings that [`Settings::check`] refuses (with its error, before
    /// anything is bound or created), a listen address in use, an
    /// unavailable backend, a bad templates file, no worker binary for the
    /// local backend.
    pub async fn start(settings: Settings) -> anyhow::Result<ServerHandle> {
        settings.check()?;
        let server_id = settings
            .server_id
            .clone()
            .unwrap_or_else(|| derived_server_id(&settings));
        let grpc_listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("grpc_addr: cannot listen on {}", settings.grpc_addr))?;
        let http_listener = TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("http_addr: cannot listen on {}", settings.http_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let worker_socket = match settings.backend {
            Backend::Local => bind_worker_socket(&settings.data_dir),
            Backend::Docker | Backend::Kubernetes => None,
        };

        let (backend, mut templates): (Arc<dyn WorkerOrchestrator>, _) = match settings.backend {
            Backend::Local => {
                let binary = match &settings.worker_binary {
                    Some(path) => path.clone(),
                    None => LocalConfig::resolve_worker_binary()
                        .context("worker_binary: no hodei-worker binary")?,
                };
                let mut config = LocalConfig::new(binary);
                config.worker_args.clone_from(&settings.worker_args);
                config.workspace_root = settings.data_dir.join("workspaces");
                config.server_lost_grace = Some(settings.worker_lost_after);
                config.server_socket = worker_socket.as_ref().map(|(path, _)| path.clone());
                let host = detect_host_capabilities_cached(
                    DEFAULT_PROBE_TIMEOUT,
                    &capabilities_cache_file(&settings),
                )
                .await;
                let local = host
                    .local_template()
                    .context("cannot build the local template")?;
                (
                    Arc::new(LocalOrchestrator::new(config)) as Arc<dyn WorkerOrchestrator>,
                    vec![local],
                )
            }
            Backend::Docker => {
                let binary = match &settings.worker_binary {
                    Some(path) => path.clone(),
                    None => LocalConfig::resolve_worker_binary().context(
                        "worker_binary: the docker backend injects a static hodei-worker into \
                         each container (build it with scripts/build-static-worker.sh)",
                    )?,
                };
                let mut config = DockerConfig::new(Some(binary));
                config.server_lost_grace = Some(settings.worker_lost_after);
                config.network_mode.clone_from(&settings.docker_network);
                if let Some(socket) = std::env::var("DOCKER_HOST")
                    .ok()
                    .filter(|h| h.starts_with("unix://"))
                {
                    config.socket = socket;
                }
                let docker = DockerOrchestrator::new(config);
                match docker.ping().await {
                    Ok(version) => tracing::info!(%version, "docker engine answers"),
                    Err(e) => {
                        tracing::error!(error = %e, "docker backend: jobs fail until the engine answers")
                    }
                }
                (Arc::new(docker) as Arc<dyn WorkerOrchestrator>, Vec::new())
            }
            Backend::Kubernetes => {
                let kubernetes = kubernetes_backend(&settings, &server_id).await?;
                (
                    Arc::new(kubernetes) as Arc<dyn WorkerOrchestrator>,
                    WorkerTemplate::builtins(),
                )
            }
        };
        if let Some(path) = &settings.templates {
            templates.extend(load_template_file(path)?);
        }
        let templates: Arc<dyn WorkerTemplateRepository> =
            Arc::new(InMemoryWorkerTemplateRepository::from_templates(templates));
        let (job_store, workers): (Arc<dyn JobRepository>, Arc<dyn WorkerRepository>) =
            match settings.store {
                StoreKind::Sqlite => {
                    let store = Arc::new(
                        SqliteStore::open(settings.store_path())
                            .context("store = \"sqlite\" (in data_dir)")?,
                    );
                    (store.clone(), store)
                }
                StoreKind::Memory => (
                    Arc::new(InMemoryJobRepository::new()),
                    Arc::new(InMemoryWorkerRepository::new()),
                ),
            };
        let metrics = Arc::new(Metrics::new());
        let broadcast = Arc::new(BroadcastEventPublisher::new(1024));
        let events: Arc<dyn EventPublisher> =
            Arc::new(MetricsPublisher::new(metrics.clone(), broadcast.clone()));
        let clock = Arc::new(SystemClock::new());
        let ids = Arc::new(RandomIdGenerator::new());

        let hub = WorkerHub::with_static_workers(
            HubConfig {
                server_id: server_id.clone(),
                heartbeat_interval: settings.heartbeat_interval,
                worker_lost_after: settings.worker_lost_after,
                hello_timeout: HELLO_TIMEOUT,
            },
            StaticWorkers {
                secret: settings.static_worker_token.clone(),
                workers: workers.clone(),
                events: events.clone(),
                clock: clock.clone(),
            },
        );
        let orchestrator = Arc::new(RegisteringOrchestrator::new(backend, hub.clone()));

        let mut manager_config = ManagerConfig::new(
            server_id.clone(),
            ServerEndpoint {
                host: settings.worker_facing_host(),
                port: grpc_addr.port(),
            },
        );
        manager_config.provisioning_deadline = settings.provisioning_timeout;
        manager_config.max_workers = settings.max_workers as usize;
        let manager = EphemeralWorkerManager::new(
            manager_config,
            ManagerPorts {
                orchestrator: orchestrator.clone(),
                gateway: Arc::new(hub.clone()),
                templates: templates.clone(),
                workers: workers.clone(),
                events: events.clone(),
                clock: clock.clone(),
                ids: ids.clone(),
            },
        );
        // Restart recovery: the previous run's workers go, then whatever
        // else the backend holds for this server id.
        let gone = manager
            .forget_previous_workers()
            .await
            .context("store: cannot read the workers of the previous run")?;
        if !gone.is_empty() {
            tracing::info!(
                workers = gone.len(),
                "deleted the workers of the previous run"
            );
        }
        sweep_orphans(orchestrator.as_ref(), workers.as_ref(), &server_id).await;
        let jobs = CreateAndExecuteJob::new(
            JobsConfig {
                job_timeout: Some(settings.job_timeout),
                max_line_bytes: byte_limit(settings.max_log_line_bytes),
                max_pipeline_bytes: byte_limit(settings.max_pipeline_bytes),
                max_stages: settings.max_stages as usize,
                ..JobsConfig::default()
            },
            JobPorts {
                jobs: job_store.clone(),
                events,
                clock,
                ids,
                provider: Arc::new(manager.clone()),
                secrets: Arc::new(
                    settings
                        .credentials
                        .iter()
                        .map(|(id, value)| (id.clone(), value.expose().to_owned()))
                        .collect::<BTreeMap<String, String>>(),
                ),
            },
        );

        let recovered = jobs
            .recover(RESTART_REASON)
            .await
            .context("store: cannot recover the jobs of the previous run")?;
        if recovered != Default::default() {
            tracing::info!(
                failed = recovered.failed.len(),
                requeued = recovered.requeued.len(),
                "recovered the jobs of the previous run"
            );
        }

        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        let grpc_serving = Arc::new(AtomicBool::new(false));
        // Workers authenticate in `Hello`; clients with the bearer token.
        let client_auth = RequireBearer::new(settings.client_token.clone());
        let message_limit = byte_limit(settings.max_grpc_message_bytes);
        let grpc = tonic::transport::Server::builder()
            .add_service(
                hub.service()
                    .max_decoding_message_size(message_limit)
                    .max_encoding_message_size(message_limit),
            )
            .add_service(InterceptedService::new(
                JobServiceImpl::new(jobs.clone(), job_store, settings.max_source_bytes)
                    .into_service()
                    .max_decoding_message_size(message_limit)
                    .max_encoding_message_size(message_limit),
                client_auth.clone(),
            ))
            .add_service(InterceptedService::new(
                AdminServiceImpl::new(
                    workers.clone(),
                    templates,
                    hub.clone(),
                    orchestrator.backend(),
                )
                .into_service()
                .max_decoding_message_size(message_limit)
                .max_encoding_message_size(message_limit),
                client_auth,
            ));
        if let Some((path, listener)) = worker_socket {
            // Local workers reach the worker service on a Unix socket: no
            // TCP stack on either side. Only the worker service is there.
            let workers_grpc = tonic::transport::Server::builder().add_service(
                hub.service()
                    .max_decoding_message_size(message_limit)
                    .max_encoding_message_size(message_limit),
            );
            let socket_stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = workers_grpc
                    .serve_with_incoming_shutdown(
                        UnixListenerStream::new(listener),
                        socket_stop.cancelled(),
                    )
                    .await
                {
                    tracing::error!(error = %e, "gRPC server on the workers' socket failed");
                }
                let _ = std::fs::remove_file(&path);
            }));
        }
        let grpc_stop = stop.clone();
        let serving = grpc_serving.clone();
        tasks.push(tokio::spawn(async move {
            serving.store(true, Ordering::SeqCst);
            // Small messages (log lines, step results) must not wait for
            // Nagle's algorithm.
            let incoming = TcpListenerStream::new(grpc_listener).map(|conn| {
                if let Ok(stream) = &conn
                    && let Err(e) = stream.set_nodelay(true)
                {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                conn
            });
            if let Err(e) = grpc
                .serve_with_incoming_shutdown(incoming, grpc_stop.cancelled())
                .await
            {
                tracing::error!(error = %e, "gRPC server failed");
            }
            serving.store(false, Ordering::SeqCst);
        }));

        let router = http::router(HttpState {
            metrics,
            jobs: jobs.clone(),
            workers: workers.clone(),
            orchestrator: orchestrator.clone(),
            server_id: server_id.clone(),
            grpc_serving,
        });
        let http_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(http_listener, router)
                .with_graceful_shutdown(http_stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        }));

        let sweep_stop = stop.clone();
        let sweep_orchestrator = orchestrator.clone();
        let sweep_workers = workers.clone();
        let sweep_id = server_id.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = sweep_stop.cancelled() => return,
                    () = tokio::time::sleep(ORPHAN_SWEEP_INTERVAL) => {
                        sweep_orphans(sweep_orchestrator.as_ref(), sweep_workers.as_ref(), &sweep_id).await;
                    }
                }
            }
        }));

        tracing::info!(%grpc_addr, %http_addr, %server_id, backend = %settings.backend, "server started");
        Ok(ServerHandle {
            grpc_addr,
            http_addr,
            server_id,
            jobs,
            manager,
            orchestrator,
            workers,
            events: broadcast,
            hub,
            stop,
            tasks,
        })
    }
}

/// The Kubernetes backend the settings describe, its client from
/// `kubernetes_kubeconfig` (else `KUBECONFIG`, `~/.kube/config` or the
/// in-cluster service account).
async fn kubernetes_backend(
    settings: &Settings,
    server_id: &str,
) -> anyhow::Result<KubernetesOrchestrator> {
    let mut config = KubernetesConfig::new(server_id);
    config.namespace.clone_from(&settings.kubernetes_namespace);
    config.service_account =
        Some(settings.kubernetes_service_account.clone()).filter(|account| !account.is_empty());
    config
        .worker_image
        .clone_from(&settings.kubernetes_worker_image);
    config
        .worker_image_binary
        .clone_from(&settings.kubernetes_worker_image_binary);
    config.image_pull_policy = settings
        .kubernetes_image_pull_policy
        .map(|policy| policy.to_string());
    config.image_pull_grace = settings.kubernetes_image_pull_grace;
    config.provisioning_deadline = settings.provisioning_timeout;
    config.qps = f64::from(settings.kubernetes_qps);
    config.burst = settings.kubernetes_burst;
    config.run_as_user = settings.kubernetes_run_as_user.map(i64::from);
    config.server_lost_grace = Some(settings.worker_lost_after);
    let (source, key) = match &settings.kubernetes_kubeconfig {
        Some(path) => (
            ClientSource::Kubeconfig(path.clone()),
            "kubernetes_kubeconfig",
        ),
        None => (ClientSource::Infer, "kubernetes_kubeconfig (unset)"),
    };
    let kubernetes = KubernetesOrchestrator::connect(config, source)
        .await
        .with_context(|| format!("{key}: no Kubernetes client configuration"))?;
    match kubernetes.ping().await {
        Ok(version) => {
            tracing::info!(%version, namespace = %settings.kubernetes_namespace, "kubernetes API server answers")
        }
        Err(e) => {
            tracing::error!(error = %e, "kubernetes backend: workers wait until the API server answers")
        }
    }
    Ok(kubernetes)
}

/// Deletes the backend's workers for `server_id` that the worker repository
/// does not know.
async fn sweep_orphans(
    orchestrator: &dyn WorkerOrchestrator,
    workers: &dyn WorkerRepository,
    server_id: &str,
) {
    let found = match orchestrator.list_workers(server_id).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list backend workers for the orphan sweep");
            return;
        }
    };
    for worker in found {
        match workers.find_by_id(&worker.worker_id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(worker = %worker.worker_id, backend_id = %worker.backend_id, "deleting orphaned worker");
                if let Err(e) = orchestrator.delete_worker(&worker.worker_id).await {
                    tracing::warn!(worker = %worker.worker_id, error = %e, "cannot delete orphaned worker");
                }
            }
            Err(e) => {
                tracing::warn!(worker = %worker.worker_id, error = %e, "cannot read worker record")
            }
        }
    }
}

impl ServerHandle {
    /// The address the gRPC server listens on (the real port when the
    /// settings said 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address the HTTP server (`/healthz`, `/readyz`, `/metrics`)
    /// listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The gRPC address as a URL clients connect to
    /// (`http://127.0.0.1:PORT`; an unspecified listen address becomes
    /// 127.0.0.1).
    pub fn grpc_url(&self) -> String {
        let mut addr = self.grpc_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// This server's id (on every backend object it creates).
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The jobs use case, for callers in the same process.
    pub fn jobs(&self) -> &CreateAndExecuteJob {
        &self.jobs
    }

    /// Domain events as they happen (jobs and workers).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<hodei_domain::DomainEvent> {
        self.events.subscribe()
    }

    /// The workers this server created (the last
    /// [`CREATED_KEPT`](crate::grpc::worker_service::CREATED_KEPT)), with
    /// their backend ids (the process id for the local backend), oldest
    /// first.
    pub fn created_workers(&self) -> Vec<WorkerHandle> {
        self.orchestrator.created()
    }

    /// Stops the server: takes no new job, cancels the running ones (their
    /// `post` blocks run, their workers are released), deletes every worker
    /// it created that still exists, drops worker connections and stops
    /// both listeners.
    pub async fn shutdown(self) {
        let reason = "the server is shutting down";
        self.jobs.shutdown(reason).await;
        self.manager.shutdown(reason).await;
        // What the backend still holds for this server; only when it cannot
        // say, every worker this server created. (Deleting a worker that is
        // gone is not free: the local backend then looks through every
        // process for what it may have left, and after a busy run that was
        // thousands of scans.)
        let mut leftovers: Vec<_> = match self.orchestrator.list_workers(&self.server_id).await {
            Ok(found) => found.into_iter().map(|w| w.worker_id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the backend's workers at shutdown; deleting every worker created");
                self.orchestrator
                    .created()
                    .into_iter()
                    .map(|h| h.worker_id)
                    .collect()
            }
        };
        leftovers.sort();
        leftovers.dedup();
        for id in leftovers {
            if let Err(e) = self.orchestrator.delete_worker(&id).await {
                tracing::warn!(worker = %id, error = %e, "cannot delete worker at shutdown");
            }
            if let Err(e) = self.workers.delete(&id).await {
                tracing::warn!(worker = %id, error = %e, "cannot forget worker at shutdown");
            }
        }
        self.hub.close();
        self.stop.cancel();
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        tracing::info!(server_id = %self.server_id, "server stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use hodei_application::orchestrator::{
        BackendState, BackendWorker, OrchestratorError, WorkerSpec,
    };
    use hodei_domain::{JobId, TemplateId, Timestamp, Worker, WorkerId};

    use super::*;

    /// A backend holding a fixed list of workers, recording deletions.
    struct Fixed {
        workers: Vec<WorkerId>,
        deleted: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl WorkerOrchestrator for Fixed {
        fn backend(&self) -> &'static str {
            "fixed"
        }

        async fn create_worker(&self, spec: WorkerSpec) -> Result<WorkerHandle, OrchestratorError> {
            Err(OrchestratorError::AlreadyExists(spec.worker_id))
        }

        async fn delete_worker(&self, id: &WorkerId) -> Result<(), OrchestratorError> {
            self.deleted.lock().unwrap().push(id.to_string());
            Ok(())
        }

        async fn list_workers(
            &self,
            server_id: &str,
        ) -> Result<Vec<BackendWorker>, OrchestratorError> {
            assert_eq!(server_id, "srv-1");
            Ok(self
                .workers
                .iter()
                .map(|id| BackendWorker {
                    worker_id: id.clone(),
                    job_id: None,
                    template_id: None,
                    backend_id: format!("b-{id}"),
                    state: BackendState::Running,
                })
                .collect())
        }

        async fn worker_state(&self, _id: &WorkerId) -> Result<BackendState, OrchestratorError> {
            Ok(BackendState::Running)
        }
    }

    #[tokio::test]
    async fn the_orphan_sweep_deletes_only_unknown_workers() {
        let known = WorkerId::new("w-known").unwrap();
        let orphan = WorkerId::new("w-orphan").unwrap();
        let backend = Fixed {
            workers: vec![known.clone(), orphan],
            deleted: Mutex::new(Vec::new()),
        };
        let workers = InMemoryWorkerRepository::new();
        workers
            .save(Worker::ephemeral(
                known,
                "hodei-local-known",
                TemplateId::new("local").unwrap(),
                JobId::new("job-1").unwrap(),
                "1",
                Timestamp(0),
            ))
            .await
            .unwrap();
        sweep_orphans(&backend, &workers, "srv-1").await;
        assert_eq!(*backend.deleted.lock().unwrap(), ["w-orphan"]);
    }

    #[tokio::test]
    async fn start_refuses_settings_that_check_refuses_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            max_pipeline_bytes: 4096,
            max_grpc_message_bytes: 4096,
            ..Settings::default()
        };
        let expected = settings.check().unwrap_err().to_string();
        assert!(
            expected.starts_with(
                "max_grpc_message_bytes (4096) must be larger than max_pipeline_bytes (4096)"
            ),
            "{expected}"
        );
        let error = Server::start(settings).await.err().unwrap();
        assert_eq!(error.to_string(), expected);
        assert!(!dir.path().join("data").exists());
    }

    #[test]
    fn the_derived_server_id_is_stable_per_data_dir() {
        let a = Settings {
            data_dir: "/var/lib/hodei".into(),
            ..Settings::default()
        };
        let b = Settings {
            data_dir: "/srv/hodei".into(),
            ..Settings::default()
        };
        assert_eq!(derived_server_id(&a), derived_server_id(&a.clone()));
        assert_ne!(derived_server_id(&a), derived_server_id(&b));
        assert!(derived_server_id(&a).starts_with("hodei-"));
    }
}
