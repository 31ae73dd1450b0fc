//! The Kubernetes backend: each ephemeral worker is one pod (and one
//! Secret holding its token), created through the real `kube` client.
//!
//! - **Pod** (built by [`pod::worker_pod`], a pure function): named
//!   `hodei-worker-<worker id>` in [`KubernetesConfig::namespace`],
//!   labelled with [`WorkerSpec::backend_labels`], `restartPolicy: Never`,
//!   the template's requests and limits, `activeDeadlineSeconds` from the
//!   template's timeout (a backstop if the server never comes back),
//!   [`KubernetesConfig::service_account`], and a non-root security
//!   context when the template's `run_as_user` (or else
//!   [`KubernetesConfig::run_as_user`]) says so. An init
//!   container from [`KubernetesConfig::worker_image`] copies the static
//!   worker into an `emptyDir`, and the template's image runs it as its
//!   command, so any image with a `/bin/sh` runs steps. The worker gets the
//!   seed's variables; its token comes from the Secret through
//!   `secretKeyRef`, so it is in no pod spec and no log.
//! - **Pod yaml**: a `kubernetes { yaml '...' }` agent's manifest is merged
//!   into the template's pod ([`merge`]), refused with the field named when
//!   it is invalid or would change what the worker needs.
//! - **State**: one watcher per orchestrator (kube-runtime's `watcher`,
//!   label-selected by this server's id) keeps every pod's last state;
//!   [`WorkerOrchestrator::worker_state`] reads it without a request. An
//!   image pull failing past [`KubernetesConfig::image_pull_grace`], a bad
//!   container config, a pod unschedulable past the provisioning deadline,
//!   a `Failed` pod, an OOM kill or a worker container that ended are the
//!   pod's own reason ([`state::assess`]). Pods are never recreated.
//! - **Delete** removes the pod and its Secret (a missing one is fine);
//!   **list** selects on `hodei.dev/server-id`, Secrets included, so a
//!   restarted server deletes what it left behind.
//! - **API server unreachable**: creates retry with backoff until the
//!   provisioning deadline, deletes for [`KubernetesConfig::delete_retry`];
//!   the watcher reconnects by itself.
//! - **Rate**: every request, the watcher's included, passes a token bucket
//!   ([`throttle`]) of [`KubernetesConfig::qps`] and
//!   [`KubernetesConfig::burst`].

pub mod merge;
pub mod pod;
pub mod state;
pub mod throttle;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hodei_application::orchestrator::{
    BackendState, BackendWorker, LABEL_MANAGED_BY, LABEL_SERVER_ID, LABEL_WORKER_ID,
    OrchestratorError, WorkerHandle, WorkerOrchestrator, WorkerSpec,
};
use hodei_domain::WorkerId;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use tokio::time::Instant;
use tokio_stream::StreamExt;

pub use merge::PodYamlError;
pub use pod::{pod_name, worker_pod, worker_secret};

/// The namespace workers run in when none is configured.
pub const DEFAULT_NAMESPACE: &str = "hodei-workers";
/// The service account of worker pods when none is configured.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "hodei-worker";
/// The image the init container copies the worker from, by default.
pub const DEFAULT_WORKER_IMAGE: &str = "hodei/worker:latest";
/// Where the worker is inside [`DEFAULT_WORKER_IMAGE`].
pub const DEFAULT_WORKER_IMAGE_BINARY: &str = "/usr/local/bin/hodei-worker";
/// Longest wait between two attempts of a failing request.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest one attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings of the Kubernetes backend.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The server's id: the watcher and `list_workers` select on it.
    pub server_id: String,
    /// The namespace of worker pods and Secrets.
    pub namespace: String,
    /// The pods' service account (`None`: the namespace's default).
    pub service_account: Option<String>,
    /// The image the init container copies the static worker from.
    pub worker_image: String,
    /// The static worker's path inside [`KubernetesConfig::worker_image`].
    pub worker_image_binary: String,
    /// Inject the worker (init container + command); `false` when every
    /// template's image ships the worker as its entrypoint.
    pub inject_worker: bool,
    /// `imagePullPolicy` of the worker's containers (`None`: Kubernetes'
    /// default).
    pub image_pull_policy: Option<String>,
    /// How long an image pull may keep failing before the worker fails.
    pub image_pull_grace: Duration,
    /// How long a pod may take to be created and scheduled: the caller's
    /// provisioning deadline. Creates retry within it; a pod unschedulable
    /// this long fails.
    pub provisioning_deadline: Duration,
    /// How long a delete keeps retrying while the API server is
    /// unreachable (then the orphan collector takes over).
    pub delete_retry: Duration,
    /// Requests per second to the API server, all requests together.
    pub qps: f64,
    /// Requests allowed at once above the rate.
    pub burst: u32,
    /// A user id above 0 runs the pod as that user with `runAsNonRoot`,
    /// no privilege escalation and no capabilities (`None`: the image's
    /// user). A template's own `run_as_user` wins over it.
    pub run_as_user: Option<i64>,
    /// Given to workers as `HODEI_SERVER_LOST_GRACE`.
    pub server_lost_grace: Option<Duration>,
    /// `terminationGracePeriodSeconds` and the grace of deletes.
    pub termination_grace: Duration,
    /// How many log lines an exited worker reports.
    pub log_lines: usize,
}

