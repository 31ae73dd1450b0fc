//! From the syntax tree to the typed [`Pipeline`], checking everything
//! Jenkins checks: required and duplicate sections, empty blocks, unknown
//! names, step parameters, environment names, label expressions.
//!
//! Every check reports and goes on, so a file's errors all come out at once.

use std::collections::HashMap;

use super::lexer::{self, Quote};
use super::model::{
    Agent, AgentKind, Comparator, Condition, ConditionKind, Duration, EnvValue, EnvVar,
    Interpolation, Options, Pipeline, PostBlock, PostCondition, Stage, StageBody, Step, StepKind,
    TimeUnit, When,
};
use super::syntax::{Block, Call, Expr, ExprKind, StmtKind};
use super::{Diagnostic, Pos};
use crate::docker_args::DockerArgs;
use crate::label::LabelExpr;

const PIPELINE_SECTIONS: &str = "agent, environment, options, stages or post";
const STAGE_SECTIONS: &str =
    "agent, environment, options, when, steps, stages, parallel, post or failFast";
const STEPS: &str = "sh, echo, error, dir, withEnv, timeout, retry, sleep or writeFile";
const AGENT_TYPES: &str = "any, none, label, node, template, docker or kubernetes";
const WHEN_CONDITIONS: &str = "branch, environment, not, allOf, anyOf or beforeAgent";
const OPTIONS: &str = "timeout, retry, skipDefaultCheckout or parallelsAlwaysFailFast";
/// Jenkins sections and directives that exist but that Hodei does not run.
const UNSUPPORTED_SECTIONS: &[&str] = &[
    "tools",
    "parameters",
    "triggers",
    "libraries",
    "input",
    "matrix",
];
/// Jenkins step parameters that Hodei does not implement, with the reason.
const UNSUPPORTED_PARAMS: &[(&str, &str, &str)] = &[
    ("sh", "returnStdout", "using a step's output needs Groovy"),
    ("sh", "encoding", "output is read as UTF-8"),
    (
        "timeout",
        "activity",
        "only a fixed time limit is supported",
    ),
    ("writeFile", "encoding", "files are written as UTF-8"),
];
/// Jenkins options with an effect that Hodei does not implement.
const UNSUPPORTED_OPTIONS: &[&str] = &[
    "skipStagesAfterUnstable",
    "checkoutToSubdirectory",
    "preserveStashes",
];
/// Jenkins options accepted with a warning because they mean nothing here.
const IGNORED_OPTIONS: &[&str] = &[
    "buildDiscarder",
    "timestamps",
    "quietPeriod",
    "disableConcurrentBuilds",
    "disableResume",
    "durabilityHint",
    "ansiColor",
    "overrideIndexTriggers",
    "rateLimitBuilds",
    "copyArtifactPermission",
    "newContainerPerStage",
];

/// Validates the syntax tree of a file; the pipeline is `None` when it could
/// not be built (errors are in `diagnostics` then).
pub(crate) fn validate(
    source: &str,
    file: &Block,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Pipeline> {
    let mut v = Validator {
        source,
        diagnostics,
        stage_names: HashMap::new(),
        errors: 0,
    };
    let mut pipeline_call: Option<&Call> = None;
    for stmt in &file.stmts {
        match &stmt.kind {
            StmtKind::Error => {}
            StmtKind::Call(call) if call.name == "pipeline" => {
                if let Some(first) = pipeline_call {
                    v.error(
                        call.pos,
                        format!("duplicate `pipeline` block (first at {})", first.pos),
                    );
                } else {
                    pipeline_call = Some(call);
                }
            }
            StmtKind::Call(call) if call.name == "node" => v.error(
                call.pos,
                "unsupported scripted pipeline `node { ... }`: expected a declarative `pipeline { ... }`",
            ),
            StmtKind::Call(call) => v.error(
                call.pos,
                format!(
                    "unexpected `{}` at the top level: expected `pipeline {{ ... }}`",
                    call.name
                ),
            ),
            StmtKind::Assign { .. } => v.error(
                stmt.pos,
                "unsupported Groovy assignment at the top level: expected `pipeline { ... }`",
            ),
        }
    }
    let Some(call) = pipeline_call else {
        if !file.had_error() && !v.diagnostics.iter().any(Diagnostic::is_error) {
            v.error(
                Pos { line: 1, column: 1 },
                "no `pipeline { ... }` block: expected a declarative pipeline",
            );
        }
        return None;
    };
    v.pipeline(call)
}

struct Validator<'s, 'd> {
    source: &'s str,
    diagnostics: &'d mut Vec<Diagnostic>,
    /// Stage names seen so far in the `stages` or `parallel` block being
    /// validated: sibling stages need distinct names, so a stage's path of
    /// names from the top is unique (stages in different parents may share
    /// a name, as in Jenkins).
    stage_names: HashMap<String, Pos>,
    /// How many errors validation has reported.
    errors: usize,
}

/// The block a statement is in, for messages.
#[derive(Clone, Copy)]
enum Ctx<'x> {
    /// A section or directive by name.
    Section(&'x str),
    /// A stage by name.
    Stage(&'x str),
}

impl std::fmt::Display for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ctx::Section(name) => write!(f, "`{name}`"),
            Ctx::Stage(name) => write!(f, "stage `{name}`"),
        }
    }
}

/// Tracks the sections of one block, reporting duplicates.
#[derive(Default)]
struct Seen<'n> {
    first: Vec<(&'n str, Pos)>,
}

impl<'n> Seen<'n> {
    /// The position of the earlier occurrence, if any; records this one otherwise.
    fn check(&mut self, name: &'n str, pos: Pos) -> Option<Pos> {
        if let Some((_, first)) = self.first.iter().find(|(n, _)| *n == name) {
            return Some(*first);
        }
        self.first.push((name, pos));
        None
    }
}

/// The parameters of a call, after checking their names.
struct Params<'a> {
    values: Vec<(&'static str, &'a Expr<'a>)>,
}

impl<'a> Params<'a> {
    fn get(&self, name: &str) -> Option<&'a Expr<'a>> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
    }
}

/// Where a stage is, which decides what it may contain.
#[derive(Clone, Copy)]
struct StageContext {
    in_parallel: bool,
}

