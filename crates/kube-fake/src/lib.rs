//! A fake Kubernetes API server for tests: core/v1 pods and secrets kept in
//! memory, served over plain HTTP on `127.0.0.1`, so code that speaks to
//! Kubernetes through the real `kube` client can be tested where no
//! cluster can run.
//!
//! It answers as the real API server does for what a pod-running backend
//! and kube-runtime's `watcher` use: create, get, list, watch (from a
//! `resourceVersion`, with label and field selectors, bookmarks, `410
//! Expired` past the kept history), update and patch (also of `status`),
//! delete and deletecollection, pod logs, and `Status` errors of the real
//! shapes (`404 NotFound`, `409 AlreadyExists`, `422 Invalid`, `400
//! BadRequest`).
//!
//! Two kubelets. With the manual one ([`Kubelet::Manual`]) nothing runs:
//! the test plays the kubelet through [`FakeKube::set_running`],
//! [`FakeKube::set_terminated`], [`FakeKube::set_waiting`] and friends,
//! each of which bumps the `resourceVersion` and sends `MODIFIED` to
//! watchers, like a kubelet's status update. With the Docker one
//! ([`Kubelet::Docker`]) every pod runs for real as Docker containers on
//! the local engine (init containers, `emptyDir` volumes, secrets in the
//! environment, limits, deadlines), so a pod spec is proven runnable; its
//! containers carry [`POD_LABEL`] and [`INSTANCE_LABEL`] and
//! [`FakeKube::docker_containers`] lists the ones left.
//!
//! With the Docker kubelet, a pod created through the API runs, and the
//! test waits for what it expects without polling:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use hodei_kube_fake::{DockerKubelet, FakeKube, FakeOptions, Kubelet};
//!
//! let fake = FakeKube::start_with(FakeOptions {
//!     kubelet: Kubelet::Docker(DockerKubelet::default()),
//!     ..FakeOptions::default()
//! })
//! .await?;
//! // ... the code under test creates pod "worker-1" in "ci" ...
//! let done = |p: Option<&k8s_openapi::api::core::v1::Pod>| {
//!     p.and_then(|p| p.status.as_ref()?.phase.as_deref())
//!         .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
//! };
//! let finished = fake.wait_for_pod("ci", "worker-1", done).await;
//! assert!(finished.is_some());
//! // ... the code under test deletes it ...
//! fake.wait_for_pod("ci", "worker-1", |p| p.is_none()).await;
//! assert!(fake.docker_containers().await.is_empty());
//! fake.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! It knows nothing of Hodei: it is a small API server, not a mock of a
//! client.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let fake = hodei_kube_fake::FakeKube::start().await?;
//! let client = kube::Client::try_from(fake.client_config("ci")).expect("a client");
//! let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::default_namespaced(client);
//! // ... create a pod through `pods`, then act as its kubelet:
//! fake.set_running("ci", "worker-1");
//! fake.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod api;
mod docker;
mod patch;
mod pods;
mod selector;
mod status;
mod store;
mod validation;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{Pod, PodStatus, Secret};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::docker::DockerRuntime;
pub use crate::docker::{CONTAINER_LABEL, DockerKubelet, INSTANCE_LABEL, POD_LABEL, UID_LABEL};
use crate::store::{Kind, Store};

/// How pods are run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Kubelet {
    /// Nothing runs: pods stay `Pending` until the test sets their status
    /// (`set_running`, `set_terminated`, ...), and a deleted pod is gone
    /// at once.
    #[default]
    Manual,
    /// Every pod runs for real as Docker containers on the local engine
    /// (see [`DockerKubelet`]), and its status follows theirs.
    Docker(DockerKubelet),
}

/// How a [`FakeKube`] behaves.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Who runs the pods.
    pub kubelet: Kubelet,
    /// How many changes watches can replay; a watch from an older
    /// `resourceVersion` gets `410 Expired`. Default 1000.
    pub history: usize,
    /// How often a watch that asked for bookmarks gets one (the real
    /// server: about a minute). `None`: never. Default 10 s.
    pub bookmark_interval: Option<Duration>,
    /// The node every pod is bound to. Default `kube-fake`.
    pub node_name: String,
    /// With the manual kubelet, a pod deleted with a grace period above 0
    /// stays, terminating (`deletionTimestamp` and
    /// `deletionGracePeriodSeconds` set, a `MODIFIED` event), as a real
    /// kubelet leaves it while its containers stop, until
    /// [`FakeKube::finish_deletion`]. Default `false`: it is gone at once.
    pub graceful_manual_deletion: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            kubelet: Kubelet::Manual,
            history: 1000,
            bookmark_interval: Some(Duration::from_secs(10)),
            node_name: "kube-fake".to_owned(),
            graceful_manual_deletion: false,
        }
    }
}

