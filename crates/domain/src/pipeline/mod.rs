//! Jenkins declarative pipelines: parsed, validated and planned.
//!
//! [`parse`] turns the text of a Jenkinsfile into a typed [`Pipeline`] and a
//! list of [`Diagnostic`]s (every error of the file, not only the first, plus
//! warnings). It is pure and total: any `&str` gives an answer, none panics,
//! however deep the nesting. [`plan`] then splits a valid pipeline into agent
//! [`Segment`]s: which stages run on which worker, and which run at the same
//! time.
//!
//! A runner uses three things: [`parse`] (or [`Parsed::into_result`]) for
//! the typed [`Pipeline`], [`plan`] for the [`Plan`] (walk
//! [`Plan::stages`]: a [`PlanStage`] with `own_agent` creates the worker of
//! its [`Segment`] before its body and destroys it after its `post`), and
//! the evaluators on the model: [`When::evaluate`] with a [`WhenContext`],
//! [`PostCondition::applies`], [`Interpolation::expand`] and
//! [`Duration::to_std`].
//!
//! The supported subset is Jenkins' declarative syntax in both spellings
//! (`sh 'make'` and `sh("make")`); anything that would need a Groovy
//! interpreter (`script { }`, `def`, method calls on objects, `${a + b}`) is
//! an "unsupported" error at its position, never silently skipped.
//!
//! ```
//! use hodei_domain::pipeline::{parse, plan};
//!
//! let source = "pipeline {\n  agent any\n  stages {\n    stage('Build') {\n      steps { sh 'make' }\n    }\n  }\n}\n";
//! let parsed = parse("Jenkinsfile", source);
//! assert!(parsed.diagnostics.is_empty());
//! let pipeline = parsed.pipeline.expect("valid pipeline");
//! let plan = plan(&pipeline).expect("every stage has a worker");
//! assert_eq!(plan.segments.len(), 1);
//! assert_eq!(plan.segments[0].stages, ["Build"]);
//! ```

mod lexer;
mod model;
mod plan;
mod syntax;
mod validate;
mod when;

use std::fmt;

pub use model::{
    Agent, AgentKind, BuildResult, Comparator, Condition, ConditionKind, Duration, EnvValue,
    EnvVar, Interpolation, Options, Part, Pipeline, PostBlock, PostCondition, Stage, StageBody,
    Step, StepKind, TimeUnit, When,
};
pub use plan::{Plan, PlanBody, PlanStage, Segment, SegmentId, SegmentOwner, plan};
pub use when::{WhenContext, glob_matches};

/// A position in a file: 1-based line and 1-based column in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters (not bytes), from 1.
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// How bad a [`Diagnostic`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The pipeline is accepted, but something in it has no effect.
    Warning,
    /// The pipeline cannot run.
    Error,
}

/// One problem found in a pipeline, at a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {}{message}", if *.severity == Severity::Warning { "warning: " } else { "" })]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
    /// What is wrong and what was expected (lower case, no trailing period).
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn error(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    pub(crate) fn warning(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    /// Whether this is an error (not a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The position.
    pub fn pos(&self) -> Pos {
        Pos {
            line: self.line,
            column: self.column,
        }
    }

    /// The diagnostic as `FILE:LINE:COL: message` (warnings say `warning: `).
    pub fn with_file<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        WithFile {
            file,
            diagnostic: self,
        }
    }
}

struct WithFile<'a> {
    file: &'a str,
    diagnostic: &'a Diagnostic,
}

impl fmt::Display for WithFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.diagnostic)
    }
}

/// What [`parse`] found in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The file name given to [`parse`], for messages.
    pub file: String,
    /// The pipeline, present only when there is no error.
    pub pipeline: Option<Pipeline>,
    /// Errors and warnings, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Parsed {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The pipeline, or every diagnostic as an error value.
    pub fn into_result(self) -> Result<Pipeline, PipelineError> {
        match self.pipeline {
            Some(pipeline) => Ok(pipeline),
            None => Err(PipelineError::Invalid {
                file: self.file,
                diagnostics: self.diagnostics,
            }),
        }
    }
}

/// Why a pipeline cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError {
    /// The file has errors; `diagnostics` lists all of them (and any warnings).
    #[error("{}", render(file, diagnostics))]
    Invalid {
        /// The file name.
        file: String,
        /// Every diagnostic, sorted by position.
        diagnostics: Vec<Diagnostic>,
    },
}

fn render(file: &str, diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| d.with_file(file).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The deepest nesting of blocks, parentheses and lists the parser accepts.
pub const MAX_NESTING: usize = 64;

/// Parses and validates the text of a Jenkinsfile.
///
/// `file` is only used in messages. Every error of the file is reported,
/// with its position; the pipeline is returned only if there is none. The
/// agent segments are checked too (with `agent none` at the top level, every
/// stage with steps needs an agent), so a pipeline returned here can always
/// be [`plan`]ned.
pub fn parse(file: &str, source: &str) -> Parsed {
    let mut diagnostics = Vec::new();
    let tokens = lexer::tokenize(source, &mut diagnostics);
    let file_node = syntax::parse_tokens(&tokens, &mut diagnostics);
    let pipeline = validate::validate(source, &file_node, &mut diagnostics);
    if let Some(pipeline) = &pipeline {
        diagnostics.extend(plan::agent_errors(pipeline));
    }
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics.dedup();
    let pipeline = if diagnostics.iter().any(Diagnostic::is_error) {
        None
    } else {
        pipeline
    };
    Parsed {
        file: file.to_string(),
        pipeline,
        diagnostics,
    }
}
