//! `hodei plan`: which worker runs each stage of a Jenkinsfile, and which
//! template each worker comes from.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use hodei_domain::WorkerTemplate;
use hodei_domain::pipeline::{
    AgentKind, Pipeline, Plan, PlanBody, PlanStage, Segment, SegmentOwner, parse, plan,
};
use hodei_domain::selection::{WorkerRequirements, select};
use hodei_infrastructure::load_template_file;

use super::lint::{Source, read_source};

/// Show the agent segments of a Jenkinsfile and the template of each worker
///
/// Prints every worker the pipeline needs (the top-level agent's, and one
/// per stage with its own agent), the stages each runs, which run in
/// parallel, and the template chosen for each worker and why. Exits with 0
/// when every worker has a template (or a backend image), 1 when the file
/// has errors or some worker has no matching template (every template is
/// then listed with the reason it was rejected), 2 when a file cannot be
/// read.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  hodei plan Jenkinsfile\n  hodei plan examples/parallel/Jenkinsfile --templates templates.yaml"
)]
pub struct Args {
    /// The pipeline file (Jenkinsfile)
    #[arg(value_name = "FILE")]
    file: PathBuf,

    /// YAML file with a top-level `templates:` list; only its templates are
    /// considered [default: the five built-in templates]
    #[arg(long, value_name = "FILE")]
    templates: Option<PathBuf>,
}

/// Runs `hodei plan`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let templates = match &args.templates {
        Some(path) => load_template_file(path)?,
        None => WorkerTemplate::builtins(),
    };
    let name = args.file.display().to_string();
    let source = read_source(&args.file).with_context(|| format!("cannot read {name}"))?;
    let text = match source {
        Source::Text(text) => text,
        Source::NotUtf8(message) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(1));
        }
    };
    let parsed = parse(&name, &text);
    for diagnostic in &parsed.diagnostics {
        eprintln!("{}", diagnostic.with_file(&name));
    }
    let Some(pipeline) = parsed.pipeline else {
        return Ok(ExitCode::from(1));
    };
    let plan = match plan(&pipeline) {
        Ok(plan) => plan,
        Err(errors) => {
            for diagnostic in errors {
                eprintln!("{}", diagnostic.with_file(&name));
            }
            return Ok(ExitCode::from(1));
        }
    };
    let (text, ok) = render(&name, &pipeline, &plan, &templates);
    print!("{text}");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The plan as text, and whether every worker can be provided.
fn render(
    name: &str,
    pipeline: &Pipeline,
    plan: &Plan,
    templates: &[WorkerTemplate],
) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let count = plan.segments.len();
    let _ = writeln!(
        out,
        "{name}: {count} worker{}",
        if count == 1 { "" } else { "s" }
    );
    if plan.top.is_none() {
        let _ = writeln!(
            out,
            "(agent none: no worker for the whole run; each stage brings its own)"
        );
    }
    for segment in &plan.segments {
        out.push('\n');
        ok &= render_segment(&mut out, segment, plan, pipeline, templates);
    }
    out.push_str("\nstages:\n");
    render_stages(&mut out, pipeline, &plan.stages, 1);
    if !pipeline.post.is_empty() {
        let conditions: Vec<&str> = pipeline.post.iter().map(|p| p.condition.name()).collect();
        let _ = writeln!(
            out,
            "  post ({}){}",
            conditions.join(", "),
            match plan.top {
                Some(top) => format!(" on worker {top}"),
                None => String::new(),
            }
        );
    }
    (out, ok)
}