/// One request the server received (also those answered with an error),
/// so tests can check what a client asked and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `POST`, ...
    pub method: String,
    /// `/api/v1/namespaces/ci/pods`.
    pub path: String,
    /// The raw query string, if any (`watch=true&resourceVersion=5`).
    pub query: Option<String>,
    /// When it arrived.
    pub at: Instant,
}

impl RequestRecord {
    /// Whether this request is a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.query.as_deref().is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        })
    }
}

/// State shared by the server's connections and the handle.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion, to wake watches.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to drop every open connection (outage, shutdown).
    cut: tokio::sync::watch::Sender<u64>,
    /// Connections are dropped as they arrive (unreachable server).
    outage: AtomicBool,
    /// Every request is answered `503 ServiceUnavailable`.
    unavailable: AtomicBool,
    requests: Mutex<Vec<RequestRecord>>,
    options: FakeOptions,
    /// The Docker kubelet, if pods run.
    kubelet: Option<Arc<DockerRuntime>>,
}

/// Locks `mutex`, also after a panic of another holder (the data stays
/// consistent: every change is made whole under the lock).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Runs `f` on the store and wakes the watches.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut store = lock(&self.store);
        let result = f(&mut store);
        self.changed.send_replace(store.resource_version());
        result
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.store))
    }

    fn cut_connections(&self) {
        self.cut.send_modify(|epoch| *epoch += 1);
    }

    /// Changes one pod through its typed form; `false` if there is no such
    /// pod (or it cannot be read as a pod).
    pub(crate) fn update_pod(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Pod)) -> bool {
        self.mutate(|store| {
            let Some(current) = store.get(Kind::Pod, namespace, name) else {
                return false;
            };
            let Ok(mut pod) = serde_json::from_value::<Pod>((*current).clone()) else {
                return false;
            };
            f(&mut pod);
            let Ok(mut updated) = serde_json::to_value(&pod) else {
                return false;
            };
            api::stamp_kind(&mut updated, Kind::Pod);
            store.replace(Kind::Pod, namespace, name, updated);
            true
        })
    }
}

/// The handle: owns the server task.
#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: JoinHandle<()>,
    /// Set once the Docker kubelet has cleaned up.
    cleaned: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.server.abort();
        self.shared.cut_connections();
        if let Some(kubelet) = &self.shared.kubelet
            && !self.cleaned.swap(true, Ordering::SeqCst)
        {
            let (label, dir) = kubelet.leftovers();
            docker::clean_up_blocking(label, dir);
        }
    }
}

/// A running fake API server. Cheap to clone; the server stops when the
/// last clone is dropped or at [`FakeKube::shutdown`].
#[derive(Debug, Clone)]
pub struct FakeKube {
    inner: Arc<Inner>,
}

