//! The Docker backend: each ephemeral worker is one container, created
//! through the engine's API (`bollard`, over the unix socket).
//!
//! - **Image**: the template's image (for a `docker 'image'` agent, that
//!   image). It must be on the engine or pullable: with
//!   [`PullPolicy::IfNotPresent`] a missing image is pulled once, within
//!   [`DockerConfig::pull_timeout`]; a failed pull fails the worker with
//!   the engine's words. [`PullPolicy::Never`] fails at once.
//! - **The worker binary** is injected, not baked in: the static
//!   `hodei-worker` of [`DockerConfig::worker_binary`] is bind-mounted
//!   read-only at [`WORKER_PATH`] and is the container's entrypoint, so any
//!   image runs steps (they need a `/bin/sh`). A bind mount, not a copy,
//!   because it costs nothing per container and works for `FROM scratch`
//!   images; the path is a path on the engine's host, so a server inside a
//!   container must mount the binary at the same path (or use images that
//!   ship the worker). An image labelled `dev.hodei.ships-worker=true`
//!   ([`SHIPS_WORKER_LABEL`], as the images of `docker/` are) runs its own
//!   entrypoint, and so does every image when `worker_binary` is `None`.
//! - **Container**: named `hodei-<worker id>`, labelled with
//!   [`WorkerSpec::backend_labels`], environment
//!   [`WorkerSpec::worker_environment`] (the token included; never logged)
//!   plus `HODEI_WORKSPACE_ROOT`, working directory
//!   [`DockerConfig::workspace_dir`] (with `-u`: [`USER_WORKSPACE`]), network mode
//!   [`DockerConfig::network_mode`] (`host` by default, so `127.0.0.1`
//!   reaches the server), cpu and memory limits from the template's
//!   resources (the limit, else the request; zero means none; swap off),
//!   then the agent's `docker` args (`-e`, `-v`, `--memory`, `--cpus`,
//!   `-u`) on top.
//! - **State**: an exited container reports its exit code, `OOMKilled`
//!   when the kernel killed it for its memory limit, and its last log
//!   lines; so a worker that dies before connecting fails its job with the
//!   reason.
//! - **Delete** removes the container with force and its anonymous
//!   volumes; a container already gone is fine. **List** filters on the
//!   `hodei.dev/server-id` label, so a restarted server finds its orphans.
//! - **Engine unreachable**: every call fails with
//!   [`OrchestratorError::Unavailable`] naming the socket; the client is
//!   rebuilt on the next call, so the backend recovers when the engine
//!   comes back. [`DockerOrchestrator::ping`] checks it at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, ContainerSummaryStateEnum, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use hodei_application::orchestrator::{
    BackendState, BackendWorker, LABEL_MANAGED_BY, LABEL_SERVER_ID, OrchestratorError,
    WorkerHandle, WorkerOrchestrator, WorkerSpec,
};
use hodei_domain::WorkerId;
use tokio_stream::StreamExt;

/// Where the injected worker binary appears inside a container.
pub const WORKER_PATH: &str = "/opt/hodei/hodei-worker";
/// The image label by which an image says it ships the worker as its
/// entrypoint (value `true`): nothing is injected into its containers.
pub const SHIPS_WORKER_LABEL: &str = "dev.hodei.ships-worker";
/// The workspace root of a container whose agent sets `-u`: a directory
/// that user can create (the engine creates the working directory as
/// root).
pub const USER_WORKSPACE: &str = "/tmp/hodei-workspace";
/// The engine's socket when none is configured.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The variables a `docker` agent's `-e` cannot change.
const STANDARD_VARIABLES: [&str; 9] = [
    "SERVER_HOST",
    "SERVER_PORT",
    "WORKER_ID",
    "WORKER_NAME",
    "WORKER_CAPABILITIES",
    "EPHEMERAL_MODE",
    hodei_application::orchestrator::TOKEN_ENV,
    "HODEI_WORKSPACE_ROOT",
    "HODEI_SERVER_LOST_GRACE",
];
/// Longest log line kept, in bytes; longer lines are cut.
const MAX_LINE: usize = 1000;

