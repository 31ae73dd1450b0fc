//! The Docker orchestrator against the real engine, with the offline test
//! image `hodei/worker:test` (built by `scripts/build-test-image.sh`).
//!
//! When no engine answers (or the test image or the static worker is
//! missing) each test prints why and returns; under `CI=true` it fails
//! instead. Every test uses its own server id and checks at its end that no
//! container with that id is left.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use hodei_application::manager::{EphemeralWorkerManager, ManagerConfig, ManagerPorts};
use hodei_application::orchestrator::{
    BackendState, OneTimeToken, OrchestratorError, ServerEndpoint, WorkerOrchestrator, WorkerSpec,
};
use hodei_application::provider::{ProvisionError, SegmentRequest, WorkerProvider};
use hodei_application::worker_link::{LinkError, WorkerGateway, WorkerLink};
use hodei_domain::pipeline::{Agent, AgentKind, Pos, Segment, SegmentId, SegmentOwner};
use hodei_domain::{
    CpuQuantity, DockerArgs, JobId, MemoryQuantity, ResourceRequirements, TemplateId, WorkerId,
    WorkerTemplate,
};
use hodei_infrastructure::docker::{
    DockerConfig, DockerOrchestrator, PullPolicy, container_name, is_static_executable,
};
use hodei_infrastructure::{
    BroadcastEventPublisher, InMemoryWorkerRepository, InMemoryWorkerTemplateRepository,
    RandomIdGenerator, SystemClock,
};

/// The offline test image.
pub const TEST_IMAGE: &str = "hodei/worker:test";
const PATIENCE: Duration = Duration::from_secs(60);

/// The static worker the tests inject: `HODEI_DOCKER_WORKER_BINARY`, else
/// where `scripts/build-test-image.sh` puts it.
pub fn worker_binary() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    match std::env::var_os("HODEI_DOCKER_WORKER_BINARY") {
        // A relative path is taken from the repository root.
        Some(path) => root.join(path),
        None => root.join("target/static/hodei-worker"),
    }
}

/// Skips the test (returns `None`) with a printed reason, or fails it under
/// `CI=true`.
fn unavailable(reason: String) -> Option<DockerOrchestrator> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("docker tests are required under CI=true: {reason}");
    }
    eprintln!("skipping docker test: {reason}");
    None
}

/// An orchestrator on the local engine injecting the static worker, when
/// the engine answers and the test image and the worker exist.
pub async fn engine() -> Option<DockerOrchestrator> {
    let binary = worker_binary();
    if !binary.is_file() {
        return unavailable(format!(
            "no static worker at {} (run scripts/build-test-image.sh)",
            binary.display()
        ));
    }
    let binary = binary.canonicalize().unwrap_or(binary);
    let mut config = DockerConfig::new(Some(binary));
    config.pull_policy = PullPolicy::Never;
    config.server_lost_grace = Some(Duration::from_secs(20));
    let orchestrator = DockerOrchestrator::new(config);
    if let Err(e) = orchestrator.ping().await {
        return unavailable(e.to_string());
    }
    let image = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output();
    match image {
        Ok(out) if out.status.success() => Some(orchestrator),
        _ => unavailable(format!(
            "image {TEST_IMAGE} missing (run scripts/build-test-image.sh)"
        )),
    }
}

