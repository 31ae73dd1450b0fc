//! The typed pipeline: what a runner executes.
//!
//! Values here are only built by [`parse`](super::parse), which validates
//! them, so a runner can trust them: every stage has exactly one body, every
//! label is a parsed [`LabelExpr`], every environment name is an identifier.
//! Every node carries the [`Pos`] of the directive it came from.

use std::fmt;

use super::Pos;
use crate::ids::TemplateId;
use crate::label::LabelExpr;

/// A declarative pipeline (`pipeline { ... }`).
#[derive(Debug, Clone, PartialEq)]
pub struct Pipeline {
    /// Where `pipeline` is written.
    pub pos: Pos,
    /// The top-level agent (required).
    pub agent: Agent,
    /// Pipeline-wide environment variables, in order.
    pub environment: Vec<EnvVar>,
    /// Pipeline-wide options.
    pub options: Options,
    /// The top-level stages, in order (never empty).
    pub stages: Vec<Stage>,
    /// What runs after all stages.
    pub post: Vec<PostBlock>,
}

/// An `agent` directive.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Where `agent` is written.
    pub pos: Pos,
    /// What kind of worker it asks for.
    pub kind: AgentKind,
}

/// The worker an `agent` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentKind {
    /// `agent any`: any worker.
    Any,
    /// `agent none`: no worker; every stage with steps needs its own agent.
    None,
    /// `agent { label 'x' }`, `agent { node { label 'x'; customWorkspace 'w' } }`
    /// and `agent { label { ... } }`. Without an expression (`label ''` or a
    /// `node` without `label`) any worker fits.
    Label {
        /// The parsed label expression, if one was given.
        expr: Option<LabelExpr>,
        /// A workspace directory to use instead of the default one.
        custom_workspace: Option<String>,
    },
    /// `agent { template 'id' }`: exactly this worker template.
    Template(TemplateId),
    /// `agent { docker 'image' }` or `agent { docker { image 'x'; args '-v ..' } }`.
    Docker {
        /// The image to run the steps in.
        image: String,
        /// Extra `docker run` arguments.
        args: Option<String>,
    },
    /// `agent { kubernetes { yaml '...'; inheritFrom 'x' } }`.
    Kubernetes {
        /// A pod manifest.
        yaml: Option<String>,
        /// The name of a pod template to start from.
        inherit_from: Option<String>,
    },
}

impl fmt::Display for AgentKind {
    /// The agent as a short phrase, for plans and messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentKind::Any => f.write_str("any"),
            AgentKind::None => f.write_str("none"),
            AgentKind::Label { expr, .. } => match expr {
                Some(expr) => write!(f, "label '{expr}'"),
                None => f.write_str("any (no label)"),
            },
            AgentKind::Template(id) => write!(f, "template '{id}'"),
            AgentKind::Docker { image, .. } => write!(f, "docker '{image}'"),
            AgentKind::Kubernetes { .. } => f.write_str("kubernetes pod"),
        }
    }
}

/// A text with variable references, from a (double-quoted) string literal.
///
/// Single-quoted strings have only literal parts. A runner expands the
/// variables from the environment at the moment the step runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interpolation {
    parts: Vec<Part>,
}

/// A piece of an [`Interpolation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text taken as is.
    Literal(String),
    /// The value of a variable: `$NAME`, `${NAME}` or `${env.NAME}`.
    Var(String),
}

impl Interpolation {
    /// A text without variables.
    pub fn literal(text: impl Into<String>) -> Self {
        let text = text.into();
        if text.is_empty() {
            Interpolation::default()
        } else {
            Interpolation {
                parts: vec![Part::Literal(text)],
            }
        }
    }

    /// Builds from parts, merging adjacent literals and dropping empty ones.
    pub fn from_parts(parts: Vec<Part>) -> Self {
        let mut merged: Vec<Part> = Vec::with_capacity(parts.len());
        for part in parts {
            match (merged.last_mut(), part) {
                (_, Part::Literal(text)) if text.is_empty() => {}
                (Some(Part::Literal(last)), Part::Literal(text)) => last.push_str(&text),
                (_, part) => merged.push(part),
            }
        }
        Interpolation { parts: merged }
    }

    /// The parts, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The text, if it has no variable references.
    pub fn as_literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(_) => return None,
            }
        }
        Some(out)
    }

    /// The names of the variables referenced, in order.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Expands the variables with `lookup`; unknown variables become empty,
    /// as in a shell.
    pub fn expand<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(name) => out.push_str(lookup(name).unwrap_or("")),
            }
        }
        out
    }
}

