//! The engine behind [`PipelineRunner::run`](super::PipelineRunner::run).
//!
//! Cancellation is cooperative: every interruptible place (a running step, a
//! `sleep`, a provisioning wait) watches the [`Scope`] it runs in; a scope is
//! cancelled by the caller's token, a timeout, or a `failFast` sibling, and
//! remembers why. Bodies are never dropped half-way: whoever acquires a
//! worker always gets to release it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::Poll;
use std::time::Duration;

use hodei_domain::WorkerId;
use hodei_domain::pipeline::{
    BuildResult, Pipeline, Plan, PlanBody, PlanStage, PostBlock, SegmentId, Stage, StageBody, Step,
    StepKind,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::env::{self, Env};
use super::when;
use super::{
    ProvisionPhase, RunEvent, RunOutput, RunRequest, RunResult, RunStatus, RunnerConfig,
    SkipReason, StagePath, StageResult, StageStatus,
};
use crate::provider::{ProvisionError, SegmentRequest, WorkerProvider};
use crate::worker_link::{
    LinkError, LogSink, LogStream, StepAction, StepOutcome, StepRequest, WorkerLink,
};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a scope was interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    /// The caller cancelled the run.
    Cancelled,
    /// A `timeout` step or a stage's `options { timeout }` expired.
    Timeout(String),
    /// The pipeline's `options { timeout }` expired.
    PipelineTimeout(Duration),
    /// A sibling branch of a `failFast` parallel failed.
    FailFast(String),
    /// The `post` blocks after an abort ran past their deadline.
    PostDeadline(Duration),
    /// The worker cancelled the step by itself.
    Worker(String),
}

impl Cause {
    fn reason(&self) -> String {
        match self {
            Cause::Cancelled => "cancelled".into(),
            Cause::Timeout(limit) => format!("timeout of {limit} exceeded"),
            Cause::PipelineTimeout(after) => {
                format!("the pipeline's timeout of {after:?} was exceeded")
            }
            Cause::FailFast(branch) => format!("failed in branch {branch}"),
            Cause::PostDeadline(after) => {
                format!("post steps after the abort ran longer than {after:?}")
            }
            Cause::Worker(reason) => reason.clone(),
        }
    }
}

/// How a piece of the pipeline ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Success,
    Failure {
        reason: String,
        exit_code: Option<i32>,
    },
    Aborted(Cause),
}

impl Outcome {
    fn failure(reason: impl Into<String>) -> Self {
        Outcome::Failure {
            reason: reason.into(),
            exit_code: None,
        }
    }

    fn is_success(&self) -> bool {
        *self == Outcome::Success
    }

    fn build_result(&self) -> hodei_domain::pipeline::BuildResult {
        use hodei_domain::pipeline::BuildResult as R;
        match self {
            Outcome::Success => R::Success,
            Outcome::Failure { .. } => R::Failure,
            Outcome::Aborted(_) => R::Aborted,
        }
    }

    fn severity(&self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failure { .. } => 1,
            Outcome::Aborted(_) => 2,
        }
    }

    /// The worse of two outcomes (aborted over failure over success); on a
    /// tie, the first one.
    fn worse(self, other: Outcome) -> Outcome {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    fn stage_status(&self) -> StageStatus {
        match self {
            Outcome::Success => StageStatus::Success,
            Outcome::Failure { reason, exit_code } => StageStatus::Failure {
                reason: reason.clone(),
                exit_code: *exit_code,
            },
            Outcome::Aborted(cause) => StageStatus::Aborted {
                reason: cause.reason(),
            },
        }
    }
}

/// A cancellable region of the run that knows why it was cancelled.
#[derive(Debug, Clone)]
struct Scope(Arc<ScopeInner>);

#[derive(Debug)]
struct ScopeInner {
    token: CancellationToken,
    cause: StdMutex<Option<Cause>>,
    parent: Option<Scope>,
}

impl Scope {
    fn root(token: CancellationToken) -> Self {
        Scope(Arc::new(ScopeInner {
            token,
            cause: StdMutex::new(None),
            parent: None,
        }))
    }

    fn child(&self) -> Self {
        Scope(Arc::new(ScopeInner {
            token: self.0.token.child_token(),
            cause: StdMutex::new(None),
            parent: Some(self.clone()),
        }))
    }

    fn is_cancelled(&self) -> bool {
        self.0.token.is_cancelled()
    }

    async fn cancelled(&self) {
        self.0.token.cancelled().await;
    }

    /// Cancels the scope (and its children) for `cause`, unless it already is.
    fn interrupt(&self, cause: Cause) {
        if let Ok(mut slot) = self.0.cause.lock()
            && slot.is_none()
            && !self.0.token.is_cancelled()
        {
            *slot = Some(cause);
        }
        self.0.token.cancel();
    }

