//! `hodei run` as a real process: the embedded server, its `hodei worker`
//! processes, exit codes, the submitted source, and Ctrl-C. After every run
//! no process carrying the run's tag remains.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A unique value put in the environment of every process a test starts;
/// the server's workers and their steps inherit it.
pub fn tag() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `hodei` command in the repository root, without the caller's
/// `HODEI_*` settings, tagged with `tag`.
pub fn hodei(tag: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hodei"));
    command.current_dir(root()).env("CLI_TEST_TAG", tag);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HODEI_") {
            command.env_remove(key);
        }
    }
    command
}

/// Process ids whose environment has `CLI_TEST_TAG=tag`.
pub fn tagged_processes(tag: &str) -> Vec<u32> {
    let needle = format!("CLI_TEST_TAG={tag}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// Asserts that no process of the run tagged `tag` is left (workers are
/// deleted before `hodei` exits; a short wait covers the kernel reaping).
pub fn assert_no_process_left(tag: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = tagged_processes(tag);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `hodei` with `args` (and `env`), checks that nothing is left
/// behind, and returns (exit code, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let tag = tag();
    let mut command = hodei(&tag);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the hodei binary runs");
    assert_no_process_left(&tag);
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Checks the exit code and that stdout and stderr contain the given texts.
fn check(
    args: &[&str],
    env: &[(&str, &str)],
    code: i32,
    stdout_has: &[&str],
    stderr_has: &[&str],
) -> (String, String) {
    let (got, stdout, stderr) = run(args, env);
    let context = format!(
        "hodei {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        args.join(" ")
    );
    assert_eq!(got, code, "{context}");
    for text in stdout_has {
        assert!(stdout.contains(text), "stdout lacks {text:?}\n{context}");
    }
    for text in stderr_has {
        assert!(stderr.contains(text), "stderr lacks {text:?}\n{context}");
    }
    (stdout, stderr)
}

/// Writes `files` into a fresh directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn hello_runs_on_an_embedded_server() {
    let (stdout, _) = check(
        &["run", "examples/hello/Jenkinsfile"],
        &[],
        0,
        &[
            "── stage Hello ──\n",
            "Hello from Hodei\n",
            "running on Linux\n",
        ],
        &["Finished: SUCCESS in "],
    );
    // The runner's structural lines are replaced by the headers.
    assert!(!stdout.contains("[Pipeline]"), "{stdout}");
}

#[test]
fn a_failing_pipeline_exits_1_after_its_post_blocks() {
    check(
        &["run", "examples/post-failure/Jenkinsfile"],
        &[],
        1,
        &[
            "tests: 3 passed, 1 failed",
            "stage Test failed, see report.txt",
            "── pipeline ──\n",
            "the pipeline failed",
            "always runs",
        ],
        &["Finished: FAILURE in ", "script returned exit code 1"],
    );
}

#[test]
fn parallel_branches_are_prefixed_with_their_stage() {
    let dir = project(&[(
        "Jenkinsfile",
        "pipeline {\n  agent any\n  stages {\n    stage('Test') {\n      parallel {\n        stage('a') { steps { sh 'echo from a' } }\n        stage('b') { agent any\n          steps { sh 'echo from b >&2' } }\n      }\n    }\n  }\n}\n",
    )]);
    check(
        &["run", &path(dir.path(), "Jenkinsfile")],
        &[],
        0,
        &["── stage Test ──\n", "[Test › a] from a\n"],
        &["[Test › b] from b\n", "Finished: SUCCESS"],
    );
}

#[test]
fn a_malformed_pipeline_exits_2_with_the_position() {
    let dir = project(&[(
        "Jenkinsfile",
        "pipeline {\n  agent any\n  stages { stage('x') { steps { sh } } }\n}\n",
    )]);
    let file = path(dir.path(), "Jenkinsfile");
    let (stdout, stderr) = check(&["run", &file], &[], 2, &[], &[&format!("{file}:3:")]);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!stderr.contains("Finished"), "{stderr}");
}

#[test]
fn a_pipeline_no_worker_can_run_exits_2_with_the_reason() {
    let dir = project(&[(
        "Jenkinsfile",
        "pipeline {\n  agent { label 'windows' }\n  stages { stage('A') { steps { sh 'true' } } }\n}\n",
    )]);
    let file = path(dir.path(), "Jenkinsfile");
    check(
        &["run", &file],
        &[],
        2,
        &[],
        &[&format!(
            "{file}:2:3: no worker template matches label 'windows'"
        )],
    );
}

#[test]
fn bad_flags_and_missing_files_exit_2() {
    check(
        &["run", "examples/hello/Jenkinsfile", "-e", "NOEQUALS"],
        &[],
        2,
        &[],
        &["expected KEY=VALUE"],
    );
    check(
        &["run", "no/such/Jenkinsfile"],
        &[],
        2,
        &[],
        &["error: cannot read no/such/Jenkinsfile"],
    );
}

#[test]
fn an_unreachable_server_exits_2_naming_it() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    check(
        &["run", "examples/hello/Jenkinsfile", "--server", &url],
        &[],
        2,
        &[],
        &[&format!("error: cannot reach the Hodei server at {url}: ")],
    );
    // HODEI_SERVER is the default for --server.
    check(
        &["run", "examples/hello/Jenkinsfile"],
        &[("HODEI_SERVER", &url)],
        2,
        &[],
        &[&format!("error: cannot reach the Hodei server at {url}: ")],
    );
}