impl fmt::Display for Interpolation {
    /// The text with variables written as `${NAME}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(text)?,
                Part::Var(name) => write!(f, "${{{name}}}")?,
            }
        }
        Ok(())
    }
}

/// An environment variable from an `environment` block.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvVar {
    /// Where the name is written.
    pub pos: Pos,
    /// The variable name (an identifier).
    pub name: String,
    /// Its value.
    pub value: EnvValue,
}

/// The value of an environment variable.
#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    /// A text, possibly referring to other variables.
    Text(Interpolation),
    /// `credentials('id')`: the secret with this id, resolved by the runner.
    Credentials(String),
}

/// The `options` of the pipeline or of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// `timeout(time: N, unit: 'U')`: the whole pipeline (or stage) fails after this.
    pub timeout: Option<Duration>,
    /// `retry(N)`: run the pipeline (or stage) up to N times in total.
    pub retry: Option<u32>,
    /// `skipDefaultCheckout()`: do not unpack the job's source into the workspace.
    pub skip_default_checkout: bool,
    /// `parallelsAlwaysFailFast()`: every `parallel` behaves as `failFast true`.
    pub parallels_always_fail_fast: bool,
}

/// A time with its unit, as `timeout` and `sleep` take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration {
    /// The amount.
    pub time: u64,
    /// The unit.
    pub unit: TimeUnit,
}

impl Duration {
    /// The duration as a `std::time::Duration` (saturating).
    pub fn to_std(self) -> std::time::Duration {
        let nanos_per_unit: u64 = match self.unit {
            TimeUnit::Nanoseconds => 1,
            TimeUnit::Microseconds => 1_000,
            TimeUnit::Milliseconds => 1_000_000,
            TimeUnit::Seconds => 1_000_000_000,
            TimeUnit::Minutes => 60_000_000_000,
            TimeUnit::Hours => 3_600_000_000_000,
            TimeUnit::Days => 86_400_000_000_000,
        };
        match self.unit {
            TimeUnit::Nanoseconds | TimeUnit::Microseconds | TimeUnit::Milliseconds => {
                std::time::Duration::from_nanos(self.time.saturating_mul(nanos_per_unit))
            }
            _ => std::time::Duration::from_secs(
                self.time.saturating_mul(nanos_per_unit / 1_000_000_000),
            ),
        }
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.time, self.unit)
    }
}

/// The units Jenkins' `timeout` and `sleep` accept (Java's `TimeUnit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// `NANOSECONDS`
    Nanoseconds,
    /// `MICROSECONDS`
    Microseconds,
    /// `MILLISECONDS`
    Milliseconds,
    /// `SECONDS`
    Seconds,
    /// `MINUTES`
    Minutes,
    /// `HOURS`
    Hours,
    /// `DAYS`
    Days,
}

impl TimeUnit {
    /// Every unit with its Jenkins spelling.
    pub const ALL: [(&'static str, TimeUnit); 7] = [
        ("NANOSECONDS", TimeUnit::Nanoseconds),
        ("MICROSECONDS", TimeUnit::Microseconds),
        ("MILLISECONDS", TimeUnit::Milliseconds),
        ("SECONDS", TimeUnit::Seconds),
        ("MINUTES", TimeUnit::Minutes),
        ("HOURS", TimeUnit::Hours),
        ("DAYS", TimeUnit::Days),
    ];

    /// Parses the Jenkins spelling (`'MINUTES'`).
    pub fn parse(name: &str) -> Option<TimeUnit> {
        Self::ALL
            .iter()
            .find(|(spelling, _)| *spelling == name)
            .map(|(_, unit)| *unit)
    }
}

impl fmt::Display for TimeUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::ALL
            .iter()
            .find(|(_, unit)| unit == self)
            .map_or("", |(spelling, _)| spelling);
        f.write_str(name)
    }
}

/// A `stage`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// Where `stage` is written.
    pub pos: Pos,
    /// The name, unique in the pipeline.
    pub name: String,
    /// The stage's own agent, if it has one.
    pub agent: Option<Agent>,
    /// Stage environment variables, in order.
    pub environment: Vec<EnvVar>,
    /// Stage options.
    pub options: Options,
    /// When the stage runs; `None` means always.
    pub when: Option<When>,
    /// What the stage does.
    pub body: StageBody,
    /// What runs after the stage.
    pub post: Vec<PostBlock>,
}

