//! The local-process backend: each ephemeral worker is a child process of
//! the server running the `hodei-worker` binary, in its own process group.
//!
//! - The child gets the server's own environment (less its `HODEI_*`
//!   settings, which may hold secrets) with
//!   [`WorkerSpec::worker_environment`] on top (the seed's `SERVER_HOST`,
//!   `SERVER_PORT`, `WORKER_ID`, `WORKER_NAME`, `WORKER_CAPABILITIES`,
//!   `EPHEMERAL_MODE=true`, and `HODEI_WORKER_TOKEN`), plus
//!   `HODEI_WORKSPACE_ROOT` and `HODEI_SERVER_LOST_GRACE` from the
//!   configuration.
//! - Its stderr is kept in a bounded ring buffer (the last
//!   [`LocalConfig::stderr_lines`] lines), so an exit before connecting
//!   reports the exit status and the worker's own last words through
//!   [`WorkerOrchestrator::worker_state`].
//! - Deleting a worker sends SIGTERM to its process group (the worker then
//!   kills the process groups of its steps), SIGKILL after
//!   [`LocalConfig::stop_grace`], and reaps it. A worker that exited with
//!   0 has ended everything its steps left behind (it is their subreaper;
//!   see `hodei_worker::run_process`), so that is all. Otherwise (killed,
//!   crashed, or any other exit) the backend kills any process that still
//!   carries the worker's `WORKER_ID` in its environment (steps run in
//!   their own process groups; this catches them even when the worker died
//!   without cleaning up). Only processes started after the worker are
//!   looked at, and deletions that overlap share one scan of `/proc`.
//!
//! Image templates mean nothing here: the backend offers its own `local`
//! template, built from [`detect_host_capabilities`].

pub mod capabilities;
mod sweep;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use hodei_application::orchestrator::{
    BackendState, BackendWorker, OrchestratorError, WorkerHandle, WorkerOrchestrator, WorkerSpec,
};
use hodei_domain::{IdError, JobId, TemplateError, TemplateId, WorkerId};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

pub use sweep::{is_live, processes_marked_by, start_time};

pub use capabilities::{
    DEFAULT_PROBE_TIMEOUT, DetectedTool, HostCapabilities, LOCAL_TEMPLATE_ID,
    detect_host_capabilities, detect_host_capabilities_cached, detect_with_path,
    detect_with_path_cached,
};

/// Name of the worker binary looked up by default.
pub const WORKER_BINARY: &str = "hodei-worker";
/// Longest stderr line kept, in bytes; longer lines are cut.
const MAX_LINE: usize = 1000;

/// A local-backend problem outside the port's own errors.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No worker binary was configured and none was found.
    #[error("worker binary {WORKER_BINARY:?} not found next to {exe} nor on PATH")]
    WorkerBinaryNotFound {
        /// The current executable's path.
        exe: String,
    },
    /// The `local` template could not be built.
    #[error("local template: {0}")]
    Template(#[from] TemplateError),
    /// The `local` template id was refused.
    #[error("local template: {0}")]
    Id(#[from] IdError),
}

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The worker binary; see [`LocalConfig::resolve_worker_binary`].
    pub worker_binary: PathBuf,
    /// Arguments before any other (e.g. `["worker"]` to run `hodei worker`
    /// from the server's own executable).
    pub worker_args: Vec<String>,
    /// Given to workers as `HODEI_WORKSPACE_ROOT`.
    pub workspace_root: PathBuf,
    /// Given to workers as `HODEI_SERVER_LOST_GRACE` (whole milliseconds).
    pub server_lost_grace: Option<Duration>,
    /// A Unix socket on which the server serves workers, given to them as
    /// `HODEI_SERVER_SOCKET`: they connect there rather than over TCP
    /// (`SERVER_HOST` and `SERVER_PORT` are still set).
    pub server_socket: Option<PathBuf>,
    /// Time between SIGTERM and SIGKILL when deleting a worker.
    pub stop_grace: Duration,
    /// How many stderr lines are kept per worker.
    pub stderr_lines: usize,
}

impl LocalConfig {
    /// A configuration running `worker_binary`, with workspaces under the
    /// temporary directory, a 5 s stop grace and 20 stderr lines.
    pub fn new(worker_binary: impl Into<PathBuf>) -> Self {
        Self {
            worker_binary: worker_binary.into(),
            worker_args: Vec::new(),
            workspace_root: std::env::temp_dir().join("hodei-workspaces"),
            server_lost_grace: None,
            server_socket: None,
            stop_grace: Duration::from_secs(5),
            stderr_lines: 20,
        }
    }