#[test]
fn steps_see_the_submitted_source_without_ignored_files() {
    let dir = project(&[
        (
            "Jenkinsfile",
            "pipeline {\n  agent any\n  stages {\n    stage('Read') {\n      steps {\n        sh 'cat src/data.txt; test ! -e build.log && test ! -e tmp/x && test ! -e .git && echo ignored files absent'\n        sh 'echo \"$GREETING $VERSION\"'\n      }\n    }\n  }\n}\n",
        ),
        ("src/data.txt", "from the submitted source"),
        (".gitignore", "*.log\n"),
        (".hodeiignore", "tmp/\n"),
        ("build.log", "x"),
        ("tmp/x", "x"),
        (".git/HEAD", "ref: refs/heads/main"),
    ]);
    check(
        &[
            "run",
            &path(dir.path(), "Jenkinsfile"),
            "-e",
            "GREETING=hi",
            "--param",
            "VERSION=1.2",
        ],
        &[],
        0,
        &[
            "from the submitted source",
            "ignored files absent",
            "hi 1.2",
        ],
        &["Finished: SUCCESS"],
    );
}

#[test]
fn a_source_over_the_limit_exits_2_with_the_way_out() {
    let big = "x".repeat(20_000);
    let dir = project(&[
        (
            "Jenkinsfile",
            "pipeline { agent any\n stages { stage('A') { steps { sh 'true' } } } }\n",
        ),
        ("assets/big.bin", &big),
    ]);
    check(
        &["run", &path(dir.path(), "Jenkinsfile")],
        &[("HODEI_MAX_SOURCE_BYTES", "10Ki")],
        2,
        &[],
        &[
            "over the limit of 10.0 KiB (max_source_bytes)",
            "largest: assets/ (21.0 KiB), Jenkinsfile (1.0 KiB)",
            "exclude files with a .hodeiignore file",
        ],
    );
    // Excluding the directory is the way out.
    std::fs::write(dir.path().join(".hodeiignore"), "assets/\n").unwrap();
    check(
        &["run", &path(dir.path(), "Jenkinsfile")],
        &[("HODEI_MAX_SOURCE_BYTES", "10Ki")],
        0,
        &[],
        &["Finished: SUCCESS"],
    );
}

#[test]
fn skip_default_checkout_sends_no_source() {
    let big = "x".repeat(20_000);
    let dir = project(&[
        (
            "Jenkinsfile",
            "pipeline { agent any\n options { skipDefaultCheckout() }\n stages { stage('A') { steps { sh 'test ! -e big.bin && echo empty workspace' } } } }\n",
        ),
        ("big.bin", &big),
    ]);
    check(
        &["run", &path(dir.path(), "Jenkinsfile")],
        &[("HODEI_MAX_SOURCE_BYTES", "10Ki")],
        0,
        &["empty workspace"],
        &["Finished: SUCCESS"],
    );
}

#[test]
fn links_out_of_the_tree_are_not_sent() {
    let outside = project(&[("secret.txt", "top secret")]);
    let dir = project(&[
        (
            "Jenkinsfile",
            "pipeline { agent any\n stages { stage('A') { steps { sh 'test ! -e leak && test -L inside && cat inside' } } } }\n",
        ),
        ("real.txt", "linked inside"),
    ]);
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), dir.path().join("leak")).unwrap();
    std::os::unix::fs::symlink("real.txt", dir.path().join("inside")).unwrap();
    let (stdout, _) = check(
        &["run", &path(dir.path(), "Jenkinsfile")],
        &[],
        0,
        &["linked inside"],
        &["warning: ", "leak: symbolic link to", "is not sent"],
    );
    assert!(!stdout.contains("top secret"));
}

/// Spawns `hodei` with piped output and a thread per stream sending lines.
pub fn spawn_lines(mut command: Command) -> (Child, mpsc::Receiver<(bool, String)>) {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("the hodei binary runs");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((true, line));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send((false, line));
        }
    });
    (child, rx)
}

/// Waits for a line containing `text`; returns every line seen so far.
pub fn wait_for_line(rx: &mpsc::Receiver<(bool, String)>, text: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, line)) => {
                let found = line.contains(text);
                seen.push(line);
                if found {
                    return;
                }
            }
            Err(e) => panic!("no line with {text:?} ({e}); seen: {seen:#?}"),
        }
    }
}

/// Sends `signal` (e.g. "INT") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Every line still to come, until both streams are closed.
pub fn drain(rx: &mpsc::Receiver<(bool, String)>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(30)) {
        lines.push(line);
    }
    lines
}

/// Runs a step that waits, sends `sig` to `hodei run` once the step has
/// started, and checks the job is aborted and nothing is left.
fn check_signal_cancels(sig: &str) {
    let dir = project(&[(
        "Jenkinsfile",
        "pipeline { agent any\n stages { stage('Wait') { steps { sh 'echo step started; sleep 60; echo never printed' } } } }\n",
    )]);
    let tag = tag();
    let mut command = hodei(&tag);
    command.args(["run", &path(dir.path(), "Jenkinsfile")]);
    let (mut child, rx) = spawn_lines(command);
    let mut seen = Vec::new();
    wait_for_line(&rx, "step started", &mut seen);
    // The step runs in a worker process, not in hodei itself.
    assert!(tagged_processes(&tag).len() >= 2);
    signal(child.id(), sig);
    let status = child.wait().unwrap();
    seen.extend(drain(&rx));
    assert_eq!(status.code(), Some(1), "{seen:#?}");
    assert!(
        seen.iter().any(|l| l.starts_with("Finished: ABORTED")),
        "{seen:#?}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("never printed")),
        "{seen:#?}"
    );
    assert_no_process_left(&tag);
}

#[test]
fn ctrl_c_cancels_the_job_and_destroys_its_worker() {
    check_signal_cancels("INT");
}

#[test]
fn sigterm_cancels_the_job_and_destroys_its_worker() {
    check_signal_cancels("TERM");
}
