//! The local-process orchestrator with real child processes: a small shell
//! script stands in for the worker binary.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use hodei_application::orchestrator::{
    BackendState, OneTimeToken, OrchestratorError, ServerEndpoint, WorkerOrchestrator, WorkerSpec,
};
use hodei_domain::{
    CpuQuantity, JobId, MemoryQuantity, ResourceRequirements, TemplateId, WorkerId, WorkerTemplate,
};
use hodei_infrastructure::local::{LocalConfig, LocalOrchestrator};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("test runtime")
});

const PATIENCE: Duration = Duration::from_secs(30);

fn spec(worker_id: &str, out_dir: &Path) -> WorkerSpec {
    let resources = ResourceRequirements::new(
        CpuQuantity::from_millis(500),
        MemoryQuantity::from_bytes(1 << 30),
    );
    let template = WorkerTemplate::new(TemplateId::new("local").unwrap(), "local", resources)
        .unwrap()
        .with_capabilities(["linux", "git"])
        .unwrap()
        .with_environment([("TEMPLATE_VAR", "from-template")])
        .unwrap();
    WorkerSpec {
        worker_id: WorkerId::new(worker_id).unwrap(),
        worker_name: format!("{worker_id}-name"),
        job_id: JobId::new("job-1").unwrap(),
        template,
        server: ServerEndpoint {
            host: "127.0.0.1".into(),
            port: 4321,
        },
        token: OneTimeToken::new("one-time-secret"),
        server_id: "srv-test".into(),
        extra_labels: Default::default(),
        extra_env: [("OUT_DIR".to_owned(), out_dir.display().to_string())].into(),
        docker_args: None,
        pod_yaml: None,
    }
}

/// A backend whose "worker binary" is `sh script`.
fn orchestrator(dir: &Path, script: &str) -> LocalOrchestrator {
    let path = dir.join("worker.sh");
    std::fs::write(&path, script).unwrap();
    let mut config = LocalConfig::new("/bin/sh");
    config.worker_args = vec![path.display().to_string()];
    config.workspace_root = dir.join("ws");
    config.server_lost_grace = Some(Duration::from_millis(1500));
    config.server_socket = Some(dir.join("workers.sock"));
    config.stop_grace = Duration::from_millis(500);
    LocalOrchestrator::new(config)
}

async fn read_when_written(path: PathBuf) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path)
            && text.ends_with('\n')
        {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
    }
}

async fn gone(pid: u32) -> bool {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Writes its environment, starts a grandchild in its own process group (as
/// the worker does for steps) and one in its own group, then waits.
const LONG_RUNNING: &str = r#"
env > "$OUT_DIR/env.tmp" && mv "$OUT_DIR/env.tmp" "$OUT_DIR/env.txt"
sleep 300 &
echo $! > "$OUT_DIR/same-group.tmp" && mv "$OUT_DIR/same-group.tmp" "$OUT_DIR/same-group.pid"
setsid sleep 300 &
echo $! > "$OUT_DIR/own-group.tmp" && mv "$OUT_DIR/own-group.tmp" "$OUT_DIR/own-group.pid"
echo "worker running" >&2
wait
"#;

#[test]
fn create_runs_the_worker_with_the_seed_variables_and_delete_kills_everything() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = orchestrator(dir.path(), LONG_RUNNING);
        let handle = local
            .create_worker(spec("w-env", dir.path()))
            .await
            .unwrap();
        assert_eq!(handle.worker_id.as_str(), "w-env");
        let pid: u32 = handle.backend_id.parse().unwrap();
        assert_eq!(local.pid(&handle.worker_id), Some(pid));

        let env = read_when_written(dir.path().join("env.txt")).await;
        for expected in [
            "SERVER_HOST=127.0.0.1",
            "SERVER_PORT=4321",
            "WORKER_ID=w-env",
            "WORKER_NAME=w-env-name",
            "WORKER_CAPABILITIES=git,linux",
            "EPHEMERAL_MODE=true",
            "HODEI_WORKER_TOKEN=one-time-secret",
            "HODEI_SERVER_LOST_GRACE=1500ms",
            "TEMPLATE_VAR=from-template",
            &format!("HODEI_WORKSPACE_ROOT={}", dir.path().join("ws").display()),
            &format!(
                "HODEI_SERVER_SOCKET={}",
                dir.path().join("workers.sock").display()
            ),
        ] {
            assert!(
                env.lines().any(|l| l == expected),
                "missing {expected} in:\n{env}"
            );
        }
        let same_group: u32 = read_when_written(dir.path().join("same-group.pid"))
            .await
            .trim()
            .parse()
            .unwrap();
        let own_group: u32 = read_when_written(dir.path().join("own-group.pid"))
            .await
            .trim()
            .parse()
            .unwrap();

        assert_eq!(
            local.worker_state(&handle.worker_id).await.unwrap(),
            BackendState::Running
        );
        let listed = local.list_workers("srv-test").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].worker_id, handle.worker_id);
        assert_eq!(listed[0].job_id.as_ref().map(JobId::as_str), Some("job-1"));
        assert_eq!(
            listed[0].template_id.as_ref().map(TemplateId::as_str),
            Some("local")
        );
        assert_eq!(listed[0].backend_id, pid.to_string());
        assert!(
            local
                .list_workers("another-server")
                .await
                .unwrap()
                .is_empty()
        );

        local.delete_worker(&handle.worker_id).await.unwrap();
        assert!(gone(pid).await, "worker {pid} survived");
        assert!(
            gone(same_group).await,
            "grandchild {same_group} in the worker's group survived"
        );
        assert!(
            gone(own_group).await,
            "grandchild {own_group} in its own group survived"
        );
        assert_eq!(
            local.worker_state(&handle.worker_id).await.unwrap(),
            BackendState::NotFound
        );
        assert!(local.list_workers("srv-test").await.unwrap().is_empty());
        // Idempotent.
        local.delete_worker(&handle.worker_id).await.unwrap();
        local
            .delete_worker(&WorkerId::new("never-created").unwrap())
            .await
            .unwrap();
    });
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_grace() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = orchestrator(
            dir.path(),
            "trap '' TERM\necho $$ > \"$OUT_DIR/pid.tmp\" && mv \"$OUT_DIR/pid.tmp\" \"$OUT_DIR/pid\"\nwhile :; do sleep 1; done\n",
        );
        let handle = local.create_worker(spec("w-stubborn", dir.path())).await.unwrap();
        let pid: u32 = read_when_written(dir.path().join("pid")).await.trim().parse().unwrap();
        local.delete_worker(&handle.worker_id).await.unwrap();
        assert!(gone(pid).await);
    });
}