impl<'s> Validator<'s, '_> {
    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors += 1;
        self.diagnostics.push(Diagnostic::error(pos, message));
    }

    fn warning(&mut self, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::warning(pos, message));
    }

    /// The block of a section that must have one and no arguments.
    fn section_block<'c>(&mut self, call: &'c Call<'c>, what: &str) -> Option<&'c Block<'c>> {
        if let Some(arg) = call.args.first() {
            self.error(
                arg.value.pos,
                format!("`{what}` takes no arguments: expected `{what} {{ ... }}`"),
            );
        }
        match &call.block {
            Some(block) => Some(block),
            None => {
                self.error(
                    call.pos,
                    format!("`{what}` needs a block: expected `{what} {{ ... }}`"),
                );
                None
            }
        }
    }

    /// The calls of a block; assignments are reported with `context`.
    fn calls<'c>(&mut self, block: &'c Block<'c>, context: Ctx<'_>) -> Vec<&'c Call<'c>> {
        let mut calls = Vec::new();
        for stmt in &block.stmts {
            match &stmt.kind {
                StmtKind::Call(call) => calls.push(call),
                StmtKind::Assign { name, .. } => self.error(
                    stmt.pos,
                    format!("unexpected assignment to `{name}` in {context}: variables go in `environment {{ ... }}`"),
                ),
                StmtKind::Error => {}
            }
        }
        calls
    }

    fn pipeline(&mut self, call: &Call) -> Option<Pipeline> {
        let block = self.section_block(call, "pipeline")?;
        let mut seen = Seen::default();
        let mut agent = None;
        let mut environment = Vec::new();
        let mut options = Options::default();
        let mut stages = None;
        let mut post = Vec::new();
        let mut has_agent = false;
        let mut failed = false;
        for section in self.calls(block, Ctx::Section("pipeline")) {
            let name = section.name;
            if matches!(
                name,
                "agent" | "environment" | "options" | "stages" | "post"
            ) && let Some(first) = seen.check(name, section.pos)
            {
                self.error(
                    section.pos,
                    format!("duplicate section `{name}` in `pipeline` (first at {first})"),
                );
                continue;
            }
            match name {
                "agent" => {
                    has_agent = true;
                    agent = self.agent(section);
                    failed |= agent.is_none();
                }
                "environment" => environment = self.environment(section),
                "options" => options = self.options(section, true),
                "stages" => {
                    stages = self.stages(section, StageContext { in_parallel: false });
                    failed |= stages.is_none();
                }
                "post" => post = self.post(section),
                _ => self.misplaced(section, "`pipeline`", PIPELINE_SECTIONS),
            }
        }
        if !has_agent {
            self.error(
                call.pos,
                "missing required section `agent` in `pipeline`: expected `agent any`, `agent none` or `agent { ... }`",
            );
        }
        if stages.is_none() && !seen.first.iter().any(|(n, _)| *n == "stages") {
            self.error(
                call.pos,
                "missing required section `stages` in `pipeline`: expected `stages { stage('name') { ... } }`",
            );
        }
        if failed {
            return None;
        }
        Some(Pipeline {
            pos: call.pos,
            agent: agent?,
            environment,
            options,
            stages: stages?,
            post,
        })
    }

    /// Reports a name that is not allowed where it is, as precisely as possible.
    fn misplaced(&mut self, call: &Call, context: &str, expected: &str) {
        let name = call.name;
        let message = if UNSUPPORTED_SECTIONS.contains(&name) {
            format!("unsupported section `{name}`: Hodei does not run it")
        } else if name == "script" {
            "unsupported `script { ... }`: it needs Groovy, which Hodei does not run".to_string()
        } else if name == "stage" {
            format!(
                "`stage` is not allowed in {context}: expected it inside `stages {{ ... }}` or `parallel {{ ... }}`"
            )
        } else if is_step_name(name) {
            format!(
                "step `{name}` is not allowed in {context}: expected it inside `steps {{ ... }}`"
            )
        } else {
            format!("unknown section `{name}` in {context}: expected {expected}")
        };
        self.error(call.pos, message);
    }

    fn agent(&mut self, call: &Call) -> Option<Agent> {
        let pos = call.pos;
        let Some(block) = &call.block else {
            return match call.args.as_slice() {
                [arg] if arg.name.is_none() => match &arg.value.kind {
                    ExprKind::Ident("any") => Some(Agent {
                        pos,
                        kind: AgentKind::Any,
                    }),
                    ExprKind::Ident("none") => Some(Agent {
                        pos,
                        kind: AgentKind::None,
                    }),
                    ExprKind::Ident(name) => {
                        self.error(
                            arg.value.pos,
                            format!("unknown agent `{name}`: expected `agent any`, `agent none` or `agent {{ ... }}`"),
                        );
                        None
                    }
                    _ => {
                        self.error(
                            arg.value.pos,
                            "expected `agent any`, `agent none` or `agent { ... }`",
                        );
                        None
                    }
                },
                [] => {
                    self.error(
                        pos,
                        "`agent` needs a type: expected `agent any`, `agent none` or `agent { ... }`",
                    );
                    None
                }
                [arg] => {
                    self.error(
                        arg.value.pos,
                        "expected `agent any`, `agent none` or `agent { ... }`",
                    );
                    None
                }
                [_, second, ..] => {
                    self.error(
                        second.value.pos,
                        "expected `agent any`, `agent none` or `agent { ... }`",
                    );
                    None
                }
            };
        };
        if let Some(arg) = call.args.first() {
            self.error(
                arg.value.pos,
                "`agent` takes either a type or a block, not both",
            );
            return None;
        }
        let calls = self.calls(block, Ctx::Section("agent"));
        let inner = match calls.as_slice() {
            [] => {
                if !block.had_error() {
                    self.error(
                        pos,
                        format!("`agent` is empty: expected an agent type ({AGENT_TYPES})"),
                    );
                }
                return None;
            }
            [inner] => *inner,
            [_, second, ..] => {
                self.error(
                    second.pos,
                    format!(
                        "`agent` takes one agent type, found a second one `{}`",
                        second.name
                    ),
                );
                return None;
            }
        };
        let kind = match inner.name {
            "label" if inner.block.is_none() => {
                let params = self.params(inner, &["label"], Some("label"))?;
                let expr = self.required(inner, &params, "label")?;
                let label = self.label(expr)?;
                Some(AgentKind::Label {
                    expr: label,
                    custom_workspace: None,
                })
            }
            "label" | "node" => self.node_agent(inner),
            "template" => {
                let params = self.params(inner, &["name"], Some("name"))?;
                let expr = self.required(inner, &params, "name")?;
                let id = self.plain_string(expr, "template")?;
                let id = match crate::ids::TemplateId::new(id) {
                    Ok(id) => id,
                    Err(e) => {
                        self.error(expr.pos, format!("invalid template id: {e}"));
                        return None;
                    }
                };
                self.no_block(inner);
                Some(AgentKind::Template(id))
            }
            "docker" => self.docker_agent(inner),
            "kubernetes" => self.kubernetes_agent(inner),
            "dockerfile" => {
                self.error(
                    inner.pos,
                    "unsupported agent type `dockerfile`: build the image first and use `docker 'image'`",
                );
                None
            }
            "any" | "none" => {
                self.error(
                    inner.pos,
                    format!(
                        "`{0}` is written without a block: expected `agent {0}`",
                        inner.name
                    ),
                );
                None
            }
            other => {
                self.error(
                    inner.pos,
                    format!("unknown agent type `{other}`: expected {AGENT_TYPES}"),
                );
                None
            }
        }?;
        Some(Agent { pos, kind })
    }

    /// `node { label 'x'; customWorkspace 'w' }` and `label { ... }`.
    fn node_agent(&mut self, call: &Call) -> Option<AgentKind> {
        let what = call.name;
        let block = self.section_block(call, what)?;
        let mut seen = Seen::default();
        let mut expr = None;
        let mut custom_workspace = None;
        let mut ok = true;
        for inner in self.calls(block, Ctx::Section(what)) {
            if let Some(first) = seen.check(inner.name, inner.pos) {
                self.error(
                    inner.pos,
                    format!("duplicate `{}` in `{what}` (first at {first})", inner.name),
                );
                ok = false;
                continue;
            }
            let value = self.single_value(inner);
            match (inner.name, value) {
                ("label", Some(value)) => match self.label(value) {
                    Some(label) => expr = label,
                    None => ok = false,
                },
                ("customWorkspace", Some(value)) => {
                    custom_workspace = self.plain_string(value, "customWorkspace");
                    ok &= custom_workspace.is_some();
                }
                ("label" | "customWorkspace", None) => ok = false,
                (other, _) => {
                    self.error(
                        inner.pos,
                        format!("unknown parameter `{other}` in `{what}`: expected label or customWorkspace"),
                    );
                    ok = false;
                }
            }
        }
        if what == "label" && seen.check("label", call.pos).is_none() {
            self.error(
                call.pos,
                "`label` agent needs `label 'expression'` in its block",
            );
            ok = false;
        }
        ok.then_some(AgentKind::Label {
            expr,
            custom_workspace,
        })
    }

    fn docker_agent(&mut self, call: &Call) -> Option<AgentKind> {
        let mut image = None;
        let mut args = None;
        if let Some(block) = &call.block {
            if let Some(arg) = call.args.first() {
                self.error(
                    arg.value.pos,
                    "`docker` takes either an image or a block, not both",
                );
                return None;
            }
            let mut seen = Seen::default();
            let mut ok = true;
            for inner in self.calls(block, Ctx::Section("docker")) {
                if let Some(first) = seen.check(inner.name, inner.pos) {
                    self.error(
                        inner.pos,
                        format!("duplicate `{}` in `docker` (first at {first})", inner.name),
                    );
                    ok = false;
                    continue;
                }
                let value = self.single_value(inner);
                match (inner.name, value) {
                    ("image", Some(value)) => image = self.plain_string(value, "image"),
                    ("args", Some(value)) => {
                        args = self.docker_args(value);
                        ok &= args.is_some();
                    }
                    ("image" | "args", None) => ok = false,
                    (other, _) => {
                        self.error(
                            inner.pos,
                            format!("unsupported parameter `{other}` in `docker`: expected image or args"),
                        );
                        ok = false;
                    }
                }
            }
            if seen.check("image", call.pos).is_none() {
                self.error(call.pos, "`docker` agent needs `image 'name'` in its block");
                return None;
            }
            if !ok {
                return None;
            }
        } else {
            let params = self.params(call, &["image", "args"], Some("image"))?;
            let expr = self.required(call, &params, "image")?;
            image = self.plain_string(expr, "image");
            if let Some(expr) = params.get("args") {
                args = Some(self.docker_args(expr)?);
            }
        }
        let image = image?;
        if image.trim().is_empty() {
            self.error(call.pos, "`docker` image must not be empty");
            return None;
        }
        Some(AgentKind::Docker { image, args })
    }

    /// A `docker` agent's `args`: a plain string that [`DockerArgs::parse`]
    /// accepts; an error points at the offending word.
    fn docker_args(&mut self, expr: &Expr) -> Option<String> {
        let text = self.plain_string(expr, "args")?;
        match DockerArgs::parse(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                let index = e.column.saturating_sub(1);
                let pos = lexer::position_in_literal(self.source, expr.start, expr.pos, index);
                self.error(pos, format!("invalid docker args: {}", e.message));
                None
            }
        }
    }

    fn kubernetes_agent(&mut self, call: &Call) -> Option<AgentKind> {
        let block = self.section_block(call, "kubernetes")?;
        let mut seen = Seen::default();
        let mut yaml = None;
        let mut inherit_from = None;
        let mut ok = true;
        for inner in self.calls(block, Ctx::Section("kubernetes")) {
            if let Some(first) = seen.check(inner.name, inner.pos) {
                self.error(
                    inner.pos,
                    format!(
                        "duplicate `{}` in `kubernetes` (first at {first})",
                        inner.name
                    ),
                );
                ok = false;
                continue;
            }
            let value = self.single_value(inner);
            match (inner.name, value) {
                ("yaml", Some(value)) => {
                    yaml = self.plain_string(value, "yaml");
                    ok &= yaml.is_some();
                }
                ("inheritFrom", Some(value)) => {
                    inherit_from = self.plain_string(value, "inheritFrom");
                    ok &= inherit_from.is_some();
                }
                ("yaml" | "inheritFrom", None) => ok = false,
                (other, _) => {
                    self.error(
                        inner.pos,
                        format!("unsupported parameter `{other}` in `kubernetes`: expected yaml or inheritFrom"),
                    );
                    ok = false;
                }
            }
        }
        if ok && yaml.is_none() && inherit_from.is_none() {
            self.error(
                call.pos,
                "`kubernetes` agent needs `yaml '...'` or `inheritFrom 'name'`",
            );
            return None;
        }
        ok.then_some(AgentKind::Kubernetes { yaml, inherit_from })
    }

    /// The one positional value of a `name value` directive.
    fn single_value<'c>(&mut self, call: &'c Call<'c>) -> Option<&'c Expr<'c>> {
        if let Some(block) = &call.block {
            self.error(
                block.pos,
                format!("`{}` takes a value, not a block", call.name),
            );
            return None;
        }
        match call.args.as_slice() {
            [arg] if arg.name.is_none() => Some(&arg.value),
            [] => {
                self.error(call.pos, format!("`{}` needs a value", call.name));
                None
            }
            [arg] => {
                self.error(
                    arg.value.pos,
                    format!("`{}` takes one value, not named parameters", call.name),
                );
                None
            }
            [_, second, ..] => {
                self.error(
                    second.value.pos,
                    format!("`{}` takes one value, found more", call.name),
                );
                None
            }
        }
    }

    /// A label expression string; `Some(None)` for an empty one (any worker).
    fn label(&mut self, expr: &Expr) -> Option<Option<LabelExpr>> {
        let ExprKind::Str(lit) = &expr.kind else {
            self.error(
                expr.pos,
                "a label must be a string literal: expected `label 'expression'`",
            );
            return None;
        };
        let Some(text) = lit.value.as_literal() else {
            self.error(
                expr.pos,
                "a label must be a plain string literal: variables (`$X`) are not allowed in labels",
            );
            return None;
        };
        if text.trim().is_empty() {
            return Some(None);
        }
        match LabelExpr::parse(&text) {
            Ok(label) => Some(Some(label)),
            Err(e) => {
                let index = e.column.saturating_sub(1);
                let pos = lexer::position_in_literal(self.source, expr.start, expr.pos, index);
                self.error(pos, format!("invalid label expression: {}", e.message));
                None
            }
        }
    }

    /// A string literal without variables.
    fn plain_string(&mut self, expr: &Expr, what: &str) -> Option<String> {
        let ExprKind::Str(lit) = &expr.kind else {
            self.error(
                expr.pos,
                format!(
                    "`{what}` expects a string literal, found {}",
                    describe(expr)
                ),
            );
            return None;
        };
        match lit.value.as_literal() {
            Some(text) => Some(text),
            None => {
                self.error(
                    expr.pos,
                    format!(
                        "`{what}` must be a plain string: variables (`$X`) are not allowed here"
                    ),
                );
                None
            }
        }
    }

    /// A string literal, possibly with variables.
    fn text(&mut self, expr: &Expr, what: &str) -> Option<Interpolation> {
        match &expr.kind {
            ExprKind::Str(lit) => Some(lit.value.clone()),
            _ => {
                self.error(
                    expr.pos,
                    format!("`{what}` expects a string, found {}", describe(expr)),
                );
                None
            }
        }
    }

    /// A whole number, at least `min`.
    fn number(&mut self, expr: &Expr, what: &str, min: u64) -> Option<u64> {
        let parsed = match &expr.kind {
            ExprKind::Number(n) => n.parse::<u64>().ok(),
            _ => {
                self.error(
                    expr.pos,
                    format!("`{what}` expects a whole number, found {}", describe(expr)),
                );
                return None;
            }
        };
        match parsed {
            Some(n) if n >= min => Some(n),
            _ => {
                self.error(
                    expr.pos,
                    format!(
                        "`{what}` expects a whole number of at least {min}, found {}",
                        describe(expr)
                    ),
                );
                None
            }
        }
    }

    fn boolean(&mut self, expr: &Expr, what: &str) -> Option<bool> {
        match expr.kind {
            ExprKind::Bool(b) => Some(b),
            _ => {
                self.error(
                    expr.pos,
                    format!("`{what}` expects true or false, found {}", describe(expr)),
                );
                None
            }
        }
    }

    fn time_unit(&mut self, expr: Option<&Expr>, default: TimeUnit) -> Option<TimeUnit> {
        let Some(expr) = expr else {
            return Some(default);
        };
        let name = match &expr.kind {
            ExprKind::Ident(name) => name.to_string(),
            _ => self.plain_string(expr, "unit")?,
        };
        match TimeUnit::parse(&name) {
            Some(unit) => Some(unit),
            None => {
                self.error(
                    expr.pos,
                    format!("unknown time unit `{name}`: expected NANOSECONDS, MICROSECONDS, MILLISECONDS, SECONDS, MINUTES, HOURS or DAYS"),
                );
                None
            }
        }
    }

    /// Checks the arguments of a call against the parameter names it takes;
    /// a single positional argument is the `default` parameter.
    fn params<'c>(
        &mut self,
        call: &'c Call<'c>,
        allowed: &[&'static str],
        default: Option<&'static str>,
    ) -> Option<Params<'c>> {
        let name = call.name;
        let mut values: Vec<(&'static str, &'c Expr<'c>)> = Vec::new();
        let mut ok = true;
        let positional: Vec<_> = call.args.iter().filter(|a| a.name.is_none()).collect();
        let named = call.args.len() - positional.len();
        if let Some(first) = positional.first() {
            match default {
                Some(_) if named > 0 => {
                    self.error(
                        first.value.pos,
                        format!("`{name}` cannot mix a value without a name with named parameters: name every parameter"),
                    );
                    ok = false;
                }
                Some(default) if positional.len() == 1 => values.push((default, &first.value)),
                Some(_) => {
                    self.error(
                        positional[1].value.pos,
                        format!(
                            "`{name}` takes one value without a name, found {}",
                            positional.len()
                        ),
                    );
                    ok = false;
                }
                None => {
                    self.error(
                        first.value.pos,
                        format!(
                            "`{name}` takes named parameters ({}): expected `{name}({}: ...)`",
                            allowed.join(", "),
                            allowed.first().copied().unwrap_or("name")
                        ),
                    );
                    ok = false;
                }
            }
        }
        for arg in &call.args {
            let Some((param, pos)) = &arg.name else {
                continue;
            };
            let Some(known) = allowed.iter().find(|a| *a == param) else {
                let unsupported = UNSUPPORTED_PARAMS
                    .iter()
                    .find(|(step, p, _)| *step == name && p == param);
                let message = if let Some((_, _, why)) = unsupported {
                    format!("unsupported parameter `{param}` for `{name}`: {why}")
                } else if allowed.is_empty() {
                    format!("unknown parameter `{param}` for `{name}`: it takes none")
                } else {
                    format!(
                        "unknown parameter `{param}` for `{name}`: expected {}",
                        allowed.join(", ")
                    )
                };
                self.error(*pos, message);
                ok = false;
                continue;
            };
            if values.iter().any(|(n, _)| n == known) {
                self.error(*pos, format!("duplicate parameter `{param}` for `{name}`"));
                ok = false;
                continue;
            }
            values.push((known, &arg.value));
        }
        ok.then_some(Params { values })
    }

    fn required<'c>(
        &mut self,
        call: &Call,
        params: &Params<'c>,
        param: &str,
    ) -> Option<&'c Expr<'c>> {
        let value = params.get(param);
        if value.is_none() {
            self.error(
                call.pos,
                format!("`{}` needs the parameter `{param}`", call.name),
            );
        }
        value
    }

    /// Reports a block given to a call that takes none.
    fn no_block(&mut self, call: &Call) -> bool {
        if let Some(block) = &call.block {
            self.error(block.pos, format!("`{}` takes no block", call.name));
            return false;
        }
        true
    }

    fn environment(&mut self, call: &Call) -> Vec<EnvVar> {
        let Some(block) = self.section_block(call, "environment") else {
            return Vec::new();
        };
        let mut vars: Vec<EnvVar> = Vec::new();
        let mut count = 0usize;
        for stmt in &block.stmts {
            let (name, value) = match &stmt.kind {
                StmtKind::Assign { name, value } => (name, value),
                StmtKind::Call(inner) => {
                    count += 1;
                    self.error(
                        inner.pos,
                        format!(
                            "expected `NAME = value` in `environment`, found `{}`",
                            inner.name
                        ),
                    );
                    continue;
                }
                StmtKind::Error => continue,
            };
            count += 1;
            if !lexer::is_identifier(name) {
                self.error(
                    stmt.pos,
                    format!("environment variable name `{name}` is not an identifier: expected letters, digits and `_`, not starting with a digit"),
                );
                continue;
            }
            if let Some(first) = vars.iter().find(|v| &v.name == name) {
                let first = first.pos;
                self.error(
                    stmt.pos,
                    format!("duplicate environment variable `{name}` (first at {first})"),
                );
                continue;
            }
            let value = match &value.kind {
                ExprKind::Str(lit) => Some(EnvValue::Text(lit.value.clone())),
                ExprKind::Number(n) => Some(EnvValue::Text(Interpolation::literal(n.clone()))),
                ExprKind::Bool(b) => Some(EnvValue::Text(Interpolation::literal(b.to_string()))),
                ExprKind::Call(inner) if inner.name == "credentials" => self
                    .params(inner, &["id"], Some("id"))
                    .and_then(|params| {
                        let expr = self.required(inner, &params, "id")?;
                        self.plain_string(expr, "credentials")
                    })
                    .map(EnvValue::Credentials),
                _ => {
                    self.error(
                        value.pos,
                        format!("the value of `{name}` must be a string or `credentials('id')`, found {}", describe(value)),
                    );
                    None
                }
            };
            if let Some(value) = value {
                vars.push(EnvVar {
                    pos: stmt.pos,
                    name: name.clone(),
                    value,
                });
            }
        }
        if count == 0 && !block.had_error() {
            self.error(
                call.pos,
                "`environment` is empty: expected at least one `NAME = value`",
            );
        }
        vars
    }

    fn options(&mut self, call: &Call, top_level: bool) -> Options {
        let mut options = Options::default();
        let Some(block) = self.section_block(call, "options") else {
            return options;
        };
        let mut seen = Seen::default();
        for option in self.calls(block, Ctx::Section("options")) {
            let name = option.name;
            if let Some(first) = seen.check(name, option.pos) {
                self.error(
                    option.pos,
                    format!("duplicate option `{name}` (first at {first})"),
                );
                continue;
            }
            match name {
                "timeout" => {
                    self.no_block(option);
                    options.timeout = self.timeout_params(option);
                }
                "retry" => {
                    self.no_block(option);
                    options.retry = self.retry_count(option);
                }
                "skipDefaultCheckout" => {
                    self.no_block(option);
                    if let Some(params) = self.params(option, &["value"], Some("value")) {
                        options.skip_default_checkout = match params.get("value") {
                            Some(expr) => self.boolean(expr, name).unwrap_or(false),
                            None => true,
                        };
                    }
                }
                "parallelsAlwaysFailFast" => {
                    self.no_block(option);
                    if !top_level {
                        self.error(
                            option.pos,
                            "`parallelsAlwaysFailFast` is only allowed in the pipeline's `options`",
                        );
                    } else if self.params(option, &[], None).is_some() {
                        options.parallels_always_fail_fast = true;
                    }
                }
                _ if IGNORED_OPTIONS.contains(&name) => self.warning(
                    option.pos,
                    format!("option `{name}` has no effect in Hodei and is ignored"),
                ),
                "script" => self.misplaced(option, "`options`", OPTIONS),
                _ if UNSUPPORTED_OPTIONS.contains(&name) => self.error(
                    option.pos,
                    format!("unsupported option `{name}`: Hodei does not implement it"),
                ),
                _ => self.error(
                    option.pos,
                    format!("unknown option `{name}`: expected {OPTIONS}"),
                ),
            }
        }
        options
    }

    /// `timeout(5)` or `timeout(time: 5, unit: 'MINUTES')`.
    fn timeout_params(&mut self, call: &Call) -> Option<Duration> {
        let params = self.params(call, &["time", "unit"], Some("time"))?;
        let time = self.required(call, &params, "time")?;
        let time = self.number(time, "time", 1)?;
        let unit = self.time_unit(params.get("unit"), TimeUnit::Minutes)?;
        Some(Duration { time, unit })
    }

    /// `retry(3)` or `retry(count: 3)`.
    fn retry_count(&mut self, call: &Call) -> Option<u32> {
        let params = self.params(call, &["count"], Some("count"))?;
        let count = self.required(call, &params, "count")?;
        let n = self.number(count, "count", 1)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(count.pos, format!("`count` is too large: {n}"));
                None
            }
        }
    }

    fn stages(&mut self, call: &Call, context: StageContext) -> Option<Vec<Stage>> {
        self.stage_list(call, "stages", context)
    }

    /// The stages of a `stages` or `parallel` block.
    fn stage_list(&mut self, call: &Call, what: &str, context: StageContext) -> Option<Vec<Stage>> {
        let block = self.section_block(call, what)?;
        let outer_names = std::mem::take(&mut self.stage_names);
        let mut stages = Vec::new();
        let mut ok = !block.had_error();
        let mut count = 0usize;
        for inner in self.calls(block, Ctx::Section(what)) {
            count += 1;
            if inner.name == "stage" {
                match self.stage(inner, context) {
                    Some(stage) => stages.push(stage),
                    None => ok = false,
                }
            } else {
                ok = false;
                let message = if is_step_name(inner.name) {
                    format!(
                        "step `{}` is not allowed in `{what}`: expected it inside `stage('name') {{ steps {{ ... }} }}`",
                        inner.name
                    )
                } else {
                    format!(
                        "only `stage` is allowed in `{what}`, found `{}`",
                        inner.name
                    )
                };
                self.error(inner.pos, message);
            }
        }
        self.stage_names = outer_names;
        if count == 0 && !block.had_error() {
            self.error(
                call.pos,
                format!("`{what}` is empty: expected at least one `stage`"),
            );
            ok = false;
        }
        ok.then_some(stages)
    }

    fn stage(&mut self, call: &Call, context: StageContext) -> Option<Stage> {
        let name = match call.args.as_slice() {
            [] => {
                self.error(
                    call.pos,
                    "`stage` needs a name: expected `stage('name') { ... }`",
                );
                None
            }
            [arg] if arg.name.is_none() => {
                let name = self.plain_string(&arg.value, "stage name");
                match name {
                    Some(name) if name.trim().is_empty() => {
                        self.error(arg.value.pos, "stage name must not be empty");
                        None
                    }
                    other => other,
                }
            }
            [arg, ..] => {
                self.error(
                    arg.value.pos,
                    "`stage` takes only a name: expected `stage('name') { ... }`",
                );
                None
            }
        };
        if let Some(name) = &name {
            if let Some(first) = self.stage_names.get(name) {
                let first = *first;
                self.error(
                    call.pos,
                    format!("duplicate stage name `{name}` (first at {first})"),
                );
            } else {
                self.stage_names.insert(name.clone(), call.pos);
            }
        }
        let Some(block) = &call.block else {
            self.error(
                call.pos,
                "`stage` needs a block: expected `stage('name') { ... }`",
            );
            return None;
        };
        let shown = name.clone().unwrap_or_default();
        let mut ok = name.is_some();
        let mut seen = Seen::default();
        let mut agent = None;
        let mut environment = Vec::new();
        let mut options = Options::default();
        let mut when = None;
        let mut post = Vec::new();
        let mut fail_fast: Option<(bool, Pos)> = None;
        let mut body: Option<(&str, Pos, Option<StageBody>)> = None;
        for section in self.calls(block, Ctx::Stage(&shown)) {
            let section_name = section.name;
            let known = matches!(
                section_name,
                "agent"
                    | "environment"
                    | "options"
                    | "when"
                    | "steps"
                    | "stages"
                    | "parallel"
                    | "post"
                    | "failFast"
            );
            if known && let Some(first) = seen.check(section_name, section.pos) {
                self.error(
                    section.pos,
                    format!(
                        "duplicate section `{section_name}` in stage `{shown}` (first at {first})"
                    ),
                );
                ok = false;
                continue;
            }
            match section_name {
                "agent" => {
                    agent = self.agent(section);
                    ok &= agent.is_some();
                }
                "environment" => environment = self.environment(section),
                "options" => options = self.options(section, false),
                "when" => {
                    when = self.when(section);
                    ok &= when.is_some();
                }
                "post" => post = self.post(section),
                "failFast" => {
                    self.no_block(section);
                    let value = self
                        .single_value(section)
                        .and_then(|v| self.boolean(v, "failFast"));
                    match value {
                        Some(v) => fail_fast = Some((v, section.pos)),
                        None => ok = false,
                    }
                }
                "steps" | "stages" | "parallel" => {
                    if let Some((first, _, _)) = body {
                        self.error(
                            section.pos,
                            format!("stage `{shown}` has both `{first}` and `{section_name}`: expected exactly one of `steps`, `stages` or `parallel`"),
                        );
                        ok = false;
                        continue;
                    }
                    let parsed = match section_name {
                        "steps" => self.steps_section(section).map(StageBody::Steps),
                        "stages" => self.stages(section, context).map(StageBody::Stages),
                        _ => {
                            if context.in_parallel {
                                self.error(
                                    section.pos,
                                    format!("stage `{shown}` is inside a parallel branch and cannot contain `parallel`"),
                                );
                                None
                            } else {
                                self.stage_list(
                                    section,
                                    "parallel",
                                    StageContext { in_parallel: true },
                                )
                                .map(|branches| {
                                    StageBody::Parallel {
                                        fail_fast: false,
                                        branches,
                                    }
                                })
                            }
                        }
                    };
                    ok &= parsed.is_some();
                    body = Some((section_name, section.pos, parsed));
                }
                _ => {
                    self.misplaced(section, &format!("stage `{shown}`"), STAGE_SECTIONS);
                    ok = false;
                }
            }
        }
        let body = match body {
            Some((_, _, Some(body))) => Some(body),
            Some((_, _, None)) => None,
            None => {
                if !block.had_error() {
                    self.error(
                        call.pos,
                        format!("stage `{shown}` has no `steps`, `stages` or `parallel`: expected exactly one of them"),
                    );
                }
                None
            }
        };
        let body = match (body, fail_fast) {
            (Some(StageBody::Parallel { branches, .. }), Some((fail_fast, _))) => {
                Some(StageBody::Parallel {
                    fail_fast,
                    branches,
                })
            }
            (body, None) => body,
            (None, Some(_)) => None,
            (Some(other), Some((_, pos))) => {
                self.error(pos, "`failFast` is only allowed in a stage with `parallel`");
                ok = false;
                Some(other)
            }
        };
        if let (Some(agent), Some(StageBody::Parallel { .. })) = (&agent, &body) {
            self.error(
                agent.pos,
                format!("stage `{shown}` has `parallel` and `agent`: give each parallel branch its own agent"),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(Stage {
            pos: call.pos,
            name: name?,
            agent,
            environment,
            options,
            when,
            body: body?,
            post,
        })
    }

    fn when(&mut self, call: &Call) -> Option<When> {
        let block = self.section_block(call, "when")?;
        let mut conditions = Vec::new();
        let mut before_agent = None;
        let mut ok = !block.had_error();
        let mut count = 0usize;
        for inner in self.calls(block, Ctx::Section("when")) {
            if inner.name == "beforeAgent" {
                if before_agent.is_some() {
                    self.error(inner.pos, "duplicate `beforeAgent` in `when`");
                    ok = false;
                    continue;
                }
                match self
                    .single_value(inner)
                    .and_then(|v| self.boolean(v, "beforeAgent"))
                {
                    Some(v) => before_agent = Some(v),
                    None => ok = false,
                }
                continue;
            }
            count += 1;
            match self.condition(inner) {
                Some(c) => conditions.push(c),
                None => ok = false,
            }
        }
        if count == 0 && !block.had_error() {
            self.error(
                call.pos,
                "`when` is empty: expected at least one condition (branch, environment, not, allOf or anyOf)",
            );
            ok = false;
        }
        ok.then_some(When {
            pos: call.pos,
            conditions,
            before_agent: before_agent.unwrap_or(false),
        })
    }

    fn condition(&mut self, call: &Call) -> Option<Condition> {
        let pos = call.pos;
        let kind = match call.name {
            "branch" => {
                self.no_block(call);
                let params = self.params(call, &["pattern", "comparator"], Some("pattern"))?;
                let pattern = self.required(call, &params, "pattern")?;
                let pattern = self.plain_string(pattern, "pattern")?;
                let comparator = match params.get("comparator") {
                    None => Comparator::Glob,
                    Some(expr) => {
                        let text = self.plain_string(expr, "comparator")?;
                        match text.as_str() {
                            "EQUALS" => Comparator::Equals,
                            "GLOB" => Comparator::Glob,
                            "REGEXP" => Comparator::Regexp,
                            other => {
                                self.error(
                                    expr.pos,
                                    format!("unknown comparator `{other}`: expected EQUALS, GLOB or REGEXP"),
                                );
                                return None;
                            }
                        }
                    }
                };
                ConditionKind::Branch {
                    pattern,
                    comparator,
                }
            }
            "environment" => {
                self.no_block(call);
                let params = self.params(call, &["name", "value"], None)?;
                let name_expr = self.required(call, &params, "name");
                let value_expr = self.required(call, &params, "value");
                let name = self.plain_string(name_expr?, "name")?;
                let value = self.plain_string(value_expr?, "value")?;
                if !lexer::is_identifier(&name) {
                    self.error(
                        name_expr?.pos,
                        format!("environment variable name `{name}` is not an identifier: expected letters, digits and `_`, not starting with a digit"),
                    );
                    return None;
                }
                ConditionKind::Environment { name, value }
            }
            "not" | "allOf" | "anyOf" => {
                let what = call.name;
                let block = self.section_block(call, what)?;
                let mut children = Vec::new();
                let mut ok = !block.had_error();
                for inner in self.calls(block, Ctx::Section(what)) {
                    match self.condition(inner) {
                        Some(c) => children.push(c),
                        None => ok = false,
                    }
                }
                let count = block
                    .stmts
                    .iter()
                    .filter(|s| !matches!(s.kind, StmtKind::Error))
                    .count();
                if what == "not" && count != 1 && !block.had_error() {
                    self.error(
                        pos,
                        format!("`not` needs exactly one condition, found {count}"),
                    );
                    return None;
                }
                if count == 0 && !block.had_error() {
                    self.error(
                        pos,
                        format!("`{what}` is empty: expected at least one condition"),
                    );
                    return None;
                }
                if !ok {
                    return None;
                }
                match what {
                    "not" => ConditionKind::Not(Box::new(children.pop()?)),
                    "allOf" => ConditionKind::AllOf(children),
                    _ => ConditionKind::AnyOf(children),
                }
            }
            "expression" => {
                self.error(
                    pos,
                    "unsupported `when` condition `expression`: it needs Groovy; use branch, environment, not, allOf or anyOf",
                );
                return None;
            }
            other => {
                self.error(
                    pos,
                    format!("unknown `when` condition `{other}`: expected {WHEN_CONDITIONS}"),
                );
                return None;
            }
        };
        Some(Condition { pos, kind })
    }

    fn post(&mut self, call: &Call) -> Vec<PostBlock> {
        let Some(block) = self.section_block(call, "post") else {
            return Vec::new();
        };
        let mut blocks: Vec<PostBlock> = Vec::new();
        let mut seen = Seen::default();
        let mut count = 0usize;
        for inner in self.calls(block, Ctx::Section("post")) {
            count += 1;
            let Some(condition) = PostCondition::parse(inner.name) else {
                let names: Vec<&str> = PostCondition::ALL.iter().map(|(n, _)| *n).collect();
                self.error(
                    inner.pos,
                    format!(
                        "unknown post condition `{}`: expected one of {}",
                        inner.name,
                        names.join(", ")
                    ),
                );
                continue;
            };
            if let Some(first) = seen.check(inner.name, inner.pos) {
                self.error(
                    inner.pos,
                    format!(
                        "duplicate post condition `{}` (first at {first})",
                        inner.name
                    ),
                );
                continue;
            }
            let Some(steps_block) = self.section_block(inner, inner.name) else {
                continue;
            };
            let steps = self.steps(steps_block);
            blocks.push(PostBlock {
                pos: inner.pos,
                condition,
                steps,
            });
        }
        if count == 0 && !block.had_error() {
            self.error(
                call.pos,
                "`post` is empty: expected at least one condition such as `always { ... }`",
            );
        }
        blocks.sort_by_key(|b| b.condition);
        blocks
    }

    /// A `steps { ... }` section; `None` if empty or invalid.
    fn steps_section(&mut self, call: &Call) -> Option<Vec<Step>> {
        let block = self.section_block(call, "steps")?;
        let before = self.error_count();
        let steps = self.steps(block);
        let count = block.stmts.len();
        if count == 0 {
            self.error(call.pos, "`steps` is empty: expected at least one step");
            return None;
        }
        (self.error_count() == before && !block.had_error()).then_some(steps)
    }

    /// Errors reported by validation so far (a counter, so checking it is cheap).
    fn error_count(&self) -> usize {
        self.errors
    }

    fn steps(&mut self, block: &Block) -> Vec<Step> {
        let mut steps = Vec::new();
        for stmt in &block.stmts {
            match &stmt.kind {
                StmtKind::Call(call) => {
                    if let Some(step) = self.step(call) {
                        steps.push(step);
                    }
                }
                StmtKind::Assign { name, .. } => self.error(
                    stmt.pos,
                    format!("unsupported assignment to `{name}` in steps: variables need Groovy; use `environment {{ ... }}` or `withEnv`"),
                ),
                StmtKind::Error => {}
            }
        }
        steps
    }

    /// The block of a step that needs one.
    fn step_block(&mut self, call: &Call) -> Option<Vec<Step>> {
        match &call.block {
            Some(block) => {
                let before = self.error_count();
                let steps = self.steps(block);
                (self.error_count() == before).then_some(steps)
            }
            None => {
                self.error(
                    call.pos,
                    format!(
                        "`{0}` needs a block of steps: expected `{0}(...) {{ ... }}`",
                        call.name
                    ),
                );
                None
            }
        }
    }

    fn step(&mut self, call: &Call) -> Option<Step> {
        let name = call.name;
        let kind = match name {
            "sh" => {
                let params =
                    self.params(call, &["script", "label", "returnStatus"], Some("script"));
                self.no_block(call);
                let params = params?;
                let script = self.required(call, &params, "script")?;
                let script = self.text(script, "script")?;
                let label = match params.get("label") {
                    Some(expr) => Some(self.plain_string(expr, "label")?),
                    None => None,
                };
                let return_status = match params.get("returnStatus") {
                    Some(expr) => self.boolean(expr, "returnStatus")?,
                    None => false,
                };
                StepKind::Sh {
                    script,
                    label,
                    return_status,
                }
            }
            "echo" | "error" => {
                let params = self.params(call, &["message"], Some("message"));
                self.no_block(call);
                let params = params?;
                let message = self.required(call, &params, "message")?;
                let message = self.text(message, "message")?;
                if name == "echo" {
                    StepKind::Echo(message)
                } else {
                    StepKind::Error(message)
                }
            }
            "dir" => {
                let params = self.params(call, &["path"], Some("path"));
                let steps = self.step_block(call);
                let params = params?;
                let path = self.required(call, &params, "path")?;
                let path = self.text(path, "path")?;
                StepKind::Dir {
                    path,
                    steps: steps?,
                }
            }
            "withEnv" => {
                let params = self.params(call, &["overrides"], Some("overrides"));
                let steps = self.step_block(call);
                let params = params?;
                let list = self.required(call, &params, "overrides")?;
                let vars = self.with_env_vars(list)?;
                StepKind::WithEnv {
                    vars,
                    steps: steps?,
                }
            }
            "timeout" => {
                let limit = self.timeout_params(call);
                let steps = self.step_block(call);
                StepKind::Timeout {
                    limit: limit?,
                    steps: steps?,
                }
            }
            "retry" => {
                let count = self.retry_count(call);
                let steps = self.step_block(call);
                StepKind::Retry {
                    count: count?,
                    steps: steps?,
                }
            }
            "sleep" => {
                let params = self.params(call, &["time", "unit"], Some("time"));
                self.no_block(call);
                let params = params?;
                let time = self.required(call, &params, "time")?;
                let time = self.number(time, "time", 0)?;
                let unit = self.time_unit(params.get("unit"), TimeUnit::Seconds)?;
                StepKind::Sleep(Duration { time, unit })
            }
            "writeFile" => {
                let params = self.params(call, &["file", "text"], None);
                self.no_block(call);
                let params = params?;
                let file = self.required(call, &params, "file");
                let text = self.required(call, &params, "text");
                let file = self.text(file?, "file")?;
                let text = self.text(text?, "text")?;
                StepKind::WriteFile { file, text }
            }
            "stage" => {
                self.error(
                    call.pos,
                    "`stage` is not allowed inside `steps`: stages go in `stages { ... }` or `parallel { ... }`",
                );
                return None;
            }
            "script" => {
                self.error(
                    call.pos,
                    "unsupported step `script`: `script { ... }` needs Groovy, which Hodei does not run",
                );
                return None;
            }
            "parallel" => {
                self.error(
                    call.pos,
                    "unsupported step `parallel` inside `steps`: use a `parallel { ... }` section in the stage",
                );
                return None;
            }
            _ if is_section_name(name) => {
                self.error(
                    call.pos,
                    format!(
                        "section `{name}` is not allowed inside `steps`: expected a step ({STEPS})"
                    ),
                );
                return None;
            }
            _ => {
                self.error(call.pos, format!("unknown step `{name}`: expected {STEPS}"));
                return None;
            }
        };
        Some(Step {
            pos: call.pos,
            kind,
        })
    }

    /// `['A=1', "B=$X"]` for `withEnv`.
    fn with_env_vars(&mut self, list: &Expr) -> Option<Vec<(String, Interpolation)>> {
        let ExprKind::List(items) = &list.kind else {
            self.error(
                list.pos,
                format!(
                    "`withEnv` expects a list of 'NAME=value' strings, found {}",
                    describe(list)
                ),
            );
            return None;
        };
        let mut vars = Vec::new();
        let mut ok = true;
        for item in items {
            let Some(value) = self.text(item, "withEnv") else {
                ok = false;
                continue;
            };
            let mut parts = value.parts().to_vec();
            let split = match parts.first_mut() {
                Some(super::model::Part::Literal(first)) => first.find('=').map(|i| {
                    let name = first[..i].to_string();
                    let rest = first[i + 1..].to_string();
                    *first = rest;
                    name
                }),
                _ => None,
            };
            let Some(name) = split else {
                self.error(
                    item.pos,
                    format!("`withEnv` entry `{value}` must be 'NAME=value'"),
                );
                ok = false;
                continue;
            };
            if let Some((base, _)) = name.split_once('+')
                && lexer::is_identifier(base)
            {
                self.error(
                    item.pos,
                    format!("unsupported `{name}=...` in `withEnv`: to prepend to `{base}`, write \"{base}=...:${{{base}}}\""),
                );
                ok = false;
                continue;
            }
            if !lexer::is_identifier(&name) {
                self.error(
                    item.pos,
                    format!("environment variable name `{name}` is not an identifier: expected letters, digits and `_`, not starting with a digit"),
                );
                ok = false;
                continue;
            }
            vars.push((name, Interpolation::from_parts(parts)));
        }
        ok.then_some(vars)
    }
}

fn is_step_name(name: &str) -> bool {
    matches!(
        name,
        "sh" | "echo" | "error" | "dir" | "withEnv" | "timeout" | "retry" | "sleep" | "writeFile"
    )
}

fn is_section_name(name: &str) -> bool {
    matches!(
        name,
        "agent" | "environment" | "options" | "when" | "steps" | "stages" | "post" | "failFast"
    ) || UNSUPPORTED_SECTIONS.contains(&name)
}

fn describe(expr: &Expr) -> String {
    match &expr.kind {
        ExprKind::Str(lit) => match lit.quote {
            Quote::Single | Quote::TripleSingle => format!("'{}'", lit.value),
            Quote::Double | Quote::TripleDouble => format!("\"{}\"", lit.value),
        },
        ExprKind::Number(n) => n.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Ident(name) => format!("`{name}`"),
        ExprKind::List(_) => "a list".to_string(),
        ExprKind::Call(call) => format!("`{}(...)`", call.name),
    }
}
