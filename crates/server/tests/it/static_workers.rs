//! Static workers: the real `hodei-worker` binary started by hand (not by a
//! backend) registers with the server's `static_worker_token`, runs any
//! matching job one after another on the same connection, and is forgotten
//! when it goes. A wrong secret, no configured secret, or an ephemeral
//! worker's id are refused. No worker process remains after a test.

use std::process::Stdio;
use std::time::Duration;

use hodei_domain::{DomainEvent, WorkerId};
use hodei_proto::v1 as pb;
use hodei_proto::v1::admin_service_client::AdminServiceClient;
use hodei_proto::v1::worker_service_client::WorkerServiceClient;
use hodei_server::config::Secret;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::support::{
    TestServer, run, start, start_with, submit, watch, watch_until_line, worker_binary,
};

const SECRET: &str = "static-s3cret-for-tests";
const LABEL: &str = "hodei-static-test";

fn unique_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "static-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Starts the real worker binary by hand, as an operator would, as a static
/// worker of `server` with `token`; its stderr is kept when `capture`.
fn start_static_worker(
    server: &TestServer,
    id: &str,
    token: &str,
    workspaces: &std::path::Path,
    capture: bool,
) -> Child {
    let port = server.handle.grpc_addr().port().to_string();
    Command::new(worker_binary())
        .args(["--server-host", "127.0.0.1", "--server-port", &port])
        .args(["--worker-id", id, "--worker-name", &format!("{id}-name")])
        .args(["--capabilities", &format!("linux,{LABEL}")])
        .arg("--workspace-root")
        .arg(workspaces)
        .args(["--server-lost-grace", "5s"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HODEI_WORKER_TOKEN", token)
        .env("HODEI_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if capture {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts")
}

/// The server's record of worker `id`, if any.
async fn worker_record(
    admin: &mut AdminServiceClient<tonic::transport::Channel>,
    id: &str,
) -> Option<pb::WorkerInfo> {
    admin
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .expect("workers are listed")
        .into_inner()
        .workers
        .into_iter()
        .find(|w| w.id == id)
}

/// Waits until `ready` holds for worker `id`'s record (`None`: no record).
async fn wait_for_record(
    admin: &mut AdminServiceClient<tonic::transport::Channel>,
    id: &str,
    what: &str,
    ready: impl Fn(Option<&pb::WorkerInfo>) -> bool,
) -> Option<pb::WorkerInfo> {
    for _ in 0..200 {
        let record = worker_record(admin, id).await;
        if ready(record.as_ref()) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "worker {id}: {what} never happened; last record {:?}",
        worker_record(admin, id).await
    );
}

fn is_idle(record: Option<&pb::WorkerInfo>) -> bool {
    record.is_some_and(|w| w.state == "connected" && w.job_id.is_empty())
}

/// Waits for a refused worker process to exit; returns its exit code and
/// its stderr.
async fn refused_exit(mut child: Child) -> (Option<i32>, String) {
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the refused worker exits")
        .expect("the worker's status");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr)
            .await
            .expect("the worker's stderr");
    }
    (status.code(), stderr)
}

fn hello(worker_id: &str, token: &str) -> pb::WorkerMessage {
    pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            worker_id: worker_id.to_owned(),
            token: token.to_owned(),
            name: worker_id.to_owned(),
            capabilities: vec!["linux".to_owned()],
            ephemeral: false,
            protocol_version: 1,
            ..Default::default()
        })),
    }
}

/// Sends one `Hello` on a fresh `Connect` stream; returns the refusal.
async fn refused_hello(server: &TestServer, worker_id: &str, token: &str) -> tonic::Status {
    let mut client = WorkerServiceClient::new(server.channel().await);
    client
        .connect(tokio_stream::iter(vec![hello(worker_id, token)]))
        .await
        .expect_err("the hello is refused")
}