/// What a stage does: exactly one of steps, sequential stages or parallel branches.
#[derive(Debug, Clone, PartialEq)]
pub enum StageBody {
    /// `steps { ... }`
    Steps(Vec<Step>),
    /// `stages { ... }`: nested stages run one after the other.
    Stages(Vec<Stage>),
    /// `parallel { ... }`: branches run at the same time.
    Parallel {
        /// `failFast true`: abort the other branches when one fails.
        fail_fast: bool,
        /// The branches.
        branches: Vec<Stage>,
    },
}

/// A `when` directive: the stage runs if every condition holds.
#[derive(Debug, Clone, PartialEq)]
pub struct When {
    /// Where `when` is written.
    pub pos: Pos,
    /// The conditions, all of which must hold (never empty).
    pub conditions: Vec<Condition>,
    /// `beforeAgent true`: evaluate before creating the stage's worker.
    pub before_agent: bool,
}

/// A `when` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// Where the condition is written.
    pub pos: Pos,
    /// What it tests.
    pub kind: ConditionKind,
}

/// What a `when` condition tests.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionKind {
    /// `branch 'main'` or `branch pattern: 'release-*', comparator: 'GLOB'`.
    Branch {
        /// The pattern.
        pattern: String,
        /// How the pattern is compared to the branch name.
        comparator: Comparator,
    },
    /// `environment name: 'X', value: 'y'`.
    Environment {
        /// The variable name.
        name: String,
        /// The value it must have.
        value: String,
    },
    /// `not { ... }`: exactly one condition.
    Not(Box<Condition>),
    /// `allOf { ... }`: every condition.
    AllOf(Vec<Condition>),
    /// `anyOf { ... }`: at least one condition.
    AnyOf(Vec<Condition>),
}

impl fmt::Display for When {
    /// The conditions joined with `and`, in DSL-like form:
    /// `branch 'release-*' and environment DEPLOY == 'yes'`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, condition) in self.conditions.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{condition}")?;
        }
        if self.before_agent {
            f.write_str(" (before the agent)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Condition {
    /// `branch 'main'`, `branch 'r-.*' (REGEXP)`, `environment X == 'y'`,
    /// `not(...)`, `allOf(..., ...)`, `anyOf(..., ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ConditionKind::Branch {
                pattern,
                comparator,
            } => {
                write!(f, "branch '{pattern}'")?;
                match comparator {
                    Comparator::Glob => Ok(()),
                    Comparator::Equals => f.write_str(" (EQUALS)"),
                    Comparator::Regexp => f.write_str(" (REGEXP)"),
                }
            }
            ConditionKind::Environment { name, value } => {
                write!(f, "environment {name} == '{value}'")
            }
            ConditionKind::Not(inner) => write!(f, "not({inner})"),
            ConditionKind::AllOf(all) | ConditionKind::AnyOf(all) => {
                let name = if matches!(self.kind, ConditionKind::AllOf(_)) {
                    "allOf"
                } else {
                    "anyOf"
                };
                write!(f, "{name}(")?;
                for (i, c) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// How `branch` compares its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    /// `EQUALS`: the same text.
    Equals,
    /// `GLOB` (the default): Ant-style wildcards `*`, `**` and `?`.
    Glob,
    /// `REGEXP`: a Java regular expression matching the whole name.
    Regexp,
}

/// A `post` condition block.
#[derive(Debug, Clone, PartialEq)]
pub struct PostBlock {
    /// Where the condition is written.
    pub pos: Pos,
    /// When it runs.
    pub condition: PostCondition,
    /// What it runs (may be empty).
    pub steps: Vec<Step>,
}

/// The `post` conditions, in the order Jenkins runs them (which is the
/// order of this enum, whatever the order in the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PostCondition {
    /// `always`
    Always,
    /// `changed`: the result differs from the previous run's.
    Changed,
    /// `fixed`: success after a failed or unstable run.
    Fixed,
    /// `regression`: failure, unstable or aborted after a success.
    Regression,
    /// `aborted`
    Aborted,
    /// `failure`
    Failure,
    /// `success`
    Success,
    /// `unstable`
    Unstable,
    /// `unsuccessful`: anything but success.
    Unsuccessful,
    /// `notBuilt`
    NotBuilt,
    /// `cleanup`: after every other condition, whatever the result.
    Cleanup,
}