impl KubernetesConfig {
    /// The defaults for the server `server_id`: namespace `hodei-workers`,
    /// service account `hodei-worker`, worker from `hodei/worker:latest`,
    /// pull grace 30 s, provisioning deadline 120 s, 20 requests per second
    /// with bursts of 40, the image's own user.
    pub fn new(server_id: impl Into<String>) -> Self {
        KubernetesConfig {
            server_id: server_id.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            service_account: Some(DEFAULT_SERVICE_ACCOUNT.to_owned()),
            worker_image: DEFAULT_WORKER_IMAGE.to_owned(),
            worker_image_binary: DEFAULT_WORKER_IMAGE_BINARY.to_owned(),
            inject_worker: true,
            image_pull_policy: None,
            image_pull_grace: Duration::from_secs(30),
            provisioning_deadline: Duration::from_secs(120),
            delete_retry: Duration::from_secs(30),
            qps: 20.0,
            burst: 40,
            run_as_user: None,
            server_lost_grace: None,
            termination_grace: Duration::from_secs(5),
            log_lines: 20,
        }
    }

    /// The label selector of this server's objects.
    pub fn selector(&self) -> String {
        format!(
            "{LABEL_MANAGED_BY}=hodei,{LABEL_SERVER_ID}={}",
            self.server_id
        )
    }

    fn rules(&self) -> state::Rules {
        state::Rules {
            image_pull_grace: self.image_pull_grace,
            unschedulable_after: self.provisioning_deadline,
        }
    }
}

/// Where the client finds the cluster.
#[derive(Debug, Clone)]
pub enum ClientSource {
    /// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service
    /// account.
    Infer,
    /// This kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`).
    InCluster,
    /// A ready configuration.
    Config(Box<kube::Config>),
}

/// Why the backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// The client configuration could not be loaded.
    #[error("kubernetes client configuration ({source_name}): {message}")]
    Config {
        /// Where it was looked for.
        source_name: String,
        /// What went wrong.
        message: String,
    },
}

/// A pod as last seen, with what the rules need beyond it.
#[derive(Debug)]
struct Tracked {
    /// The last pod seen (`None`: not seen yet).
    pod: Option<Pod>,
    /// When this server asked for it (or first saw it).
    since: Instant,
    /// Since when an image pull has been failing.
    pull_failing_since: Option<Instant>,
    /// Deleted by this server: the worker is gone.
    deleted: bool,
    /// The worker container's last log lines, once read.
    last_lines: Option<Vec<String>>,
}

impl Tracked {
    fn new(since: Instant) -> Self {
        Tracked {
            pod: None,
            since,
            pull_failing_since: None,
            deleted: false,
            last_lines: None,
        }
    }

    fn observe(&mut self, pod: Pod, now: Instant) {
        if let Some(old) = &self.pod
            && older(&pod, old)
        {
            return;
        }
        match state::pull_error(&pod) {
            Some(_) => {
                self.pull_failing_since.get_or_insert(now);
            }
            None => self.pull_failing_since = None,
        }
        self.pod = Some(pod);
    }
}

