//! `hodei templates`: list the worker templates and match label expressions
//! against them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use hodei_application::templates::WorkerTemplateRepository;
use hodei_domain::label::LabelExprError;
use hodei_domain::selection::{WorkerRequirements, select};
use hodei_domain::{CpuQuantity, LabelExpr, MemoryQuantity, TemplateId, WorkerTemplate};
use hodei_infrastructure::{InMemoryWorkerTemplateRepository, load_template_file};

/// List worker templates, or find the ones a label expression selects
#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML file with a top-level `templates:` list; only its templates are
    /// considered [default: the five built-in templates]
    #[arg(long, value_name = "FILE", global = true)]
    templates: Option<PathBuf>,

    #[command(subcommand)]
    command: Subcommand,
}

#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Print the templates as a table: id, image, capabilities, cpu, memory
    List,
    /// Print the templates a label expression selects, best first, one id
    /// per line
    ///
    /// Exits with 0 when at least one template matches, 1 when none does
    /// (each template is then printed on stderr with the reason it was
    /// rejected), 2 for a syntax error in EXPR, a bad quantity or a bad
    /// template file.
    #[command(
        after_help = "Examples:\n  hodei templates match 'linux && java-17'\n  hodei templates match 'docker || kubernetes' --min-cpu 2 --min-memory 4Gi\n  hodei templates match git --prefer go-build --explain"
    )]
    Match(MatchArgs),
}

#[derive(Debug, clap::Args)]
struct MatchArgs {
    /// Jenkins label expression, such as 'linux && (java-17 || java-21)'
    #[arg(value_name = "EXPR")]
    expr: String,

    /// Least cpu request, as a Kubernetes quantity (500m, 1, 1.5)
    #[arg(long, value_name = "Q", allow_hyphen_values = true, value_parser = CpuQuantity::parse)]
    min_cpu: Option<CpuQuantity>,

    /// Least memory request, as a Kubernetes quantity (512Mi, 2Gi, 1G)
    #[arg(long, value_name = "Q", allow_hyphen_values = true, value_parser = MemoryQuantity::parse)]
    min_memory: Option<MemoryQuantity>,

    /// Template to put first when it matches
    #[arg(long, value_name = "ID", value_parser = parse_template_id)]
    prefer: Option<TemplateId>,

    /// Also print why the first template was chosen and why others were not
    #[arg(long)]
    explain: bool,
}

/// Runs `hodei templates`.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repository: Arc<dyn WorkerTemplateRepository> = match &args.templates {
        Some(path) => Arc::new(InMemoryWorkerTemplateRepository::from_templates(
            load_template_file(path)?,
        )),
        None => Arc::new(InMemoryWorkerTemplateRepository::with_builtins()),
    };
    let templates = repository
        .find_all()
        .await
        .context("cannot list the templates")?;
    match args.command {
        Subcommand::List => {
            print!("{}", table(&templates));
            Ok(ExitCode::SUCCESS)
        }
        Subcommand::Match(m) => match_templates(&templates, m),
    }
}

fn match_templates(templates: &[WorkerTemplate], args: MatchArgs) -> anyhow::Result<ExitCode> {
    let label = LabelExpr::parse(&args.expr)
        .map_err(|e| anyhow::anyhow!(expression_error(&args.expr, &e)))?;
    if let Some(id) = &args.prefer
        && !templates.iter().any(|t| t.id() == id)
    {
        let known: Vec<&str> = templates.iter().map(|t| t.id().as_str()).collect();
        bail!(
            "--prefer {id}: no such template, expected one of {}",
            known.join(", ")
        );
    }
    let requirements = WorkerRequirements {
        label: Some(label),
        min_cpu: args.min_cpu,
        min_memory: args.min_memory,
        preferred_template: args.prefer,
    };
    let selection = select(templates, &requirements);
    for candidate in selection.candidates() {
        println!("{}", candidate.template().id());
    }
    if args.explain
        && let (Some(best), Some(reason)) = (selection.best(), selection.best_reason())
    {
        eprintln!("{} first: {reason}", best.template().id());
        for candidate in selection.candidates() {
            eprintln!("  match   {candidate}");
        }
        for rejected in selection.rejected() {
            eprintln!("  reject  {rejected}");
        }
    }
    if selection.is_empty() {
        eprintln!("no template matches {}", quoted(&args.expr));
        for rejected in selection.rejected() {
            eprintln!("  {rejected}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// `invalid label expression 'foo bar' at column 5: ...` followed by the
/// expression with a caret under the column.
fn expression_error(expr: &str, e: &LabelExprError) -> String {
    let caret_pad = " ".repeat(e.column.saturating_sub(1));
    format!(
        "invalid label expression {} at column {}: {}\n  {expr}\n  {caret_pad}^",
        quoted(expr),
        e.column,
        e.message
    )
}

fn quoted(s: &str) -> String {
    if s.contains('\'') {
        format!("{s:?}")
    } else {
        format!("'{s}'")
    }
}

/// The templates as an aligned table with a header row.
fn table(templates: &[WorkerTemplate]) -> String {
    let header = ["ID", "IMAGE", "CAPABILITIES", "CPU", "MEMORY"].map(str::to_owned);
    let rows: Vec<[String; 5]> = templates
        .iter()
        .map(|t| {
            [
                t.id().to_string(),
                t.image().to_owned(),
                t.capabilities()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                t.resources().cpu().to_string(),
                t.resources().memory().to_string(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn parse_template_id(s: &str) -> Result<TemplateId, hodei_domain::IdError> {
    TemplateId::new(s)
}
