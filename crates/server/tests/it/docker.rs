//! `hodei run --backend docker` and `hodei server` with `backend = "docker"`
//! as real processes against the local Docker engine, with the offline test
//! images `hodei/worker:test` and `hodei/worker:test-alt` and the static
//! worker (both from `scripts/build-test-image.sh`).
//!
//! When no engine answers (or the images or the static worker are missing)
//! each test prints why and returns; under `CI=true` it fails instead.
//! Every run has its own server id; after each test no container with that
//! id remains.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::cli_run::{
    assert_no_process_left, drain, hodei, root, signal, spawn_lines, tag, wait_for_line,
};

/// The static worker: `HODEI_DOCKER_WORKER_BINARY`, else where
/// `scripts/build-test-image.sh` puts it.
fn static_worker() -> PathBuf {
    match std::env::var_os("HODEI_DOCKER_WORKER_BINARY") {
        // A relative path is taken from the repository root.
        Some(path) => root().join(path),
        None => root().join("target/static/hodei-worker"),
    }
}

/// The static worker when the engine, the images and the worker are there;
/// otherwise `None` after printing why (or a failure under `CI=true`).
fn docker_ready() -> Option<PathBuf> {
    let missing = |reason: String| {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "docker tests are required under CI=true: {reason}"
        );
        eprintln!("skipping docker test: {reason}");
        None
    };
    let worker = static_worker();
    if !worker.is_file() {
        return missing(format!(
            "no static worker at {} (run scripts/build-test-image.sh)",
            worker.display()
        ));
    }
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return missing(format!(
                "no docker engine answers: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return missing(format!("no docker client: {e}")),
    }
    for image in ["hodei/worker:test", "hodei/worker:test-alt"] {
        let found = Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return missing(format!(
                "image {image} missing (run scripts/build-test-image.sh)"
            ));
        }
    }
    Some(worker.canonicalize().unwrap_or(worker))
}

fn server_id(test: &str) -> String {
    format!("it-{test}-{}", tag())
}

