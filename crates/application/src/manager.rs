//! [`EphemeralWorkerManager`]: the [`WorkerProvider`] that gives each agent
//! segment a worker and takes it away again.
//!
//! **Acquire** a worker for a segment:
//!
//! 1. For `agent any` and `agent { label '...' }`: an idle static worker
//!    whose labels satisfy the expression, if one is connected.
//! 2. Otherwise the best template ([`select`]): by label expression; for
//!    `template 'id'` exactly that template; for `docker 'image'` a template
//!    that runs that image, or on the `docker` backend a template made for
//!    the image (no capabilities, limits only from the agent's `args`); for
//!    `kubernetes { inheritFrom 'id' }` that template, and with a pod
//!    `yaml` (kubernetes backend only; others refuse it) that template or,
//!    without `inheritFrom`, the one `agent any` would get, the yaml
//!    travelling in [`WorkerSpec::pod_yaml`] to be merged by the backend. No template: [`ProvisionError::NoMatch`] listing every
//!    template with its reason (unless a busy static worker could take the
//!    segment later; then the segment waits for it).
//! 3. Wait (never fail) for a slot under the template's
//!    `max_concurrent_jobs` and the server's global cap
//!    ([`ManagerConfig::max_workers`]), publishing
//!    [`DomainEvent::WorkerWaiting`].
//! 4. Record a fresh worker with a one-time token, ask the backend to create
//!    it, then wait for it to connect while polling the backend: a worker
//!    that exits or fails before connecting fails the segment at once with
//!    the backend's reason; the provisioning deadline fails it with
//!    [`ProvisionError::DeadlineExceeded`]. Every failure deletes the backend
//!    object; so does dropping the `acquire` future (a cancelled job).
//! 5. Assign the segment and start the lifetime timer (the template's
//!    `timeout_minutes`), which releases the worker if it still lives then.
//!
//! **Release**: tell the worker its segment is over and delete its backend
//! object right away (ephemeral), or put it back in the idle pool (static).
//! A failing delete is logged and published as
//! [`DomainEvent::WorkerDeleteFailed`], never returned: the orphan collector
//! deletes what is left.
//!
//! **Orphans**: [`EphemeralWorkerManager::collect_orphans`] deletes the
//! backend workers carrying this server's id that it does not know (not
//! handed out, not recorded in a live state), at start and periodically.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use hodei_domain::pipeline::AgentKind;
use hodei_domain::{
    CpuQuantity, DockerArgs, DomainEvent, JobId, LabelExpr, MemoryQuantity, ResourceRequirements,
    TemplateId, Worker, WorkerId, WorkerRequirements, WorkerState, WorkerTemplate, select,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::clock::Clock;
use crate::events::EventPublisher;
use crate::id_generator::IdGenerator;
use crate::orchestrator::{OrchestratorError, ServerEndpoint, WorkerOrchestrator, WorkerSpec};
use crate::provider::{ProvisionError, SegmentRequest, WorkerProvider};
use crate::templates::WorkerTemplateRepository;
use crate::worker_link::{
    Assignment, LinkError, LogSink, StepOutcome, StepRequest, WorkerGateway, WorkerLink,
};
use crate::workers::{WorkerRepository, WorkerRepositoryError};

/// How the manager behaves. Build it with [`ManagerConfig::new`] and change
/// the fields you need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// How long a new worker may take to connect (default 120 s).
    pub provisioning_deadline: Duration,
    /// How often the backend is asked about a worker that has not connected
    /// yet, so one that died fails fast (default 200 ms).
    pub state_poll_interval: Duration,
    /// How long an idle static worker, recorded as connected, may take to
    /// be found by the gateway before it is marked lost (default 5 s).
    pub static_connect_timeout: Duration,
    /// How long a worker may take to acknowledge the end of its segment
    /// before its backend object is deleted anyway (default 5 s).
    pub shutdown_timeout: Duration,
    /// Ephemeral workers alive at once, all templates together (default 64;
    /// 0 counts as 1).
    pub max_workers: usize,
    /// This server's id, put on every backend object
    /// (`hodei.dev/server-id`).
    pub server_id: String,
    /// Where workers connect, as seen from the worker.
    pub server: ServerEndpoint,
}

impl ManagerConfig {
    /// The defaults, for a server with id `server_id` that workers reach at
    /// `server`.
    pub fn new(server_id: impl Into<String>, server: ServerEndpoint) -> Self {
        ManagerConfig {
            provisioning_deadline: Duration::from_secs(120),
            state_poll_interval: Duration::from_millis(200),
            static_connect_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            max_workers: 64,
            server_id: server_id.into(),
            server,
        }
    }
}

/// The ports the manager drives.
#[derive(Clone)]
pub struct ManagerPorts {
    /// Creates and deletes ephemeral workers.
    pub orchestrator: Arc<dyn WorkerOrchestrator>,
    /// Where connected workers are found.
    pub gateway: Arc<dyn WorkerGateway>,
    /// Worker templates.
    pub templates: Arc<dyn WorkerTemplateRepository>,
    /// Worker records (ephemeral and static).
    pub workers: Arc<dyn WorkerRepository>,
    /// Where worker events go.
    pub events: Arc<dyn EventPublisher>,
    /// Time and timers.
    pub clock: Arc<dyn Clock>,
    /// Worker ids and tokens.
    pub ids: Arc<dyn IdGenerator>,
}

impl fmt::Debug for ManagerPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerPorts")
            .field("orchestrator", &self.orchestrator.backend())
            .finish_non_exhaustive()
    }
}

/// Gives agent segments workers: idle static ones first, else ephemeral ones
/// created from templates. See the module documentation.
#[derive(Debug, Clone)]
pub struct EphemeralWorkerManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: ManagerConfig,
    ports: ManagerPorts,
    global: Arc<Semaphore>,
    template_slots: Mutex<HashMap<TemplateId, (u32, Arc<Semaphore>)>>,
    active: Mutex<HashMap<WorkerId, Active>>,
    static_claim: tokio::sync::Mutex<()>,
    static_freed: Notify,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralWorkerManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A worker the manager handed out and has not taken back yet.
struct Active {
    link: Arc<dyn WorkerLink>,
    job: JobId,
    slot: Slot,
    timer: Option<AbortHandle>,
}

enum Slot {
    /// Holds its template and global slots until it is deleted.
    Ephemeral(Option<Permits>),
    Static,
}