    /// The default worker binary: `hodei-worker` next to the current
    /// executable, else the first `hodei-worker` on `PATH`.
    ///
    /// # Errors
    /// [`LocalError::WorkerBinaryNotFound`] when there is neither.
    pub fn resolve_worker_binary() -> Result<PathBuf, LocalError> {
        let exe = std::env::current_exe().unwrap_or_default();
        if let Some(path) = Self::worker_binary_beside(&exe) {
            return Ok(path);
        }
        let path_var = std::env::var("PATH").unwrap_or_default();
        capabilities::find_on_path(WORKER_BINARY, &path_var).ok_or_else(|| {
            LocalError::WorkerBinaryNotFound {
                exe: exe.display().to_string(),
            }
        })
    }
}

impl LocalConfig {
    /// `hodei-worker` in the directory of `exe`, when it is a file.
    pub fn worker_binary_beside(exe: &std::path::Path) -> Option<PathBuf> {
        let path = exe.parent()?.join(WORKER_BINARY);
        path.is_file().then_some(path)
    }

    /// `hodei-worker` in the directory of `exe` when it is a file at least
    /// as recent as `exe` (so not left over from an older build: the two
    /// must speak the same protocol).
    pub fn current_worker_binary_beside(exe: &std::path::Path) -> Option<PathBuf> {
        let path = Self::worker_binary_beside(exe)?;
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        match (modified(&path), modified(exe)) {
            (Some(worker), Some(exe)) if worker >= exe => Some(path),
            _ => None,
        }
    }
}

/// The last lines of a stream, bounded in count and line length.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
    capacity: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        if self.capacity == 0 {
            return;
        }
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        let mut end = line.len().min(MAX_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        self.lines.push_back(line[..end].to_owned());
    }
}

/// One child worker.
#[derive(Debug)]
struct LocalChild {
    job_id: JobId,
    template_id: TemplateId,
    server_id: String,
    pid: u32,
    /// The worker's start time in clock ticks after boot (0 if unknown):
    /// whatever it started is as young or younger.
    started: u64,
    tail: Arc<Mutex<Tail>>,
    /// `Some` once the child was reaped.
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// Bytes of a worker's stderr read at a time: its lines are short (a
/// longer one is still read whole), and the buffer lives as long as the
/// worker, so it stays small.
const STDERR_BUFFER: usize = 256;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The local-process [`WorkerOrchestrator`].
#[derive(Debug)]
pub struct LocalOrchestrator {
    config: LocalConfig,
    children: Mutex<HashMap<WorkerId, LocalChild>>,
    sweeper: Arc<sweep::Sweeper>,
}

impl LocalOrchestrator {
    /// A backend with no children yet.
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            children: Mutex::new(HashMap::new()),
            sweeper: Arc::default(),
        }
    }

    /// The operating-system process id of a worker, while it is tracked.
    pub fn pid(&self, id: &WorkerId) -> Option<u32> {
        lock(&self.children).get(id).map(|c| c.pid)
    }

    /// Waits until the worker has exited (or is unknown) and returns its
    /// state. For tests and for callers that want to react to an exit
    /// without polling.
    pub async fn wait_exit(&self, id: &WorkerId) -> BackendState {
        let exit = lock(&self.children).get(id).map(|c| c.exit.clone());
        if let Some(mut exit) = exit {
            let _ = exit.wait_for(Option::is_some).await.is_ok();
        }
        self.state_of(id)
    }

    /// Deletes every worker this backend started (as
    /// [`WorkerOrchestrator::delete_worker`] does, one after the other).
    /// For an orderly server stop.
    pub async fn delete_all(&self) {
        let ids: Vec<WorkerId> = lock(&self.children).keys().cloned().collect();
        for id in ids {
            let _ = self.delete_worker(&id).await;
        }
    }

    fn state_of(&self, id: &WorkerId) -> BackendState {
        let children = lock(&self.children);
        let Some(child) = children.get(id) else {
            return BackendState::NotFound;
        };
        let status = *child.exit.borrow();
        match status {
            None => BackendState::Running,
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                let reason = match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit status {code}"),
                    (None, Some(signal)) => format!("signal {signal}"),
                    (None, None) => "an unknown status".to_owned(),
                };
                BackendState::Exited {
                    code: status.code(),
                    reason,
                    last_lines: lock(&child.tail).lines.iter().cloned().collect(),
                }
            }
        }
    }
}