/// Names of the containers (running or not) carrying `server_id`.
fn containers_of(server_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=hodei.dev/server-id={server_id}"),
        ])
        .output()
        .expect("docker ps runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Removes what a failing test left, then asserts there was nothing.
fn assert_no_container_left(server_id: &str) {
    let left = containers_of(server_id);
    for name in &left {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", name])
            .output();
    }
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

/// Waits until `check` holds, for at most 30 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `hodei` command for the docker backend with its own server id.
fn hodei_docker(tag: &str, worker: &PathBuf, server_id: &str) -> Command {
    let mut command = hodei(tag);
    command
        .env("HODEI_WORKER_BINARY", worker)
        .env("HODEI_SERVER_ID", server_id);
    command
}

/// A directory holding one Jenkinsfile.
fn project(pipeline: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Jenkinsfile"), pipeline).unwrap();
    dir
}

#[test]
fn hodei_run_backend_docker_runs_each_stage_in_its_own_image() {
    let Some(worker) = docker_ready() else { return };
    let server = server_id("example");
    let tag = tag();
    let out = hodei_docker(&tag, &worker, &server)
        .args(["run", "--backend", "docker", "examples/docker/Jenkinsfile"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for expected in [
        "── stage Inside a container ──",
        "image: test\n",
        // The step's container runs the injected worker as its first process.
        "pid 1: /opt/hodei/hodei-worker",
        "wrote /workspace/",
        "── stage Another image ──",
        "image: test-alt, greeting: hello",
        "memory limit: 67108864",
        "a fresh workspace: the first container is gone",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in\n{stdout}");
    }
    // The file written in the workspace stayed in the container.
    let written = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .unwrap()
        .to_owned();
    assert!(
        !std::path::Path::new(&written).exists(),
        "{written} on the host"
    );
    assert!(!root().join("examples/docker/artifact.txt").exists());
    assert_no_container_left(&server);
    assert_no_process_left(&tag);
}

#[test]
fn failures_carry_the_engine_reason_and_leave_no_container() {
    let Some(worker) = docker_ready() else { return };
    let cases = [
        (
            "pipeline {\n  agent { docker 'hodei/never-built:1' }\n  stages { stage('S') { steps { sh 'echo never' } } }\n}\n",
            "image \"hodei/never-built:1\" is not present on the docker engine and pulling it failed: ",
        ),
        (
            "pipeline {\n  agent { docker { image 'hodei/worker:test'; args '--memory 32m' } }\n  stages { stage('S') { steps { sh 'head -c 64m /dev/zero | tail' } } }\n}\n",
            "hodei-worker: the step was OOM-killed: the kernel's out-of-memory killer ended it at its memory limit",
        ),
        (
            "pipeline {\n  agent { docker { image 'hodei/worker:test'; args '-u nosuchuser' } }\n  stages { stage('S') { steps { sh 'true' } } }\n}\n",
            "could not be provisioned: starting container hodei-",
        ),
    ];
    for (pipeline, expected) in cases {
        let server = server_id("failures");
        let tag = tag();
        let dir = project(pipeline);
        let out = hodei_docker(&tag, &worker, &server)
            .args(["run", "--backend", "docker"])
            .arg(dir.path().join("Jenkinsfile"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains(expected), "{expected:?} in\n{text}");
        assert_no_container_left(&server);
        assert_no_process_left(&tag);
    }
}

#[test]
fn docker_args_outside_the_subset_are_refused_before_anything_runs() {
    let Some(worker) = docker_ready() else { return };
    let server = server_id("lint");
    let tag = tag();
    let dir = project(
        "pipeline {\n  agent { docker { image 'hodei/worker:test'; args '--privileged' } }\n  stages { stage('S') { steps { sh 'true' } } }\n}\n",
    );
    let out = hodei_docker(&tag, &worker, &server)
        .args(["run", "--backend", "docker"])
        .arg(dir.path().join("Jenkinsfile"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "invalid docker args: unsupported docker argument `--privileged`: expected -e, -v, --memory, --cpus or -u"
        ),
        "{stderr}"
    );
    assert_no_container_left(&server);
}

#[test]
fn ctrl_c_cancels_the_step_and_removes_its_container() {
    let Some(worker) = docker_ready() else { return };
    let server = server_id("cancel");
    let tag = tag();
    let dir = project(
        "pipeline {\n  agent { docker 'hodei/worker:test' }\n  stages { stage('Wait') { steps { sh 'echo step started; sleep 60; echo never printed' } } }\n}\n",
    );
    let mut command = hodei_docker(&tag, &worker, &server);
    command
        .args(["run", "--backend", "docker"])
        .arg(dir.path().join("Jenkinsfile"));
    let (mut child, rx) = spawn_lines(command);
    let mut seen = Vec::new();
    wait_for_line(&rx, "step started", &mut seen);
    assert_eq!(
        containers_of(&server).len(),
        1,
        "the step runs in a container"
    );
    signal(child.id(), "INT");
    let status = child.wait().unwrap();
    seen.extend(drain(&rx));
    assert_eq!(status.code(), Some(1), "{seen:#?}");
    assert!(
        !seen.iter().any(|l| l.contains("never printed")),
        "{seen:#?}"
    );
    assert_no_container_left(&server);
    assert_no_process_left(&tag);
}

#[test]
fn a_server_killed_with_sigkill_collects_its_containers_when_it_starts_again() {
    let Some(worker) = docker_ready() else { return };
    let server = server_id("sigkill");
    let data = tempfile::tempdir().unwrap();
    let start = |tag: &str| {
        let mut command = hodei_docker(tag, &worker, &server);
        command
            .arg("server")
            .env("HODEI_BACKEND", "docker")
            // Workers dial `localhost`: the static worker resolves it from
            // /etc/hosts inside the FROM scratch image.
            .env("HODEI_ADVERTISE_HOST", "localhost")
            .env("HODEI_GRPC_ADDR", "127.0.0.1:0")
            .env("HODEI_HTTP_ADDR", "127.0.0.1:0")
            .env("HODEI_DATA_DIR", data.path());
        let (child, lines) = spawn_lines(command);
        let mut seen = Vec::new();
        wait_for_line(&lines, "listening", &mut seen);
        let line = seen.last().cloned().unwrap_or_default();
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("grpc="))
            .unwrap_or_else(|| panic!("no grpc= in {line:?}"))
            .to_owned();
        (child, lines, format!("http://{addr}"))
    };
    let first_tag = tag();
    let (mut first, _first_lines, url) = start(&first_tag);
    let dir = project(
        "pipeline {\n  agent { docker 'hodei/worker:test' }\n  stages { stage('Wait') { steps { sh 'echo step started; sleep 120' } } }\n}\n",
    );
    let client_tag = tag();
    let mut client = hodei(&client_tag);
    client
        .args(["run", "--server", &url])
        .arg(dir.path().join("Jenkinsfile"));
    let (mut client, client_lines) = spawn_lines(client);
    let mut seen = Vec::new();
    wait_for_line(&client_lines, "step started", &mut seen);
    assert_eq!(containers_of(&server).len(), 1);

    signal(first.id(), "KILL");
    let _ = first.wait();
    let _ = client.wait();
    assert_eq!(
        containers_of(&server).len(),
        1,
        "the container outlives the killed server"
    );

    let second_tag = tag();
    let (mut second, _second_lines, _) = start(&second_tag);
    eventually("the orphan collection at start", || {
        containers_of(&server).is_empty()
    });
    signal(second.id(), "TERM");
    assert_eq!(second.wait().unwrap().code(), Some(0));
    assert_no_container_left(&server);
    assert_no_process_left(&second_tag);
}

#[test]
fn an_unreachable_engine_fails_the_job_and_the_server_keeps_running() {
    let Some(worker) = docker_ready() else { return };
    let server = server_id("no-engine");
    let tag = tag();
    let dir = project(
        "pipeline {\n  agent { docker 'hodei/worker:test' }\n  stages { stage('S') { steps { sh 'echo never' } } }\n}\n",
    );
    let out = hodei_docker(&tag, &worker, &server)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["run", "--backend", "docker"])
        .arg(dir.path().join("Jenkinsfile"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "worker backend unavailable: docker engine at unix:///nonexistent/docker.sock is unreachable: Socket not found: /nonexistent/docker.sock"
        ),
        "{text}"
    );
    assert!(!text.contains("echo never\nnever"), "{text}");
    assert_no_container_left(&server);
    assert_no_process_left(&tag);
}

#[test]
fn docker_args_set_the_user_environment_and_volumes_of_the_steps() {
    let Some(worker) = docker_ready() else { return };
    let server = server_id("args");
    let tag = tag();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("from-host.txt"), "host file\n").unwrap();
    let pipeline = format!(
        "pipeline {{\n  agent {{ docker {{ image 'hodei/worker:test'; args '-u 65534:65534 -e MODE=ci -v {}:/shared:ro' }} }}\n  stages {{ stage('S') {{ steps {{\n    sh 'echo \"uid=$(id -u) mode=$MODE $(cat /shared/from-host.txt)\"'\n    sh 'echo x > written.txt && echo \"workspace=$PWD\"'\n  }} }} }}\n}}\n",
        shared.path().display()
    );
    let dir = project(&pipeline);
    let out = hodei_docker(&tag, &worker, &server)
        .args(["run", "--backend", "docker"])
        .arg(dir.path().join("Jenkinsfile"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("uid=65534 mode=ci host file"), "{stdout}");
    assert!(
        stdout.contains("workspace=/tmp/hodei-workspace/"),
        "{stdout}"
    );
    assert_no_container_left(&server);
    assert_no_process_left(&tag);
}
