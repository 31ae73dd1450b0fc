//! [`CreateAndExecuteJob`]: the use case behind "submit a pipeline".
//!
//! A [`Submission`] is parsed and validated (every error as
//! `FILE:LINE:COL: message`), planned into agent segments, and each segment's
//! agent is checked against what the [`WorkerProvider`] can offer (templates
//! and static workers) so that a pipeline no worker can ever run is refused
//! at once, with the reason, instead of failing later. The job is then
//! stored, a [`DomainEvent::JobQueued`] published, and the
//! [`PipelineRunner`] started in its own task.
//!
//! While the job runs, everything that happens to it is recorded in its
//! *journal*: a numbered list of [`JobUpdate`]s (status changes, stage
//! starts and ends, log chunks, worker provisioning). Log chunks are also
//! appended to the [`JobRepository`] in order, and stage and job transitions
//! are published as domain events. A watcher ([`CreateAndExecuteJob::watch`])
//! gets the journal from any position and then the live tail, so one that
//! joins late misses nothing. A journal keeps a bounded amount of log in
//! memory ([`JobsConfig::live_journal_bytes`]); older lines are read back
//! from the repository when a watcher asks for them.
//!
//! A job ends `Succeeded`, `Failed` (with the first failure's reason),
//! `Aborted` (cancelled, with the canceller's reason) or `TimedOut` (the
//! pipeline's `options { timeout }` or the server's global job timeout).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hodei_domain::pipeline::{self, Diagnostic, PipelineError};
use hodei_domain::{
    DomainEvent, Job, JobId, JobStatus, JobStatusKind, StageResult, TemplateId, Timestamp, WorkerId,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::events::EventPublisher;
use crate::id_generator::IdGenerator;
pub use crate::jobs::StageSummary;
use crate::jobs::{JobRepository, JobRepositoryError, LogChunk, QueuedSubmission};
use crate::mask::{SecretMasker, finish_lines, split_lines};
use crate::provider::{ProvisionError, WorkerProvider};
use crate::runner::SecretResolver;
use crate::runner::{
    JobContext, PipelineRunner, ProvisionPhase, RunEvent, RunOutput, RunRequest, RunStatus,
    RunnerConfig, StagePath, StageStatus,
};
use crate::worker_link::LogStream;

mod journal;

pub use journal::JobWatch;
use journal::{Journal, StoredLog, WatchSource};

/// A pipeline to run, as a client submits it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Submission {
    /// The job's name (`JOB_NAME`); build numbers count per name.
    pub name: String,
    /// The pipeline file's name, used in error messages (`Jenkinsfile`).
    pub file: String,
    /// The pipeline text.
    pub pipeline: String,
    /// Parameters given with the submission (`params`); they win over
    /// `environment` in the steps' environment.
    pub parameters: BTreeMap<String, String>,
    /// Extra environment for every step.
    pub environment: BTreeMap<String, String>,
    /// The workspace source as an uncompressed tar archive; empty for none.
    pub source: Vec<u8>,
    /// The branch being built (`BRANCH_NAME`, `when { branch }`).
    pub branch: Option<String>,
}

impl fmt::Debug for Submission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submission")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("pipeline_bytes", &self.pipeline.len())
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .field("source_bytes", &self.source.len())
            .field("branch", &self.branch)
            .finish()
    }
}

/// Longest log line kept as one by default ([`JobsConfig::max_line_bytes`]);
/// longer output is cut into lines of this size.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a successful submission returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The new job.
    pub job_id: JobId,
    /// Its build number.
    pub build_number: u64,
}

/// Why a job operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The job name is empty or has control characters.
    #[error("job name {0:?}: expected a non-empty name without control characters")]
    InvalidName(String),
    /// The pipeline has errors; the message lists each as
    /// `FILE:LINE:COL: message`.
    #[error("{0}")]
    Invalid(#[from] PipelineError),
    /// An agent of the pipeline can never get a worker.
    #[error("{file}:{line}:{column}: {source}")]
    Unsatisfiable {
        /// The pipeline file.
        file: String,
        /// Line of the `agent` directive.
        line: u32,
        /// Column of the `agent` directive.
        column: u32,
        /// Why no worker can be had, listing every template's reason.
        source: ProvisionError,
    },
    /// No job has this id.
    #[error("no job with id \"{0}\"")]
    NotFound(JobId),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] JobRepositoryError),
    /// The server is shutting down and takes no new jobs.
    #[error("the server is shutting down and takes no new jobs")]
    ShuttingDown,
    /// `credentials('id')` names no credentials the server has.
    #[error(
        "{file}:{line}:{column}: no credentials with id '{id}' for environment variable {variable}; \
         the server's credentials are configured with [credentials] or HODEI_CREDENTIAL_<ID>"
    )]
    UnknownCredentials {
        /// The pipeline file.
        file: String,
        /// Line of the variable.
        line: u32,
        /// Column of the variable.
        column: u32,
        /// The credentials id.
        id: String,
        /// The environment variable it was to be bound to.
        variable: String,
    },
    /// The submission is larger than a configured limit.
    #[error("{file}: {what} is {actual}, above the server's limit {setting} = {limit}")]
    TooLarge {
        /// The pipeline file (with the position of the first item past the
        /// limit, when there is one).
        file: String,
        /// What is too large ("the pipeline text", "the stage count").
        what: &'static str,
        /// Its size.
        actual: String,
        /// The setting holding the limit.
        setting: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// How a provisioning step went, as recorded in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPhase {
    /// A worker was asked for.
    Requested,
    /// The worker is connected and has the workspace.
    Ready,
    /// No worker could be had.
    Failed,
    /// The worker was given back (an ephemeral one is destroyed).
    Released,
}

