//! The pipeline runner: executes a validated [`Pipeline`] on workers, the way
//! Jenkins runs a declarative pipeline.
//!
//! The runner walks the [`Plan`]: stages in order, nested stages, parallel
//! branches at the same time (with `failFast`), `when`, `post` at stage and
//! pipeline level, `options { timeout; retry }`, and the block steps (`dir`,
//! `withEnv`, `timeout`, `retry`) and server-side steps (`echo`, `error`,
//! `sleep`) itself. Only leaf actions (`sh`, `writeFile`) go to a worker,
//! through a [`WorkerLink`](crate::worker_link::WorkerLink) obtained from a
//! [`WorkerProvider`] for the step's agent segment:
//!
//! - the top-level agent's worker is acquired when the first step needs it and
//!   released after the pipeline's `post`;
//! - a stage with its own agent acquires its worker when the stage starts
//!   (after `when` with `beforeAgent true`, before it otherwise, as Jenkins
//!   does) and releases it right after the stage's `post`.
//!
//! Every acquired worker is released exactly once, whatever happens: failure,
//! cancel, timeout, a lost worker or a provisioning error. Cancellation is
//! cooperative: a running step is cancelled with `cancel_step` and awaited
//! (for at most [`RunnerConfig::cancel_grace`]), a provisioning in progress
//! is cancelled by dropping its request, and the code that acquired a worker
//! always gets to release it. `post` blocks still run after an abort.
//!
//! Each step's environment is layered: the submission's parameters, then
//! `BUILD_NUMBER`, `JOB_NAME` and `BRANCH_NAME`, then the pipeline's
//! `environment`, the stage's, and `withEnv`; each value (and each
//! double-quoted step argument) is expanded against the layers below it.
//! `credentials('id')` is resolved through a [`SecretResolver`]; the runner
//! reports output as it comes, and the job's output (`submit`) masks the
//! values with [`SecretMasker`](crate::mask::SecretMasker).
//!
//! What happens is reported as [`RunEvent`]s to a [`RunOutput`] (stage
//! headers, step logs, `echo` lines, provisioning notices) and summed up in a
//! [`RunResult`].

mod env;
mod exec;
mod when;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hodei_domain::JobId;
use hodei_domain::pipeline::{BuildResult, Diagnostic, Pipeline, Plan, SegmentId};
use hodei_domain::{TemplateId, WorkerId};
use tokio_util::sync::CancellationToken;

use crate::provider::WorkerProvider;
use crate::worker_link::{LogStream, StepOutcome};

/// Who and what a run is for: the values a pipeline sees as build variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContext {
    /// The job.
    pub job_id: JobId,
    /// The job's name (`JOB_NAME`).
    pub job_name: String,
    /// The build number (`BUILD_NUMBER`).
    pub build_number: u64,
    /// The branch being built (`BRANCH_NAME`, and `when { branch }`); without
    /// one, every `branch` condition is false, as in a Jenkins job that is
    /// not a multibranch one.
    pub branch: Option<String>,
    /// Parameters and environment given with the submission: the bottom
    /// layer of every step's environment.
    pub parameters: BTreeMap<String, String>,
}

/// Resolves `credentials('id')` in `environment` blocks.
#[async_trait]
pub trait SecretResolver: Send + Sync {
    /// The secret with this id, or `None` if there is none.
    async fn resolve(&self, id: &str) -> Option<String>;
}

#[async_trait]
impl SecretResolver for BTreeMap<String, String> {
    async fn resolve(&self, id: &str) -> Option<String> {
        self.get(id).cloned()
    }
}

#[async_trait]
impl SecretResolver for HashMap<String, String> {
    async fn resolve(&self, id: &str) -> Option<String> {
        self.get(id).cloned()
    }
}

/// Everything one run needs besides the runner's own collaborators.
#[derive(Clone)]
pub struct RunRequest {
    /// The job's identity, build variables and parameters.
    pub job: JobContext,
    /// The validated pipeline.
    pub pipeline: Arc<Pipeline>,
    /// Its plan (from [`hodei_domain::pipeline::plan`]).
    pub plan: Arc<Plan>,
    /// The workspace source as a tar archive; empty for none.
    pub source: Arc<[u8]>,
    /// Do not unpack the source (also implied by the pipeline's or a stage's
    /// `options { skipDefaultCheckout() }`).
    pub skip_checkout: bool,
    /// The previous build's result, for `post { changed; fixed; regression }`.
    pub previous_result: Option<BuildResult>,
    /// Resolves `credentials('id')`.
    pub secrets: Arc<dyn SecretResolver>,
}

impl RunRequest {
    /// A request to run `pipeline` for `job`, planned here; without source,
    /// previous result or secrets (set the fields to add them).
    ///
    /// # Errors
    /// The plan's diagnostics when a stage has no agent; never for a
    /// pipeline returned by [`hodei_domain::pipeline::parse`], which checks
    /// this already.
    pub fn new(job: JobContext, pipeline: Pipeline) -> Result<Self, Vec<Diagnostic>> {
        let plan = hodei_domain::pipeline::plan(&pipeline)?;
        Ok(RunRequest {
            job,
            pipeline: Arc::new(pipeline),
            plan: Arc::new(plan),
            source: Arc::from(Vec::new()),
            skip_checkout: false,
            previous_result: None,
            secrets: Arc::new(BTreeMap::<String, String>::new()),
        })
    }
}