/// Whether `new` is an older version of the pod than `old` (resource
/// versions compared as numbers when both are).
fn older(new: &Pod, old: &Pod) -> bool {
    let version = |p: &Pod| {
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    matches!((version(new), version(old)), (Some(n), Some(o)) if n < o)
}

/// The watcher's view of this server's pods.
#[derive(Debug, Default)]
struct Cache {
    /// Whether a full list has been seen since the watcher started.
    synced: bool,
    /// When the current (re)list started, and what it has listed so far.
    init: Option<(Instant, HashSet<WorkerId>)>,
    pods: HashMap<WorkerId, Tracked>,
}

fn worker_id_of(pod: &Pod) -> Option<WorkerId> {
    let labels = pod.metadata.labels.as_ref()?;
    WorkerId::new(labels.get(LABEL_WORKER_ID)?.as_str()).ok()
}

impl Cache {
    fn apply(&mut self, pod: Pod, now: Instant) {
        let Some(id) = worker_id_of(&pod) else { return };
        if let Some((_, listed)) = &mut self.init {
            listed.insert(id.clone());
        }
        self.pods
            .entry(id)
            .or_insert_with(|| Tracked::new(now))
            .observe(pod, now);
    }

    fn delete(&mut self, pod: &Pod) {
        if let Some(id) = worker_id_of(pod) {
            self.pods.remove(&id);
        }
    }

    /// After a full list: pods known from before it that it did not list
    /// are gone.
    fn init_done(&mut self) {
        if let Some((started, listed)) = self.init.take() {
            self.pods
                .retain(|id, tracked| listed.contains(id) || tracked.since >= started);
        }
        self.synced = true;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How a failed request is handled.
#[derive(Debug)]
enum Failure {
    NotFound,
    AlreadyExists,
    /// The API server refused the request; retrying will not help.
    Refused(String),
    /// Unreachable, overloaded or timed out: retry.
    Transient(String),
}

fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) if status.code == 404 => Failure::NotFound,
        kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists" => {
            Failure::AlreadyExists
        }
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
            Failure::Transient(format!("{} ({})", status.message, status.code))
        }
        kube::Error::Api(status) => Failure::Refused(if status.message.is_empty() {
            format!("{} ({})", status.reason, status.code)
        } else {
            status.message.clone()
        }),
        kube::Error::HyperError(_) | kube::Error::Service(_) => Failure::Transient(error_chain(e)),
        other => Failure::Refused(error_chain(other)),
    }
}

/// An error and its sources, joined by `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The Kubernetes [`WorkerOrchestrator`]. See the module documentation.
pub struct KubernetesOrchestrator {
    config: KubernetesConfig,
    client: kube::Client,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    cache: Arc<Mutex<Cache>>,
    watcher: tokio::task::AbortHandle,
}

impl std::fmt::Debug for KubernetesOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesOrchestrator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for KubernetesOrchestrator {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl KubernetesOrchestrator {
    /// Loads the client configuration from `source`, puts the rate limit
    /// of `config` in front of it and starts the backend (see
    /// [`KubernetesOrchestrator::new`]). Does not contact the API server:
    /// see [`KubernetesOrchestrator::ping`].
    ///
    /// # Errors
    /// [`KubernetesError::Config`] when no configuration can be loaded
    /// from `source`.
    pub async fn connect(
        config: KubernetesConfig,
        source: ClientSource,
    ) -> Result<Self, KubernetesError> {
        let fail = |source_name: &str, message: String| KubernetesError::Config {
            source_name: source_name.to_owned(),
            message,
        };
        let kube_config = match source {
            ClientSource::Infer => kube::Config::infer()
                .await
                .map_err(|e| fail("KUBECONFIG, ~/.kube/config or in-cluster", error_chain(&e)))?,
            ClientSource::Kubeconfig(path) => {
                let name = path.display().to_string();
                let file =
                    Kubeconfig::read_from(&path).map_err(|e| fail(&name, error_chain(&e)))?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(&name, error_chain(&e)))?
            }
            ClientSource::InCluster => {
                kube::Config::incluster().map_err(|e| fail("in-cluster", error_chain(&e)))?
            }
            ClientSource::Config(config) => *config,
        };
        let client = ClientBuilder::try_from(kube_config)
            .map_err(|e| fail("client", error_chain(&e)))?
            .with_layer(&throttle::ThrottleLayer::new(config.qps, config.burst))
            .build();
        Ok(Self::new(config, client))
    }

