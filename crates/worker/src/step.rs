//! Running one leaf step: `sh -e -c SCRIPT` in its own process group with
//! its output streamed as it is produced, or a `writeFile`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hodei_proto::v1::{
    LogChunk, LogStream, StepFinished, StepOutcome, StepStarted, WorkerMessage, worker_message,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use crate::now_ms;
use crate::session::Outgoing;
use crate::workspace;

/// Largest `LogChunk.data` the worker sends.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Environment variables of the worker that steps never see.
const HIDDEN_VARS: &[&str] = &["HODEI_WORKER_TOKEN"];

/// Where `sh` is for a step with environment `env`: the first `sh` on the
/// `PATH` the step gets (its own, else the worker's), as `execvp` would
/// find it, or plain `sh` when none is found (the spawn then fails with the
/// system's reason).
///
/// An absolute path spares the search's failed `execve`s in the child, and
/// lets Rust's standard library use `posix_spawn` when the step sets its
/// own `PATH` (which the library otherwise handles with a `fork`).
fn shell(env: &HashMap<String, String>) -> PathBuf {
    static INHERITED: OnceLock<PathBuf> = OnceLock::new();
    match env.get("PATH") {
        Some(path) => find_in_path("sh", OsStr::new(path)),
        None => INHERITED
            .get_or_init(|| find_in_path("sh", &std::env::var_os("PATH").unwrap_or_default()))
            .clone(),
    }
}

/// The first executable regular file named `name` in the directories of
/// `path` (absolute entries only), else `name` itself.
fn find_in_path(name: &str, path: &OsStr) -> PathBuf {
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// What a step does.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// `sh -e -c script`.
    Sh(String),
    /// Write `text` to `path` (already checked to be relative).
    WriteFile { path: PathBuf, text: String },
}

/// One step to run, fully resolved.
#[derive(Debug)]
pub(crate) struct StepSpec {
    pub step_id: String,
    pub action: Action,
    /// Absolute directory to run in (inside the workspace).
    pub dir: PathBuf,
    /// The full environment to lay over the worker's own.
    pub env: HashMap<String, String>,
    /// Backstop timeout.
    pub timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
}

/// Why a running step is being stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Still running.
    No,
    /// Cancelled by the server, with its reason.
    Cancel(String),
}

fn message(kind: worker_message::Kind) -> Outgoing {
    Outgoing::Message(WorkerMessage { kind: Some(kind) })
}

fn finished(
    step_id: &str,
    exit_code: i32,
    outcome: StepOutcome,
    text: String,
    started: Instant,
) -> Outgoing {
    message(worker_message::Kind::StepFinished(StepFinished {
        step_id: step_id.to_owned(),
        exit_code,
        outcome: outcome as i32,
        message: text,
        duration_ms: started.elapsed().as_millis() as u64,
    }))
}

/// Runs the step to its end, sending `StepStarted`, `LogChunk`s and one
/// `StepFinished` on `out`. `stop` turns to [`Stop::Cancel`] to kill it.
pub(crate) async fn run_step(
    spec: StepSpec,
    out: mpsc::Sender<Outgoing>,
    stop: watch::Receiver<Stop>,
) {
    let started = Instant::now();
    let result = match &spec.action {
        Action::Sh(script) => run_sh(&spec, script, &out, stop, started).await,
        Action::WriteFile { path, text } => {
            let _ = out
                .send(message(worker_message::Kind::StepStarted(StepStarted {
                    step_id: spec.step_id.clone(),
                    started_at_ms: now_ms(),
                })))
                .await;
            let target = spec.dir.join(path);
            let written = async {
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::write(&target, text.as_bytes()).await
            }
            .await;
            match written {
                Ok(()) => finished(
                    &spec.step_id,
                    0,
                    StepOutcome::Success,
                    String::new(),
                    started,
                ),
                Err(e) => finished(
                    &spec.step_id,
                    -1,
                    StepOutcome::Error,
                    format!("writeFile {}: {e}", target.display()),
                    started,
                ),
            }
        }
    };
    let _ = out.send(result).await;
}