/// One worker; returns whether it can be provided.
fn render_segment(
    out: &mut String,
    segment: &Segment,
    plan: &Plan,
    pipeline: &Pipeline,
    templates: &[WorkerTemplate],
) -> bool {
    let _ = writeln!(out, "worker {}: {}", segment.id, segment.agent.kind);
    let owner = match (&segment.owner, &segment.parallel_branch) {
        (SegmentOwner::Pipeline, _) => "the whole run (pipeline agent)".to_string(),
        (SegmentOwner::Stage(stage), Some(branch)) if stage == branch => {
            format!("parallel branch '{branch}', at the same time as the other branches")
        }
        (SegmentOwner::Stage(stage), branch) => {
            let mut owner = format!("stage '{stage}'");
            if let Some(branch) = branch {
                let _ = write!(owner, " in parallel branch '{branch}'");
            }
            if let Some(parent) = segment.parent.and_then(|p| plan.segment(p)) {
                let _ = write!(owner, " (worker {} waits meanwhile)", parent.id);
            }
            owner
        }
    };
    let _ = writeln!(out, "  for:       {owner}");
    let stages = if segment.stages.is_empty() {
        "(none with steps)".to_string()
    } else {
        segment.stages.join(", ")
    };
    let _ = writeln!(out, "  stages:    {stages}");
    let ok = match &segment.agent.kind {
        AgentKind::Docker { image, args } => {
            let _ = writeln!(out, "  image:     {image}");
            if let Some(args) = args {
                let _ = writeln!(out, "  args:      {args} (docker run arguments)");
            }
            let _ = writeln!(out, "  needs:     the docker backend (no template)");
            true
        }
        AgentKind::Kubernetes { yaml, inherit_from } => {
            let mut what = Vec::new();
            if let Some(yaml) = yaml {
                let lines = yaml.lines().filter(|l| !l.trim().is_empty()).count();
                what.push(format!("a pod from the inline yaml ({lines} lines)"));
            }
            if let Some(base) = inherit_from {
                what.push(format!("inheriting from pod template '{base}'"));
            }
            let _ = writeln!(out, "  pod:       {}", what.join(", "));
            let _ = writeln!(out, "  needs:     the kubernetes backend (no template)");
            true
        }
        AgentKind::Template(id) => match templates.iter().find(|t| t.id() == id) {
            Some(template) => {
                let _ = writeln!(out, "  template:  {id}, image {}", template.image());
                let _ = writeln!(out, "  why:       named by the agent");
                true
            }
            None => {
                let known: Vec<&str> = templates.iter().map(|t| t.id().as_str()).collect();
                let _ = writeln!(
                    out,
                    "  template:  none: no template '{id}'; known templates: {}",
                    known.join(", ")
                );
                false
            }
        },
        AgentKind::Any | AgentKind::None | AgentKind::Label { .. } => {
            let mut requirements = WorkerRequirements::new();
            let mut workspace = None;
            if let AgentKind::Label {
                expr,
                custom_workspace,
            } = &segment.agent.kind
            {
                requirements.label = expr.clone();
                workspace = custom_workspace.as_deref();
            }
            let selection = select(templates, &requirements);
            let ok = match (selection.best(), selection.best_reason()) {
                (Some(best), reason) => {
                    let _ = writeln!(
                        out,
                        "  template:  {}, image {}",
                        best.template().id(),
                        best.template().image()
                    );
                    let _ = writeln!(
                        out,
                        "  why:       {}",
                        reason.map_or_else(|| "best match".to_string(), |r| r.to_string())
                    );
                    true
                }
                (None, _) => {
                    let _ = writeln!(
                        out,
                        "  template:  none matches; every template was rejected:"
                    );
                    for rejected in selection.rejected() {
                        let _ = writeln!(out, "               {rejected}");
                    }
                    false
                }
            };
            if let Some(workspace) = workspace {
                let _ = writeln!(out, "  workspace: {workspace}");
            }
            ok
        }
    };
    if pipeline.options.skip_default_checkout {
        let _ = writeln!(out, "  source:    not unpacked (skipDefaultCheckout)");
    }
    ok
}

/// The stage tree, one stage per line, with the worker each runs on and
/// the `when` that may skip it.
fn render_stages(out: &mut String, pipeline: &Pipeline, stages: &[PlanStage], depth: usize) {
    let indent = "  ".repeat(depth);
    let width = stages
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0);
    for stage in stages {
        let pad = " ".repeat(width - stage.name.chars().count());
        let worker = match stage.segment {
            Some(id) if stage.own_agent => format!("worker {id} (own agent)"),
            Some(id) => format!("worker {id}"),
            None => "no worker".to_string(),
        };
        let when = pipeline
            .stage(&stage.name)
            .and_then(|s| s.when.as_ref())
            .map(|w| format!(", only when {w}"))
            .unwrap_or_default();
        match &stage.body {
            PlanBody::Steps => {
                let _ = writeln!(out, "{indent}{}{pad}  → {worker}{when}", stage.name);
            }
            PlanBody::Sequential(children) => {
                let on = if stage.own_agent {
                    format!(" on {worker}")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{indent}{}{pad}  sequential stages{on}{when}:",
                    stage.name
                );
                render_stages(out, pipeline, children, depth + 1);
            }
            PlanBody::Parallel {
                fail_fast,
                branches,
            } => {
                let _ = writeln!(
                    out,
                    "{indent}{}{pad}  parallel, {} branches at the same time{}{when}:",
                    stage.name,
                    branches.len(),
                    if *fail_fast { ", fail fast" } else { "" }
                );
                render_stages(out, pipeline, branches, depth + 1);
            }
        }
    }
}