impl fmt::Debug for RunRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunRequest")
            .field("job", &self.job)
            .field("segments", &self.plan.segments.len())
            .field("source_bytes", &self.source.len())
            .field("skip_checkout", &self.skip_checkout)
            .field("previous_result", &self.previous_result)
            .finish_non_exhaustive()
    }
}

/// Tuning of the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerConfig {
    /// After asking a worker to cancel a step, how long to wait for the step
    /// to end before giving up on it.
    pub cancel_grace: Duration,
    /// The longest the `post` blocks may run after the run was cancelled or
    /// timed out (they run even then, as in Jenkins).
    pub post_deadline_after_abort: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            cancel_grace: Duration::from_secs(30),
            post_deadline_after_abort: Duration::from_secs(300),
        }
    }
}

/// What happened to a worker of the run, so a client can show a spinner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionPhase<'a> {
    /// A worker was requested from the provider.
    Requested,
    /// The worker is connected and has the workspace.
    Ready {
        /// The worker.
        worker: &'a WorkerId,
        /// The template it was created from (`None` for a static worker).
        template: Option<&'a TemplateId>,
    },
    /// No worker could be had, or the run was aborted while waiting for it.
    Failed {
        /// The provider's reason, or why the run was aborted.
        reason: &'a str,
    },
    /// The worker was given back (and, if ephemeral, destroyed).
    Released {
        /// The worker.
        worker: &'a WorkerId,
        /// The template it was created from (`None` for a static worker).
        template: Option<&'a TemplateId>,
    },
}

/// A stage as a run reports it: its path from the top, the names of the
/// stages it is nested in and then its own (`["Test", "linux", "unit"]`).
/// Sibling stages have distinct names, so a path names one stage even when
/// stages in different branches or parents share a name. The empty path
/// stands for the pipeline itself (its `post`, its errors). Displayed as
/// the stage's own name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StagePath(Vec<String>);

impl StagePath {
    /// The pipeline itself, outside any stage.
    pub fn root() -> Self {
        StagePath(Vec::new())
    }

    /// The path of the stage `name` nested in this one.
    pub fn child(&self, name: &str) -> Self {
        let mut names = self.0.clone();
        names.push(name.to_owned());
        StagePath(names)
    }

    /// The stage's own name; empty for the pipeline.
    pub fn name(&self) -> &str {
        self.0.last().map_or("", String::as_str)
    }

    /// The names from the top.
    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// Whether this is the pipeline itself.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: Into<String>> FromIterator<S> for StagePath {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        StagePath(names.into_iter().map(Into::into).collect())
    }
}

impl fmt::Display for StagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened during a run, in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEvent<'a> {
    /// A stage starts (also for stages that will be reported skipped).
    StageStarted {
        /// The stage.
        stage: &'a StagePath,
    },
    /// A stage ended.
    StageFinished {
        /// The stage.
        stage: &'a StagePath,
        /// How.
        status: &'a StageStatus,
    },
    /// A leaf step was sent to a worker.
    StepStarted {
        /// The stage it belongs to (empty for the pipeline's `post`).
        stage: &'a StagePath,
        /// The step's id, unique in the run.
        step_id: &'a str,
        /// What it is (`sh`, its label, or `writeFile`).
        description: &'a str,
    },
    /// Output of a leaf step, as the worker produces it.
    Log {
        /// The stage it belongs to.
        stage: &'a StagePath,
        /// The step.
        step_id: &'a str,
        /// Which stream.
        stream: LogStream,
        /// The bytes.
        data: &'a [u8],
    },
    /// A leaf step ended.
    StepFinished {
        /// The stage it belongs to.
        stage: &'a StagePath,
        /// The step.
        step_id: &'a str,
        /// How it ended (`Cancelled` when the worker was lost or gone).
        outcome: &'a StepOutcome,
    },
    /// A line from the runner itself: `[Pipeline] stage (Build)` headers,
    /// `echo` output, skip and retry notices, errors.
    System {
        /// The stage it belongs to (empty outside stages).
        stage: &'a StagePath,
        /// The line, without a newline.
        line: &'a str,
    },
    /// A worker's provisioning progress.
    Provisioning {
        /// The agent segment the worker is for.
        segment: SegmentId,
        /// The agent as a short phrase (`label 'linux'`).
        agent: &'a str,
        /// What happened.
        phase: ProvisionPhase<'a>,
    },
}