/// The exit code the protocol reports: the status, or 128 + signal.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

/// Sends `signal` to process group `pgid`; a group that is already gone is
/// fine.
pub fn signal_group(pgid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pgid)
        && raw > 0
    {
        let _ = killpg(Pid::from_raw(raw), signal);
    }
}

/// Kills a step's whole process group when dropped. A step whose worker
/// stops waiting for it (the worker exiting on any path, its task dropped)
/// must leave nothing running, and the child's `kill_on_drop` alone would
/// kill the shell but not what the shell started.
struct GroupKiller(Option<u32>);

impl GroupKiller {
    /// The group has been dealt with: dropping kills nothing.
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::SIGKILL);
        }
    }
}

async fn run_sh(
    spec: &StepSpec,
    script: &str,
    out: &mpsc::Sender<Outgoing>,
    mut stop: watch::Receiver<Stop>,
    started: Instant,
) -> Outgoing {
    let mut command = Command::new(shell(&spec.env));
    command
        .arg0("sh")
        .arg("-e")
        .arg("-c")
        .arg(script)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for var in HIDDEN_VARS {
        if !spec.env.contains_key(*var) {
            command.env_remove(var);
        }
    }
    // Usually the workspace itself, which exists: a `stat` on this thread
    // rather than a blocking-pool thread started for it.
    if let Err(e) = std::fs::create_dir_all(&spec.dir) {
        return finished(
            &spec.step_id,
            -1,
            StepOutcome::Error,
            format!("creating directory {}: {e}", spec.dir.display()),
            started,
        );
    }
    if !workspace::starts_here(&spec.dir) {
        command.current_dir(&spec.dir);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return finished(
                &spec.step_id,
                -1,
                StepOutcome::Error,
                format!("starting sh in {}: {e}", spec.dir.display()),
                started,
            );
        }
    };
    let pgid = child.id().unwrap_or(0);
    let mut group = GroupKiller(Some(pgid));
    let oom_kills_before = oom_kills();
    let _ = out
        .send(message(worker_message::Kind::StepStarted(StepStarted {
            step_id: spec.step_id.clone(),
            started_at_ms: now_ms(),
        })))
        .await;

    // Both pipes feed one channel so that chunks get one sequence in the
    // order they were read.
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<(LogStream, Vec<u8>)>(16);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, LogStream::Stdout, chunk_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, LogStream::Stderr, chunk_tx.clone()));
    }
    drop(chunk_tx);

    let mut sequence = 0u64;
    let send_chunk = |stream: LogStream, data: Vec<u8>, sequence: u64| {
        message(worker_message::Kind::LogChunk(LogChunk {
            step_id: spec.step_id.clone(),
            stream: stream as i32,
            data,
            sequence,
        }))
    };

    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until_deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until_deadline);

    let mut killed: Option<(StepOutcome, String)> = None;
    let mut pipes_open = true;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            chunk = chunk_rx.recv(), if pipes_open => match chunk {
                Some((stream, data)) => {
                    let _ = out.send(send_chunk(stream, data, sequence)).await;
                    sequence += 1;
                }
                None => pipes_open = false,
            },
            status = child.wait() => break status,
            changed = stop.changed(), if killed.is_none() => {
                let reason = match (changed, stop.borrow().clone()) {
                    (Ok(()), Stop::Cancel(reason)) => Some(reason),
                    (Err(_), _) => Some("worker stopping".to_owned()),
                    (Ok(()), Stop::No) => None,
                };
                if let Some(reason) = reason {
                    signal_group(pgid, Signal::SIGTERM);
                    kill_at = Some(tokio::time::Instant::now() + spec.kill_grace);
                    killed = Some((StepOutcome::Cancelled, format!("cancelled: {reason}")));
                }
            },
            () = &mut sleep_until_deadline, if killed.is_none() => {
                signal_group(pgid, Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + spec.kill_grace);
                let limit = spec.timeout.unwrap_or_default();
                killed = Some((StepOutcome::TimedOut, format!("timed out after {} ms", limit.as_millis())));
            },
            () = async {
                match kill_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                signal_group(pgid, Signal::SIGKILL);
                kill_at = None;
            },
        }
    };
    // The shell is gone; whatever it left running in its group goes too, so
    // that nothing outlives the step and the pipes reach end of file.
    signal_group(pgid, Signal::SIGKILL);
    group.disarm();
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while pipes_open {
        match tokio::time::timeout_at(drain_deadline, chunk_rx.recv()).await {
            Ok(Some((stream, data))) => {
                let _ = out.send(send_chunk(stream, data, sequence)).await;
                sequence += 1;
            }
            Ok(None) | Err(_) => pipes_open = false,
        }
    }

    match status {
        Err(e) => finished(
            &spec.step_id,
            -1,
            StepOutcome::Error,
            format!("waiting for sh: {e}"),
            started,
        ),
        Ok(status) => {
            let code = exit_code(status);
            match killed {
                Some((outcome, text)) => finished(&spec.step_id, code, outcome, text, started),
                None if status.success() => finished(
                    &spec.step_id,
                    0,
                    StepOutcome::Success,
                    String::new(),
                    started,
                ),
                None => {
                    let mut text = match status.signal() {
                        Some(signal) => format!("script killed by signal {signal}"),
                        None => format!("script returned exit code {code}"),
                    };
                    let sigkilled = status.signal() == Some(9) || code == 128 + 9;
                    if sigkilled && oom_kills() > oom_kills_before {
                        let note = "hodei-worker: the step was OOM-killed: the kernel's \
                                    out-of-memory killer ended it at its memory limit\n";
                        let _ = out
                            .send(send_chunk(
                                LogStream::Stderr,
                                note.as_bytes().to_vec(),
                                sequence,
                            ))
                            .await;
                        text.push_str(" (OOM-killed at the memory limit)");
                    }
                    finished(&spec.step_id, code, StepOutcome::Failed, text, started)
                }
            }
        }
    }
}

