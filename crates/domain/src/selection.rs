//! Choosing a worker template for a job: candidates, one deterministic best,
//! and a reason for every template that was turned down.
//!
//! A template is a **candidate** when its capabilities satisfy the label
//! expression and its resource *requests* cover the minimums. Candidates
//! are ordered:
//!
//! 1. the preferred template, if it is a candidate;
//! 2. fewest capabilities beyond what was asked (capabilities the label
//!    expression does not mention): the most specialised worker wins;
//! 3. smallest cpu request, then smallest memory request;
//! 4. template id, so the order is total and deterministic.
//!
//! A template's `max_concurrent_jobs` plays no part here: a busy template is
//! still a match, and the scheduler makes the job wait for a slot.
//!
//! ```
//! use hodei_domain::label::LabelExpr;
//! use hodei_domain::selection::{select, WorkerRequirements};
//! use hodei_domain::WorkerTemplate;
//!
//! let templates = WorkerTemplate::builtins();
//! let req = WorkerRequirements::new().with_label(LabelExpr::parse("linux && git")?);
//! let selection = select(&templates, &req);
//! let ids: Vec<&str> = selection.candidates().iter().map(|c| c.template().id().as_str()).collect();
//! assert_eq!(ids, ["go-build", "java-maven", "node-npm", "python-pip", "docker-dind"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::TemplateId;
use crate::label::{LabelExpr, LabelFact};
use crate::quantity::{CpuQuantity, MemoryQuantity};
use crate::template::WorkerTemplate;

/// What a job (or a stage with its own agent) needs from its worker.
///
/// Every field is optional; the default requirements accept any template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRequirements {
    /// Label expression the template's capabilities must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<LabelExpr>,
    /// Least cpu request the template must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_cpu: Option<CpuQuantity>,
    /// Least memory request the template must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory: Option<MemoryQuantity>,
    /// Template to use when it is a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_template: Option<TemplateId>,
}

impl WorkerRequirements {
    /// Requirements that accept any template.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires the capabilities to satisfy `label`.
    pub fn with_label(mut self, label: LabelExpr) -> Self {
        self.label = Some(label);
        self
    }

    /// Requires at least `cpu` of cpu request.
    pub fn with_min_cpu(mut self, cpu: CpuQuantity) -> Self {
        self.min_cpu = Some(cpu);
        self
    }

    /// Requires at least `memory` of memory request.
    pub fn with_min_memory(mut self, memory: MemoryQuantity) -> Self {
        self.min_memory = Some(memory);
        self
    }

    /// Prefers template `id` when it is a candidate.
    pub fn with_preferred_template(mut self, id: TemplateId) -> Self {
        self.preferred_template = Some(id);
        self
    }
}

/// A template that satisfies the requirements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    template: &'a WorkerTemplate,
    preferred: bool,
    extra_capabilities: usize,
}

impl<'a> Candidate<'a> {
    /// The template.
    pub fn template(&self) -> &'a WorkerTemplate {
        self.template
    }

    /// Whether it is the preferred template.
    pub fn is_preferred(&self) -> bool {
        self.preferred
    }

    /// How many of its capabilities the label expression does not mention.
    pub fn extra_capabilities(&self) -> usize {
        self.extra_capabilities
    }

    fn rank(&self, other: &Self) -> Ordering {
        let a = self.template.resources();
        let b = other.template.resources();
        other
            .preferred
            .cmp(&self.preferred)
            .then(self.extra_capabilities.cmp(&other.extra_capabilities))
            .then(a.cpu().cmp(&b.cpu()))
            .then(a.memory().cmp(&b.memory()))
            .then_with(|| self.template.id().cmp(other.template.id()))
    }
}