/// What to do when a worker's image is not on the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Pull it (within [`DockerConfig::pull_timeout`]).
    #[default]
    IfNotPresent,
    /// Fail the worker at once: images are provided by other means.
    Never,
}

/// Settings of the Docker backend.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The engine's unix socket (`unix://` prefix allowed).
    pub socket: String,
    /// The static `hodei-worker` on the engine's host, bind-mounted
    /// read-only at [`WORKER_PATH`] and used as the entrypoint; `None`:
    /// images ship the worker as their entrypoint.
    pub worker_binary: Option<PathBuf>,
    /// The container's network mode (`host`, `bridge`, a network name).
    pub network_mode: String,
    /// The container's working directory, given to the worker as
    /// `HODEI_WORKSPACE_ROOT`.
    pub workspace_dir: String,
    /// Given to workers as `HODEI_SERVER_LOST_GRACE` (whole milliseconds).
    pub server_lost_grace: Option<Duration>,
    /// What happens when an image is missing.
    pub pull_policy: PullPolicy,
    /// How long a pull may take before the worker fails.
    pub pull_timeout: Duration,
    /// How many log lines an exited worker reports.
    pub log_lines: usize,
    /// Timeout of one engine request.
    pub request_timeout: Duration,
}

impl DockerConfig {
    /// The defaults: the standard socket, host networking, `/workspace`,
    /// pull if missing within 2 minutes, 20 log lines, and `worker_binary`
    /// injected.
    pub fn new(worker_binary: Option<PathBuf>) -> Self {
        Self {
            socket: DEFAULT_SOCKET.to_owned(),
            worker_binary,
            network_mode: "host".to_owned(),
            workspace_dir: "/workspace".to_owned(),
            server_lost_grace: None,
            pull_policy: PullPolicy::IfNotPresent,
            pull_timeout: Duration::from_secs(120),
            log_lines: 20,
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// The Docker [`WorkerOrchestrator`].
#[derive(Debug)]
pub struct DockerOrchestrator {
    config: DockerConfig,
    client: Mutex<Option<Docker>>,
}

/// The container name of a worker.
pub fn container_name(id: &WorkerId) -> String {
    format!("hodei-{id}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How an engine error reads in a message: the engine's own words for an
/// API error, the transport error otherwise.
fn engine_words(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_owned(),
        other => other.to_string(),
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerOrchestrator {
    /// A backend for the engine at [`DockerConfig::socket`]. Does not
    /// connect: see [`DockerOrchestrator::ping`].
    pub fn new(config: DockerConfig) -> Self {
        Self {
            config,
            client: Mutex::new(None),
        }
    }

    /// When the injected worker could not be executed ("no such file or
    /// directory" for a file that is there) and it is dynamically linked:
    /// why, and what to do.
    fn loader_hint(&self, last_lines: &[String]) -> Option<String> {
        let binary = self.config.worker_binary.as_ref()?;
        let not_run = format!("exec {WORKER_PATH}: no such file or directory");
        if !last_lines.iter().any(|l| l.contains(&not_run)) {
            return None;
        }
        match is_static_executable(binary) {
            Ok(false) => Some(format!(
                " (the injected worker {} is dynamically linked and the image lacks its \
                 loader or libc: use a static build, scripts/build-static-worker.sh)",
                binary.display()
            )),
            _ => None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &DockerConfig {
        &self.config
    }

    /// Checks that the engine answers; returns its version.
    ///
    /// # Errors
    /// [`OrchestratorError::Unavailable`] naming the socket and the reason.
    pub async fn ping(&self) -> Result<String, OrchestratorError> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(|e| self.unavailable(&e))?;
        Ok(version.version.unwrap_or_else(|| "unknown".to_owned()))
    }

    fn unavailable(&self, e: &BollardError) -> OrchestratorError {
        // A broken connection: build a fresh client next time.
        lock(&self.client).take();
        OrchestratorError::Unavailable(format!(
            "docker engine at {} is unreachable: {}",
            self.config.socket,
            engine_words(e)
        ))
    }

    /// Maps an engine error of a call that is not about one worker.
    fn engine_error(&self, e: BollardError) -> OrchestratorError {
        match status_of(&e) {
            Some(_) => OrchestratorError::Backend(Box::new(e)),
            None => self.unavailable(&e),
        }
    }

    /// The client, built (and its API version negotiated) on first use.
    async fn client(&self) -> Result<Docker, OrchestratorError> {
        if let Some(docker) = lock(&self.client).clone() {
            return Ok(docker);
        }
        let docker = Docker::connect_with_unix(
            &self.config.socket,
            self.config.request_timeout.as_secs().max(1),
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| self.unavailable(&e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| self.unavailable(&e))?;
        *lock(&self.client) = Some(docker.clone());
        Ok(docker)
    }

    /// Makes sure the image is on the engine, pulling it if allowed;
    /// returns whether the image says it ships the worker
    /// ([`SHIPS_WORKER_LABEL`]).
    async fn ensure_image(
        &self,
        docker: &Docker,
        image: &str,
        worker_id: &WorkerId,
    ) -> Result<bool, OrchestratorError> {
        let provisioning = |reason: String| OrchestratorError::Provisioning {
            worker_id: worker_id.clone(),
            reason,
        };
        match docker.inspect_image(image).await {
            Ok(inspected) => return Ok(ships_worker(&inspected)),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) if status_of(&e).is_some() => {
                return Err(provisioning(format!(
                    "image \"{image}\": {}",
                    engine_words(&e)
                )));
            }
            Err(e) => return Err(self.unavailable(&e)),
        }
        if self.config.pull_policy == PullPolicy::Never {
            return Err(provisioning(format!(
                "image \"{image}\" is not present on the docker engine and pulling is disabled"
            )));
        }
        tracing::info!(%image, worker = %worker_id, "pulling image");
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let pull = async {
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                match item {
                    Ok(info) => {
                        if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                            return Err(detail);
                        }
                    }
                    Err(e) => return Err(engine_words(&e)),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.config.pull_timeout, pull).await {
            Ok(Ok(())) => Ok(docker
                .inspect_image(image)
                .await
                .is_ok_and(|inspected| ships_worker(&inspected))),
            Ok(Err(words)) => Err(provisioning(format!(
                "image \"{image}\" is not present on the docker engine and pulling it failed: {words}"
            ))),
            Err(_) => Err(provisioning(format!(
                "image \"{image}\" is not present on the docker engine and pulling it took longer than {}s",
                self.config.pull_timeout.as_secs()
            ))),
        }
    }

    /// The container to create for `spec`, injecting `inject` (the worker
    /// binary on the engine's host) unless it is `None`.
    fn container_body(&self, spec: &WorkerSpec, inject: Option<&PathBuf>) -> ContainerCreateBody {
        let user = spec.docker_args.as_ref().and_then(|a| a.user.clone());
        // The engine creates a missing working directory owned by root, so
        // another user works under /tmp, where it may create directories.
        let (working_dir, workspace) = match &user {
            None => (
                self.config.workspace_dir.clone(),
                self.config.workspace_dir.clone(),
            ),
            Some(_) => ("/tmp".to_owned(), USER_WORKSPACE.to_owned()),
        };
        let mut env = spec.worker_environment();
        env.insert("HODEI_WORKSPACE_ROOT".to_owned(), workspace);
        if let Some(grace) = self.config.server_lost_grace {
            env.insert(
                "HODEI_SERVER_LOST_GRACE".to_owned(),
                format!("{}ms", grace.as_millis()),
            );
        }
        let resources = spec.template.resources();
        let mut nano_cpus = resources
            .effective_cpu_limit()
            .millis()
            .saturating_mul(1_000_000);
        let mut memory = resources.effective_memory_limit().bytes();
        let mut binds = Vec::new();
        if let Some(binary) = inject {
            binds.push(format!("{}:{WORKER_PATH}:ro", binary.display()));
        }
        if let Some(args) = &spec.docker_args {
            // Above the template's environment, below the standard variables.
            for (key, value) in &args.env {
                if !STANDARD_VARIABLES.contains(&key.as_str()) {
                    env.insert(key.clone(), value.clone());
                }
            }
            binds.extend(args.volumes.iter().map(|v| v.to_bind()));
            if let Some(m) = args.memory {
                memory = m.bytes();
            }
            if let Some(c) = args.cpus {
                nano_cpus = c.millis().saturating_mul(1_000_000);
            }
        }
        let positive = |v: u64| (v > 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
        let memory = positive(memory);
        let host_config = HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            network_mode: Some(self.config.network_mode.clone()),
            nano_cpus: positive(nano_cpus),
            memory,
            // No swap beyond the limit, so the limit is what the job gets.
            memory_swap: memory,
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.template.image().to_owned()),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(spec.backend_labels().into_iter().collect()),
            working_dir: Some(working_dir),
            entrypoint: inject.map(|_| vec![WORKER_PATH.to_owned()]),
            cmd: inject.map(|_| Vec::new()),
            user,
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// The last log lines of a container, oldest first.
    async fn last_lines(&self, docker: &Docker, name: &str) -> Vec<String> {
        let tail = self.config.log_lines.to_string();
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut text = String::new();
        let mut logs = docker.logs(name, Some(options));
        while let Some(Ok(chunk)) = logs.next().await {
            text.push_str(&chunk.to_string());
        }
        tail_lines(&text, self.config.log_lines)
    }

    /// Removes a container, ignoring "already gone".
    async fn remove(&self, docker: &Docker, name: &str) -> Result<(), OrchestratorError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // "removal of container ... is already in progress".
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(self.engine_error(e)),
        }
    }
}

/// Whether `path` is an ELF executable without a program interpreter
/// (`PT_INTERP`), i.e. statically linked, so it runs in any image.
///
/// # Errors
/// The file cannot be read or is not a 64-bit little-endian ELF file.
pub fn is_static_executable(path: &std::path::Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    elf_has_no_interpreter(&bytes).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a 64-bit little-endian ELF file", path.display()),
        )
    })
}

fn elf_has_no_interpreter(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    // Magic, 64-bit class, little endian.
    if bytes.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        if u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP {
            return Some(false);
        }
    }
    Some(true)
}

/// Whether an image carries [`SHIPS_WORKER_LABEL`]` = true`.
fn ships_worker(image: &bollard::models::ImageInspect) -> bool {
    image
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|labels| labels.get(SHIPS_WORKER_LABEL))
        .is_some_and(|v| v == "true")
}

/// The last `count` non-empty lines of `text`, each cut to [`MAX_LINE`].
fn tail_lines(text: &str, count: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..]
        .iter()
        .map(|line| {
            let mut end = line.len().min(MAX_LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line[..end].to_owned()
        })
        .collect()
}

/// The reason text of an exited container.
fn exit_reason(code: Option<i64>, oom_killed: bool, error: &str) -> String {
    let mut reason = match code {
        Some(code) => format!("exit status {code}"),
        None => "an unknown status".to_owned(),
    };
    if oom_killed {
        reason = format!("OOMKilled (out of memory at its memory limit, {reason})");
    }
    if !error.is_empty() {
        reason.push_str(": ");
        reason.push_str(error);
    }
    reason
}

#[async_trait]
impl WorkerOrchestrator for DockerOrchestrator {
    fn backend(&self) -> &'static str {
        "docker"
    }

