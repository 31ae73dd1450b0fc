//! Agent segments: which stages run on which worker.
//!
//! The top-level agent's worker lives for the whole run and runs every stage
//! that has no agent of its own; a stage with its own agent gets its own
//! worker (a new [`Segment`]) for itself and its nested stages; parallel
//! branches run at the same time, each on its own worker or, without an
//! agent, on the enclosing one. With `agent none` there is no enclosing
//! worker, so every stage with steps needs an agent, as in Jenkins.

use std::fmt;

use super::model::{Agent, AgentKind, Pipeline, PostBlock, Stage, StageBody, Step, StepKind};
use super::{Diagnostic, Pos};

/// The index of a [`Segment`] in [`Plan::segments`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub usize);

impl fmt::Display for SegmentId {
    /// Segments are numbered from 1 for people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0 + 1)
    }
}

/// Whose `agent` directive created a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentOwner {
    /// The pipeline's top-level agent: the worker lives for the whole run.
    Pipeline,
    /// A stage's own agent: the worker lives while that stage runs.
    Stage(String),
}

/// One worker of a run: created from an agent, runs some stages, then is destroyed.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Its index in [`Plan::segments`].
    pub id: SegmentId,
    /// The agent that asks for the worker (never `AgentKind::None`).
    pub agent: Agent,
    /// Who declared the agent.
    pub owner: SegmentOwner,
    /// The segment whose worker exists while this one runs (the enclosing agent).
    pub parent: Option<SegmentId>,
    /// The innermost parallel branch this segment belongs to, if any: segments
    /// of different branches of one `parallel` run at the same time.
    pub parallel_branch: Option<String>,
    /// The stages whose steps run on this worker, in file order.
    pub stages: Vec<String>,
}

/// A stage as the runner schedules it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanStage {
    /// The stage name.
    pub name: String,
    /// Where the stage is written.
    pub pos: Pos,
    /// The worker current while the stage runs: its own segment when it has
    /// an agent, else the enclosing one; `None` when no worker applies
    /// (under `agent none`: then the stage groups other stages, or its steps
    /// need no worker: only `echo`, `error` and `sleep`).
    pub segment: Option<SegmentId>,
    /// Whether the stage creates `segment` (it has its own agent).
    pub own_agent: bool,
    /// What it runs.
    pub body: PlanBody,
}

/// What a [`PlanStage`] runs.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanBody {
    /// Its steps, on [`PlanStage::segment`].
    Steps,
    /// Nested stages, one after the other.
    Sequential(Vec<PlanStage>),
    /// Branches at the same time.
    Parallel {
        /// Abort the other branches when one fails (`failFast true` or
        /// `parallelsAlwaysFailFast()`).
        fail_fast: bool,
        /// The branches.
        branches: Vec<PlanStage>,
    },
}

/// The agent segments of a pipeline and the schedule of its stages.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Every worker the run needs, in the order they are first needed.
    pub segments: Vec<Segment>,
    /// The top-level segment (`None` with `agent none`).
    pub top: Option<SegmentId>,
    /// The top-level stages, in order.
    pub stages: Vec<PlanStage>,
}

impl Plan {
    /// The segment with this id.
    pub fn segment(&self, id: SegmentId) -> Option<&Segment> {
        self.segments.get(id.0)
    }
}

/// Splits a pipeline into agent segments.
///
/// Fails, with one diagnostic per offending stage, when a stage with steps
/// (or a `post` block with a step that needs a worker) has no agent: its
/// own, an enclosing stage's, or the pipeline's.
pub fn plan(pipeline: &Pipeline) -> Result<Plan, Vec<Diagnostic>> {
    let mut planner = Planner {
        segments: Vec::new(),
        errors: Vec::new(),
        fail_fast_all: pipeline.options.parallels_always_fail_fast,
    };
    let top = match pipeline.agent.kind {
        AgentKind::None => None,
        _ => Some(planner.new_segment(&pipeline.agent, SegmentOwner::Pipeline, None, None)),
    };
    let stages = pipeline
        .stages
        .iter()
        .map(|stage| planner.stage(stage, top, None))
        .collect();
    planner.post(&pipeline.post, top, "the pipeline");
    if planner.errors.is_empty() {
        Ok(Plan {
            segments: planner.segments,
            top,
            stages,
        })
    } else {
        Err(planner.errors)
    }
}

struct Planner {
    segments: Vec<Segment>,
    errors: Vec<Diagnostic>,
    fail_fast_all: bool,
}