/// Dropping the backend kills (SIGKILL) every worker it still tracks, with
/// everything they started, so that no process outlives an embedded server.
impl Drop for LocalOrchestrator {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *lock(&self.children));
        for (id, child) in children {
            if child.exit.borrow().is_none() {
                signal_group(child.pid, Signal::SIGKILL);
            }
            sweep::kill_marked_processes(id.as_str(), child.started);
        }
    }
}

/// The server's own variables that a worker (and so every step) must not
/// inherit: its `HODEI_*` settings, which may hold secrets.
fn server_only_variables(
    keys: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    keys.filter(|k| k.to_str().is_none_or(|k| k.starts_with("HODEI_")))
        .collect()
}

/// Sends `signal` to a process group; a missing group is fine.
fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pgid)
        && raw > 1
    {
        let _ = killpg(Pid::from_raw(raw), signal);
    }
}

#[async_trait]
impl WorkerOrchestrator for LocalOrchestrator {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn create_worker(&self, spec: WorkerSpec) -> Result<WorkerHandle, OrchestratorError> {
        if lock(&self.children).contains_key(&spec.worker_id) {
            return Err(OrchestratorError::AlreadyExists(spec.worker_id));
        }
        let provisioning = |reason: String| OrchestratorError::Provisioning {
            worker_id: spec.worker_id.clone(),
            reason,
        };
        let mut command = tokio::process::Command::new(&self.config.worker_binary);
        for key in server_only_variables(std::env::vars_os().map(|(k, _)| k)) {
            command.env_remove(key);
        }
        command
            .args(&self.config.worker_args)
            .envs(spec.worker_environment())
            .env("HODEI_WORKSPACE_ROOT", &self.config.workspace_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(socket) = &self.config.server_socket {
            command.env("HODEI_SERVER_SOCKET", socket);
        }
        if let Some(grace) = self.config.server_lost_grace {
            command.env(
                "HODEI_SERVER_LOST_GRACE",
                format!("{}ms", grace.as_millis()),
            );
        }
        let mut child = command.spawn().map_err(|e| {
            provisioning(format!(
                "starting worker binary {}: {e}",
                self.config.worker_binary.display()
            ))
        })?;
        let pid = child.id().unwrap_or(0);
        let started = sweep::start_time(pid).unwrap_or(0);
        let tail = Arc::new(Mutex::new(Tail {
            lines: VecDeque::new(),
            capacity: self.config.stderr_lines,
        }));
        let (exit_tx, exit_rx) = watch::channel(None);
        let stderr = child.stderr.take();
        let tail_writer = tail.clone();
        let worker_id = spec.worker_id.to_string();
        // One task per worker reads its stderr and waits for its exit.
        tokio::spawn(async move {
            let reader = async {
                if let Some(stderr) = stderr {
                    let mut lines = BufReader::with_capacity(STDERR_BUFFER, stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(worker_id = %worker_id, "worker: {line}");
                        lock(&tail_writer).push(&line);
                    }
                }
            };
            tokio::pin!(reader);
            let mut read_all = false;
            let status = tokio::select! {
                status = child.wait() => status,
                () = &mut reader => {
                    read_all = true;
                    child.wait().await
                }
            };
            // Give the reader a moment for the last lines; a stray process
            // holding stderr open must not delay the exit.
            if !read_all {
                let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
            }
            match status {
                Ok(status) => {
                    let _ = exit_tx.send(Some(status));
                }
                Err(e) => {
                    tracing::warn!(worker_id = %worker_id, error = %e, "waiting for worker failed");
                    use std::os::unix::process::ExitStatusExt;
                    let _ = exit_tx.send(Some(ExitStatus::from_raw(-1)));
                }
            }
        });
        tracing::info!(worker_id = %spec.worker_id, pid, "local worker started");
        lock(&self.children).insert(
            spec.worker_id.clone(),
            LocalChild {
                job_id: spec.job_id.clone(),
                template_id: spec.template.id().clone(),
                server_id: spec.server_id.clone(),
                pid,
                started,
                tail,
                exit: exit_rx,
            },
        );
        Ok(WorkerHandle {
            worker_id: spec.worker_id,
            backend_id: pid.to_string(),
        })
    }