impl PostCondition {
    /// Every condition with its Jenkins spelling, in running order.
    pub const ALL: [(&'static str, PostCondition); 11] = [
        ("always", PostCondition::Always),
        ("changed", PostCondition::Changed),
        ("fixed", PostCondition::Fixed),
        ("regression", PostCondition::Regression),
        ("aborted", PostCondition::Aborted),
        ("failure", PostCondition::Failure),
        ("success", PostCondition::Success),
        ("unstable", PostCondition::Unstable),
        ("unsuccessful", PostCondition::Unsuccessful),
        ("notBuilt", PostCondition::NotBuilt),
        ("cleanup", PostCondition::Cleanup),
    ];

    /// Parses the Jenkins spelling.
    pub fn parse(name: &str) -> Option<PostCondition> {
        Self::ALL
            .iter()
            .find(|(spelling, _)| *spelling == name)
            .map(|(_, c)| *c)
    }

    /// The Jenkins spelling.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("", |(spelling, _)| spelling)
    }

    /// Whether the block runs, given the current result and the previous
    /// run's result (`None` for a first run), as Jenkins decides it.
    pub fn applies(self, current: BuildResult, previous: Option<BuildResult>) -> bool {
        use BuildResult as R;
        match self {
            PostCondition::Always | PostCondition::Cleanup => true,
            PostCondition::Changed => previous.is_some_and(|p| p != current),
            PostCondition::Fixed => {
                current == R::Success && matches!(previous, Some(R::Failure | R::Unstable))
            }
            PostCondition::Regression => {
                matches!(current, R::Failure | R::Unstable | R::Aborted)
                    && previous == Some(R::Success)
            }
            PostCondition::Aborted => current == R::Aborted,
            PostCondition::Failure => current == R::Failure,
            PostCondition::Success => current == R::Success,
            PostCondition::Unstable => current == R::Unstable,
            PostCondition::Unsuccessful => current != R::Success,
            PostCondition::NotBuilt => current == R::NotBuilt,
        }
    }
}

impl fmt::Display for PostCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The result of a run (or of a stage), as `post` conditions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildResult {
    /// Everything passed.
    Success,
    /// Passed with test failures or warnings.
    Unstable,
    /// A step failed.
    Failure,
    /// Cancelled or timed out.
    Aborted,
    /// Skipped.
    NotBuilt,
}

/// A step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Where the step is written.
    pub pos: Pos,
    /// What it does.
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// `sh 'script'` or `sh script: '...', label: '...', returnStatus: true`.
    Sh {
        /// The shell script.
        script: Interpolation,
        /// A name to show instead of the script.
        label: Option<String>,
        /// `returnStatus: true`: a non-zero exit does not fail the step.
        return_status: bool,
    },
    /// `echo 'message'`.
    Echo(Interpolation),
    /// `error 'message'`: fails the stage with this message.
    Error(Interpolation),
    /// `dir('path') { ... }`: run steps in a sub-directory of the workspace.
    Dir {
        /// The directory, relative to the workspace.
        path: Interpolation,
        /// The steps.
        steps: Vec<Step>,
    },
    /// `withEnv(['A=b']) { ... }`: run steps with extra variables.
    WithEnv {
        /// The variables, in order.
        vars: Vec<(String, Interpolation)>,
        /// The steps.
        steps: Vec<Step>,
    },
    /// `timeout(time: 5, unit: 'MINUTES') { ... }`.
    Timeout {
        /// The limit (default unit MINUTES).
        limit: Duration,
        /// The steps.
        steps: Vec<Step>,
    },
    /// `retry(3) { ... }`: run the steps up to N times in total.
    Retry {
        /// The number of attempts.
        count: u32,
        /// The steps.
        steps: Vec<Step>,
    },
    /// `sleep 5` or `sleep(time: 5, unit: 'SECONDS')` (default unit SECONDS).
    Sleep(Duration),
    /// `writeFile file: 'a.txt', text: '...'`.
    WriteFile {
        /// The path, relative to the current directory.
        file: Interpolation,
        /// The contents.
        text: Interpolation,
    },
}

impl StepKind {
    /// The step's name in the DSL.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Sh { .. } => "sh",
            StepKind::Echo(_) => "echo",
            StepKind::Error(_) => "error",
            StepKind::Dir { .. } => "dir",
            StepKind::WithEnv { .. } => "withEnv",
            StepKind::Timeout { .. } => "timeout",
            StepKind::Retry { .. } => "retry",
            StepKind::Sleep(_) => "sleep",
            StepKind::WriteFile { .. } => "writeFile",
        }
    }

    /// The nested steps of a block step.
    pub fn children(&self) -> &[Step] {
        match self {
            StepKind::Dir { steps, .. }
            | StepKind::WithEnv { steps, .. }
            | StepKind::Timeout { steps, .. }
            | StepKind::Retry { steps, .. } => steps,
            _ => &[],
        }
    }
}