/// How many processes the kernel's out-of-memory killer has ended in this
/// worker's cgroup (a container's own cgroup: cgroup v2 `memory.events` or
/// v1 `memory.oom_control`); `None` when neither can be read.
fn oom_kills() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.events",
        "/sys/fs/cgroup/memory/memory.oom_control",
    ]
    .iter()
    .find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    })
}

async fn pump(
    mut reader: impl AsyncReadExt + Unpin,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, Vec<u8>)>,
) {
    let mut buf = vec![0u8; MAX_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        fn check(raw: i32, expected: i32) {
            assert_eq!(exit_code(ExitStatus::from_raw(raw)), expected, "{raw:#x}");
        }
        check(0, 0);
        check(3 << 8, 3);
        check(255 << 8, 255);
        check(9, 137);
        check(15, 143);
    }

    #[test]
    fn sh_is_the_first_executable_file_of_that_name_on_the_path() {
        let root = tempfile::tempdir().expect("a temporary directory");
        let dir = |name: &str| {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).expect("a directory");
            dir
        };
        let (plain, nested, found, later) =
            (dir("plain"), dir("nested"), dir("found"), dir("later"));
        let write = |path: PathBuf, mode: u32| {
            std::fs::write(&path, "#!/bin/sh\n").expect("a file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("permissions");
        };
        write(plain.join("sh"), 0o644);
        std::fs::create_dir(nested.join("sh")).expect("a directory named sh");
        write(found.join("sh"), 0o755);
        write(later.join("sh"), 0o755);
        let path =
            std::env::join_paths([PathBuf::from("found"), plain, nested, found.clone(), later])
                .expect("a PATH");
        assert_eq!(find_in_path("sh", &path), found.join("sh"));
        assert_eq!(
            find_in_path("sh", OsStr::new("/nonexistent:relative")),
            PathBuf::from("sh")
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// Runs `spec` to its end and returns its output and exit code.
    fn run_to_end(spec: StepSpec) -> (String, i32) {
        let runtime = runtime();
        let (out, mut sent) = mpsc::channel(64);
        let (_stop_tx, stop) = watch::channel(Stop::No);
        runtime.block_on(async move {
            tokio::spawn(run_step(spec, out, stop));
            let mut text = String::new();
            while let Some(item) = sent.recv().await {
                let Outgoing::Message(message) = item else {
                    continue;
                };
                match message.kind {
                    Some(worker_message::Kind::LogChunk(chunk)) => {
                        text.push_str(&String::from_utf8_lossy(&chunk.data));
                    }
                    Some(worker_message::Kind::StepFinished(done)) => {
                        return (text, done.exit_code);
                    }
                    _ => {}
                }
            }
            panic!("the step ended without StepFinished; output: {text}");
        })
    }

    fn sh_step(dir: &std::path::Path, script: &str, env: HashMap<String, String>) -> StepSpec {
        StepSpec {
            step_id: "s-1".into(),
            action: Action::Sh(script.into()),
            dir: dir.to_owned(),
            env,
            timeout: None,
            kill_grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_step_that_sets_its_path_gets_the_sh_found_on_it() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("a directory");
        let wrapper = bin.join("sh");
        let system_sh = find_in_path("sh", &std::env::var_os("PATH").expect("a PATH"));
        assert!(system_sh.is_absolute(), "no sh on this PATH");
        std::fs::write(
            &wrapper,
            format!(
                "#!{sh}\necho wrapped\nexec {sh} \"$@\"\n",
                sh = system_sh.display()
            ),
        )
        .expect("the wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .expect("permissions");
        let path = format!("{}:/usr/bin:/bin", bin.display());
        let env = HashMap::from([("PATH".to_owned(), path)]);
        let (text, code) = run_to_end(sh_step(dir.path(), "echo ran", env));
        assert_eq!((text.as_str(), code), ("wrapped\nran\n", 0));
    }

    #[test]
    fn a_step_sees_itself_as_sh() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (text, code) = run_to_end(sh_step(dir.path(), "echo \"$0\"", HashMap::new()));
        assert_eq!((text.as_str(), code), ("sh\n", 0));
    }

    /// Whether `pid` is a process that has not ended (a zombie has ended).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let state = stat
                    .rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .next()?
                    .to_owned();
                Some(state != "Z" && state != "X")
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_step_dropped_mid_run_leaves_no_process_of_its_group() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pid_file = dir.path().join("pid");
        let runtime = runtime();
        let (out, mut sent) = mpsc::channel(64);
        let (_stop_tx, stop) = watch::channel(Stop::No);
        let script = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let spec = sh_step(dir.path(), &script, HashMap::new());
        runtime.spawn(run_step(spec, out, stop));
        // Run until the background `sleep` has been started, then stop
        // waiting for the step the way an exiting worker does: by dropping
        // its runtime with the step still running.
        let sleeper: u32 = runtime.block_on(async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&pid_file)
                    && let Ok(pid) = text.trim().parse()
                {
                    break pid;
                }
                tokio::select! {
                    _ = sent.recv() => {}
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        assert!(alive(sleeper), "the step's background process runs");
        drop(runtime);
        // SIGKILL is delivered before kill(2) returns for a process that is
        // not blocking it; the process may still need a moment to be reaped
        // or become a zombie.
        let mut gone = false;
        for _ in 0..200 {
            if !alive(sleeper) {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone, "process {sleeper} of the dropped step still runs");
    }
}