impl Planner {
    fn new_segment(
        &mut self,
        agent: &Agent,
        owner: SegmentOwner,
        parent: Option<SegmentId>,
        parallel_branch: Option<&str>,
    ) -> SegmentId {
        let id = SegmentId(self.segments.len());
        self.segments.push(Segment {
            id,
            agent: agent.clone(),
            owner,
            parent,
            parallel_branch: parallel_branch.map(str::to_string),
            stages: Vec::new(),
        });
        id
    }

    fn stage(
        &mut self,
        stage: &Stage,
        current: Option<SegmentId>,
        branch: Option<&str>,
    ) -> PlanStage {
        let (segment, own_agent) = match &stage.agent {
            Some(Agent {
                kind: AgentKind::None,
                ..
            }) => (None, false),
            Some(agent) => (
                Some(self.new_segment(
                    agent,
                    SegmentOwner::Stage(stage.name.clone()),
                    current,
                    branch,
                )),
                true,
            ),
            None => (current, false),
        };
        let body = match &stage.body {
            StageBody::Steps(steps) => {
                match segment {
                    Some(id) => self.segments[id.0].stages.push(stage.name.clone()),
                    None => {
                        if steps.iter().any(needs_worker) {
                            self.errors.push(no_agent(stage));
                        }
                    }
                }
                PlanBody::Steps
            }
            StageBody::Stages(children) => PlanBody::Sequential(
                children
                    .iter()
                    .map(|c| self.stage(c, segment, branch))
                    .collect(),
            ),
            StageBody::Parallel {
                fail_fast,
                branches,
            } => PlanBody::Parallel {
                fail_fast: *fail_fast || self.fail_fast_all,
                branches: branches
                    .iter()
                    .map(|b| self.stage(b, segment, Some(&b.name)))
                    .collect(),
            },
        };
        self.post(&stage.post, segment, &format!("stage `{}`", stage.name));
        PlanStage {
            name: stage.name.clone(),
            pos: stage.pos,
            segment,
            own_agent,
            body,
        }
    }

    fn post(&mut self, blocks: &[PostBlock], segment: Option<SegmentId>, owner: &str) {
        if segment.is_none() {
            post_agent_errors(blocks, owner, &mut self.errors);
        }
    }
}

/// The errors [`plan`] would report, without building the plan: a stage
/// with steps that need a worker, or a `post` step that needs one, where no
/// agent applies. Used by `parse`, so a parsed pipeline always plans.
pub(crate) fn agent_errors(pipeline: &Pipeline) -> Vec<Diagnostic> {
    let mut errors = Vec::new();
    let has_worker = !matches!(pipeline.agent.kind, AgentKind::None);
    for stage in &pipeline.stages {
        stage_agent_errors(stage, has_worker, &mut errors);
    }
    if !has_worker {
        post_agent_errors(&pipeline.post, "the pipeline", &mut errors);
    }
    errors
}

fn stage_agent_errors(stage: &Stage, enclosing: bool, errors: &mut Vec<Diagnostic>) {
    let has_worker = match &stage.agent {
        Some(agent) => !matches!(agent.kind, AgentKind::None),
        None => enclosing,
    };
    match &stage.body {
        StageBody::Steps(steps) => {
            if !has_worker && steps.iter().any(needs_worker) {
                errors.push(no_agent(stage));
            }
        }
        StageBody::Stages(children)
        | StageBody::Parallel {
            branches: children, ..
        } => {
            for child in children {
                stage_agent_errors(child, has_worker, errors);
            }
        }
    }
    if !has_worker {
        post_agent_errors(&stage.post, &format!("stage `{}`", stage.name), errors);
    }
}

fn no_agent(stage: &Stage) -> Diagnostic {
    Diagnostic::error(
        stage.pos,
        format!(
            "stage `{}` has no agent: with `agent none`, every stage with steps needs its own `agent`",
            stage.name
        ),
    )
}

fn post_agent_errors(blocks: &[PostBlock], owner: &str, errors: &mut Vec<Diagnostic>) {
    for block in blocks {
        if let Some(step) = block.steps.iter().find(|s| needs_worker(s)) {
            errors.push(Diagnostic::error(
                step.pos,
                format!(
                    "step `{}` in the `{}` post condition of {owner} needs a worker, but no agent applies here (`agent none`)",
                    step.kind.name(),
                    block.condition
                ),
            ));
        }
    }
}

/// Whether a step needs a worker (a workspace or a shell) to run.
fn needs_worker(step: &Step) -> bool {
    match &step.kind {
        StepKind::Echo(_) | StepKind::Error(_) | StepKind::Sleep(_) => false,
        StepKind::Timeout { steps, .. }
        | StepKind::Retry { steps, .. }
        | StepKind::WithEnv { steps, .. } => steps.iter().any(needs_worker),
        StepKind::Sh { .. } | StepKind::Dir { .. } | StepKind::WriteFile { .. } => true,
    }
}
