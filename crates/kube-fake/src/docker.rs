//! The Docker kubelet: runs each pod's containers for real on the local
//! Docker engine and reports their status as a kubelet does.
//!
//! Per pod: a host directory per `emptyDir` volume (and per `secret`
//! volume, with the secret's keys as files), bound into the containers at
//! their mount paths; init containers one after another, then the main
//! containers together, each from its image, `command`/`args` (with
//! `$(VAR)` expansion), environment (values, `secretKeyRef`, `fieldRef`,
//! `envFrom` secrets), working directory, security context (`runAsUser`,
//! `runAsGroup`, `fsGroup`, `runAsNonRoot` checked against the image's
//! user, capabilities, `allowPrivilegeEscalation`, `privileged`,
//! `readOnlyRootFilesystem`), memory and cpu limits, on the configured
//! network.
//!
//! Nothing is ever pulled: whatever `imagePullPolicy` says, a local image
//! is used, and for an image the engine does not have the container waits
//! in `ErrImagePull` / `ImagePullBackOff` and the pod stays `Pending`, as
//! with an image that does not exist. A missing secret or key waits in
//! `CreateContainerConfigError` until it exists. `restartPolicy` is
//! honoured (`CrashLoopBackOff` with back-off). `activeDeadlineSeconds`
//! kills the pod (`DeadlineExceeded`). Deleting a pod stops its
//! containers (SIGTERM, then SIGKILL after the grace period), removes them
//! and its directories, then the pod is gone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use serde_json::Value;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::store::Kind;
use crate::{Shared, lock, pods};

/// Label on every container: `<namespace>/<pod>`.
pub const POD_LABEL: &str = "dev.hodei.kube-fake.pod";
/// Label on every container: the pod's uid.
pub const UID_LABEL: &str = "dev.hodei.kube-fake.uid";
/// Label on every container: the container's name in the pod.
pub const CONTAINER_LABEL: &str = "dev.hodei.kube-fake.container";
/// Label on every container: the [`crate::FakeKube`] that created it.
pub const INSTANCE_LABEL: &str = "dev.hodei.kube-fake.instance";

/// How the Docker kubelet runs pods.
#[derive(Debug, Clone)]
pub struct DockerKubelet {
    /// The Docker network every container joins. Default `host`, so pods
    /// reach servers on the host's `127.0.0.1` and the containers of a pod
    /// share `localhost`, as in a real pod.
    pub network: String,
    /// Where the host directories of `emptyDir` and `secret` volumes go
    /// (a directory per fake inside). Default: the system's temporary
    /// directory.
    pub volumes_dir: PathBuf,
    /// The first back-off after a failed image pull or a container exit
    /// that restarts; it doubles up to eight times this. Default 1 s.
    pub backoff: Duration,
    /// The longest grace period a deleted pod's containers get between
    /// SIGTERM and SIGKILL (the pod's own, or the delete's, if shorter).
    /// Default 5 s.
    pub max_grace_period: Duration,
}

impl Default for DockerKubelet {
    fn default() -> Self {
        Self {
            network: "host".to_owned(),
            volumes_dir: std::env::temp_dir(),
            backoff: Duration::from_secs(1),
            max_grace_period: Duration::from_secs(5),
        }
    }
}

/// A pod the kubelet runs: how to tell it to stop.
#[derive(Debug)]
struct PodTask {
    /// `Some(grace seconds)` once the pod is deleted.
    stop: watch::Sender<Option<i64>>,
    task: tokio::task::JoinHandle<()>,
}

/// The running kubelet.
#[derive(Debug)]
pub(crate) struct DockerRuntime {
    docker: Docker,
    config: DockerKubelet,
    /// This fake's id, on every container.
    instance: String,
    /// This fake's volume directories.
    root: PathBuf,
    /// Pods by uid.
    pods: Mutex<HashMap<String, PodTask>>,
    /// The latest Docker container of each (namespace, pod, container),
    /// for logs.
    containers: Mutex<HashMap<(String, String, String), String>>,
}

