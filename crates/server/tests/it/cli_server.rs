//! `hodei server` as a real process on port 0, driven by `hodei run
//! --server`, `hodei jobs` and `hodei workers`; stopped by a signal, after
//! which no worker process remains; killed mid-job and started again on
//! the same data directory.

use std::process::{Child, Command};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use hodei_application::orchestrator::WorkerHandle;
use hodei_domain::WorkerId;

use super::cli_run::{
    assert_no_process_left, drain, hodei, signal, spawn_lines, tag, tagged_processes, wait_for_line,
};

/// A `hodei server` started on free ports with its own data directory.
struct ServerProcess {
    child: Child,
    url: String,
    tag: String,
    _lines: mpsc::Receiver<(bool, String)>,
    _data: Arc<tempfile::TempDir>,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        ServerProcess::start_in(Arc::new(tempfile::tempdir().unwrap()), &[])
    }

    /// A server on `data` (shared with a later server), with extra
    /// environment.
    fn start_in(data: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> ServerProcess {
        let tag = tag();
        let mut command = hodei(&tag);
        command
            .arg("server")
            .env("HODEI_GRPC_ADDR", "127.0.0.1:0")
            .env("HODEI_HTTP_ADDR", "127.0.0.1:0")
            .env("HODEI_DATA_DIR", data.path())
            .envs(env.iter().copied());
        let (child, lines) = spawn_lines(command);
        let mut seen = Vec::new();
        wait_for_line(&lines, "listening", &mut seen);
        let line = seen.last().cloned().unwrap_or_default();
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("grpc="))
            .unwrap_or_else(|| panic!("no grpc= in {line:?}"))
            .to_owned();
        ServerProcess {
            child,
            url: format!("http://{addr}"),
            tag,
            _lines: lines,
            _data: data,
        }
    }

    /// Runs `hodei ARGS --server URL` and returns (exit code, stdout, stderr).
    fn client(&self, args: &[&str]) -> (i32, String, String) {
        let out = hodei(&self.tag)
            .args(args)
            .args(["--server", &self.url])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Stops the server with `sig` and checks it exits 0 leaving nothing.
    fn stop(mut self, sig: &str) {
        signal(self.child.id(), sig);
        let status = self.child.wait().unwrap();
        assert_eq!(status.code(), Some(0));
        assert_no_process_left(&self.tag);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The id in the first column of the row that contains `text`.
fn id_of_row(table: &str, text: &str) -> String {
    table
        .lines()
        .skip(1)
        .find(|l| l.contains(text))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no row with {text:?} in\n{table}"))
        .to_owned()
}

#[test]
fn run_jobs_and_workers_against_a_server() {
    let server = ServerProcess::start();

    let (code, stdout, stderr) = server.client(&["run", "examples/hello/Jenkinsfile"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("Hello from Hodei"), "{stdout}");
    let (code, _, _) = server.client(&["run", "examples/post-failure/Jenkinsfile"]);
    assert_eq!(code, 1);

    let (code, list, stderr) = server.client(&["jobs", "list"]);
    assert_eq!(code, 0, "{stderr}");
    let header = list.lines().next().unwrap_or_default();
    for column in [
        "ID", "NAME", "BUILD", "STATUS", "CREATED", "DURATION", "MESSAGE",
    ] {
        assert!(header.contains(column), "{list}");
    }
    let hello = id_of_row(&list, "hello");
    let failed = id_of_row(&list, "post-failure");
    assert!(
        list.contains("success") && list.contains("failure"),
        "{list}"
    );
    // Newest first.
    assert!(list.find(&failed) < list.find(&hello), "{list}");

    let (code, list, _) = server.client(&["jobs", "list", "--status", "failure"]);
    assert_eq!(code, 0);
    assert!(list.contains(&failed) && !list.contains(&hello), "{list}");

    let (code, show, _) = server.client(&["jobs", "show", &failed]);
    assert_eq!(code, 0);
    assert!(show.contains("status:    failure"), "{show}");
    assert!(
        show.contains("message:   script returned exit code 1"),
        "{show}"
    );
    assert!(
        show.contains("Test") && show.contains("Never runs"),
        "{show}"
    );

    let (code, logs, stderr) = server.client(&["jobs", "logs", &hello]);
    assert_eq!(code, 0);
    assert!(
        logs.contains("── stage Hello ──\nHello from Hodei\n"),
        "{logs}"
    );
    assert!(
        stderr.contains(&format!("job {hello}: success")),
        "{stderr}"
    );

    let (code, out, _) = server.client(&["jobs", "cancel", &hello]);
    assert_eq!(code, 0);
    assert!(out.contains("already ended: success"), "{out}");

    let (code, out, stderr) = server.client(&["jobs", "show", "no-such-job"]);
    assert_eq!(code, 2, "{out}");
    assert!(stderr.starts_with("error: job no-such-job: "), "{stderr}");

    let (code, out, _) = server.client(&["workers", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out, "no workers\n");

    server.stop("TERM");
}

#[test]
fn cancel_from_another_client_stops_a_running_job() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Jenkinsfile");
    std::fs::write(
        &file,
        "pipeline { agent any\n stages { stage('Wait') { steps { sh 'echo waiting; sleep 60' } } } }\n",
    )
    .unwrap();
    let mut command = hodei(&server.tag);
    command.args(["run", &file.display().to_string(), "--server", &server.url]);
    let (mut run, lines) = spawn_lines(command);
    let mut seen = Vec::new();
    wait_for_line(&lines, "waiting", &mut seen);

    // The job's worker is listed while it runs.
    let (code, workers, _) = server.client(&["workers", "list"]);
    assert_eq!(code, 0);
    assert!(
        workers.contains("ephemeral") && workers.contains("local"),
        "{workers}"
    );
    let (_, list, _) = server.client(&["jobs", "list", "--status", "running"]);
    let id = id_of_row(&list, "running");

    // Without --follow, the log so far, while the job goes on.
    let (code, logs, _) = server.client(&["jobs", "logs", &id]);
    assert_eq!(code, 0);
    assert_eq!(logs, "── stage Wait ──\nwaiting\n");
    // With --follow, until the job ends.
    let mut command = hodei(&server.tag);
    command.args(["jobs", "logs", &id, "--follow", "--server", &server.url]);
    let (mut follow, follow_lines) = spawn_lines(command);
    let mut followed = Vec::new();
    wait_for_line(&follow_lines, "waiting", &mut followed);

    let (code, out, _) = server.client(&["jobs", "cancel", &id]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("job {id}: aborted\n"));
    assert_eq!(follow.wait().unwrap().code(), Some(0));
    followed.extend(drain(&follow_lines));
    assert!(
        followed
            .iter()
            .any(|l| l.starts_with(&format!("job {id}: aborted"))),
        "{followed:#?}"
    );
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let rest = drain(&lines);
    assert!(
        rest.iter().any(|l| l.starts_with("Finished: ABORTED")),
        "{rest:#?}"
    );

    // Only the server itself is left: the worker and its step are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tagged_processes(&server.tag).len() > 1 {
        assert!(Instant::now() < deadline, "worker left behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, workers, _) = server.client(&["workers", "list"]);
    assert_eq!(workers, "no workers\n");
    server.stop("INT");
}

#[test]
fn a_bad_setting_stops_the_server_naming_the_key() {
    let out = hodei(&tag())
        .arg("server")
        .env("HODEI_GRPC_ADDR", "nowhere")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: HODEI_GRPC_ADDR: invalid value \"nowhere\""),
        "{stderr}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hodei.toml");
    std::fs::write(&config, "grpc_addr = \"127.0.0.1:0\"\nbakend = \"local\"\n").unwrap();
    let out = hodei(&tag())
        .args(["server", "--config", &config.display().to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2: unknown field `bakend`"),
        "{stderr}"
    );
}

#[test]
fn jobs_and_workers_name_an_unreachable_server() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    for args in [&["jobs", "list"][..], &["workers", "list"][..]] {
        let out: std::process::Output = Command::new(env!("CARGO_BIN_EXE_hodei"))
            .args(args)
            .env("HODEI_SERVER", format!("127.0.0.1:{port}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with(&format!(
                "error: cannot reach the Hodei server at http://127.0.0.1:{port}: "
            )),
            "{stderr}"
        );
    }
}

#[test]
fn hodei_worker_takes_the_worker_flags_and_is_refused_without_a_token() {
    let out = hodei(&tag())
        .args(["worker", "--server-port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--server-port/SERVER_PORT: expected a port number"),
        "{stderr}"
    );

    let server = ServerProcess::start();
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let out = hodei(&server.tag)
        .args(["worker", "--server-port", &port, "--token", "not-a-token"])
        .args(["--worker-id", "intruder", "--server-lost-grace", "5s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused by the server"), "{stderr}");
    server.stop("TERM");
}

/// The parent pid of `pid`, from `/proc/<pid>/stat` (field 4).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The `WORKER_ID` in the environment of `pid`.
fn worker_id_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|var| {
        var.strip_prefix(b"WORKER_ID=")
            .map(|id| String::from_utf8_lossy(id).into_owned())
    })
}