    /// A backend using `client` as it is (rate limit included or not), with
    /// its watcher started. Must be called inside a tokio runtime.
    pub fn new(config: KubernetesConfig, client: kube::Client) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &config.namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
        let cache = Arc::new(Mutex::new(Cache::default()));
        let watcher = tokio::spawn(watch(pods.clone(), config.selector(), cache.clone()));
        KubernetesOrchestrator {
            config,
            client,
            pods,
            secrets,
            cache,
            watcher: watcher.abort_handle(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &KubernetesConfig {
        &self.config
    }

    /// Whether the watcher has listed this server's pods at least once.
    pub fn is_synced(&self) -> bool {
        lock(&self.cache).synced
    }

    /// Checks that the API server answers; returns its version.
    ///
    /// # Errors
    /// [`OrchestratorError::Unavailable`] with the client's reason.
    pub async fn ping(&self) -> Result<String, OrchestratorError> {
        self.client
            .apiserver_version()
            .await
            .map(|info| info.git_version)
            .map_err(|e| {
                OrchestratorError::Unavailable(format!(
                    "kubernetes API server: {}",
                    error_chain(&e)
                ))
            })
    }

    /// Runs `attempt` until it succeeds, fails for good, or `budget` has
    /// passed since `started`, backing off between transient failures.
    /// Returns the number of attempts made with the outcome.
    async fn retry<T, F, Fut>(
        &self,
        what: &str,
        started: Instant,
        budget: Duration,
        mut attempt: F,
    ) -> (u32, Result<T, Failure>)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let mut backoff = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = budget.saturating_sub(started.elapsed());
            let failure = match tokio::time::timeout(
                ATTEMPT_TIMEOUT.min(left.max(Duration::from_millis(100))),
                attempt(),
            )
            .await
            {
                Ok(Ok(value)) => return (attempts, Ok(value)),
                Ok(Err(e)) => classify(&e),
                Err(_) => Failure::Transient("the request timed out".to_owned()),
            };
            let Failure::Transient(reason) = failure else {
                return (attempts, Err(failure));
            };
            if started.elapsed() + backoff >= budget {
                return (attempts, Err(Failure::Transient(reason)));
            }
            tracing::warn!(%what, %reason, retry_in_ms = backoff.as_millis() as u64, "kubernetes API request failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Deletes one object by name, retrying while the API server is
    /// unreachable; a missing object is fine.
    async fn delete_object<K>(
        &self,
        api: &Api<K>,
        kind: &str,
        name: &str,
    ) -> Result<(), OrchestratorError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let grace = u32::try_from(self.config.termination_grace.as_secs()).unwrap_or(u32::MAX);
        let params = DeleteParams::background().grace_period(grace);
        let what = format!("delete {kind} {name}");
        match self
            .retry(&what, Instant::now(), self.config.delete_retry, || {
                api.delete(name, &params)
            })
            .await
        {
            (_, Ok(_) | Err(Failure::NotFound)) => Ok(()),
            (_, Err(Failure::Transient(reason))) => Err(OrchestratorError::Unavailable(format!(
                "kubernetes API server: {what}: {reason}"
            ))),
            (_, Err(Failure::Refused(reason))) => Err(OrchestratorError::Backend(
                format!("{what}: {reason}").into(),
            )),
            (_, Err(Failure::AlreadyExists)) => Ok(()),
        }
    }

    /// The state of a pod read directly (before the watcher has synced).
    async fn fetch_state(&self, id: &WorkerId) -> Result<BackendState, OrchestratorError> {
        let name = pod_name(id);
        match self.pods.get_opt(&name).await {
            Ok(Some(pod)) => {
                let age = pod_age(&pod);
                let pulling = state::pull_error(&pod).map(|_| Duration::ZERO);
                Ok(state::assess(&pod, age, pulling, &self.config.rules()))
            }
            Ok(None) => Ok(BackendState::NotFound),
            Err(e) => Err(OrchestratorError::Unavailable(format!(
                "kubernetes API server: get pod {name}: {}",
                error_chain(&e)
            ))),
        }
    }

    /// The worker container's last log lines.
    async fn last_lines(&self, name: &str) -> Vec<String> {
        let params = LogParams {
            container: Some(pod::WORKER_CONTAINER.to_owned()),
            tail_lines: Some(i64::try_from(self.config.log_lines).unwrap_or(20)),
            ..LogParams::default()
        };
        match self.pods.logs(name, &params).await {
            Ok(text) => text
                .lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty())
                .map(|l| l.chars().take(1000).collect())
                .collect(),
            Err(e) => {
                tracing::debug!(pod = %name, error = %error_chain(&e), "cannot read the worker's log");
                Vec::new()
            }
        }
    }
}

/// How long ago the API server created `pod`.
fn pod_age(pod: &Pod) -> Duration {
    let Some(created) = &pod.metadata.creation_timestamp else {
        return Duration::ZERO;
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let millis = now.as_millisecond() - created.0.as_millisecond();
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

/// Follows this server's pods into `cache` until aborted, reconnecting
/// with backoff when the API server is unreachable.
async fn watch(pods: Api<Pod>, selector: String, cache: Arc<Mutex<Cache>>) {
    let config = watcher::Config::default().labels(&selector);
    let stream = watcher(pods, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let now = Instant::now();
        let mut cache = lock(&cache);
        match event {
            Ok(watcher::Event::Init) => cache.init = Some((now, HashSet::new())),
            Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod)) => {
                cache.apply(pod, now)
            }
            Ok(watcher::Event::InitDone) => {
                cache.init_done();
                if failing {
                    tracing::info!("kubernetes pod watch resumed");
                    failing = false;
                }
            }
            Ok(watcher::Event::Delete(pod)) => cache.delete(&pod),
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %error_chain(&e), "kubernetes pod watch failed; retrying");
                    failing = true;
                }
            }
        }
    }
}