impl WorkerPhase {
    /// Lower-case name (`requested`, `ready`, `failed`, `released`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPhase::Requested => "requested",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Failed => "failed",
            WorkerPhase::Released => "released",
        }
    }
}

/// What one journal entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKind {
    /// The job's status changed.
    Status(JobStatus),
    /// A stage started.
    StageStarted {
        /// The stage.
        stage: String,
        /// Its path from the top (`["Test", "unit"]` for branch `unit` of
        /// stage `Test`).
        path: Vec<String>,
    },
    /// A stage ended.
    StageFinished {
        /// The stage.
        stage: String,
        /// Its path from the top.
        path: Vec<String>,
        /// How.
        result: StageResult,
        /// Why, when it did not succeed.
        message: String,
    },
    /// One line of output: of a step, or of the runner itself (stage
    /// headers, `echo`, errors) with stream [`LogStream::System`]. Step
    /// output is split into lines here; a line longer than
    /// [`MAX_LINE_BYTES`] is cut into several.
    Log {
        /// The stage it belongs to (empty outside stages).
        stage: String,
        /// The stage's path from the top (empty outside stages).
        path: Vec<String>,
        /// The step that produced it; `None` for the runner's lines.
        step_id: Option<String>,
        /// Which stream.
        stream: LogStream,
        /// The line, without its newline.
        data: Vec<u8>,
    },
    /// A worker's provisioning progress.
    Worker {
        /// The agent segment it is for (numbered from 1).
        segment: String,
        /// The agent, as written.
        agent: String,
        /// The worker, once known.
        worker: Option<WorkerId>,
        /// The template it was created from, once known (`None` for a
        /// static worker).
        template: Option<TemplateId>,
        /// What happened.
        phase: WorkerPhase,
        /// The reason of a failure.
        message: String,
    },
}

/// One numbered entry of a job's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    /// Position in the journal, from 0, without gaps.
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: UpdateKind,
}

/// What [`CreateAndExecuteJob::recover`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs ended `Failed`, oldest first within running and then queued.
    pub failed: Vec<JobId>,
    /// Queued jobs started again, oldest first.
    pub requeued: Vec<JobId>,
}

/// Tuning of the use case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// Longest a job may run, whatever its pipeline says; `None` for no
    /// limit. A job past it ends `TimedOut`.
    pub job_timeout: Option<Duration>,
    /// The pipeline runner's tuning.
    pub runner: RunnerConfig,
    /// At most this many bytes of log lines (counted with their
    /// bookkeeping, about 150 bytes a line) in the journal of one job,
    /// running or finished. Older lines are dropped from memory once the
    /// repository has stored them, and watchers read them back from it a
    /// page at a time. Bounds the memory a running job takes whatever its
    /// log's size.
    pub live_journal_bytes: usize,
    /// Journals of finished jobs kept in memory for watchers; older ones
    /// are rebuilt from the repository (status and logs) when watched.
    pub kept_journals: usize,
    /// At most this many bytes of log lines (counted as for
    /// `live_journal_bytes`) in the journals of finished jobs kept in
    /// memory; the oldest go first. Bounds the memory finished
    /// jobs take whatever their logs' size (the repository has them).
    pub kept_journal_bytes: usize,
    /// Longest log line kept as one; a longer line is cut into pieces of
    /// about this size (never through a secret).
    pub max_line_bytes: usize,
    /// Largest pipeline text accepted, in bytes.
    pub max_pipeline_bytes: usize,
    /// Most stages (nested and parallel ones included) a pipeline may have.
    pub max_stages: usize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            job_timeout: None,
            runner: RunnerConfig::default(),
            live_journal_bytes: 4 * 1024 * 1024,
            kept_journals: 256,
            kept_journal_bytes: 32 * 1024 * 1024,
            max_line_bytes: MAX_LINE_BYTES,
            max_pipeline_bytes: 1024 * 1024,
            max_stages: 1000,
        }
    }
}

/// The ports the use case drives.
#[derive(Clone)]
pub struct JobPorts {
    /// Jobs and their logs.
    pub jobs: Arc<dyn JobRepository>,
    /// Where job events go.
    pub events: Arc<dyn EventPublisher>,
    /// Time and timers.
    pub clock: Arc<dyn Clock>,
    /// Job ids.
    pub ids: Arc<dyn IdGenerator>,
    /// Workers for agent segments (the `EphemeralWorkerManager`).
    pub provider: Arc<dyn WorkerProvider>,
    /// The values of `credentials('id')`. A pipeline naming an id it does
    /// not know is refused; the values bound by a job are masked in its
    /// log lines, stage messages and final message.
    pub secrets: Arc<dyn SecretResolver>,
}

impl fmt::Debug for JobPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobPorts").finish_non_exhaustive()
    }
}

/// Submits pipelines and runs them; see the module documentation.
#[derive(Debug, Clone)]
pub struct CreateAndExecuteJob {
    inner: Arc<Inner>,
}