impl FakeKube {
    /// Starts a server with the manual kubelet on `127.0.0.1:0`. Must be
    /// called inside a tokio runtime (any flavour), which serves it.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start() -> std::io::Result<FakeKube> {
        Self::start_with(FakeOptions::default()).await
    }

    /// Starts a server with `options` on `127.0.0.1:0`.
    ///
    /// # Errors
    /// The port cannot be bound, or (for [`Kubelet::Docker`]) no Docker
    /// engine answers or the volumes directory cannot be created.
    pub async fn start_with(options: FakeOptions) -> std::io::Result<FakeKube> {
        let kubelet = match &options.kubelet {
            Kubelet::Manual => None,
            Kubelet::Docker(config) => {
                Some(Arc::new(DockerRuntime::connect(config.clone()).await?))
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(options.history)),
            changed: tokio::sync::watch::channel(0).0,
            cut: tokio::sync::watch::channel(0).0,
            outage: AtomicBool::new(false),
            unavailable: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            options,
            kubelet,
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok(FakeKube {
            inner: Arc::new(Inner {
                shared,
                addr,
                server,
                cleaned: AtomicBool::new(false),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The server's address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// A `kube` client configuration for this server with
    /// `default_namespace` (for `kube::Client::try_from`).
    ///
    /// # Panics
    /// Never: the URL is always a valid URI.
    pub fn client_config(&self, default_namespace: &str) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .unwrap_or_else(|_| unreachable!("http://127.0.0.1:PORT is a valid URI"));
        let mut config = kube::Config::new(uri);
        default_namespace.clone_into(&mut config.default_namespace);
        config
    }

    /// The text of a kubeconfig file whose current context points here with
    /// `namespace`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: kube-fake\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: kube-fake\n  context:\n    cluster: kube-fake\n    user: kube-fake\n    namespace: {namespace}\n\
             current-context: kube-fake\n\
             users:\n\
             - name: kube-fake\n  user: {{}}\n",
            url = self.url()
        )
    }

    fn typed<T: serde::de::DeserializeOwned>(&self, kind: Kind, namespace: &str) -> Vec<T> {
        self.shared()
            .read(|store| store.list(kind, Some(namespace)))
            .iter()
            .filter_map(|v| serde_json::from_value((**v).clone()).ok())
            .collect()
    }

    /// The pods of `namespace` now, by name.
    pub fn pods(&self, namespace: &str) -> Vec<Pod> {
        self.typed(Kind::Pod, namespace)
    }

    /// One pod now.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let value = self
            .shared()
            .read(|store| store.get(Kind::Pod, namespace, name))?;
        serde_json::from_value((*value).clone()).ok()
    }

    /// The secrets of `namespace` now, by name.
    pub fn secrets(&self, namespace: &str) -> Vec<Secret> {
        self.typed(Kind::Secret, namespace)
    }

    /// Sets a pod's `status.phase` (`Pending`, `Running`, `Succeeded`,
    /// `Failed`) and nothing else. Returns whether the pod exists.
    pub fn set_pod_phase(&self, namespace: &str, name: &str, phase: &str) -> bool {
        self.update_pod_status(namespace, name, |status| {
            status.phase = Some(phase.to_owned());
        })
    }

    /// A container (init or main) waits with `reason` and `message`, e.g.
    /// `ImagePullBackOff` / `Back-off pulling image "x"` or
    /// `CreateContainerConfigError` / `secret "s" not found`; the pod is
    /// not ready and keeps its phase. Returns whether the pod exists.
    pub fn set_waiting(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        reason: &str,
        message: &str,
    ) -> bool {
        self.shared().update_pod(namespace, name, |pod| {
            pods::set_waiting(pod, container, reason, message);
        })
    }

    /// The pod runs: init containers completed, every container running
    /// and ready, phase `Running`, condition `Ready`. Returns whether the
    /// pod exists.
    pub fn set_running(&self, namespace: &str, name: &str) -> bool {
        self.shared().update_pod(namespace, name, pods::set_running)
    }

    /// A container exits with `exit_code`; `reason` empty means `Completed`
    /// (0) or `Error`; e.g. `137`, `OOMKilled`. The pod's phase follows as
    /// a kubelet's would: under `restartPolicy: Never` it is `Succeeded` or
    /// `Failed` once every container has exited (a failed init container
    /// fails it at once); under `Always` (or `OnFailure` after a failure)
    /// the container waits in `CrashLoopBackOff` with the exit as
    /// `lastState`. Returns whether the pod exists.
    pub fn set_terminated(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        exit_code: i32,
        reason: &str,
        message: &str,
    ) -> bool {
        self.shared().update_pod(namespace, name, |pod| {
            pods::set_terminated(pod, container, exit_code, reason, message);
        })
    }

    /// The scheduler finds no node: condition `PodScheduled=False` with
    /// reason `Unschedulable` and `message`, phase `Pending`. Returns
    /// whether the pod exists.
    pub fn set_unschedulable(&self, namespace: &str, name: &str, message: &str) -> bool {
        self.shared().update_pod(namespace, name, |pod| {
            pods::set_unschedulable(pod, message);
        })
    }

    /// The pod ran past its `activeDeadlineSeconds`: phase `Failed`,
    /// reason `DeadlineExceeded`, running containers terminated. Returns
    /// whether the pod exists.
    pub fn set_deadline_exceeded(&self, namespace: &str, name: &str) -> bool {
        self.shared()
            .update_pod(namespace, name, pods::set_deadline_exceeded)
    }

    /// Any other change of a pod's status. Returns whether the pod exists.
    pub fn update_pod_status(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut PodStatus),
    ) -> bool {
        self.shared().update_pod(namespace, name, |pod| {
            f(pod.status.get_or_insert_with(PodStatus::default));
        })
    }

    /// Sets what `GET .../pods/{name}/log?container=...` answers for a
    /// container (manual kubelet).
    pub fn set_pod_log(&self, namespace: &str, name: &str, container: &str, text: &str) {
        self.shared().mutate(|store| {
            store.logs.insert(
                (namespace.to_owned(), name.to_owned(), container.to_owned()),
                text.to_owned(),
            );
        });
    }

    /// Waits until `done` holds, checking it now and after every change of
    /// the objects (no polling), and returns its value. Wrap it in a
    /// timeout: it waits for as long as it takes.
    pub async fn wait_for<T>(&self, mut done: impl FnMut(&FakeKube) -> Option<T>) -> T {
        let mut changed = self.shared().changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(value) = done(self) {
                return value;
            }
            if changed.changed().await.is_err() {
                // The fake is gone; nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits until the pod `namespace/name` satisfies `ready` (it is given
    /// `None` while there is no such pod) and returns the pod then (`None`
    /// if `ready` accepted its absence). See [`FakeKube::wait_for`].
    pub async fn wait_for_pod(
        &self,
        namespace: &str,
        name: &str,
        ready: impl Fn(Option<&Pod>) -> bool,
    ) -> Option<Pod> {
        self.wait_for(|fake| {
            let pod = fake.pod(namespace, name);
            ready(pod.as_ref()).then_some(pod)
        })
        .await
    }

    /// Removes a pod now (a `DELETED` event), as a kubelet confirms a
    /// terminating pod is gone; see [`FakeOptions::graceful_manual_deletion`].
    /// Returns whether the pod existed.
    pub fn finish_deletion(&self, namespace: &str, name: &str) -> bool {
        self.shared()
            .mutate(|store| store.remove(Kind::Pod, namespace, name).is_some())
    }

    /// The latest `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.shared().read(Store::resource_version)
    }

    /// Forgets the history of changes, as an etcd compaction does: a watch
    /// from any `resourceVersion` before now gets `410 Expired`.
    pub fn compact(&self) {
        self.shared().mutate(Store::compact);
    }

    /// While on, the server is unreachable: every open connection (and so
    /// every watch) is dropped and new connections are closed without an
    /// answer. The objects are kept; off, the same clients work again.
    pub fn set_outage(&self, on: bool) {
        self.shared().outage.store(on, Ordering::SeqCst);
        if on {
            self.shared().cut_connections();
        }
    }

    /// While on, the server is there but unavailable: open connections
    /// (and watches) are dropped and every request is answered `503
    /// ServiceUnavailable` with a `Status` (which `kube`'s default client
    /// retries with back-off). The objects are kept.
    pub fn set_unavailable(&self, on: bool) {
        self.shared().unavailable.store(on, Ordering::SeqCst);
        if on {
            self.shared().cut_connections();
        }
    }

    /// Every request received so far, oldest first (not those dropped
    /// during an outage).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared().requests).clone()
    }

    /// The names of the Docker containers this fake has created and not
    /// yet removed (running or not); empty with the manual kubelet.
    pub async fn docker_containers(&self) -> Vec<String> {
        match &self.shared().kubelet {
            Some(kubelet) => kubelet.live_containers().await,
            None => Vec::new(),
        }
    }

    /// Stops the server: open connections and watches are dropped, the
    /// port is released; the Docker kubelet removes every container and
    /// directory it created.
    pub async fn shutdown(self) {
        self.inner.server.abort();
        self.shared().cut_connections();
        if let Some(kubelet) = &self.shared().kubelet
            && !self.inner.cleaned.swap(true, Ordering::SeqCst)
        {
            kubelet.clean_up().await;
        }
        tokio::task::yield_now().await;
    }
}

/// Accepts connections until aborted; each one is served until the client
/// closes it or the connections are cut.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let router = api::router(shared.clone());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!("kube-fake accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.outage.load(Ordering::SeqCst) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let mut cut = shared.cut.subscribe();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                biased;
                _ = cut.changed() => {}
                _ = connection => {}
            }
        });
    }
}