#[test]
fn a_static_worker_runs_jobs_one_after_another_without_ephemeral_workers() {
    run(async {
        let server = start_with(|s| s.static_worker_token = Secret::new(SECRET)).await;
        let mut events = server.handle.subscribe();
        let mut admin = AdminServiceClient::new(server.channel().await);
        let mut jobs = server.jobs().await;
        let workspaces = tempfile::tempdir().expect("a temporary directory");
        let id = unique_id();
        let mut worker = start_static_worker(&server, &id, SECRET, workspaces.path(), false);

        let record = wait_for_record(&mut admin, &id, "registration", is_idle)
            .await
            .expect("a record");
        assert!(!record.ephemeral, "{record:?}");
        assert_eq!(record.name, format!("{id}-name"));
        assert_eq!(record.capabilities, ["hodei-static-test", "linux"]);

        // A label only the static worker offers: no template could serve it.
        let first = submit(
            &mut jobs,
            &format!(
                "pipeline {{ agent {{ label '{LABEL}' }}; stages {{ stage('One') {{ steps {{ sh 'echo first on $WORKER_NAME' }} }} }} }}"
            ),
            Vec::new(),
        )
        .await
        .expect("the first job is accepted");
        let watched = watch(&mut jobs, &first, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|s| s.0),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert!(
            watched.has_line(&format!("first on {id}-name")),
            "{:?}",
            watched.lines
        );

        // Back in the idle pool on the same connection, it takes `agent
        // any` before any template would.
        wait_for_record(&mut admin, &id, "release after the first job", is_idle).await;
        let second = submit(
            &mut jobs,
            "pipeline { agent any; stages { stage('Two') { steps { sh 'echo second on $WORKER_NAME' } } } }",
            Vec::new(),
        )
        .await
        .expect("the second job is accepted");
        let watched = watch(&mut jobs, &second, 0).await;
        assert_eq!(
            watched.status.as_ref().map(|s| s.0),
            Some(pb::JobStatus::Success),
            "{watched:#?}"
        );
        assert!(
            watched.has_line(&format!("second on {id}-name")),
            "{:?}",
            watched.lines
        );
        wait_for_record(&mut admin, &id, "release after the second job", is_idle).await;
        assert!(
            worker.try_wait().expect("the worker's status").is_none(),
            "the static worker stays connected between jobs"
        );
        assert!(
            server.handle.created_workers().is_empty(),
            "no ephemeral worker was created: {:?}",
            server.handle.created_workers()
        );

        // Gone: its record goes too, so no job is given to it.
        worker.start_kill().expect("the worker is killed");
        worker.wait().await.expect("the worker is reaped");
        wait_for_record(&mut admin, &id, "removal", |r| r.is_none()).await;

        let static_id = WorkerId::new(id.clone()).expect("a valid id");
        let mut assigned = Vec::new();
        let mut released = 0;
        let mut connected = 0;
        let mut lost = 0;
        while let Ok(event) = events.try_recv() {
            match event {
                DomainEvent::WorkerRequested { worker, .. } => {
                    panic!("an ephemeral worker {worker} was requested")
                }
                DomainEvent::WorkerConnected { worker } if worker == static_id => connected += 1,
                DomainEvent::WorkerAssigned { worker, job, .. } if worker == static_id => {
                    assigned.push(job.to_string());
                }
                DomainEvent::WorkerReleased { worker, .. } if worker == static_id => released += 1,
                DomainEvent::WorkerLost { worker, .. } if worker == static_id => lost += 1,
                _ => {}
            }
        }
        assert_eq!(assigned, [first, second]);
        assert_eq!((connected, released, lost), (1, 2, 1));
        server.stop().await;
    });
}

#[test]
fn a_wrong_shared_secret_or_an_ephemeral_workers_id_is_refused() {
    run(async {
        let server = start_with(|s| s.static_worker_token = Secret::new(SECRET)).await;
        let mut admin = AdminServiceClient::new(server.channel().await);
        let workspaces = tempfile::tempdir().expect("a temporary directory");
        let id = unique_id();
        let wrong = "not-the-static-s3cret";
        let worker = start_static_worker(&server, &id, wrong, workspaces.path(), true);
        let (code, stderr) = refused_exit(worker).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("wrong token"), "{stderr}");
        assert!(
            !stderr.contains(wrong) && !stderr.contains(SECRET),
            "{stderr}"
        );
        assert!(worker_record(&mut admin, &id).await.is_none());

        let status = refused_hello(&server, &id, "").await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated);

        // The shared secret does not let a worker take the id of an
        // ephemeral worker the server created.
        let mut jobs = server.jobs().await;
        let job = submit(
            &mut jobs,
            "pipeline { agent any; stages { stage('Wait') { steps { sh 'echo started; sleep 60' } } } }",
            Vec::new(),
        )
        .await
        .expect("the job is accepted");
        watch_until_line(&mut jobs, &job, "started").await;
        let created = server.handle.created_workers();
        assert_eq!(created.len(), 1, "{created:?}");
        let ephemeral_id = created[0].worker_id.to_string();
        let status = refused_hello(&server, &ephemeral_id, SECRET).await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(!status.message().contains(SECRET), "{}", status.message());
        let record = worker_record(&mut admin, &ephemeral_id)
            .await
            .expect("the ephemeral worker's record");
        assert!(record.ephemeral, "{record:?}");
        server.stop().await;
    });
}

#[test]
fn without_a_configured_secret_static_workers_are_refused() {
    run(async {
        let server = start().await;
        let workspaces = tempfile::tempdir().expect("a temporary directory");
        let id = unique_id();
        let worker = start_static_worker(&server, &id, SECRET, workspaces.path(), true);
        let (code, stderr) = refused_exit(worker).await;
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("accepts no static workers"), "{stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");

        let status = refused_hello(&server, &id, SECRET).await;
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("static_worker_token"));
        let mut admin = AdminServiceClient::new(server.channel().await);
        assert!(worker_record(&mut admin, &id).await.is_none());
        server.stop().await;
    });
}