struct Inner {
    config: JobsConfig,
    ports: JobPorts,
    runner: PipelineRunner,
    journals: Mutex<Journals>,
    running: Mutex<HashMap<JobId, Running>>,
    waiting_segments: AtomicI64,
    closed: AtomicBool,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateAndExecuteJob")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Journals {
    by_job: HashMap<JobId, Arc<Journal>>,
    /// Finished jobs whose journal is kept, oldest first, with its log
    /// bytes.
    finished: VecDeque<(JobId, usize)>,
    /// The sum of `finished`'s bytes.
    finished_bytes: usize,
}

struct Running {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<String>>>,
    task: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CreateAndExecuteJob {
    /// The use case driving `ports` as `config` says.
    pub fn new(config: JobsConfig, ports: JobPorts) -> Self {
        let runner = PipelineRunner::new(ports.provider.clone(), config.runner.clone());
        CreateAndExecuteJob {
            inner: Arc::new(Inner {
                config,
                ports,
                runner,
                journals: Mutex::new(Journals::default()),
                running: Mutex::new(HashMap::new()),
                waiting_segments: AtomicI64::new(0),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Validates, plans, checks and stores the submission, then starts it.
    /// Returns as soon as the job is queued.
    ///
    /// # Errors
    /// [`JobsError::InvalidName`], [`JobsError::Invalid`] (every pipeline
    /// error), [`JobsError::Unsatisfiable`] (an agent no template or static
    /// worker can serve), [`JobsError::Store`], [`JobsError::ShuttingDown`].
    /// Nothing is stored when one is returned.
    pub async fn submit(&self, submission: Submission) -> Result<Submitted, JobsError> {
        Inner::submit(&self.inner, submission).await
    }

    /// The job's journal from position `from`, then its live tail until the
    /// job ends.
    ///
    /// # Errors
    /// [`JobsError::NotFound`] for an unknown job; [`JobsError::Store`].
    pub async fn watch(&self, job: &JobId, from: u64) -> Result<JobWatch, JobsError> {
        let live = lock(&self.inner.journals).by_job.get(job).cloned();
        let source = match live {
            Some(journal) => WatchSource::live(journal, self.inner.ports.jobs.clone(), job.clone()),
            None => {
                let stored = self
                    .inner
                    .ports
                    .jobs
                    .find_by_id(job)
                    .await?
                    .ok_or_else(|| JobsError::NotFound(job.clone()))?;
                WatchSource::Stored(Box::new(StoredLog::new(
                    self.inner.ports.jobs.clone(),
                    stored,
                    from,
                )))
            }
        };
        Ok(JobWatch { source, next: from })
    }

    /// The job's stages as far as they ran: from its journal while it is
    /// kept in memory, else as the repository kept them (empty when it
    /// kept none).
    pub async fn stages(&self, job: &JobId) -> Vec<StageSummary> {
        let journal = lock(&self.inner.journals).by_job.get(job).cloned();
        if let Some(journal) = journal {
            return journal.stages();
        }
        match self.inner.ports.jobs.find_stages(job).await {
            Ok(stages) => stages,
            Err(e) => {
                tracing::warn!(job = %job, error = %e, "cannot read the job's stages");
                Vec::new()
            }
        }
    }

    /// Cancels a job: its running steps are killed, `post` blocks run, its
    /// workers are destroyed and it ends `Aborted` with `reason`. Returns
    /// the job's status at the time of the call (a job that already ended
    /// keeps its final status).
    ///
    /// # Errors
    /// [`JobsError::NotFound`]; [`JobsError::Store`].
    pub async fn cancel(&self, job: &JobId, reason: &str) -> Result<JobStatus, JobsError> {
        let stored = self
            .inner
            .ports
            .jobs
            .find_by_id(job)
            .await?
            .ok_or_else(|| JobsError::NotFound(job.clone()))?;
        if stored.status().is_final() {
            return Ok(stored.status().clone());
        }
        if let Some(running) = lock(&self.inner.running).get(job) {
            let mut slot = lock(&running.reason);
            if slot.is_none() {
                *slot = Some(if reason.is_empty() {
                    "cancelled".to_owned()
                } else {
                    reason.to_owned()
                });
            }
            running.cancel.cancel();
        }
        // The journal is ahead of the store for a live job (the store is
        // written in the background).
        let live = lock(&self.inner.journals)
            .by_job
            .get(job)
            .and_then(|journal| journal.status());
        Ok(live.unwrap_or_else(|| stored.status().clone()))
    }

    /// Waits until the job has ended and returns its final status.
    ///
    /// # Errors
    /// [`JobsError::NotFound`]; [`JobsError::Store`].
    pub async fn wait(&self, job: &JobId) -> Result<JobStatus, JobsError> {
        let mut watch = self.watch(job, 0).await?;
        let mut last = None;
        while let Some(update) = watch.next().await {
            if let UpdateKind::Status(status) = update.kind {
                last = Some(status);
            }
        }
        match last {
            Some(status) if status.is_final() => Ok(status),
            _ => {
                let stored = self.inner.ports.jobs.find_by_id(job).await?;
                stored
                    .map(|j| j.status().clone())
                    .ok_or_else(|| JobsError::NotFound(job.clone()))
            }
        }
    }

    /// Takes over what a previous run of the server left unfinished in
    /// the repository. Call once at start, before taking submissions.
    ///
    /// - A job that was **running** (or **provisioning**) ends `Failed`
    ///   with `reason` (for example "server restarted"): its workers went
    ///   with the old server and its steps cannot be resumed. Its log up to
    ///   the restart stays.
    /// - A job that was **queued** runs again, from the submission the
    ///   repository kept ([`JobRepository::save_queued`]). One whose
    ///   submission was not kept, or whose pipeline no longer parses, ends
    ///   `Failed`.
    ///
    /// # Errors
    /// [`JobsError::Store`].
    pub async fn recover(&self, reason: &str) -> Result<Recovered, JobsError> {
        Inner::recover(&self.inner, reason).await
    }

    /// Jobs started and not ended yet.
    pub fn running_jobs(&self) -> Vec<JobId> {
        let mut ids: Vec<JobId> = lock(&self.inner.running).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Agent segments waiting for a worker right now (the queue depth).
    pub fn waiting_segments(&self) -> u64 {
        self.inner
            .waiting_segments
            .load(Ordering::Relaxed)
            .max(0)
            .unsigned_abs()
    }

    /// Takes no new jobs, cancels every running one with `reason` and waits
    /// for them to end (their workers released).
    pub async fn shutdown(&self, reason: &str) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let tasks: Vec<(JobId, JoinHandle<()>)> = {
            let mut running = lock(&self.inner.running);
            running
                .iter_mut()
                .filter_map(|(id, r)| {
                    let mut slot = lock(&r.reason);
                    if slot.is_none() {
                        *slot = Some(reason.to_owned());
                    }
                    r.cancel.cancel();
                    r.task.take().map(|t| (id.clone(), t))
                })
                .collect()
        };
        for (id, task) in tasks {
            if let Err(e) = task.await {
                tracing::error!(job = %id, error = %e, "job task failed");
            }
        }
    }
}

impl Inner {
    async fn submit(self: &Arc<Self>, submission: Submission) -> Result<Submitted, JobsError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(JobsError::ShuttingDown);
        }
        let name = submission.name.trim().to_owned();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(JobsError::InvalidName(submission.name));
        }
        let file = if submission.file.is_empty() {
            "Jenkinsfile".to_owned()
        } else {
            submission.file.clone()
        };
        if submission.pipeline.len() > self.config.max_pipeline_bytes {
            return Err(JobsError::TooLarge {
                file,
                what: "the pipeline text",
                actual: format!("{} bytes", submission.pipeline.len()),
                setting: "max_pipeline_bytes",
                limit: self.config.max_pipeline_bytes,
            });
        }
        let pipeline = pipeline::parse(&file, &submission.pipeline).into_result()?;
        let stages = pipeline.all_stages();
        if let Some(first) = stages.get(self.config.max_stages) {
            return Err(JobsError::TooLarge {
                file: format!("{file}:{}", first.pos),
                what: "the stage count",
                actual: format!("{} stages", stages.len()),
                setting: "max_stages",
                limit: self.config.max_stages,
            });
        }
        let plan = pipeline::plan(&pipeline).map_err(|diagnostics| invalid(&file, diagnostics))?;
        for (var, id) in credential_vars(&pipeline) {
            if self.ports.secrets.resolve(id).await.is_none() {
                return Err(JobsError::UnknownCredentials {
                    file,
                    line: var.pos.line,
                    column: var.pos.column,
                    id: id.to_owned(),
                    variable: var.name.clone(),
                });
            }
        }
        for segment in &plan.segments {
            if let Err(source) = self.ports.provider.check(&segment.agent.kind).await {
                return Err(JobsError::Unsatisfiable {
                    file,
                    line: segment.agent.pos.line,
                    column: segment.agent.pos.column,
                    source,
                });
            }
        }
        let previous = self.previous_result(&name).await;
        let build_number = self.ports.jobs.next_build_number(&name).await?;
        let id = self.ports.ids.new_job_id();
        let now = self.ports.clock.now();
        let job = Job::new(id.clone(), &name, build_number, submission.pipeline, now)
            .with_parameters(submission.parameters.clone())
            .with_environment(submission.environment.clone());
        let source: Arc<[u8]> = Arc::from(submission.source);
        let queued = QueuedSubmission {
            file,
            branch: submission.branch,
            source,
        };
        // Registered before the job is stored, so a cancel that finds the
        // stored job always finds its token too.
        let (cancel, reason) = self.register(&id);
        if let Err(e) = self
            .ports
            .jobs
            .save_queued(job.clone(), queued.clone())
            .await
        {
            lock(&self.running).remove(&id);
            return Err(e.into());
        }
        self.launch(job, pipeline, plan, queued, previous, cancel, reason)
            .await;
        Ok(Submitted {
            job_id: id,
            build_number,
        })
    }

    /// Registers a job about to run, with its cancellation token and the
    /// slot for a cancel's reason.
    fn register(&self, id: &JobId) -> (CancellationToken, Arc<Mutex<Option<String>>>) {
        let cancel = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        lock(&self.running).insert(
            id.clone(),
            Running {
                cancel: cancel.clone(),
                reason: reason.clone(),
                task: None,
            },
        );
        (cancel, reason)
    }

    /// Starts a stored, queued job registered with [`Inner::register`].
    #[allow(clippy::too_many_arguments)]
    async fn launch(
        self: &Arc<Self>,
        job: Job,
        pipeline: pipeline::Pipeline,
        plan: pipeline::Plan,
        queued: QueuedSubmission,
        previous: Option<pipeline::BuildResult>,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
    ) {
        let id = job.id().clone();
        let name = job.name().to_owned();
        let build_number = job.build_number();
        let journal = Arc::new(Journal::new(self.config.live_journal_bytes));
        journal.push(job.created_at(), UpdateKind::Status(JobStatus::Queued));
        lock(&self.journals)
            .by_job
            .insert(id.clone(), journal.clone());
        tracing::info!(job = %id, name = %name, build_number, "job queued");
        self.ports
            .events
            .publish(DomainEvent::JobQueued {
                job: id.clone(),
                name: name.clone(),
                build_number,
            })
            .await;

        let mut parameters = job.environment().clone();
        parameters.extend(job.parameters().clone());
        let mut secrets = BTreeMap::new();
        for (_, id) in credential_vars(&pipeline) {
            if let Some(value) = self.ports.secrets.resolve(id).await {
                secrets.insert(id.to_owned(), value);
            }
        }
        let masker = SecretMasker::new(secrets.values());
        let request = RunRequest {
            job: JobContext {
                job_id: id.clone(),
                job_name: name,
                build_number,
                branch: queued.branch,
                parameters,
            },
            pipeline: Arc::new(pipeline),
            plan: Arc::new(plan),
            source: queued.source,
            skip_checkout: false,
            previous_result: previous,
            secrets: Arc::new(secrets),
        };
        let inner = self.clone();
        let task = tokio::spawn(async move {
            inner
                .execute(job, request, journal, cancel, reason, masker)
                .await;
        });
        if let Some(running) = lock(&self.running).get_mut(&id) {
            running.task = Some(task);
        }
    }

    /// See [`CreateAndExecuteJob::recover`].
    async fn recover(self: &Arc<Self>, reason: &str) -> Result<Recovered, JobsError> {
        let mut recovered = Recovered::default();
        for started in [JobStatusKind::Running, JobStatusKind::Provisioning] {
            let filter = crate::jobs::JobFilter {
                status: Some(started),
                ..Default::default()
            };
            for job in self.ports.jobs.list(&filter).await? {
                let id = job.id().clone();
                self.fail_stored(job, reason.to_owned()).await?;
                recovered.failed.push(id);
            }
        }
        let queued = crate::jobs::JobFilter {
            status: Some(JobStatusKind::Queued),
            ..Default::default()
        };
        let mut waiting = self.ports.jobs.list(&queued).await?;
        waiting.reverse();
        for job in waiting {
            let id = job.id().clone();
            let Some(kept) = self.ports.jobs.queued_submission(&id).await? else {
                let why = format!("{reason}; the job's submission was not kept");
                self.fail_stored(job, why).await?;
                recovered.failed.push(id);
                continue;
            };
            let planned = pipeline::parse(&kept.file, job.pipeline())
                .into_result()
                .map_err(JobsError::from)
                .and_then(|p| {
                    pipeline::plan(&p)
                        .map(|plan| (p, plan))
                        .map_err(|d| invalid(&kept.file, d))
                });
            match planned {
                Ok((pipeline, plan)) => {
                    let previous = self.previous_result(job.name()).await;
                    let (cancel, cancel_reason) = self.register(&id);
                    self.launch(job, pipeline, plan, kept, previous, cancel, cancel_reason)
                        .await;
                    recovered.requeued.push(id);
                }
                Err(e) => {
                    self.fail_stored(job, e.to_string()).await?;
                    recovered.failed.push(id);
                }
            }
        }
        Ok(recovered)
    }

    /// Ends a stored job that no task runs as `Failed` with `reason`.
    async fn fail_stored(&self, mut job: Job, reason: String) -> Result<(), JobsError> {
        let status = JobStatus::Failed { reason };
        if let Err(e) = job.finish(status.clone(), self.ports.clock.now()) {
            tracing::error!(job = %job.id(), error = %e, "job record out of step");
            return Ok(());
        }
        let id = job.id().clone();
        self.ports.jobs.save(job).await?;
        tracing::warn!(job = %id, %status, "job left unfinished by the previous server");
        self.ports
            .events
            .publish(DomainEvent::JobFinished { job: id, status })
            .await;
        Ok(())
    }

    /// The result of the last build with this name, for `post { changed }`.
    async fn previous_result(&self, name: &str) -> Option<pipeline::BuildResult> {
        let filter = crate::jobs::JobFilter {
            name: Some(name.to_owned()),
            limit: Some(1),
            ..Default::default()
        };
        let last = self
            .ports
            .jobs
            .list(&filter)
            .await
            .ok()?
            .into_iter()
            .next()?;
        Some(match last.status() {
            JobStatus::Succeeded => pipeline::BuildResult::Success,
            JobStatus::Failed { .. } => pipeline::BuildResult::Failure,
            JobStatus::Aborted { .. } | JobStatus::TimedOut => pipeline::BuildResult::Aborted,
            JobStatus::Queued | JobStatus::Provisioning | JobStatus::Running => return None,
        })
    }

    async fn execute(
        self: Arc<Self>,
        mut job: Job,
        request: RunRequest,
        journal: Arc<Journal>,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
        masker: SecretMasker,
    ) {
        let id = job.id().clone();
        let (pump_tx, pump_rx) = mpsc::unbounded_channel();
        let pump = tokio::spawn(pump(
            id.clone(),
            self.ports.jobs.clone(),
            self.ports.events.clone(),
            pump_rx,
            journal.clone(),
        ));
        let output = Arc::new(JobOutput {
            job: id.clone(),
            journal: journal.clone(),
            clock: self.ports.clock.clone(),
            pump: pump_tx,
            inner: Arc::downgrade(&self),
            waiting: Mutex::new(HashMap::new()),
            workers: Mutex::new(Workers::default()),
            partial: Mutex::new(HashMap::new()),
            max_line: self.config.max_line_bytes,
            masker: masker.clone(),
        });

        let status = if cancel.is_cancelled() {
            let why = lock(&reason).clone().unwrap_or_else(|| "cancelled".into());
            JobStatus::Aborted { reason: why }
        } else {
            self.start(&mut job, &journal).await;
            let timed_out = Arc::new(AtomicBool::new(false));
            let timer = self.config.job_timeout.map(|limit| {
                let clock = self.ports.clock.clone();
                let cancel = cancel.clone();
                let timed_out = timed_out.clone();
                tokio::spawn(async move {
                    clock.sleep(limit).await;
                    timed_out.store(true, Ordering::SeqCst);
                    cancel.cancel();
                })
            });
            let result = self
                .runner
                .run(request, output.clone(), cancel.clone())
                .await;
            if let Some(timer) = timer {
                timer.abort();
            }
            if timed_out.load(Ordering::SeqCst) {
                JobStatus::TimedOut
            } else {
                match result.status {
                    RunStatus::Success => JobStatus::Succeeded,
                    RunStatus::Failure { reason, .. } => JobStatus::Failed { reason },
                    RunStatus::Aborted {
                        reason: runner_reason,
                    } => JobStatus::Aborted {
                        reason: lock(&reason).clone().unwrap_or(runner_reason),
                    },
                    RunStatus::TimedOut { .. } => JobStatus::TimedOut,
                }
            }
        };
        output.settle();
        drop(output);
        if let Err(e) = pump.await {
            tracing::error!(job = %id, error = %e, "log writer failed");
        }
        // A step's failure message may quote a secret (`error "${TOKEN}"`).
        let status = match status {
            JobStatus::Failed { reason } => JobStatus::Failed {
                reason: masker.mask(&reason),
            },
            JobStatus::Aborted { reason } => JobStatus::Aborted {
                reason: masker.mask(&reason),
            },
            other => other,
        };
        self.finish(job, status, &journal).await;
        lock(&self.running).remove(&id);
    }

    async fn start(&self, job: &mut Job, journal: &Journal) {
        let now = self.ports.clock.now();
        if let Err(e) = job.start(now) {
            tracing::error!(job = %job.id(), error = %e, "job record out of step");
        }
        if let Err(e) = self.ports.jobs.save(job.clone()).await {
            tracing::error!(job = %job.id(), error = %e, "cannot record job start");
        }
        journal.push(now, UpdateKind::Status(JobStatus::Running));
        self.ports
            .events
            .publish(DomainEvent::JobStarted {
                job: job.id().clone(),
            })
            .await;
    }

    async fn finish(&self, mut job: Job, status: JobStatus, journal: &Journal) {
        let now = self.ports.clock.now();
        let id = job.id().clone();
        if let Err(e) = job.finish(status.clone(), now) {
            tracing::error!(job = %id, error = %e, "job record out of step");
        }
        if let Err(e) = self.ports.jobs.save(job).await {
            tracing::error!(job = %id, error = %e, "cannot record job end");
        }
        tracing::info!(job = %id, %status, "job finished");
        journal.push(now, UpdateKind::Status(status.clone()));
        journal.close();
        self.ports
            .events
            .publish(DomainEvent::JobFinished {
                job: id.clone(),
                status,
            })
            .await;
        let bytes = journal.log_bytes();
        let mut journals = lock(&self.journals);
        journals.finished.push_back((id, bytes));
        journals.finished_bytes += bytes;
        while journals.finished.len() > self.config.kept_journals
            || journals.finished_bytes > self.config.kept_journal_bytes
        {
            let Some((old, bytes)) = journals.finished.pop_front() else {
                break;
            };
            journals.finished_bytes -= bytes;
            journals.by_job.remove(&old);
        }
    }
}

/// Every `credentials('id')` of the pipeline (its own `environment` and
/// every stage's), with the variable it binds, in file order.
fn credential_vars(pipeline: &pipeline::Pipeline) -> Vec<(&pipeline::EnvVar, &str)> {
    let stages = pipeline.all_stages();
    pipeline
        .environment
        .iter()
        .chain(stages.iter().flat_map(|s| s.environment.iter()))
        .filter_map(|var| match &var.value {
            pipeline::EnvValue::Credentials(id) => Some((var, id.as_str())),
            pipeline::EnvValue::Text(_) => None,
        })
        .collect()
}

fn invalid(file: &str, diagnostics: Vec<Diagnostic>) -> JobsError {
    JobsError::Invalid(PipelineError::Invalid {
        file: file.to_owned(),
        diagnostics,
    })
}

/// Writes log chunks to the repository and publishes events, in the order
/// the runner produced them. Tells `journal` which lines are stored, so it
/// may drop them from memory; after a failed or misnumbered append it
/// tells no more (the journal then keeps the lines from there on, since
/// the repository's numbering no longer matches).
async fn pump(
    job: JobId,
    jobs: Arc<dyn JobRepository>,
    events: Arc<dyn EventPublisher>,
    mut rx: mpsc::UnboundedReceiver<Box<Pumped>>,
    journal: Arc<Journal>,
) {
    let mut store_failed = false;
    let mut lines = 0;
    let mut in_step = true;
    while let Some(item) = rx.recv().await {
        match *item {
            Pumped::Log(chunk) => {
                let expected = lines;
                lines += 1;
                match jobs.append_log(&job, chunk).await {
                    Ok(seq) if in_step && seq == expected => journal.stored(lines),
                    Ok(seq) if in_step => {
                        in_step = false;
                        tracing::warn!(job = %job, seq, expected, "the store numbers the job's log differently; its lines stay in memory");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        in_step = false;
                        if !store_failed {
                            store_failed = true;
                            tracing::error!(job = %job, error = %e, "cannot store log; later failures not reported");
                        }
                    }
                }
            }
            Pumped::Event(event) => events.publish(event).await,
            Pumped::Stages(stages) => {
                if let Err(e) = jobs.save_stages(&job, stages).await
                    && !store_failed
                {
                    store_failed = true;
                    tracing::error!(job = %job, error = %e, "cannot store stages; later failures not reported");
                }
            }
            Pumped::Status(status, at) => {
                let stored = match jobs.find_by_id(&job).await {
                    Ok(Some(mut record)) => match record.transition(status, at) {
                        Ok(()) => jobs.save(record).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(None) => Err("the job is not stored".to_owned()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = stored {
                    tracing::warn!(job = %job, error = %e, "cannot record the job's status");
                }
            }
        }
    }
}

/// What goes to the store and the publisher, in order. The queue carries
/// it boxed: its slots are allocated 32 at a time for every job, and a
/// boxed item keeps that at 256 bytes instead of about 2.5 KiB.
enum Pumped {
    Log(LogChunk),
    Event(DomainEvent),
    Stages(Vec<StageSummary>),
    /// The job went between `Running` and `Provisioning`.
    Status(JobStatus, Timestamp),
}

/// Receives the runner's events for one job.
struct JobOutput {
    job: JobId,
    journal: Arc<Journal>,
    clock: Arc<dyn Clock>,
    pump: mpsc::UnboundedSender<Box<Pumped>>,
    inner: std::sync::Weak<Inner>,
    /// Segments whose worker was requested and is not ready yet.
    waiting: Mutex<HashMap<String, ()>>,
    /// Which segments wait for a worker and which have one, for the
    /// job's `Running` / `Provisioning` status.
    workers: Mutex<Workers>,
    /// Unfinished lines per step and stream, with their stage.
    partial: Mutex<PartialLines>,
    /// Longest line kept as one.
    max_line: usize,
    /// The job's secret values, masked in every line and message.
    masker: SecretMasker,
}

/// The segments of a running job by where their worker stands.
#[derive(Debug, Default)]
struct Workers {
    /// Requested, not ready yet.
    requested: std::collections::HashSet<String>,
    /// Ready, not released yet.
    ready: std::collections::HashSet<String>,
    /// Whether the job was last reported `Provisioning`.
    provisioning: bool,
}

impl Workers {
    /// Applies one phase of `segment`; returns the job's new status when
    /// it changes: `Provisioning` while a worker is awaited and no segment
    /// has one, `Running` otherwise. A failed provisioning leaves the status
    /// as it is when no worker is left (the job's end, or a retry, follows).
    fn apply(&mut self, segment: &str, phase: &ProvisionPhase<'_>) -> Option<JobStatus> {
        match phase {
            ProvisionPhase::Requested => {
                self.requested.insert(segment.to_owned());
            }
            ProvisionPhase::Ready { .. } => {
                self.requested.remove(segment);
                self.ready.insert(segment.to_owned());
            }
            ProvisionPhase::Failed { .. } => {
                self.requested.remove(segment);
                if self.requested.is_empty() && self.ready.is_empty() {
                    return None;
                }
            }
            ProvisionPhase::Released { .. } => {
                self.ready.remove(segment);
            }
        }
        let provisioning = !self.requested.is_empty() && self.ready.is_empty();
        (provisioning != self.provisioning).then(|| {
            self.provisioning = provisioning;
            if provisioning {
                JobStatus::Provisioning
            } else {
                JobStatus::Running
            }
        })
    }
}

type PartialLines = HashMap<(String, LogStream), (StagePath, Vec<u8>)>;
type PartialEntry = ((String, LogStream), (StagePath, Vec<u8>));

impl JobOutput {
    /// Records one whole line (without its newline).
    fn line(&self, stage: &StagePath, step_id: Option<&str>, stream: LogStream, line: &[u8]) {
        let at = self.clock.now();
        let line = &*self.masker.mask_bytes(line);
        let mut data = line.to_vec();
        data.push(b'\n');
        self.journal.push_line(
            at,
            UpdateKind::Log {
                stage: stage.name().to_owned(),
                path: stage.names().to_vec(),
                step_id: step_id.map(str::to_owned),
                stream,
                data: line.to_vec(),
            },
            LogChunk {
                at,
                step_id: step_id.map(str::to_owned),
                stream,
                data,
            },
            &self.pump,
        );
    }

    /// Splits a step's output into lines, keeping an unfinished line for
    /// the next chunk.
    fn output(&self, stage: &StagePath, step_id: &str, stream: LogStream, data: &[u8]) {
        let key = (step_id.to_owned(), stream);
        let lines = {
            let mut partial = lock(&self.partial);
            let (_, buffer) = partial
                .entry(key.clone())
                .or_insert_with(|| (stage.clone(), Vec::new()));
            let lines = split_lines(buffer, data, self.max_line, &self.masker);
            if buffer.is_empty() {
                partial.remove(&key);
            }
            lines
        };
        for line in lines {
            self.line(stage, Some(step_id), stream, &line);
        }
    }

    /// Emits what is left of a step's unfinished lines (`None`: of every
    /// step).
    fn flush(&self, step_id: Option<&str>) {
        let taken: Vec<PartialEntry> = {
            let mut partial = lock(&self.partial);
            let keys: Vec<(String, LogStream)> = partial
                .keys()
                .filter(|(id, _)| step_id.is_none_or(|s| s == id))
                .cloned()
                .collect();
            keys.into_iter()
                .filter_map(|k| partial.remove(&k).map(|v| (k, v)))
                .collect()
        };
        for ((id, stream), (stage, mut rest)) in taken {
            for line in finish_lines(&mut rest, self.max_line, &self.masker) {
                self.line(&stage, Some(&id), stream, &line);
            }
        }
    }

    fn waiting_delta(&self, delta: i64) {
        if let Some(inner) = self.inner.upgrade() {
            inner.waiting_segments.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Segments still counted as waiting when the run ends stop counting.
    fn settle(&self) {
        self.flush(None);
        let left = lock(&self.waiting).drain().count();
        self.waiting_delta(-(left as i64));
    }
}

impl RunOutput for JobOutput {
    fn event(&self, event: RunEvent<'_>) {
        let now = self.clock.now();
        match event {
            RunEvent::StageStarted { stage } => {
                self.journal.push(
                    now,
                    UpdateKind::StageStarted {
                        stage: stage.name().to_owned(),
                        path: stage.names().to_vec(),
                    },
                );
                let _ = self
                    .pump
                    .send(Box::new(Pumped::Event(DomainEvent::StageStarted {
                        job: self.job.clone(),
                        stage: stage.name().to_owned(),
                    })));
                let _ = self
                    .pump
                    .send(Box::new(Pumped::Stages(self.journal.stages())));
            }
            RunEvent::StageFinished { stage, status } => {
                let (result, message) = stage_result(status);
                let message = self.masker.mask(&message);
                self.journal.push(
                    now,
                    UpdateKind::StageFinished {
                        stage: stage.name().to_owned(),
                        path: stage.names().to_vec(),
                        result,
                        message,
                    },
                );
                let _ = self
                    .pump
                    .send(Box::new(Pumped::Event(DomainEvent::StageFinished {
                        job: self.job.clone(),
                        stage: stage.name().to_owned(),
                        result,
                    })));
                let _ = self
                    .pump
                    .send(Box::new(Pumped::Stages(self.journal.stages())));
            }
            RunEvent::StepStarted { .. } => {}
            RunEvent::StepFinished { step_id, .. } => self.flush(Some(step_id)),
            RunEvent::Log {
                stage,
                step_id,
                stream,
                data,
            } => self.output(stage, step_id, stream, data),
            RunEvent::System { stage, line } => {
                for line in line.split('\n') {
                    self.line(stage, None, LogStream::System, line.as_bytes());
                }
            }
            RunEvent::Provisioning {
                segment,
                agent,
                phase,
            } => {
                let key = segment.to_string();
                let changed = lock(&self.workers).apply(&key, &phase);
                let (worker, template, phase, message) = match phase {
                    ProvisionPhase::Requested => {
                        if lock(&self.waiting).insert(key.clone(), ()).is_none() {
                            self.waiting_delta(1);
                        }
                        (None, None, WorkerPhase::Requested, String::new())
                    }
                    ProvisionPhase::Ready { worker, template } => {
                        if lock(&self.waiting).remove(&key).is_some() {
                            self.waiting_delta(-1);
                        }
                        (
                            Some(worker.clone()),
                            template.cloned(),
                            WorkerPhase::Ready,
                            String::new(),
                        )
                    }
                    ProvisionPhase::Failed { reason } => {
                        if lock(&self.waiting).remove(&key).is_some() {
                            self.waiting_delta(-1);
                        }
                        (None, None, WorkerPhase::Failed, reason.to_owned())
                    }
                    ProvisionPhase::Released { worker, template } => (
                        Some(worker.clone()),
                        template.cloned(),
                        WorkerPhase::Released,
                        String::new(),
                    ),
                };
                self.journal.push(
                    now,
                    UpdateKind::Worker {
                        segment: key,
                        agent: agent.to_owned(),
                        worker,
                        template,
                        phase,
                        message,
                    },
                );
                if let Some(status) = changed {
                    self.journal.push(now, UpdateKind::Status(status.clone()));
                    let _ = self.pump.send(Box::new(Pumped::Status(status, now)));
                }
            }
        }
    }
}

fn stage_result(status: &StageStatus) -> (StageResult, String) {
    match status {
        StageStatus::Success => (StageResult::Success, String::new()),
        StageStatus::Failure { reason, .. } => (StageResult::Failure, reason.clone()),
        StageStatus::Aborted { reason } => (StageResult::Aborted, reason.clone()),
        StageStatus::Skipped(why) => (StageResult::Skipped, format!("skipped due to {why}")),
    }
}

#[cfg(test)]
mod tests;