    async fn create_worker(&self, spec: WorkerSpec) -> Result<WorkerHandle, OrchestratorError> {
        let docker = self.client().await?;
        let image = spec.template.image().to_owned();
        let ships_worker = self.ensure_image(&docker, &image, &spec.worker_id).await?;
        let inject = self.config.worker_binary.as_ref().filter(|_| !ships_worker);
        let name = container_name(&spec.worker_id);
        let provisioning = |reason: String| OrchestratorError::Provisioning {
            worker_id: spec.worker_id.clone(),
            reason,
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match docker
            .create_container(Some(options), self.container_body(&spec, inject))
            .await
        {
            Ok(created) => created,
            Err(e) if status_of(&e) == Some(409) => {
                return Err(OrchestratorError::AlreadyExists(spec.worker_id));
            }
            Err(e) if status_of(&e).is_some() => {
                return Err(provisioning(format!(
                    "creating container {name} from image \"{image}\": {}",
                    engine_words(&e)
                )));
            }
            Err(e) => return Err(self.unavailable(&e)),
        };
        if let Err(e) = docker.start_container(&name, None).await {
            let reason = format!(
                "starting container {name} from image \"{image}\": {}",
                engine_words(&e)
            );
            let _ = self.remove(&docker, &name).await;
            return Err(if status_of(&e).is_some() {
                provisioning(reason)
            } else {
                self.unavailable(&e)
            });
        }
        tracing::info!(worker = %spec.worker_id, container = %name, %image, "docker worker started");
        Ok(WorkerHandle {
            worker_id: spec.worker_id,
            backend_id: created.id,
        })
    }

    async fn delete_worker(&self, id: &WorkerId) -> Result<(), OrchestratorError> {
        let docker = self.client().await?;
        self.remove(&docker, &container_name(id)).await
    }

    async fn list_workers(&self, server_id: &str) -> Result<Vec<BackendWorker>, OrchestratorError> {
        let docker = self.client().await?;
        let filters: HashMap<&str, Vec<String>> = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_MANAGED_BY}=hodei"),
                format!("{LABEL_SERVER_ID}={server_id}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.engine_error(e))?;
        let mut workers: Vec<BackendWorker> = containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let state = match c.state {
                    Some(ContainerSummaryStateEnum::CREATED) => BackendState::Pending,
                    Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                        BackendState::Exited {
                            code: None,
                            reason: c.status.unwrap_or_default(),
                            last_lines: Vec::new(),
                        }
                    }
                    _ => BackendState::Running,
                };
                BackendWorker::from_labels(
                    |key| labels.get(key).map(String::as_str),
                    c.id.unwrap_or_default(),
                    state,
                )
            })
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }

    async fn worker_state(&self, id: &WorkerId) -> Result<BackendState, OrchestratorError> {
        let docker = self.client().await?;
        let name = container_name(id);
        let inspected = match docker.inspect_container(&name, None).await {
            Ok(inspected) => inspected,
            Err(e) if status_of(&e) == Some(404) => return Ok(BackendState::NotFound),
            Err(e) => return Err(self.engine_error(e)),
        };
        let state = inspected.state.unwrap_or_default();
        Ok(match state.status {
            Some(ContainerStateStatusEnum::CREATED) => BackendState::Pending,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                let last_lines = self.last_lines(&docker, &name).await;
                let mut reason = exit_reason(
                    state.exit_code,
                    state.oom_killed.unwrap_or(false),
                    state.error.as_deref().unwrap_or(""),
                );
                if let Some(hint) = self.loader_hint(&last_lines) {
                    reason.push_str(&hint);
                }
                BackendState::Exited {
                    code: state.exit_code.and_then(|c| i32::try_from(c).ok()),
                    reason,
                    last_lines,
                }
            }
            Some(ContainerStateStatusEnum::REMOVING) => BackendState::NotFound,
            _ => BackendState::Running,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hodei_application::orchestrator::{LABEL_WORKER_ID, OneTimeToken, ServerEndpoint};
    use hodei_domain::{
        CpuQuantity, DockerArgs, JobId, MemoryQuantity, ResourceRequirements, TemplateId,
        WorkerTemplate,
    };

    use super::*;

    fn spec(resources: ResourceRequirements, args: Option<&str>) -> WorkerSpec {
        let template = WorkerTemplate::new(TemplateId::new("t").unwrap(), "img:1", resources)
            .unwrap()
            .with_environment([("FROM_TEMPLATE", "1")])
            .unwrap();
        WorkerSpec {
            worker_id: WorkerId::new("w-1").unwrap(),
            worker_name: "hodei-t-w-1".into(),
            job_id: JobId::new("j-1").unwrap(),
            template,
            server: ServerEndpoint {
                host: "127.0.0.1".into(),
                port: 7000,
            },
            token: OneTimeToken::new("secret"),
            server_id: "srv".into(),
            extra_labels: BTreeMap::new(),
            extra_env: BTreeMap::new(),
            docker_args: args.map(|a| DockerArgs::parse(a).unwrap()),
            pod_yaml: None,
        }
    }

    fn resources(cpu: &str, memory: &str) -> ResourceRequirements {
        ResourceRequirements::new(
            CpuQuantity::parse(cpu).unwrap(),
            MemoryQuantity::parse(memory).unwrap(),
        )
    }

    /// What `check` compares: nano cpus, memory, binds, user, entrypoint.
    type Summary<'a> = (
        Option<i64>,
        Option<i64>,
        Vec<&'a str>,
        Option<&'a str>,
        Option<Vec<&'a str>>,
    );

    /// The container body for a spec, summarised; memory swap always
    /// equals memory.
    fn check(config: DockerConfig, spec: &WorkerSpec, expected: Summary<'_>) {
        let body = DockerOrchestrator::new(config.clone())
            .container_body(spec, config.worker_binary.as_ref());
        let host = body.host_config.clone().unwrap();
        assert_eq!(host.memory_swap, host.memory);
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        let got = (
            host.nano_cpus,
            host.memory,
            host.binds.unwrap_or_default(),
            body.user.clone(),
            body.entrypoint.clone(),
        );
        let (cpus, memory, binds, user, entrypoint) = expected;
        assert_eq!(
            got,
            (
                cpus,
                memory,
                binds.iter().map(|b| b.to_string()).collect(),
                user.map(str::to_owned),
                entrypoint.map(|e| e.iter().map(|s| s.to_string()).collect())
            )
        );
        let (working_dir, root) = match user {
            None => ("/workspace", "HODEI_WORKSPACE_ROOT=/workspace"),
            Some(_) => ("/tmp", "HODEI_WORKSPACE_ROOT=/tmp/hodei-workspace"),
        };
        assert_eq!(body.working_dir.as_deref(), Some(working_dir));
        let labels = body.labels.unwrap();
        assert_eq!(labels[LABEL_SERVER_ID], "srv");
        assert_eq!(labels[LABEL_WORKER_ID], "w-1");
        let env = body.env.unwrap();
        for expected in [
            "HODEI_WORKER_TOKEN=secret",
            root,
            "FROM_TEMPLATE=1",
            "EPHEMERAL_MODE=true",
        ] {
            assert!(env.iter().any(|e| e == expected), "{expected} in {env:?}");
        }
    }

    #[test]
    fn container_bodies() {
        let injected = DockerConfig::new(Some(PathBuf::from("/usr/bin/hodei-worker")));
        check(
            injected.clone(),
            &spec(resources("500m", "1Gi"), None),
            (
                Some(500_000_000),
                Some(1 << 30),
                vec!["/usr/bin/hodei-worker:/opt/hodei/hodei-worker:ro"],
                None,
                Some(vec![WORKER_PATH]),
            ),
        );
        let limited = resources("1", "1Gi")
            .with_cpu_limit(CpuQuantity::parse("2").unwrap())
            .unwrap()
            .with_memory_limit(MemoryQuantity::parse("4Gi").unwrap())
            .unwrap();
        check(
            DockerConfig::new(None),
            &spec(limited, None),
            (Some(2_000_000_000), Some(4 << 30), vec![], None, None),
        );
        check(
            injected,
            &spec(
                resources("0", "0"),
                Some("-e A=1 -v /c:/root/.m2:ro --memory 64m --cpus 1.5 -u 1000:1000"),
            ),
            (
                Some(1_500_000_000),
                Some(64 << 20),
                vec![
                    "/usr/bin/hodei-worker:/opt/hodei/hodei-worker:ro",
                    "/c:/root/.m2:ro",
                ],
                Some("1000:1000"),
                Some(vec![WORKER_PATH]),
            ),
        );
        check(
            DockerConfig::new(None),
            &spec(resources("0", "0"), None),
            (None, None, vec![], None, None),
        );
    }

    #[test]
    fn args_env_overrides_the_template_not_the_standard_variables() {
        let s = spec(
            resources("1", "1Gi"),
            Some("-e A=from-args -e FROM_TEMPLATE=2 -e HODEI_WORKER_TOKEN=stolen -e WORKER_ID=x"),
        );
        let body = DockerOrchestrator::new(DockerConfig::new(None)).container_body(&s, None);
        let env = body.env.unwrap();
        assert!(env.contains(&"A=from-args".to_owned()));
        assert!(env.contains(&"FROM_TEMPLATE=2".to_owned()));
        assert!(env.contains(&"HODEI_WORKER_TOKEN=secret".to_owned()));
        assert!(env.contains(&"WORKER_ID=w-1".to_owned()));
        assert!(!env.iter().any(|e| e.contains("stolen")));
    }

    #[test]
    fn static_executables_are_told_from_dynamic_ones() {
        // This test executable is dynamically linked (the default build).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_executable(&me).unwrap());
        assert_eq!(elf_has_no_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_has_no_interpreter(b"\x7fELF\x02\x01"), None);
        // A minimal header with no program headers: nothing asks for a loader.
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        assert_eq!(elf_has_no_interpreter(&header), Some(true));
        // One PT_INTERP program header.
        header[0x20] = 64;
        header[0x36] = 56;
        header[0x38] = 1;
        header.extend_from_slice(&[3, 0, 0, 0]);
        header.resize(64 + 56, 0);
        assert_eq!(elf_has_no_interpreter(&header), Some(false));
        let text = std::env::temp_dir().join(format!("hodei-not-elf-{}", std::process::id()));
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        let err = is_static_executable(&text).unwrap_err();
        std::fs::remove_file(&text).unwrap();
        assert!(
            err.to_string()
                .ends_with("is not a 64-bit little-endian ELF file")
        );
    }

    #[test]
    fn exit_reasons() {
        fn check(code: Option<i64>, oom: bool, error: &str, expected: &str) {
            assert_eq!(exit_reason(code, oom, error), expected);
        }
        check(Some(2), false, "", "exit status 2");
        check(
            Some(137),
            true,
            "",
            "OOMKilled (out of memory at its memory limit, exit status 137)",
        );
        check(None, false, "", "an unknown status");
        check(
            Some(127),
            false,
            "exec: not found",
            "exit status 127: exec: not found",
        );
    }

    #[test]
    fn last_lines_are_bounded() {
        fn check(text: &str, count: usize, expected: &[&str]) {
            assert_eq!(tail_lines(text, count), expected);
        }
        check("a\nb\n\nc\n", 2, &["b", "c"]);
        check("a\r\nb", 5, &["a", "b"]);
        check("", 3, &[]);
        let long = "é".repeat(MAX_LINE);
        assert!(tail_lines(&long, 1)[0].len() <= MAX_LINE);
    }
}