struct Permits {
    _template: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// What a segment's agent asks for.
enum Need {
    /// Any worker, or one whose labels satisfy the expression: a static
    /// worker may serve.
    Labels(Option<LabelExpr>),
    /// Only a template.
    Template(Result<WorkerTemplate, ProvisionError>),
}

/// Why provisioning one worker failed.
enum ProvisionFailure {
    Failed(String),
    Deadline,
}

impl EphemeralWorkerManager {
    /// A manager driving `ports` as `config` says.
    pub fn new(config: ManagerConfig, ports: ManagerPorts) -> Self {
        let global = Arc::new(Semaphore::new(config.max_workers.max(1)));
        EphemeralWorkerManager {
            inner: Arc::new(Inner {
                config,
                ports,
                global,
                template_slots: Mutex::new(HashMap::new()),
                active: Mutex::new(HashMap::new()),
                static_claim: tokio::sync::Mutex::new(()),
                static_freed: Notify::new(),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ManagerConfig {
        &self.inner.config
    }

    /// Workers handed out and not released yet.
    pub fn active_workers(&self) -> Vec<WorkerId> {
        let mut ids: Vec<WorkerId> = lock(&self.inner.active).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Deletes the backend workers of this server (by
    /// [`ManagerConfig::server_id`]) that it does not know: neither handed
    /// out nor recorded in a live state. Run it at start and periodically
    /// (see [`EphemeralWorkerManager::run_orphan_collector`]). Workers whose
    /// deletion failed earlier (recorded as failed) are deleted again here.
    /// Returns how many were deleted; failures are logged and published as
    /// [`DomainEvent::WorkerDeleteFailed`].
    ///
    /// # Errors
    /// The backend's error when it cannot list its workers.
    pub async fn collect_orphans(&self) -> Result<usize, OrchestratorError> {
        self.inner.collect_orphans().await
    }

    /// Calls [`EphemeralWorkerManager::collect_orphans`] now and then every
    /// `interval`, forever; spawn it as a task.
    pub async fn run_orphan_collector(&self, interval: Duration) {
        loop {
            if let Err(e) = self.inner.collect_orphans().await {
                tracing::warn!(error = %e, "cannot list backend workers for orphan collection");
            }
            self.inner.ports.clock.sleep(interval).await;
        }
    }

    /// Takes over from a previous run of the server with the same worker
    /// repository: every ephemeral worker it recorded is deleted in the
    /// backend (its segment ended with that server) and every record is
    /// forgotten; static workers register again when they reconnect. A
    /// deletion that fails is logged and published as
    /// [`DomainEvent::WorkerDeleteFailed`]; the orphan collector, which
    /// deletes backend workers this server does not know, tries again.
    /// Call once at start, before workers can connect. Returns the
    /// ephemeral workers deleted.
    ///
    /// # Errors
    /// The repository's error when the records cannot be read.
    pub async fn forget_previous_workers(&self) -> Result<Vec<WorkerId>, WorkerRepositoryError> {
        let ports = &self.inner.ports;
        let mut deleted = Vec::new();
        for worker in ports.workers.list().await? {
            let id = worker.id().clone();
            if worker.is_ephemeral() {
                tracing::info!(worker = %id, backend_id = ?worker.backend_id(), "deleting a worker of the previous server run");
                match ports.orchestrator.delete_worker(&id).await {
                    Ok(()) => {
                        deleted.push(id.clone());
                        self.inner
                            .publish(DomainEvent::WorkerDestroyed {
                                worker: id.clone(),
                                reason: "the server restarted".to_owned(),
                            })
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(worker = %id, error = %e, "cannot delete a worker of the previous server run");
                        self.inner
                            .publish(DomainEvent::WorkerDeleteFailed {
                                worker: id.clone(),
                                error: e.to_string(),
                            })
                            .await;
                    }
                }
            }
            ports.workers.delete(&id).await?;
        }
        Ok(deleted)
    }

    /// Stops handing out workers (waiting segments get
    /// [`ProvisionError::Cancelled`]) and releases every active worker, for
    /// a server that shuts down.
    pub async fn shutdown(&self, reason: &str) {
        self.inner.global.close();
        for (_, semaphore) in lock(&self.inner.template_slots).values() {
            semaphore.close();
        }
        for id in self.active_workers() {
            self.inner.release(&id, reason).await;
        }
    }
}

#[async_trait]
impl WorkerProvider for EphemeralWorkerManager {
    async fn acquire(
        &self,
        request: SegmentRequest,
    ) -> Result<Arc<dyn WorkerLink>, ProvisionError> {
        self.inner.acquire(request).await
    }

    async fn check(&self, agent: &AgentKind) -> Result<(), ProvisionError> {
        self.inner.check(agent).await
    }

    async fn release(&self, worker: &WorkerId, reason: &str) {
        self.inner.release(worker, reason).await;
    }
}

/// An ephemeral worker's link, which knows the template it came from.
#[derive(Debug)]
struct TemplatedLink {
    link: Arc<dyn WorkerLink>,
    template: TemplateId,
}

#[async_trait]
impl WorkerLink for TemplatedLink {
    fn worker_id(&self) -> &WorkerId {
        self.link.worker_id()
    }

    fn template_id(&self) -> Option<&TemplateId> {
        Some(&self.template)
    }

    async fn assign(&self, assignment: Assignment) -> Result<(), LinkError> {
        self.link.assign(assignment).await
    }

    async fn run_step(
        &self,
        request: StepRequest,
        sink: Arc<dyn LogSink>,
    ) -> Result<StepOutcome, LinkError> {
        self.link.run_step(request, sink).await
    }

    async fn cancel_step(&self, step_id: &str, reason: &str) -> Result<(), LinkError> {
        self.link.cancel_step(step_id, reason).await
    }

    async fn shutdown(&self, reason: &str) -> Result<(), LinkError> {
        self.link.shutdown(reason).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn assignment(request: &SegmentRequest) -> Assignment {
    Assignment {
        job_id: request.job_id.clone(),
        job_name: request.job_name.clone(),
        build_number: request.build_number,
        segment_id: request.segment.id.to_string(),
        source: request.source.clone(),
        skip_checkout: request.skip_checkout,
    }
}

impl Inner {
    async fn acquire(
        self: &Arc<Self>,
        request: SegmentRequest,
    ) -> Result<Arc<dyn WorkerLink>, ProvisionError> {
        let agent = request.segment.agent.kind.clone();
        match self.need(&agent).await {
            Need::Template(template) => self.provision(&request, template?).await,
            Need::Labels(expr) => {
                if let Some(link) = self.try_static(&request, expr.as_ref()).await {
                    return Ok(link);
                }
                let mut requirements = WorkerRequirements::new();
                if let Some(expr) = &expr {
                    requirements = requirements.with_label(expr.clone());
                }
                match self.best_template(&agent, &requirements).await {
                    Ok(template) => self.provision(&request, template).await,
                    Err(no_match) => self.wait_for_static(&request, expr, no_match).await,
                }
            }
        }
    }

    /// Whether `agent` can be served: by a template, or for label agents by
    /// a registered static worker that offers the labels.
    async fn check(&self, agent: &AgentKind) -> Result<(), ProvisionError> {
        match self.need(agent).await {
            Need::Template(template) => template.map(|_| ()),
            Need::Labels(expr) => {
                let mut requirements = WorkerRequirements::new();
                if let Some(expr) = &expr {
                    requirements = requirements.with_label(expr.clone());
                }
                let Err(no_match) = self.best_template(agent, &requirements).await else {
                    return Ok(());
                };
                let any_static = match self.ports.workers.list().await {
                    Ok(all) => all.iter().any(|w| {
                        !w.is_ephemeral() && !w.state().is_ended() && w.offers(expr.as_ref())
                    }),
                    Err(_) => false,
                };
                if any_static { Ok(()) } else { Err(no_match) }
            }
        }
    }

    /// Turns an agent into what it needs.
    async fn need(&self, agent: &AgentKind) -> Need {
        let no_match = |reasons: String| ProvisionError::NoMatch {
            agent: agent.to_string(),
            reasons,
        };
        match agent {
            AgentKind::Any | AgentKind::None => Need::Labels(None),
            AgentKind::Label { expr, .. } => Need::Labels(expr.clone()),
            AgentKind::Template(id) => Need::Template(self.template_by_id(agent, id).await),
            AgentKind::Docker { image, args } => {
                if let Some(Err(e)) = args.as_deref().map(DockerArgs::parse) {
                    return Need::Template(Err(no_match(format!("invalid docker args: {e}"))));
                }
                let templates = match self.all_templates(agent).await {
                    Ok(t) => t,
                    Err(e) => return Need::Template(Err(e)),
                };
                let runs_image: Vec<&WorkerTemplate> =
                    templates.iter().filter(|t| t.image() == image).collect();
                let requirements = WorkerRequirements::new();
                let selection = select(runs_image, &requirements);
                Need::Template(match selection.best() {
                    Some(best) => Ok(best.template().clone()),
                    None if self.ports.orchestrator.backend() == "docker" => {
                        image_template(image, self.config.max_workers)
                            .map_err(|e| no_match(format!("image \"{image}\": {e}")))
                    }
                    None => Err(no_match(format!(
                        "a docker agent needs a template that runs image \"{image}\" (or the docker backend); {}",
                        describe_images(&templates)
                    ))),
                })
            }
            AgentKind::Kubernetes { yaml, inherit_from } => {
                let backend = self.ports.orchestrator.backend();
                if yaml.is_some() && backend != "kubernetes" {
                    return Need::Template(Err(no_match(format!(
                        "a kubernetes agent's pod yaml needs the kubernetes backend (this server \
                         runs the {backend} backend); name a worker template with inheritFrom alone instead"
                    ))));
                }
                Need::Template(match inherit_from {
                    Some(name) => match TemplateId::new(name.as_str()) {
                        Ok(id) => self.template_by_id(agent, &id).await,
                        Err(e) => Err(no_match(format!("inheritFrom: {e}"))),
                    },
                    None if yaml.is_some() => {
                        self.best_template(agent, &WorkerRequirements::new()).await
                    }
                    None => Err(no_match(
                        "a kubernetes agent needs inheritFrom naming a worker template".to_owned(),
                    )),
                })
            }
        }
    }

    async fn all_templates(
        &self,
        agent: &AgentKind,
    ) -> Result<Vec<WorkerTemplate>, ProvisionError> {
        self.ports
            .templates
            .find_all()
            .await
            .map_err(|e| ProvisionError::NoMatch {
                agent: agent.to_string(),
                reasons: format!("could not read the worker templates: {e}"),
            })
    }

    async fn template_by_id(
        &self,
        agent: &AgentKind,
        id: &TemplateId,
    ) -> Result<WorkerTemplate, ProvisionError> {
        let found =
            self.ports
                .templates
                .find_by_id(id)
                .await
                .map_err(|e| ProvisionError::NoMatch {
                    agent: agent.to_string(),
                    reasons: format!("could not read the worker templates: {e}"),
                })?;
        if let Some(template) = found {
            return Ok(template);
        }
        let templates = self.all_templates(agent).await?;
        let known: Vec<&str> = templates.iter().map(|t| t.id().as_str()).collect();
        Err(ProvisionError::NoMatch {
            agent: agent.to_string(),
            reasons: if known.is_empty() {
                format!("no template with id \"{id}\"; no worker templates are configured")
            } else {
                format!(
                    "no template with id \"{id}\"; known templates: {}",
                    known.join(", ")
                )
            },
        })
    }

    async fn best_template(
        &self,
        agent: &AgentKind,
        requirements: &WorkerRequirements,
    ) -> Result<WorkerTemplate, ProvisionError> {
        let templates = self.all_templates(agent).await?;
        let selection = select(&templates, requirements);
        if let Some(best) = selection.best() {
            return Ok(best.template().clone());
        }
        let reasons = if templates.is_empty() {
            "no worker templates are configured".to_owned()
        } else {
            selection
                .rejected()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(ProvisionError::NoMatch {
            agent: agent.to_string(),
            reasons,
        })
    }

    // ---- static workers ------------------------------------------------

    /// Claims an idle static worker whose labels satisfy `expr`, connects to
    /// it and assigns the segment. Workers that cannot be reached are marked
    /// lost and skipped.
    async fn try_static(
        self: &Arc<Self>,
        request: &SegmentRequest,
        expr: Option<&LabelExpr>,
    ) -> Option<Arc<dyn WorkerLink>> {
        loop {
            let worker = self.claim_static(request, expr).await?;
            let id = worker.id().clone();
            // Dropping this future (a cancelled job) puts the worker back
            // in the idle pool.
            let mut guard = StaticClaimGuard {
                inner: Arc::downgrade(self),
                worker: Some(worker),
            };
            let connected = self
                .ports
                .gateway
                .wait_connected(&id, self.config.static_connect_timeout)
                .await;
            let result = match connected {
                Ok(link) => link.assign(assignment(request)).await.map(|()| link),
                Err(e) => Err(e),
            };
            let Some(mut worker) = guard.worker.take() else {
                continue;
            };
            match result {
                Ok(link) => {
                    self.publish(DomainEvent::WorkerAssigned {
                        worker: id.clone(),
                        job: request.job_id.clone(),
                        segment: request.segment.id.to_string(),
                    })
                    .await;
                    lock(&self.active).insert(
                        id,
                        Active {
                            link: link.clone(),
                            job: request.job_id.clone(),
                            slot: Slot::Static,
                            timer: None,
                        },
                    );
                    return Some(link);
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::warn!(worker = %id, %reason, "static worker unreachable; trying another");
                    self.mark(
                        &mut worker,
                        WorkerState::Lost {
                            reason: reason.clone(),
                        },
                    )
                    .await;
                    self.publish(DomainEvent::WorkerLost { worker: id, reason })
                        .await;
                }
            }
        }
    }

    /// Picks the first idle static worker that offers `expr` and marks it
    /// busy with the request's job, atomically with respect to other
    /// segments of this server.
    async fn claim_static(
        &self,
        request: &SegmentRequest,
        expr: Option<&LabelExpr>,
    ) -> Option<Worker> {
        let _claim = self.static_claim.lock().await;
        let idle = match self.ports.workers.find_idle_static().await {
            Ok(idle) => idle,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list idle static workers");
                return None;
            }
        };
        for mut worker in idle.into_iter().filter(|w| w.offers(expr)) {
            if worker
                .assign(request.job_id.clone(), self.ports.clock.now())
                .is_err()
            {
                continue;
            }
            if let Err(e) = self.ports.workers.save(worker.clone()).await {
                tracing::warn!(worker = %worker.id(), error = %e, "cannot record static worker as busy");
                continue;
            }
            return Some(worker);
        }
        None
    }

    /// No template fits: if a static worker that is busy now offers the
    /// labels, waits for it; otherwise returns `no_match`.
    async fn wait_for_static(
        self: &Arc<Self>,
        request: &SegmentRequest,
        expr: Option<LabelExpr>,
        no_match: ProvisionError,
    ) -> Result<Arc<dyn WorkerLink>, ProvisionError> {
        loop {
            let freed = self.static_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(link) = self.try_static(request, expr.as_ref()).await {
                return Ok(link);
            }
            let any_static = match self.ports.workers.list().await {
                Ok(all) => all
                    .iter()
                    .any(|w| !w.is_ephemeral() && !w.state().is_ended() && w.offers(expr.as_ref())),
                Err(_) => false,
            };
            if !any_static {
                return Err(no_match);
            }
            tokio::select! {
                () = freed => {}
                () = self.ports.clock.sleep(self.config.state_poll_interval) => {}
            }
        }
    }

    // ---- ephemeral workers ----------------------------------------------

    fn template_semaphore(&self, template: &WorkerTemplate) -> Arc<Semaphore> {
        let cap = template.max_concurrent_jobs();
        let mut slots = lock(&self.template_slots);
        match slots.get(template.id()) {
            Some((known_cap, semaphore)) if *known_cap == cap => semaphore.clone(),
            _ => {
                let semaphore = Arc::new(Semaphore::new(cap as usize));
                slots.insert(template.id().clone(), (cap, semaphore.clone()));
                semaphore
            }
        }
    }

    /// Waits for a slot under the template's cap, then under the global cap
    /// (in this order, so a segment waiting for its template holds no
    /// global slot).
    async fn slots(
        &self,
        job: &JobId,
        template: &WorkerTemplate,
    ) -> Result<Permits, ProvisionError> {
        let per_template = self.template_semaphore(template);
        let template_reason = format!(
            "template {} allows {} workers at once",
            template.id(),
            template.max_concurrent_jobs()
        );
        let template_permit = self
            .permit(per_template, job, template, template_reason)
            .await?;
        let global_reason = format!(
            "the server allows {} workers at once",
            self.config.max_workers.max(1)
        );
        let global_permit = self
            .permit(self.global.clone(), job, template, global_reason)
            .await?;
        Ok(Permits {
            _template: template_permit,
            _global: global_permit,
        })
    }

    async fn permit(
        &self,
        semaphore: Arc<Semaphore>,
        job: &JobId,
        template: &WorkerTemplate,
        reason: String,
    ) -> Result<OwnedSemaphorePermit, ProvisionError> {
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(permit);
        }
        tracing::info!(job = %job, template = %template.id(), %reason, "waiting for a worker slot");
        self.publish(DomainEvent::WorkerWaiting {
            job: job.clone(),
            template: template.id().clone(),
            reason,
        })
        .await;
        semaphore
            .acquire_owned()
            .await
            .map_err(|_| ProvisionError::Cancelled)
    }

    async fn provision(
        self: &Arc<Self>,
        request: &SegmentRequest,
        template: WorkerTemplate,
    ) -> Result<Arc<dyn WorkerLink>, ProvisionError> {
        let permits = self.slots(&request.job_id, &template).await?;
        let id = self.ports.ids.new_worker_id();
        let token = self.ports.ids.new_token();
        let short: String = id.as_str().chars().take(8).collect();
        let name = format!("hodei-{}-{short}", template.id());
        let mut worker = Worker::ephemeral(
            id.clone(),
            name.clone(),
            template.id().clone(),
            request.job_id.clone(),
            request.segment.id.to_string(),
            self.ports.clock.now(),
        );
        self.save(&worker).await;
        self.publish(DomainEvent::WorkerRequested {
            worker: id.clone(),
            job: request.job_id.clone(),
            template: template.id().clone(),
        })
        .await;
        // From here on, dropping this future (a cancelled job) deletes the
        // worker in the background.
        let mut guard = ProvisionGuard {
            inner: Arc::downgrade(self),
            worker: Some(worker.clone()),
            permits: Some(permits),
        };
        tracing::info!(worker = %id, job = %request.job_id, template = %template.id(), "creating worker");
        let spec = WorkerSpec {
            worker_id: id.clone(),
            worker_name: name,
            job_id: request.job_id.clone(),
            template: template.clone(),
            server: self.config.server.clone(),
            token,
            server_id: self.config.server_id.clone(),
            extra_labels: Default::default(),
            extra_env: Default::default(),
            docker_args: docker_args(&request.segment.agent.kind),
            pod_yaml: pod_yaml(&request.segment.agent.kind),
        };
        match self.ports.orchestrator.create_worker(spec).await {
            Ok(handle) => {
                worker.set_backend_id(handle.backend_id.clone(), self.ports.clock.now());
                self.mark(&mut worker, WorkerState::Provisioning).await;
                guard.update(&worker);
                self.publish(DomainEvent::WorkerProvisioning {
                    worker: id.clone(),
                    backend_id: handle.backend_id,
                })
                .await;
            }
            Err(e) => {
                let reason = match e {
                    OrchestratorError::Provisioning { reason, .. } => reason,
                    other => other.to_string(),
                };
                guard.disarm();
                self.fail(worker, &request.job_id, reason.clone()).await;
                return Err(ProvisionError::Failed { worker: id, reason });
            }
        }
        let link = match self.wait_connected(&id).await {
            Ok(link) => link,
            Err(failure) => {
                guard.disarm();
                let (error, reason) = match failure {
                    ProvisionFailure::Failed(reason) => (
                        ProvisionError::Failed {
                            worker: id.clone(),
                            reason: reason.clone(),
                        },
                        reason,
                    ),
                    ProvisionFailure::Deadline => {
                        let error = ProvisionError::DeadlineExceeded {
                            worker: id.clone(),
                            seconds: self.config.provisioning_deadline.as_secs(),
                        };
                        let reason = error.to_string();
                        (error, reason)
                    }
                };
                self.fail(worker, &request.job_id, reason).await;
                return Err(error);
            }
        };
        self.mark(&mut worker, WorkerState::Connected).await;
        guard.update(&worker);
        self.publish(DomainEvent::WorkerConnected { worker: id.clone() })
            .await;
        if let Err(e) = link.assign(assignment(request)).await {
            guard.disarm();
            let reason = format!("could not assign the segment: {e}");
            self.fail(worker, &request.job_id, reason.clone()).await;
            return Err(ProvisionError::Failed { worker: id, reason });
        }
        if let Err(e) = worker.assign(request.job_id.clone(), self.ports.clock.now()) {
            tracing::error!(worker = %id, error = %e, "worker record out of step");
        }
        self.save(&worker).await;
        self.publish(DomainEvent::WorkerAssigned {
            worker: id.clone(),
            job: request.job_id.clone(),
            segment: request.segment.id.to_string(),
        })
        .await;
        let permits = guard.disarm();
        let timer = self.lifetime_timer(id.clone(), template.timeout_minutes());
        let active = Active {
            link: link.clone(),
            job: request.job_id.clone(),
            slot: Slot::Ephemeral(permits),
            timer: Some(timer),
        };
        lock(&self.active).insert(id, active);
        Ok(Arc::new(TemplatedLink {
            link,
            template: template.id().clone(),
        }))
    }

    /// Waits for the worker to connect, while watching the backend for an
    /// early death, for at most the provisioning deadline.
    async fn wait_connected(&self, id: &WorkerId) -> Result<Arc<dyn WorkerLink>, ProvisionFailure> {
        let deadline = self.config.provisioning_deadline;
        let outcome = tokio::select! {
            biased;
            connected = self.ports.gateway.wait_connected(id, deadline) => match connected {
                Ok(link) => Ok(link),
                Err(LinkError::NotConnected { .. }) => Err(ProvisionFailure::Deadline),
                Err(LinkError::Lost { reason, .. }) => Err(ProvisionFailure::Failed(reason)),
            },
            reason = self.watch_backend(id) => Err(ProvisionFailure::Failed(reason)),
            () = self.ports.clock.sleep(deadline) => Err(ProvisionFailure::Deadline),
        };
        match outcome {
            // At the deadline the backend may know why (a pod unschedulable
            // all this time): its reason says more than the deadline.
            Err(ProvisionFailure::Deadline) => match self.ports.orchestrator.worker_state(id).await
            {
                Ok(state) => Err(state
                    .failure_reason()
                    .map_or(ProvisionFailure::Deadline, ProvisionFailure::Failed)),
                Err(_) => Err(ProvisionFailure::Deadline),
            },
            other => other,
        }
    }

    /// Returns the backend's reason once the worker can no longer connect.
    async fn watch_backend(&self, id: &WorkerId) -> String {
        loop {
            self.ports
                .clock
                .sleep(self.config.state_poll_interval)
                .await;
            match self.ports.orchestrator.worker_state(id).await {
                Ok(state) => {
                    if let Some(reason) = state.failure_reason() {
                        return reason;
                    }
                }
                Err(e) => tracing::debug!(worker = %id, error = %e, "backend state unavailable"),
            }
        }
    }

    /// A worker that never served: marks it failed, deletes its backend
    /// object and publishes what happened.
    async fn fail(&self, mut worker: Worker, job: &JobId, reason: String) {
        let id = worker.id().clone();
        tracing::warn!(worker = %id, job = %job, %reason, "worker could not be provisioned");
        self.mark(
            &mut worker,
            WorkerState::Failed {
                reason: reason.clone(),
            },
        )
        .await;
        self.publish(DomainEvent::WorkerFailed {
            worker: id,
            job: Some(job.clone()),
            reason: reason.clone(),
        })
        .await;
        self.destroy(worker, &reason).await;
    }

    /// Deletes the worker's backend object; on success forgets the record,
    /// otherwise keeps it as failed for the orphan collector.
    async fn destroy(&self, mut worker: Worker, reason: &str) {
        let id = worker.id().clone();
        match self.ports.orchestrator.delete_worker(&id).await {
            Ok(()) => {
                if let Err(e) = self.ports.workers.delete(&id).await {
                    tracing::warn!(worker = %id, error = %e, "cannot forget worker record");
                }
                tracing::info!(worker = %id, %reason, "worker destroyed");
                self.publish(DomainEvent::WorkerDestroyed {
                    worker: id,
                    reason: reason.to_owned(),
                })
                .await;
            }
            Err(e) => {
                let error = e.to_string();
                tracing::error!(worker = %id, %error, "deleting worker failed; left to the orphan collector");
                self.mark(
                    &mut worker,
                    WorkerState::Failed {
                        reason: format!("deleting its backend object failed: {error}"),
                    },
                )
                .await;
                self.publish(DomainEvent::WorkerDeleteFailed { worker: id, error })
                    .await;
            }
        }
    }

    fn lifetime_timer(self: &Arc<Self>, id: WorkerId, minutes: u32) -> AbortHandle {
        let weak = Arc::downgrade(self);
        let clock = self.ports.clock.clone();
        let lifetime = Duration::from_secs(u64::from(minutes) * 60);
        // One of these waits for each live worker, almost always to be
        // aborted: the teardown is boxed so that the waiting task holds only
        // the sleep, not the teardown's larger state (about 1.8 KiB).
        tokio::spawn(async move {
            clock.sleep(lifetime).await;
            let Some(inner) = weak.upgrade() else { return };
            let taken = lock(&inner.active).remove(&id);
            if let Some(active) = taken {
                let reason = format!("worker lifetime of {minutes} minutes exceeded");
                tracing::warn!(worker = %id, job = %active.job, %reason, "releasing worker");
                Box::pin(inner.teardown(&id, active, &reason)).await;
            }
        })
        .abort_handle()
    }

    async fn collect_orphans(&self) -> Result<usize, OrchestratorError> {
        let backend = self
            .ports
            .orchestrator
            .list_workers(&self.config.server_id)
            .await?;
        let records = match self.ports.workers.list().await {
            Ok(records) => records,
            Err(e) => {
                // Without the records nothing can be told apart: delete nothing.
                tracing::warn!(error = %e, "cannot read worker records; no orphan collected");
                return Ok(0);
            }
        };
        let mut deleted = 0;
        for found in backend {
            let id = found.worker_id;
            let record = records.iter().find(|w| *w.id() == id);
            let live = record.is_some_and(|w| !w.state().is_ended());
            if live || lock(&self.active).contains_key(&id) {
                continue;
            }
            let reason = "not known to this server (orphan)";
            tracing::info!(worker = %id, backend_id = %found.backend_id, "deleting orphan worker");
            match self.ports.orchestrator.delete_worker(&id).await {
                Ok(()) => {
                    deleted += 1;
                    if record.is_some()
                        && let Err(e) = self.ports.workers.delete(&id).await
                    {
                        tracing::warn!(worker = %id, error = %e, "cannot forget worker record");
                    }
                    self.publish(DomainEvent::WorkerDestroyed {
                        worker: id,
                        reason: reason.to_owned(),
                    })
                    .await;
                }
                Err(e) => {
                    tracing::error!(worker = %id, error = %e, "deleting orphan worker failed");
                    self.publish(DomainEvent::WorkerDeleteFailed {
                        worker: id,
                        error: e.to_string(),
                    })
                    .await;
                }
            }
        }
        Ok(deleted)
    }

    // ---- release ----------------------------------------------------------

    async fn release(&self, id: &WorkerId, reason: &str) {
        let taken = lock(&self.active).remove(id);
        let Some(mut active) = taken else {
            tracing::debug!(worker = %id, "release of a worker that is not active");
            return;
        };
        if let Some(timer) = active.timer.take() {
            timer.abort();
        }
        self.teardown(id, active, reason).await;
    }

    async fn teardown(&self, id: &WorkerId, active: Active, reason: &str) {
        let record = match self.ports.workers.find_by_id(id).await {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(worker = %id, error = %e, "cannot read worker record");
                None
            }
        };
        match active.slot {
            Slot::Static => {
                self.tell_segment_over(&active.link, reason).await;
                self.back_to_idle(id, record, reason).await;
            }
            Slot::Ephemeral(permits) => {
                let mut worker = record;
                if let Some(worker) = &mut worker
                    && !worker.state().is_ended()
                {
                    self.mark(worker, WorkerState::Stopping).await;
                }
                self.tell_segment_over(&active.link, reason).await;
                match worker {
                    Some(worker) => self.destroy(worker, reason).await,
                    None => self.destroy_unrecorded(id, reason).await,
                }
                drop(permits);
            }
        }
    }

    /// Puts a static worker back in the idle pool and wakes segments
    /// waiting for one.
    async fn back_to_idle(&self, id: &WorkerId, record: Option<Worker>, reason: &str) {
        if let Some(mut worker) = record {
            self.mark(&mut worker, WorkerState::Connected).await;
        }
        self.publish(DomainEvent::WorkerReleased {
            worker: id.clone(),
            reason: reason.to_owned(),
        })
        .await;
        self.static_freed.notify_waiters();
    }

    async fn destroy_unrecorded(&self, id: &WorkerId, reason: &str) {
        match self.ports.orchestrator.delete_worker(id).await {
            Ok(()) => {
                self.publish(DomainEvent::WorkerDestroyed {
                    worker: id.clone(),
                    reason: reason.to_owned(),
                })
                .await;
            }
            Err(e) => {
                self.publish(DomainEvent::WorkerDeleteFailed {
                    worker: id.clone(),
                    error: e.to_string(),
                })
                .await;
            }
        }
    }

    async fn tell_segment_over(&self, link: &Arc<dyn WorkerLink>, reason: &str) {
        tokio::select! {
            result = link.shutdown(reason) => {
                if let Err(e) = result {
                    tracing::debug!(worker = %link.worker_id(), error = %e, "worker did not take the shutdown");
                }
            }
            () = self.ports.clock.sleep(self.config.shutdown_timeout) => {
                tracing::warn!(worker = %link.worker_id(), "worker did not acknowledge the shutdown in time");
            }
        }
    }

    // ---- helpers ------------------------------------------------------------

    /// Moves the record to `state` and saves it; a refused transition or a
    /// store failure is logged (the record is informative, the backend is
    /// the truth).
    async fn mark(&self, worker: &mut Worker, state: WorkerState) {
        if let Err(e) = worker.transition(state, self.ports.clock.now()) {
            tracing::warn!(error = %e, "worker record out of step");
            return;
        }
        self.save(worker).await;
    }

    async fn save(&self, worker: &Worker) {
        if let Err(e) = self.ports.workers.save(worker.clone()).await {
            tracing::warn!(worker = %worker.id(), error = %e, "cannot record worker");
        }
    }

    async fn publish(&self, event: DomainEvent) {
        self.ports.events.publish(event).await;
    }
}

/// The template a `docker 'image'` agent gets on the docker backend when no
/// configured template runs that image: the image itself, no capabilities,
/// zero resources (no limit unless the agent's `args` set one), the default
/// lifetime, and only the server's global cap on concurrent workers.
fn image_template(image: &str, max_workers: usize) -> Result<WorkerTemplate, String> {
    let mut id: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    id.insert_str(0, "image-");
    id.truncate(hodei_domain::ids::MAX_ID_LEN);
    let id = id.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let id = TemplateId::new(id).map_err(|e| e.to_string())?;
    let resources = ResourceRequirements::new(CpuQuantity::ZERO, MemoryQuantity::ZERO);
    let cap = u32::try_from(max_workers.max(1)).unwrap_or(u32::MAX);
    WorkerTemplate::new(id, image, resources)
        .and_then(|t| t.with_max_concurrent_jobs(cap))
        .map(|t| t.with_description(format!("docker agent running {image}")))
        .map_err(|e| e.to_string())
}

/// The pod manifest of a `kubernetes { yaml '...' }` agent.
fn pod_yaml(agent: &AgentKind) -> Option<String> {
    match agent {
        AgentKind::Kubernetes {
            yaml: Some(yaml), ..
        } => Some(yaml.clone()),
        _ => None,
    }
}

/// The parsed `args` of a `docker` agent (checked by `need` already).
fn docker_args(agent: &AgentKind) -> Option<DockerArgs> {
    match agent {
        AgentKind::Docker {
            args: Some(args), ..
        } => DockerArgs::parse(args).ok(),
        _ => None,
    }
}

fn describe_images(templates: &[WorkerTemplate]) -> String {
    if templates.is_empty() {
        return "no worker templates are configured".to_owned();
    }
    let each: Vec<String> = templates
        .iter()
        .map(|t| format!("{} runs \"{}\"", t.id(), t.image()))
        .collect();
    each.join(", ")
}

/// Deletes a worker whose provisioning was abandoned (the `acquire` future
/// was dropped) unless disarmed.
struct ProvisionGuard {
    inner: Weak<Inner>,
    worker: Option<Worker>,
    permits: Option<Permits>,
}

impl ProvisionGuard {
    fn update(&mut self, worker: &Worker) {
        if self.worker.is_some() {
            self.worker = Some(worker.clone());
        }
    }

    /// Stops the guard and hands back the slots.
    fn disarm(&mut self) -> Option<Permits> {
        self.worker = None;
        self.permits.take()
    }
}

/// Puts a claimed static worker back in the idle pool if the segment is
/// abandoned (the `acquire` future dropped) before it was handed out.
struct StaticClaimGuard {
    inner: Weak<Inner>,
    worker: Option<Worker>,
}

impl Drop for StaticClaimGuard {
    fn drop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        let (Some(inner), Ok(runtime)) =
            (self.inner.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let id = worker.id().clone();
            inner
                .back_to_idle(&id, Some(worker), "acquisition cancelled")
                .await;
        });
    }
}

impl Drop for ProvisionGuard {
    fn drop(&mut self) {
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        let permits = self.permits.take();
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(worker = %worker.id(), "provisioning abandoned outside a runtime; left to the orphan collector");
            return;
        };
        runtime.spawn(async move {
            let reason = "provisioning cancelled".to_owned();
            inner.mark(&mut worker, WorkerState::Stopping).await;
            inner.destroy(worker, &reason).await;
            drop(permits);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use hodei_domain::pipeline::{Agent, Pos, Segment, SegmentId, SegmentOwner};
    use hodei_domain::{CpuQuantity, MemoryQuantity, ResourceRequirements, Timestamp};
    use tokio::sync::mpsc;

    use super::*;
    use crate::events::MockEventPublisher;
    use crate::id_generator::MockIdGenerator;
    use crate::orchestrator::{
        BackendState, BackendWorker, MockWorkerOrchestrator, OneTimeToken, WorkerHandle,
    };
    use crate::templates::TemplateRepositoryError;
    use crate::worker_link::{LogSink, StepOutcome, StepRequest};
    use crate::workers::MockWorkerRepository;

    /// Every call the manager made on its ports, in order, as text.
    type Log = Arc<Mutex<Vec<String>>>;
    type Records = Arc<Mutex<BTreeMap<WorkerId, Worker>>>;

    fn note(log: &Log, line: String) {
        lock(log).push(line);
    }

    /// Time from tokio, so tests run with paused time.
    struct TokioClock(tokio::time::Instant);

    #[async_trait]
    impl Clock for TokioClock {
        fn now(&self) -> Timestamp {
            Timestamp(self.0.elapsed().as_millis() as u64)
        }

        async fn sleep(&self, duration: Duration) {
            tokio::time::sleep(duration).await;
        }
    }

    struct Templates(Vec<WorkerTemplate>);

    #[async_trait]
    impl WorkerTemplateRepository for Templates {
        async fn find_by_id(
            &self,
            id: &TemplateId,
        ) -> Result<Option<WorkerTemplate>, TemplateRepositoryError> {
            Ok(self.0.iter().find(|t| t.id() == id).cloned())
        }

        async fn find_by_capabilities(
            &self,
            capabilities: &BTreeSet<String>,
        ) -> Result<Vec<WorkerTemplate>, TemplateRepositoryError> {
            Ok(self
                .0
                .iter()
                .filter(|t| capabilities.is_subset(t.capabilities()))
                .cloned()
                .collect())
        }

        async fn find_all(&self) -> Result<Vec<WorkerTemplate>, TemplateRepositoryError> {
            Ok(self.0.clone())
        }

        async fn save(
            &self,
            template: WorkerTemplate,
        ) -> Result<WorkerTemplate, TemplateRepositoryError> {
            Ok(template)
        }

        async fn delete(&self, id: &TemplateId) -> Result<(), TemplateRepositoryError> {
            Err(TemplateRepositoryError::NotFound(id.clone()))
        }
    }

    #[derive(Debug)]
    struct FakeLink {
        id: WorkerId,
        log: Log,
        assign: AssignBehaviour,
    }

    #[derive(Debug, Clone, Copy)]
    enum AssignBehaviour {
        Accept,
        Fail,
        Hang,
    }

    #[async_trait]
    impl WorkerLink for FakeLink {
        fn worker_id(&self) -> &WorkerId {
            &self.id
        }

        async fn assign(&self, assignment: Assignment) -> Result<(), LinkError> {
            note(
                &self.log,
                format!(
                    "assign {} {} #{} segment {}",
                    self.id, assignment.job_id, assignment.build_number, assignment.segment_id
                ),
            );
            match self.assign {
                AssignBehaviour::Accept => Ok(()),
                AssignBehaviour::Fail => Err(LinkError::Lost {
                    worker: self.id.clone(),
                    reason: "stream closed".into(),
                }),
                AssignBehaviour::Hang => std::future::pending().await,
            }
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

        async fn shutdown(&self, reason: &str) -> Result<(), LinkError> {
            note(&self.log, format!("shutdown {}: {reason}", self.id));
            Ok(())
        }
    }

    /// How workers connect.
    #[derive(Debug, Clone)]
    enum Connect {
        Now,
        /// Connects, but the segment cannot be assigned.
        BrokenStream,
        /// Connects, but assigning the segment never ends.
        SlowAssign,
        Never,
        Refused(LinkError),
    }

    struct FakeGateway {
        connect: Connect,
        log: Log,
    }

    #[async_trait]
    impl WorkerGateway for FakeGateway {
        async fn wait_connected(
            &self,
            worker: &WorkerId,
            _deadline: Duration,
        ) -> Result<Arc<dyn WorkerLink>, LinkError> {
            let link = |assign| -> Arc<dyn WorkerLink> {
                Arc::new(FakeLink {
                    id: worker.clone(),
                    log: self.log.clone(),
                    assign,
                })
            };
            match &self.connect {
                Connect::Now => Ok(link(AssignBehaviour::Accept)),
                Connect::BrokenStream => Ok(link(AssignBehaviour::Fail)),
                Connect::SlowAssign => Ok(link(AssignBehaviour::Hang)),
                Connect::Never => std::future::pending().await,
                Connect::Refused(e) => Err(e.clone()),
            }
        }
    }

    struct Scenario {
        templates: Vec<WorkerTemplate>,
        idle_static: Vec<Worker>,
        create: fn(&WorkerSpec) -> Result<WorkerHandle, OrchestratorError>,
        state: BackendState,
        delete: fn() -> Result<(), OrchestratorError>,
        connect: Connect,
        max_workers: usize,
        backend: Vec<BackendWorker>,
        backend_name: &'static str,
    }

    impl Default for Scenario {
        fn default() -> Self {
            Scenario {
                templates: WorkerTemplate::builtins(),
                idle_static: Vec::new(),
                create: |spec| {
                    Ok(WorkerHandle {
                        worker_id: spec.worker_id.clone(),
                        backend_id: format!("pid-{}", spec.worker_id),
                    })
                },
                state: BackendState::Running,
                delete: || Ok(()),
                connect: Connect::Now,
                max_workers: 64,
                backend: Vec::new(),
                backend_name: "fake",
            }
        }
    }

    struct Harness {
        manager: EphemeralWorkerManager,
        log: Log,
        /// What each created spec asked for (image, docker args, cpu, cap).
        specs: Log,
        records: Records,
        events: mpsc::UnboundedReceiver<DomainEvent>,
    }

    fn harness(s: Scenario) -> Harness {
        let log: Log = Arc::default();
        let records: Records = Arc::new(Mutex::new(
            s.idle_static
                .into_iter()
                .map(|w| (w.id().clone(), w))
                .collect(),
        ));

        let mut orchestrator = MockWorkerOrchestrator::new();
        orchestrator.expect_backend().return_const(s.backend_name);
        let specs: Log = Arc::default();
        let (l, sl, create) = (log.clone(), specs.clone(), s.create);
        orchestrator.expect_create_worker().returning(move |spec| {
            note(
                &l,
                format!("create {} {}", spec.worker_id, spec.template.id()),
            );
            note(
                &sl,
                format!(
                    "spec {} {:?} {} {}",
                    spec.template.image(),
                    spec.docker_args,
                    spec.template.resources().cpu(),
                    spec.template.max_concurrent_jobs()
                ),
            );
            if let Some(yaml) = &spec.pod_yaml {
                note(&l, format!("yaml {} {yaml}", spec.worker_id));
            }
            create(&spec)
        });
        let (l, delete) = (log.clone(), s.delete);
        orchestrator.expect_delete_worker().returning(move |id| {
            note(&l, format!("delete {id}"));
            delete()
        });
        let backend = s.backend;
        let l = log.clone();
        orchestrator.expect_list_workers().returning(move |server| {
            note(&l, format!("list {server}"));
            Ok(backend.clone())
        });
        let state = s.state;
        orchestrator
            .expect_worker_state()
            .returning(move |_| Ok(state.clone()));

        let mut workers = MockWorkerRepository::new();
        let r = records.clone();
        workers.expect_save().returning(move |w| {
            lock(&r).insert(w.id().clone(), w);
            Ok(())
        });
        let r = records.clone();
        workers
            .expect_find_by_id()
            .returning(move |id| Ok(lock(&r).get(id).cloned()));
        let r = records.clone();
        workers
            .expect_list()
            .returning(move || Ok(lock(&r).values().cloned().collect()));
        let r = records.clone();
        workers.expect_delete().returning(move |id| {
            lock(&r).remove(id);
            Ok(())
        });
        let r = records.clone();
        workers.expect_find_idle_static().returning(move || {
            Ok(lock(&r)
                .values()
                .filter(|w| w.is_idle_static())
                .cloned()
                .collect())
        });

        let (tx, events) = mpsc::unbounded_channel();
        let mut publisher = MockEventPublisher::new();
        publisher.expect_publish().returning(move |e| {
            let _ = tx.send(e);
        });

        let mut ids = MockIdGenerator::new();
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        ids.expect_new_worker_id().returning(move || {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            WorkerId::new(format!("w-{n}")).unwrap()
        });
        ids.expect_new_token()
            .returning(|| OneTimeToken::new("secret-token"));

        let mut config = ManagerConfig::new(
            "srv-1",
            ServerEndpoint {
                host: "127.0.0.1".into(),
                port: 7070,
            },
        );
        config.provisioning_deadline = Duration::from_secs(5);
        config.max_workers = s.max_workers;
        let ports = ManagerPorts {
            orchestrator: Arc::new(orchestrator),
            gateway: Arc::new(FakeGateway {
                connect: s.connect,
                log: log.clone(),
            }),
            templates: Arc::new(Templates(s.templates)),
            workers: Arc::new(workers),
            events: Arc::new(publisher),
            clock: Arc::new(TokioClock(tokio::time::Instant::now())),
            ids: Arc::new(ids),
        };
        Harness {
            manager: EphemeralWorkerManager::new(config, ports),
            log,
            specs,
            records,
            events,
        }
    }

    impl Harness {
        /// The logged calls that start with `prefix`.
        fn calls(&self, prefix: &str) -> Vec<String> {
            lock(&self.log)
                .iter()
                .filter(|l| l.starts_with(prefix))
                .cloned()
                .collect()
        }

        fn record(&self, id: &str) -> Option<Worker> {
            lock(&self.records)
                .get(&WorkerId::new(id).unwrap())
                .cloned()
        }

        /// Waits for the next event named `name`, skipping others.
        async fn event(&mut self, name: &str) -> DomainEvent {
            loop {
                let event = self.events.recv().await.expect("publisher alive");
                if event.name() == name {
                    return event;
                }
            }
        }

        /// The names of every event published so far.
        fn drain_event_names(&mut self) -> Vec<&'static str> {
            let mut names = Vec::new();
            while let Ok(e) = self.events.try_recv() {
                names.push(e.name());
            }
            names
        }

        fn free_slots(&self, template: &str) -> Option<usize> {
            lock(&self.manager.inner.template_slots)
                .get(&TemplateId::new(template).unwrap())
                .map(|(_, s)| s.available_permits())
        }
    }

    fn request(job: &str, agent: AgentKind) -> SegmentRequest {
        SegmentRequest {
            job_id: JobId::new(job).unwrap(),
            job_name: "build".into(),
            build_number: 3,
            segment: Segment {
                id: SegmentId(0),
                agent: Agent {
                    pos: Pos::default(),
                    kind: agent,
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

    fn label(expr: &str) -> AgentKind {
        AgentKind::Label {
            expr: Some(LabelExpr::parse(expr).unwrap()),
            custom_workspace: None,
        }
    }

    fn template(id: &str, image: &str, cap: u32, minutes: u32) -> WorkerTemplate {
        let resources = ResourceRequirements::new(
            CpuQuantity::parse("1").unwrap(),
            MemoryQuantity::parse("1Gi").unwrap(),
        );
        WorkerTemplate::new(TemplateId::new(id).unwrap(), image, resources)
            .unwrap()
            .with_capabilities(["linux"])
            .unwrap()
            .with_max_concurrent_jobs(cap)
            .unwrap()
            .with_timeout_minutes(minutes)
            .unwrap()
    }

    fn static_worker(id: &str, labels: &[&str]) -> Worker {
        Worker::registered_static(
            WorkerId::new(id).unwrap(),
            id,
            labels.iter().copied(),
            Timestamp(0),
        )
    }

    /// Acquires a worker for `agent` with the built-in templates plus an
    /// `alpine` image template; `expected` is the template the worker was
    /// created from, or the error message.
    async fn check(agent: AgentKind, expected: Result<&str, &str>) {
        let mut templates = WorkerTemplate::builtins();
        templates.push(template("alpine", "alpine:3.20", 5, 30));
        let h = harness(Scenario {
            templates,
            ..Scenario::default()
        });
        let described = agent.to_string();
        let got = h
            .manager
            .acquire(request("j-1", agent))
            .await
            .map(|link| link.worker_id().to_string())
            .map_err(|e| e.to_string());
        match expected {
            Ok(template) => {
                assert_eq!(got, Ok("w-1".to_owned()), "{described}");
                assert_eq!(h.calls("create"), [format!("create w-1 {template}")]);
            }
            Err(message) => {
                assert_eq!(got, Err(message.to_owned()), "{described}");
                assert_eq!(h.calls("create"), Vec::<String>::new(), "{described}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_docker_backend_runs_a_docker_agent_in_its_image() {
        let mut templates = WorkerTemplate::builtins();
        templates.push(template("alpine", "alpine:3.20", 5, 30));
        let h = harness(Scenario {
            templates,
            backend_name: "docker",
            ..Scenario::default()
        });
        let docker = |image: &str, args: Option<&str>| AgentKind::Docker {
            image: image.into(),
            args: args.map(Into::into),
        };
        for (agent, template) in [
            (docker("alpine:3.20", None), "alpine"),
            (
                docker(
                    "registry.local:5000/team/maven:3.9",
                    Some("-e A=1 --memory 64m"),
                ),
                "image-registry.local-5000-team-maven-3.9",
            ),
        ] {
            assert_eq!(h.manager.check(&agent).await, Ok(()), "{agent}");
            h.manager.acquire(request("j-1", agent)).await.unwrap();
            let created = h.calls("create");
            assert_eq!(created.last().unwrap().split(' ').nth(2), Some(template));
        }
        let specs = lock(&h.specs).clone();
        assert_eq!(
            specs,
            [
                "spec alpine:3.20 None 1 5".to_owned(),
                format!(
                    "spec registry.local:5000/team/maven:3.9 {:?} 0 64",
                    DockerArgs::parse("-e A=1 --memory 64m").ok()
                ),
            ]
        );
        let err = h
            .manager
            .check(&docker("alpine", Some("--privileged")))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no worker template matches docker 'alpine': invalid docker args: docker args \
             column 1: unsupported docker argument `--privileged`: expected -e, -v, --memory, \
             --cpus or -u"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_kubernetes_backend_takes_a_pod_yaml() {
        let h = harness(Scenario {
            backend_name: "kubernetes",
            ..Scenario::default()
        });
        let kubernetes = |yaml: Option<&str>, from: Option<&str>| AgentKind::Kubernetes {
            yaml: yaml.map(Into::into),
            inherit_from: from.map(Into::into),
        };
        for (agent, template) in [
            (kubernetes(Some("spec: {}"), Some("node-npm")), "node-npm"),
            // Without inheritFrom: the template `agent any` would get.
            (kubernetes(Some("spec: {}"), None), "go-build"),
            (kubernetes(None, Some("python-pip")), "python-pip"),
        ] {
            assert_eq!(h.manager.check(&agent).await, Ok(()));
            let link = h.manager.acquire(request("j-1", agent)).await.unwrap();
            let created = h.calls("create");
            assert_eq!(created.last().unwrap().split(' ').nth(2), Some(template));
            h.manager.release(link.worker_id(), "done").await;
        }
        assert_eq!(h.calls("yaml"), ["yaml w-1 spec: {}", "yaml w-2 spec: {}"]);
    }

    #[test]
    fn image_templates_have_valid_ids() {
        fn check(image: &str, expected: &str) {
            let t = image_template(image, 3).unwrap();
            assert_eq!(t.id().as_str(), expected);
            assert_eq!(t.image(), image);
            assert_eq!(t.max_concurrent_jobs(), 3);
        }
        check("alpine", "image-alpine");
        check("hodei/worker:test", "image-hodei-worker-test");
        check("a/b@sha256:0123", "image-a-b-sha256-0123");
        check(&"x".repeat(100), &format!("image-{}", "x".repeat(57)));
        check("trailing_", "image-trailing");
    }

    #[tokio::test(start_paused = true)]
    async fn template_selection_per_agent() {
        check(label("java-17"), Ok("java-maven")).await;
        check(label("linux && docker && !kubernetes"), Ok("go-build")).await;
        check(AgentKind::Any, Ok("alpine")).await;
        check(
            AgentKind::Template(TemplateId::new("python-pip").unwrap()),
            Ok("python-pip"),
        )
        .await;
        check(
            AgentKind::Docker {
                image: "alpine:3.20".into(),
                args: None,
            },
            Ok("alpine"),
        )
        .await;
        check(
            AgentKind::Kubernetes {
                yaml: None,
                inherit_from: Some("node-npm".into()),
            },
            Ok("node-npm"),
        )
        .await;
        check(
            label("windows"),
            Err("no worker template matches label 'windows': \
                 java-maven: label expression is false: lacks windows; \
                 node-npm: label expression is false: lacks windows; \
                 docker-dind: label expression is false: lacks windows; \
                 python-pip: label expression is false: lacks windows; \
                 go-build: label expression is false: lacks windows; \
                 alpine: label expression is false: lacks windows"),
        )
        .await;
        check(
            AgentKind::Template(TemplateId::new("rust").unwrap()),
            Err(
                "no worker template matches template 'rust': no template with id \"rust\"; \
                 known templates: java-maven, node-npm, docker-dind, python-pip, go-build, alpine",
            ),
        )
        .await;
        check(
            AgentKind::Docker {
                image: "maven:3".into(),
                args: None,
            },
            Err(
                "no worker template matches docker 'maven:3': a docker agent needs a template \
                 that runs image \"maven:3\" (or the docker backend); java-maven runs \"hodei/worker:java-maven-latest\", \
                 node-npm runs \"hodei/worker:node-18-latest\", docker-dind runs \
                 \"hodei/worker:docker-dind-latest\", python-pip runs \
                 \"hodei/worker:python-3.11-latest\", go-build runs \
                 \"hodei/worker:go-1.21-latest\", alpine runs \"alpine:3.20\"",
            ),
        )
        .await;
        check(
            AgentKind::Kubernetes {
                yaml: Some("kind: Pod".into()),
                inherit_from: None,
            },
            Err(
                "no worker template matches kubernetes pod: a kubernetes agent's pod yaml needs \
                 the kubernetes backend (this server runs the fake backend); name a worker \
                 template with inheritFrom alone instead",
            ),
        )
        .await;
        check(
            AgentKind::Kubernetes {
                yaml: None,
                inherit_from: None,
            },
            Err(
                "no worker template matches kubernetes pod: a kubernetes agent needs \
                 inheritFrom naming a worker template",
            ),
        )
        .await;
        check(
            AgentKind::Kubernetes {
                yaml: None,
                inherit_from: Some("big pod".into()),
            },
            Err(
                "no worker template matches kubernetes pod: inheritFrom: template id \"big pod\" \
                 contains ' ' at column 4, expected only letters, digits, '-', '_' or '.'",
            ),
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_templates_at_all() {
        let h = harness(Scenario {
            templates: Vec::new(),
            ..Scenario::default()
        });
        let err = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no worker template matches any: no worker templates are configured"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ephemeral_worker_lifecycle() {
        let mut h = harness(Scenario::default());
        let link = h
            .manager
            .acquire(request("j-1", label("java-17")))
            .await
            .unwrap();
        assert_eq!(link.worker_id().as_str(), "w-1");
        assert_eq!(
            link.template_id().map(TemplateId::as_str),
            Some("java-maven")
        );
        assert_eq!(h.calls("assign"), ["assign w-1 j-1 #3 segment 1"]);
        let record = h.record("w-1").unwrap();
        assert_eq!(record.state(), &WorkerState::Busy);
        assert_eq!(record.backend_id(), Some("pid-w-1"));
        assert_eq!(record.bound_job().map(JobId::as_str), Some("j-1"));
        assert_eq!(record.name(), "hodei-java-maven-w-1");
        assert_eq!(
            h.drain_event_names(),
            [
                "worker_requested",
                "worker_provisioning",
                "worker_connected",
                "worker_assigned"
            ]
        );
        assert_eq!(h.manager.active_workers(), [link.worker_id().clone()]);

        h.manager
            .release(link.worker_id(), "stage Build has finished")
            .await;
        assert_eq!(
            h.calls("shutdown"),
            ["shutdown w-1: stage Build has finished"]
        );
        assert_eq!(h.calls("delete"), ["delete w-1"]);
        assert_eq!(h.record("w-1"), None, "record forgotten once deleted");
        assert_eq!(
            h.event("worker_destroyed").await,
            DomainEvent::WorkerDestroyed {
                worker: WorkerId::new("w-1").unwrap(),
                reason: "stage Build has finished".into()
            }
        );
        assert!(h.manager.active_workers().is_empty());
        assert_eq!(h.free_slots("java-maven"), Some(5));

        // A second release is a no-op.
        h.manager.release(link.worker_id(), "again").await;
        assert_eq!(h.calls("delete"), ["delete w-1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_spec_carries_server_token_and_labels() {
        let h = harness(Scenario {
            create: |spec| {
                let env = spec.worker_environment();
                let labels = spec.backend_labels();
                let ok = env.get("HODEI_WORKER_TOKEN").map(String::as_str) == Some("secret-token")
                    && env.get("SERVER_PORT").map(String::as_str) == Some("7070")
                    && env.get("WORKER_ID").map(String::as_str) == Some("w-1")
                    && labels.get("hodei.dev/server-id").map(String::as_str) == Some("srv-1")
                    && labels.get("hodei.dev/job-id").map(String::as_str) == Some("j-1");
                if ok {
                    Ok(WorkerHandle {
                        worker_id: spec.worker_id.clone(),
                        backend_id: "pid".into(),
                    })
                } else {
                    Err(OrchestratorError::Unavailable(format!(
                        "bad spec {env:?} {labels:?}"
                    )))
                }
            },
            ..Scenario::default()
        });
        h.manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_static_worker_is_used_first() {
        let mut h = harness(Scenario {
            idle_static: vec![
                static_worker("s-win", &["windows"]),
                static_worker("s-linux", &["linux", "java-17"]),
            ],
            ..Scenario::default()
        });
        let link = h
            .manager
            .acquire(request("j-1", label("linux && java-17")))
            .await
            .unwrap();
        assert_eq!(link.worker_id().as_str(), "s-linux");
        assert_eq!(link.template_id(), None, "a static worker has no template");
        assert_eq!(h.calls("create"), Vec::<String>::new());
        assert_eq!(h.calls("assign"), ["assign s-linux j-1 #3 segment 1"]);
        let record = h.record("s-linux").unwrap();
        assert_eq!(record.state(), &WorkerState::Busy);
        assert_eq!(record.current_job().map(JobId::as_str), Some("j-1"));

        // Busy now: the next job with the same labels gets an ephemeral one.
        let second = h
            .manager
            .acquire(request("j-2", label("linux && java-17")))
            .await
            .unwrap();
        assert_eq!(second.worker_id().as_str(), "w-1");

        h.manager.release(link.worker_id(), "done").await;
        assert_eq!(h.calls("shutdown"), ["shutdown s-linux: done"]);
        assert_eq!(
            h.calls("delete"),
            Vec::<String>::new(),
            "static workers stay"
        );
        assert_eq!(
            h.record("s-linux").unwrap().state(),
            &WorkerState::Connected
        );
        h.event("worker_released").await;

        // Template agents never take static workers.
        let third = h
            .manager
            .acquire(request(
                "j-3",
                AgentKind::Template(TemplateId::new("go-build").unwrap()),
            ))
            .await
            .unwrap();
        assert_eq!(third.worker_id().as_str(), "w-2");
        assert_eq!(
            third.template_id().map(TemplateId::as_str),
            Some("go-build")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_static_worker_is_waited_for_when_no_template_fits() {
        let h = harness(Scenario {
            idle_static: vec![static_worker("s-1", &["windows"])],
            ..Scenario::default()
        });
        let first = h
            .manager
            .acquire(request("j-1", label("windows")))
            .await
            .unwrap();
        let manager = h.manager.clone();
        let second =
            tokio::spawn(async move { manager.acquire(request("j-2", label("windows"))).await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        h.manager.release(first.worker_id(), "done").await;
        let link = second.await.unwrap().unwrap();
        assert_eq!(link.worker_id().as_str(), "s-1");
        assert_eq!(
            h.calls("assign"),
            ["assign s-1 j-1 #3 segment 1", "assign s-1 j-2 #3 segment 1"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn per_template_cap_makes_the_next_segment_wait() {
        let mut h = harness(Scenario {
            templates: vec![template("solo", "img", 1, 30)],
            ..Scenario::default()
        });
        let first = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
        let manager = h.manager.clone();
        let second =
            tokio::spawn(async move { manager.acquire(request("j-2", AgentKind::Any)).await });
        assert_eq!(
            h.event("worker_waiting").await,
            DomainEvent::WorkerWaiting {
                job: JobId::new("j-2").unwrap(),
                template: TemplateId::new("solo").unwrap(),
                reason: "template solo allows 1 workers at once".into()
            }
        );
        assert_eq!(h.calls("create"), ["create w-1 solo"]);
        h.manager.release(first.worker_id(), "done").await;
        let link = second.await.unwrap().unwrap();
        assert_eq!(link.worker_id().as_str(), "w-2");
        assert_eq!(
            h.calls(""),
            [
                "create w-1 solo",
                "assign w-1 j-1 #3 segment 1",
                "shutdown w-1: done",
                "delete w-1",
                "create w-2 solo",
                "assign w-2 j-2 #3 segment 1",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn global_cap_makes_the_next_segment_wait() {
        let mut h = harness(Scenario {
            templates: vec![template("a", "img-a", 5, 30), template("b", "img-b", 5, 30)],
            max_workers: 1,
            ..Scenario::default()
        });
        let first = h
            .manager
            .acquire(request(
                "j-1",
                AgentKind::Template(TemplateId::new("a").unwrap()),
            ))
            .await
            .unwrap();
        let manager = h.manager.clone();
        let second = tokio::spawn(async move {
            manager
                .acquire(request(
                    "j-2",
                    AgentKind::Template(TemplateId::new("b").unwrap()),
                ))
                .await
        });
        assert_eq!(
            h.event("worker_waiting").await,
            DomainEvent::WorkerWaiting {
                job: JobId::new("j-2").unwrap(),
                template: TemplateId::new("b").unwrap(),
                reason: "the server allows 1 workers at once".into()
            }
        );
        assert_eq!(h.calls("create"), ["create w-1 a"]);
        h.manager.release(first.worker_id(), "done").await;
        second.await.unwrap().unwrap();
        assert_eq!(h.calls("create"), ["create w-1 a", "create w-2 b"]);
    }

    /// Checks a provisioning failure: the error, one delete of the backend
    /// object, the record kept only when that delete failed, and every slot
    /// given back.
    async fn check_failure(s: Scenario, expected: &str) {
        let mut h = harness(Scenario {
            templates: vec![template("solo", "img", 1, 30)],
            ..s
        });
        let err = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert_eq!(h.calls("delete"), ["delete w-1"], "{expected}");
        assert_eq!(h.record("w-1"), None, "{expected}");
        let failed = h.event("worker_failed").await;
        assert_eq!(failed.worker().map(WorkerId::as_str), Some("w-1"));
        h.event("worker_destroyed").await;
        assert_eq!(h.free_slots("solo"), Some(1), "{expected}");
        assert!(h.manager.active_workers().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn provisioning_failures_delete_the_worker() {
        check_failure(
            Scenario {
                create: |spec| {
                    Err(OrchestratorError::Provisioning {
                        worker_id: spec.worker_id.clone(),
                        reason: "image \"img\" not found".into(),
                    })
                },
                ..Scenario::default()
            },
            "worker w-1 could not be provisioned: image \"img\" not found",
        )
        .await;
        check_failure(
            Scenario {
                create: |_| Err(OrchestratorError::Unavailable("connection refused".into())),
                ..Scenario::default()
            },
            "worker w-1 could not be provisioned: worker backend unavailable: connection refused",
        )
        .await;
        check_failure(
            Scenario {
                connect: Connect::Never,
                state: BackendState::Exited {
                    code: Some(3),
                    reason: "exit status 3".into(),
                    last_lines: vec!["error: unknown flag --x".into()],
                },
                ..Scenario::default()
            },
            "worker w-1 could not be provisioned: worker exited with exit status 3 before \
             connecting; last lines: error: unknown flag --x",
        )
        .await;
        check_failure(
            Scenario {
                connect: Connect::Never,
                state: BackendState::Failed {
                    reason: "ImagePullBackOff".into(),
                },
                ..Scenario::default()
            },
            "worker w-1 could not be provisioned: worker could not be provisioned: ImagePullBackOff",
        )
        .await;
        check_failure(
            Scenario {
                connect: Connect::Never,
                ..Scenario::default()
            },
            "worker w-1 did not connect within 5s",
        )
        .await;
        check_failure(
            Scenario {
                connect: Connect::Refused(LinkError::NotConnected {
                    worker: WorkerId::new("w-1").unwrap(),
                    after: Duration::from_secs(5),
                }),
                ..Scenario::default()
            },
            "worker w-1 did not connect within 5s",
        )
        .await;
        check_failure(
            Scenario {
                connect: Connect::BrokenStream,
                ..Scenario::default()
            },
            "worker w-1 could not be provisioned: could not assign the segment: \
             worker w-1 was lost: stream closed",
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_is_the_configured_one() {
        let h = harness(Scenario {
            connect: Connect::Never,
            ..Scenario::default()
        });
        let started = tokio::time::Instant::now();
        let err = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProvisionError::DeadlineExceeded {
                worker: WorkerId::new("w-1").unwrap(),
                seconds: 5
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_delete_on_release_is_published_not_raised() {
        let mut h = harness(Scenario {
            delete: || Err(OrchestratorError::Unavailable("api server down".into())),
            ..Scenario::default()
        });
        let link = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
        h.manager.release(link.worker_id(), "done").await;
        assert_eq!(
            h.event("worker_delete_failed").await,
            DomainEvent::WorkerDeleteFailed {
                worker: WorkerId::new("w-1").unwrap(),
                error: "worker backend unavailable: api server down".into()
            }
        );
        assert_eq!(
            h.record("w-1").unwrap().state(),
            &WorkerState::Failed {
                reason: "deleting its backend object failed: worker backend unavailable: api server down"
                    .into()
            },
            "kept for the orphan collector"
        );
        assert!(h.manager.active_workers().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_lifetime_timer_releases_a_worker_still_alive() {
        let mut h = harness(Scenario {
            templates: vec![template("short", "img", 5, 1)],
            ..Scenario::default()
        });
        let started = tokio::time::Instant::now();
        let link = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
        assert_eq!(
            h.event("worker_destroyed").await,
            DomainEvent::WorkerDestroyed {
                worker: WorkerId::new("w-1").unwrap(),
                reason: "worker lifetime of 1 minutes exceeded".into()
            }
        );
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert_eq!(
            h.calls("shutdown"),
            ["shutdown w-1: worker lifetime of 1 minutes exceeded"]
        );
        assert_eq!(h.calls("delete"), ["delete w-1"]);
        // The runner's own release comes later and does nothing more.
        h.manager.release(link.worker_id(), "done").await;
        assert_eq!(h.calls("delete"), ["delete w-1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_worker_has_no_lifetime_timer_left() {
        let h = harness(Scenario {
            templates: vec![template("short", "img", 5, 1)],
            ..Scenario::default()
        });
        let link = h
            .manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
        h.manager.release(link.worker_id(), "done").await;
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(h.calls("shutdown"), ["shutdown w-1: done"]);
        assert_eq!(h.calls("delete"), ["delete w-1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_acquire_mid_provisioning_deletes_the_worker() {
        let mut h = harness(Scenario {
            connect: Connect::Never,
            ..Scenario::default()
        });
        let manager = h.manager.clone();
        let pending =
            tokio::spawn(async move { manager.acquire(request("j-1", AgentKind::Any)).await });
        h.event("worker_provisioning").await;
        pending.abort();
        assert_eq!(
            h.event("worker_destroyed").await,
            DomainEvent::WorkerDestroyed {
                worker: WorkerId::new("w-1").unwrap(),
                reason: "provisioning cancelled".into()
            }
        );
        assert_eq!(h.calls("delete"), ["delete w-1"]);
        assert_eq!(h.record("w-1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_everything_and_cancels_waiters() {
        let mut h = harness(Scenario {
            templates: vec![template("solo", "img", 1, 30)],
            ..Scenario::default()
        });
        h.manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
        let manager = h.manager.clone();
        let waiting =
            tokio::spawn(async move { manager.acquire(request("j-2", AgentKind::Any)).await });
        h.event("worker_waiting").await;
        h.manager.shutdown("server stopping").await;
        assert_eq!(
            waiting.await.unwrap().unwrap_err(),
            ProvisionError::Cancelled
        );
        assert_eq!(h.calls("delete"), ["delete w-1"]);
        assert_eq!(h.calls("shutdown"), ["shutdown w-1: server stopping"]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_acquire_while_assigning_a_static_worker_puts_it_back() {
        let mut h = harness(Scenario {
            idle_static: vec![static_worker("s-1", &["linux"])],
            connect: Connect::SlowAssign,
            ..Scenario::default()
        });
        let manager = h.manager.clone();
        let pending =
            tokio::spawn(async move { manager.acquire(request("j-1", label("linux"))).await });
        while h.calls("assign").is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.record("s-1").unwrap().state(), &WorkerState::Busy);
        pending.abort();
        assert_eq!(
            h.event("worker_released").await,
            DomainEvent::WorkerReleased {
                worker: WorkerId::new("s-1").unwrap(),
                reason: "acquisition cancelled".into()
            }
        );
        assert!(h.record("s-1").unwrap().is_idle_static());
        assert!(h.manager.active_workers().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_static_worker_is_marked_lost_and_skipped() {
        let mut h = harness(Scenario {
            idle_static: vec![static_worker("s-1", &["linux"])],
            connect: Connect::Refused(LinkError::NotConnected {
                worker: WorkerId::new("s-1").unwrap(),
                after: Duration::from_secs(5),
            }),
            ..Scenario::default()
        });
        let err = h
            .manager
            .acquire(request("j-1", label("windows || linux")))
            .await
            .unwrap_err();
        // The static worker is lost; the template's worker cannot connect either.
        assert_eq!(err.to_string(), "worker w-1 did not connect within 5s");
        assert_eq!(
            h.event("worker_lost").await,
            DomainEvent::WorkerLost {
                worker: WorkerId::new("s-1").unwrap(),
                reason: "worker s-1 did not connect within 5s".into()
            }
        );
        assert!(matches!(
            h.record("s-1").unwrap().state(),
            WorkerState::Lost { .. }
        ));
    }

    fn backend_worker(id: &str) -> BackendWorker {
        BackendWorker {
            worker_id: WorkerId::new(id).unwrap(),
            job_id: None,
            template_id: None,
            backend_id: format!("pid-{id}"),
            state: BackendState::Running,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn orphans_are_the_backend_workers_this_server_does_not_know() {
        let mut failed_delete = Worker::ephemeral(
            WorkerId::new("w-old").unwrap(),
            "old",
            TemplateId::new("go-build").unwrap(),
            JobId::new("j-0").unwrap(),
            "1",
            Timestamp(0),
        );
        failed_delete
            .transition(
                WorkerState::Failed {
                    reason: "deleting its backend object failed".into(),
                },
                Timestamp(1),
            )
            .unwrap();
        let mut h = harness(Scenario {
            idle_static: vec![failed_delete],
            backend: ["w-1", "w-old", "w-stray"]
                .into_iter()
                .map(backend_worker)
                .collect(),
            ..Scenario::default()
        });
        // w-1 is handed out, so it is known.
        h.manager
            .acquire(request("j-1", AgentKind::Any))
            .await
            .unwrap();
        h.drain_event_names();
        assert_eq!(h.manager.collect_orphans().await.unwrap(), 2);
        assert_eq!(h.calls("list"), ["list srv-1"]);
        assert_eq!(h.calls("delete"), ["delete w-old", "delete w-stray"]);
        assert_eq!(h.record("w-old"), None);
        assert!(h.record("w-1").is_some());
        assert_eq!(
            h.event("worker_destroyed").await,
            DomainEvent::WorkerDestroyed {
                worker: WorkerId::new("w-old").unwrap(),
                reason: "not known to this server (orphan)".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_previous_runs_workers_are_deleted_and_forgotten() {
        let mut ephemeral = Worker::ephemeral(
            WorkerId::new("w-prev").unwrap(),
            "prev",
            TemplateId::new("go-build").unwrap(),
            JobId::new("j-0").unwrap(),
            "1",
            Timestamp(0),
        );
        ephemeral.set_backend_id("4242".to_owned(), Timestamp(1));
        let mut h = harness(Scenario {
            idle_static: vec![ephemeral, static_worker("s-1", &["linux"])],
            ..Scenario::default()
        });
        let deleted = h.manager.forget_previous_workers().await.unwrap();
        assert_eq!(deleted, [WorkerId::new("w-prev").unwrap()]);
        // Only the ephemeral worker has a backend object to delete.
        assert_eq!(h.calls("delete"), ["delete w-prev"]);
        assert_eq!(h.record("w-prev"), None);
        assert_eq!(h.record("s-1"), None);
        assert_eq!(
            h.event("worker_destroyed").await,
            DomainEvent::WorkerDestroyed {
                worker: WorkerId::new("w-prev").unwrap(),
                reason: "the server restarted".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_previous_worker_that_cannot_be_deleted_is_published_and_forgotten() {
        let mut h = harness(Scenario {
            idle_static: vec![Worker::ephemeral(
                WorkerId::new("w-prev").unwrap(),
                "prev",
                TemplateId::new("go-build").unwrap(),
                JobId::new("j-0").unwrap(),
                "1",
                Timestamp(0),
            )],
            delete: || Err(OrchestratorError::Unavailable("engine down".into())),
            ..Scenario::default()
        });
        assert!(
            h.manager
                .forget_previous_workers()
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(h.record("w-prev"), None);
        assert_eq!(
            h.event("worker_delete_failed").await,
            DomainEvent::WorkerDeleteFailed {
                worker: WorkerId::new("w-prev").unwrap(),
                error: "worker backend unavailable: engine down".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphan_that_cannot_be_deleted_is_published() {
        let mut h = harness(Scenario {
            backend: vec![backend_worker("w-stray")],
            delete: || Err(OrchestratorError::Unavailable("api server down".into())),
            ..Scenario::default()
        });
        assert_eq!(h.manager.collect_orphans().await.unwrap(), 0);
        assert_eq!(
            h.event("worker_delete_failed").await,
            DomainEvent::WorkerDeleteFailed {
                worker: WorkerId::new("w-stray").unwrap(),
                error: "worker backend unavailable: api server down".into()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn check_answers_without_creating_anything() {
        let h = harness(Scenario {
            idle_static: vec![static_worker("s-win", &["windows"])],
            ..Scenario::default()
        });
        let checked = |agent: AgentKind| {
            let manager = h.manager.clone();
            async move { manager.check(&agent).await.map_err(|e| e.to_string()) }
        };
        assert_eq!(checked(label("java-17")).await, Ok(()));
        assert_eq!(checked(AgentKind::Any).await, Ok(()));
        assert_eq!(
            checked(label("windows")).await,
            Ok(()),
            "a static worker offers it"
        );
        assert_eq!(
            checked(label("solaris")).await,
            Err("no worker template matches label 'solaris': \
                 java-maven: label expression is false: lacks solaris; \
                 node-npm: label expression is false: lacks solaris; \
                 docker-dind: label expression is false: lacks solaris; \
                 python-pip: label expression is false: lacks solaris; \
                 go-build: label expression is false: lacks solaris"
                .to_owned())
        );
        assert_eq!(
            checked(AgentKind::Template(TemplateId::new("nope").unwrap())).await,
            Err(
                "no worker template matches template 'nope': no template with id \"nope\"; \
                 known templates: java-maven, node-npm, docker-dind, python-pip, go-build"
                    .to_owned()
            )
        );
        assert_eq!(h.calls("create"), Vec::<String>::new());
        assert!(h.record("s-win").unwrap().is_idle_static());
    }
}