impl fmt::Display for Candidate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.template.resources();
        write!(
            f,
            "{}: {} extra capabilit{}, cpu {}, memory {}",
            self.template.id(),
            self.extra_capabilities,
            if self.extra_capabilities == 1 {
                "y"
            } else {
                "ies"
            },
            r.cpu(),
            r.memory()
        )?;
        if self.preferred {
            f.write_str(", preferred")?;
        }
        Ok(())
    }
}

/// One reason a template was turned down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection<'a> {
    /// The label expression is false for the template's capabilities;
    /// `facts` are the labels that decide it.
    Labels {
        /// Labels present or missing that make the expression false.
        facts: Vec<LabelFact<'a>>,
    },
    /// The cpu request is below the minimum.
    Cpu {
        /// The minimum asked for.
        required: CpuQuantity,
        /// The template's cpu request.
        available: CpuQuantity,
    },
    /// The memory request is below the minimum.
    Memory {
        /// The minimum asked for.
        required: MemoryQuantity,
        /// The template's memory request.
        available: MemoryQuantity,
    },
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Labels { facts } => {
                f.write_str("label expression is false: ")?;
                for (i, fact) in facts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{fact}")?;
                }
                Ok(())
            }
            Rejection::Cpu {
                required,
                available,
            } => write!(f, "cpu {available} is below the required {required}"),
            Rejection::Memory {
                required,
                available,
            } => write!(f, "memory {available} is below the required {required}"),
        }
    }
}

/// A template that does not satisfy the requirements.
///
/// The reasons are worked out when asked for
/// ([`Rejected::reasons`], `Display`), so that selecting among many
/// templates costs no more than evaluating them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected<'a> {
    template: &'a WorkerTemplate,
    requirements: &'a WorkerRequirements,
}

impl<'a> Rejected<'a> {
    /// The template.
    pub fn template(&self) -> &'a WorkerTemplate {
        self.template
    }

    /// Why it was turned down: labels first, then cpu, then memory; never
    /// empty.
    pub fn reasons(&self) -> Vec<Rejection<'a>> {
        let caps = self.template.capabilities();
        let resources = self.template.resources();
        let mut reasons = Vec::new();
        if let Some(expr) = &self.requirements.label
            && !expr.matches(caps)
        {
            reasons.push(Rejection::Labels {
                facts: expr.explain(caps),
            });
        }
        if let Some(required) = self.requirements.min_cpu
            && resources.cpu() < required
        {
            reasons.push(Rejection::Cpu {
                required,
                available: resources.cpu(),
            });
        }
        if let Some(required) = self.requirements.min_memory
            && resources.memory() < required
        {
            reasons.push(Rejection::Memory {
                required,
                available: resources.memory(),
            });
        }
        reasons
    }
}

impl fmt::Display for Rejected<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.template.id())?;
        for (i, reason) in self.reasons().iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason}")?;
        }
        Ok(())
    }
}

/// Why the best candidate comes first, for `hodei plan` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BestReason<'a> {
    /// No other template matches.
    OnlyMatch,
    /// It is the preferred template.
    Preferred,
    /// It has fewer capabilities beyond what was asked than the runner-up.
    FewerExtraCapabilities {
        /// Its count.
        best: usize,
        /// The runner-up.
        next: &'a TemplateId,
        /// The runner-up's count.
        next_count: usize,
    },
    /// Same extra capabilities as the runner-up, less cpu.
    LessCpu {
        /// Its cpu request.
        best: CpuQuantity,
        /// The runner-up.
        next: &'a TemplateId,
        /// The runner-up's cpu request.
        next_cpu: CpuQuantity,
    },
    /// Same extra capabilities and cpu as the runner-up, less memory.
    LessMemory {
        /// Its memory request.
        best: MemoryQuantity,
        /// The runner-up.
        next: &'a TemplateId,
        /// The runner-up's memory request.
        next_memory: MemoryQuantity,
    },
    /// Ties with the runner-up on everything but the id.
    IdOrder {
        /// The runner-up.
        next: &'a TemplateId,
    },
}