#[test]
fn exit_before_connecting_reports_status_and_stderr_tail() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = orchestrator(
            dir.path(),
            "i=1\nwhile [ $i -le 30 ]; do echo \"problem line $i\" >&2; i=$((i + 1)); done\nexit 3\n",
        );
        let handle = local.create_worker(spec("w-fail", dir.path())).await.unwrap();
        let state = tokio::time::timeout(PATIENCE, local.wait_exit(&handle.worker_id)).await.unwrap();
        let expected_lines: Vec<String> = (11..=30).map(|i| format!("problem line {i}")).collect();
        assert_eq!(
            state,
            BackendState::Exited {
                code: Some(3),
                reason: "exit status 3".into(),
                last_lines: expected_lines,
            }
        );
        let reason = state.failure_reason().unwrap();
        assert!(
            reason.starts_with("worker exited with exit status 3 before connecting; last lines: problem line 11 | "),
            "{reason}"
        );
        assert!(reason.ends_with("problem line 30"), "{reason}");
        // Still listed (exited) until deleted.
        let listed = local.list_workers("srv-test").await.unwrap();
        assert!(matches!(listed[0].state, BackendState::Exited { .. }));
        local.delete_worker(&handle.worker_id).await.unwrap();
        assert_eq!(local.worker_state(&handle.worker_id).await.unwrap(), BackendState::NotFound);
    });
}

#[test]
fn killed_by_a_signal_has_no_code() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = orchestrator(dir.path(), "echo dying >&2\nkill -KILL $$\n");
        let handle = local
            .create_worker(spec("w-sig", dir.path()))
            .await
            .unwrap();
        let state = tokio::time::timeout(PATIENCE, local.wait_exit(&handle.worker_id))
            .await
            .unwrap();
        assert_eq!(
            state,
            BackendState::Exited {
                code: None,
                reason: "signal 9".into(),
                last_lines: vec!["dying".into()],
            }
        );
        local.delete_worker(&handle.worker_id).await.unwrap();
    });
}

#[test]
fn missing_binary_and_duplicate_ids_are_refused() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let missing = LocalOrchestrator::new(LocalConfig::new(dir.path().join("no-such-worker")));
        match missing.create_worker(spec("w-missing", dir.path())).await {
            Err(OrchestratorError::Provisioning { worker_id, reason }) => {
                assert_eq!(worker_id.as_str(), "w-missing");
                assert!(reason.starts_with("starting worker binary "), "{reason}");
                assert!(reason.contains("No such file"), "{reason}");
            }
            other => panic!("expected a provisioning failure, got {other:?}"),
        }
        assert_eq!(
            missing
                .worker_state(&WorkerId::new("w-missing").unwrap())
                .await
                .unwrap(),
            BackendState::NotFound
        );

        let local = orchestrator(dir.path(), "sleep 300\n");
        let handle = local
            .create_worker(spec("w-dup", dir.path()))
            .await
            .unwrap();
        match local.create_worker(spec("w-dup", dir.path())).await {
            Err(OrchestratorError::AlreadyExists(id)) => assert_eq!(id, handle.worker_id),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        let pid: u32 = handle.backend_id.parse().unwrap();
        local.delete_worker(&handle.worker_id).await.unwrap();
        assert!(gone(pid).await);
    });
}

#[test]
fn dropping_the_backend_kills_its_workers() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = orchestrator(dir.path(), LONG_RUNNING);
        let handle = local
            .create_worker(spec("w-drop", dir.path()))
            .await
            .unwrap();
        let pid: u32 = handle.backend_id.parse().unwrap();
        let same_group: u32 = read_when_written(dir.path().join("same-group.pid"))
            .await
            .trim()
            .parse()
            .unwrap();
        let own_group: u32 = read_when_written(dir.path().join("own-group.pid"))
            .await
            .trim()
            .parse()
            .unwrap();
        drop(local);
        for pid in [pid, same_group, own_group] {
            assert!(gone(pid).await, "{pid} outlived the backend");
        }
    });
}

#[test]
fn delete_all_stops_every_worker() {
    RUNTIME.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let local = orchestrator(dir.path(), "sleep 300\n");
        let mut pids = Vec::new();
        for id in ["w-all-1", "w-all-2", "w-all-3"] {
            pids.push(
                local
                    .create_worker(spec(id, dir.path()))
                    .await
                    .unwrap()
                    .backend_id
                    .parse::<u32>()
                    .unwrap(),
            );
        }
        assert_eq!(local.list_workers("srv-test").await.unwrap().len(), 3);
        local.delete_all().await;
        assert!(local.list_workers("srv-test").await.unwrap().is_empty());
        for pid in pids {
            assert!(gone(pid).await, "{pid} survived delete_all");
        }
    });
}