/// The documented restart behaviour: a job running when the server is
/// killed keeps its log up to the kill and ends failed with "server
/// restarted"; whatever of its worker outlived the server (the worker, or
/// the step it started in its own process group) is killed when the server
/// starts again, found by the worker id the store recorded.
#[test]
fn a_server_killed_with_sigkill_mid_job_fails_the_job_and_leaves_no_worker() {
    let data = Arc::new(tempfile::tempdir().unwrap());
    // Workers would give up on a lost server only after 10 minutes: what
    // removes this one is the restarted server.
    let env = [("HODEI_WORKER_LOST_AFTER", "600s")];
    let first = ServerProcess::start_in(data.clone(), &env);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("Jenkinsfile");
    std::fs::write(
        &file,
        "pipeline { agent any\n stages { stage('Wait') { steps { sh 'echo before the crash; sleep 600; echo never printed' } } } }\n",
    )
    .unwrap();
    let mut command = hodei(&first.tag);
    command.args(["run", &file.display().to_string(), "--server", &first.url]);
    let (mut run, lines) = spawn_lines(command);
    let mut seen = Vec::new();
    wait_for_line(&lines, "before the crash", &mut seen);
    let (_, list, _) = first.client(&["jobs", "list", "--status", "running"]);
    let job = id_of_row(&list, "running");

    // The worker: the server's child that carries a WORKER_ID.
    let server_pid = first.child.id();
    let worker_pid = tagged_processes(&first.tag)
        .into_iter()
        .find(|&pid| parent_of(pid) == Some(server_pid) && worker_id_of(pid).is_some())
        .expect("the job's worker process");
    let worker = WorkerHandle {
        worker_id: WorkerId::new(worker_id_of(worker_pid).unwrap()).unwrap(),
        backend_id: worker_pid.to_string(),
    };

    let mut first = first;
    signal(server_pid, "KILL");
    let _ = first.child.wait();
    let _ = run.kill();
    let _ = run.wait();

    let second = ServerProcess::start_in(data.clone(), &env);
    // Recovery is done before the server listens: nothing of the job is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = super::support::live_worker_processes(std::slice::from_ref(&worker));
        if left.is_empty() && tagged_processes(&first.tag).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (code, show, stderr) = second.client(&["jobs", "show", &job]);
    assert_eq!(code, 0, "{stderr}");
    assert!(show.contains("status:    failure"), "{show}");
    assert!(show.contains("message:   server restarted"), "{show}");
    // Its stages as far as they ran are kept too.
    assert!(show.contains("Wait"), "{show}");
    let (code, logs, _) = second.client(&["jobs", "logs", &job]);
    assert_eq!(code, 0);
    assert!(logs.ends_with("before the crash\n"), "{logs}");
    assert!(!logs.contains("never printed"), "{logs}");
    let (_, workers, _) = second.client(&["workers", "list"]);
    assert_eq!(workers, "no workers\n");
    second.stop("TERM");
}