impl fmt::Display for BestReason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BestReason::OnlyMatch => f.write_str("the only template that matches"),
            BestReason::Preferred => f.write_str("the preferred template"),
            BestReason::FewerExtraCapabilities {
                best,
                next,
                next_count,
            } => write!(
                f,
                "fewest capabilities beyond what was asked ({best}; next best {next} has {next_count})"
            ),
            BestReason::LessCpu {
                best,
                next,
                next_cpu,
            } => write!(
                f,
                "as specialised as {next}, with less cpu ({best} against {next_cpu})"
            ),
            BestReason::LessMemory {
                best,
                next,
                next_memory,
            } => write!(
                f,
                "as specialised as {next} with the same cpu, with less memory ({best} against {next_memory})"
            ),
            BestReason::IdOrder { next } => write!(
                f,
                "ties with {next} on capabilities, cpu and memory; first by id"
            ),
        }
    }
}

/// The outcome of [`select`]: the candidates best first and the rejected
/// templates in input order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSelection<'a> {
    candidates: Vec<Candidate<'a>>,
    rejected: Vec<Rejected<'a>>,
}

impl<'a> TemplateSelection<'a> {
    /// The best candidate, if any template matches.
    pub fn best(&self) -> Option<&Candidate<'a>> {
        self.candidates.first()
    }

    /// Every candidate, best first.
    pub fn candidates(&self) -> &[Candidate<'a>] {
        &self.candidates
    }

    /// Every template turned down, in the order they were given, each with
    /// its reasons.
    pub fn rejected(&self) -> &[Rejected<'a>] {
        &self.rejected
    }

    /// Whether no template matches.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// Why [`TemplateSelection::best`] comes first; `None` when nothing
    /// matches.
    pub fn best_reason(&self) -> Option<BestReason<'a>> {
        let best = self.candidates.first()?;
        let Some(next) = self.candidates.get(1) else {
            return Some(BestReason::OnlyMatch);
        };
        if best.preferred {
            return Some(BestReason::Preferred);
        }
        let (b, n) = (best.template.resources(), next.template.resources());
        let next_id = next.template.id();
        Some(if best.extra_capabilities != next.extra_capabilities {
            BestReason::FewerExtraCapabilities {
                best: best.extra_capabilities,
                next: next_id,
                next_count: next.extra_capabilities,
            }
        } else if b.cpu() != n.cpu() {
            BestReason::LessCpu {
                best: b.cpu(),
                next: next_id,
                next_cpu: n.cpu(),
            }
        } else if b.memory() != n.memory() {
            BestReason::LessMemory {
                best: b.memory(),
                next: next_id,
                next_memory: n.memory(),
            }
        } else {
            BestReason::IdOrder { next: next_id }
        })
    }
}