    /// Why the scope was cancelled: the outermost scope with a recorded
    /// cause wins (an outer cancel explains the inner ones); a cancelled
    /// root was cancelled by the caller.
    fn cause(&self) -> Cause {
        let mut found = None;
        let mut scope = Some(self);
        while let Some(s) = scope {
            if let Ok(cause) = s.0.cause.lock()
                && let Some(cause) = cause.as_ref()
            {
                found = Some(cause.clone());
            }
            if s.0.parent.is_none() && s.0.token.is_cancelled() {
                found = Some(Cause::Cancelled);
            }
            scope = s.0.parent.as_ref();
        }
        found.unwrap_or(Cause::Cancelled)
    }
}

/// Runs `body` in a child scope of `scope` that is interrupted with `cause`
/// after `limit`; the body is then awaited to its (prompt) end.
async fn with_timeout<'a, T>(
    scope: &Scope,
    limit: Option<Duration>,
    cause: Cause,
    body: impl FnOnce(Scope) -> BoxFuture<'a, T>,
) -> T {
    let Some(limit) = limit else {
        return body(scope.clone()).await;
    };
    let child = scope.child();
    let mut future = body(child.clone());
    tokio::select! {
        out = &mut future => out,
        () = tokio::time::sleep(limit) => {
            child.interrupt(cause);
            future.await
        }
    }
}