/// A server id no other test uses.
pub fn server_id(test: &str) -> String {
    format!(
        "it-{test}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The containers of `server_id` according to the docker CLI (not our
/// code), including stopped ones.
pub fn containers_of(server_id: &str) -> Vec<String> {
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
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Force-removes whatever a failed test left, then asserts there was none.
fn assert_none_left(server_id: &str) {
    let left = containers_of(server_id);
    for name in &left {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", name])
            .output();
    }
    assert!(left.is_empty(), "containers left behind: {left:?}");
}

fn template(image: &str, environment: &[(&str, &str)]) -> WorkerTemplate {
    WorkerTemplate::new(
        TemplateId::new("docker-test").unwrap(),
        image,
        ResourceRequirements::new(
            CpuQuantity::from_millis(500),
            MemoryQuantity::from_bytes(256 << 20),
        ),
    )
    .unwrap()
    .with_capabilities(["linux", "busybox"])
    .unwrap()
    .with_environment(environment.iter().copied())
    .unwrap()
}

fn spec(server_id: &str, worker: &str, template: WorkerTemplate) -> WorkerSpec {
    WorkerSpec {
        worker_id: WorkerId::new(worker).unwrap(),
        worker_name: format!("{worker}-name"),
        job_id: JobId::new("job-1").unwrap(),
        template,
        server: ServerEndpoint {
            host: "localhost".into(),
            // Nothing listens here: the worker keeps retrying.
            port: 9,
        },
        token: OneTimeToken::new("docker-test-secret"),
        server_id: server_id.to_owned(),
        extra_labels: Default::default(),
        extra_env: Default::default(),
        docker_args: None,
        pod_yaml: None,
    }
}

/// Polls until the worker's state is terminal.
async fn wait_terminal(o: &DockerOrchestrator, id: &WorkerId) -> BackendState {
    let started = tokio::time::Instant::now();
    loop {
        let state = o.worker_state(id).await.unwrap();
        if state.is_terminal() {
            return state;
        }
        assert!(started.elapsed() < PATIENCE, "still {state:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn inspect(name: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", format, name])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds a throwaway image from the test image with another entrypoint.
fn entrypoint_image(tag: &str, script: &str) -> bool {
    derived_image(
        tag,
        &format!(
            "ENTRYPOINT [\"/bin/sh\", \"-c\", {}]\n",
            serde_json_string(script)
        ),
    )
}

/// Builds a throwaway image from the test image plus `lines`.
fn derived_image(tag: &str, lines: &str) -> bool {
    let dockerfile = format!("FROM {TEST_IMAGE}\n{lines}");
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("docker build");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dockerfile.as_bytes())
        .unwrap();
    child.wait().map(|s| s.success()).unwrap_or(false)
}

fn serde_json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_container_carries_labels_env_limits_and_the_injected_binary() {
    let Some(o) = engine().await else { return };
    let server = server_id("create");
    let mut s = spec(&server, "w-create", template(TEST_IMAGE, &[]));
    s.docker_args = Some(DockerArgs::parse("-e FROM_ARGS=yes --cpus 0.5 --memory 64m").unwrap());
    let handle = o.create_worker(s).await.unwrap();
    let name = container_name(&handle.worker_id);
    assert_eq!(
        inspect(&name, "{{.Id}}"),
        handle.backend_id,
        "the handle names the container"
    );
    assert_eq!(
        o.worker_state(&handle.worker_id).await.unwrap(),
        BackendState::Running
    );
    let labels = inspect(&name, "{{json .Config.Labels}}");
    for expected in [
        "\"app.kubernetes.io/managed-by\":\"hodei\"",
        "\"hodei.dev/worker-id\":\"w-create\"",
        "\"hodei.dev/job-id\":\"job-1\"",
        "\"hodei.dev/template\":\"docker-test\"",
        &format!("\"hodei.dev/server-id\":\"{server}\""),
    ] {
        assert!(labels.contains(expected), "{expected} in {labels}");
    }
    let env = inspect(&name, "{{json .Config.Env}}");
    for expected in [
        "SERVER_HOST=localhost",
        "WORKER_ID=w-create",
        "EPHEMERAL_MODE=true",
        "WORKER_CAPABILITIES=busybox,linux",
        "FROM_ARGS=yes",
        "HODEI_WORKSPACE_ROOT=/workspace",
    ] {
        assert!(env.contains(expected), "{expected} in {env}");
    }
    assert_eq!(inspect(&name, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(&name, "{{.HostConfig.Memory}}"), "67108864");
    assert_eq!(inspect(&name, "{{.HostConfig.NetworkMode}}"), "host");
    assert_eq!(inspect(&name, "{{.Config.WorkingDir}}"), "/workspace");
    assert_eq!(
        inspect(&name, "{{json .Config.Entrypoint}}"),
        "[\"/opt/hodei/hodei-worker\"]"
    );
    let mounts = inspect(&name, "{{range .Mounts}}{{.Destination}} {{.RW}}{{end}}");
    assert_eq!(mounts, "/opt/hodei/hodei-worker false", "read-only binary");

    let listed = o.list_workers(&server).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].worker_id.as_str(), "w-create");
    assert_eq!(listed[0].job_id.as_ref().map(JobId::as_str), Some("job-1"));

    o.delete_worker(&handle.worker_id).await.unwrap();
    o.delete_worker(&handle.worker_id).await.unwrap();
    assert_eq!(
        o.worker_state(&handle.worker_id).await.unwrap(),
        BackendState::NotFound
    );
    assert!(o.list_workers(&server).await.unwrap().is_empty());
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_before_connecting_reports_code_and_last_lines() {
    let Some(o) = engine().await else { return };
    let server = server_id("early-exit");
    // The worker refuses a malformed grace and exits 2 with its reason.
    let s = spec(
        &server,
        "w-early",
        template(TEST_IMAGE, &[("HODEI_SERVER_LOST_GRACE", "soon")]),
    );
    let mut config = o.config().clone();
    config.server_lost_grace = None;
    let o = DockerOrchestrator::new(config);
    let handle = o.create_worker(s).await.unwrap();
    let state = wait_terminal(&o, &handle.worker_id).await;
    let BackendState::Exited {
        code,
        reason,
        last_lines,
    } = &state
    else {
        panic!("expected an exit, got {state:?}");
    };
    assert_eq!(*code, Some(2), "{state:?}");
    assert_eq!(reason, "exit status 2");
    assert!(
        last_lines
            .iter()
            .any(|l| l.contains("HODEI_SERVER_LOST_GRACE")),
        "{last_lines:?}"
    );
    let failure = state.failure_reason().unwrap();
    assert!(
        failure.starts_with("worker exited with exit status 2 before connecting; last lines: "),
        "{failure}"
    );
    assert!(!failure.contains("docker-test-secret"), "{failure}");
    o.delete_worker(&handle.worker_id).await.unwrap();
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_fails_at_once_naming_it() {
    let Some(o) = engine().await else { return };
    let server = server_id("no-image");
    let err = o
        .create_worker(spec(
            &server,
            "w-noimage",
            template("hodei/never-built:1", &[]),
        ))
        .await
        .unwrap_err();
    let OrchestratorError::Provisioning { reason, .. } = &err else {
        panic!("expected a provisioning error, got {err:?}");
    };
    assert_eq!(
        reason,
        "image \"hodei/never-built:1\" is not present on the docker engine and pulling is disabled"
    );
    // Allowed to pull: the engine's own words about the failed pull.
    let mut config = o.config().clone();
    config.pull_policy = PullPolicy::IfNotPresent;
    config.pull_timeout = Duration::from_secs(30);
    let pulling = DockerOrchestrator::new(config);
    let err = pulling
        .create_worker(spec(
            &server,
            "w-noimage",
            template("hodei/never-built:1", &[]),
        ))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(
            "provisioning worker w-noimage failed: image \"hodei/never-built:1\" is not present \
             on the docker engine and pulling it "
        ),
        "{text}"
    );
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_for_its_memory_limit_is_reported_oom_killed() {
    let Some(o) = engine().await else { return };
    let server = server_id("oom");
    let tag = format!("hodei-test/oom:{}", uuid::Uuid::new_v4().simple());
    assert!(
        entrypoint_image(&tag, "exec tail /dev/zero"),
        "building {tag}"
    );
    // The image's own entrypoint (it ships no worker) is the process that
    // allocates past 16m, so the engine reports the container OOM-killed.
    let mut config = o.config().clone();
    config.worker_binary = None;
    let o = DockerOrchestrator::new(config);
    let mut s = spec(&server, "w-oom", template(&tag, &[]));
    s.docker_args = Some(DockerArgs::parse("--memory 16m").unwrap());
    let handle = o.create_worker(s).await.unwrap();
    let state = wait_terminal(&o, &handle.worker_id).await;
    o.delete_worker(&handle.worker_id).await.unwrap();
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    let BackendState::Exited { code, reason, .. } = &state else {
        panic!("expected an exit, got {state:?}");
    };
    assert_eq!(*code, Some(137), "{state:?}");
    assert_eq!(
        reason,
        "OOMKilled (out of memory at its memory limit, exit status 137)"
    );
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_clear_error_per_call() {
    let mut config = DockerConfig::new(Some(worker_binary()));
    config.socket = "/nonexistent/docker.sock".to_owned();
    let o = DockerOrchestrator::new(config);
    let expected = "worker backend unavailable: docker engine at /nonexistent/docker.sock is \
                    unreachable: Socket not found: /nonexistent/docker.sock";
    assert_eq!(o.ping().await.unwrap_err().to_string(), expected);
    let err = o
        .create_worker(spec("srv", "w-1", template(TEST_IMAGE, &[])))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), expected);
    let id = WorkerId::new("w-1").unwrap();
    assert_eq!(
        o.delete_worker(&id).await.unwrap_err().to_string(),
        expected
    );
    assert_eq!(
        o.list_workers("srv").await.unwrap_err().to_string(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_worker_removes_its_container() {
    let Some(o) = engine().await else { return };
    let server = server_id("cancel");
    let s = spec(&server, "w-cancel", template(TEST_IMAGE, &[]));
    let handle = o.create_worker(s).await.unwrap();
    assert_eq!(
        o.worker_state(&handle.worker_id).await.unwrap(),
        BackendState::Running
    );
    o.delete_worker(&handle.worker_id).await.unwrap();
    assert_eq!(
        o.worker_state(&handle.worker_id).await.unwrap(),
        BackendState::NotFound
    );
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_refused() {
    let Some(o) = engine().await else { return };
    let server = server_id("dup");
    let s = spec(&server, "w-dup", template(TEST_IMAGE, &[]));
    o.create_worker(s.clone()).await.unwrap();
    let err = o.create_worker(s).await.unwrap_err();
    assert!(
        matches!(&err, OrchestratorError::AlreadyExists(id) if id.as_str() == "w-dup"),
        "{err:?}"
    );
    o.delete_worker(&WorkerId::new("w-dup").unwrap())
        .await
        .unwrap();
    assert_none_left(&server);
}

/// Never connects anything: orphan collection needs no connections.
struct NoGateway;

#[async_trait::async_trait]
impl WorkerGateway for NoGateway {
    async fn wait_connected(
        &self,
        _worker: &WorkerId,
        _deadline: Duration,
    ) -> Result<Arc<dyn WorkerLink>, LinkError> {
        std::future::pending().await
    }
}

fn manager(o: Arc<DockerOrchestrator>, server: &str) -> EphemeralWorkerManager {
    let mut config = ManagerConfig::new(
        server,
        ServerEndpoint {
            host: "127.0.0.1".into(),
            port: 9,
        },
    );
    config.provisioning_deadline = Duration::from_secs(30);
    config.state_poll_interval = Duration::from_millis(50);
    EphemeralWorkerManager::new(
        config,
        ManagerPorts {
            orchestrator: o,
            gateway: Arc::new(NoGateway),
            templates: Arc::new(InMemoryWorkerTemplateRepository::from_templates([])),
            workers: Arc::new(InMemoryWorkerRepository::new()),
            events: Arc::new(BroadcastEventPublisher::default()),
            clock: Arc::new(SystemClock::new()),
            ids: Arc::new(RandomIdGenerator::new()),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_collects_the_containers_of_its_crashed_predecessor() {
    let Some(o) = engine().await else { return };
    let server = server_id("gc");
    let other = server_id("gc-other");
    let config = o.config().clone();
    {
        // The "crashed" server: creates workers and never deletes them.
        let crashed = DockerOrchestrator::new(config.clone());
        for worker in ["w-gc-1", "w-gc-2"] {
            crashed
                .create_worker(spec(&server, worker, template(TEST_IMAGE, &[])))
                .await
                .unwrap();
        }
        crashed
            .create_worker(spec(&other, "w-gc-other", template(TEST_IMAGE, &[])))
            .await
            .unwrap();
    }
    assert_eq!(containers_of(&server).len(), 2);
    let restarted = Arc::new(DockerOrchestrator::new(config));
    let manager = manager(restarted.clone(), &server);
    assert_eq!(manager.collect_orphans().await.unwrap(), 2);
    assert!(restarted.list_workers(&server).await.unwrap().is_empty());
    assert_eq!(
        containers_of(&other).len(),
        1,
        "another server's containers are not this server's orphans"
    );
    restarted
        .delete_worker(&WorkerId::new("w-gc-other").unwrap())
        .await
        .unwrap();
    assert_none_left(&server);
    assert_none_left(&other);
}

fn docker_request(image: &str, args: Option<&str>) -> SegmentRequest {
    SegmentRequest {
        job_id: JobId::new("job-docker").unwrap(),
        job_name: "docker".into(),
        build_number: 1,
        segment: Segment {
            id: SegmentId(0),
            agent: Agent {
                pos: Pos::default(),
                kind: AgentKind::Docker {
                    image: image.into(),
                    args: args.map(Into::into),
                },
            },
            owner: SegmentOwner::Pipeline,
            parent: None,
            parallel_branch: None,
            stages: vec!["Build".into()],
        },
        source: Arc::from(Vec::new()),
        skip_checkout: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_agent_whose_worker_dies_fails_with_the_engine_reason_and_leaves_nothing() {
    let Some(o) = engine().await else { return };
    let server = server_id("agent");
    // Nothing listens where the worker connects: it gives up after its
    // grace and exits before connecting.
    let mut config = o.config().clone();
    config.server_lost_grace = Some(Duration::from_secs(1));
    let o = Arc::new(DockerOrchestrator::new(config));
    let manager = manager(o.clone(), &server);
    // No template runs the image: the docker backend makes one.
    let err = manager
        .acquire(docker_request(
            TEST_IMAGE,
            Some("-e STAGE=build --memory 64m"),
        ))
        .await
        .unwrap_err();
    let ProvisionError::Failed { reason, .. } = &err else {
        panic!("expected a provisioning failure, got {err:?}");
    };
    assert!(
        reason.starts_with("worker exited with exit status 3 before connecting; last lines: "),
        "{reason}"
    );
    assert!(
        reason.contains("server lost for more than 1000 ms"),
        "{reason}"
    );
    assert!(manager.active_workers().is_empty());
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_ships_the_worker_runs_its_own_entrypoint() {
    let Some(o) = engine().await else { return };
    let server = server_id("ships");
    let tag = format!("hodei-test/ships:{}", uuid::Uuid::new_v4().simple());
    assert!(
        derived_image(&tag, "LABEL dev.hodei.ships-worker=\"true\"\n"),
        "building {tag}"
    );
    let handle = o
        .create_worker(spec(&server, "w-ships", template(&tag, &[])))
        .await
        .unwrap();
    let name = container_name(&handle.worker_id);
    let entrypoint = inspect(&name, "{{json .Config.Entrypoint}}");
    let mounts = inspect(&name, "{{len .Mounts}}");
    let state = o.worker_state(&handle.worker_id).await.unwrap();
    o.delete_worker(&handle.worker_id).await.unwrap();
    let _ = Command::new("docker").args(["rmi", &tag]).output();
    assert_eq!(entrypoint, "[\"/usr/local/bin/hodei-worker\"]");
    assert_eq!(mounts, "0", "nothing injected");
    assert_eq!(state, BackendState::Running);
    assert_none_left(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamically_linked_worker_in_a_scratch_image_fails_with_a_hint() {
    let Some(o) = engine().await else { return };
    let injected = o.config().worker_binary.clone().unwrap();
    assert!(
        is_static_executable(&injected).unwrap(),
        "{} is static",
        injected.display()
    );
    let server = server_id("dynamic");
    // This test executable is dynamically linked: the scratch image has no
    // loader for it.
    let mut config = o.config().clone();
    config.worker_binary = Some(std::env::current_exe().unwrap());
    let o = DockerOrchestrator::new(config);
    let handle = o
        .create_worker(spec(&server, "w-dynamic", template(TEST_IMAGE, &[])))
        .await
        .unwrap();
    let state = wait_terminal(&o, &handle.worker_id).await;
    o.delete_worker(&handle.worker_id).await.unwrap();
    let BackendState::Exited { reason, .. } = &state else {
        panic!("expected an exit, got {state:?}");
    };
    assert!(
        reason.contains("is dynamically linked and the image lacks its loader or libc: use a static build, scripts/build-static-worker.sh"),
        "{reason}"
    );
    assert_none_left(&server);
}
