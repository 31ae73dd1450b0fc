//! [`EphemeralWorkerManager`]: the [`WorkerProvider`] that gives each agent
//! segment a worker and takes it away again.
//!
//! **Acquire** a worker for a segment:
//!
//! 1. For `agent any` and `agent { label '...' }`: an idle static worker
//!    whose labels satisfy the expression, if one is connected.
//! 2. Otherwise the best template ([`select`]): by label expression; for
//!    `template 'id'` exactly that template; for `docker 'image'` a template
//!    that runs that image; for `kubernetes { inheritFrom 'id' }` that
//!    template. No template: [`ProvisionError::NoMatch`] listing every
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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use hodei_domain::pipeline::AgentKind;
use hodei_domain::{
    DomainEvent, JobId, LabelExpr, TemplateId, Worker, WorkerId, WorkerRequirements, WorkerState,
    WorkerTemplate, select,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::clock::Clock;
use crate::events::EventPublisher;
use crate::id_generator::IdGenerator;
use crate::orchestrator::{OrchestratorError, ServerEndpoint, WorkerOrchestrator, WorkerSpec};
use crate::provider::{ProvisionError, SegmentRequest, WorkerProvider};
use crate::templates::WorkerTemplateRepository;
use crate::worker_link::{Assignment, LinkError, WorkerGateway, WorkerLink};
use crate::workers::WorkerRepository;

/// How the manager behaves. Build it with [`ManagerConfig::new`] and change
/// the fields you need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// How long a new worker may take to connect (default 120 s).
    pub provisioning_deadline: Duration,
    /// How often the backend is asked about a worker that has not connected
    /// yet, so one that died fails fast (default 200 ms).
    pub state_poll_interval: Duration,
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

    async fn release(&self, worker: &WorkerId, reason: &str) {
        self.inner.release(worker, reason).await;
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
            AgentKind::Docker { image, .. } => {
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
                    None => Err(no_match(format!(
                        "a docker agent needs a template that runs image \"{image}\"; {}",
                        describe_images(&templates)
                    ))),
                })
            }
            AgentKind::Kubernetes { yaml, inherit_from } => Need::Template(match (yaml, inherit_from) {
                (Some(_), _) => Err(no_match(
                    "a kubernetes agent's pod yaml is not supported; name a worker template with inheritFrom instead".to_owned(),
                )),
                (None, None) => Err(no_match(
                    "a kubernetes agent needs inheritFrom naming a worker template".to_owned(),
                )),
                (None, Some(name)) => match TemplateId::new(name.as_str()) {
                    Ok(id) => self.template_by_id(agent, &id).await,
                    Err(e) => Err(no_match(format!("inheritFrom: {e}"))),
                },
            }),
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
            let mut worker = self.claim_static(request, expr).await?;
            let id = worker.id().clone();
            let connected = self
                .ports
                .gateway
                .wait_connected(&id, self.config.provisioning_deadline)
                .await;
            let result = match connected {
                Ok(link) => link.assign(assignment(request)).await.map(|()| link),
                Err(e) => Err(e),
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
        Ok(link)
    }

    /// Waits for the worker to connect, while watching the backend for an
    /// early death, for at most the provisioning deadline.
    async fn wait_connected(&self, id: &WorkerId) -> Result<Arc<dyn WorkerLink>, ProvisionFailure> {
        let deadline = self.config.provisioning_deadline;
        tokio::select! {
            biased;
            connected = self.ports.gateway.wait_connected(id, deadline) => match connected {
                Ok(link) => Ok(link),
                Err(LinkError::NotConnected { .. }) => Err(ProvisionFailure::Deadline),
                Err(LinkError::Lost { reason, .. }) => Err(ProvisionFailure::Failed(reason)),
            },
            reason = self.watch_backend(id) => Err(ProvisionFailure::Failed(reason)),
            () = self.ports.clock.sleep(deadline) => Err(ProvisionFailure::Deadline),
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
        tokio::spawn(async move {
            clock.sleep(lifetime).await;
            let Some(inner) = weak.upgrade() else { return };
            let taken = lock(&inner.active).remove(&id);
            if let Some(active) = taken {
                let reason = format!("worker lifetime of {minutes} minutes exceeded");
                tracing::warn!(worker = %id, job = %active.job, %reason, "releasing worker");
                inner.teardown(&id, active, &reason).await;
            }
        })
        .abort_handle()
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
            Slot::Ephemeral(permits) => {
                let mut worker = record;
                if let Some(worker) = &mut worker {
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