/// Polls every future at the same time and returns their outputs in order.
async fn join_all<T>(futures: Vec<BoxFuture<'_, T>>) -> Vec<T> {
    let mut pending: Vec<Option<BoxFuture<'_, T>>> = futures.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// The worker of one agent segment.
enum SlotState {
    /// Not acquired (yet, or any more).
    Idle,
    /// Acquired and usable.
    Ready(Arc<dyn WorkerLink>),
    /// Provisioning failed; steps on this segment fail with the reason.
    Failed(String),
}

/// The context of a step.
#[derive(Clone)]
struct StepCtx {
    stage: Arc<StagePath>,
    env: Env,
    dir: String,
    segment: Option<SegmentId>,
    scope: Scope,
    /// Whether a worker may still be provisioned (not after an abort).
    may_acquire: bool,
}

struct Run {
    provider: Arc<dyn WorkerProvider>,
    config: RunnerConfig,
    request: RunRequest,
    output: Arc<dyn RunOutput>,
    slots: Vec<Mutex<SlotState>>,
    next_step: AtomicU64,
    results: StdMutex<HashMap<StagePath, StageResult>>,
    /// Per segment: whether the stage that owns it says
    /// `skipDefaultCheckout()`.
    skip_checkout: Vec<bool>,
}

/// Forwards a step's output to the run's output, tagged with its stage.
struct StageSink {
    output: Arc<dyn RunOutput>,
    stage: Arc<StagePath>,
}

impl LogSink for StageSink {
    fn log(&self, step_id: &str, stream: LogStream, data: &[u8]) {
        self.output.event(RunEvent::Log {
            stage: &self.stage,
            step_id,
            stream,
            data,
        });
    }
}

pub(super) async fn run(
    provider: Arc<dyn WorkerProvider>,
    config: RunnerConfig,
    request: RunRequest,
    output: Arc<dyn RunOutput>,
    cancel: CancellationToken,
) -> RunResult {
    let slots = request
        .plan
        .segments
        .iter()
        .map(|_| Mutex::new(SlotState::Idle))
        .collect();
    let mut skip_checkout = vec![false; request.plan.segments.len()];
    own_segments_skipping_checkout(
        &request.pipeline.stages,
        &request.plan.stages,
        &mut skip_checkout,
    );
    let run = Run {
        provider,
        config,
        request,
        output,
        slots,
        next_step: AtomicU64::new(1),
        results: StdMutex::new(HashMap::new()),
        skip_checkout,
    };
    run.pipeline(Scope::root(cancel.child_token())).await
}

impl Run {
    fn system(&self, stage: &StagePath, line: &str) {
        self.output.event(RunEvent::System { stage, line });
    }

    fn record(&self, stage: &StagePath, status: StageStatus, attempts: u32) {
        self.output.event(RunEvent::StageFinished {
            stage,
            status: &status,
        });
        if let Ok(mut results) = self.results.lock() {
            results.insert(
                stage.clone(),
                StageResult {
                    name: stage.name().to_owned(),
                    path: stage.clone(),
                    status,
                    attempts,
                },
            );
        }
    }

    async fn pipeline(&self, root: Scope) -> RunResult {
        let pipeline: &Pipeline = &self.request.pipeline;
        let plan: &Plan = &self.request.plan;
        self.system(&StagePath::root(), "[Pipeline] Start of Pipeline");
        let base = env::base(&self.request.job);
        let (outcome, env) =
            match env::layer(&base, &pipeline.environment, self.request.secrets.as_ref()).await {
                Err(reason) => {
                    self.system(&StagePath::root(), &format!("ERROR: {reason}"));
                    for stage in &pipeline.stages {
                        self.skip_tree(&StagePath::root(), stage, SkipReason::EarlierFailure);
                    }
                    (Outcome::failure(reason), base)
                }
                Ok(env) => {
                    let attempts = pipeline.options.retry.unwrap_or(1).max(1);
                    let limit = pipeline.options.timeout.map(|d| d.to_std());
                    let cause = Cause::PipelineTimeout(limit.unwrap_or_default());
                    let stages_env = env.clone();
                    let outcome = with_timeout(&root, limit, cause, |scope| {
                        Box::pin(async move {
                            let mut attempt = 1;
                            loop {
                                let outcome = self
                                    .stages(
                                        &pipeline.stages,
                                        &plan.stages,
                                        &stages_env,
                                        &scope,
                                        &StagePath::root(),
                                    )
                                    .await;
                                if outcome.is_success()
                                    || attempt >= attempts
                                    || scope.is_cancelled()
                                {
                                    break outcome;
                                }
                                attempt += 1;
                                self.system(
                                    &StagePath::root(),
                                    &format!(
                                        "Retrying the pipeline (attempt {attempt} of {attempts})"
                                    ),
                                );
                            }
                        })
                    })
                    .await;
                    (outcome, env)
                }
            };

        let ctx = StepCtx {
            stage: Arc::new(StagePath::root()),
            env,
            dir: String::new(),
            segment: plan.top,
            scope: root.clone(),
            may_acquire: !root.is_cancelled(),
        };
        let outcome = self.post_blocks(&pipeline.post, outcome, ctx).await;
        for index in 0..self.slots.len() {
            self.release(SegmentId(index), "the pipeline has finished")
                .await;
        }
        self.system(&StagePath::root(), "[Pipeline] End of Pipeline");

        let status = match outcome {
            Outcome::Success => RunStatus::Success,
            Outcome::Failure { reason, exit_code } => RunStatus::Failure { reason, exit_code },
            Outcome::Aborted(Cause::PipelineTimeout(after)) => RunStatus::TimedOut { after },
            Outcome::Aborted(cause) => RunStatus::Aborted {
                reason: cause.reason(),
            },
        };
        if let RunStatus::Failure { reason, .. } | RunStatus::Aborted { reason } = &status {
            self.system(&StagePath::root(), &format!("ERROR: {reason}"));
        }
        let finished = match status.build_result() {
            BuildResult::Success => "SUCCESS",
            BuildResult::Unstable => "UNSTABLE",
            BuildResult::Failure => "FAILURE",
            BuildResult::Aborted => "ABORTED",
            BuildResult::NotBuilt => "NOT_BUILT",
        };
        self.system(&StagePath::root(), &format!("Finished: {finished}"));
        let mut results = self
            .results
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default();
        let stages = stage_paths(&pipeline.stages)
            .into_iter()
            .filter_map(|path| results.remove(&path))
            .collect();
        RunResult { status, stages }
    }

    /// Runs stages one after the other; after a failure or an abort the
    /// rest are skipped. Returns the first unsuccessful outcome.
    fn stages<'a>(
        &'a self,
        stages: &'a [Stage],
        plans: &'a [PlanStage],
        env: &'a Env,
        scope: &'a Scope,
        parent: &'a StagePath,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let mut outcome = Outcome::Success;
            for (stage, plan) in stages.iter().zip(plans) {
                if !outcome.is_success() || scope.is_cancelled() {
                    let reason = match outcome {
                        Outcome::Failure { .. } => SkipReason::EarlierFailure,
                        _ => SkipReason::Aborted,
                    };
                    self.skip_tree(parent, stage, reason);
                    continue;
                }
                outcome = self.stage(stage, plan, env, scope, parent).await;
            }
            if outcome.is_success() && scope.is_cancelled() {
                outcome = Outcome::Aborted(scope.cause());
            }
            outcome
        })
    }

    /// Reports a stage and every stage nested in it as skipped.
    fn skip_tree(&self, parent: &StagePath, stage: &Stage, reason: SkipReason) {
        let path = parent.child(&stage.name);
        self.output.event(RunEvent::StageStarted { stage: &path });
        self.system(
            &path,
            &format!("Stage \"{}\" skipped due to {reason}", stage.name),
        );
        self.skip_children(&path, stage, reason);
        self.record(&path, StageStatus::Skipped(reason), 0);
    }

    /// Reports every stage nested in `stage` (at `path`) as skipped.
    fn skip_children(&self, path: &StagePath, stage: &Stage, reason: SkipReason) {
        match &stage.body {
            StageBody::Steps(_) => {}
            StageBody::Stages(children)
            | StageBody::Parallel {
                branches: children, ..
            } => {
                for child in children {
                    self.skip_tree(path, child, reason);
                }
            }
        }
    }

    /// Runs one stage with its `options { retry }`.
    fn stage<'a>(
        &'a self,
        stage: &'a Stage,
        plan: &'a PlanStage,
        env: &'a Env,
        scope: &'a Scope,
        parent: &'a StagePath,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.stage_inner(stage, plan, env, scope, parent))
    }

    async fn stage_inner(
        &self,
        stage: &Stage,
        plan: &PlanStage,
        env: &Env,
        scope: &Scope,
        parent: &StagePath,
    ) -> Outcome {
        let path = Arc::new(parent.child(&stage.name));
        let name = stage.name.as_str();
        self.output.event(RunEvent::StageStarted { stage: &path });
        self.system(&path, &format!("[Pipeline] stage ({name})"));
        let attempts = stage.options.retry.unwrap_or(1).max(1);
        let mut attempt = 1;
        loop {
            match self.stage_attempt(stage, plan, env, scope, &path).await {
                None => {
                    self.system(
                        &path,
                        &format!("Stage \"{name}\" skipped due to when conditional"),
                    );
                    self.skip_children(&path, stage, SkipReason::When);
                    self.record(&path, StageStatus::Skipped(SkipReason::When), attempt - 1);
                    return Outcome::Success;
                }
                Some(outcome) => {
                    if outcome.is_success() || attempt >= attempts || scope.is_cancelled() {
                        self.record(&path, outcome.stage_status(), attempt);
                        return outcome;
                    }
                    attempt += 1;
                    self.system(
                        &path,
                        &format!("Retrying stage {name} (attempt {attempt} of {attempts})"),
                    );
                }
            }
        }
    }

    /// One attempt of a stage: `when`, its agent, its environment, its body
    /// (under its `options { timeout }`), its `post`, then its agent's
    /// release. `None` when `when` skipped it.
    async fn stage_attempt(
        &self,
        stage: &Stage,
        plan: &PlanStage,
        outer_env: &Env,
        scope: &Scope,
        path: &Arc<StagePath>,
    ) -> Option<Outcome> {
        let name = path.clone();
        let branch = self.request.job.branch.as_deref();
        if let Some(w) = &stage.when
            && w.before_agent
        {
            match when::evaluate(w, branch, outer_env) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(reason) => return Some(Outcome::failure(reason)),
            }
        }
        let own = plan.own_agent.then_some(plan.segment).flatten();
        if let Some(segment) = own
            && let Some(slot) = self.slots.get(segment.0)
        {
            *slot.lock().await = SlotState::Idle;
        }
        let limit = stage.options.timeout.map(|d| d.to_std());
        let cause = Cause::Timeout(
            stage
                .options
                .timeout
                .map(|d| d.to_string())
                .unwrap_or_default(),
        );
        let (result, env) = with_timeout(scope, limit, cause, |scope| {
            let name = name.clone();
            Box::pin(async move {
                if let Some(segment) = own
                    && let Err(outcome) = self.worker(segment, &scope, true, &name).await
                {
                    return (Some(outcome), outer_env.clone());
                }
                let env =
                    match env::layer(outer_env, &stage.environment, self.request.secrets.as_ref())
                        .await
                    {
                        Ok(env) => env,
                        Err(reason) => {
                            self.system(&name, &format!("ERROR: {reason}"));
                            return (Some(Outcome::failure(reason)), outer_env.clone());
                        }
                    };
                if let Some(w) = &stage.when
                    && !w.before_agent
                {
                    match when::evaluate(w, branch, &env) {
                        Ok(true) => {}
                        Ok(false) => return (None, env),
                        Err(reason) => return (Some(Outcome::failure(reason)), env),
                    }
                }
                let outcome = self.body(stage, plan, &name, &env, &scope).await;
                (Some(outcome), env)
            })
        })
        .await;
        let result = match result {
            None => None,
            Some(outcome) => {
                let ctx = StepCtx {
                    stage: name.clone(),
                    env,
                    dir: String::new(),
                    segment: plan.segment,
                    scope: scope.clone(),
                    may_acquire: !scope.is_cancelled(),
                };
                Some(self.post_blocks(&stage.post, outcome, ctx).await)
            }
        };
        if let Some(segment) = own {
            self.release(segment, &format!("stage {} has finished", stage.name))
                .await;
        }
        result
    }

    async fn body(
        &self,
        stage: &Stage,
        plan: &PlanStage,
        name: &Arc<StagePath>,
        env: &Env,
        scope: &Scope,
    ) -> Outcome {
        match (&stage.body, &plan.body) {
            (StageBody::Steps(steps), _) => {
                let ctx = StepCtx {
                    stage: name.clone(),
                    env: env.clone(),
                    dir: String::new(),
                    segment: plan.segment,
                    scope: scope.clone(),
                    may_acquire: true,
                };
                self.steps(steps, ctx).await
            }
            (StageBody::Stages(children), PlanBody::Sequential(plans)) => {
                self.stages(children, plans, env, scope, name).await
            }
            (
                StageBody::Parallel { branches, .. },
                PlanBody::Parallel {
                    fail_fast,
                    branches: plans,
                },
            ) => {
                self.parallel(branches, plans, *fail_fast, env, scope, name)
                    .await
            }
            _ => Outcome::failure(format!(
                "{}: the plan of stage {} does not match the pipeline",
                stage.pos, stage.name
            )),
        }
    }

    /// Runs branches at the same time; with `fail_fast`, the first failure
    /// aborts the others.
    async fn parallel(
        &self,
        branches: &[Stage],
        plans: &[PlanStage],
        fail_fast: bool,
        env: &Env,
        scope: &Scope,
        parent: &StagePath,
    ) -> Outcome {
        let group = scope.child();
        let futures: Vec<BoxFuture<'_, Outcome>> = branches
            .iter()
            .zip(plans)
            .map(|(branch, plan)| {
                let group = group.clone();
                Box::pin(async move {
                    let outcome = self.stage(branch, plan, env, &group, parent).await;
                    if fail_fast && !outcome.is_success() && !group.is_cancelled() {
                        group.interrupt(Cause::FailFast(branch.name.clone()));
                    }
                    outcome
                }) as BoxFuture<'_, Outcome>
            })
            .collect();
        let outcomes = join_all(futures).await;
        // The branch that failed explains the others' fail-fast aborts.
        let mut combined = Outcome::Success;
        for outcome in outcomes {
            if matches!(outcome, Outcome::Aborted(Cause::FailFast(_))) {
                combined = combined.worse(Outcome::Success);
            } else {
                combined = combined.worse(outcome);
            }
        }
        if combined.is_success() && scope.is_cancelled() {
            combined = Outcome::Aborted(scope.cause());
        }
        combined
    }

    /// Runs the `post` blocks that apply, in Jenkins' order; a failing block
    /// makes a successful outcome a failure. After an abort they run in a
    /// fresh scope bounded by the configured deadline.
    async fn post_blocks(&self, blocks: &[PostBlock], outcome: Outcome, ctx: StepCtx) -> Outcome {
        if blocks.is_empty() {
            return outcome;
        }
        let aborted = ctx.scope.is_cancelled();
        let (scope, limit) = if aborted {
            (
                Scope::root(CancellationToken::new()),
                Some(self.config.post_deadline_after_abort),
            )
        } else {
            (ctx.scope.clone(), None)
        };
        let cause = Cause::PostDeadline(self.config.post_deadline_after_abort);
        let mut ordered: Vec<&PostBlock> = blocks.iter().collect();
        ordered.sort_by_key(|b| b.condition);
        with_timeout(&scope, limit, cause, |scope| {
            Box::pin(async move {
                let mut outcome = outcome;
                let stage = ctx.stage.clone();
                for block in ordered {
                    let current = outcome.build_result();
                    if !block
                        .condition
                        .applies(current, self.request.previous_result)
                    {
                        continue;
                    }
                    self.system(&stage, &format!("[Pipeline] post ({})", block.condition));
                    let ctx = StepCtx {
                        scope: scope.clone(),
                        ..ctx.clone()
                    };
                    let result = self.steps(&block.steps, ctx).await;
                    if let Outcome::Failure { reason, .. }
                    | Outcome::Aborted(Cause::Worker(reason)) = &result
                    {
                        self.system(
                            &stage,
                            &format!(
                                "Error when executing {} post condition: {reason}",
                                block.condition
                            ),
                        );
                    }
                    outcome = outcome.worse(result);
                }
                outcome
            })
        })
        .await
    }

    /// Runs steps one after the other, stopping at the first unsuccessful one.
    fn steps<'a>(&'a self, steps: &'a [Step], ctx: StepCtx) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            for step in steps {
                if ctx.scope.is_cancelled() {
                    return Outcome::Aborted(ctx.scope.cause());
                }
                let outcome = self.step(step, &ctx).await;
                if !outcome.is_success() {
                    return outcome;
                }
            }
            Outcome::Success
        })
    }

    async fn step(&self, step: &Step, ctx: &StepCtx) -> Outcome {
        let stage = &*ctx.stage;
        self.system(stage, &format!("[Pipeline] {}", step.kind.name()));
        match &step.kind {
            StepKind::Sh {
                script,
                label,
                return_status,
            } => {
                let script = env::expand(script, &ctx.env);
                let description = label.clone().unwrap_or_else(|| "sh".to_string());
                let outcome = self
                    .leaf(ctx, StepAction::Sh { script }, &description)
                    .await;
                match outcome {
                    Outcome::Failure {
                        exit_code: Some(_), ..
                    } if *return_status => Outcome::Success,
                    other => other,
                }
            }
            StepKind::WriteFile { file, text } => {
                let action = StepAction::WriteFile {
                    path: env::expand(file, &ctx.env),
                    text: env::expand(text, &ctx.env),
                };
                self.leaf(ctx, action, "writeFile").await
            }
            StepKind::Echo(message) => {
                let message = env::expand(message, &ctx.env);
                for line in message.lines() {
                    self.system(stage, line);
                }
                if message.is_empty() {
                    self.system(stage, "");
                }
                Outcome::Success
            }
            StepKind::Error(message) => {
                let message = env::expand(message, &ctx.env);
                self.system(stage, &format!("ERROR: {message}"));
                Outcome::failure(message)
            }
            StepKind::Sleep(duration) => {
                self.system(stage, &format!("Sleeping for {duration}"));
                tokio::select! {
                    () = tokio::time::sleep(duration.to_std()) => Outcome::Success,
                    () = ctx.scope.cancelled() => Outcome::Aborted(ctx.scope.cause()),
                }
            }
            StepKind::Dir { path, steps } => {
                let path = env::expand(path, &ctx.env);
                let dir = join_dir(&ctx.dir, &path);
                self.system(stage, &format!("Running in {dir}"));
                self.steps(steps, StepCtx { dir, ..ctx.clone() }).await
            }
            StepKind::WithEnv { vars, steps } => {
                let env = env::with_vars(&ctx.env, vars);
                self.steps(steps, StepCtx { env, ..ctx.clone() }).await
            }
            StepKind::Timeout { limit, steps } => {
                self.system(stage, &format!("Timeout set to expire in {limit}"));
                let cause = Cause::Timeout(limit.to_string());
                let outcome = with_timeout(&ctx.scope, Some(limit.to_std()), cause, |scope| {
                    self.steps(
                        steps,
                        StepCtx {
                            scope,
                            ..ctx.clone()
                        },
                    )
                })
                .await;
                if matches!(outcome, Outcome::Aborted(Cause::Timeout(_))) {
                    self.system(stage, "Timeout has been exceeded");
                }
                outcome
            }
            StepKind::Retry { count, steps } => {
                let attempts = (*count).max(1);
                let mut attempt = 1;
                loop {
                    let outcome = self.steps(steps, ctx.clone()).await;
                    // An abort from outside (cancel, an enclosing timeout,
                    // failFast) is not retried; a failure or a timeout
                    // inside the body is.
                    if outcome.is_success() || attempt >= attempts || ctx.scope.is_cancelled() {
                        break outcome;
                    }
                    if let Outcome::Failure { reason, .. } = &outcome {
                        self.system(stage, &format!("ERROR: {reason}"));
                    }
                    attempt += 1;
                    self.system(
                        stage,
                        &format!("Retrying (attempt {attempt} of {attempts})"),
                    );
                }
            }
        }
    }

    /// Sends a leaf action to the worker of the step's segment and waits for
    /// its end; an interrupt cancels it on the worker.
    async fn leaf(&self, ctx: &StepCtx, action: StepAction, description: &str) -> Outcome {
        let stage = &*ctx.stage;
        let Some(segment) = ctx.segment else {
            return Outcome::failure(format!(
                "step {description} in {} needs a worker, but no agent applies",
                if stage.is_root() {
                    "the pipeline".to_string()
                } else {
                    format!("stage {stage}")
                }
            ));
        };
        let link = match self
            .worker(segment, &ctx.scope, ctx.may_acquire, stage)
            .await
        {
            Ok(link) => link,
            Err(outcome) => return outcome,
        };
        let step_id = format!("step-{}", self.next_step.fetch_add(1, Ordering::Relaxed));
        let request = StepRequest {
            step_id: step_id.clone(),
            stage: stage.to_string(),
            action,
            environment: (*ctx.env).clone(),
            dir: ctx.dir.clone(),
        };
        self.output.event(RunEvent::StepStarted {
            stage,
            step_id: &step_id,
            description,
        });
        let sink: Arc<dyn LogSink> = Arc::new(StageSink {
            output: self.output.clone(),
            stage: ctx.stage.clone(),
        });
        let mut running = link.run_step(request, sink);
        let result = tokio::select! {
            result = &mut running => result,
            () = ctx.scope.cancelled() => {
                let reason = ctx.scope.cause().reason();
                if let Err(error) = link.cancel_step(&step_id, &reason).await {
                    tracing::warn!(%error, step_id, "could not cancel a step");
                }
                match tokio::time::timeout(self.config.cancel_grace, running).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(step_id, "the worker did not end a cancelled step in time");
                        Ok(StepOutcome::Cancelled)
                    }
                }
            }
        };
        let finished = match &result {
            Ok(outcome) => outcome.clone(),
            Err(_) => StepOutcome::Cancelled,
        };
        self.output.event(RunEvent::StepFinished {
            stage,
            step_id: &step_id,
            outcome: &finished,
        });
        match result {
            Ok(StepOutcome::Success) => Outcome::Success,
            Ok(StepOutcome::Failed { exit_code }) => {
                if ctx.scope.is_cancelled() {
                    Outcome::Aborted(ctx.scope.cause())
                } else {
                    Outcome::Failure {
                        reason: format!("script returned exit code {exit_code}"),
                        exit_code: Some(exit_code),
                    }
                }
            }
            Ok(StepOutcome::Cancelled) => {
                if ctx.scope.is_cancelled() {
                    Outcome::Aborted(ctx.scope.cause())
                } else {
                    Outcome::Aborted(Cause::Worker(format!(
                        "worker {} cancelled step {description}",
                        link.worker_id()
                    )))
                }
            }
            Ok(StepOutcome::Error { message }) => Outcome::failure(message),
            Err(error) => {
                let reason = error.to_string();
                self.system(stage, &format!("ERROR: {reason}"));
                if matches!(
                    error,
                    LinkError::Lost { .. } | LinkError::NotConnected { .. }
                ) {
                    self.lost(segment, &link, &reason).await;
                }
                Outcome::failure(reason)
            }
        }
    }

    /// The worker of `segment`, acquiring it first if needed (and allowed).
    async fn worker(
        &self,
        segment: SegmentId,
        scope: &Scope,
        may_acquire: bool,
        stage: &StagePath,
    ) -> Result<Arc<dyn WorkerLink>, Outcome> {
        let Some(slot) = self.slots.get(segment.0) else {
            return Err(Outcome::failure(format!(
                "agent segment {segment} is not in the plan"
            )));
        };
        let mut state = slot.lock().await;
        match &*state {
            SlotState::Ready(link) => return Ok(link.clone()),
            SlotState::Failed(reason) => return Err(Outcome::failure(reason.clone())),
            SlotState::Idle => {}
        }
        if !may_acquire || scope.is_cancelled() {
            return Err(if scope.is_cancelled() {
                Outcome::Aborted(scope.cause())
            } else {
                Outcome::failure("no worker: the run was aborted before one was provisioned")
            });
        }
        let Some(plan_segment) = self.request.plan.segment(segment) else {
            return Err(Outcome::failure(format!(
                "agent segment {segment} is not in the plan"
            )));
        };
        let agent = plan_segment.agent.kind.to_string();
        let skip_checkout = self.request.skip_checkout
            || self.request.pipeline.options.skip_default_checkout
            || self.skip_checkout.get(segment.0).copied().unwrap_or(false);
        let request = SegmentRequest {
            job_id: self.request.job.job_id.clone(),
            job_name: self.request.job.job_name.clone(),
            build_number: self.request.job.build_number,
            segment: plan_segment.clone(),
            source: self.request.source.clone(),
            skip_checkout,
        };
        self.output.event(RunEvent::Provisioning {
            segment,
            agent: &agent,
            phase: ProvisionPhase::Requested,
        });
        match self.acquire(request, scope).await {
            Acquired::Link(link) => {
                self.output.event(RunEvent::Provisioning {
                    segment,
                    agent: &agent,
                    phase: ProvisionPhase::Ready {
                        worker: link.worker_id(),
                        template: link.template_id(),
                    },
                });
                *state = SlotState::Ready(link.clone());
                Ok(link)
            }
            Acquired::Failed(error) => {
                let reason = error.to_string();
                self.output.event(RunEvent::Provisioning {
                    segment,
                    agent: &agent,
                    phase: ProvisionPhase::Failed { reason: &reason },
                });
                self.system(stage, &format!("ERROR: {reason}"));
                if error == ProvisionError::Cancelled {
                    return Err(Outcome::Aborted(if scope.is_cancelled() {
                        scope.cause()
                    } else {
                        Cause::Cancelled
                    }));
                }
                *state = SlotState::Failed(reason.clone());
                Err(Outcome::failure(reason))
            }
            Acquired::Interrupted => {
                let cause = scope.cause();
                let reason = cause.reason();
                self.output.event(RunEvent::Provisioning {
                    segment,
                    agent: &agent,
                    phase: ProvisionPhase::Failed { reason: &reason },
                });
                Err(Outcome::Aborted(cause))
            }
        }
    }

    /// Asks the provider for a worker. An interrupt drops the request,
    /// which cancels the provisioning: the provider deletes whatever it had
    /// started (see [`WorkerProvider::acquire`]). A worker that is ready at
    /// the same moment is taken, so that it is released like any other.
    async fn acquire(&self, request: SegmentRequest, scope: &Scope) -> Acquired {
        tokio::select! {
            biased;
            result = self.provider.acquire(request) => match result {
                Ok(link) => Acquired::Link(link),
                Err(error) => Acquired::Failed(error),
            },
            () = scope.cancelled() => Acquired::Interrupted,
        }
    }

    /// Gives the worker of `segment` back, if it holds one.
    async fn release(&self, segment: SegmentId, reason: &str) {
        self.release_if(segment, None, reason).await;
    }

    /// Releases the worker of `segment` (only if it is `only`, when given)
    /// and empties the slot; the slot's lock makes this happen once.
    async fn release_if(&self, segment: SegmentId, only: Option<&WorkerId>, reason: &str) {
        let Some(slot) = self.slots.get(segment.0) else {
            return;
        };
        let link = {
            let mut state = slot.lock().await;
            match &*state {
                SlotState::Ready(link) if only.is_none_or(|id| id == link.worker_id()) => {
                    let link = link.clone();
                    *state = SlotState::Idle;
                    link
                }
                _ => return,
            }
        };
        self.provider.release(link.worker_id(), reason).await;
        let agent = self
            .request
            .plan
            .segment(segment)
            .map(|s| s.agent.kind.to_string())
            .unwrap_or_default();
        self.output.event(RunEvent::Provisioning {
            segment,
            agent: &agent,
            phase: ProvisionPhase::Released {
                worker: link.worker_id(),
                template: link.template_id(),
            },
        });
    }

    /// Drops a lost worker from its slot (releasing it once), so that a
    /// retry provisions a new one.
    async fn lost(&self, segment: SegmentId, link: &Arc<dyn WorkerLink>, reason: &str) {
        self.release_if(segment, Some(link.worker_id()), reason)
            .await;
    }
}