/// The engine's words for an error.
fn engine_words(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// How a container run ended.
#[derive(Debug)]
struct Exit {
    code: i32,
    reason: String,
    message: String,
}

/// Why a container could not be created yet.
enum NotYet {
    /// The kubelet waits with this reason and message, then tries again.
    Waiting {
        reason: &'static str,
        message: String,
    },
    /// The pod's object is gone.
    Gone,
}

impl DockerRuntime {
    /// Connects to the local engine (honouring `DOCKER_HOST`).
    pub async fn connect(config: DockerKubelet) -> std::io::Result<Self> {
        let no_engine = |e: BollardError| std::io::Error::other(format!("no docker engine: {e}"));
        let docker = Docker::connect_with_local_defaults().map_err(no_engine)?;
        let docker = docker.negotiate_version().await.map_err(no_engine)?;
        docker.ping().await.map_err(no_engine)?;
        let instance = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let root = config.volumes_dir.join(format!("kube-fake-{instance}"));
        std::fs::create_dir_all(&root)?;
        Ok(Self {
            docker,
            config,
            instance,
            root,
            pods: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// Starts running a newly created pod.
    pub fn spawn(self: &Arc<Self>, shared: Arc<Shared>, namespace: &str, name: &str, uid: &str) {
        let (stop, stopped) = watch::channel(None);
        let runtime = self.clone();
        let (ns, pod, id) = (namespace.to_owned(), name.to_owned(), uid.to_owned());
        // Held until the task is recorded, so its end cannot come first.
        let mut pods = lock(&self.pods);
        let task = tokio::spawn(async move {
            runtime.run_pod(&shared, &ns, &pod, &id, stopped).await;
        });
        pods.insert(uid.to_owned(), PodTask { stop, task });
    }

    /// Tells a pod's task that the pod is deleted with `grace` seconds.
    pub fn stop(&self, uid: &str, grace: i64) {
        if let Some(pod) = lock(&self.pods).get(uid) {
            pod.stop.send_modify(|g| {
                *g = Some(g.map_or(grace, |old| old.min(grace)));
            });
        }
    }

    /// The Docker container of a pod's container, for its logs.
    pub fn container_of(&self, namespace: &str, pod: &str, container: &str) -> Option<String> {
        lock(&self.containers)
            .get(&(namespace.to_owned(), pod.to_owned(), container.to_owned()))
            .cloned()
    }

    /// A container's logs (stdout and stderr), the last `tail` lines, and
    /// while it runs if `follow`.
    pub fn logs(
        &self,
        container: &str,
        tail: Option<usize>,
        follow: bool,
    ) -> impl tokio_stream::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + use<> {
        let tail = tail.map_or_else(|| "all".to_owned(), |t| t.to_string());
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        self.docker
            .logs(container, Some(options))
            .map(|chunk| match chunk {
                Ok(output) => Ok(output.into_bytes()),
                Err(e) => Err(std::io::Error::other(e)),
            })
    }

    /// The names of this fake's live containers.
    pub async fn live_containers(&self) -> Vec<String> {
        let label = format!("{INSTANCE_LABEL}={}", self.instance);
        let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", vec![label])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        match self.docker.list_containers(Some(options)).await {
            Ok(list) => {
                let mut names: Vec<String> = list
                    .into_iter()
                    .flat_map(|c| c.names.unwrap_or_default())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .collect();
                names.sort();
                names
            }
            Err(e) => {
                tracing::warn!("kube-fake: listing containers: {e}");
                Vec::new()
            }
        }
    }

    /// Removes every container of this fake and its volume directories;
    /// stops every pod task.
    pub async fn clean_up(&self) {
        let tasks: Vec<PodTask> = lock(&self.pods).drain().map(|(_, t)| t).collect();
        for t in &tasks {
            t.task.abort();
        }
        remove_labelled(&self.docker, &format!("{INSTANCE_LABEL}={}", self.instance)).await;
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// The label and directory to clean up without this runtime (at drop).
    pub fn leftovers(&self) -> (String, PathBuf) {
        let tasks: Vec<PodTask> = lock(&self.pods).drain().map(|(_, t)| t).collect();
        for t in &tasks {
            t.task.abort();
        }
        (
            format!("{INSTANCE_LABEL}={}", self.instance),
            self.root.clone(),
        )
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join(uid)
    }

    /// The whole life of one pod: run it, wait for its deletion, clean up,
    /// forget it.
    async fn run_pod(
        &self,
        shared: &Arc<Shared>,
        ns: &str,
        name: &str,
        uid: &str,
        mut stopped: watch::Receiver<Option<i64>>,
    ) {
        let deadline = shared
            .read(|s| s.get(Kind::Pod, ns, name))
            .and_then(|p| {
                p.pointer("/spec/activeDeadlineSeconds")
                    .and_then(Value::as_u64)
            })
            .map(|secs| tokio::time::Instant::now() + Duration::from_secs(secs));
        let pod = PodRun {
            runtime: self,
            shared,
            ns,
            name,
            uid,
            stop: stopped.clone(),
            deadline,
        };
        // Returns when the pod has finished, is deleted or ran past its
        // deadline; never in the middle of a Docker call, so every
        // container it created carries its labels for the tear-down.
        pod.run().await;
        let deleted = stopped.borrow().is_some();
        let past_deadline = deadline.is_some_and(|at| tokio::time::Instant::now() >= at);
        let finished = pod
            .pod()
            .and_then(|p| p.status?.phase)
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if !deleted && past_deadline && !finished {
            pod.kill_all().await;
            pod.update(pods::set_deadline_exceeded);
        }
        // A finished pod stays (with its containers, as a kubelet keeps
        // them) until it is deleted.
        let grace = match stopped.wait_for(Option::is_some).await {
            Ok(grace) => (*grace).unwrap_or(0),
            Err(_) => 0,
        };
        pod.tear_down(grace).await;
        lock(&self.pods).remove(uid);
        lock(&self.containers).retain(|(n, p, _), _| !(n == ns && p == name));
        shared.mutate(|store| {
            let same = store
                .get(Kind::Pod, ns, name)
                .is_some_and(|p| p.pointer("/metadata/uid").and_then(Value::as_str) == Some(uid));
            if same {
                store.remove(Kind::Pod, ns, name);
            }
        });
    }
}

/// Removes every container carrying `label` (`key=value`).
pub(crate) async fn remove_labelled(docker: &Docker, label: &str) {
    let filters: HashMap<&str, Vec<String>> = HashMap::from([("label", vec![label.to_owned()])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = docker.list_containers(Some(options)).await else {
        return;
    };
    for c in list {
        if let Some(id) = c.id {
            remove_container(docker, &id).await;
        }
    }
}

async fn remove_container(docker: &Docker, id: &str) {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    if let Err(e) = docker.remove_container(id, Some(options)).await
        && !matches!(status_of(&e), Some(404 | 409))
    {
        tracing::warn!("kube-fake: removing container {id}: {e}");
    }
}

/// Cleans up after a fake that is dropped without `shutdown`: its own
/// thread and runtime, since drop cannot await.
pub(crate) fn clean_up_blocking(label: String, root: PathBuf) {
    let work = move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            if let Ok(docker) = Docker::connect_with_local_defaults() {
                let docker = docker.negotiate_version().await.unwrap_or_else(|_| {
                    Docker::connect_with_local_defaults()
                        .unwrap_or_else(|_| unreachable!("connected once"))
                });
                remove_labelled(&docker, &label).await;
            }
        });
        let _ = std::fs::remove_dir_all(&root);
    };
    let _ = std::thread::spawn(work).join();
}

/// One pod being run.
struct PodRun<'a> {
    runtime: &'a DockerRuntime,
    shared: &'a Arc<Shared>,
    ns: &'a str,
    name: &'a str,
    uid: &'a str,
    /// `Some(grace)` once the pod is deleted.
    stop: watch::Receiver<Option<i64>>,
    /// When `activeDeadlineSeconds` runs out.
    deadline: Option<tokio::time::Instant>,
}

/// A pod's container's configuration, resolved.
struct Prepared {
    body: ContainerCreateBody,
}

/// `restartPolicy` says this exit restarts the container.
fn restarts(policy: &str, init: bool, code: i32) -> bool {
    match policy {
        "Always" => !init || code != 0,
        "OnFailure" => code != 0,
        _ => false,
    }
}

impl PodRun<'_> {
    /// The pod now, if it is still this pod.
    fn pod(&self) -> Option<Pod> {
        let value = self.shared.read(|s| s.get(Kind::Pod, self.ns, self.name))?;
        if value.pointer("/metadata/uid").and_then(Value::as_str) != Some(self.uid) {
            return None;
        }
        serde_json::from_value((*value).clone()).ok()
    }

    fn update(&self, f: impl FnOnce(&mut Pod)) {
        self.shared.mutate(|store| {
            let Some(current) = store.get(Kind::Pod, self.ns, self.name) else {
                return;
            };
            if current.pointer("/metadata/uid").and_then(Value::as_str) != Some(self.uid) {
                return;
            }
            let Ok(mut pod) = serde_json::from_value::<Pod>((*current).clone()) else {
                return;
            };
            f(&mut pod);
            if let Ok(mut updated) = serde_json::to_value(&pod) {
                crate::api::stamp_kind(&mut updated, Kind::Pod);
                if updated != *current {
                    store.replace(Kind::Pod, self.ns, self.name, updated);
                }
            }
        });
    }

    /// Completes once the pod is deleted or past its deadline.
    async fn halted(&self) {
        let mut stop = self.stop.clone();
        let deleted = async move {
            // A closed channel (the fake is going away) halts too.
            let _ = stop.wait_for(Option::is_some).await.is_ok();
        };
        let deadline = async {
            match self.deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deleted => {}
            () = deadline => {}
        }
    }

    /// Sleeps `duration`; `false` if the pod was halted meanwhile.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.halted() => false,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.runtime.config.backoff;
        base.saturating_mul(1 << attempt.min(3))
    }

    async fn run(&self) {
        let Some(pod) = self.pod() else { return };
        self.update(pods::ensure_statuses);
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".to_owned());
        let binds = match self.volumes(&pod).await {
            Ok(binds) => binds,
            Err(()) => return,
        };
        for c in spec.init_containers.iter().flatten() {
            match self.run_container(c, true, &policy, &binds).await {
                Some(0) => {}
                // Failed under restartPolicy Never (the pod is Failed), or gone.
                _ => return,
            }
        }
        self.update(|p| {
            if let Some(status) = p.status.as_mut() {
                pods::set_condition(status, "Initialized", "True", None, None);
            }
        });
        let mains = spec
            .containers
            .iter()
            .map(|c| self.run_container(c, false, &policy, &binds));
        futures_join_all(mains).await;
    }

    /// Creates the volume directories; the bind of each volume by name.
    async fn volumes(&self, pod: &Pod) -> Result<HashMap<String, PathBuf>, ()> {
        let dir = self.runtime.pod_dir(self.uid);
        let mut binds = HashMap::new();
        let spec = pod.spec.clone().unwrap_or_default();
        for v in spec.volumes.iter().flatten() {
            if v.empty_dir.is_some() {
                let path = dir.join(&v.name);
                if let Err(e) = make_shared_dir(&path) {
                    self.wait_all(
                        &pod_containers(pod),
                        "CreateContainerConfigError",
                        &format!("creating emptyDir {}: {e}", v.name),
                    );
                    return Err(());
                }
                binds.insert(v.name.clone(), path);
            } else if let Some(host) = &v.host_path {
                binds.insert(v.name.clone(), PathBuf::from(&host.path));
            } else if let Some(source) = &v.secret {
                let secret_name = source.secret_name.clone().unwrap_or_default();
                let path = dir.join(&v.name);
                let mut attempt = 0;
                loop {
                    match self.secret(&secret_name) {
                        Some(secret) => {
                            if let Err(e) = write_secret(&path, &secret, source.items.as_deref()) {
                                self.wait_all(
                                    &pod_containers(pod),
                                    "CreateContainerConfigError",
                                    &format!("writing secret volume {}: {e}", v.name),
                                );
                                return Err(());
                            }
                            break;
                        }
                        None if source.optional == Some(true) => {
                            let _ = make_shared_dir(&path);
                            break;
                        }
                        None => {
                            // The kubelet keeps the pod in ContainerCreating
                            // until the secret exists.
                            self.wait_all(&pod_containers(pod), "ContainerCreating", &format!("MountVolume.SetUp failed for volume \"{}\" : secret \"{secret_name}\" not found", v.name));
                            if !self.pause(self.backoff(attempt)).await {
                                return Err(());
                            }
                            attempt += 1;
                        }
                    }
                }
                binds.insert(v.name.clone(), path);
            } else {
                self.wait_all(
                    &pod_containers(pod),
                    "CreateContainerConfigError",
                    &format!("volume \"{}\": only emptyDir, hostPath and secret volumes run on the fake Docker kubelet", v.name),
                );
                return Err(());
            }
        }
        Ok(binds)
    }

    fn wait_all(&self, containers: &[String], reason: &str, message: &str) {
        self.update(|p| {
            for c in containers {
                pods::set_waiting(p, c, reason, message);
            }
        });
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        let value = self.shared.read(|s| s.get(Kind::Secret, self.ns, name))?;
        serde_json::from_value((*value).clone()).ok()
    }

    /// Runs a container until it exits for good (restarting it as
    /// `restartPolicy` says); its last exit code, or `None` if the pod went
    /// away.
    async fn run_container(
        &self,
        c: &Container,
        init: bool,
        policy: &str,
        binds: &HashMap<String, PathBuf>,
    ) -> Option<i32> {
        let mut attempt = 0u32;
        loop {
            let exit = self.run_once(c, init, attempt, binds).await?;
            let code = exit.code;
            self.update(|p| {
                pods::set_terminated(p, &c.name, exit.code, &exit.reason, &exit.message)
            });
            if !restarts(policy, init, code) {
                return Some(code);
            }
            if !self.pause(self.backoff(attempt)).await {
                return None;
            }
            attempt += 1;
        }
    }

    /// Creates, starts and waits for one run of a container.
    async fn run_once(
        &self,
        c: &Container,
        init: bool,
        attempt: u32,
        binds: &HashMap<String, PathBuf>,
    ) -> Option<Exit> {
        let docker = &self.runtime.docker;
        let mut waits = 0u32;
        let prepared = loop {
            match self.prepare(c, binds).await {
                Ok(p) => break p,
                Err(NotYet::Gone) => return None,
                Err(NotYet::Waiting { reason, message }) => {
                    self.update(|p| pods::set_waiting(p, &c.name, reason, &message));
                    if !self.pause(self.backoff(waits)).await {
                        return None;
                    }
                    if reason == "ErrImagePull" {
                        let image = c.image.clone().unwrap_or_default();
                        self.update(|p| {
                            pods::set_waiting(
                                p,
                                &c.name,
                                "ImagePullBackOff",
                                &format!("Back-off pulling image \"{image}\""),
                            );
                        });
                        if !self.pause(self.backoff(waits)).await {
                            return None;
                        }
                    }
                    waits += 1;
                }
            }
        };
        let short_uid: String = self.uid.chars().take(8).collect();
        let docker_name = format!(
            "k8s_{}_{}_{}_{short_uid}_{attempt}",
            c.name, self.name, self.ns
        );
        let options = CreateContainerOptionsBuilder::new()
            .name(&docker_name)
            .build();
        let id = match docker.create_container(Some(options), prepared.body).await {
            Ok(created) => created.id,
            Err(e) => {
                return Some(Exit {
                    code: 128,
                    reason: "StartError".to_owned(),
                    message: format!("creating the container: {}", engine_words(&e)),
                });
            }
        };
        lock(&self.runtime.containers).insert(
            (self.ns.to_owned(), self.name.to_owned(), c.name.clone()),
            docker_name.clone(),
        );
        if let Err(e) = docker.start_container(&id, None).await {
            return Some(Exit {
                code: 128,
                reason: "StartError".to_owned(),
                message: engine_words(&e),
            });
        }
        let container_id = format!("docker://{id}");
        self.update(|p| {
            pods::set_container_running(p, &c.name, &container_id);
            if !init {
                let status = p.status.get_or_insert_with(Default::default);
                let all_running = status
                    .container_statuses
                    .iter()
                    .flatten()
                    .all(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
                if all_running {
                    pods::mark_running(status);
                } else {
                    status.phase = Some("Running".to_owned());
                    status.pod_ip = Some(pods::POD_IP.to_owned());
                }
            }
        });
        let exited = async {
            let mut wait = docker.wait_container(&id, None);
            while let Some(r) = wait.next().await {
                if let Err(e) = r
                    && !matches!(e, BollardError::DockerContainerWaitError { .. })
                {
                    tracing::debug!("kube-fake: waiting for {docker_name}: {e}");
                }
            }
        };
        tokio::select! {
            () = exited => {}
            () = self.halted() => return None,
        }
        let inspected = docker.inspect_container(&id, None).await.ok()?;
        let state = inspected.state.unwrap_or_default();
        let code = i32::try_from(state.exit_code.unwrap_or(-1)).unwrap_or(-1);
        let oom = state.oom_killed == Some(true);
        Some(Exit {
            code,
            reason: if oom {
                "OOMKilled".to_owned()
            } else {
                String::new()
            },
            message: state.error.unwrap_or_default(),
        })
    }

    /// Resolves a container's image, environment and mounts, or says why it
    /// cannot be created yet.
    async fn prepare(
        &self,
        c: &Container,
        binds: &HashMap<String, PathBuf>,
    ) -> Result<Prepared, NotYet> {
        let pod = self.pod().ok_or(NotYet::Gone)?;
        let image = c.image.clone().unwrap_or_default();
        let inspected = self.runtime.docker.inspect_image(&image).await;
        if let Err(e) = &inspected {
            if status_of(e) != Some(404) {
                return Err(NotYet::Waiting {
                    reason: "ErrImagePull",
                    message: format!("inspecting image \"{image}\": {}", engine_words(e)),
                });
            }
            if c.image_pull_policy.as_deref() == Some("Never") {
                return Err(NotYet::Waiting {
                    reason: "ErrImageNeverPull",
                    message: format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    ),
                });
            }
            return Err(NotYet::Waiting {
                reason: "ErrImagePull",
                message: format!(
                    "failed to pull and unpack image \"{image}\": the image is not in the local Docker \
                     engine and the fake Kubernetes kubelet pulls nothing"
                ),
            });
        }
        let env = self.environment(&pod, c)?;
        let vars: HashMap<String, String> = env.iter().cloned().collect();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let Some(host) = binds.get(&m.name) else {
                return Err(NotYet::Waiting {
                    reason: "CreateContainerConfigError",
                    message: format!("volume \"{}\" is not available", m.name),
                });
            };
            let mut host = host.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                host = host.join(expand(sub, &vars));
                let _ = make_shared_dir(&host);
            }
            let mode = if m.read_only == Some(true) { ":ro" } else { "" };
            mounts.push(format!("{}:{}{mode}", host.display(), m.mount_path));
        }
        let pod_security = spec.security_context.clone().unwrap_or_default();
        let security = c.security_context.clone().unwrap_or_default();
        let uid = security.run_as_user.or(pod_security.run_as_user);
        let gid = security.run_as_group.or(pod_security.run_as_group);
        let user = match (uid, gid) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => Some(format!("0:{g}")),
            (None, None) => None,
        };
        if security.run_as_non_root.or(pod_security.run_as_non_root) == Some(true) {
            let image_user = inspected
                .ok()
                .and_then(|i| i.config?.user)
                .unwrap_or_default();
            let which = format!(
                "(pod: \"{}_{}({})\", container: {})",
                self.name, self.ns, self.uid, c.name
            );
            let image_uid = image_user.split(':').next().unwrap_or_default();
            let refusal = match uid {
                Some(0) => Some(format!(
                    "container's runAsUser breaks non-root policy {which}"
                )),
                Some(_) => None,
                None if image_uid.is_empty() || image_uid == "0" || image_uid == "root" => Some(
                    format!("container has runAsNonRoot and image will run as root {which}"),
                ),
                None if image_uid.parse::<i64>().is_err() => Some(format!(
                    "container has runAsNonRoot and image has non-numeric user ({image_uid}), cannot verify user is non-root {which}"
                )),
                None => None,
            };
            if let Some(message) = refusal {
                return Err(NotYet::Waiting {
                    reason: "CreateContainerConfigError",
                    message,
                });
            }
        }
        let capabilities = security.capabilities.clone().unwrap_or_default();
        let mut groups: Vec<String> = pod_security
            .supplemental_groups
            .iter()
            .flatten()
            .map(ToString::to_string)
            .collect();
        if let Some(fs_group) = pod_security.fs_group {
            groups.push(fs_group.to_string());
        }
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .unwrap_or_default();
        let memory = limits
            .get("memory")
            .and_then(|q| parse_quantity(&q.0))
            .map(|b| b.round() as i64);
        let nano_cpus = limits
            .get("cpu")
            .and_then(|q| parse_quantity(&q.0))
            .map(|c| (c * 1e9).round() as i64);
        let labels = HashMap::from([
            (POD_LABEL.to_owned(), format!("{}/{}", self.ns, self.name)),
            (UID_LABEL.to_owned(), self.uid.to_owned()),
            (CONTAINER_LABEL.to_owned(), c.name.clone()),
            (INSTANCE_LABEL.to_owned(), self.runtime.instance.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(image),
            entrypoint: c
                .command
                .as_ref()
                .map(|cmd| cmd.iter().map(|a| expand(a, &vars)).collect()),
            cmd: c
                .args
                .as_ref()
                .map(|args| args.iter().map(|a| expand(a, &vars)).collect()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user,
            labels: Some(labels),
            hostname: (self.runtime.config.network != "host").then(|| self.name.to_owned()),
            host_config: Some(HostConfig {
                binds: (!mounts.is_empty()).then_some(mounts),
                network_mode: Some(self.runtime.config.network.clone()),
                memory,
                memory_swap: memory,
                nano_cpus,
                cap_add: capabilities.add.filter(|c| !c.is_empty()),
                cap_drop: capabilities.drop.filter(|c| !c.is_empty()),
                privileged: security.privileged,
                readonly_rootfs: security.read_only_root_filesystem,
                security_opt: (security.allow_privilege_escalation == Some(false))
                    .then(|| vec!["no-new-privileges".to_owned()]),
                group_add: (!groups.is_empty()).then_some(groups),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Prepared { body })
    }

    /// The container's environment in order, as the kubelet builds it:
    /// `envFrom` first, then `env` with `$(VAR)` expanded.
    fn environment(&self, pod: &Pod, c: &Container) -> Result<Vec<(String, String)>, NotYet> {
        let config_error = |message: String| NotYet::Waiting {
            reason: "CreateContainerConfigError",
            message,
        };
        let mut env: Vec<(String, String)> = Vec::new();
        let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        };
        for from in c.env_from.iter().flatten() {
            if let Some(source) = &from.secret_ref {
                let name = source.name.clone();
                match self.secret(&name) {
                    Some(secret) => {
                        for (k, v) in secret.data.unwrap_or_default() {
                            let key = format!("{}{k}", from.prefix.clone().unwrap_or_default());
                            set(&mut env, key, String::from_utf8_lossy(&v.0).into_owned());
                        }
                    }
                    None if source.optional == Some(true) => {}
                    None => return Err(config_error(format!("secret \"{name}\" not found"))),
                }
            }
            if let Some(source) = &from.config_map_ref
                && source.optional != Some(true)
            {
                return Err(config_error(format!(
                    "configmap \"{}\" not found",
                    source.name
                )));
            }
        }
        for e in c.env.iter().flatten() {
            let vars: HashMap<String, String> = env.iter().cloned().collect();
            let value = match (&e.value, &e.value_from) {
                (Some(v), _) => expand(v, &vars),
                (None, Some(from)) => {
                    if let Some(key_ref) = &from.secret_key_ref {
                        let name = key_ref.name.clone();
                        let optional = key_ref.optional == Some(true);
                        match self.secret(&name) {
                            Some(secret) => match secret.data.unwrap_or_default().get(&key_ref.key)
                            {
                                Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                                None if optional => continue,
                                None => {
                                    return Err(config_error(format!(
                                        "couldn't find key {} in Secret {}/{name}",
                                        key_ref.key, self.ns
                                    )));
                                }
                            },
                            None if optional => continue,
                            None => {
                                return Err(config_error(format!("secret \"{name}\" not found")));
                            }
                        }
                    } else if let Some(field) = &from.field_ref {
                        field_value(pod, &field.field_path)
                    } else if let Some(key_ref) = &from.config_map_key_ref {
                        if key_ref.optional == Some(true) {
                            continue;
                        }
                        return Err(config_error(format!(
                            "configmap \"{}\" not found",
                            key_ref.name
                        )));
                    } else {
                        String::new()
                    }
                }
                (None, None) => String::new(),
            };
            set(&mut env, e.name.clone(), value);
        }
        Ok(env)
    }

    /// Kills every running container of the pod.
    async fn kill_all(&self) {
        let docker = &self.runtime.docker;
        for id in self.container_ids().await {
            let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
            let _ = docker.kill_container(&id, Some(options)).await;
        }
    }

    async fn container_ids(&self) -> Vec<String> {
        let filters: HashMap<&str, Vec<String>> =
            HashMap::from([("label", vec![format!("{UID_LABEL}={}", self.uid)])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.runtime
            .docker
            .list_containers(Some(options))
            .await
            .map(|list| list.into_iter().filter_map(|c| c.id).collect())
            .unwrap_or_default()
    }

    /// Stops the containers (SIGTERM, SIGKILL after the grace period),
    /// removes them and the pod's directories.
    async fn tear_down(&self, grace: i64) {
        let docker = &self.runtime.docker;
        let cap = i64::try_from(self.runtime.config.max_grace_period.as_secs()).unwrap_or(i64::MAX);
        let grace = i32::try_from(grace.clamp(0, cap)).unwrap_or(0);
        let ids = self.container_ids().await;
        let stops = ids.iter().map(|id| async move {
            let options = StopContainerOptionsBuilder::new().t(grace).build();
            let _ = docker.stop_container(id, Some(options)).await;
        });
        futures_join_all(stops).await;
        for id in &ids {
            remove_container(docker, id).await;
        }
        let _ = std::fs::remove_dir_all(self.runtime.pod_dir(self.uid));
    }
}

/// Awaits every future (in place of a `futures` dependency).
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn pod_containers(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.clone())
        .collect()
}

/// A directory every user may write, as an `emptyDir` is.
fn make_shared_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
}

/// Writes a secret's keys (or the selected `items`) as files.
fn write_secret(
    dir: &Path,
    secret: &Secret,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    make_shared_dir(dir)?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let files: Vec<(String, &Vec<u8>)> = match items {
        Some(items) => items
            .iter()
            .filter_map(|i| Some((i.path.clone(), data.get(&i.key)?)))
            .collect(),
        None => data.iter().map(|(k, v)| (k.clone(), v)).collect(),
    };
    for (path, bytes) in files {
        if path.split('/').any(|part| part == "..") {
            continue;
        }
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// The value of a `fieldRef` path.
fn field_value(pod: &Pod, path: &str) -> String {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let from_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        map.as_ref()?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" | "status.hostIP" => pods::POD_IP.to_owned(),
        _ => from_map(&meta.labels, "metadata.labels['")
            .or_else(|| from_map(&meta.annotations, "metadata.annotations['"))
            .unwrap_or_default(),
    }
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined reference stays as written, `$$` is a `$`.
pub(crate) fn expand(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A Kubernetes quantity as a number (`512Mi`, `1G`, `500m`, `1.5`,
/// `1e3`); `None` if it is not one.
pub(crate) fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0f64.powi(4)),
        ("Pi", 1024.0f64.powi(5)),
        ("Ei", 1024.0f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            return number
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(|n| n * factor);
        }
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_references_expand_as_kubernetes_does() {
        let vars = HashMap::from([
            ("A".to_owned(), "x".to_owned()),
            ("B".to_owned(), "y".to_owned()),
        ]);
        let check =
            |input: &str, expected: &str| assert_eq!(expand(input, &vars), expected, "{input}");
        check("$(A)", "x");
        check("a$(A)b$(B)", "axby");
        check("$(C)", "$(C)");
        check("$$(A)", "$(A)");
        check("$$", "$");
        check("cost $5", "cost $5");
        check("$(A", "$(A");
        check("$", "$");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("512Mi"), Some(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn restart_policies() {
        assert!(restarts("Always", false, 0));
        assert!(!restarts("Always", true, 0));
        assert!(restarts("OnFailure", false, 1));
        assert!(!restarts("OnFailure", false, 0));
        assert!(!restarts("Never", false, 1));
    }
}
