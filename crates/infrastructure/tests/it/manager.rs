//! `EphemeralWorkerManager` composed with the real adapters: the
//! local-process orchestrator (a shell script stands in for the worker),
//! in-memory repositories, the broadcast publisher, the system clock and the
//! random id generator. Only the gateway is a stand-in, since connecting
//! needs the gRPC server.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hodei_application::manager::{EphemeralWorkerManager, ManagerConfig, ManagerPorts};
use hodei_application::orchestrator::{BackendState, ServerEndpoint, WorkerOrchestrator};
use hodei_application::provider::{ProvisionError, SegmentRequest, WorkerProvider};
use hodei_application::worker_link::{
    Assignment, LinkError, LogSink, StepOutcome, StepRequest, WorkerGateway, WorkerLink,
};
use hodei_application::workers::WorkerRepository;
use hodei_domain::pipeline::{Agent, AgentKind, Pos, Segment, SegmentId, SegmentOwner};
use hodei_domain::{
    CpuQuantity, DomainEvent, JobId, MemoryQuantity, ResourceRequirements, TemplateId, WorkerId,
    WorkerTemplate,
};
use hodei_infrastructure::local::{LocalConfig, LocalOrchestrator};
use hodei_infrastructure::{
    BroadcastEventPublisher, InMemoryWorkerRepository, InMemoryWorkerTemplateRepository,
    RandomIdGenerator, SystemClock,
};
use tokio::sync::broadcast;

#[derive(Debug)]
struct Link(WorkerId);

#[async_trait]
impl WorkerLink for Link {
    fn worker_id(&self) -> &WorkerId {
        &self.0
    }
    async fn assign(&self, _assignment: Assignment) -> Result<(), LinkError> {
        Ok(())
    }
    async fn run_step(
        &self,
        _request: StepRequest,
        _sink: Arc<dyn LogSink>,
    ) -> Result<StepOutcome, LinkError> {
        Ok(StepOutcome::Success)
    }
    async fn cancel_step(&self, _step_id: &str, _reason: &str) -> Result<(), LinkError> {
        Ok(())
    }
    async fn shutdown(&self, _reason: &str) -> Result<(), LinkError> {
        Ok(())
    }
}

/// Connects every worker at once, or none.
struct Gateway {
    connects: bool,
}

#[async_trait]
impl WorkerGateway for Gateway {
    async fn wait_connected(
        &self,
        worker: &WorkerId,
        _deadline: Duration,
    ) -> Result<Arc<dyn WorkerLink>, LinkError> {
        if self.connects {
            Ok(Arc::new(Link(worker.clone())))
        } else {
            std::future::pending().await
        }
    }
}

struct Setup {
    manager: EphemeralWorkerManager,
    orchestrator: Arc<LocalOrchestrator>,
    workers: Arc<InMemoryWorkerRepository>,
    events: broadcast::Receiver<DomainEvent>,
}

fn setup(dir: &Path, script: &str, connects: bool) -> Setup {
    let path = dir.join("worker.sh");
    std::fs::write(&path, script).unwrap();
    let mut local = LocalConfig::new("/bin/sh");
    local.worker_args = vec![path.display().to_string()];
    local.workspace_root = dir.join("ws");
    local.stop_grace = Duration::from_secs(2);
    let orchestrator = Arc::new(LocalOrchestrator::new(local));
    let template = WorkerTemplate::new(
        TemplateId::new("local").unwrap(),
        "local",
        ResourceRequirements::new(
            CpuQuantity::from_millis(500),
            MemoryQuantity::from_bytes(1 << 30),
        ),
    )
    .unwrap()
    .with_capabilities(["linux"])
    .unwrap();
    let workers = Arc::new(InMemoryWorkerRepository::new());
    let publisher = Arc::new(BroadcastEventPublisher::default());
    let events = publisher.subscribe();
    let mut config = ManagerConfig::new(
        "srv-it",
        ServerEndpoint {
            host: "127.0.0.1".into(),
            port: 1,
        },
    );
    config.provisioning_deadline = Duration::from_secs(30);
    config.state_poll_interval = Duration::from_millis(20);
    let ports = ManagerPorts {
        orchestrator: orchestrator.clone(),
        gateway: Arc::new(Gateway { connects }),
        templates: Arc::new(InMemoryWorkerTemplateRepository::from_templates([template])),
        workers: workers.clone(),
        events: publisher,
        clock: Arc::new(SystemClock::new()),
        ids: Arc::new(RandomIdGenerator::new()),
    };
    Setup {
        manager: EphemeralWorkerManager::new(config, ports),
        orchestrator,
        workers,
        events,
    }
}

fn request() -> SegmentRequest {
    SegmentRequest {
        job_id: JobId::new("job-1").unwrap(),
        job_name: "hello".into(),
        build_number: 1,
        segment: Segment {
            id: SegmentId(0),
            agent: Agent {
                pos: Pos::default(),
                kind: AgentKind::Any,
            },
            owner: SegmentOwner::Pipeline,
            parent: None,
            parallel_branch: None,
            stages: vec!["Hello".into()],
        },
        source: Arc::from(Vec::new()),
        skip_checkout: false,
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
}

fn names(events: &mut broadcast::Receiver<DomainEvent>) -> Vec<&'static str> {
    let mut names = Vec::new();
    while let Ok(event) = events.try_recv() {
        names.push(event.name());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_before_connecting_fails_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(
        dir.path(),
        "echo 'fatal: cannot parse HODEI_WORKER_TOKEN' >&2\nexit 3\n",
        false,
    );
    let err = s.manager.acquire(request()).await.unwrap_err();
    let ProvisionError::Failed { worker, reason } = &err else {
        panic!("expected a provisioning failure, got {err:?}");
    };
    assert!(reason.contains("exit status 3"), "{reason}");
    assert!(
        reason.contains("fatal: cannot parse HODEI_WORKER_TOKEN"),
        "{reason}"
    );
    assert_eq!(
        s.orchestrator.worker_state(worker).await.unwrap(),
        BackendState::NotFound
    );
    assert!(s.workers.list().await.unwrap().is_empty());
    assert_eq!(
        names(&mut s.events),
        [
            "worker_requested",
            "worker_provisioning",
            "worker_failed",
            "worker_destroyed"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_kills_the_worker_process_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(dir.path(), "exec sleep 300\n", true);
    let link = s.manager.acquire(request()).await.unwrap();
    let id = link.worker_id().clone();
    let pid = s.orchestrator.pid(&id).expect("worker process tracked");
    assert!(process_exists(pid));
    let record = s.workers.find_by_id(&id).await.unwrap().unwrap();
    assert_eq!(record.state().to_string(), "busy");

    s.manager.release(&id, "the pipeline has finished").await;
    assert!(!process_exists(pid), "worker process {pid} still runs");
    assert_eq!(s.workers.find_by_id(&id).await.unwrap(), None);
    assert_eq!(
        names(&mut s.events),
        [
            "worker_requested",
            "worker_provisioning",
            "worker_connected",
            "worker_assigned",
            "worker_destroyed"
        ]
    );
}