enum Acquired {
    Link(Arc<dyn WorkerLink>),
    Failed(ProvisionError),
    Interrupted,
}

/// Marks in `skip` the segments created by a stage (its own agent) whose
/// options say `skipDefaultCheckout()`.
fn own_segments_skipping_checkout(stages: &[Stage], plans: &[PlanStage], skip: &mut [bool]) {
    for (stage, plan) in stages.iter().zip(plans) {
        if plan.own_agent
            && let Some(segment) = plan.segment
            && let Some(flag) = skip.get_mut(segment.0)
        {
            *flag = stage.options.skip_default_checkout;
        }
        match (&stage.body, &plan.body) {
            (StageBody::Stages(children), PlanBody::Sequential(plans))
            | (
                StageBody::Parallel {
                    branches: children, ..
                },
                PlanBody::Parallel {
                    branches: plans, ..
                },
            ) => own_segments_skipping_checkout(children, plans, skip),
            _ => {}
        }
    }
}

/// The path of every stage, nested ones too, in file order.
fn stage_paths(stages: &[Stage]) -> Vec<StagePath> {
    fn walk(stages: &[Stage], parent: &StagePath, out: &mut Vec<StagePath>) {
        for stage in stages {
            let path = parent.child(&stage.name);
            out.push(path.clone());
            match &stage.body {
                StageBody::Steps(_) => {}
                StageBody::Stages(children)
                | StageBody::Parallel {
                    branches: children, ..
                } => walk(children, &path, out),
            }
        }
    }
    let mut out = Vec::new();
    walk(stages, &StagePath::root(), &mut out);
    out
}

/// `dir` inside `dir`: a relative path nests, an absolute one replaces.
fn join_dir(current: &str, path: &str) -> String {
    if current.is_empty() || path.starts_with('/') {
        path.to_string()
    } else if path.is_empty() || path == "." {
        current.to_string()
    } else {
        format!("{}/{path}", current.trim_end_matches('/'))
    }
}