    async fn delete_worker(&self, id: &WorkerId) -> Result<(), OrchestratorError> {
        let found = lock(&self.children)
            .get(id)
            .map(|c| (c.pid, c.started, c.exit.clone()));
        let mut since = 0;
        let mut clean = false;
        if let Some((pid, started, mut exit)) = found {
            since = started;
            let running = exit.borrow().is_none();
            if running {
                signal_group(pid, Signal::SIGTERM);
                let graceful = tokio::time::timeout(self.config.stop_grace, async {
                    exit.wait_for(Option::is_some).await.is_ok()
                })
                .await
                .is_ok();
                if !graceful {
                    signal_group(pid, Signal::SIGKILL);
                    let _ = exit.wait_for(Option::is_some).await.is_ok();
                }
            }
            // The worker is reaped; whatever still runs in its group goes.
            signal_group(pid, Signal::SIGKILL);
            // A worker adopts what its steps leave behind and exits with 0
            // only once it has ended all of it (`hodei_worker::run_process`):
            // then there is nothing to look for.
            clean = exit
                .borrow()
                .as_ref()
                .is_some_and(|status| status.code() == Some(0));
        }
        // A worker killed or failed may have left processes; one this
        // backend does not track (left by an earlier server) has no known
        // start time: every process is looked at.
        if !clean {
            let swept = self.sweeper.sweep(id.as_str(), since).await;
            if swept > 0 {
                tracing::info!(worker_id = %id, processes = swept, "killed processes left by the worker");
            }
        }
        lock(&self.children).remove(id);
        Ok(())
    }

    async fn list_workers(&self, server_id: &str) -> Result<Vec<BackendWorker>, OrchestratorError> {
        let ids: Vec<(WorkerId, JobId, TemplateId, u32)> = lock(&self.children)
            .iter()
            .filter(|(_, c)| c.server_id == server_id)
            .map(|(id, c)| (id.clone(), c.job_id.clone(), c.template_id.clone(), c.pid))
            .collect();
        let mut workers: Vec<BackendWorker> = ids
            .into_iter()
            .map(|(worker_id, job_id, template_id, pid)| BackendWorker {
                state: self.state_of(&worker_id),
                worker_id,
                job_id: Some(job_id),
                template_id: Some(template_id),
                backend_id: pid.to_string(),
            })
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(workers)
    }

    async fn worker_state(&self, id: &WorkerId) -> Result<BackendState, OrchestratorError> {
        Ok(self.state_of(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        fn check(capacity: usize, input: &[&str], expected: &[&str]) {
            let mut tail = Tail {
                lines: VecDeque::new(),
                capacity,
            };
            for line in input {
                tail.push(line);
            }
            assert_eq!(
                tail.lines.iter().map(String::as_str).collect::<Vec<_>>(),
                expected
            );
        }
        check(2, &["a", "b", "c"], &["b", "c"]);
        check(3, &["a"], &["a"]);
        check(0, &["a"], &[]);
        let long = "é".repeat(MAX_LINE);
        let mut tail = Tail {
            lines: VecDeque::new(),
            capacity: 1,
        };
        tail.push(&long);
        assert!(tail.lines[0].len() <= MAX_LINE);
    }

    #[test]
    fn a_worker_binary_beside_is_used_only_when_not_older() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("hodei");
        let worker = dir.path().join(WORKER_BINARY);
        let touch = |path: &std::path::Path, at: SystemTime| {
            let file = std::fs::File::create(path).unwrap();
            file.set_modified(at).unwrap();
        };
        let now = SystemTime::now();
        touch(&exe, now);
        assert_eq!(LocalConfig::worker_binary_beside(&exe), None);
        assert_eq!(LocalConfig::current_worker_binary_beside(&exe), None);
        touch(&worker, now - Duration::from_secs(60));
        assert_eq!(
            LocalConfig::worker_binary_beside(&exe).as_deref(),
            Some(worker.as_path())
        );
        assert_eq!(LocalConfig::current_worker_binary_beside(&exe), None);
        touch(&worker, now + Duration::from_secs(1));
        assert_eq!(
            LocalConfig::current_worker_binary_beside(&exe).as_deref(),
            Some(worker.as_path())
        );
    }

    #[test]
    fn server_settings_are_not_inherited() {
        let keys = [
            "PATH",
            "HOME",
            "HODEI_GRPC_ADDR",
            "HODEI_WORKER_TOKEN",
            "SERVER_HOST",
            "HODEIX",
        ];
        let removed = server_only_variables(keys.iter().map(std::ffi::OsString::from));
        assert_eq!(removed, ["HODEI_GRPC_ADDR", "HODEI_WORKER_TOKEN"]);
    }
}