#[async_trait]
impl WorkerOrchestrator for KubernetesOrchestrator {
    fn backend(&self) -> &'static str {
        "kubernetes"
    }

    async fn create_worker(&self, spec: WorkerSpec) -> Result<WorkerHandle, OrchestratorError> {
        let started = Instant::now();
        let id = spec.worker_id.clone();
        let name = pod_name(&id);
        let provisioning = |reason: String| OrchestratorError::Provisioning {
            worker_id: id.clone(),
            reason,
        };
        let pod = worker_pod(&self.config, &spec).map_err(|e| provisioning(e.to_string()))?;
        let secret = worker_secret(&self.config, &spec);
        let budget = self.config.provisioning_deadline;
        let params = PostParams::default();

        let what = format!("create secret {name}");
        match self
            .retry(&what, started, budget, || {
                self.secrets.create(&params, &secret)
            })
            .await
        {
            (_, Ok(_)) => {}
            // An earlier attempt went through before its answer was lost.
            (attempts, Err(Failure::AlreadyExists)) if attempts > 1 => {}
            (_, Err(Failure::AlreadyExists)) => return Err(OrchestratorError::AlreadyExists(id)),
            (_, Err(Failure::NotFound)) => {
                return Err(provisioning(format!(
                    "namespace {} does not exist",
                    self.config.namespace
                )));
            }
            (_, Err(Failure::Refused(reason))) => {
                return Err(provisioning(format!(
                    "the API server refused secret {name}: {reason}"
                )));
            }
            (_, Err(Failure::Transient(reason))) => {
                return Err(OrchestratorError::Unavailable(format!(
                    "kubernetes API server: {what}: {reason}"
                )));
            }
        }
        lock(&self.cache)
            .pods
            .entry(id.clone())
            .or_insert_with(|| Tracked::new(started));

        let what = format!("create pod {name}");
        let outcome = self
            .retry(&what, started, budget, || self.pods.create(&params, &pod))
            .await;
        let error = match outcome {
            (_, Ok(created)) => {
                lock(&self.cache)
                    .pods
                    .entry(id.clone())
                    .or_insert_with(|| Tracked::new(started))
                    .observe(created, Instant::now());
                tracing::info!(worker = %id, pod = %name, namespace = %self.config.namespace, image = %spec.template.image(), "kubernetes worker pod created");
                return Ok(WorkerHandle {
                    worker_id: id,
                    backend_id: name,
                });
            }
            (attempts, Err(Failure::AlreadyExists)) if attempts > 1 => {
                tracing::info!(worker = %id, pod = %name, "kubernetes worker pod created");
                return Ok(WorkerHandle {
                    worker_id: id,
                    backend_id: name,
                });
            }
            (_, Err(Failure::AlreadyExists)) => OrchestratorError::AlreadyExists(id.clone()),
            (_, Err(Failure::NotFound)) => provisioning(format!(
                "namespace {} does not exist",
                self.config.namespace
            )),
            (_, Err(Failure::Refused(reason))) => {
                provisioning(format!("the API server refused pod {name}: {reason}"))
            }
            (_, Err(Failure::Transient(reason))) => {
                OrchestratorError::Unavailable(format!("kubernetes API server: {what}: {reason}"))
            }
        };
        // No pod: its Secret goes too (the orphan collector retries).
        lock(&self.cache).pods.remove(&id);
        if let Err(e) = self.delete_object(&self.secrets, "secret", &name).await {
            tracing::warn!(worker = %id, error = %e, "cannot delete the secret of a pod never created");
        }
        Err(error)
    }

    async fn delete_worker(&self, id: &WorkerId) -> Result<(), OrchestratorError> {
        let name = pod_name(id);
        if let Some(tracked) = lock(&self.cache).pods.get_mut(id) {
            tracked.deleted = true;
        }
        let pod = self.delete_object(&self.pods, "pod", &name).await;
        let secret = self.delete_object(&self.secrets, "secret", &name).await;
        pod.and(secret)?;
        // A pod never seen (its create was abandoned) sends no DELETED
        // event that would forget it.
        let mut cache = lock(&self.cache);
        if cache
            .pods
            .get(id)
            .is_some_and(|tracked| tracked.pod.is_none())
        {
            cache.pods.remove(id);
        }
        drop(cache);
        tracing::info!(worker = %id, pod = %name, "kubernetes worker deleted");
        Ok(())
    }

    async fn list_workers(&self, server_id: &str) -> Result<Vec<BackendWorker>, OrchestratorError> {
        let selector = format!("{LABEL_MANAGED_BY}=hodei,{LABEL_SERVER_ID}={server_id}");
        let params = ListParams::default().labels(&selector);
        let unavailable = |what: &str, e: kube::Error| match classify(&e) {
            Failure::Transient(reason) => OrchestratorError::Unavailable(format!(
                "kubernetes API server: list {what}: {reason}"
            )),
            _ => OrchestratorError::Backend(format!("list {what}: {}", error_chain(&e)).into()),
        };
        let pods = self
            .pods
            .list(&params)
            .await
            .map_err(|e| unavailable("pods", e))?;
        let secrets = self
            .secrets
            .list(&params)
            .await
            .map_err(|e| unavailable("secrets", e))?;
        let rules = self.config.rules();
        let mut found: HashMap<WorkerId, BackendWorker> = HashMap::new();
        let describe = |labels: Option<&std::collections::BTreeMap<String, String>>,
                        name: String,
                        state: BackendState| {
            let labels = labels?;
            BackendWorker::from_labels(|key| labels.get(key).map(String::as_str), name, state)
        };
        for pod in pods {
            let state = state::assess(&pod, pod_age(&pod), None, &rules);
            let name = pod.metadata.name.clone().unwrap_or_default();
            if let Some(worker) = describe(pod.metadata.labels.as_ref(), name, state) {
                found.insert(worker.worker_id.clone(), worker);
            }
        }
        for secret in secrets {
            let name = secret.metadata.name.clone().unwrap_or_default();
            if let Some(worker) = describe(
                secret.metadata.labels.as_ref(),
                name,
                BackendState::NotFound,
            ) {
                found.entry(worker.worker_id.clone()).or_insert(worker);
            }
        }
        let mut workers: Vec<BackendWorker> = found.into_values().collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }

    async fn worker_state(&self, id: &WorkerId) -> Result<BackendState, OrchestratorError> {
        let now = Instant::now();
        let rules = self.config.rules();
        let (state, synced) = {
            let cache = lock(&self.cache);
            let state = cache.pods.get(id).map(|tracked| {
                if tracked.deleted {
                    return BackendState::NotFound;
                }
                match &tracked.pod {
                    None => BackendState::Pending,
                    Some(pod) => {
                        let pulling = tracked
                            .pull_failing_since
                            .map(|since| now.duration_since(since));
                        let state =
                            state::assess(pod, now.duration_since(tracked.since), pulling, &rules);
                        match (state, &tracked.last_lines) {
                            (BackendState::Exited { code, reason, .. }, Some(lines)) => {
                                BackendState::Exited {
                                    code,
                                    reason,
                                    last_lines: lines.clone(),
                                }
                            }
                            (state, _) => state,
                        }
                    }
                }
            });
            (state, cache.synced)
        };
        match state {
            Some(BackendState::Exited {
                code,
                reason,
                last_lines,
            }) if last_lines.is_empty() => {
                let lines = self.last_lines(&pod_name(id)).await;
                if let Some(tracked) = lock(&self.cache).pods.get_mut(id) {
                    tracked.last_lines = Some(lines.clone());
                }
                Ok(BackendState::Exited {
                    code,
                    reason,
                    last_lines: lines,
                })
            }
            Some(state) => Ok(state),
            None if synced => Ok(BackendState::NotFound),
            None => self.fetch_state(id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(worker: &str, version: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("hodei-worker-{worker}")),
                resource_version: Some(version.to_owned()),
                labels: Some([(LABEL_WORKER_ID.to_owned(), worker.to_owned())].into()),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                ..PodStatus::default()
            }),
        }
    }

    fn phase(cache: &Cache, worker: &str) -> Option<String> {
        cache
            .pods
            .get(&WorkerId::new(worker).unwrap())
            .and_then(|t| {
                t.pod
                    .as_ref()
                    .and_then(|p| p.status.as_ref())
                    .and_then(|s| s.phase.clone())
            })
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_follows_the_watch() {
        let mut cache = Cache::default();
        let t0 = Instant::now();
        cache.apply(pod("a", "5", "Running"), t0);
        // A late event with an older version does not win.
        cache.apply(pod("a", "4", "Pending"), t0);
        assert_eq!(phase(&cache, "a").as_deref(), Some("Running"));
        cache.apply(pod("b", "6", "Pending"), t0);
        tokio::time::advance(Duration::from_secs(1)).await;
        // A relist that no longer has b: b is gone; c, created during the
        // relist, is kept.
        cache.init = Some((Instant::now(), HashSet::new()));
        cache
            .pods
            .insert(WorkerId::new("c").unwrap(), Tracked::new(Instant::now()));
        cache.apply(pod("a", "7", "Running"), Instant::now());
        cache.init_done();
        assert!(cache.synced);
        let mut ids: Vec<String> = cache.pods.keys().map(ToString::to_string).collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
        cache.delete(&pod("a", "8", "Running"));
        assert!(!cache.pods.contains_key(&WorkerId::new("a").unwrap()));
    }

    #[test]
    fn api_errors_are_classified() {
        fn status(code: u16, reason: &str, message: &str) -> kube::Error {
            kube::Error::Api(
                kube::core::Status::failure(message, reason)
                    .with_code(code)
                    .boxed(),
            )
        }
        assert!(matches!(
            classify(&status(404, "NotFound", "x")),
            Failure::NotFound
        ));
        assert!(matches!(
            classify(&status(409, "AlreadyExists", "x")),
            Failure::AlreadyExists
        ));
        assert!(matches!(
            classify(&status(503, "ServiceUnavailable", "x")),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&status(429, "TooManyRequests", "x")),
            Failure::Transient(_)
        ));
        match classify(&status(
            422,
            "Invalid",
            "Pod \"p\" is invalid: spec.containers[0].image: Required value",
        )) {
            Failure::Refused(reason) => assert_eq!(
                reason,
                "Pod \"p\" is invalid: spec.containers[0].image: Required value"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_selector_names_the_server() {
        assert_eq!(
            KubernetesConfig::new("srv-9").selector(),
            "app.kubernetes.io/managed-by=hodei,hodei.dev/server-id=srv-9"
        );
    }
}