impl Pipeline {
    /// Every stage, depth first in file order.
    pub fn all_stages(&self) -> Vec<&Stage> {
        let mut out = Vec::new();
        let mut stack: Vec<&Stage> = self.stages.iter().rev().collect();
        while let Some(stage) = stack.pop() {
            out.push(stage);
            match &stage.body {
                StageBody::Steps(_) => {}
                StageBody::Stages(children)
                | StageBody::Parallel {
                    branches: children, ..
                } => {
                    stack.extend(children.iter().rev());
                }
            }
        }
        out
    }

    /// The stage with this name.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.all_stages().into_iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_conditions_apply_as_in_jenkins() {
        use BuildResult as R;
        use PostCondition as P;
        let cases = [
            (P::Always, R::Failure, None, true),
            (P::Changed, R::Failure, None, false),
            (P::Changed, R::Failure, Some(R::Success), true),
            (P::Changed, R::Success, Some(R::Success), false),
            (P::Fixed, R::Success, Some(R::Failure), true),
            (P::Fixed, R::Success, Some(R::Unstable), true),
            (P::Fixed, R::Success, None, false),
            (P::Regression, R::Failure, Some(R::Success), true),
            (P::Regression, R::Aborted, Some(R::Success), true),
            (P::Regression, R::Failure, Some(R::Failure), false),
            (P::Aborted, R::Aborted, None, true),
            (P::Failure, R::Failure, None, true),
            (P::Failure, R::Success, None, false),
            (P::Success, R::Success, None, true),
            (P::Unstable, R::Unstable, None, true),
            (P::Unsuccessful, R::Aborted, None, true),
            (P::Unsuccessful, R::Success, None, false),
            (P::NotBuilt, R::NotBuilt, None, true),
            (P::Cleanup, R::Success, None, true),
        ];
        for (condition, current, previous, expected) in cases {
            assert_eq!(
                condition.applies(current, previous),
                expected,
                "{condition} {current:?} {previous:?}"
            );
        }
    }

    #[test]
    fn interpolation() {
        let value = Interpolation::from_parts(vec![
            Part::Literal("a".into()),
            Part::Literal("".into()),
            Part::Literal("b-".into()),
            Part::Var("X".into()),
            Part::Var("Y".into()),
        ]);
        assert_eq!(value.parts().len(), 3);
        assert_eq!(value.to_string(), "ab-${X}${Y}");
        assert_eq!(value.as_literal(), None);
        assert_eq!(value.variables().collect::<Vec<_>>(), ["X", "Y"]);
        assert_eq!(
            value.expand(|name| (name == "X").then_some("1")),
            "ab-1".to_string()
        );
        assert_eq!(Interpolation::literal("z").as_literal(), Some("z".into()));
    }

    #[test]
    fn conditions_print_readably() {
        let c = |kind| Condition {
            pos: Pos::default(),
            kind,
        };
        let branch = |p: &str, comparator| {
            c(ConditionKind::Branch {
                pattern: p.into(),
                comparator,
            })
        };
        let when = When {
            pos: Pos::default(),
            conditions: vec![
                branch("release-*", Comparator::Glob),
                c(ConditionKind::AnyOf(vec![
                    c(ConditionKind::Not(Box::new(branch(
                        "x",
                        Comparator::Equals,
                    )))),
                    c(ConditionKind::AllOf(vec![
                        branch("r-.*", Comparator::Regexp),
                        c(ConditionKind::Environment {
                            name: "DEPLOY".into(),
                            value: "yes".into(),
                        }),
                    ])),
                ])),
            ],
            before_agent: true,
        };
        assert_eq!(
            when.to_string(),
            "branch 'release-*' and anyOf(not(branch 'x' (EQUALS)), allOf(branch 'r-.*' (REGEXP), environment DEPLOY == 'yes')) (before the agent)"
        );
    }

    #[test]
    fn durations() {
        let d = |time, unit| Duration { time, unit }.to_std();
        assert_eq!(d(2, TimeUnit::Minutes).as_secs(), 120);
        assert_eq!(d(1, TimeUnit::Days).as_secs(), 86_400);
        assert_eq!(d(5, TimeUnit::Milliseconds).as_millis(), 5);
        assert_eq!(d(u64::MAX, TimeUnit::Hours).as_secs(), u64::MAX);
        assert_eq!(TimeUnit::parse("HOURS"), Some(TimeUnit::Hours));
        assert_eq!(TimeUnit::parse("hours"), None);
        assert_eq!(TimeUnit::Seconds.to_string(), "SECONDS");
    }
}