/// Splits `templates` into candidates (best first) and rejected templates
/// (with every reason), as the module docs describe.
pub fn select<'a, I>(templates: I, requirements: &'a WorkerRequirements) -> TemplateSelection<'a>
where
    I: IntoIterator<Item = &'a WorkerTemplate>,
{
    let asked: BTreeSet<&str> = requirements
        .label
        .as_ref()
        .map(LabelExpr::atoms)
        .unwrap_or_default();
    let mut candidates = Vec::new();
    let mut rejected = Vec::new();
    for template in templates {
        let caps = template.capabilities();
        let resources = template.resources();
        // Cheap checks first; the reasons are worked out only when asked.
        let ok = requirements.min_cpu.is_none_or(|m| resources.cpu() >= m)
            && requirements
                .min_memory
                .is_none_or(|m| resources.memory() >= m)
            && requirements.label.as_ref().is_none_or(|e| e.matches(caps));
        if ok {
            let mentioned = caps.iter().filter(|c| asked.contains(c.as_str())).count();
            candidates.push(Candidate {
                template,
                preferred: requirements.preferred_template.as_ref() == Some(template.id()),
                extra_capabilities: caps.len() - mentioned,
            });
            continue;
        }
        rejected.push(Rejected {
            template,
            requirements,
        });
    }
    candidates.sort_by(Candidate::rank);
    TemplateSelection {
        candidates,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceRequirements;

    fn template(id: &str, caps: &[&str], cpu: &str, memory: &str) -> WorkerTemplate {
        let resources = ResourceRequirements::new(
            CpuQuantity::parse(cpu).unwrap(),
            MemoryQuantity::parse(memory).unwrap(),
        );
        WorkerTemplate::new(TemplateId::new(id).unwrap(), "img", resources)
            .unwrap()
            .with_capabilities(caps.iter().copied())
            .unwrap()
    }

    /// Requirements from (expression, min cpu, min memory, preferred).
    fn req(
        expr: Option<&str>,
        cpu: Option<&str>,
        mem: Option<&str>,
        prefer: Option<&str>,
    ) -> WorkerRequirements {
        WorkerRequirements {
            label: expr.map(|e| LabelExpr::parse(e).unwrap()),
            min_cpu: cpu.map(|c| CpuQuantity::parse(c).unwrap()),
            min_memory: mem.map(|m| MemoryQuantity::parse(m).unwrap()),
            preferred_template: prefer.map(|p| TemplateId::new(p).unwrap()),
        }
    }

    /// Selects among the built-ins and compares the candidate ids (best
    /// first) and the printed rejections.
    fn check(requirements: WorkerRequirements, candidates: &[&str], rejected: &[&str]) {
        let templates = WorkerTemplate::builtins();
        let s = select(&templates, &requirements);
        let got: Vec<&str> = s
            .candidates()
            .iter()
            .map(|c| c.template().id().as_str())
            .collect();
        assert_eq!(got, candidates, "candidates for {requirements:?}");
        let got: Vec<String> = s.rejected().iter().map(ToString::to_string).collect();
        assert_eq!(got, rejected, "rejections for {requirements:?}");
    }

    #[test]
    fn builtins() {
        check(
            req(Some("linux && java-17"), None, None, None),
            &["java-maven"],
            &[
                "node-npm: label expression is false: lacks java-17",
                "docker-dind: label expression is false: lacks java-17",
                "python-pip: label expression is false: lacks java-17",
                "go-build: label expression is false: lacks java-17",
            ],
        );
        // Fewest extra capabilities first: go-build has 3 besides docker,
        // docker-dind 4.
        check(
            req(Some("docker"), None, None, None),
            &["go-build", "docker-dind"],
            &[
                "java-maven: label expression is false: lacks docker",
                "node-npm: label expression is false: lacks docker",
                "python-pip: label expression is false: lacks docker",
            ],
        );
        // No expression: everything matches; fewest capabilities, then cpu.
        check(
            req(None, None, None, None),
            &[
                "go-build",
                "java-maven",
                "node-npm",
                "python-pip",
                "docker-dind",
            ],
            &[],
        );
        check(
            req(Some("docker"), None, None, Some("docker-dind")),
            &["docker-dind", "go-build"],
            &[
                "java-maven: label expression is false: lacks docker",
                "node-npm: label expression is false: lacks docker",
                "python-pip: label expression is false: lacks docker",
            ],
        );
        // A preferred template that does not match changes nothing.
        check(
            req(Some("java-17"), None, None, Some("node-npm")),
            &["java-maven"],
            &[
                "node-npm: label expression is false: lacks java-17",
                "docker-dind: label expression is false: lacks java-17",
                "python-pip: label expression is false: lacks java-17",
                "go-build: label expression is false: lacks java-17",
            ],
        );
        check(
            req(Some("git"), Some("2"), Some("3Gi"), None),
            &["docker-dind"],
            &[
                "java-maven: cpu 1 is below the required 2; memory 2Gi is below the required 3Gi",
                "node-npm: cpu 500m is below the required 2; memory 1Gi is below the required 3Gi",
                "python-pip: cpu 500m is below the required 2; memory 1Gi is below the required 3Gi",
                "go-build: cpu 1 is below the required 2; memory 2Gi is below the required 3Gi",
            ],
        );
        check(
            req(Some("windows || !linux"), None, Some("8Gi"), None),
            &[],
            &[
                "java-maven: label expression is false: has linux, lacks windows; memory 2Gi is below the required 8Gi",
                "node-npm: label expression is false: has linux, lacks windows; memory 1Gi is below the required 8Gi",
                "docker-dind: label expression is false: has linux, lacks windows; memory 4Gi is below the required 8Gi",
                "python-pip: label expression is false: has linux, lacks windows; memory 1Gi is below the required 8Gi",
                "go-build: label expression is false: has linux, lacks windows; memory 2Gi is below the required 8Gi",
            ],
        );
    }

    fn order(
        templates: &[WorkerTemplate],
        requirements: &WorkerRequirements,
    ) -> (Vec<String>, Option<String>) {
        let s = select(templates, requirements);
        (
            s.candidates()
                .iter()
                .map(|c| c.template().id().to_string())
                .collect(),
            s.best_reason().map(|r| r.to_string()),
        )
    }

    #[test]
    fn order_and_best_reason() {
        let ts = [
            template("c", &["linux", "git"], "1", "1Gi"),
            template("b", &["linux", "git"], "1", "1Gi"),
            template("a-big", &["linux", "git"], "1", "2Gi"),
            template("z-cpu", &["linux", "git"], "2", "512Mi"),
            template("wide", &["linux", "git", "docker", "helm"], "100m", "64Mi"),
        ];
        let r = req(Some("linux && git"), None, None, None);
        assert_eq!(
            order(&ts, &r),
            (
                vec![
                    "b".into(),
                    "c".into(),
                    "a-big".into(),
                    "z-cpu".into(),
                    "wide".into()
                ],
                Some("ties with c on capabilities, cpu and memory; first by id".into())
            )
        );
        let r = req(Some("linux"), None, None, Some("wide"));
        assert_eq!(order(&ts, &r).1.as_deref(), Some("the preferred template"));
        assert_eq!(order(&ts, &r).0[0], "wide");
        let r = req(Some("docker"), None, None, None);
        assert_eq!(
            order(&ts, &r).1.as_deref(),
            Some("the only template that matches")
        );
        let r = req(Some("linux"), None, None, None);
        assert_eq!(
            order(&ts[1..4], &r).1.as_deref(),
            Some("as specialised as a-big with the same cpu, with less memory (1Gi against 2Gi)")
        );
        assert_eq!(
            order(&ts[2..4], &r).1.as_deref(),
            Some("as specialised as z-cpu, with less cpu (1 against 2)")
        );
        assert_eq!(
            order(&ts[3..5], &r).1.as_deref(),
            Some("fewest capabilities beyond what was asked (1; next best wide has 3)")
        );
        let r = req(Some("missing"), None, None, None);
        assert_eq!(order(&ts, &r), (vec![], None));
    }

    #[test]
    fn minimums_are_inclusive() {
        let ts = [template("t", &["x"], "1", "1Gi")];
        assert_eq!(
            order(&ts, &req(None, Some("1000m"), Some("1024Mi"), None)).0,
            ["t"]
        );
        assert!(
            order(&ts, &req(None, Some("1001m"), None, None))
                .0
                .is_empty()
        );
    }

    #[test]
    fn candidate_display() {
        let templates = WorkerTemplate::builtins();
        let r = req(Some("linux && java-17"), None, None, Some("java-maven"));
        let s = select(&templates, &r);
        assert_eq!(
            s.best().map(ToString::to_string).as_deref(),
            Some("java-maven: 2 extra capabilities, cpu 1, memory 2Gi, preferred")
        );
    }
}