/// Receives what happens during a run. Called from the runner's tasks, in
/// order per stage; it must not block for long.
pub trait RunOutput: Send + Sync {
    /// One event.
    fn event(&self, event: RunEvent<'_>);
}

/// Why a stage did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Its `when` condition was false.
    When,
    /// An earlier stage failed.
    EarlierFailure,
    /// The run was aborted (cancelled or timed out) before it started.
    Aborted,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::When => "when conditional",
            SkipReason::EarlierFailure => "earlier failure(s)",
            SkipReason::Aborted => "abort",
        })
    }
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageStatus {
    /// Every step passed.
    Success,
    /// A step failed.
    Failure {
        /// What failed, for the user.
        reason: String,
        /// The exit code when a shell step failed.
        exit_code: Option<i32>,
    },
    /// Cancelled, or a timeout expired.
    Aborted {
        /// Why.
        reason: String,
    },
    /// Did not run.
    Skipped(SkipReason),
}

impl StageStatus {
    /// The stage's status as `post` conditions see it.
    pub fn build_result(&self) -> BuildResult {
        match self {
            StageStatus::Success => BuildResult::Success,
            StageStatus::Failure { .. } => BuildResult::Failure,
            StageStatus::Aborted { .. } => BuildResult::Aborted,
            StageStatus::Skipped(_) => BuildResult::NotBuilt,
        }
    }
}

impl fmt::Display for StageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageStatus::Success => f.write_str("success"),
            StageStatus::Failure { reason, .. } => write!(f, "failure: {reason}"),
            StageStatus::Aborted { reason } => write!(f, "aborted: {reason}"),
            StageStatus::Skipped(reason) => write!(f, "skipped due to {reason}"),
        }
    }
}

/// One stage's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageResult {
    /// The stage name.
    pub name: String,
    /// Its path from the top.
    pub path: StagePath,
    /// How it ended (after its last attempt).
    pub status: StageStatus,
    /// How many times it ran (`options { retry }`); 0 when skipped.
    pub attempts: u32,
}

/// The final status of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunStatus {
    /// Every stage passed (or was skipped by `when`) and so did `post`.
    Success,
    /// A step failed.
    Failure {
        /// The first failure, for the user.
        reason: String,
        /// Its exit code when a shell step failed.
        exit_code: Option<i32>,
    },
    /// Cancelled, or a `timeout` step or stage timeout expired.
    Aborted {
        /// Why.
        reason: String,
    },
    /// The pipeline's `options { timeout }` expired.
    TimedOut {
        /// The limit that was exceeded.
        after: Duration,
    },
}

impl RunStatus {
    /// The status as Jenkins' build result.
    pub fn build_result(&self) -> BuildResult {
        match self {
            RunStatus::Success => BuildResult::Success,
            RunStatus::Failure { .. } => BuildResult::Failure,
            RunStatus::Aborted { .. } | RunStatus::TimedOut { .. } => BuildResult::Aborted,
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunStatus::Success => f.write_str("success"),
            RunStatus::Failure { reason, .. } => write!(f, "failure: {reason}"),
            RunStatus::Aborted { reason } => write!(f, "aborted: {reason}"),
            RunStatus::TimedOut { after } => write!(f, "timed out after {after:?}"),
        }
    }
}

/// What a run ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// The final status.
    pub status: RunStatus,
    /// Every stage (nested ones too) in file order, with its status.
    pub stages: Vec<StageResult>,
}

impl RunResult {
    /// The result of the first stage with this name, in file order.
    pub fn stage(&self, name: &str) -> Option<&StageResult> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The result of the stage at this path.
    pub fn stage_at(&self, path: &StagePath) -> Option<&StageResult> {
        self.stages.iter().find(|s| &s.path == path)
    }
}

/// The pipeline runner use case.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use hodei_application::runner::*;
/// # async fn example(provider: Arc<dyn hodei_application::provider::WorkerProvider>,
/// #                  request: RunRequest, output: Arc<dyn RunOutput>) {
/// let runner = PipelineRunner::new(provider, RunnerConfig::default());
/// let cancel = tokio_util::sync::CancellationToken::new();
/// let result = runner.run(request, output, cancel).await;
/// println!("{}", result.status);
/// # }
/// ```
#[derive(Clone)]
pub struct PipelineRunner {
    provider: Arc<dyn WorkerProvider>,
    config: RunnerConfig,
}

impl fmt::Debug for PipelineRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineRunner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PipelineRunner {
    /// A runner that gets its workers from `provider`.
    pub fn new(provider: Arc<dyn WorkerProvider>, config: RunnerConfig) -> Self {
        PipelineRunner { provider, config }
    }

    /// Runs the pipeline to its end and returns its result.
    ///
    /// Cancelling `cancel` aborts the run: running steps are cancelled, later
    /// stages are skipped, `post` blocks still run (bounded by
    /// [`RunnerConfig::post_deadline_after_abort`]), every worker is
    /// released, and the status is [`RunStatus::Aborted`]. The future should
    /// be driven to completion; dropping it may leave workers unreleased.
    pub async fn run(
        &self,
        request: RunRequest,
        output: Arc<dyn RunOutput>,
        cancel: CancellationToken,
    ) -> RunResult {
        exec::run(
            self.provider.clone(),
            self.config.clone(),
            request,
            output,
            cancel,
        )
        .await
    }
}
